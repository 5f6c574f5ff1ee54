"""The lease (lease.py) on the hosts: read, write and remove the metadata element, take it
(write, settle, read back), renew it in a thread while the job runs, list the leases found.

libvirt keeps the element in the domain's live definition, its persistent one, or both; we
write every definition the domain has, so the lease survives a shutdown (cold moves) and is
carried by a live migration into both definitions on the destination (measured in the lab).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import libvirt

from vmigrate.hosts import HostRef
from vmigrate.lease import (
    NAMESPACE,
    PREFIX,
    RENEW,
    RENEW_INTERVAL_S,
    SETTLE_S,
    Holder,
    Lease,
    LeaseError,
    MalformedLease,
    decide,
    decode,
    judge,
    lost_race_error,
    malformed_error,
    now_utc,
    settle_needed,
    slow_take_error,
)
from vmigrate.virt.connection import (
    Connection,
    Domain,
    find_domain,
    open_with_timeout,
    signals_to_main_thread,
)
from vmigrate.virt.errors import libvirt_errors, translate

log = logging.getLogger(__name__)
METADATA_ELEMENT = libvirt.VIR_DOMAIN_METADATA_ELEMENT
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Found:
    """What a domain carries in the lease namespace: a lease, nothing, or an element that is
    not a lease we can read (`problem`)."""

    lease: Lease | None
    problem: str | None = None


def _read_one(domain: Domain, flags: int) -> Found:
    try:
        text = domain.metadata(METADATA_ELEMENT, NAMESPACE, flags)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return Found(None)
        raise
    try:
        return Found(decode(text))
    except MalformedLease as err:
        return Found(None, str(err))


def read_lease(domain: Domain) -> Found:
    """The lease as every other vmigrate sees it: the running definition's (the persistent
    one's when the domain is shut off), else the persistent one's."""
    current = _read_one(domain, libvirt.VIR_DOMAIN_AFFECT_CURRENT)
    if current.lease is None and current.problem is None and domain.isActive():
        return (
            _read_one(domain, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
            if domain.isPersistent()
            else current
        )
    return current


def _definitions(domain: Domain) -> int:
    """Every definition the domain has: the running one, the persistent one."""
    flags = 0
    if domain.isActive():
        flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
    if domain.isPersistent():
        flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
    return flags


def _set(domain: Domain, text: str | None) -> None:
    """Write (or with None remove) the element in every definition; a domain that stops or
    starts between our look and the write is written again as it is now."""
    key = PREFIX if text else None
    try:
        domain.setMetadata(METADATA_ELEMENT, text, key, NAMESPACE, _definitions(domain))
    except libvirt.libvirtError as err:
        if err.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
            raise
        domain.setMetadata(METADATA_ELEMENT, text, key, NAMESPACE, _definitions(domain))


def write_lease(domain: Domain, lease: Lease) -> None:
    _set(domain, lease.to_xml())


def remove_lease(domain: Domain) -> None:
    _set(domain, None)


def job_in_progress(domain: Domain) -> bool:
    """Whether libvirt runs a job on the domain now (a migration in or out, a save, ...)."""
    if not domain.isActive():
        return False
    try:
        return bool(domain.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE)
    except libvirt.libvirtError as err:  # e.g. gone meanwhile: no job
        log.info("job info of %s: %s", domain.name(), err)
        return False


@dataclass(frozen=True)
class Taken:
    lease: Lease
    action: str  # lease.TAKE | RENEW | TAKE_OVER | HANDOVER
    previous: Lease | None  # the lease found before (ours, or the stale one taken over)
    settle_s: float


def check_lease(
    domain: Domain,
    holder: Holder,
    *,
    vm: str,
    host: str,
    take_over: bool,
    handed: Holder | None = None,
) -> str | None:
    """Raise LeaseError when this holder may not take the domain's lease now; else the
    action it would take (None: nothing there). Changes nothing."""
    with libvirt_errors(host=host, vm=vm, doing="read the VM's lease"):
        found = read_lease(domain)
        if found.problem is not None:
            if not take_over:
                raise malformed_error(found.problem, vm=vm, host=host)
            return None
        if found.lease is None:
            return None
        busy = not found.lease.held_by(holder) and job_in_progress(domain)
    return decide(
        found.lease,
        holder,
        now_utc(),
        job_in_progress=busy,
        take_over=take_over,
        vm=vm,
        host=host,
        handed=handed,
    )


def take_lease(
    domain: Domain,
    holder: Holder,
    *,
    vm: str,
    host: str,
    take_over: bool,
    settle_s: float = SETTLE_S,
    handed: Holder | None = None,
) -> Taken:
    """Read; refuse a live lease not ours (or a stale one without `take_over`); write ours;
    wait `settle_s`; read back and compare the token. A live lease of the fleet job that
    `handed` it to this move is replaced at once, read back without the wait (lease.py,
    settle_needed).

    libvirt has no compare-and-set. Two takers that both read "free" both write; the last
    write stays, and the first taker sees it in its read-back, unless that write lands after
    the read-back: the later taker then spent longer than `settle_s` between sending its
    read and libvirt applying its write. We measure exactly that span (read sent -> write
    answered), and a taker that was that slow backs out: it removes its own lease again and
    refuses (docs/safety.md, section 2)."""
    with libvirt_errors(host=host, vm=vm, doing="take the VM's lease"):
        started = time.monotonic()
        found = read_lease(domain)
        if found.problem is not None and not take_over:
            raise malformed_error(found.problem, vm=vm, host=host)
        previous = found.lease
        now = now_utc()
        action = "take"
        if previous is not None:
            busy = not previous.held_by(holder) and job_in_progress(domain)
            action = decide(
                previous,
                holder,
                now,
                job_in_progress=busy,
                take_over=take_over,
                vm=vm,
                host=host,
                handed=handed,
            )
        ours = (
            previous.renewed_at(now)
            if previous is not None and action == RENEW
            else Lease.new(holder, now)
        )
        settle = settle_needed(action, previous, now)
        write_lease(domain, ours)
        written = time.monotonic()
        if settle and written - started >= settle_s:
            back = read_lease(domain).lease
            if back is not None and back.held_by(holder) and action != RENEW:
                remove_lease(domain)
            raise slow_take_error(written - started, settle_s, vm=vm, host=host)
        if settle:
            time.sleep(settle_s)
        back = read_lease(domain).lease
        settled = time.monotonic() - written
    if back is None or not back.held_by(holder):
        raise lost_race_error(back, vm=vm, host=host)
    return Taken(back, action, previous, settled)


#: (host, event, detail) for the store's lease history, handed over by the keeper.
LeaseEvent = tuple[str, str, dict[str, Any]]


@dataclass
class LeaseKeeper:
    """Keeps a job's lease: renews it every RENEW_INTERVAL_S on each host where the VM is
    defined and the lease found is ours (the source; the destination once the VM is there),
    writes it where the VM is defined without one, and releases it at the end. Renewal
    failures are logged, never fatal: a live migration holds the domain's job lock
    (setMetadata would wait 30 s and fail), so renewals pause during the migrate call and
    the lease stays live through libvirt's job instead."""

    holder: Holder
    vm: str
    places: dict[str, Connection]  # host name -> connection
    taken: Lease | None = None  # as taken: a lease put back keeps its `taken` time
    interval_s: float = RENEW_INTERVAL_S
    events: list[LeaseEvent] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _paused: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None
    _lost: set[str] = field(default_factory=set)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"lease {self.vm}")
        self._thread.start()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No renewals meanwhile (and none in flight once this is entered)."""
        self._paused.set()
        with self._lock:  # waits for a renewal that had started
            pass
        try:
            yield
        finally:
            self._paused.clear()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _run(self) -> None:
        signals_to_main_thread()
        while not self._stop.wait(self.interval_s):
            if self._paused.is_set():
                continue
            with self._lock:
                if not self._paused.is_set():
                    self.renew()

    def _note(self, host: str, event: str, detail: dict[str, Any]) -> None:
        self.events.append((host, event, {**detail, "at": time.time()}))

    def renew(self) -> list[str]:
        """Renew on every host where the lease is ours; the hosts renewed."""
        renewed = []
        for host, conn in self.places.items():
            try:
                domain = find_domain(conn, self.vm)
                if domain is None or job_in_progress(domain):
                    continue
                found = read_lease(domain).lease
                if found is None:
                    # Defined there without it: a cold move's new definition, or removed by
                    # a taker that backed out (see take_lease) or by hand. The VM is ours.
                    fresh = (self.taken or Lease.new(self.holder, now_utc())).renewed_at(now_utc())
                    write_lease(domain, fresh)
                    self._note(host, "restored", {})
                    renewed.append(host)
                    continue
                if not found.held_by(self.holder):
                    if host not in self._lost:
                        self._lost.add(host)
                        log.warning(
                            "%s: the lease on %s is now held by job %s of %s",
                            host,
                            self.vm,
                            found.job,
                            found.owner,
                        )
                        self._note(host, "lost", {"now": found.to_dict()})
                    continue
                write_lease(domain, found.renewed_at(now_utc()))
                renewed.append(host)
            except Exception as err:  # logged, never fatal by itself
                log.warning("%s: renewing the lease on %s failed: %s", host, self.vm, err)
                self._note(host, "renew failed", {"error": str(err)})
        return renewed

    def release(self) -> list[str]:
        """Remove the lease wherever it is still ours; the hosts it was removed from. A host
        that does not answer keeps it (it goes stale after its ttl)."""
        released = []
        with self._lock:
            for host, conn in self.places.items():
                try:
                    domain = find_domain(conn, self.vm)
                    if domain is None:
                        continue
                    found = read_lease(domain).lease
                    if found is not None and found.held_by(self.holder):
                        remove_lease(domain)
                        released.append(host)
                except Exception as err:  # reported; the outcome stands
                    log.warning("%s: releasing the lease on %s failed: %s", host, self.vm, err)
                    self._note(host, "release failed", {"error": str(err)})
        return released


@dataclass(frozen=True)
class FoundLease:
    """A lease seen on a host's VM, judged now."""

    host: str
    vm: str
    lease: Lease | None
    live: bool
    why: str
    age_s: float | None
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "vm": self.vm,
            **(self.lease.to_dict() if self.lease else {}),
            "live": self.live,
            "state": "live" if self.live else "stale",
            "why": self.why,
            "age_s": round(self.age_s, 1) if self.age_s is not None else None,
            "problem": self.problem,
        }


