"""`vmigrate live`: checks, plan, start, monitor (monitor.py), then the aftermath
(aftermath.py): see it through, verify, clean up, report.

The library never prints: progress goes to an `on_event(event)` sink (events.py), and every
event, sample and action goes into the job store.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from vmigrate.encryption import migration_tls
from vmigrate.errors import MigrationRefused, UsageError, VmigrateError
from vmigrate.events import (
    ChecksDone,
    Done,
    EventSink,
    JobEvents,
    Notice,
    ignore,
)
from vmigrate.guard import (
    REFUSED,
    TOKEN_PARAM,
    HeldLease,
    check_free,
    end_lease,
    ensure_vm_free,
    hold_lease,
    new_token,
    refuse_maintenance,
)
from vmigrate.guest_gap import measured_gap_ms
from vmigrate.hosts import HostRef, resolve_host
from vmigrate.journal import Journal
from vmigrate.lease import LeaseError
from vmigrate.live.aftermath import (
    VERIFY_WAIT_S,
    job_outcome,
    see_postcopy_through,
    settle,
    storage_after,
    tidy_after_failure,
)
from vmigrate.live.failure import explain_failure
from vmigrate.live.monitor import Monitor, Steering
from vmigrate.live.postcopy_link import DESTINATION_GONE, NEVER_SWITCHED, TIMED_OUT
from vmigrate.live.recovery_plan import postcopy_instructions
from vmigrate.live.request import (
    LiveReport,
    LiveRequest,
    features_of,
    live_options,
    within_shared_features,
)
from vmigrate.live.storage_copy import DestinationImages, plan_for
from vmigrate.live.storage_plan import StorageCopyPlan
from vmigrate.model import Mode
from vmigrate.preflight import Checked, check_move
from vmigrate.store import JobStore
from vmigrate.trusted_checks import TrustedChecks
from vmigrate.virt.connection import (
    ensure_event_loop,
    lookup_domain,
    open_with_timeout,
)
from vmigrate.virt.errors import libvirt_errors
from vmigrate.virt.migration import MigrationCall, watch_iterations, watch_job_completed
from vmigrate.virt.reachability import HostLinks

__all__ = ["LiveReport", "LiveRequest", "job_outcome", "migrate_live"]
CONNECT_TIMEOUT_S = 10.0


def _checks(
    request: LiveRequest, trusted: TrustedChecks | None = None, emit: EventSink = ignore
) -> Checked:
    checked = check_move(
        request.vm,
        request.source,
        request.destination,
        mode=Mode.LIVE,
        copy_storage=request.copy_storage,
        hosts_file=request.hosts_file,
        tls=request.tls,
        peer_to_peer=request.peer_to_peer,
        trusted=trusted,
        emit=emit,
        features=features_of(
            request,
            tls=migration_tls(
                request.tls,
                resolve_host(request.source, request.hosts_file),
                resolve_host(request.destination, request.hosts_file),
            ),
        ),
    )
    report = checked.report
    if report.failed and not request.force:
        failed = [f for f in report.findings if f.verdict.value == "fail"]
        details = "; ".join(f"{f.check}: {f.summary}" for f in failed)
        raise MigrationRefused(
            f"pre-flight checks failed, nothing was moved: {details}",
            vm=request.vm,
            fix=failed[0].fix or "run `vmigrate check` for details; --force overrides",
            report=report,
        )
    return checked


def _storage_plan(
    request: LiveRequest, domain: Any, src: Any, dst: Any, checked: Checked
) -> StorageCopyPlan:
    # The destination's pools as the checks saw them a moment ago: gathered once.
    pools = checked.destination.pools if checked.destination else ()
    return plan_for(
        request.vm,
        domain,
        src,
        dst,
        pools,
        checked.report,
        request.disks,
        check_space=not request.force,
    )


def _prepare_storage(images: DestinationImages | None) -> tuple[str | None, bool]:
    """Create the destination's images; (error, cancelled by the user)."""
    if images is None:
        return None, False
    try:
        images.prepare()
    except KeyboardInterrupt:
        return "interrupted by the user (Ctrl-C) while preparing the destination's disks", True
    except (VmigrateError, OSError) as err:
        return f"preparing the destination's disks failed: {err}", False
    return None, False


