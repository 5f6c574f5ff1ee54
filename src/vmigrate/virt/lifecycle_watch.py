"""A domain's start and stop as libvirt reports them (lifecycle events), for a cold move's
shutdown and its watch of the guest running on the destination.

Events tell at once what a poll would see late: the guest shut down, QEMU stopped, the guest
was paused on an I/O error. Events can be lost with a connection, so every wait also asks
libvirt now and then; an event only ever makes a wait end sooner.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any

import libvirt

from vmigrate.errors import VmigrateError

#: A lifecycle event that means the guest no longer runs -> its words; and those that it does.
_STOPPED_EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shut down",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "paused",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "suspended by its guest",
}
_RUNNING_EVENTS = frozenset({libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_RESUMED})
#: How often a wait asks libvirt itself, should an event be lost.
ASK_EVERY_S = 0.5
#: How often the watch of a started guest samples QEMU's counters.
SAMPLE_EVERY_S = 0.1


class LifecycleWatch:
    """The lifecycle events of the domain with `uuid` on one connection, from now on (the
    domain need not exist yet: a watch registered before a start sees everything after it).
    Needs libvirt's event loop (virt/connection.ensure_event_loop, before the connection
    was opened)."""

    def __init__(self, conn: libvirt.virConnect, uuid: str) -> None:
        self.conn, self.uuid = conn, uuid
        self.changed = threading.Event()
        self._lock = threading.Lock()
        self._seen: list[tuple[int, int]] = []
        self._callback: int | None = None
        # Without libvirt's event loop (a connection opened before it ran) no event comes:
        # then every wait is a poll, as before.
        with contextlib.suppress(libvirt.libvirtError):
            self._callback = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, None
            )

    def _on_event(
        self, _conn: libvirt.virConnect, domain: libvirt.virDomain, event: int, detail: int, _o: Any
    ) -> None:
        if domain.UUIDString() != self.uuid:
            return
        with self._lock:
            self._seen.append((event, detail))
        self.changed.set()

    def stopped(self) -> str | None:
        """Words for the latest start or stop seen, if it is a stop (a restore pauses and
        resumes the guest on its way: only where it ended counts)."""
        with self._lock:
            seen = [(e, d) for e, d in self._seen if e in _STOPPED_EVENTS or e in _RUNNING_EVENTS]
        if not seen or seen[-1][0] in _RUNNING_EVENTS:
            return None
        event, detail = seen[-1]
        return f"{_STOPPED_EVENTS[event]} (libvirt event {event}, detail {detail})"

    def arm(self) -> None:
        """Before looking: an event from now on ends the next `wait` at once."""
        self.changed.clear()

    def wait(self, seconds: float) -> None:
        """Until an event arrives (since `arm`) or `seconds` pass."""
        self.changed.wait(max(0.0, seconds))

    def close(self) -> None:
        if self._callback is not None:
            callback, self._callback = self._callback, None
            with contextlib.suppress(libvirt.libvirtError):  # gone with its connection
                self.conn.domainEventDeregisterAny(callback)


def _active(domain: libvirt.virDomain) -> bool:
    try:
        return bool(domain.isActive())
    except libvirt.libvirtError:
        return False  # a transient domain is gone once it stops


def shutdown_and_wait(
    conn: libvirt.virConnect, domain: libvirt.virDomain, *, timeout: float
) -> bool:
    """Ask the guest to shut down (ACPI) and return as soon as libvirt says it stopped;
    False if it is still running after `timeout` seconds."""
    watch = LifecycleWatch(conn, domain.UUIDString())
    try:
        domain.shutdown()
        deadline = time.monotonic() + timeout
        while True:  # an event (the guest's shutdown, QEMU's exit) only wakes it sooner
            watch.arm()
            if not _active(domain):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return not _active(domain)
            watch.wait(min(ASK_EVERY_S, left))
    finally:
        watch.close()


@dataclass(frozen=True)
class Sample:
    """What libvirt and QEMU say of a running guest at one moment."""

    state: int
    reason: int
    vcpu_ns: int  # CPU time its virtual CPUs have used: the guest's own code ran
    read_requests: dict[str, int]  # per disk target, reads QEMU served the guest
    disk_errors: dict[str, int]  # per disk, an error QEMU holds for it (none: empty)

    @property
    def running(self) -> bool:
        return bool(self.state == libvirt.VIR_DOMAIN_RUNNING)

    def read(self) -> list[str]:
        return sorted(t for t, n in self.read_requests.items() if n > 0)


def sample(domain: libvirt.virDomain, disks: tuple[str, ...]) -> Sample:
    """The domain's state (libvirt), its vCPUs' time (the host's kernel) and each disk's
    reads and errors (QEMU, through its monitor: it also proves QEMU answers)."""
    state, reason = domain.state()
    vcpu_ns = 0
    if state == libvirt.VIR_DOMAIN_RUNNING:
        info, _pins = domain.vcpus()
        vcpu_ns = sum(int(v[2]) for v in info)
    reads = {t: int(domain.blockStats(t)[0]) for t in disks}
    errors = {disk: int(code) for disk, code in domain.diskErrors().items() if code}
    return Sample(state, reason, vcpu_ns, reads, errors)


class StoppedRunning(VmigrateError):
    """The guest stopped, paused or met a disk error while it was watched."""


def _sample_running(
    domain: libvirt.virDomain, disks: tuple[str, ...], watch: LifecycleWatch
) -> Sample:
    """A sample; a domain that stops between two of its questions is a stop, not an error."""
    try:
        return sample(domain, disks)
    except libvirt.libvirtError as err:
        # QEMU gone while libvirt still tears it down: its stop event follows
        deadline = time.monotonic() + ASK_EVERY_S
        while _active(domain) and watch.stopped() is None and time.monotonic() < deadline:
            watch.arm()
            watch.wait(SAMPLE_EVERY_S)
        if _active(domain) and watch.stopped() is None:
            raise
        raise StoppedRunning(watch.stopped() or f"it stopped ({err.get_error_message()})") from err


@dataclass(frozen=True)
class Running:
    """The evidence a started guest runs: seconds watched and what was seen."""

    seconds: float
    disks_read: list[str]  # disks the guest read through QEMU while watched
    vcpu_ms: float  # CPU time its vCPUs used while watched
    why: str  # what ended the watch


def watch_it_run(
    domain: libvirt.virDomain, watch: LifecycleWatch, disks: tuple[str, ...], *, at_most: float
) -> Running:
    """Watch a guest just started until the destination's libvirt and QEMU say it runs: the
    domain running, no stop or pause among its events, QEMU answering for every disk with
    none in error, and its vCPUs executing the guest's code (their time grows from one
    sample to the next). Disks the guest has read by then are noted. At most `at_most`
    seconds: then the domain running all along suffices (vCPU times are not reported).
    Raises StoppedRunning the moment it stops, pauses or a disk errs."""
    started = time.monotonic()
    first = _sample_running(domain, disks, watch)
    while True:
        watch.arm()
        watch.wait(min(SAMPLE_EVERY_S, max(0.0, at_most - (time.monotonic() - started))))
        stopped = watch.stopped()
        now = _sample_running(domain, disks, watch)
        if stopped is not None or not now.running:
            raise StoppedRunning(stopped or f"its state is {now.state} (reason {now.reason})")
        if now.disk_errors:
            raise StoppedRunning(f"QEMU reports disk errors: {now.disk_errors}")
        took = time.monotonic() - started
        vcpu_ms = (now.vcpu_ns - first.vcpu_ns) / 1e6
        if vcpu_ms > 0:
            read = f"; it read {', '.join(now.read())}" if now.read() else ""
            why = f"its vCPUs ran {vcpu_ms:.1f} ms of guest code{read}"
            return Running(round(took, 3), now.read(), round(vcpu_ms, 3), why)
        if took >= at_most:
            why = f"it ran {at_most:g} s (no vCPU time reported)"
            return Running(round(took, 3), now.read(), round(vcpu_ms, 1), why)
