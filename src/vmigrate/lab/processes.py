"""Starting and stopping the lab's background processes by PID, never by name matching alone."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


def spawn_daemon(command: list[str], log_path: Path) -> int:
    """Start `command` detached from our session (it outlives the CLI); return its PID."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    return process.pid


def _reap(pid: int) -> None:
    # A daemon we started in this very process is our child: reap it so it is not a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def is_alive(pid: int) -> bool:
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def executable_of(pid: int) -> str:
    try:
        return str(Path(f"/proc/{pid}/exe").readlink())
    except OSError:
        return ""


def mount_namespace_of(pid: int) -> str:
    try:
        return str(Path(f"/proc/{pid}/ns/mnt").readlink())
    except OSError:
        return ""


def pids_in_mount_namespace(namespace: str) -> list[int]:
    """Every process in `namespace`; refuses the namespace we ourselves (or init) live in."""
    if not namespace or namespace in (mount_namespace_of(os.getpid()), mount_namespace_of(1)):
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and mount_namespace_of(int(entry.name)) == namespace:
            found.append(int(entry.name))
    return found


def terminate(pids: list[int], *, grace_seconds: float = 10.0) -> list[int]:
    """SIGTERM, wait, then SIGKILL what is left. Returns the PIDs that had to be killed."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and any(is_alive(pid) for pid in pids):
        time.sleep(0.1)
    killed = [pid for pid in pids if is_alive(pid)]
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(is_alive(pid) for pid in killed):
        time.sleep(0.05)
    return killed
