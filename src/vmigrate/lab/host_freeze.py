"""The lab upgrade's last check, made while the host cannot start a VM: its libvirtd is
stopped (SIGSTOP), so the VMs found then are all there will be until it is killed.

A lab host's VMs are the QEMU processes in its mount namespace, and only its libvirtd starts
them. With libvirtd frozen, the check and the restart have no window between them: a VM
started after `lab host upgrade` listed the host's VMs (through libvirt, a moment earlier)
is found here, libvirtd is let go again (SIGCONT) and the upgrade refused; else libvirtd is
killed while still frozen (SIGKILL: a SIGTERM would let its workers serve a queued request
before it exits) and the host restarted."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from vmigrate.errors import LabError

#: How long libvirtd's threads may take to stop on SIGSTOP.
FREEZE_TIMEOUT_S = 5.0


def vm_of(pid: int, argv: Sequence[str], daemon_pid: int) -> str | None:
    """What a process of the host's namespace says about its VMs: a QEMU started for a
    domain gives its name (`-name guest=NAME,...`), a libvirtd child that has not exec'ed
    yet is a VM being started; anything else (sshd, its sessions, QEMU probing its own
    capabilities, which has no -name) is no VM."""
    if pid == daemon_pid or not argv:
        return None
    program = Path(argv[0]).name
    if program == "libvirtd":
        return f"a VM being started (libvirtd child, pid {pid})"
    if not program.startswith("qemu-system"):
        return None
    for flag, value in itertools.pairwise(argv):
        if flag == "-name":
            for part in value.split(","):
                if part.startswith("guest="):
                    return part.removeprefix("guest=")
            return value
    return None


def vms_of(processes: Iterable[tuple[int, Sequence[str]]], daemon_pid: int) -> list[str]:
    found = (vm_of(pid, argv, daemon_pid) for pid, argv in processes)
    return sorted(vm for vm in found if vm is not None)


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # exited since it was listed
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _all_threads_stopped(pid: int) -> bool:
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return True  # it is gone
    for task in tasks:
        with contextlib.suppress(OSError):
            state = (task / "stat").read_text().rsplit(")", 1)[-1].split()[0]
            if state not in ("T", "t", "Z", "X"):
                return False
    return True


@contextlib.contextmanager
def frozen(daemon_pid: int, host: str) -> Iterator[None]:
    """libvirtd stopped for the block's duration (a SIGCONT after it was killed is
    harmless)."""
    os.kill(daemon_pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + FREEZE_TIMEOUT_S
        while not _all_threads_stopped(daemon_pid):
            if time.monotonic() > deadline:
                raise LabError(
                    f"its libvirtd (pid {daemon_pid}) did not stop on SIGSTOP within "
                    f"{FREEZE_TIMEOUT_S:g} s: nothing was changed",
                    host=host,
                    fix="try the upgrade again",
                )
            time.sleep(0.01)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon_pid, signal.SIGCONT)


def vms_while_frozen(pids: Iterable[int], daemon_pid: int) -> list[str]:
    """The VMs of the host's namespace (`pids`), read from /proc."""
    return vms_of(((pid, _argv(pid)) for pid in pids), daemon_pid)


def kill_frozen(daemon_pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(daemon_pid, signal.SIGKILL)
