"""A cold move's invariants before the steps that cannot be undone, and a rollback that
never makes things worse: two libvirt test:/// hosts (each its own driver instance) stand in
for hostA and hostB (API glue: real libvirt calls, no QEMU), the journal is a real store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from vmigrate.cold.errors import InvariantViolated
from vmigrate.cold.invariants import Invariants
from vmigrate.cold.plan import ColdPlan
from vmigrate.cold.steps import ColdMove, ColdRequest
from vmigrate.events import ignore
from vmigrate.journal import Journal
from vmigrate.store import JobStore

UUID = "6695eb01-f6a4-8304-79aa-97f2502e1111"
DOMAIN = f"""<domain type='test'>
  <name>db1</name><uuid>{UUID}</uuid>
  <memory>131072</memory><vcpu>1</vcpu><os><type>hvm</type></os>
</domain>"""


def _host(tmp_path: Path, name: str, *domains: str) -> libvirt.virConnect:
    node = tmp_path / f"{name}.xml"
    node.write_text(f"<node>{''.join(domains)}</node>")
    return libvirt.open(f"test://{node}")


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[libvirt.virConnect, libvirt.virConnect]]:
    """db1 on hostA (running: the test driver starts what it loads), nothing on hostB."""
    src, dst = _host(tmp_path, "hostA", DOMAIN), _host(tmp_path, "hostB")
    yield src, dst
    src.close()
    dst.close()


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    store = JobStore(tmp_path / "jobs.sqlite")
    return Journal(store, store.create_job("cold", "db1", "hostA", "hostB", {}))


def _move(
    hosts: tuple[libvirt.virConnect, libvirt.virConnect], journal: Journal, *, start: bool = True
) -> ColdMove:
    plan = ColdPlan(
        vm="db1",
        state="running",
        persistent=True,
        keep_state=False,
        start_after=start,
        copies=(),
        shared_disks=(),
        source_xml=DOMAIN,
        destination_xml=DOMAIN,
        changes=(),
    )
    request = ColdRequest(vm="db1", source="hostA", destination="hostB")
    return ColdMove(plan, request, *hosts, journal, ignore)


def _stopped(journal: Journal, src: libvirt.virConnect) -> None:
    src.lookupByName("db1").destroy()
    journal.record("stop", "done", {"how": "shut down (ACPI)", "at": time.time()})


def test_restarted_on_the_source_stops_the_define_and_the_rollback_leaves_it_running(
    hosts: tuple[libvirt.virConnect, libvirt.virConnect], journal: Journal
) -> None:
    src, dst = hosts
    move = _move(hosts, journal)
    _stopped(journal, src)
    src.lookupByName("db1").create()  # someone starts it again during the copy
    qemu = src.lookupByName("db1").ID()
    with pytest.raises(InvariantViolated) as raised:
        journal.run("define", move.define)
    assert "db1 runs on hostA again (state running) since the job stopped it" in str(raised.value)
    assert f"vmigrate jobs resume {journal.job_id}" in raised.value.fix
    assert dst.listAllDomains(0) == []  # nothing defined on hostB
    undone = move.rollback().undone
    assert "stop" in undone
    assert src.lookupByName("db1").ID() == qemu  # the same run: neither destroyed nor restarted
    assert dst.listAllDomains(0) == []


def test_a_copy_running_elsewhere_under_another_name_stops_the_define(
    tmp_path: Path, journal: Journal
) -> None:
    src = _host(tmp_path, "hostA", DOMAIN)
    dst = _host(tmp_path, "hostB", DOMAIN.replace("<name>db1", "<name>db1-copy"))
    move = _move((src, dst), journal)
    _stopped(journal, src)
    with pytest.raises(InvariantViolated) as raised:
        journal.run("define", move.define)
    assert raised.value.host == "hostB"
    # The rollback does not restart the source while hostB runs a copy.
    with pytest.raises(InvariantViolated) as raised:
        move.rollback()
    assert "not restarting it on hostA" in raised.value.message
    assert "db1-copy" in raised.value.message
    assert not src.lookupByName("db1").isActive()
    assert dst.lookupByName("db1-copy").isActive()


def test_an_other_host_given_to_the_move_is_checked_before_start(
    tmp_path: Path, journal: Journal
) -> None:
    src, dst = _host(tmp_path, "hostA", DOMAIN), _host(tmp_path, "hostB")
    third = _host(tmp_path, "hostC", DOMAIN)
    move = ColdMove(
        _move((src, dst), journal).plan,
        ColdRequest(vm="db1", source="hostA", destination="hostB"),
        src,
        dst,
        journal,
        ignore,
        others={"hostC": third},
    )
    _stopped(journal, src)
    with pytest.raises(InvariantViolated) as raised:
        journal.run("define", move.define)
    assert raised.value.host == "hostC"
    third.lookupByName("db1").destroy()
    journal.run("define", move.define)
    third.lookupByName("db1").create()
    with pytest.raises(InvariantViolated):
        journal.run("start", move.start)
    assert not dst.lookupByName("db1").isActive()


def test_the_rollback_never_touches_a_destination_domain_this_job_did_not_start(
    hosts: tuple[libvirt.virConnect, libvirt.virConnect], journal: Journal
) -> None:
    src, dst = hosts
    move = _move(hosts, journal, start=False)
    _stopped(journal, src)
    journal.run("define", move.define)
    journal.run("start", move.start)
    assert journal.detail("start") == {"started": False}
    dst.lookupByName("db1").create()  # someone starts it by hand on hostB
    with pytest.raises(InvariantViolated) as raised:
        move.rollback()
    assert "started there by someone else" in raised.value.message
    assert dst.lookupByName("db1").isActive() and dst.lookupByName("db1").isPersistent()
    assert not src.lookupByName("db1").isActive()


def test_the_source_is_undefined_only_while_the_destination_runs_it(
    hosts: tuple[libvirt.virConnect, libvirt.virConnect], journal: Journal
) -> None:
    src, dst = hosts
    move = _move(hosts, journal)
    _stopped(journal, src)
    journal.run("define", move.define)
    journal.run("start", move.start)
    dst.lookupByName("db1").destroy()  # it stopped there
    with pytest.raises(InvariantViolated) as raised:
        journal.run("undefine source", move.undefine_source)
    assert "db1 is not running on hostB" in raised.value.message
    assert src.lookupByName("db1").isPersistent()
    dst.lookupByName("db1").create()
    src.lookupByName("db1").create()  # and now it runs on both
    with pytest.raises(InvariantViolated) as raised:
        journal.run("undefine source", move.undefine_source)
    assert "two copies" in raised.value.message
    # (the undefine itself: the lab's tests; the test driver refuses KEEP_NVRAM)


def test_an_interrupted_start_is_not_started_twice(
    hosts: tuple[libvirt.virConnect, libvirt.virConnect], journal: Journal
) -> None:
    src, dst = hosts
    move = _move(hosts, journal)
    _stopped(journal, src)
    journal.run("define", move.define)
    # vmigrate died right after its create: the journal says only "starting".
    journal.record("start", "started", {"starting": True})
    dst.lookupByName("db1").create()
    assert journal.run("start", move.start) == {"started": True}


def test_a_saved_source_restored_and_stopped_since_is_refused(
    hosts: tuple[libvirt.virConnect, libvirt.virConnect], tmp_path: Path
) -> None:
    src, dst = hosts
    checks = Invariants("db1", UUID, 7, ("hostA", src), {"hostB": dst})
    src.lookupByName("db1").save(str(tmp_path / "db1.save"))
    checks.source_as_stopped(stopped_at=None, saved=True, state_file=True)
    with pytest.raises(InvariantViolated) as raised:
        checks.source_as_stopped(stopped_at=None, saved=True, state_file=False)
    assert "state file" in raised.value.message
    src.lookupByName("db1").create()
    src.lookupByName("db1").destroy()
    with pytest.raises(InvariantViolated) as raised:
        checks.source_as_stopped(stopped_at=None, saved=True, state_file=True)
    assert "the saved state no longer matches its disks" in raised.value.message
