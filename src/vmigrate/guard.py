"""The gate before a move changes anything: the destination is not in maintenance (unless
--force), and the job holds the VM's lease (docs/safety.md, sections 2 and 4).

`refuse_maintenance` and `check_lease` run before the job is created, so a refusal leaves
nothing behind; `hold_lease` takes the lease right after (the token goes in the job's
parameters first) and closes the race between two vmigrates that both saw the VM free.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vmigrate.errors import UsageError, VmigrateError
from vmigrate.events import EventSink, LeaseEvent
from vmigrate.hosts import HostRef
from vmigrate.lease import (
    HANDOVER,
    HANDOVER_ENV,
    RENEW,
    TAKE_OVER,
    HandedLease,
    Holder,
    LeaseError,
    current_owner,
    format_time,
    judge,
    now_utc,
)
from vmigrate.lifecycle import REFUSED as REFUSED
from vmigrate.store import JobStore, redact_uri
from vmigrate.trusted_checks import read_private_json
from vmigrate.virt.connection import Connection, Domain, find_domain, open_with_timeout
from vmigrate.virt.lease import (
    LeaseKeeper,
    check_lease,
    job_in_progress,
    read_lease,
    take_lease,
)

#: The job parameter that keeps the lease's token: `jobs resume` of the job is the same holder.
TOKEN_PARAM = "lease_token"  # noqa: S105 - a parameter's name, not a secret


class InMaintenance(VmigrateError):
    """The destination is in maintenance: nothing goes there until it ends."""


def refuse_maintenance(store: JobStore, destination: HostRef, *, force: bool, vm: str) -> None:
    """A host in maintenance takes no VM unless --force (the store's marks, by URI)."""
    if force:
        return
    record = store.maintenance().get(redact_uri(destination.uri))
    if record is None:
        return
    since = format_time(datetime.fromtimestamp(record.since, UTC))
    by = f" by job {record.job_id}" if record.job_id is not None else ""
    raise InMaintenance(
        f"{destination.name} is in maintenance since {since}{by} ({record.reason}): "
        "nothing was moved",
        host=destination.name,
        vm=vm,
        fix="pick another host, or end its maintenance first "
        f"(`vmigrate maintenance end {shlex.quote(destination.name)}`); --force sends it anyway",
    )


def new_token() -> str:
    return secrets.token_hex(16)


def holder(store: JobStore, job_id: int, kind: str, token: str) -> Holder:
    return Holder(job_id, kind, current_owner(), store.identity, token)


def nobody(store: JobStore, kind: str) -> Holder:
    """A holder no lease matches: checking before the job (and its token) exist."""
    return Holder(0, kind, current_owner(), store.identity, "")


def check_free(
    store: JobStore, domain: Domain, kind: str, *, vm: str, host: str, take_over: bool
) -> None:
    """Before the job is created: refuse a VM whose lease we could not take (nothing made);
    the lease of the fleet job that handed it to this move is ours to take."""
    handed = handed_lease(vm)
    check_lease(
        domain,
        nobody(store, kind),
        vm=vm,
        host=host,
        take_over=take_over,
        handed=None if handed is None else handed.holder,
    )


def handed_lease(vm: str) -> HandedLease | None:
    """The lease a fleet job handed this process for `vm`, if any. The file must be a
    private regular file of this user (it holds the fleet job's token); anything else is
    refused, as --trust-checks refuses such a file."""
    path = os.environ.get(HANDOVER_ENV)
    if not path:
        return None
    values = read_private_json(Path(path), HANDOVER_ENV, f"leave {HANDOVER_ENV} to the fleet jobs")
    try:
        handed = HandedLease.from_dict(values)
    except (ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{HANDOVER_ENV}={path}: not a handed lease ({err})") from err
    return handed if handed.vm == vm else None


@dataclass(frozen=True)
class HeldLease:
    keeper: LeaseKeeper
    host: str  # where it was taken


def hold_lease(
    store: JobStore,
    job_id: int,
    kind: str,
    token: str,
    vm: str,
    places: dict[str, Connection],
    *,
    take_over: bool,
    emit: EventSink,
) -> HeldLease | None:
    """Take the lease on the first of `places` (source first) that has the VM, record it,
    and start renewing it. None when no host defines the VM (a transient VM that is shut
    off exists nowhere: nothing to hold). A refusal is recorded and raised (LeaseError)."""
    who = holder(store, job_id, kind, token)
    handed = handed_lease(vm)
    for host, conn in places.items():
        domain = find_domain(conn, vm)
        if domain is None:
            continue
        try:
            taken = take_lease(
                domain,
                who,
                vm=vm,
                host=host,
                take_over=take_over,
                handed=None if handed is None else handed.holder,
            )
        except LeaseError as err:
            store.record_lease_event(job_id, vm, host, "refused", {"message": err.message})
            raise
        except KeyboardInterrupt:  # Ctrl-C mid-take: our element may be written already
            keeper = LeaseKeeper(who, vm, dict(places))
            released = keeper.release()
            store.record_lease_event(job_id, vm, host, "interrupted", {"removed_from": released})
            raise
        event = {TAKE_OVER: "taken over", RENEW: "taken again", HANDOVER: "handed over"}.get(
            taken.action, "taken"
        )
        detail: dict[str, Any] = {**taken.lease.to_dict(), "settle_s": round(taken.settle_s, 3)}
        if taken.action in (TAKE_OVER, HANDOVER) and taken.previous is not None:
            detail["previous"] = taken.previous.to_dict()
        store.record_lease_event(job_id, vm, host, event, detail)
        emit(LeaseEvent(event, host, taken.lease.to_dict()))
        keeper = LeaseKeeper(who, vm, dict(places), taken.lease)
        keeper.start()
        return HeldLease(keeper, host)
    store.record_lease_event(job_id, vm, "-", "none", {"why": "no host defines the VM"})
    return None


def end_lease(
    store: JobStore, job_id: int, held: HeldLease | None, *, release: bool, emit: EventSink
) -> list[str]:
    """Stop renewing; with `release`, remove the lease wherever it is still ours (without,
    the job can be resumed or rolled back and keeps it: unrenewed, it goes stale). The
    keeper's notes (renewals that failed, a lease lost) go into the store's history."""
    if held is None:
        return []
    keeper = held.keeper
    keeper.stop()
    released = keeper.release() if release else []
    for host, event, detail in keeper.events:
        store.record_lease_event(job_id, keeper.vm, host, event, detail)
    keeper.events.clear()
    event = "released" if release else "kept"
    where = ", ".join(released) or "-"
    store.record_lease_event(job_id, keeper.vm, where, event, {"removed_from": released})
    emit(LeaseEvent(event, where, {"job": job_id, "removed_from": released}))
    return released


#: A job of another machine is judged abandoned only once it is older than a lease's ttl:
#: before it takes the lease (right after it is created) it has none to renew.
ABANDONED_AFTER_S = 90.0


def settle_abandoned_jobs(
    store: JobStore, vm: str, places: dict[str, Connection], *, now: float | None = None
) -> list[int]:
    """Jobs of this VM that another machine's process drove: alive while that job's lease
    on the VM is live (renewed, or libvirt runs a job on the domain), else recorded
    interrupted (a PID cannot be judged across machines, and is never judged alone).
    Returns the jobs settled; a host that does not answer settles nothing."""
    settled = []
    now = time.time() if now is None else now
    for record in store.open_jobs(vm):
        if not record.elsewhere or now - record.started < ABANDONED_AFTER_S:
            continue
        seen = _lease_of_job(record.id, store.identity, vm, places)
        if seen is None:
            continue  # its lease is live, or a host could not be read: it may still run
        why = (
            f"{record.holder} stopped renewing its lease on {vm} ({seen}): its process is "
            "gone, or cannot reach the hosts"
        )
        if store.abandon_job(record.id, why):
            settled.append(record.id)
    return settled


def _lease_of_job(job_id: int, identity: str, vm: str, places: dict[str, Connection]) -> str | None:
    """None while the job's lease is live on a host that defines the VM (or a host could not
    be read); otherwise what was found instead."""
    found = []
    for host, conn in places.items():
        try:
            domain = find_domain(conn, vm)
            if domain is None:
                continue
            seen = read_lease(domain)
            in_progress = job_in_progress(domain)
        except Exception:  # a host that cannot be read proves nothing: the job may still run
            return None
        lease = seen.lease
        if lease is None or lease.job != job_id or lease.store != identity:
            found.append(f"no lease of job {job_id} on {host}")
            continue
        verdict = judge(lease, now_utc(), job_in_progress=in_progress)
        if verdict.live:
            return None
        found.append(f"its lease on {host} is stale: {verdict.why}")
    return "; ".join(found) or "the VM is defined on no host it used"


def ensure_vm_free(store: JobStore, vm: str, uris: dict[str, str]) -> None:
    """The early "no open job for this VM" check, after settling the jobs of other machines
    whose lease shows they stopped (hosts read only when such a job exists)."""
    stale = [r for r in store.open_jobs(vm) if r.elsewhere]
    if stale:
        places: dict[str, Connection] = {}
        try:
            for host, uri in uris.items():
                with contextlib.suppress(VmigrateError):  # unread: it settles nothing
                    places[host] = open_with_timeout(uri, host=host, timeout=SETTLE_CONNECT_S)
            settle_abandoned_jobs(store, vm, places)
        finally:
            for conn in places.values():
                with contextlib.suppress(Exception):
                    conn.close()
    store.ensure_no_open_job(vm)


SETTLE_CONNECT_S = 10.0
