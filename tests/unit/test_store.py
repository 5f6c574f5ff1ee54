"""The job store, on SQLite and on a real PostgreSQL server (`store_at` runs a test on both):
jobs, samples, actions, controls, steps; the guarded lifecycle; liveness; schema versions."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import vmigrate
from tests.pg import POWERLESS, USER, PostgresServer
from vmigrate import lifecycle
from vmigrate import store as store_module
from vmigrate.cli.main import cli
from vmigrate.errors import NotFound, UsageError, VmigrateError
from vmigrate.lifecycle import TransitionRefused
from vmigrate.owner import Liveness, this_process
from vmigrate.store import (
    SCHEMA_VERSION,
    JobStore,
    StoreLocation,
    configured_store,
    default_store_path,
    record_unexpected_failure,
    redact_uri,
    store_location,
)
from vmigrate.store_sql import CONNECT_TIMEOUT_S, StoreError


def tamper(store: JobStore, sql: str, *params: object) -> None:
    """Change a row behind the store's back, as another program (or time) would."""
    store._db.run(sql, params)


def test_job_lifecycle(store_at: StoreLocation, tmp_path: Path) -> None:
    store = JobStore(store_at)
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
    for written in tmp_path.iterdir():  # the database and its WAL (SQLite)
        assert b"hunter2" not in written.read_bytes()
    assert [a.action for a in store.actions(job)] == ["postcopy"]
    assert store.samples(job)[0]["memory_remaining"] == 10
    assert [r.id for r in store.jobs()] == [job]


def test_a_job_whose_process_died_is_interrupted(store_at: StoreLocation) -> None:
    store = JobStore(store_at)
    job = store.create_job("live", "web1", "a", "b", {})
    tamper(store, "UPDATE jobs SET pid = 999999999 WHERE id = ?", job)
    assert store.job(job).state == "interrupted"


def test_unknown_job(store_at: StoreLocation) -> None:
    with pytest.raises(NotFound):
        JobStore(store_at).job(42)


def test_redact_uri() -> None:
    assert redact_uri("qemu+tcp://u:p@h:16509/system") == "qemu+tcp://u@h:16509/system"
    assert redact_uri("qemu:///system") == "qemu:///system"


def test_control_requests_are_queued_and_answered(store_at: StoreLocation) -> None:
    store = JobStore(store_at)
    job = store.create_job("live", "web1", "a", "b", {})
    first = store.request_control(job, "max-downtime", 250.0, "ops (pid 1)")
    store.request_control(job, "cancel", None, "ops (pid 1)")
    assert [c.command for c in store.pending_controls(job)] == ["max-downtime", "cancel"]
    store.mark_control(first, "applied")
    assert [c.command for c in store.pending_controls(job)] == ["cancel"]
    answered = store.control(first)
    assert answered.result == "applied" and answered.handled_at is not None


def test_a_vm_held_by_an_unfinished_job_cannot_start_another(store_at: StoreLocation) -> None:
    store = JobStore(store_at)
    job_id = store.create_job("cold", "web1", "hostA", "hostB", {})
    with pytest.raises(VmigrateError, match="in the middle of cold job") as raised:
        store.ensure_no_open_job("web1")  # running, by this very process
    assert "wait for it" in (raised.value.fix or "")
    store.finish_job(job_id, "failed", "copy failed", {})
    with pytest.raises(VmigrateError) as raised:
        store.ensure_no_open_job("web1")
    assert f"vmigrate jobs resume {job_id}" in (raised.value.fix or "")
    store.reopen_job(job_id, "rollback")
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


def test_an_unexpected_failure_marks_this_process_jobs_interrupted(
    store_at: StoreLocation,
) -> None:
    store = JobStore(store_at)
    running = store.create_job("live", "web1", "a", "b", {})
    done = store.create_job("live", "web2", "a", "b", {})
    store.finish_job(done, "completed", "migration completed", {})
    record_unexpected_failure("KeyError: 'x'")
    record = store.job(running)
    assert record.state == "interrupted"
    assert record.outcome is not None and "KeyError: 'x'" in record.outcome
    assert store.job(done).state == "completed"


# --- the guarded lifecycle ------------------------------------------------------------------

SRC = Path(vmigrate.__file__).resolve().parents[1]


