"""The job store: every migration job with its parameters, samples, actions and outcome (SQLite).

One file, default `$XDG_STATE_HOME/vmigrate/jobs.sqlite` (~/.local/state/vmigrate/...).
Nothing secret goes in: URIs are stored without passwords. Each write is its own transaction,
so a job killed mid-way leaves a consistent record that `vmigrate jobs` shows as interrupted.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from vmigrate.errors import NotFound, UsageError

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
CREATE INDEX IF NOT EXISTS samples_job ON samples(job_id, t);
CREATE INDEX IF NOT EXISTS actions_job ON actions(job_id, t);
"""
RUNNING = "running"


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
    state: str  # running | succeeded | failed | aborted | interrupted
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


class JobStore:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_store_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise UsageError(
                f"cannot open the job store {self.path}: {err}",
                fix="pass --store PATH to a writable location",
            ) from err
        self._db.execute("PRAGMA journal_mode=WAL")

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
