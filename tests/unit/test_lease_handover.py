"""A fleet job's lease on a VM, handed to the child that moves it (docs/safety.md, "The fleet's
lease handed to its move"): the child replaces a live lease of its fleet job without the
settle, and nobody else can take the VM at any point. On libvirt's test:/// driver (real
metadata calls), a real store and real private files."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from vmigrate.errors import UsageError
from vmigrate.fleet.leases import Reserver
from vmigrate.guard import handed_lease
from vmigrate.hosts import HostRef
from vmigrate.lease import (
    HANDOVER,
    HANDOVER_ENV,
    SETTLE_S,
    HandedLease,
    Holder,
    Lease,
    LeaseError,
    settle_needed,
)
from vmigrate.store import JobStore
from vmigrate.virt.connection import Domain, open_connection
from vmigrate.virt.lease import (
    Taken,
    check_lease,
    read_lease,
    remove_lease,
    take_lease,
    write_lease,
)

VM = "test"  # the domain test:///default defines, running
FLEET = Holder(7, "evacuate", "ops@ops1", "store-1", "f" * 32)
CHILD = Holder(8, "live", "ops@ops1", "store-1", "c" * 32)
RIVAL = Holder(3, "live", "ops@ops2", "store-2", "r" * 32)
NOBODY = Holder(0, "live", "ops@ops1", "store-1", "")


@pytest.fixture
def domain() -> Iterator[Domain]:
    conn = open_connection("test:///default")
    found = conn.lookupByName(VM)
    remove_lease(found)
    yield found
    remove_lease(found)
    conn.close()


def take(
    domain: Domain, who: Holder, handed: Holder | None = None, take_over: bool = False
) -> Taken:
    return take_lease(domain, who, vm=VM, host="hostA", take_over=take_over, handed=handed)


def test_the_child_replaces_its_fleet_jobs_live_lease_at_once(domain: Domain) -> None:
    parent = take(domain, FLEET)
    assert parent.settle_s >= SETTLE_S - 0.01  # the fleet job took it the full way
    # before the child: nobody else may take it, not even with --take-over-lease
    with pytest.raises(LeaseError, match="is leased by evacuate job 7"):
        check_lease(domain, RIVAL, vm=VM, host="hostA", take_over=True)
    assert check_lease(domain, NOBODY, vm=VM, host="hostA", take_over=False, handed=FLEET)
    started = time.monotonic()
    child = take(domain, CHILD, handed=FLEET)
    assert time.monotonic() - started < SETTLE_S / 2  # no settle
    assert child.action == HANDOVER and child.previous is not None
    assert child.previous.held_by(FLEET)
    found = read_lease(domain).lease
    assert found is not None and found.held_by(CHILD)
    # after: the child's lease is live; the rival is refused again
    with pytest.raises(LeaseError, match="is leased by live job 8"):
        take(domain, RIVAL, take_over=True)


def test_a_handed_lease_gone_stale_is_taken_the_full_way(domain: Domain) -> None:
    long_ago = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=600)
    stale = Lease.new(FLEET, long_ago)
    write_lease(domain, stale)
    assert settle_needed(HANDOVER, stale, datetime.now(UTC))
    child = take(domain, CHILD, handed=FLEET)
    assert child.action == HANDOVER and child.settle_s >= SETTLE_S - 0.01
    found = read_lease(domain).lease
    assert found is not None and found.held_by(CHILD)


def test_a_lease_handed_by_another_job_or_token_is_not_ours(domain: Domain) -> None:
    take(domain, FLEET)
    forged = Holder(FLEET.job, FLEET.kind, FLEET.owner, FLEET.store, "0" * 32)
    with pytest.raises(LeaseError, match="is leased by evacuate job 7"):
        take(domain, CHILD, handed=forged)
    with pytest.raises(LeaseError):
        take(domain, CHILD, handed=Holder(9, "evacuate", "x@y", "store-1", FLEET.token))


def _handover_file(tmp_path: Path, vm: str, mode: int) -> Path:
    path = tmp_path / "lease.json"
    path.write_text(HandedLease(vm, FLEET).to_json())
    path.chmod(mode)
    return path


def test_the_handover_file_must_be_private_and_name_the_vm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert handed_lease(VM) is None  # no handover: a move as typed
    monkeypatch.setenv(HANDOVER_ENV, str(_handover_file(tmp_path, VM, 0o600)))
    assert handed_lease(VM) == HandedLease(VM, FLEET)
    assert handed_lease("other") is None
    monkeypatch.setenv(HANDOVER_ENV, str(_handover_file(tmp_path, VM, 0o644)))
    with pytest.raises(UsageError, match="not a private file"):
        handed_lease(VM)
    link = tmp_path / "link.json"
    link.symlink_to(_handover_file(tmp_path, VM, 0o600))
    monkeypatch.setenv(HANDOVER_ENV, str(link))
    with pytest.raises(UsageError):
        handed_lease(VM)


def test_the_fleet_reserves_hands_over_and_releases_only_its_own(
    tmp_path: Path, domain: Domain
) -> None:
    source = HostRef("hostA", "test:///default")
    with JobStore(tmp_path / "jobs.sqlite") as store:
        job = store.create_job("evacuate", "hostA", "hostA", "hostB", {})
        reserver = Reserver(store, job, "evacuate", "f" * 32)
        reserver.reserve(VM, source)
        while reserver.state(VM) == "taking":
            time.sleep(0.05)
        handed = reserver.hand_over(VM)
        assert handed is not None and handed.vm == VM
        child = take(domain, CHILD, handed=handed.holder)
        assert child.action == HANDOVER
        reserver.release(VM)  # the child holds its own: nothing of ours to remove
        found = read_lease(domain).lease
        assert found is not None and found.held_by(CHILD)
        remove_lease(domain)
        # a child that never took it over: the fleet's lease goes at the end
        reserver.reserve(VM, source)
        while reserver.state(VM) == "taking":
            time.sleep(0.05)
        assert read_lease(domain).lease is not None
        reserver.release(VM)
        assert read_lease(domain).lease is None
        # nothing reserved (the first move, or a resumed job's lease left by its killed
        # run): the child is still told the fleet job's holder, and takes what it finds
        unreserved = reserver.hand_over(VM)
        assert unreserved.holder.token == "f" * 32 and unreserved.holder.job == job
        reserver.close()
        events = [e["event"] for e in store.lease_events(job)]
    assert events == ["taken", "handed over", "taken", "released"]
    assert os.environ.get(HANDOVER_ENV) is None
