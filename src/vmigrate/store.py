"""The job store: every migration job with its parameters, samples, actions and outcome (SQLite).

One file, default `$XDG_STATE_HOME/vmigrate/jobs.sqlite` (~/.local/state/vmigrate/...).
Nothing secret goes in: URIs are stored without passwords. It still holds domain XML and
the controls that steer running jobs, so it is private: directory 0700, files 0600. Each
write is its own transaction, so a job killed mid-way leaves a consistent record that
`vmigrate jobs` shows as interrupted.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from vmigrate.errors import NotFound, UsageError, VmigrateError

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    vm TEXT NOT NULL,
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL,
    pid INTEGER,
    started REAL NOT NULL,
    finished REAL,
    outcome TEXT,
    report TEXT
);
CREATE TABLE IF NOT EXISTS samples (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    t REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS actions (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    t REAL NOT NULL,
    action TEXT NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS controls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    command TEXT NOT NULL,
    value REAL,
    requested_at REAL NOT NULL,
    requested_by TEXT NOT NULL,
    handled_at REAL,
    result TEXT
);
CREATE TABLE IF NOT EXISTS steps (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL,
    t REAL NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS maintenance (
    uri TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    since REAL NOT NULL,
    job_id INTEGER,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS lease_events (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    t REAL NOT NULL,
    vm TEXT NOT NULL,
    host TEXT NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_job ON samples(job_id, t);
CREATE INDEX IF NOT EXISTS actions_job ON actions(job_id, t);
"""
RUNNING = "running"

#: Where a job store lives: a SQLite file (a Path) or a database URL (a str).
StoreLocation = Path | str
#: URL schemes that name a database server rather than a file.
URL_SCHEMES = ("postgresql://", "postgres://")


def store_location(value: str | Path | None) -> StoreLocation | None:
    """A store named on the command line or in a job's parameters: a URL stays a string
    (a Path would fold its '//'), anything else is a file path."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.startswith(URL_SCHEMES):
        return value
    return Path(value)


def default_store_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "vmigrate" / "jobs.sqlite"


def redact_uri(uri: str) -> str:
    """A URI without any password (user:secret@host -> user@host)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.hostname or ""
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class JobRecord:
    id: int
    kind: str
    vm: str
    source: str
    destination: str
    params: dict[str, Any]
    state: str  # running | completed | failed | aborted | interrupted
    pid: int | None
    started: float
    finished: float | None
    outcome: str | None
    report: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "vm": self.vm,
            "source": self.source,
            "destination": self.destination,
            "params": self.params,
            "state": self.state,
            "pid": self.pid,
            "started": self.started,
            "finished": self.finished,
            "outcome": self.outcome,
            "report": self.report,
        }


@dataclass(frozen=True)
class ControlRequest:
    """A request from another terminal to the process running a job."""

    id: int
    job_id: int
    command: str  # cancel | postcopy | max-downtime | bandwidth
    value: float | None
    requested_by: str
    handled_at: float | None = None
    result: str | None = None


@dataclass(frozen=True)
class StepRecord:
    """One step of a cold migration's journal, as last recorded."""

    seq: int
    name: str
    state: str  # started | done | failed | undone
    detail: dict[str, Any]
    t: float


@dataclass(frozen=True)
class MaintenanceRecord:
    """A host in maintenance: no plan sends VMs there until `vmigrate maintenance end`."""

    uri: str
    host: str
    since: float
    job_id: int | None  # the evacuation that emptied it
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "host": self.host,
            "since": self.since,
            "job_id": self.job_id,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class ActionRecord:
    t: float
    action: str
    reason: str
    actor: str


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: The store holds domain XML, host URIs and the controls that steer running jobs: only its
#: owner may read or write it.
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
#: The files SQLite keeps beside the database (WAL mode; a rollback journal if it ever falls
#: back to one). SQLite creates them with the database file's own mode.
SIDE_FILE_SUFFIXES = ("-wal", "-shm", "-journal")