def job_made_by_a_process_that_exited(store_at: StoreLocation, kind: str = "cold") -> int:
    """A job whose vmigrate died: created by a child process that has exited since."""
    made = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from vmigrate.store import JobStore, store_location; "
            "print(JobStore(store_location(sys.argv[1])).create_job("
            "sys.argv[2], 'db1', 'hostA', 'hostB', {}))",
            str(store_at),
            kind,
        ],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        check=True,
    )
    return int(made.stdout)


def test_a_job_whose_process_exited_is_interrupted_and_can_be_resumed(
    store_at: StoreLocation,
) -> None:
    job = job_made_by_a_process_that_exited(store_at)
    store = JobStore(store_at)
    record = store.job(job)
    assert record.state == "interrupted" and record.liveness is Liveness.GONE
    assert record.owner is not None and record.owner.start is not None
    reopened = store.reopen_job(job, "resume")
    assert reopened.state == "running" and reopened.action == "resume"
    assert reopened.owner == this_process()
    assert [a.action for a in store.actions(job)] == ["resume"]
    store.finish_job(job, "completed", "cold migration completed", {})
    assert store.job(job).state == "completed"


def test_a_reused_pid_or_another_boot_is_not_the_jobs_process(store_at: StoreLocation) -> None:
    store = JobStore(store_at)
    me = this_process()
    assert me.start is not None
    reused = store.create_job("cold", "db1", "hostA", "hostB", {})
    tamper(store, "UPDATE jobs SET pid_start = ? WHERE id = ?", me.start - 1, reused)
    assert store.job(reused).state == "interrupted"  # our PID, another process's start
    rebooted = store.create_job("cold", "db2", "hostA", "hostB", {})
    tamper(store, "UPDATE jobs SET boot_id = 'an-earlier-boot' WHERE id = ?", rebooted)
    assert store.job(rebooted).state == "interrupted"


def test_a_job_run_on_another_machine_counts_as_running(store_at: StoreLocation) -> None:
    store = JobStore(store_at)
    job = store.create_job("cold", "db1", "hostA", "hostB", {})
    tamper(
        store,
        "UPDATE jobs SET pid = 999999999, boot_id = 'theirs', machine = 'ops@ops2' WHERE id = ?",
        job,
    )
    record = store.job(job)
    assert record.state == "running" and record.elsewhere
    with pytest.raises(TransitionRefused, match="process 999999999 on ops@ops2 drives it"):
        store.reopen_job(job, "rollback")
    with pytest.raises(VmigrateError, match="in the middle of cold job"):
        store.create_job("cold", "db1", "hostA", "hostC", {})
    with pytest.raises(TransitionRefused, match="driven by process 999999999 on ops@ops2"):
        store.finish_job(job, "failed", "not mine to say", {})
    assert store.job(job).state == "running"


def test_a_job_another_machine_abandoned_is_settled_once(store_at: StoreLocation) -> None:
    store = JobStore(store_at)
    job = store.create_job("cold", "db1", "hostA", "hostB", {})
    mine = store.create_job("cold", "db2", "hostA", "hostB", {})
    tamper(
        store,
        "UPDATE jobs SET pid = 999999999, boot_id = 'theirs', machine = 'ops@ops2' WHERE id = ?",
        job,
    )
    assert not store.abandon_job(mine, "this machine's job is judged by its process")
    assert store.abandon_job(job, "its lease is stale")
    assert not store.abandon_job(job, "a second settle changes nothing")
    record = store.job(job)
    assert record.state == "interrupted" and record.outcome == "its lease is stale"
    store.reopen_job(job, "rollback")  # now taken as any interrupted job
    assert store.job(job).state == "running" and store.job(mine).state == "running"


def test_rolling_back_a_completed_cold_job_is_refused(store_at: StoreLocation) -> None:
    store = JobStore(store_at)
    job = store.create_job("cold", "db1", "hostA", "hostB", {"request": {}, "plan": {}})
    store.finish_job(job, "completed", "cold migration completed", {"placement": "hostB"})
    with pytest.raises(TransitionRefused) as refused:
        store.reopen_job(job, "rollback")
    assert "rolling back would destroy that" in refused.value.message
    assert refused.value.fix == "to move it back: vmigrate cold db1 --from hostB --to hostA"
    result = CliRunner().invoke(cli, ["jobs", "--store", str(store_at), "rollback", str(job)])
    assert result.exit_code == 1, result.output
    assert "job " + str(job) + " completed: db1 runs on hostB" in result.output
    assert "vmigrate cold db1 --from hostB --to hostA" in result.output
    assert "Traceback" not in result.output
    record = store.job(job)  # nothing changed
    assert record.state == "completed" and record.action is None and not store.actions(job)