def _validated(request: LiveRequest, emit: EventSink) -> LiveRequest:
    """Refuse contradictory options; adjust the ones QEMU cannot combine (and say so)."""
    if request.delete_source_disks and (request.transient or not request.copy_storage):
        raise UsageError(
            "--delete-source-disks needs --copy-storage and a persistent move "
            "(with --transient the source keeps a definition that uses those disks)",
            vm=request.vm,
            fix="drop --delete-source-disks, or --transient",
        )
    if request.disks is not None and not request.copy_storage:
        raise UsageError(
            "--disks chooses the disks --copy-storage copies",
            vm=request.vm,
            fix="add --copy-storage",
        )
    if request.parallel_connections and request.policy.postcopy_allowed:
        # QEMU refuses the post-copy capability together with multifd.
        request = replace(request, policy=request.policy.with_limits(postcopy=False))
        emit(
            Notice(
                "post-copy cannot be combined with parallel connections "
                "(multifd) in QEMU: the policy throttles the guest instead"
            )
        )
    return request


def _run_call(
    call: MigrationCall, monitor: Monitor, src: Any, domain: Any, completed: dict[str, Any]
) -> None:
    """Start the migrate call and monitor it until it returns; libvirt's events wake the
    monitor at each pass and fill `completed` with the finished job's statistics."""
    # Best effort: without the events the monitor still polls every SAMPLE_INTERVAL_S, and a
    # connection that is gone shows in the migrate call's own error.
    callbacks: list[int] = []
    with contextlib.suppress(VmigrateError):
        callbacks.append(watch_job_completed(src, domain, completed))
    with contextlib.suppress(VmigrateError):
        callbacks.append(watch_iterations(src, domain, call.wake, monitor.on_pass_end))
    try:
        call.start()
        while not monitor.finished(call):
            pass
    finally:
        for callback in callbacks:
            with contextlib.suppress(Exception):
                src.domainEventDeregisterAny(callback)


def migrate_live(
    request: LiveRequest,
    on_event: EventSink | None = None,
    *,
    take_over_lease: bool = False,
    trusted: TrustedChecks | None = None,
) -> LiveReport:
    """Move a running VM live; after every outcome, verify and report where it is.

    Before anything changes the job takes the VM's lease (refused when another job holds it;
    a stale one only with `take_over_lease`) and releases it at the end, wherever it is."""
    emit = JobEvents(on_event or ignore)  # stored once the job exists
    request = _validated(request, emit)
    src_ref = resolve_host(request.source, request.hosts_file)
    dst_ref = resolve_host(request.destination, request.hosts_file)
    with JobStore(request.store_path) as store:
        ensure_vm_free(store, request.vm, {src_ref.name: src_ref.uri, dst_ref.name: dst_ref.uri})
        refuse_maintenance(store, dst_ref, force=request.force, vm=request.vm)
    checked = _checks(request, trusted, emit)
    emit(ChecksDone(checked.report.to_dict()))
    # The policy only uses a feature both hosts have (#25): post-copy off where one lacks it.
    request = within_shared_features(request, checked.source, checked.destination, emit)
    ensure_event_loop()
    src = open_with_timeout(src_ref.uri, host=src_ref.name, timeout=CONNECT_TIMEOUT_S)
    dst = open_with_timeout(dst_ref.uri, host=dst_ref.name, timeout=CONNECT_TIMEOUT_S)
    domain = lookup_domain(src, request.vm, host=src_ref.name)
    # Before the job exists: a VM or host that goes away now is a plain error.
    with libvirt_errors(host=src_ref.name, vm=request.vm, doing="read the VM before the move"):
        with JobStore(request.store_path) as store:
            check_free(
                store, domain, "live", vm=request.vm, host=src_ref.name, take_over=take_over_lease
            )
        storage = (
            _storage_plan(request, domain, src, dst, checked) if request.copy_storage else None
        )
        was_persistent = bool(domain.isPersistent())
    for notice in storage.notices if storage else ():
        emit(Notice(notice))
    options = replace(
        live_options(
            request,
            request.migration_address or dst_ref.migration_address,
            tls=migration_tls(request.tls, src_ref, dst_ref),
        ),
        copy_disks=storage.copied if storage else (),
    )
    token = new_token()
    store = JobStore(request.store_path)
    job_id = store.create_job(
        "live",
        request.vm,
        src_ref.uri,
        dst_ref.uri,
        {
            "policy": asdict(request.policy),
            "options": asdict(options),
            "force": request.force,
            "storage": storage.to_dict() if storage else None,
            TOKEN_PARAM: token,
        },
    )
    emit.start(store, job_id, str(store.path))
    interrupted = False
    try:
        held = hold_lease(
            store,
            job_id,
            "live",
            token,
            request.vm,
            {src_ref.name: src, dst_ref.name: dst},
            take_over=take_over_lease,
            emit=emit,
        )
    except KeyboardInterrupt:  # before anything changed: the job ends cancelled, reported
        held, interrupted = None, True
    except VmigrateError as err:  # e.g. another vmigrate took it a moment before us
        refused = isinstance(err, LeaseError)
        store.finish_job(
            job_id, REFUSED if refused else "failed", f"nothing was changed: {err.message}", {}
        )
        store.close()
        raise
    lease = _LeaseEnd(store, job_id, held, emit)
    try:
        return _move(
            _Move(request, emit, store, job_id, src_ref, dst_ref, src, dst, domain),
            storage,
            options,
            was_persistent=was_persistent,
            lease=lease,
            interrupted=interrupted,
        )
    except BaseException:
        lease()
        raise


