"""The link probe an evacuation starts before the hosts' facts: what it says without
measuring (given, declared), and that a target it cannot reach is passed over."""

from __future__ import annotations

from vmigrate.capacity import MIB
from vmigrate.fleet.gather import ASSUMED, probe_link
from vmigrate.hosts import HostRef

# Nothing listens on port 9 of 127.0.0.1 (discard): the connection is refused at once.
UNREACHABLE = HostRef("gone", "qemu+tcp://127.0.0.1:9/system")


def test_a_given_bandwidth_is_not_probed() -> None:
    assert probe_link(50.0, [UNREACHABLE]) == (50 * MIB, "given (--bandwidth)")


def test_the_slowest_declared_link_is_used() -> None:
    fast = HostRef("b", "qemu+tcp://127.0.0.1:9/system", bandwidth_mib=200.0)
    slow = HostRef("c", "qemu+tcp://127.0.0.1:9/system", bandwidth_mib=80.0)
    assert probe_link(None, [fast, slow]) == (80 * MIB, "hosts file")


def test_no_reachable_target_gives_the_assumed_rate() -> None:
    assert probe_link(None, [UNREACHABLE]) == ASSUMED
