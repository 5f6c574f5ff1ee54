"""QEMU's block copies for a pool change: one paused helper domain per host holding every
disk that host reads for the move, and the copies of all of them run side by side.

A helper (domxml/disks.py says why QEMU copies) holds its disks as vda, vdb, ... Each disk
goes through its legs in turn: a block copy into the leg's disk (which exists: REUSE_EXT),
then the pivot, which QEMU refuses until the two are in sync, so a pivoted leg is a whole
copy; from then on the device is that disk, and the next leg copies from it. One loop polls
every running copy, across helpers and hosts; `parallel` bounds how many copy at once.

The helpers are started with AUTODESTROY: if vmigrate dies, libvirt destroys them when our
connection closes, so none outlives the job that made it. Destroying one costs libvirt 1.2
to 1.8 s (docs/lab.md), so a helper done with is destroyed in a thread while the move goes
on (`release`), and `join` waits for that.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import libvirt

from vmigrate.domxml.disks import helper_domain_xml_for, helper_targets
from vmigrate.virt.connection import signals_to_main_thread
from vmigrate.virt.mirror import POLL_S, STALL_S, MirrorError, destroy_helper, helper_type

#: progress(copy, leg, done, total) while a leg copies; on_leg(copy, leg) once it pivoted.
Progress = Callable[["DiskCopy", int, int, int], None]
LegDone = Callable[["DiskCopy", int], None]


class Helper:
    """A paused AUTODESTROY domain on one host holding `disks` ({key: disk XML})."""

    def __init__(self, conn: libvirt.virConnect, name: str, host: str, disks: dict[str, str]):
        self.conn, self.name, self.host = conn, name, host
        self.devices = dict(zip(disks, helper_targets(len(disks)), strict=True))
        self._xml = helper_domain_xml_for(
            name, tuple((self.devices[key], xml) for key, xml in disks.items()), helper_type(conn)
        )
        self.domain: libvirt.virDomain | None = None
        self._destroying: threading.Thread | None = None

    def start(self) -> None:
        destroy_helper(self.conn, self.name)  # left by an interrupted run: same name, ours
        flags = libvirt.VIR_DOMAIN_START_PAUSED | libvirt.VIR_DOMAIN_START_AUTODESTROY
        self.domain = self.conn.createXML(self._xml, flags)

    def release(self) -> None:
        """Destroy it in a thread: nothing waits for libvirt's teardown until `join`."""
        if self.domain is None or self._destroying is not None:
            return
        domain = self.domain

        def destroy() -> None:
            signals_to_main_thread()
            with contextlib.suppress(libvirt.libvirtError):  # gone already
                domain.destroy()

        self._destroying = threading.Thread(target=destroy, name=f"destroy {self.name}")
        self._destroying.start()

    def join(self) -> None:
        self.release()
        if self._destroying is not None:
            self._destroying.join()


@dataclass(frozen=True)
class DiskCopy:
    """One disk of a helper and the disks it is copied into, in turn."""

    helper: Helper
    key: str
    legs: tuple[str, ...]


@dataclass
class _Running:
    copy: DiskCopy
    leg: int = 0
    started: float = field(default_factory=time.monotonic)
    last: int = -1
    moved_at: float = field(default_factory=time.monotonic)

    @property
    def device(self) -> str:
        return self.copy.helper.devices[self.copy.key]

    @property
    def domain(self) -> libvirt.virDomain:
        assert self.copy.helper.domain is not None, "helper not started"
        return self.copy.helper.domain

    def begin(self) -> None:
        self.domain.blockCopy(
            self.device, self.copy.legs[self.leg], {}, libvirt.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT
        )
        self.last, self.moved_at = -1, time.monotonic()


def run_copies(
    copies: list[DiskCopy],
    *,
    parallel: int,
    progress: Progress | None = None,
    on_leg: LegDone | None = None,
) -> dict[DiskCopy, float]:
    """Copy every disk through its legs, at most `parallel` disks at once; the seconds each
    disk took (from its first leg's start to its last pivot)."""
    waiting, running, seconds = list(copies), list[_Running](), dict[DiskCopy, float]()
    with _block_job_events({c.helper for c in copies}) as wake:
        while waiting or running:
            wake.clear()  # an event from here on ends the wait below at once
            _poll_once(waiting, running, seconds, parallel, progress, on_leg)
            if running:
                wake.wait(POLL_S)
    return seconds


@contextlib.contextmanager
def _block_job_events(helpers: set[Helper]) -> Iterator[threading.Event]:
    """An event set whenever QEMU says a block job of one of the helpers changed (a copy
    in sync, a pivot done): the loop polls at once instead of at its next tick. Without
    libvirt's event loop, nothing is registered and the loop polls every POLL_S."""
    wake = threading.Event()
    registered: list[tuple[libvirt.virConnect, int]] = []

    def changed(*_args: object) -> None:
        wake.set()

    try:
        for helper in helpers:
            with contextlib.suppress(libvirt.libvirtError):
                callback = helper.conn.domainEventRegisterAny(
                    helper.domain, libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2, changed, None
                )
                registered.append((helper.conn, callback))
        yield wake
    finally:
        for conn, callback in registered:
            with contextlib.suppress(libvirt.libvirtError):
                conn.domainEventDeregisterAny(callback)


def _poll_once(
    waiting: list[DiskCopy],
    running: list[_Running],
    seconds: dict[DiskCopy, float],
    parallel: int,
    progress: Progress | None,
    on_leg: LegDone | None,
) -> None:
    """Start what may start, poll every running copy once, move each on past its pivot."""
    while waiting and len(running) < max(1, parallel):
        started = _Running(waiting.pop(0))
        started.begin()
        running.append(started)
    for copy in list(running):
        if not _advanced(copy, progress, on_leg):
            continue
        if copy.leg + 1 < len(copy.copy.legs):
            copy.leg += 1
            copy.begin()
        else:
            seconds[copy.copy] = time.monotonic() - copy.started
            running.remove(copy)


def _advanced(copy: _Running, progress: Progress | None, on_leg: LegDone | None) -> bool:
    """Poll one copy: True once its current leg has pivoted."""
    helper, device = copy.copy.helper, copy.device
    info = copy.domain.blockJobInfo(device, 0)
    if not info:
        raise MirrorError(
            f"QEMU's block copy of {copy.copy.key} in helper {helper.name} on {helper.host} "
            "stopped half-way",
            host=helper.host,
        )
    cur, end = int(info["cur"]), int(info["end"])
    if progress is not None:
        progress(copy.copy, copy.leg, cur, end)
    if end and cur == end and _pivoted(copy.domain, device):
        if on_leg is not None:
            on_leg(copy.copy, copy.leg)
        return True
    if cur != copy.last:
        copy.last, copy.moved_at = cur, time.monotonic()
    elif time.monotonic() - copy.moved_at > STALL_S:
        with contextlib.suppress(libvirt.libvirtError):
            copy.domain.blockJobAbort(device, 0)
        raise MirrorError(
            f"QEMU's block copy of {copy.copy.key} in helper {helper.name} made no progress "
            f"for {STALL_S:g} s",
            host=helper.host,
            fix="check that the host reaches its storage servers, then resume the job",
        )
    return False


def _pivoted(domain: libvirt.virDomain, device: str) -> bool:
    """Ask QEMU to complete the copy; False while the copy is not yet in sync."""
    try:
        domain.blockJobAbort(device, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_BLOCK_COPY_ACTIVE:
            return False
        raise
    return True
