"""The lease a fleet job takes on a VM while the moves before it still send, and hands to the
child that moves it (docs/safety.md, "The fleet's lease handed to its move"): the child then
replaces it with its own at once, instead of waiting the 0.5 s settle (lease.SETTLE_S) after
its start. The fleet job takes it the full way (read, write, settle, read back), renews it
until the child starts, and never writes it again: a child that did not take it over (it
ended before its lease, or refused) leaves it to `release`, which removes only our own."""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from vmigrate.errors import VmigrateError
from vmigrate.events import Event
from vmigrate.guard import HeldLease, hold_lease, holder
from vmigrate.hosts import HostRef
from vmigrate.lease import HandedLease
from vmigrate.store import JobStore
from vmigrate.virt.connection import Connection, open_with_timeout

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 10.0


def _ignore(_event: Event) -> None:
    """Lease events of a reservation go to the store's lease history only (this runs in a
    worker thread, away from the fleet's renderer)."""


@dataclass
class Reservation:
    """One VM's lease, taken by the fleet job for the move about to start."""

    store: JobStore
    job_id: int
    kind: str
    token: str
    vm: str
    source: HostRef
    conn: Connection | None = None
    held: HeldLease | None = None
    error: str | None = None
    handed: bool = False

    def take(self) -> None:
        """Take the lease on the VM's source (in a worker thread); a refusal is kept in
        `error`: the child then meets the lease itself, and says so in its own words."""
        try:
            self.conn = open_with_timeout(
                self.source.uri, host=self.source.name, timeout=CONNECT_TIMEOUT_S
            )
            self.held = hold_lease(
                self.store,
                self.job_id,
                self.kind,
                self.token,
                self.vm,
                {self.source.name: self.conn},
                take_over=False,
                emit=_ignore,
            )
        except VmigrateError as err:
            self.error = err.message
        except Exception as err:  # logged: the child takes its lease itself
            log.warning("%s: the fleet's lease was not taken: %s", self.vm, err)
            self.error = str(err)

    def hand_over(self) -> HandedLease | None:
        """Stop renewing (before the child starts: a renewal must never overwrite the
        child's lease) and give the child what proves the lease is the fleet job's."""
        if self.held is None:
            return None
        self.held.keeper.stop()
        self.handed = True
        self.store.record_lease_event(
            self.job_id, self.vm, self.held.host, "handed over", {"to": "its move's child"}
        )
        return HandedLease(self.vm, holder(self.store, self.job_id, self.kind, self.token))

    def release(self) -> None:
        """Remove the lease wherever it is still the fleet job's (the child never replaced
        it), and close the connection."""
        if self.held is not None:
            keeper = self.held.keeper
            keeper.stop()
            released = keeper.release()
            if released:
                self.store.record_lease_event(
                    self.job_id, self.vm, ", ".join(released), "released", {}
                )
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None


@dataclass
class Reserver:
    """Takes at most one VM's lease at a time, ahead of its move (one worker thread)."""

    store: JobStore
    job_id: int
    kind: str
    token: str
    pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="lease")
    )
    taking: dict[str, tuple[Reservation, Future[None]]] = field(default_factory=dict)

    def reserve(self, vm: str, source: HostRef) -> None:
        if vm not in self.taking:
            reservation = Reservation(self.store, self.job_id, self.kind, self.token, vm, source)
            self.taking[vm] = (reservation, self.pool.submit(reservation.take))

    def busy(self) -> bool:
        """A lease is being taken (the next one waits: one at a time)."""
        return any(not future.done() for _r, future in self.taking.values())

    def state(self, vm: str) -> str:
        """none | taking | ready (taken, or refused: the child meets the lease itself)."""
        if vm not in self.taking:
            return "none"
        return "ready" if self.taking[vm][1].done() else "taking"

    def hand_over(self, vm: str) -> HandedLease:
        """What the VM's child is given: the fleet job's holder, whether this process took
        the lease (then it stops renewing it) or not: a live lease of the same holder left
        by an earlier run of this job (killed, then resumed) is the child's to take as well,
        and where the VM carries none the child takes it the full way."""
        if self.state(vm) == "ready":
            handed = self.taking[vm][0].hand_over()
            if handed is not None:
                return handed
        return HandedLease(vm, holder(self.store, self.job_id, self.kind, self.token))

    def release(self, vm: str) -> None:
        """The VM's child ended, or it will not start: our lease goes if it is still ours."""
        entry = self.taking.pop(vm, None)
        if entry is not None:
            reservation, future = entry
            future.result()  # a take in flight ends first (at most a connect and a settle)
            reservation.release()

    def close(self) -> None:
        with self.pool:  # leaving it waits for the worker to end
            for vm in list(self.taking):
                self.release(vm)