def store_files(path: Path) -> list[Path]:
    """The database file and the side files SQLite may keep next to it."""
    return [path, *(path.with_name(path.name + suffix) for suffix in SIDE_FILE_SUFFIXES)]


def _restrict(path: Path, allowed: int) -> None:
    """Take away every permission bit outside `allowed` (never adds one)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & ~allowed:
        path.chmod(mode & allowed)


def make_private(path: Path) -> None:
    """Create the store's file (and its directory if missing) readable by its owner only, and
    tighten an existing store and side files that are looser.

    A directory vmigrate creates, and the default one, are made 0700; an existing directory
    the user chose with --store (the current directory, /tmp) is left as it is: the files in
    it are private either way.
    """
    directory = path.parent
    try:
        directory.mkdir(parents=True, mode=PRIVATE_DIR_MODE)
    except FileExistsError:
        if directory == default_store_path().parent:
            _restrict(directory, PRIVATE_DIR_MODE)
    else:
        directory.chmod(PRIVATE_DIR_MODE)  # mkdir's mode went through the umask
    # Created private before SQLite opens it: SQLite would create it 0644.
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    for file in store_files(path):
        if file.exists():
            _restrict(file, PRIVATE_FILE_MODE)


def _open_error(path: Path, err: OSError | sqlite3.Error) -> VmigrateError:
    """What to tell the user when the store cannot be opened."""
    if isinstance(err, sqlite3.DatabaseError) and err.sqlite_errorname in (
        "SQLITE_NOTADB",
        "SQLITE_CORRUPT",
    ):
        return VmigrateError(
            f"the job store {path} is damaged: {err}",
            fix=f"move it aside (`mv {path} {path}.damaged`) and vmigrate starts a new store "
            "there, or pass --store PATH to use another one",
        )
    if isinstance(err, OSError):
        what = f"{err.filename or path}: {err.strerror or err}"
    else:
        what = str(err)
    return UsageError(
        f"cannot open the job store {path} ({what})",
        fix=f"make {path.parent} a directory this user can write, and the store's files "
        f"writable by it (their owner can `chmod 700 {path.parent}` and "
        f"`chmod 600 {path}*`), or pass --store PATH to a writable location",
    )


#: Every store this process opened, for record_unexpected_failure().
_opened: set[Path] = set()


def record_unexpected_failure(message: str) -> None:
    """In every store this process opened, mark the jobs it was still running as interrupted
    by an unexpected failure (`message`), so `vmigrate jobs` says why and `recover`, `jobs
    resume` or `jobs rollback` take them as usual. Never raises: the CLI calls it last."""
    outcome = f"vmigrate stopped on an unexpected failure: {message}"
    for path in sorted(_opened):
        with suppress(Exception):
            db = sqlite3.connect(path, timeout=5.0, isolation_level=None)
            try:
                db.execute(
                    "UPDATE jobs SET state = ?, outcome = ?, finished = ? "
                    "WHERE state = ? AND pid = ?",
                    ("interrupted", outcome, time.time(), RUNNING, os.getpid()),
                )
            finally:
                db.close()


class JobStore:
    def __init__(self, path: StoreLocation | None = None) -> None:
        if isinstance(path, str):
            if path.startswith(URL_SCHEMES):
                raise UsageError(
                    "this vmigrate keeps jobs in SQLite only", fix="pass --store PATH to a file"
                )
            path = Path(path)
        self.path = path or default_store_path()
        db: sqlite3.Connection | None = None
        try:
            make_private(self.path)
            db = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as err:
            if db is not None:
                db.close()
            raise _open_error(self.path, err) from err
        self._db = db
        _opened.add(self.path)
        self.identity = self._identity()

    def _identity(self) -> str:
        """This store's UUID, made once: leases name the store their job is recorded in."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('identity', ?)",
                (str(uuid.uuid4()),),
            )
            row = db.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()
        return str(row[0])

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def create_job(
        self, kind: str, vm: str, source: str, destination: str, params: dict[str, Any]
    ) -> int:
        with self._tx() as db:
            cursor = db.execute(
                "INSERT INTO jobs (kind, vm, source, destination, params, state, pid, started)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    kind,
                    vm,
                    redact_uri(source),
                    redact_uri(destination),
                    json.dumps(params, default=str),
                    RUNNING,
                    os.getpid(),
                    time.time(),
                ),
            )
            return int(cursor.lastrowid or 0)

    def add_sample(self, job_id: int, data: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO samples (job_id, t, data) VALUES (?, ?, ?)",
                (job_id, time.time(), json.dumps(data)),
            )

    def add_action(self, job_id: int, action: str, reason: str, actor: str = "policy") -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO actions (job_id, t, action, reason, actor) VALUES (?,?,?,?,?)",
                (job_id, time.time(), action, reason, actor),
            )

    def finish_job(self, job_id: int, state: str, outcome: str, report: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = ?, outcome = ?, report = ?, finished = ? WHERE id = ?",
                (state, outcome, json.dumps(report, default=str), time.time(), job_id),
            )

    def _record(self, row: tuple[Any, ...]) -> JobRecord:
        (
            job_id,
            kind,
            vm,
            source,
            destination,
            params,
            state,
            pid,
            started,
            finished,
            outcome,
            report,
        ) = row
        if state == RUNNING and not _alive(pid):
            state = "interrupted"  # the process driving it died
        return JobRecord(
            job_id,
            kind,
            vm,
            source,
            destination,
            json.loads(params),
            state,
            pid,
            started,
            finished,
            outcome,
            json.loads(report) if report else None,
        )

    def jobs(self, limit: int = 50) -> list[JobRecord]:
        rows = self._db.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
        return [self._record(row) for row in rows]

    def open_jobs(self, vm: str) -> list[JobRecord]:
        """Jobs that still hold the VM: running ones, and cold moves left half-done."""
        rows = self._db.execute("SELECT * FROM jobs WHERE vm = ? ORDER BY id", (vm,))
        records = [self._record(row) for row in rows]
        return [
            r
            for r in records
            if r.state == RUNNING or (r.kind == "cold" and r.state in ("interrupted", "failed"))
        ]

    def ensure_no_open_job(self, vm: str) -> None:
        """Refuse to start a second move of a VM that one job has not finished with."""
        for record in self.open_jobs(vm):
            if record.state == RUNNING:
                fix = (
                    f"wait for it, or cancel it with `vmigrate jobs cancel {record.id}`"
                    if record.kind == "live"
                    else f"wait for it, or stop process {record.pid} and roll it back"
                )
            else:
                fix = (
                    f"finish it with `vmigrate jobs resume {record.id}` or undo it with "
                    f"`vmigrate jobs rollback {record.id}`"
                )
            raise VmigrateError(
                f"{vm!r} is in the middle of {record.kind} job {record.id} "
                f"({record.source} -> {record.destination}, {record.state})",
                vm=vm,
                fix=fix,
            )

    def job(self, job_id: int) -> JobRecord:
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(
                f"no job {job_id} in {self.path}", fix="list the jobs with `vmigrate jobs`"
            )
        return self._record(row)

    def samples(self, job_id: int) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT t, data FROM samples WHERE job_id = ? ORDER BY t", (job_id,)
        )
        return [{"t": t, **json.loads(data)} for t, data in rows]

    def actions(self, job_id: int) -> list[ActionRecord]:
        rows = self._db.execute(
            "SELECT t, action, reason, actor FROM actions WHERE job_id = ? ORDER BY t", (job_id,)
        )
        return [ActionRecord(*row) for row in rows]

    def request_control(
        self, job_id: int, command: str, value: float | None, requested_by: str
    ) -> int:
        with self._tx() as db:
            cursor = db.execute(
                "INSERT INTO controls (job_id, command, value, requested_at, requested_by)"
                " VALUES (?, ?, ?, ?, ?)",
                (job_id, command, value, time.time(), requested_by),
            )
            return int(cursor.lastrowid or 0)

    def pending_controls(self, job_id: int) -> list[ControlRequest]:
        rows = self._db.execute(
            "SELECT id, job_id, command, value, requested_by FROM controls "
            "WHERE job_id = ? AND handled_at IS NULL ORDER BY id",
            (job_id,),
        )
        return [ControlRequest(*row) for row in rows]

    def mark_control(self, control_id: int, result: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE controls SET handled_at = ?, result = ? WHERE id = ?",
                (time.time(), result, control_id),
            )

    def control(self, control_id: int) -> ControlRequest:
        row = self._db.execute(
            "SELECT id, job_id, command, value, requested_by, handled_at, result "
            "FROM controls WHERE id = ?",
            (control_id,),
        ).fetchone()
        return ControlRequest(*row)

    def record_step(
        self, job_id: int, seq: int, name: str, state: str, detail: dict[str, Any]
    ) -> None:
        """Write a step's state before and after it runs (one row per step, replaced)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO steps (job_id, seq, name, state, detail, t) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, seq, name, state, json.dumps(detail, default=str), time.time()),
            )

    def steps(self, job_id: int) -> list[StepRecord]:
        rows = self._db.execute(
            "SELECT seq, name, state, detail, t FROM steps WHERE job_id = ? ORDER BY seq", (job_id,)
        )
        return [
            StepRecord(seq, name, state, json.loads(detail), t)
            for seq, name, state, detail, t in rows
        ]

    def reopen_job(self, job_id: int) -> None:
        """A resumed or rolled-back job is driven by this process from now on."""
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET state = ?, pid = ?, finished = NULL WHERE id = ?",
                (RUNNING, os.getpid(), job_id),
            )

    def set_maintenance(self, host: str, uri: str, job_id: int | None, reason: str) -> None:
        """Mark a host in maintenance (kept when it already is: the first reason stays)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO maintenance (uri, host, since, job_id, reason) VALUES (?,?,?,?,?) "
                "ON CONFLICT(uri) DO UPDATE SET job_id = excluded.job_id",
                (redact_uri(uri), host, time.time(), job_id, reason),
            )

    def end_maintenance(self, uri: str) -> MaintenanceRecord | None:
        record = self.maintenance().get(redact_uri(uri))
        with self._tx() as db:
            db.execute("DELETE FROM maintenance WHERE uri = ?", (redact_uri(uri),))
        return record

    def maintenance(self) -> dict[str, MaintenanceRecord]:
        """Every host in maintenance, by URI."""
        rows = self._db.execute("SELECT uri, host, since, job_id, reason FROM maintenance")
        return {row[0]: MaintenanceRecord(*row) for row in rows}

    def in_maintenance(self, uri: str) -> bool:
        return redact_uri(uri) in self.maintenance()

    def set_job_params(self, job_id: int, params: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET params = ? WHERE id = ?",
                (json.dumps(params, default=str), job_id),
            )

    def moved_by(self, kind: str, since: float) -> dict[str, float]:
        """VM -> when it was moved by a fleet job of `kind` started after `since` (epoch s)."""
        rows = self._db.execute(
            "SELECT steps.name, steps.t FROM steps JOIN jobs ON jobs.id = steps.job_id "
            "WHERE jobs.kind = ? AND jobs.started >= ? AND steps.state = 'moved'",
            (kind, since),
        )
        return {name: t for name, t in rows}

    def record_lease_event(
        self, job_id: int, vm: str, host: str, event: str, detail: dict[str, Any]
    ) -> None:
        """Lease history: taken, renewed, released, taken over, refused (never a secret)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO lease_events (job_id, t, vm, host, event, detail) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, time.time(), vm, host, event, json.dumps(detail, default=str)),
            )

    def lease_events(self, job_id: int) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT t, vm, host, event, detail FROM lease_events WHERE job_id = ? ORDER BY t",
            (job_id,),
        )
        return [
            {"t": t, "vm": vm, "host": host, "event": event, **json.loads(detail)}
            for t, vm, host, event, detail in rows
        ]

    def jobs_of_kind(self, kind: str) -> list[JobRecord]:
        rows = self._db.execute("SELECT * FROM jobs WHERE kind = ? ORDER BY id DESC", (kind,))
        return [self._record(row) for row in rows]