def test_a_live_job_is_not_resumed_through_the_cli(store_at: StoreLocation) -> None:
    job = job_made_by_a_process_that_exited(store_at, kind="live")
    result = CliRunner().invoke(cli, ["jobs", "--store", str(store_at), "resume", str(job)])
    assert result.exit_code == 1, result.output
    assert "vmigrate recover db1" in result.output
    assert JobStore(store_at).job(job).state == "interrupted"


def test_resume_then_rollback_of_one_job_the_second_is_refused(store_at: StoreLocation) -> None:
    job = job_made_by_a_process_that_exited(store_at)
    first, second = JobStore(store_at), JobStore(store_at)
    first.reopen_job(job, "resume")
    with pytest.raises(TransitionRefused, match=r"still running \(being resumed\)"):
        second.reopen_job(job, "rollback")


def slowly(check: Callable[..., Any]) -> Callable[..., Any]:
    """The check, then a pause: long enough for a second terminal to act in between, were the
    check and the write not one transaction."""

    def check_then_wait(*args: Any, **kwargs: Any) -> Any:
        result = check(*args, **kwargs)
        time.sleep(0.3)
        return result

    return check_then_wait


def at_once(*actions: Callable[[], object]) -> list[BaseException | None]:
    """Run each action in its own thread, all starting together; what each raised."""
    barrier = threading.Barrier(len(actions))
    outcomes: list[BaseException | None] = [None] * len(actions)

    def run(i: int) -> None:
        barrier.wait()
        try:
            actions[i]()
        except BaseException as err:
            outcomes[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(actions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


def test_two_terminals_cannot_both_start_a_move_of_one_vm(
    store_at: StoreLocation, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "refuse_open_jobs", slowly(store_module.refuse_open_jobs))
    terminals = [JobStore(store_at), JobStore(store_at)]
    outcomes = at_once(
        lambda: terminals[0].create_job("cold", "db1", "hostA", "hostB", {}),
        lambda: terminals[1].create_job("live", "db1", "hostA", "hostC", {}),
    )
    refused = [o for o in outcomes if o is not None]
    assert len(refused) == 1, outcomes
    assert isinstance(refused[0], VmigrateError)
    assert "'db1' is in the middle of" in refused[0].message
    assert len(terminals[0].jobs()) == 1
    # Other VMs do not wait for each other's checks to fail them.
    outcomes = at_once(
        lambda: terminals[0].create_job("cold", "web1", "hostA", "hostB", {}),
        lambda: terminals[1].create_job("cold", "web2", "hostA", "hostB", {}),
    )
    assert outcomes == [None, None]


@pytest.mark.parametrize("second", ["resume", "rollback"])
def test_two_terminals_cannot_both_take_over_one_job(
    store_at: StoreLocation, monkeypatch: pytest.MonkeyPatch, second: str
) -> None:
    job = job_made_by_a_process_that_exited(store_at)
    monkeypatch.setattr(lifecycle, "check_action", slowly(lifecycle.check_action))
    terminals = [JobStore(store_at), JobStore(store_at)]
    outcomes = at_once(
        lambda: terminals[0].reopen_job(job, "resume"),
        lambda: terminals[1].reopen_job(job, second),
    )
    refused = [o for o in outcomes if o is not None]
    assert len(refused) == 1, outcomes
    assert isinstance(refused[0], TransitionRefused)
    assert "running" in refused[0].message
    actions = terminals[0].actions(job)
    assert len(actions) == 1  # exactly one took it over
    assert terminals[0].job(job).action == actions[0].action


# --- schema versions ------------------------------------------------------------------------

FIXTURE_V1 = Path(__file__).parent / "data" / "stores" / "main-38f9109.sqlite"


def test_a_store_written_by_main_before_versions_is_migrated_after_a_backup(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.sqlite"
    shutil.copyfile(FIXTURE_V1, path)
    store = JobStore(path)
    assert store.schema_version() == SCHEMA_VERSION
    # Its jobs, steps and maintenance marks survive.
    jobs = {r.id: r for r in store.jobs()}
    assert {(r.kind, r.vm, r.state) for r in jobs.values()} == {
        ("live", "web1", "completed"),
        ("cold", "db1", "failed"),
        ("evacuate", "hostA", "completed"),
    }
    assert sum(len(store.steps(i)) for i in jobs) == 2
    assert set(store.maintenance()) == {"qemu+tls://127.0.0.2/system"}
    assert jobs[2].owner is not None and jobs[2].owner.start is None  # main kept the PID only
    # The new columns work: the failed cold job is taken over by this process.
    assert store.reopen_job(2, "resume").owner == this_process()
    with pytest.raises(TransitionRefused, match="job 1 is a live migration"):
        store.reopen_job(1, "rollback")
    assert store.create_job("cold", "web9", "hostA", "hostB", {}) > 3
    # The backup beside it is main's store as it was: private, no version, no new columns.
    (backup,) = tmp_path.glob("jobs.sqlite.v1-backup-*")
    assert mode(backup) == 0o600
    with sqlite3.connect(backup) as old:
        columns = [row[1] for row in old.execute("PRAGMA table_info(jobs)")]
        assert "pid_start" not in columns and "pid" in columns
        assert old.execute("SELECT count(*) FROM jobs").fetchone() == (3,)
    store.close()
    JobStore(path).close()  # opened again: no second migration, no second backup
    assert len(list(tmp_path.glob("jobs.sqlite.v1-backup-*"))) == 1


def test_a_store_newer_than_this_vmigrate_is_refused(store_at: StoreLocation) -> None:
    store = JobStore(store_at)
    job = store.create_job("cold", "db1", "hostA", "hostB", {})
    tamper(store, "UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    store.close()
    with pytest.raises(StoreError) as refused:
        JobStore(store_at)
    assert f"schema version 99, newer than this vmigrate ({vmigrate.__version__}) knows " in (
        refused.value.message
    )
    assert f"(version {SCHEMA_VERSION})" in refused.value.message
    assert "upgrade vmigrate" in refused.value.fix
    result = CliRunner().invoke(cli, ["jobs", "--store", str(store_at)])
    assert result.exit_code == 1 and "schema version 99" in result.output
    assert "Traceback" not in result.output
    # Nothing changed in it.
    if isinstance(store_at, Path):
        with sqlite3.connect(store_at) as db:
            assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (
                "99",
            )
            assert db.execute("SELECT state FROM jobs WHERE id = ?", (job,)).fetchone() == (
                "running",
            )


# --- PostgreSQL: what goes wrong is said clearly, and changes nothing ------------------------


def refused_by_cli(store: str) -> str:
    """`vmigrate jobs --store STORE` fails cleanly with exit 1: its output."""
    result = CliRunner().invoke(cli, ["jobs", "--store", store])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "what to do" in result.output
    return result.output


def test_a_server_that_does_not_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as silent:  # accepts the TCP connection, then says nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        url = f"postgresql://vmigrate@127.0.0.1:{port}/vmigrate"
        started = time.monotonic()
        with pytest.raises(StoreError) as refused:
            JobStore(url)
        assert CONNECT_TIMEOUT_S <= time.monotonic() - started < CONNECT_TIMEOUT_S + 3
    assert f"the PostgreSQL server at 127.0.0.1:{port} did not answer" in refused.value.message
    assert "listen_addresses" in refused.value.fix
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    output = refused_by_cli(f"postgresql://vmigrate@127.0.0.1:{port}/vmigrate")
    assert f"127.0.0.1:{port} did not answer" in output


def test_a_wrong_password(
    postgres: PostgresServer, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGPASSWORD", "not-" + postgres.password)
    with pytest.raises(StoreError) as refused:
        JobStore(pg_url)
    assert f"refused role {USER}: wrong or missing password" in refused.value.message
    assert "~/.pgpass" in refused.value.fix
    output = refused_by_cli(pg_url)
    assert "wrong or missing password" in output and postgres.password not in output


def test_the_password_from_a_pgpass_file(
    postgres: PostgresServer, pg_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PGPASSWORD")
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{postgres.port}:*:{USER}:{postgres.password}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    store = JobStore(pg_url)
    assert store.create_job("cold", "db1", "a", "b", {}) == 1


def test_a_missing_database(postgres: PostgresServer, pg_url: str) -> None:
    url = postgres.url("no_such_db")
    with pytest.raises(StoreError) as refused:
        JobStore(url)
    assert "has no database 'no_such_db'" in refused.value.message
    assert f"createdb -h 127.0.0.1 -p {postgres.port} -U {USER} no_such_db" in refused.value.fix
    refused_by_cli(url)


def test_a_role_that_may_not_create_the_tables(
    postgres: PostgresServer, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGPASSWORD", postgres.powerless_password)
    url = pg_url.replace(f"{USER}@", f"{POWERLESS}@")
    with pytest.raises(StoreError) as refused:
        JobStore(url)
    assert f"role {POWERLESS} lacks a privilege" in refused.value.message
    assert "permission denied for schema public" in refused.value.message
    assert f"GRANT CREATE ON SCHEMA public TO {POWERLESS}" in refused.value.fix
    refused_by_cli(url)
    # Nothing was made.
    with postgres.admin(pg_url.rsplit("/", 1)[1]) as db:
        assert db.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname='public'"
        ).fetchone() == (0,)


def test_a_role_without_privileges_on_the_tables(
    postgres: PostgresServer, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    JobStore(pg_url).create_job("cold", "db1", "a", "b", {})  # the tables exist, USER's
    monkeypatch.setenv("PGPASSWORD", postgres.powerless_password)
    url = pg_url.replace(f"{USER}@", f"{POWERLESS}@")
    with pytest.raises(StoreError) as refused:
        JobStore(url)
    assert f"role {POWERLESS} lacks a privilege" in refused.value.message
    assert "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES" in refused.value.fix


def test_a_role_granted_the_tables_uses_the_store_without_creating_anything(
    postgres: PostgresServer, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    JobStore(pg_url).close()
    database = pg_url.rsplit("/", 1)[1]
    with postgres.admin(database) as db:
        db.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {POWERLESS}"
        )
        db.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {POWERLESS}")
    monkeypatch.setenv("PGPASSWORD", postgres.powerless_password)
    store = JobStore(pg_url.replace(f"{USER}@", f"{POWERLESS}@"))
    job = store.create_job("cold", "db1", "a", "b", {})
    store.finish_job(job, "completed", "done", {})
    assert store.job(job).state == "completed"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://ops:s3cr3t-pw@db.example:5432/vmigrate",
        "postgresql://ops@db.example/vmigrate?password=s3cr3t-pw",
    ],
)
def test_a_url_with_a_password_is_refused(url: str) -> None:
    with pytest.raises(UsageError) as refused:
        JobStore(url)
    assert "s3cr3t-pw" not in str(refused.value)
    assert "carries a password" in refused.value.message
    assert "~/.pgpass" in refused.value.fix and "PGPASSWORD" in refused.value.fix
    result = CliRunner().invoke(cli, ["jobs", "--store", url])
    assert result.exit_code == 2 and "s3cr3t-pw" not in result.output


# --- where the store is: --store, config.toml, and what children get ------------------------


def test_the_store_named_in_config_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store_at: StoreLocation
) -> None:
    config = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    (config / "vmigrate").mkdir(parents=True)
    (config / "vmigrate" / "config.toml").write_text(f'store = "{store_at}"\n')
    assert configured_store() == store_at
    job = JobStore().create_job("cold", "db1", "a", "b", {})
    result = CliRunner().invoke(cli, ["jobs", "--json"])
    assert result.exit_code == 0, result.output
    assert [j["id"] for j in json.loads(result.output)] == [job]
    # --store wins over the file.
    other = tmp_path / "other.sqlite"
    result = CliRunner().invoke(cli, ["jobs", "--store", str(other), "--json"])
    assert result.exit_code == 0 and json.loads(result.output) == []
    assert not default_store_path().exists()


def test_a_broken_config_toml_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "vmigrate").mkdir()
    (tmp_path / "vmigrate" / "config.toml").write_text("store = 3\n")
    with pytest.raises(UsageError, match="store must be a path or a postgresql:// URL"):
        JobStore()


def test_children_get_the_store_as_given(pg_url: str) -> None:
    store = JobStore(pg_url)
    # Fleet moves pass `--store str(store.path)` to each child: the URL, with no password.
    assert str(store.path) == pg_url and store_location(str(store.path)) == pg_url
    assert store.path.parent.is_relative_to(default_store_path().parent)
    assert JobStore(store_location(str(store.path))).identity == store.identity
