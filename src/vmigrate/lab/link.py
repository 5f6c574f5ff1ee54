"""Emulating hostA's uplink: one htb class (+ netem delay) on `lo` for traffic to the other
lab hosts.

The class stands for hostA's uplink: moves out of hostA send their streams to the destination's
loopback address, so parallel moves to hostB, hostC and hostD share one rate, as they would
share hostA's real NIC. `shape` puts one u32 filter per running lab host other than hostA into
that class (and `lab up` adds one for a host it starts later); everything else on `lo`,
hostA's own address included, passes the htb root unclassified and unshaped (htb sends
unclassified packets directly when there is no default class). Filters match destinations
only: traffic from hostB to hostC goes through the same class.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vmigrate.errors import EnvironmentProblem, LabError, UsageError
from vmigrate.lab.config import HOST_A, LAB_HOSTS
from vmigrate.lab.state import running_lab_hosts

DEVICE = "lo"
ROOT_HANDLE = "1:"
#: The htb class that stands for hostA's uplink.
SHAPED_CLASS = "1:10"
_RATE = re.compile(r"^\d+(\.\d+)?(bit|kbit|mbit|gbit|tbit|bps|kbps|mbps|gbps|tbps)$", re.I)
_CLASS_STATS = re.compile(
    r"class htb 1:10 .*?rate (?P<rate>\S+) .*?\n\s*Sent (?P<bytes>\d+) bytes", re.S
)
_DELAY = re.compile(r"^\d+(\.\d+)?(us|ms|s)$")
#: Where a u32 match on the IPv4 destination address sits in the header, and its mask.
_DST_OFFSET = 16
_FULL_MASK = "ffffffff"
_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


@dataclass(frozen=True)
class LinkStatus:
    shaped: bool
    rate: str | None
    delay: str | None
    #: Bytes the uplink class has sent, to every shaped destination together.
    bytes_shaped: int
    #: The destination addresses filtered into the class.
    destinations: tuple[str, ...] = ()

    @property
    def bytes_to_hostb(self) -> int:
        """The old name of `bytes_shaped`, from when only hostB was shaped."""
        return self.bytes_shaped

    @property
    def hosts(self) -> tuple[str, ...]:
        """The lab hosts behind `destinations` (an address of no lab host as itself)."""
        names = {host.address: host.name for host in LAB_HOSTS}
        return tuple(names.get(address, address) for address in self.destinations)

    def to_dict(self) -> dict[str, object]:
        return {
            "shaped": self.shaped,
            "rate": self.rate,
            "delay": self.delay,
            "bytes_shaped": self.bytes_shaped,
            "bytes_to_hostb": self.bytes_to_hostb,  # kept for existing readers
            "destinations": list(self.destinations),
            "hosts": list(self.hosts),
        }


def _tc(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    tc = shutil.which("tc", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if tc is None:
        raise EnvironmentProblem("`tc` is not installed", fix="apt-get install iproute2")
    result = subprocess.run([tc, *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise EnvironmentProblem(
            f"tc {' '.join(args)} failed: {result.stderr.strip()}",
            fix="link emulation needs root and the sch_htb/sch_netem kernel modules",
        )
    return result


def _check_rate_and_delay(rate: str, delay: str | None) -> None:
    if not _RATE.match(rate):
        raise UsageError(f"link rate {rate!r} is not a rate", fix="use e.g. 1gbit, 100mbit, 50mbps")
    if delay is not None and not _DELAY.match(delay):
        raise UsageError(f"link delay {delay!r} is not a duration", fix="use e.g. 5ms or 200us")


def _loopback_address(address: str) -> str:
    """`address` if it is an IPv4 loopback address: the lab never shapes anything else."""
    try:
        parsed = ipaddress.IPv4Address(address)
    except ValueError:
        parsed = None
    if parsed is None or parsed not in _LOOPBACK:
        raise UsageError(
            f"{address!r} is not an IPv4 loopback address", fix="shape only lab hosts' addresses"
        )
    return str(parsed)


def filter_command(address: str) -> list[str]:
    """The tc invocation that sends packets to `address` through the uplink class."""
    return [
        "filter",
        "add",
        "dev",
        DEVICE,
        "parent",
        ROOT_HANDLE,
        "protocol",
        "ip",
        "prio",
        "1",
        "u32",
        "match",
        "ip",
        "dst",
        f"{_loopback_address(address)}/32",
        "flowid",
        SHAPED_CLASS,
    ]


def shaping_commands(rate: str, delay: str | None, destinations: Sequence[str]) -> list[list[str]]:
    """The tc invocations that shape traffic to `destinations` through one class (pure, for
    tests and --dry-run)."""
    _check_rate_and_delay(rate, delay)
    if not destinations:
        raise UsageError("no destination to shape", fix="start the lab first: vmigrate lab up")
    commands = [
        ["qdisc", "add", "dev", DEVICE, "root", "handle", ROOT_HANDLE, "htb"],
        [
            "class",
            "add",
            "dev",
            DEVICE,
            "parent",
            ROOT_HANDLE,
            "classid",
            SHAPED_CLASS,
            # Loopback packets are up to 64 KiB: burst and quantum must hold whole packets.
            "htb",
            "rate",
            rate,
            "ceil",
            rate,
            "burst",
            "256k",
            "cburst",
            "256k",
            "quantum",
            "65536",
        ],
        *(filter_command(address) for address in dict.fromkeys(destinations)),
    ]
    if delay is not None:
        commands.append(
            [
                "qdisc",
                "add",
                "dev",
                DEVICE,
                "parent",
                SHAPED_CLASS,
                "handle",
                "10:",
                "netem",
                "delay",
                delay,
                "limit",
                "100000",
            ]
        )
    return commands


def shaped_destinations() -> tuple[str, ...]:
    """The addresses hostA's uplink leads to: every running lab host but hostA."""
    return tuple(host.address for host in running_lab_hosts() if host != HOST_A)