def leases_on(conn: Connection, host: str, now: datetime | None = None) -> list[FoundLease]:
    """Every lease on a host's VMs (VMs without one are left out)."""
    now = now or now_utc()
    found = []
    try:
        domains = conn.listAllDomains(0)
    except libvirt.libvirtError as err:
        raise translate(err, host=host, doing="list the VMs to read their leases") from err
    for domain in domains:
        try:
            seen = read_lease(domain)
            name = domain.name()
            if seen.problem is not None:
                found.append(FoundLease(host, name, None, True, "unreadable", None, seen.problem))
            elif seen.lease is not None:
                verdict = judge(seen.lease, now, job_in_progress=job_in_progress(domain))
                found.append(
                    FoundLease(
                        host, name, seen.lease, verdict.live, verdict.why, seen.lease.age_s(now)
                    )
                )
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # gone while we looked
                raise translate(err, host=host, doing="read a VM's lease") from err
    return found


def leases_on_hosts(
    refs: Iterable[HostRef], *, on_error: Callable[[str, Exception], None] | None = None
) -> list[FoundLease]:
    """The leases on every host's VMs, hosts read in parallel; a host that does not answer
    goes to `on_error` (default: logged) and adds none."""

    def read(ref: HostRef) -> list[FoundLease]:
        try:
            conn = open_with_timeout(ref.uri, host=ref.name, timeout=CONNECT_TIMEOUT_S)
            try:
                return leases_on(conn, ref.name)
            finally:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.close()
        except Exception as err:  # one host's failure: reported
            if on_error is not None:
                on_error(ref.name, err)
            else:
                log.warning("leases on %s not read: %s", ref.name, err)
            return []

    unique = list({ref.name: ref for ref in refs}.values())
    if not unique:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(unique))) as pool:
        return [lease for found in pool.map(read, unique) for lease in found]


__all__ = [
    "Found",
    "FoundLease",
    "LeaseError",
    "LeaseKeeper",
    "Taken",
    "check_lease",
    "job_in_progress",
    "leases_on",
    "leases_on_hosts",
    "read_lease",
    "remove_lease",
    "take_lease",
    "write_lease",
]
