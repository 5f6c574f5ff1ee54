"""A job another machine drove is alive while its lease on the VM is (a PID cannot be judged
across machines): settled as interrupted once that lease is stale or gone, never while it is
live. On libvirt's test:/// driver (real metadata calls) and a real store."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from vmigrate.guard import ABANDONED_AFTER_S, settle_abandoned_jobs
from vmigrate.lease import Holder, Lease
from vmigrate.store import JobStore
from vmigrate.virt.connection import open_connection
from vmigrate.virt.lease import write_lease

VM = "test"  # the domain test:///default defines, running


def _store_with_a_job_of_another_machine(tmp_path: Path) -> tuple[JobStore, int]:
    store = JobStore(tmp_path / "jobs.sqlite")
    job = store.create_job("cold", VM, "test:///default", "test:///default", {})
    store._db.run(  # as that machine's process recorded itself, started long enough ago
        "UPDATE jobs SET pid = 4242, boot_id = 'theirs', machine = 'ops@ops2', started = ? "
        "WHERE id = ?",
        (time.time() - ABANDONED_AFTER_S - 5, job),
    )
    assert store.job(job).elsewhere
    return store, job


def _lease(store: JobStore, job: int, renewed_ago_s: float) -> Lease:
    renewed = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=renewed_ago_s)
    holder = Holder(job, "cold", "ops@ops2", store.identity, "ab" * 16)
    return Lease(
        holder.job, holder.kind, holder.owner, holder.store, holder.token, renewed, renewed, 90
    )


@pytest.mark.parametrize(("renewed_ago_s", "settled"), [(5.0, False), (600.0, True), (None, True)])
def test_a_job_of_another_machine_is_settled_only_when_its_lease_is_not_live(
    tmp_path: Path, renewed_ago_s: float | None, settled: bool
) -> None:
    store, job = _store_with_a_job_of_another_machine(tmp_path)
    conn = open_connection("test:///default")
    if renewed_ago_s is not None:
        write_lease(conn.lookupByName(VM), _lease(store, job, renewed_ago_s))
    assert settle_abandoned_jobs(store, VM, {"hostA": conn}) == ([job] if settled else [])
    record = store.job(job)
    if settled:
        assert record.state == "interrupted"
        assert "stopped renewing its lease" in (record.outcome or "")
    else:
        assert record.state == "running" and record.elsewhere


def test_a_young_job_without_a_lease_yet_is_left_alone(tmp_path: Path) -> None:
    store, job = _store_with_a_job_of_another_machine(tmp_path)
    store._db.run("UPDATE jobs SET started = ? WHERE id = ?", (time.time(), job))
    conn = open_connection("test:///default")
    assert settle_abandoned_jobs(store, VM, {"hostA": conn}) == []
    assert store.job(job).state == "running"


def test_a_job_of_this_machine_is_never_settled_by_lease(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    job = store.create_job("cold", VM, "test:///default", "test:///default", {})
    conn = open_connection("test:///default")
    assert settle_abandoned_jobs(store, VM, {"hostA": conn}, now=time.time() + 3600) == []
    assert store.job(job).state == "running"
