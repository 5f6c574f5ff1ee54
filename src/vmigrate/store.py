"""The job store: every job with its parameters, samples, actions, steps, events and
outcome, the hosts in maintenance and the lease history; in SQLite (a file, the default) or
PostgreSQL (a database a team shares).

SQLite: default `$XDG_STATE_HOME/vmigrate/jobs.sqlite` (~/.local/state/vmigrate/...), or
`store = "..."` in `$XDG_CONFIG_HOME/vmigrate/config.toml`, or `--store`. PostgreSQL:
`--store postgresql://user@host:port/db` (or the same in config.toml), its password never in
the URL (~/.pgpass, PGPASSFILE or PGPASSWORD). Nothing secret goes in: URIs are stored
without passwords. It still holds domain XML and the controls that steer running jobs, so a
SQLite store is private: directory 0700, files 0600.

Each write is its own transaction, so a job killed mid-way leaves a consistent record that
`vmigrate jobs` shows as interrupted. Every change of a job's state is checked against the
lifecycle (lifecycle.py) in the same transaction that makes it: two terminals cannot both
start a move of one VM, nor both resume (or resume and roll back) one job.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
import tomllib
import uuid
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from vmigrate import lifecycle
from vmigrate.errors import NotFound, UsageError, VmigrateError
from vmigrate.owner import Liveness, ProcessIdentity, liveness, this_process
from vmigrate.store_sql import (
    Database,
    PostgresDatabase,
    SqliteDatabase,
    StoreError,
    check_url,
)

#: The schema this vmigrate writes. 1: main before the job lifecycle (no version recorded);
#: 2: the owner's start time, boot id and machine, and the action that reopened a job;
#: 3: the events table (every job's typed events, in order, for another process to follow).
SCHEMA_VERSION = 3
#: Every job's events (events.py), in the order they were written: `seq` grows store-wide
#: (it is the server's SSE event id), `body` is the encoded event (JSON).
EVENTS_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS events (
    seq {serial},
    job_id BIGINT NOT NULL REFERENCES jobs(id),
    kind TEXT NOT NULL,
    t DOUBLE PRECISION NOT NULL,
    body TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS events_job ON events(job_id, seq)",
)
#: One statement each, in what SQLite and PostgreSQL both understand ({serial}: the id column).
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS jobs (
    id {serial},
    kind TEXT NOT NULL,
    vm TEXT NOT NULL,
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL,
    pid BIGINT,
    started DOUBLE PRECISION NOT NULL,
    finished DOUBLE PRECISION,
    outcome TEXT,
    report TEXT,
    pid_start BIGINT,
    boot_id TEXT,
    machine TEXT,
    action TEXT
)""",
    """CREATE TABLE IF NOT EXISTS samples (
    job_id BIGINT NOT NULL REFERENCES jobs(id),
    t DOUBLE PRECISION NOT NULL,
    data TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS actions (
    job_id BIGINT NOT NULL REFERENCES jobs(id),
    t DOUBLE PRECISION NOT NULL,
    action TEXT NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS controls (
    id {serial},
    job_id BIGINT NOT NULL REFERENCES jobs(id),
    command TEXT NOT NULL,
    value DOUBLE PRECISION,
    requested_at DOUBLE PRECISION NOT NULL,
    requested_by TEXT NOT NULL,
    handled_at DOUBLE PRECISION,
    result TEXT
)""",
    """CREATE TABLE IF NOT EXISTS steps (
    job_id BIGINT NOT NULL REFERENCES jobs(id),
    seq BIGINT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL,
    t DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, seq)
)""",
    """CREATE TABLE IF NOT EXISTS maintenance (
    uri TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    since DOUBLE PRECISION NOT NULL,
    job_id BIGINT,
    reason TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS lease_events (
    job_id BIGINT NOT NULL REFERENCES jobs(id),
    t DOUBLE PRECISION NOT NULL,
    vm TEXT NOT NULL,
    host TEXT NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS samples_job ON samples(job_id, t)",
    "CREATE INDEX IF NOT EXISTS actions_job ON actions(job_id, t)",
    *EVENTS_SCHEMA,
)
#: Version 1 -> 2: the columns that tell whether a job's process still runs.
MIGRATE_1_TO_2 = (
    "ALTER TABLE jobs ADD COLUMN pid_start BIGINT",
    "ALTER TABLE jobs ADD COLUMN boot_id TEXT",
    "ALTER TABLE jobs ADD COLUMN machine TEXT",
    "ALTER TABLE jobs ADD COLUMN action TEXT",
)
#: Version 2 -> 3 is EVENTS_SCHEMA: a new table needs no ALTER, SCHEMA creates it.
JOB_COLUMNS = (
    "id, kind, vm, source, destination, params, state, pid, started, finished, outcome, "
    "report, pid_start, boot_id, machine, action"
)
RUNNING = lifecycle.RUNNING

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


def config_path() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "vmigrate" / "config.toml"


def configured_store() -> StoreLocation | None:
    """`store = "..."` in config.toml (a path or a postgresql:// URL), if set."""
    path = config_path()
    try:
        with path.open("rb") as file:
            config = tomllib.load(file)
    except FileNotFoundError:
        return None
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise UsageError(
            f"cannot read {path}: {err}", fix=f'fix the file; it holds e.g. store = "{path}"'
        ) from err
    value = config.get("store")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise UsageError(
            f"{path}: store must be a path or a postgresql:// URL, not {value!r}",
            fix='e.g. store = "postgresql://vmigrate@db.example/vmigrate"',
        )
    return value if value.startswith(URL_SCHEMES) else Path(value).expanduser()


class DatabaseURL(str):
    """A PostgreSQL store's URL (never with a password), where a SQLite store has its path:
    `str()` is what children get as `--store`; `.parent` is the directory on this machine
    for the files of its jobs (move logs), as a SQLite store's directory is."""

    __slots__ = ()

    @property
    def parent(self) -> Path:
        parts = urlsplit(self)
        name = f"{parts.hostname or 'local'}_{parts.port or 5432}_{parts.path.strip('/')}"
        return default_store_path().parent / "postgresql" / name.replace("/", "_")


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
    # planned | running | completed | failed | cancelled | aborted | rolled back | interrupted
    # (a running job whose process is gone reads as interrupted)
    state: str
    pid: int | None
    started: float
    finished: float | None
    outcome: str | None
    report: dict[str, Any] | None
    owner: ProcessIdentity | None = None  # the process that created or last reopened it
    action: str | None = None  # resume | rollback: what reopened it last
    liveness: Liveness | None = None  # of a running job's process

    @property
    def holder(self) -> str:
        return self.owner.describe() if self.owner else f"process {self.pid}"

    @property
    def elsewhere(self) -> bool:
        """Run by a process on another machine: its PID cannot be judged here, so the job
        counts as running (its lease on the VM says whether it is)."""
        return self.liveness is Liveness.ELSEWHERE

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
            "machine": self.owner.machine if self.owner else None,
            "action": self.action,
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
class StoredEvent:
    """One event of a job as the store keeps it: `body` is the encoded event (events.decode
    makes it typed again)."""

    seq: int  # store-wide, increasing: read on with events_after(seq)
    job_id: int
    kind: str
    t: float  # when it was written (epoch s)
    body: dict[str, Any]


@dataclass(frozen=True)
class ActionRecord:
    t: float
    action: str
    reason: str
    actor: str


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


def _private_copy(db: SqliteDatabase, path: Path, version: int) -> Path:
    """A copy of the store as it is, next to it (never over another file), before a
    migration changes it: `jobs.sqlite.v1-backup-20261207T120000`, private like the store."""
    stem = f"{path.name}.v{version}-backup-{time.strftime('%Y%m%dT%H%M%S')}"
    for n in range(1, 100):
        target = path.with_name(stem if n == 1 else f"{stem}-{n}")
        try:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
        except FileExistsError:
            continue
        db.backup(target)
        return target
    raise StoreError(f"cannot find a free name for a backup of {path} ({stem}-N)")


def _too_new(name: str, found: int) -> StoreError:
    from vmigrate import __version__

    return StoreError(
        f"the job store {name} has schema version {found}, newer than this vmigrate "
        f"({__version__}) knows (version {SCHEMA_VERSION}); it was left as it is",
        fix="upgrade vmigrate to the version the rest of the team uses (a newer vmigrate "
        "wrote this store), or pass --store to use another store",
    )


def _version(db: Database) -> int | None:
    """The store's schema version; 1 for a store made before versions were recorded; None
    for an empty database."""
    tables = db.tables()
    if "meta" in tables:
        rows = db.query("SELECT value FROM meta WHERE key = 'schema_version'")
        if rows:
            return int(rows[0][0])
    return 1 if "jobs" in tables else None


def _prepare_schema(db: Database, location: Path | None) -> None:
    """Create the tables, or bring an older store to this schema (after a backup copy), or
    refuse a newer one, all in one transaction."""
    version = _version(db)
    if version == SCHEMA_VERSION:
        return  # no DDL: a role that may only read and write the tables opens it too
    if version is not None and version > SCHEMA_VERSION:
        raise _too_new(db.name, version)
    with db.transaction(lock_key="vmigrate schema"):
        version = _version(db)  # another vmigrate may have done it meanwhile
        if version == SCHEMA_VERSION:
            return
        if version is not None and version > SCHEMA_VERSION:
            raise _too_new(db.name, version)
        if version is not None and isinstance(db, SqliteDatabase) and location is not None:
            _private_copy(db, location, version)
        for statement in SCHEMA:  # CREATE ... IF NOT EXISTS: also every table a migration adds
            db.run(statement.format(serial=db.serial))
        if version == 1:
            for statement in MIGRATE_1_TO_2:
                db.run(statement)
        if version != SCHEMA_VERSION:
            db.run(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )


def _connect(location: StoreLocation) -> Database:
    if isinstance(location, str):
        return PostgresDatabase(location)
    try:
        make_private(location)
        return SqliteDatabase(location)
    except (OSError, sqlite3.Error) as err:
        raise _open_error(location, err) from err


#: Every store this process opened, for record_unexpected_failure().
_opened: set[StoreLocation] = set()


def record_unexpected_failure(message: str) -> None:
    """In every store this process opened, mark the jobs it was still running as interrupted
    by an unexpected failure (`message`), so `vmigrate jobs` says why and `recover`, `jobs
    resume` or `jobs rollback` take them as usual. Never raises: the CLI calls it last."""
    outcome = f"vmigrate stopped on an unexpected failure: {message}"
    me = this_process()
    for location in sorted(_opened, key=str):
        with suppress(Exception):
            db = _connect(location)
            try:
                db.run(
                    "UPDATE jobs SET state = ?, outcome = ?, finished = ? WHERE state = ? "
                    "AND pid = ? AND pid_start IS NOT DISTINCT FROM ? "
                    "AND boot_id IS NOT DISTINCT FROM ?",
                    ("interrupted", outcome, time.time(), RUNNING, me.pid, me.start, me.boot_id),
                )
            finally:
                db.close()


def _open_fix(record: JobRecord) -> str:
    if record.state == RUNNING:
        if record.kind == "live":
            return f"wait for it, or cancel it with `vmigrate jobs cancel {record.id}`"
        return f"wait for it, or stop {record.holder} and roll it back"
    return (
        f"finish it with `vmigrate jobs resume {record.id}` or undo it with "
        f"`vmigrate jobs rollback {record.id}`"
    )


def refuse_open_jobs(vm: str, records: list[JobRecord]) -> None:
    """Refuse a second move of a VM that one of `records` has not finished with."""
    for record in records:
        raise VmigrateError(
            f"{vm!r} is in the middle of {record.kind} job {record.id} "
            f"({record.source} -> {record.destination}, {record.state}"
            + (f", {record.holder}" if record.state == RUNNING else "")
            + ")",
            vm=vm,
            fix=_open_fix(record),
        )


def _holds_vm(record: JobRecord) -> bool:
    return record.state == RUNNING or (
        record.kind == "cold" and record.state in (lifecycle.INTERRUPTED, lifecycle.FAILED)
    )


#: Job kinds that move one VM: at most one open job per VM.
VM_KINDS = frozenset({"live", "cold"})


class JobStore:
    def __init__(self, path: StoreLocation | None = None) -> None:
        location = path if path is not None else configured_store() or default_store_path()
        if isinstance(location, str) and not location.startswith(URL_SCHEMES):
            location = Path(location)
        if isinstance(location, str):
            location = DatabaseURL(check_url(location))
        self.path: Path | DatabaseURL = location
        db = _connect(location)
        try:
            _prepare_schema(db, location if isinstance(location, Path) else None)
        except sqlite3.Error as err:
            db.close()
            raise _open_error(Path(location), err) from err
        except BaseException:
            db.close()
            raise
        self._db = db
        _opened.add(location)
        self.identity = self._identity()

    def _identity(self) -> str:
        """This store's UUID, made once: leases name the store their job is recorded in."""
        rows = self._db.query("SELECT value FROM meta WHERE key = 'identity'")
        if not rows:
            self._db.run(
                "INSERT INTO meta (key, value) VALUES ('identity', ?) ON CONFLICT (key) DO NOTHING",
                (str(uuid.uuid4()),),
            )
            rows = self._db.query("SELECT value FROM meta WHERE key = 'identity'")
        return str(rows[0][0])

    def schema_version(self) -> int:
        rows = self._db.query("SELECT value FROM meta WHERE key = 'schema_version'")
        return int(rows[0][0])

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def create_job(
        self, kind: str, vm: str, source: str, destination: str, params: dict[str, Any]
    ) -> int:
        """A new running job, driven by this process. A live or cold job is refused, in the
        same transaction as its INSERT, while another job holds the VM."""
        me = this_process()
        with self._db.transaction(lock_key=f"vm {vm}" if kind in VM_KINDS else None):
            if kind in VM_KINDS:
                refuse_open_jobs(vm, self._open_jobs(vm))
            rows = self._db.query(
                "INSERT INTO jobs (kind, vm, source, destination, params, state, pid, started,"
                " pid_start, boot_id, machine) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " RETURNING id",
                (
                    kind,
                    vm,
                    redact_uri(source),
                    redact_uri(destination),
                    json.dumps(params, default=str),
                    RUNNING,
                    me.pid,
                    time.time(),
                    me.start,
                    me.boot_id,
                    me.machine,
                ),
            )
        return int(rows[0][0])

    def add_sample(self, job_id: int, data: dict[str, Any]) -> None:
        self._db.run(
            "INSERT INTO samples (job_id, t, data) VALUES (?, ?, ?)",
            (job_id, time.time(), json.dumps(data)),
        )

    def add_action(self, job_id: int, action: str, reason: str, actor: str = "policy") -> None:
        self._db.run(
            "INSERT INTO actions (job_id, t, action, reason, actor) VALUES (?,?,?,?,?)",
            (job_id, time.time(), action, reason, actor),
        )

    def append_event(self, job_id: int, kind: str, body: dict[str, Any]) -> int:
        """Write one event of a job; its `seq`. Store-wide, the events are numbered in the
        order they become visible: a reader that has seen `seq` N never later finds one
        below N (on PostgreSQL a lock orders the numbering with the commits; SQLite writes
        one at a time anyway), so following with events_after() misses none."""
        with self._db.transaction(lock_key="vmigrate events"):
            rows = self._db.query(
                "INSERT INTO events (job_id, kind, t, body) VALUES (?, ?, ?, ?) RETURNING seq",
                (job_id, kind, time.time(), json.dumps(body, default=str)),
            )
        return int(rows[0][0])

    def events_after(
        self, after_seq: int, job_id: int | None = None, limit: int = 1000
    ) -> list[StoredEvent]:
        """The events written after `after_seq` (0: from the first), oldest first, of one
        job or of all; at most `limit`."""
        where, params = (
            ("seq > ?", (after_seq,))
            if job_id is None
            else (
                "seq > ? AND job_id = ?",
                (after_seq, job_id),
            )
        )
        rows = self._db.query(
            f"SELECT seq, job_id, kind, t, body FROM events WHERE {where} ORDER BY seq LIMIT ?",  # noqa: S608
            (*params, limit),
        )
        return [
            StoredEvent(int(seq), int(job), kind, t, json.loads(body))
            for seq, job, kind, t, body in rows
        ]

    def finish_job(self, job_id: int, state: str, outcome: str, report: dict[str, Any]) -> None:
        """Record how a job ended: by the process that drives it, or (recover) by one that
        settles a job nobody drives any more. Never over a job another live process drives."""
        with self._db.transaction():
            record = self._job(job_id)
            lifecycle.check_finish(record, state, ours=self._ours(record))
            changed = self._db.run(
                "UPDATE jobs SET state = ?, outcome = ?, report = ?, finished = ? "
                "WHERE id = ? AND state = ? AND pid IS NOT DISTINCT FROM ? "
                "AND pid_start IS NOT DISTINCT FROM ?",
                (
                    state,
                    outcome,
                    json.dumps(report, default=str),
                    time.time(),
                    job_id,
                    *self._stored_state(record),
                ),
            )
            if changed != 1:
                raise self._changed_meanwhile(job_id)

    def abandon_job(self, job_id: int, why: str) -> bool:
        """A job another machine's process drove and no longer does (its lease on the VM is
        stale or gone): recorded interrupted, so `jobs resume` / `rollback` / `recover` take
        it as any interrupted job. A compare-and-set: False when the row changed meanwhile
        (its process finished it, or someone else settled it first)."""
        with self._db.transaction():
            record = self._job(job_id)
            if record.state != RUNNING or not record.elsewhere:
                return False
            changed = self._db.run(
                "UPDATE jobs SET state = ?, outcome = ?, finished = ? "
                "WHERE id = ? AND state = ? AND pid IS NOT DISTINCT FROM ? "
                "AND pid_start IS NOT DISTINCT FROM ?",
                (
                    lifecycle.INTERRUPTED,
                    why,
                    time.time(),
                    job_id,
                    *self._stored_state(record),
                ),
            )
            return changed == 1

    def reopen_job(self, job_id: int, action: str = lifecycle.RESUME) -> JobRecord:
        """Take a stopped job over to `action` (resume or rollback) it in this process: one
        transaction that checks the lifecycle allows it and that nobody took it meanwhile, so
        of two terminals (two resumes, or a resume and a rollback) exactly one wins; the
        other gets a TransitionRefused saying who has it."""
        if action not in lifecycle.REOPENING:
            raise ValueError(f"{action!r} does not reopen a job")
        me = this_process()
        with self._db.transaction():
            record = self._job(job_id)
            lifecycle.check_action(record, action)
            changed = self._db.run(
                "UPDATE jobs SET state = ?, pid = ?, pid_start = ?, boot_id = ?, machine = ?, "
                "action = ?, finished = NULL WHERE id = ? AND state = ? "
                "AND pid IS NOT DISTINCT FROM ? AND pid_start IS NOT DISTINCT FROM ?",
                (
                    RUNNING,
                    me.pid,
                    me.start,
                    me.boot_id,
                    me.machine,
                    action,
                    job_id,
                    *self._stored_state(record),
                ),
            )
            if changed != 1:
                raise self._changed_meanwhile(job_id)
            self._db.run(
                "INSERT INTO actions (job_id, t, action, reason, actor) VALUES (?,?,?,?,?)",
                (job_id, time.time(), action, f"taken over from {record.state}", me.describe()),
            )
        return self.job(job_id)

    def check_action(self, job_id: int, action: str) -> JobRecord:
        """The job, if `action` is allowed on it now (else TransitionRefused): the early
        check of an action that does not reopen the job (recover, cancel)."""
        record = self.job(job_id)
        lifecycle.check_action(record, action)
        return record

    def _ours(self, record: JobRecord) -> bool:
        me = this_process()
        owner = record.owner
        return (
            owner is not None
            and owner.pid == me.pid
            and owner.start == me.start
            and owner.boot_id == me.boot_id
        )

    @staticmethod
    def _stored_state(record: JobRecord) -> tuple[str, int | None, int | None]:
        """The row's state and owner as stored (a dead process's job reads as interrupted)."""
        state = RUNNING if record.liveness is not None else record.state
        start = record.owner.start if record.owner else None
        return state, record.pid, start

    def _changed_meanwhile(self, job_id: int) -> lifecycle.TransitionRefused:
        now = self._job(job_id)
        return lifecycle.TransitionRefused(
            f"job {job_id} changed while this command looked at it: it is now {now.state}"
            + (f" ({now.holder})" if now.state == RUNNING else ""),
            vm=now.vm,
            fix=f"another vmigrate acted on it; see `vmigrate jobs show {job_id}`",
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
            pid_start,
            boot_id,
            machine,
            action,
        ) = row
        owner = ProcessIdentity(pid, pid_start, boot_id, machine) if pid is not None else None
        seen: Liveness | None = None
        if state == RUNNING:
            seen = liveness(owner, started, this_process()) if owner else Liveness.GONE
            if seen is Liveness.GONE:
                state = lifecycle.INTERRUPTED  # the process driving it died
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
            owner,
            action,
            seen,
        )

    def _select(self, where: str, params: tuple[Any, ...], tail: str = "") -> list[JobRecord]:
        rows = self._db.query(f"SELECT {JOB_COLUMNS} FROM jobs WHERE {where} {tail}", params)  # noqa: S608
        return [self._record(row) for row in rows]

    def jobs(self, limit: int = 50) -> list[JobRecord]:
        return self._select("1 = 1", (limit,), "ORDER BY id DESC LIMIT ?")

    def _open_jobs(self, vm: str) -> list[JobRecord]:
        return [r for r in self._select("vm = ?", (vm,), "ORDER BY id") if _holds_vm(r)]

    def open_jobs(self, vm: str) -> list[JobRecord]:
        """Jobs that still hold the VM: running ones, and cold moves left half-done."""
        return self._open_jobs(vm)

    def ensure_no_open_job(self, vm: str) -> None:
        """Refuse to start a second move of a VM that one job has not finished with (the
        early check; create_job checks again in the transaction that creates the job)."""
        refuse_open_jobs(vm, self._open_jobs(vm))

    def _job(self, job_id: int) -> JobRecord:
        records = self._select("id = ?", (job_id,))
        if not records:
            raise NotFound(
                f"no job {job_id} in {self.path}", fix="list the jobs with `vmigrate jobs`"
            )
        return records[0]

    def job(self, job_id: int) -> JobRecord:
        return self._job(job_id)

    def samples(self, job_id: int) -> list[dict[str, Any]]:
        rows = self._db.query("SELECT t, data FROM samples WHERE job_id = ? ORDER BY t", (job_id,))
        return [{"t": t, **json.loads(data)} for t, data in rows]

    def actions(self, job_id: int) -> list[ActionRecord]:
        rows = self._db.query(
            "SELECT t, action, reason, actor FROM actions WHERE job_id = ? ORDER BY t", (job_id,)
        )
        return [ActionRecord(*row) for row in rows]

    def request_control(
        self, job_id: int, command: str, value: float | None, requested_by: str
    ) -> int:
        rows = self._db.query(
            "INSERT INTO controls (job_id, command, value, requested_at, requested_by)"
            " VALUES (?, ?, ?, ?, ?) RETURNING id",
            (job_id, command, value, time.time(), requested_by),
        )
        return int(rows[0][0])

    def pending_controls(self, job_id: int) -> list[ControlRequest]:
        rows = self._db.query(
            "SELECT id, job_id, command, value, requested_by FROM controls "
            "WHERE job_id = ? AND handled_at IS NULL ORDER BY id",
            (job_id,),
        )
        return [ControlRequest(*row) for row in rows]

    def mark_control(self, control_id: int, result: str) -> None:
        self._db.run(
            "UPDATE controls SET handled_at = ?, result = ? WHERE id = ?",
            (time.time(), result, control_id),
        )

    def control(self, control_id: int) -> ControlRequest:
        rows = self._db.query(
            "SELECT id, job_id, command, value, requested_by, handled_at, result "
            "FROM controls WHERE id = ?",
            (control_id,),
        )
        return ControlRequest(*rows[0])

    def record_step(
        self, job_id: int, seq: int, name: str, state: str, detail: dict[str, Any]
    ) -> None:
        """Write a step's state before and after it runs (one row per step, replaced)."""
        self._db.run(
            "INSERT INTO steps (job_id, seq, name, state, detail, t) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (job_id, seq) DO UPDATE SET name = excluded.name, "
            "state = excluded.state, detail = excluded.detail, t = excluded.t",
            (job_id, seq, name, state, json.dumps(detail, default=str), time.time()),
        )

    def steps(self, job_id: int) -> list[StepRecord]:
        rows = self._db.query(
            "SELECT seq, name, state, detail, t FROM steps WHERE job_id = ? ORDER BY seq", (job_id,)
        )
        return [
            StepRecord(seq, name, state, json.loads(detail), t)
            for seq, name, state, detail, t in rows
        ]

    def set_maintenance(self, host: str, uri: str, job_id: int | None, reason: str) -> None:
        """Mark a host in maintenance (kept when it already is: the first reason stays)."""
        self._db.run(
            "INSERT INTO maintenance (uri, host, since, job_id, reason) VALUES (?,?,?,?,?) "
            "ON CONFLICT (uri) DO UPDATE SET job_id = excluded.job_id",
            (redact_uri(uri), host, time.time(), job_id, reason),
        )

    def end_maintenance(self, uri: str) -> MaintenanceRecord | None:
        with self._db.transaction():
            record = self.maintenance().get(redact_uri(uri))
            self._db.run("DELETE FROM maintenance WHERE uri = ?", (redact_uri(uri),))
        return record

    def maintenance(self) -> dict[str, MaintenanceRecord]:
        """Every host in maintenance, by URI."""
        rows = self._db.query("SELECT uri, host, since, job_id, reason FROM maintenance")
        return {row[0]: MaintenanceRecord(*row) for row in rows}

    def in_maintenance(self, uri: str) -> bool:
        return redact_uri(uri) in self.maintenance()

    def set_job_params(self, job_id: int, params: dict[str, Any]) -> None:
        self._db.run(
            "UPDATE jobs SET params = ? WHERE id = ?", (json.dumps(params, default=str), job_id)
        )

    def moved_by(self, kind: str, since: float) -> dict[str, float]:
        """VM -> when it was moved by a fleet job of `kind` started after `since` (epoch s)."""
        rows = self._db.query(
            "SELECT steps.name, steps.t FROM steps JOIN jobs ON jobs.id = steps.job_id "
            "WHERE jobs.kind = ? AND jobs.started >= ? AND steps.state = 'moved'",
            (kind, since),
        )
        return {name: t for name, t in rows}

    def record_lease_event(
        self, job_id: int, vm: str, host: str, event: str, detail: dict[str, Any]
    ) -> None:
        """Lease history: taken, renewed, released, taken over, refused (never a secret)."""
        self._db.run(
            "INSERT INTO lease_events (job_id, t, vm, host, event, detail) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (job_id, time.time(), vm, host, event, json.dumps(detail, default=str)),
        )

    def lease_events(self, job_id: int) -> list[dict[str, Any]]:
        rows = self._db.query(
            "SELECT t, vm, host, event, detail FROM lease_events WHERE job_id = ? ORDER BY t",
            (job_id,),
        )
        return [
            {"t": t, "vm": vm, "host": host, "event": event, **json.loads(detail)}
            for t, vm, host, event, detail in rows
        ]

    def jobs_of_kind(self, kind: str) -> list[JobRecord]:
        return self._select("kind = ?", (kind,), "ORDER BY id DESC")
