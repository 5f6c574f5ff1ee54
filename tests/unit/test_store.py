"""The SQLite job store."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from vmigrate.cli.main import cli
from vmigrate.errors import NotFound, UsageError, VmigrateError
from vmigrate.store import JobStore, default_store_path, record_unexpected_failure, redact_uri


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


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_store_is_private_to_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "state" / "vmigrate" / "jobs.sqlite"
    store = JobStore(path)
    store.create_job("live", "web1", "a", "b", {"xml": "<domain/>"})  # writes the WAL
    assert mode(path.parent) == 0o700
    wal, shm = path.with_name("jobs.sqlite-wal"), path.with_name("jobs.sqlite-shm")
    assert wal.exists() and shm.exists()
    for file in (path, wal, shm):
        assert mode(file) == 0o600, file
    store.close()


def test_a_store_with_loose_modes_is_tightened_when_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    path = default_store_path()
    JobStore(path).close()
    # As an older vmigrate (or a umask of 0) left it.
    path.parent.chmod(0o755)
    side = [path.with_name(path.name + s) for s in ("-wal", "-shm")]
    for file in (path, *side):
        file.touch()
        file.chmod(0o666)
    store = JobStore()
    assert store.path == path
    assert mode(path.parent) == 0o700
    for file in (path, *side):
        assert mode(file) == 0o600, file
    store.close()


def test_an_existing_directory_chosen_with_store_keeps_its_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: not vmigrate's to change
    JobStore(shared / "jobs.sqlite").close()
    assert mode(shared) == 0o1777
    assert mode(shared / "jobs.sqlite") == 0o600


def test_a_damaged_store_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    path.write_bytes(b"this is not an SQLite database, it is junk" * 100)
    with pytest.raises(VmigrateError) as caught:
        JobStore(path)
    message = str(caught.value)
    assert str(path) in message and "damaged" in message
    assert f"mv {path} {path}.damaged" in caught.value.fix


def test_an_unwritable_store_is_a_clear_error(tmp_path: Path) -> None:
    # Root may write anywhere; a parent that is a file stops everyone.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    path = blocker / "jobs.sqlite"
    with pytest.raises(UsageError) as caught:
        JobStore(path)
    assert f"cannot open the job store {path}" in str(caught.value)
    assert "--store PATH" in caught.value.fix


def test_an_unwritable_store_through_the_cli_has_no_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    result = CliRunner().invoke(cli, ["jobs", "--store", str(blocker / "jobs.sqlite")])
    assert result.exit_code == 2, result.output
    assert "cannot open the job store" in result.output
    assert "what to do" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_an_unexpected_failure_marks_this_process_jobs_interrupted(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    running = store.create_job("live", "web1", "a", "b", {})
    done = store.create_job("live", "web2", "a", "b", {})
    store.finish_job(done, "completed", "migration completed", {})
    record_unexpected_failure("KeyError: 'x'")
    record = store.job(running)
    assert record.state == "interrupted"
    assert record.outcome is not None and "KeyError: 'x'" in record.outcome
    assert store.job(done).state == "completed"
