"""One move of a fleet operation: an ordinary `vmigrate live` or `vmigrate cold` job in a
child process, with the same policy, job store and report as when a user types it. After an
interrupted cold move, the same kind of child rolls it back (or finishes it): `vmigrate jobs
rollback|resume ID`.

A child writes its JSON events to a file, not a pipe: if the process driving the fleet
operation dies (even SIGKILL), the child carries on and finishes its move cleanly, and the
next `vmigrate jobs resume` finds its outcome in the job store. Children run in their own
session, so a Ctrl-C at the terminal reaches the driver only, which stops each child with one
SIGINT (a second one could interrupt the child's own clean abort); only a child whose
destination stopped answering gets a second one later, which ends its wait for that host.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from vmigrate.errors import split_printed_error
from vmigrate.events import (
    CopyProgress,
    Done,
    Event,
    JobStarted,
    PlanMade,
    Sample,
    Unknown,
    decode,
)
from vmigrate.fleet.logs import ChildFiles, MoveLogs, read_from
from vmigrate.lease import HANDOVER_ENV, HandedLease
from vmigrate.store import StoreLocation
from vmigrate.trusted_checks import TrustedChecks

VMIGRATE = [sys.executable, "-m", "vmigrate.cli.main"]
MOVE, ROLLBACK, RESUME = "move", "rollback", "resume"


@dataclass(frozen=True)
class MoveCommand:
    vm: str
    source: str  # host names (or URIs) as the hosts file resolves them
    destination: str
    mode: str  # live | cold
    copy_storage: bool
    hosts_file: Path | None
    store_path: StoreLocation
    action: str = MOVE  # move | rollback | resume (of the cold job `job_id`)
    job_id: int | None = None
    trusted: TrustedChecks | None = None  # the fleet's checks of this move
    parallel: int | None = None  # a live move's multifd connections, where the plan uses them
    lease: HandedLease | None = None  # the fleet job's lease on the VM, handed to the child

    def argv(self, trusted_file: Path | None = None) -> list[str]:
        if self.action in (ROLLBACK, RESUME):
            store = ["--store", str(self.store_path)]
            return [*VMIGRATE, "jobs", *store, self.action, str(self.job_id), "--json"]
        args = [*VMIGRATE, self.mode, self.vm, "--from", self.source, "--to", self.destination]
        if self.mode == "live" and self.copy_storage:
            args.append("--copy-storage")
        if self.mode == "live" and self.parallel:
            args += ["--parallel", str(self.parallel)]
        if self.hosts_file is not None:
            args += ["--hosts", str(self.hosts_file)]
        if trusted_file is not None:
            args += ["--trust-checks", str(trusted_file)]
        return [*args, "--store", str(self.store_path), "--json"]


@dataclass
class CopyTally:
    """How far a cold move's copies are, together: bytes copied of every file the plan
    names (and any other one it reports), so the share only grows from disk to disk."""

    totals: dict[str, int] = field(default_factory=dict)
    done: dict[str, int] = field(default_factory=dict)

    def planned(self, plan: dict[str, Any]) -> None:
        for copy in plan.get("copies") or ():
            if isinstance(copy, dict) and "source_path" in copy:
                self.totals.setdefault(str(copy["source_path"]), int(copy.get("physical", 0)))

    def add(self, copy: CopyProgress) -> float:
        """The share done, in percent, after this progress report."""
        self.totals[copy.path] = max(copy.total, self.totals.get(copy.path, 0))
        self.done[copy.path] = copy.done
        total = sum(self.totals.values())
        return min(100.0, 100.0 * sum(self.done.values()) / total) if total > 0 else 0.0

    def left(self) -> int:
        """Bytes still to copy, of every file known so far."""
        return max(sum(self.totals.values()) - sum(self.done.values()), 0)


def last_error(stderr: str) -> str:
    """A child's error as one line: its message and, where it printed one, its fix."""
    message, fix = split_printed_error(stderr)
    return f"{message}; what to do: {fix}" if fix else message


class MoveChild(Protocol):
    """What the scheduler needs of a child (a process here; a stand-in in the tests)."""

    command: MoveCommand
    job_id: int | None
    phase: str
    percent: float
    report: dict[str, Any] | None
    #: Bytes it still has to send, as its latest event says (None: it has sent nothing
    #: yet), and the rate it sends at (0: not reported).
    link_bytes_left: int | None
    link_rate_bps: float
    link_pass: int  # the pass its latest sample is in (1: the first full copy)
    link_total: int  # what its first pass sends (memory and disks), 0 before a sample

    @property
    def pid(self) -> int: ...

    @property
    def exit_code(self) -> int | None: ...

    def read_events(self) -> list[Event]: ...

    def finished(self) -> bool: ...

    def stop(self) -> None: ...

    def hurry(self) -> None: ...

    def error_text(self) -> str: ...

    def elapsed(self) -> float: ...

    def close(self) -> None: ...


