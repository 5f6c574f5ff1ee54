"""Actions run as the very `vmigrate` commands the CLI runs, in child processes with
`--json`: a job started here is an ordinary job, visible to the CLI and the other way round.

Each child's stdout (one JSON event per line) and stderr are read by two threads of their own
with readline(), so no line is lost and the child never blocks on a full pipe. A child runs in
a session of its own: stopping the server does not stop a migration it started."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

from vmigrate.errors import split_printed_error

#: `python -m vmigrate.cli.main` is the `vmigrate` command of this very installation.
VMIGRATE = (sys.executable, "-m", "vmigrate.cli.main")
#: Output kept per child (a long evacuation prints many events; the store keeps them all).
KEPT_EVENTS = 2000


@dataclass(frozen=True)
class ChildError:
    """What a child said on stderr when it refused or failed: `error: MESSAGE` then
    `  what to do: FIX`, as the CLI prints a VmigrateError."""

    message: str
    fix: str


def parse_error(stderr: str) -> ChildError:
    message, fix = split_printed_error(stderr)
    return ChildError(message or "the command ended without saying why", fix)


@dataclass
class Child:
    """One running `vmigrate` command."""

    action: str
    process: subprocess.Popen[str]
    started: float = field(default_factory=time.time)
    events: list[dict[str, Any]] = field(default_factory=list)
    stderr: str = ""
    job_id: int | None = None
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _readers: list[threading.Thread] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read_stdout(self, pipe: IO[str]) -> None:
        whole: list[str] = []  # `check` and `estimate` print one indented document
        unparsed = False
        while line := pipe.readline():
            whole.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                unparsed = True
                event = {"event": "text", "text": line.rstrip("\n")}
            if not isinstance(event, dict):
                event = {"event": "value", "value": event}
            with self._changed:
                # the command's own job (later events may name its moves' jobs)
                named = event.get("event") == "job" and isinstance(event.get("job_id"), int)
                if self.job_id is None and named:
                    self.job_id = event["job_id"]
                self.events.append(event)
                del self.events[:-KEPT_EVENTS]
                self._changed.notify_all()
        if unparsed:
            try:
                document = json.loads("".join(whole))
            except ValueError:
                return
            with self._changed:
                self.events = [document] if isinstance(document, dict) else list(document)

    def _read_stderr(self, pipe: IO[str]) -> None:
        text = pipe.read()
        with self._changed:
            self.stderr = text
            self._changed.notify_all()

    def _reap(self) -> None:
        for reader in self._readers:
            reader.join()
        self.process.wait()
        with self._changed:
            self._changed.notify_all()

    def start_readers(self) -> None:
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read_stdout, args=(self.process.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self.process.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        threading.Thread(target=self._reap, daemon=True).start()

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def wait_for_job(self, timeout: float) -> bool:
        """Until the child names its job (True) or ends without one (False)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.job_id is None and not self._ended():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.5))
            return self.job_id is not None

    def _ended(self) -> bool:
        return self.process.poll() is not None and all(not r.is_alive() for r in self._readers)

    def wait_for_end(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._ended():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.5))
            return True

    def error(self) -> ChildError:
        return parse_error(self.stderr)

    def summary(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "pid": self.pid,
            "job_id": self.job_id,
            "started": self.started,
            "exit_code": self.returncode,
        }


class Children:
    """The children this server started, kept until they end (and a while after)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = env
        self._all: list[Child] = []
        self._lock = threading.Lock()

    def start(self, action: str, args: list[str]) -> Child:
        process: subprocess.Popen[str] = subprocess.Popen(
            [*VMIGRATE, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            start_new_session=True,
        )
        child = Child(action, process)
        child.start_readers()
        with self._lock:
            self._all = [c for c in self._all if c.returncode is None or c.job_id is not None]
            self._all.append(child)
            del self._all[:-200]
        return child

    def running(self) -> list[Child]:
        with self._lock:
            return [c for c in self._all if c.returncode is None]
