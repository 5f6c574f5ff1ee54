"""One move of a fleet operation: an ordinary `vmigrate live` or `vmigrate cold` job in a
child process, with the same policy, job store and report as when a user types it.

A child writes its JSON events to a file, not a pipe: if the process driving the fleet
operation dies (even SIGKILL), the child carries on and finishes its move cleanly, and the
next `vmigrate jobs resume` finds its outcome in the job store. Children run in their own
session, so a Ctrl-C at the terminal reaches the driver only, which stops each child with one
SIGINT (a second one could interrupt the child's own clean abort).
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
from typing import Any

from vmigrate.store import StoreLocation

VMIGRATE = [sys.executable, "-m", "vmigrate.cli.main"]


@dataclass(frozen=True)
class MoveCommand:
    vm: str
    source: str  # host names (or URIs) as the hosts file resolves them
    destination: str
    mode: str  # live | cold
    copy_storage: bool
    hosts_file: Path | None
    store_path: StoreLocation

    def argv(self) -> list[str]:
        args = [*VMIGRATE, self.mode, self.vm, "--from", self.source, "--to", self.destination]
        if self.mode == "live" and self.copy_storage:
            args.append("--copy-storage")
        if self.hosts_file is not None:
            args += ["--hosts", str(self.hosts_file)]
        return [*args, "--store", str(self.store_path), "--json"]


@dataclass
class ChildMove:
    """A running child and what it said so far."""

    command: MoveCommand
    process: subprocess.Popen[bytes]
    events_path: Path
    errors_path: Path
    started: float = field(default_factory=time.monotonic)
    job_id: int | None = None
    percent: float = 0.0
    phase: str = "checks"
    report: dict[str, Any] | None = None
    _offset: int = 0
    _stopped: bool = False

    def read_events(self) -> list[dict[str, Any]]:
        """The events written since the last call (only whole lines)."""
        try:
            with self.events_path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1
        self._offset += end
        events = []
        for line in data[:end].splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    events.append(event)
        for event in events:
            self._note(event)
        return events

    def _note(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "job":
            self.job_id = int(event["job_id"])
            self.phase = "moving"
        elif kind == "sample":
            self.percent = float(event.get("percent", self.percent))
            self.phase = str(event.get("phase", self.phase))
        elif kind == "step":
            self.phase = str(event.get("name", self.phase))
        elif kind == "done":
            self.report = event

    def finished(self) -> bool:
        return self.process.poll() is not None

    def stop(self) -> None:
        """Ask the child to abort its move cleanly (the VM stays where it is), once."""
        if not self._stopped and self.process.poll() is None:
            self._stopped = True
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)

    def error_text(self) -> str:
        try:
            text = self.errors_path.read_text(errors="replace").strip()
        except OSError:
            return ""
        lines = [line for line in text.splitlines() if line.strip()]
        return lines[-1].removeprefix("error: ") if lines else ""

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def start_move(command: MoveCommand, log_dir: Path, attempt: int) -> ChildMove:
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    stem = f"{command.vm}.{attempt}"
    events_path = log_dir / f"{stem}.events.jsonl"
    errors_path = log_dir / f"{stem}.stderr"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    events_fd = os.open(events_path, flags, 0o600)
    errors_fd = os.open(errors_path, flags, 0o600)
    try:
        process = subprocess.Popen(
            command.argv(),
            stdin=subprocess.DEVNULL,
            stdout=events_fd,
            stderr=errors_fd,
            start_new_session=True,
        )
    finally:
        os.close(events_fd)
        os.close(errors_fd)
    return ChildMove(command, process, events_path, errors_path)
