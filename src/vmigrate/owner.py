"""Which process drives a job, and whether it still does: never judged by the PID alone.

A job records the PID *and* that process's start time (`/proc/PID/stat` field 22, clock
ticks after boot), the boot id, and the machine (`user@hostname`). A PID reused by another
process has another start time; after a reboot the boot id differs. A process on another
machine cannot be seen from here: its job counts as running (its lease on the VM decides).
"""

from __future__ import annotations

import enum
import functools
import getpass
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
BOOT_ID = PROC / "sys" / "kernel" / "random" / "boot_id"
#: A job started this long after its (legacy, start-less) PID's process is still that process:
#: the job row is written a moment after the process began.
LEGACY_SLACK_S = 1.0


class Liveness(enum.Enum):
    ALIVE = "alive"  # the very process that took the job runs on this machine now
    GONE = "gone"  # it does not: the PID is free, reused, or from an earlier boot
    ELSEWHERE = "elsewhere"  # another machine's process: not judged here (its lease is)


@dataclass(frozen=True)
class ProcessIdentity:
    pid: int
    start: int | None  # clock ticks after boot; None in rows an older vmigrate wrote
    boot_id: str | None
    machine: str | None  # user@hostname

    @property
    def host(self) -> str | None:
        return self.machine.rpartition("@")[2] if self.machine else None

    def describe(self) -> str:
        where = f" on {self.machine}" if self.machine else ""
        return f"process {self.pid}{where}"


def process_start(pid: int) -> int | None:
    """A process's start time in clock ticks after boot, or None when there is no such PID."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')': split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22 overall; fields[0] is field 3


def boot_id() -> str | None:
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def machine() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid (containers)
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@functools.cache
def _identity_of(pid: int) -> ProcessIdentity:
    return ProcessIdentity(pid, process_start(pid), boot_id(), machine())


def this_process() -> ProcessIdentity:
    """This process (cached per PID: a forked child is another process)."""
    return _identity_of(os.getpid())


def boot_time() -> float:
    """When this machine booted (epoch seconds): /proc/stat's btime."""
    for line in (PROC / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def started_at(ticks: int) -> float:
    """A process start time in ticks after boot, as epoch seconds."""
    return boot_time() + ticks / os.sysconf("SC_CLK_TCK")


def liveness(
    owner: ProcessIdentity,
    job_started: float,
    here: ProcessIdentity,
    start_of: Callable[[int], int | None] = process_start,
    epoch_of: Callable[[int], float] = started_at,
) -> Liveness:
    """Whether `owner` (the process a job recorded) still runs.

    Another machine's process cannot be judged here. On this machine: another boot means
    gone; otherwise the PID must exist with the recorded start time. A row from an older
    vmigrate has no start time: its PID counts only if that process started before the job
    did (a PID reused since started later)."""
    if owner.host is not None and here.host is not None and owner.host != here.host:
        return Liveness.ELSEWHERE
    if owner.boot_id is not None and owner.boot_id != here.boot_id:
        return Liveness.GONE
    current = start_of(owner.pid)
    if current is None:
        return Liveness.GONE
    if owner.start is not None:
        return Liveness.ALIVE if current == owner.start else Liveness.GONE
    return Liveness.ALIVE if epoch_of(current) <= job_started + LEGACY_SLACK_S else Liveness.GONE