@dataclass
class ChildMove:
    """A running child and what it said so far."""

    command: MoveCommand
    process: subprocess.Popen[bytes]
    files: ChildFiles
    started: float = field(default_factory=time.monotonic)
    job_id: int | None = None
    percent: float = 0.0
    phase: str = "checks"
    report: dict[str, Any] | None = None
    copies: CopyTally = field(default_factory=CopyTally)
    link_bytes_left: int | None = None
    link_rate_bps: float = 0.0
    link_pass: int = 1
    link_total: int = 0
    _offset: int = 0
    _signals: int = 0
    _closed: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def exit_code(self) -> int | None:
        return self.process.returncode

    def read_events(self) -> list[Event]:
        """The events written since the last call (only whole lines; a line this vmigrate
        cannot read, e.g. a newer kind, is skipped)."""
        if self._closed:
            return []
        data = read_from(self.files.events_read, self._offset)
        end = data.rfind(b"\n") + 1
        self._offset += end
        events = []
        for line in data[:end].splitlines():
            with contextlib.suppress(ValueError):  # not JSON, or a known kind gone wrong
                encoded = json.loads(line)
                event = decode(encoded) if isinstance(encoded, dict) else None
                if event is not None and not isinstance(event, Unknown):
                    events.append(event)
        for event in events:
            self._note(event)
        return events

    def _note(self, event: Event) -> None:
        if isinstance(event, JobStarted):
            self.job_id = event.job_id
            self.phase = "moving"
        elif isinstance(event, Sample):
            self.percent, self.phase = event.percent, event.phase
            if event.memory_processed > 0 or event.disk_processed > 0:
                self.link_bytes_left = event.memory_remaining + event.disk_remaining
                self.link_rate_bps = max(event.bandwidth_bps, event.disk_bandwidth_bps)
                self.link_pass = event.iteration
                self.link_total = event.memory_total + event.disk_total
        elif isinstance(event, PlanMade):
            self.copies.planned(event.plan)
        elif isinstance(event, CopyProgress):
            self.phase = "copy"
            # A live move's disk copies come before its memory: its samples say how far.
            if self.command.mode == "cold":
                self.percent = self.copies.add(event)
                self.link_bytes_left = self.copies.left()
        elif isinstance(event, Done):
            self.report = event.report
            self.link_bytes_left = 0

    def finished(self) -> bool:
        return self.process.poll() is not None

    def _interrupt(self, at_most: int) -> None:
        if self._signals < at_most and self.process.poll() is None:
            self._signals += 1
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)

    def stop(self) -> None:
        """Ask the child to abort its move cleanly (the VM stays where it is), once."""
        self._interrupt(1)

    def hurry(self) -> None:
        """After stop(): one more SIGINT, which ends a live child's wait for a host that
        does not answer (it then reports what it knows)."""
        if self._signals >= 1:
            self._interrupt(2)

    def error_text(self) -> str:
        if self._closed:
            return ""
        return last_error(read_from(self.files.errors_read, 0).decode(errors="replace"))

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.files.events_read)
            os.close(self.files.errors_read)


def start_move(command: MoveCommand, logs: MoveLogs, attempt: int) -> ChildMove:
    label = command.action if command.action != MOVE else str(attempt)
    files = logs.child_files(f"{command.vm}.{label}")
    trusted_file = None
    if command.trusted is not None and command.action == MOVE:
        trusted_file = logs.private_file(f"{files.stem}.checks.json", command.trusted.to_json())
    env = {k: v for k, v in os.environ.items() if k != HANDOVER_ENV}
    if command.lease is not None and command.action == MOVE:
        handed = logs.private_file(f"{files.stem}.lease.json", command.lease.to_json())
        env[HANDOVER_ENV] = str(handed)
    try:
        process = subprocess.Popen(
            command.argv(trusted_file),
            stdin=subprocess.DEVNULL,
            stdout=files.events_write,
            stderr=files.errors_write,
            start_new_session=True,
            env=env,
        )
    except BaseException:
        os.close(files.events_read)
        os.close(files.errors_read)
        raise
    finally:
        os.close(files.events_write)
        os.close(files.errors_write)
    return ChildMove(command, process, files)
