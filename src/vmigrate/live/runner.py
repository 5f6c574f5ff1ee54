"""`vmigrate live`: checks, start, monitor + policy every 0.5 s, finish, verify, report.

The library never prints: progress goes to an `on_event(kind, payload)` callback, and every
sample and action goes into the job store.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vmigrate.errors import MigrationRefused, UsageError, VmigrateError
from vmigrate.hosts import HostRef, resolve_host
from vmigrate.journal import Journal
from vmigrate.live.policy import Action, PolicyConfig, decide, initial_state
from vmigrate.live.postcopy_link import LinkWatch, wait_for_postcopy
from vmigrate.live.recovery_plan import RecoveryPlan, plan_recovery, postcopy_instructions
from vmigrate.live.samples import JobSample, sample_from_job_stats
from vmigrate.live.storage_copy import (
    DestinationImages,
    created_paths,
    plan_for,
    remove_created,
    remove_source_images,
)
from vmigrate.live.storage_plan import StorageCopyPlan
from vmigrate.model import CheckReport, Mode
from vmigrate.preflight import run_checks
from vmigrate.store import ControlRequest, JobStore
from vmigrate.virt.connection import (
    UNDEFINE_KEEP_NVRAM,
    LibvirtError,
    ensure_event_loop,
    lookup_domain,
    open_with_timeout,
)
from vmigrate.virt.facts import gather_host_facts
from vmigrate.virt.migration import (
    LiveOptions,
    MigrationCall,
    abort_job,
    job_stats,
    set_bandwidth,
    set_max_downtime,
    start_postcopy,
    watch_iterations,
    watch_job_completed,
)
from vmigrate.virt.placement import Placement
from vmigrate.virt.reachability import HostLinks
from vmigrate.virt.recovery import apply, observe

log = logging.getLogger(__name__)
SAMPLE_INTERVAL_S = 0.5
CONNECT_TIMEOUT_S = 10.0
#: After the job, how long a host that does not answer gets to show where the VM is not.
VERIFY_WAIT_S = 60.0
TIDY_GRACE_S = 3.0
EventSink = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class LiveRequest:
    vm: str
    source: str
    destination: str
    policy: PolicyConfig
    peer_to_peer: bool = True
    transient: bool = False  # leave definitions as they are
    bandwidth_mib: int | None = None
    parallel_connections: int | None = None
    compressed: bool = False
    tls: bool = False
    migration_address: str | None = None
    force: bool = False  # go ahead despite failed checks
    hosts_file: Path | None = None
    store_path: Path | None = None
    copy_storage: bool = False  # mirror local disks along with memory
    disks: tuple[str, ...] | None = None  # --disks: the local disks to copy (default: all)
    delete_source_disks: bool = False  # after a verified move, remove the source's top images
    postcopy_wait_s: float = 600.0  # how long a broken link in post-copy may take to return


@dataclass(frozen=True)
class LiveReport:
    job_id: int
    vm: str
    source: str
    destination: str
    outcome: str  # completed | aborted (by the policy) | cancelled (by a user) | failed
    message: str
    total_s: float
    downtime_ms: float | None
    bytes_sent: int
    passes: int
    postcopy: bool
    actions: list[dict[str, Any]] = field(default_factory=list)
    placement: dict[str, Any] = field(default_factory=dict)
    placement_ok: bool = False
    storage: dict[str, Any] = field(default_factory=dict)  # --copy-storage: what moved, made
    fix: str = ""  # what the operator should do when the outcome needs a hand

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _options(request: LiveRequest, migration_address: str | None) -> LiveOptions:
    return LiveOptions(
        peer_to_peer=request.peer_to_peer,
        persist_destination=not request.transient,
        postcopy=request.policy.postcopy_allowed,
        autoconverge=request.policy.autoconverge_at_start,
        autoconverge_initial=request.policy.autoconverge_initial_pct,
        autoconverge_increment=request.policy.autoconverge_increment_pct,
        bandwidth_mib=request.bandwidth_mib,
        parallel_connections=request.parallel_connections,
        compressed=request.compressed,
        tls=request.tls,
        migration_uri=f"tcp://{migration_address}" if migration_address else None,
    )


class _Steering:
    """Applies the policy's (and the user's) actions to the running job, and records them."""

    def __init__(self, store: JobStore, job_id: int, emit: EventSink) -> None:
        self.store, self.job_id, self.emit = store, job_id, emit
        self.taken: list[dict[str, Any]] = []

    def abort_action(self) -> dict[str, Any] | None:
        """The abort that ended the job, if one was taken."""
        return next((a for a in reversed(self.taken) if a["action"] == "abort"), None)

    def apply(self, domain: Any, action: Action, actor: str = "policy") -> None:
        if action.kind == "set-downtime" and action.value is not None:
            set_max_downtime(domain, action.value)
        elif action.kind == "set-bandwidth" and action.value is not None:
            set_bandwidth(domain, action.value)
        elif action.kind == "postcopy":
            start_postcopy(domain)
        elif action.kind == "abort":
            abort_job(domain)
        record = {
            "at_s": round(action.at_s, 2),
            "action": action.kind,
            "value": action.value,
            "reason": action.reason,
            "by": actor,
        }
        self.taken.append(record)
        label = action.kind if action.value is None else f"{action.kind} {action.value:g}"
        self.store.add_action(self.job_id, label, action.reason, actor)
        self.emit("action", record)


class _Monitor:
    """Samples the job every SAMPLE_INTERVAL_S, records it, and lets the policy act.

    Ctrl-C aborts the job (the VM stays on the source) unless post-copy has begun: then the
    guest already runs on the destination and the only safe way is forward.
    """

    def __init__(
        self,
        domain: Any,
        policy: PolicyConfig,
        store: JobStore,
        job_id: int,
        steering: _Steering,
        emit: EventSink,
        started: float,
        destination: str,
    ) -> None:
        self.domain, self.policy, self.store, self.job_id = domain, policy, store, job_id
        self.steering, self.emit, self.started = steering, emit, started
        self.state = initial_state(policy)
        self.samples: list[JobSample] = []
        self._downtime_set = False
        self.link_watch = LinkWatch(policy.stall_s, destination, self.note)

    def note(self, message: str) -> None:
        note = Action("note", None, message, time.monotonic() - self.started)
        self.steering.apply(self.domain, note, actor="vmigrate")

    def finished(self, call: MigrationCall) -> bool:
        """One monitoring step; True once the migrate call has returned."""
        try:
            # Woken early when a pass ends (libvirt's iteration event) or the call returns.
            call.wake.wait(SAMPLE_INTERVAL_S)
            call.wake.clear()
            if not call.running():
                call.wait()
                return True
            self._step()
        except KeyboardInterrupt:
            self._interrupted()
        return False

    def _step(self) -> None:
        for request in self.store.pending_controls(self.job_id):
            self.store.mark_control(request.id, self._control(request))
        elapsed = time.monotonic() - self.started
        sample = sample_from_job_stats(
            job_stats(self.domain), elapsed, postcopy=self.state.postcopy
        )
        if sample is None:
            return
        if not self._downtime_set:
            # Start low: the policy raises it only as far as the guest needs.
            set_max_downtime(self.domain, self.state.downtime_ms)
            self._downtime_set = True
        self.samples.append(sample)
        self.store.add_sample(self.job_id, sample.to_dict())
        self.emit(
            "sample",
            {
                **sample.to_dict(),
                "percent": sample.percent,
                "downtime_limit_ms": self.state.downtime_ms,
            },
        )
        if self.state.postcopy:
            self.link_watch.update(sample.data_processed)
        actions = decide(self.samples, self.policy, self.state)
        for action in actions:
            try:
                self.steering.apply(self.domain, action)
            except LibvirtError as err:  # e.g. the job ended a moment ago
                self.note(f"{action.kind} could not be applied: {err.get_error_message()}")
        self.state = self.state.after(actions, sample.iteration, sample.throttle_pct)

    def _control(self, request: ControlRequest) -> str:
        """Apply a request from `vmigrate jobs cancel|postcopy|set` in another terminal."""
        now = time.monotonic() - self.started
        reason = f"requested by {request.requested_by}"
        if self.state.aborting:
            return "refused: the job is already being aborted"
        if request.command == "cancel":
            if self.state.postcopy:
                return (
                    "refused: in post-copy the guest already runs on the destination "
                    "and cannot go back"
                )
            action = Action("abort", None, f"cancelled: {reason}", now)
        elif request.command == "postcopy":
            if not self.policy.postcopy_allowed:
                return "refused: post-copy was not enabled for this job (policy/--no-postcopy)"
            if self.state.postcopy:
                return "refused: already in post-copy"
            action = Action("postcopy", None, f"switch forced: {reason}", now)
        elif request.command == "max-downtime" and request.value:
            self.policy = self.policy.with_limits(max_downtime_ms=int(request.value))
            action = Action("set-downtime", request.value, f"new maximum: {reason}", now)
        elif request.command == "bandwidth" and request.value:
            action = Action("set-bandwidth", request.value, reason, now)
        else:
            return f"refused: unknown request {request.command!r}"
        try:
            self.steering.apply(self.domain, action, actor="user")
        except LibvirtError as err:
            return f"failed: {err.get_error_message()}"
        self.state = self.state.after([action], 0, None)
        return "applied"

    def _interrupted(self) -> None:
        if self.state.postcopy:
            self.emit(
                "notice",
                {
                    "message": "in post-copy the guest already runs on the "
                    "destination and cannot go back: finishing the migration"
                },
            )
            return
        if self.state.aborting:
            return
        abort = Action(
            "abort", None, "interrupted by the user (Ctrl-C)", time.monotonic() - self.started
        )
        with contextlib.suppress(Exception):  # the job may have ended a moment ago
            self.steering.apply(self.domain, abort, actor="user")
        self.state = self.state.after([abort], 0, None)


def job_outcome(
    *, call_error: str | None, abort: dict[str, Any] | None, running_on: list[str], destination: str
) -> tuple[str, str]:
    """How a job ended: completed, aborted (policy), cancelled (a user) or failed.

    Success is what libvirt said *and* where the VM runs: a call that returned without an
    error while the VM is not running on the destination is not a completed migration.
    """
    if call_error is None and running_on == [destination]:
        return "completed", "migration completed"
    if abort is not None and running_on != [destination]:
        return ("cancelled" if abort["by"] == "user" else "aborted"), str(abort["reason"])
    if call_error is None:
        return "failed", f"libvirt reported success, but the VM runs on {running_on or 'no host'}"
    return "failed", call_error


def _checks(request: LiveRequest) -> CheckReport:
    report = run_checks(
        request.vm,
        request.source,
        request.destination,
        mode=Mode.LIVE,
        copy_storage=request.copy_storage,
        hosts_file=request.hosts_file,
    )
    if report.failed and not request.force:
        failed = [f for f in report.findings if f.verdict.value == "fail"]
        details = "; ".join(f"{f.check}: {f.summary}" for f in failed)
        raise MigrationRefused(
            f"pre-flight checks failed, nothing was moved: {details}",
            vm=request.vm,
            fix=failed[0].fix or "run `vmigrate check` for details; --force overrides",
            report=report,
        )
    return report


def _storage_plan(
    request: LiveRequest, domain: Any, src: Any, dst: Any, dst_ref: HostRef, checks: CheckReport
) -> StorageCopyPlan:
    pools = gather_host_facts(dst, dst_ref).pools
    return plan_for(
        request.vm,
        domain,
        src,
        dst,
        pools,
        checks,
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
    except (VmigrateError, LibvirtError, OSError) as err:
        message = err.get_error_message() if isinstance(err, LibvirtError) else str(err)
        return f"preparing the destination's disks failed: {message}", False
    return None, False


def _storage_after(
    request: LiveRequest,
    plan: StorageCopyPlan | None,
    journal: Journal,
    links: HostLinks,
    src_name: str,
    dst_name: str,
    placement: Placement,
    outcome: str,
) -> dict[str, Any]:
    """What --copy-storage moved and made; undo it when the VM is not on the destination."""
    if plan is None:
        return {}
    result: dict[str, Any] = {
        "copied": list(plan.copied),
        "shared": list(plan.shared),
        "created_on_destination": created_paths(journal),
    }
    src, dst = links.conn(src_name), links.conn(dst_name)
    if outcome == "completed":
        kept = [image.path for image in plan.images]
        verified = placement.exactly_on(dst_name, defined=not request.transient)
        if request.delete_source_disks and src is not None and verified:
            result["source_images_removed"] = remove_source_images(plan, src)
            kept = [p for p in kept if p not in result["source_images_removed"]]
        result["source_images_kept"] = kept
    elif dst is None or dst_name in placement.unknown_on:
        result["left_on_destination"] = [
            f"{path}: the destination did not answer" for path in created_paths(journal)
        ]
    elif dst_name not in placement.running_on and dst_name not in placement.defined_on:
        # The VM stays on the source: what this job made on the destination goes again.
        result["removed_from_destination"], result["left_on_destination"] = remove_created(
            journal, dst
        )
    else:
        result["left_on_destination"] = [
            f"{path}: kept, the VM is on the destination" for path in created_paths(journal)
        ]
    return result


def migrate_live(request: LiveRequest, on_event: EventSink | None = None) -> LiveReport:
    """Move a running VM live; after every outcome, verify and report where it is."""
    emit: EventSink = on_event or (lambda _kind, _payload: None)
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
            "notice",
            {
                "message": "post-copy cannot be combined with parallel connections "
                "(multifd) in QEMU: the policy throttles the guest instead"
            },
        )
    with JobStore(request.store_path) as store:
        store.ensure_no_open_job(request.vm)
    checks = _checks(request)
    emit("checks", checks.to_dict())
    src_ref = resolve_host(request.source, request.hosts_file)
    dst_ref = resolve_host(request.destination, request.hosts_file)
    ensure_event_loop()
    src = open_with_timeout(src_ref.uri, host=src_ref.name, timeout=CONNECT_TIMEOUT_S)
    dst = open_with_timeout(dst_ref.uri, host=dst_ref.name, timeout=CONNECT_TIMEOUT_S)
    domain = lookup_domain(src, request.vm, host=src_ref.name)
    storage = (
        _storage_plan(request, domain, src, dst, dst_ref, checks) if request.copy_storage else None
    )
    for notice in storage.notices if storage else ():
        emit("notice", {"message": notice})
    was_persistent = bool(domain.isPersistent())
    options = replace(
        _options(request, request.migration_address or dst_ref.migration_address),
        copy_disks=storage.copied if storage else (),
    )
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
        },
    )
    emit("job", {"job_id": job_id, "store": str(store.path)})
    journal = Journal(store, job_id)
    prepare_error, prepare_cancelled = _prepare_storage(
        DestinationImages(request.vm, storage, src, dst, journal, emit) if storage else None
    )
    completed: dict[str, Any] = {}
    steering = _Steering(store, job_id, emit)
    call = MigrationCall(domain, options, destination_uri=dst_ref.uri, destination=dst)
    started = time.monotonic()
    monitor = _Monitor(domain, request.policy, store, job_id, steering, emit, started, dst_ref.name)
    if prepare_error is None:
        callbacks = [watch_job_completed(src, domain, completed)]
        callbacks.append(watch_iterations(src, domain, call.wake))
        try:
            call.start()
            while not monitor.finished(call):
                pass
        finally:
            for callback in callbacks:
                with contextlib.suppress(Exception):
                    src.domainEventDeregisterAny(callback)
    state, samples = monitor.state, monitor.samples
    links = HostLinks(
        {src_ref.name: src_ref.uri, dst_ref.name: dst_ref.uri},
        {src_ref.name: src, dst_ref.name: dst},
    )
    call_error, fix = call.error, ""
    if state.postcopy:
        finished = _see_postcopy_through(request, links, src_ref.name, monitor, emit)
        if not finished:
            call_error = (
                f"post-copy did not finish within {request.postcopy_wait_s:g} s: the guest "
                f"runs on {dst_ref.name} and part of its memory is still on {src_ref.name}"
            )
            fix = postcopy_instructions(request.vm, src_ref.uri, dst_ref.uri)
    arrived = links.locate_when_known(request.vm, wait_s=VERIFY_WAIT_S).running_on
    if state.postcopy and call.error and arrived == [dst_ref.name] and not fix:
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
    if dst_ref.name in links.lost and outcome == "failed":
        message = (
            f"lost the connection to {dst_ref.name} (its libvirtd stopped or the link "
            f"broke): {message}"
        )
    if outcome != "completed" and not state.postcopy:
        try:
            tidied = _tidy_after_failure(request.vm, links, src_ref, dst_ref, request.transient)
        except LibvirtError as err:  # a host failing now: the verification below reports it
            tidied = [f"could not clean up after the failure: {err.get_error_message()}"]
        except KeyboardInterrupt:
            tidied = ["clean-up skipped (Ctrl-C): `vmigrate recover` does it later"]
        for cleaned in tidied:
            monitor.note(cleaned)
    total_s = time.monotonic() - started
    placement = _settle(request, src_ref.name, dst_ref.name, links, outcome)
    storage_result = _storage_after(
        request, storage, journal, links, src_ref.name, dst_ref.name, placement, outcome
    )
    if placement.unknown_on and not fix:
        fix = (
            f"{', '.join(placement.unknown_on)} did not answer, so vmigrate could not prove "
            f"where {request.vm} is not: run `vmigrate recover {request.vm}` once it answers"
        )
    if outcome == "completed":
        placement_ok = placement.exactly_on(dst_ref.name, defined=not request.transient)
    else:
        placement_ok = placement.exactly_on(src_ref.name, defined=was_persistent)
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
        bytes_sent=int(completed.get("data_processed", last.data_processed if last else 0)),
        passes=int(completed.get("memory_iteration", last.iteration if last else 0)),
        postcopy=state.postcopy,
        actions=steering.taken,
        placement=placement.to_dict(),
        placement_ok=placement_ok,
        storage=storage_result,
        fix=fix,
    )
    store.finish_job(job_id, outcome, message, report.to_dict())
    store.close()
    links.close()
    emit("done", report.to_dict())
    return report


def _tidy_after_failure(
    vm: str, links: HostLinks, src_ref: HostRef, dst_ref: HostRef, transient: bool
) -> list[str]:
    """A pre-copy that failed may leave the half-received guest paused on the destination
    (libvirt removes it, but not when its daemon restarted meanwhile): remove it, and resume
    a source paused for a switch-over that never came. Only what `vmigrate recover` would do."""
    src, dst = links.conn(src_ref.name), links.conn(dst_ref.name)
    if src is None or dst is None:
        return []

    def plan() -> RecoveryPlan | None:
        views = (
            observe(src, src_ref.name, src_ref.uri, vm),
            observe(dst, dst_ref.name, dst_ref.uri, vm),
        )
        if any(view.job for view in views):  # libvirt is still at it: never interfere
            return None
        return plan_recovery(vm, *views, transient=transient)

    first = plan()
    if first is None or not first.steps:
        return []
    time.sleep(TIDY_GRACE_S)  # let libvirt clean up first: it usually does
    plan_now = plan()
    if plan_now is None:
        return [f"a libvirt job still runs on {vm}: left as it is; run `vmigrate recover {vm}`"]
    if plan_now.outcome != "aborted" or not plan_now.steps:
        return []
    for step in plan_now.steps:
        with contextlib.suppress(LibvirtError):  # it may have gone by itself meanwhile
            apply(step, vm, src, dst)
    return [f"cleaned up after the failed migration: {plan_now.message}"]


def _see_postcopy_through(
    request: LiveRequest, links: HostLinks, source: str, monitor: _Monitor, emit: EventSink
) -> bool:
    """In post-copy there is no way back: wait (within --postcopy-wait) until it finishes."""
    try:
        return wait_for_postcopy(
            request.vm,
            links,
            source,
            monitor.link_watch.destination,
            monitor.link_watch,
            wait_s=request.postcopy_wait_s,
        )
    except KeyboardInterrupt:
        emit("notice", {"message": "stopped waiting for post-copy (Ctrl-C); nothing destroyed"})
        return False


def _settle(
    request: LiveRequest, src_name: str, dst_name: str, links: HostLinks, outcome: str
) -> Placement:
    """After success, undefine the source only once the destination is verified running."""
    placement = links.locate(request.vm)
    src = links.conn(src_name)
    if (
        outcome == "completed"
        and not request.transient
        and src is not None
        and placement.running_on == [dst_name]
        and dst_name in placement.defined_on
        and src_name in placement.defined_on
    ):
        with contextlib.suppress(Exception):
            src.lookupByName(request.vm).undefineFlags(UNDEFINE_KEEP_NVRAM)
        placement = links.locate(request.vm)
    return placement