def _tc_json(*args: str) -> list[dict[str, Any]]:
    """`tc -j ARGS` as a list of objects; anything but a JSON list is a clear error."""
    output = _tc("-j", *args).stdout or "[]"
    try:
        parsed = json.loads(output)
    except ValueError as err:
        raise EnvironmentProblem(
            f"tc printed no JSON for `tc {' '.join(args)}`: {output[:200]!r}",
            fix="install iproute2 from Debian 12 (its tc supports -j)",
        ) from err
    return [item for item in parsed if isinstance(item, dict)] if isinstance(parsed, list) else []


def _destination_of(entry: dict[str, Any]) -> str | None:
    """The address a `tc -j filter show` entry sends into the uplink class, if it is ours."""
    options = entry.get("options")
    if not isinstance(options, dict) or options.get("flowid") != SHAPED_CLASS:
        return None
    match = options.get("match")
    if not isinstance(match, dict) or (match.get("off"), match.get("mask")) != (
        _DST_OFFSET,
        _FULL_MASK,
    ):
        return None
    try:
        return str(ipaddress.IPv4Address(int(str(match.get("value")), 16)))
    except ValueError:
        return None


def filter_destinations(entries: list[dict[str, Any]]) -> tuple[str, ...]:
    """The destinations of our filters in `tc -j filter show` output (pure), in tc's order."""
    found = (_destination_of(entry) for entry in entries)
    return tuple(dict.fromkeys(address for address in found if address is not None))


def _filtered_addresses() -> tuple[str, ...]:
    return filter_destinations(_tc_json("filter", "show", "dev", DEVICE, "parent", ROOT_HANDLE))


def _qdiscs() -> list[dict[str, Any]]:
    return _tc_json("qdisc", "show", "dev", DEVICE)


def _is_ours() -> bool:
    qdiscs = _qdiscs()
    return any(
        q.get("kind") == "htb" and q.get("handle") == ROOT_HANDLE and q.get("root") for q in qdiscs
    )


def shape(rate: str, delay: str | None = None) -> LinkStatus:
    """Limit hostA's uplink (traffic to every other running lab host) to `rate` (tc syntax),
    optionally adding `delay`."""
    _check_rate_and_delay(rate, delay)
    destinations = shaped_destinations()
    if not destinations:
        raise LabError(
            "no lab host besides hostA is running: there is no link to shape",
            fix="start the lab first: vmigrate lab up",
        )
    commands = shaping_commands(rate, delay, destinations)
    reset()
    try:
        for command in commands:
            result = _tc(*command, check=False)
            if result.returncode != 0 and "netem" in command and "unknown" in result.stderr:
                raise EnvironmentProblem(
                    "this kernel has no netem queueing discipline, so delay cannot be emulated",
                    fix="shape the rate alone (drop --delay), or use a kernel with sch_netem",
                )
            if result.returncode != 0:
                _tc(*command)  # raises with tc's own message
    except EnvironmentProblem:
        reset()
        raise
    return status()


def cover(addresses: Sequence[str]) -> tuple[str, ...]:
    """Send traffic to `addresses` (hosts started after `shape`) through the uplink class
    too, if the link is shaped; returns the addresses that were not covered before."""
    if not _is_ours():
        return ()
    known = set(_filtered_addresses())
    added = tuple(a for a in dict.fromkeys(map(_loopback_address, addresses)) if a not in known)
    for address in added:
        _tc(*filter_command(address))
    return added


def reset() -> bool:
    """Remove the lab's shaping; returns whether there was any. Leaves foreign qdiscs alone."""
    if not _is_ours():
        return False
    _tc("qdisc", "del", "dev", DEVICE, "root")
    return True


def status() -> LinkStatus:
    if not _is_ours():
        return LinkStatus(shaped=False, rate=None, delay=None, bytes_shaped=0)
    # `tc -j class` prints no JSON for htb classes: read the text form.
    classes = _tc("-s", "class", "show", "dev", DEVICE).stdout
    shaped = _CLASS_STATS.search(classes)
    qdiscs = _qdiscs()
    netem = next((q for q in qdiscs if q.get("kind") == "netem"), None)
    delay = None
    if netem is not None:
        delay_seconds = netem.get("options", {}).get("delay", {}).get("delay")
        delay = f"{delay_seconds * 1000:g}ms" if delay_seconds is not None else None
    return LinkStatus(
        shaped=True,
        rate=shaped["rate"] if shaped else None,
        delay=delay,
        bytes_shaped=int(shaped["bytes"]) if shaped else 0,
        destinations=_filtered_addresses(),
    )