@dataclass(frozen=True)
class _Move:
    """One live move once its job exists and its lease is held."""

    request: LiveRequest
    emit: EventSink
    store: JobStore
    job_id: int
    src_ref: HostRef
    dst_ref: HostRef
    src: Any
    dst: Any
    domain: Any


class _LeaseEnd:
    """Releases the job's lease once, while the connections are still open."""

    def __init__(self, store: JobStore, job_id: int, held: HeldLease | None, emit: EventSink):
        self.args = (store, job_id, held, emit)
        self.done = False

    def __call__(self) -> None:
        if self.done:
            return
        self.done = True
        store, job_id, held, emit = self.args
        with contextlib.suppress(Exception):  # the job's outcome stands; the lease goes stale
            end_lease(store, job_id, held, release=True, emit=emit)

    def paused(self) -> contextlib.AbstractContextManager[None]:
        """No renewals during the migrate call: it holds libvirt's job lock on the domain
        (setMetadata would wait 30 s and fail); libvirt's job keeps the lease live."""
        held = self.args[2]
        return held.keeper.paused() if held is not None else contextlib.nullcontext()


def _move(
    move: _Move,
    storage: StorageCopyPlan | None,
    options: Any,
    *,
    was_persistent: bool,
    lease: _LeaseEnd,
    interrupted: bool = False,
) -> LiveReport:
    request, emit, store, job_id = move.request, move.emit, move.store, move.job_id
    src_ref, dst_ref, src, dst, domain = move.src_ref, move.dst_ref, move.src, move.dst, move.domain
    journal = Journal(store, job_id)
    prepare_error, prepare_cancelled = (
        ("interrupted by the user (Ctrl-C) while taking the VM's lease", True)
        if interrupted
        else _prepare_storage(
            DestinationImages(request.vm, storage, src, dst, journal, emit) if storage else None
        )
    )
    completed: dict[str, Any] = {}
    steering = Steering(store, job_id, emit)
    call = MigrationCall(
        domain, options, destination_uri=dst_ref.peer_connection_uri, destination=dst
    )
    started = time.monotonic()
    started_ns = time.monotonic_ns()  # the guest-gap probe's clock (host CLOCK_MONOTONIC)
    monitor = Monitor(domain, request.policy, store, job_id, steering, emit, started, dst_ref.name)
    if prepare_error is None:
        with lease.paused():
            _run_call(call, monitor, src, domain, completed)
    samples = monitor.samples
    links = HostLinks(
        {src_ref.name: src_ref.uri, dst_ref.name: dst_ref.uri},
        {src_ref.name: src, dst_ref.name: dst},
    )
    call_error, fix, status = call.error, "", ""
    # Asked for post-copy; whether the switch really happened, the aftermath finds out.
    postcopy = monitor.state.postcopy
    if postcopy:
        status = see_postcopy_through(request, links, src_ref.name, monitor.link_watch, emit)
        postcopy = status != NEVER_SWITCHED
        if status == TIMED_OUT:
            call_error = (
                f"post-copy did not finish within {request.postcopy_wait_s:g} s: the guest "
                f"runs on {dst_ref.name} and part of its memory is still on {src_ref.name}"
            )
            fix = postcopy_instructions(
                request.vm, src_ref.uri, dst_ref.peer_connection_uri, tls=options.tls
            )
        elif status == DESTINATION_GONE:
            call_error = (
                f"the guest stopped on {dst_ref.name} during post-copy (its QEMU exited): "
                f"its state was split between the hosts and cannot be put back together; "
                f"{src_ref.name} keeps a paused copy that is older than the disks"
            )
            fix = (
                f"do not resume the paused copy on {src_ref.name} (its memory is older than "
                f"its disks): destroy it "
                f"({shlex.join(['virsh', '-c', src_ref.uri, 'destroy', request.vm])}) and "
                f"start {request.vm} again from its disks on one host; check the guest's "
                "file systems"
            )
    arrived = links.locate_when_known(request.vm, wait_s=VERIFY_WAIT_S).running_on
    if postcopy and call.error and arrived == [dst_ref.name] and not fix:
        # libvirt gave up on its call when the link broke; the migration finished anyway.
        call_error = None
    if prepare_error is not None:
        outcome, message = ("cancelled" if prepare_cancelled else "failed"), prepare_error
    else:
        outcome, message = job_outcome(
            call_error=call_error,
            abort=steering.abort_action(),
            running_on=arrived,
            destination=dst_ref.name,
        )
    if outcome == "failed":
        lost = [host for host in (src_ref.name, dst_ref.name) if host in links.lost]
        message = explain_failure(message, lost=lost, destination=dst_ref.name)
    if outcome != "completed" and not postcopy:
        try:
            tidied = tidy_after_failure(request.vm, links, src_ref, dst_ref, request.transient)
        except VmigrateError as err:  # a host failing now: the verification below reports it
            tidied = [f"could not clean up after the failure: {err.message}"]
        except KeyboardInterrupt:
            tidied = ["clean-up skipped (Ctrl-C): `vmigrate recover` does it later"]
        for cleaned in tidied:
            monitor.note(cleaned)
    total_s = time.monotonic() - started
    placement = settle(request, src_ref.name, dst_ref.name, links, outcome)
    storage_result = storage_after(
        request, storage, journal, links, src_ref.name, dst_ref.name, placement, outcome
    )
    if placement.unknown_on and not fix:
        fix = (
            f"{', '.join(placement.unknown_on)} did not answer, so vmigrate could not prove "
            f"where {request.vm} is not: run `vmigrate recover {shlex.quote(request.vm)}` "
            "once it answers"
        )
    if outcome == "completed":
        placement_ok = placement.exactly_on(dst_ref.name, defined=not request.transient)
    else:  # a stale paused copy left by a post-copy whose destination died is no placement
        placement_ok = status != DESTINATION_GONE and placement.exactly_on(
            src_ref.name, defined=was_persistent
        )
    last = samples[-1] if samples else None
    report = LiveReport(
        job_id=job_id,
        vm=request.vm,
        source=src_ref.name,
        destination=dst_ref.name,
        outcome=outcome,
        message=message,
        total_s=round(total_s, 3),
        downtime_ms=float(completed["downtime"]) if "downtime" in completed else None,
        bytes_sent=int(completed.get("memory_processed", last.memory_processed if last else 0))
        + int(storage_result.get("disk_bytes_sent", 0)),
        passes=int(completed.get("memory_iteration", last.iteration if last else 0)),
        postcopy=postcopy,
        actions=steering.taken,
        placement=placement.to_dict(),
        placement_ok=placement_ok,
        storage=storage_result,
        fix=fix,
        gap_ms=measured_gap_ms(request.vm, started_ns),
    )
    lease()
    store.finish_job(job_id, outcome, message, report.to_dict())
    emit(Done(report.to_dict()))
    store.close()
    links.close()
    return report
