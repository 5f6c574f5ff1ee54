"""A fleet job's row, whatever its purpose: the columns mean one thing, the purpose is
stored typed, and `maintenance end --return` finds the evacuation by it (old rows too)."""

from __future__ import annotations

from pathlib import Path

from vmigrate.fleet.job import create_fleet_job, purpose_of
from vmigrate.fleet.plan import BALANCE, EVACUATE, RETURN, Purpose
from vmigrate.fleet.returning import returning_moves
from vmigrate.hosts import HostRef
from vmigrate.store import JobStore

HOST_A = HostRef("hostA", "qemu+tls://127.0.0.2/system")


def test_every_purpose_writes_its_row_by_one_rule(tmp_path: Path) -> None:
    with JobStore(tmp_path / "jobs.db") as store:
        purposes = (
            Purpose(EVACUATE, "hostA", ("hostA",), ("hostB", "hostC"), HOST_A.uri),
            Purpose(RETURN, "hostA", ("hostB", "hostC"), ("hostA",), HOST_A.uri),
            Purpose(BALANCE, "lab", ("hostB",), ("hostA", "hostB", "hostC")),
        )
        for purpose in purposes:
            record = store.job(create_fleet_job(store, purpose, {"plan": {}}))
            assert record.kind == purpose.kind
            assert record.vm == purpose.subject
            assert record.source == ",".join(purpose.sources)
            assert record.destination == ",".join(purpose.targets)
            assert purpose_of(record) == purpose
            assert record.params["plan"] == {}


def test_the_return_finds_the_last_evacuation_of_the_host(tmp_path: Path) -> None:
    with JobStore(tmp_path / "jobs.db") as store:
        host_b = "qemu+tls://127.0.0.3/system"
        other = create_fleet_job(store, Purpose(EVACUATE, "hostB", ("hostB",), (), host_b), {})
        store.record_step(other, 0, "elsewhere", "moved", {"destination": "hostC"})
        job = create_fleet_job(store, Purpose(EVACUATE, "hostA", ("hostA",), (), HOST_A.uri), {})
        store.record_step(job, 0, "web", "moved", {"destination": "hostB"})
        store.record_step(job, 1, "db", "stayed", {"destination": "hostC"})
        assert returning_moves(store, HOST_A) == {"web": "hostB"}


def test_an_evacuation_stored_before_rows_had_a_purpose_is_found_by_its_uri(
    tmp_path: Path,
) -> None:
    with JobStore(tmp_path / "jobs.db") as store:
        job = store.create_job(EVACUATE, "hostA", HOST_A.uri, "hostB", {})
        store.record_step(job, 0, "web", "moved", {"destination": "hostB"})
        assert purpose_of(store.job(job)) is None
        assert returning_moves(store, HOST_A) == {"web": "hostB"}
