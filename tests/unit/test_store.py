"""The SQLite job store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from vmigrate.errors import NotFound, VmigrateError
from vmigrate.store import JobStore, redact_uri


def test_job_lifecycle(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    job = store.create_job(
        "live",
        "web1",
        "qemu+ssh://root:hunter2@a/system",
        "qemu+tls://b/system",
        {"policy": "fast"},
    )
    store.add_sample(job, {"memory_remaining": 10})
    store.add_action(job, "postcopy", "pass 2: cannot converge", "policy")
    assert store.job(job).state == "running"
    store.finish_job(job, "completed", "migration completed", {"downtime_ms": 12})
    record = store.job(job)
    assert record.state == "completed" and record.report == {"downtime_ms": 12}
    assert record.source == "qemu+ssh://root@a/system"  # no password stored
    for written in tmp_path.iterdir():  # the database and its WAL
        assert b"hunter2" not in written.read_bytes()
    assert [a.action for a in store.actions(job)] == ["postcopy"]
    assert store.samples(job)[0]["memory_remaining"] == 10
    assert [r.id for r in store.jobs()] == [job]


def test_a_job_whose_process_died_is_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    store = JobStore(path)
    job = store.create_job("live", "web1", "a", "b", {})
    with sqlite3.connect(path) as db:
        db.execute("UPDATE jobs SET pid = 999999999 WHERE id = ?", (job,))
    assert store.job(job).state == "interrupted"


def test_unknown_job(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        JobStore(tmp_path / "jobs.sqlite").job(42)


def test_redact_uri() -> None:
    assert redact_uri("qemu+tcp://u:p@h:16509/system") == "qemu+tcp://u@h:16509/system"
    assert redact_uri("qemu:///system") == "qemu:///system"


def test_control_requests_are_queued_and_answered(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    job = store.create_job("live", "web1", "a", "b", {})
    first = store.request_control(job, "max-downtime", 250.0, "ops (pid 1)")
    store.request_control(job, "cancel", None, "ops (pid 1)")
    assert [c.command for c in store.pending_controls(job)] == ["max-downtime", "cancel"]
    store.mark_control(first, "applied")
    assert [c.command for c in store.pending_controls(job)] == ["cancel"]
    answered = store.control(first)
    assert answered.result == "applied" and answered.handled_at is not None


def test_a_vm_held_by_an_unfinished_job_cannot_start_another(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    job_id = store.create_job("cold", "web1", "hostA", "hostB", {})
    with pytest.raises(VmigrateError, match="in the middle of cold job") as raised:
        store.ensure_no_open_job("web1")  # running, by this very process
    assert "wait for it" in (raised.value.fix or "")
    store.finish_job(job_id, "failed", "copy failed", {})
    with pytest.raises(VmigrateError) as raised:
        store.ensure_no_open_job("web1")
    assert f"vmigrate jobs resume {job_id}" in (raised.value.fix or "")
    store.finish_job(job_id, "rolled back", "undone", {})
    store.ensure_no_open_job("web1")
    store.ensure_no_open_job("another-vm")
