"""`vmigrate evacuate HOST`: empty a host for maintenance through the fleet's one path:
facts of every host gathered once, in parallel, with the checks of each VM against each
target (gather.py) -> a plan (plan.py, pure) -> the fleet job's moves under limits (job.py,
execute.py), each an ordinary job -> a report that says where every VM went, or why it
stayed. The host stays in maintenance (in the job store) until `vmigrate maintenance end`."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vmigrate.errors import HostUnreachable, UsageError, VmigrateError
from vmigrate.events import EventSink, JobEvents, Notice, PlanMade
from vmigrate.fleet.execute import CANCELLED, MOVED, STAYED, UNKNOWN, MoveResult
from vmigrate.fleet.gather import (
    ASSUMED,
    GatheredVm,
    close_sessions,
    gather_input,
    known_bandwidth,
    open_sessions,
    probe_link,
    target_host,
)
from vmigrate.fleet.job import FleetRun, finish, schedule
from vmigrate.fleet.moves import VMIGRATE
from vmigrate.fleet.plan import (
    EVACUATE,
    MODES,
    FleetInput,
    FleetPlan,
    Limits,
    Purpose,
    plan_moves,
)
from vmigrate.fleet.stream import PlanFeed
from vmigrate.hosts import HostRef, cluster_of, resolve_cluster, resolve_host
from vmigrate.preflight import HostSession
from vmigrate.store import RUNNING, JobStore, StoreLocation, store_location

KIND = EVACUATE
RESUME_WAIT_S = 1800.0


@dataclass(frozen=True)
class EvacuateRequest:
    host: str
    to: tuple[str, ...] = ()
    cluster: str | None = None
    mode: str = "auto"
    max_parallel: int = Limits().max_parallel
    max_per_host: int = Limits().max_per_host
    bandwidth_mib: float | None = None
    dry_run: bool = False
    hosts_file: Path | None = None
    store_path: StoreLocation | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EvacuateRequest:
        return cls(
            **{
                **values,
                "to": tuple(values.get("to", ())),
                "hosts_file": Path(values["hosts_file"]) if values.get("hosts_file") else None,
                "store_path": store_location(values.get("store_path")),
            }
        )


@dataclass
class EvacuationReport:
    job_id: int | None
    host: str
    plan: dict[str, Any]
    moves: list[MoveResult] = field(default_factory=list)
    left_on_host: list[str] = field(default_factory=list)
    empty: bool = False
    cancelled: bool = False
    total_s: float = 0.0
    message: str = ""
    moves_s: float = 0.0  # from the first move's start to the last one's end (the plan's
    # predicted_total_s predicts this; total_s adds gathering the facts and the checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "host": self.host,
            "plan": self.plan,
            "moves": [m.to_dict() for m in self.moves],
            "left_on_host": self.left_on_host,
            "empty": self.empty,
            "cancelled": self.cancelled,
            "total_s": round(self.total_s, 1),
            "moves_s": round(self.moves_s, 1),
            "message": self.message,
        }


def _targets(request: EvacuateRequest, source: HostRef) -> tuple[HostRef, ...]:
    if request.to and request.cluster:
        raise UsageError("give --to or --cluster, not both", host=source.name)
    if request.to:
        refs = tuple(resolve_host(name, request.hosts_file) for name in request.to)
    else:
        cluster = request.cluster or cluster_of(source, request.hosts_file)
        if cluster is None:
            raise UsageError(
                f"{source.name} is in no cluster, and no targets were named",
                host=source.name,
                fix="name them with --to H1,H2, or group the hosts in [clusters.NAME] of "
                "the hosts file and pass --cluster NAME",
            )
        refs = resolve_cluster(cluster, request.hosts_file)
        if len(refs) < 2:
            raise UsageError(
                f"cluster {cluster!r} has one host: there is nowhere to move its VMs",
                host=source.name,
                fix=f"add hosts to [clusters.{cluster}] or name targets with --to",
            )
    if any(ref.uri == source.uri for ref in refs) and request.to:
        raise UsageError(
            f"--to names {source.name} itself: a host cannot be evacuated onto itself",
            host=source.name,
            fix="name other hosts with --to",
        )
    return tuple(ref for ref in refs if ref.uri != source.uri)


def _validate(request: EvacuateRequest) -> None:
    if request.mode not in MODES:
        raise UsageError(f"--mode must be one of {', '.join(MODES)}, not {request.mode!r}")
    for name, value in (
        ("--max-parallel", request.max_parallel),
        ("--max-per-host", request.max_per_host),
    ):
        if value < 1:
            raise UsageError(
                f"{name} {value}: at least one move must be allowed", fix=f"give {name} 1 or more"
            )
    if request.bandwidth_mib is not None and request.bandwidth_mib <= 0:
        raise UsageError("--bandwidth must be a positive number of MiB/s")


def _hosts(
    request: EvacuateRequest, store: JobStore
) -> tuple[HostRef, tuple[HostRef, ...], Collection[str], list[HostRef]]:
    """The host to empty, its targets, the hosts in maintenance and the targets not in it."""
    _validate(request)
    source = resolve_host(request.host, request.hosts_file)
    targets = _targets(request, source)
    in_maintenance = store.maintenance()
    usable = [t for t in targets if t.uri not in in_maintenance]
    if not usable:
        raise UsageError(
            f"every target is in maintenance ({', '.join(t.name for t in targets)})",
            host=source.name,
            fix="end one's maintenance (`vmigrate maintenance end HOST`) or name other hosts",
        )
    return source, targets, in_maintenance, usable


def prepare(
    request: EvacuateRequest, store: JobStore
) -> tuple[HostRef, tuple[HostRef, ...], FleetInput, FleetPlan]:
    """Everything before anything moves: targets, facts, checks, the plan (what --dry-run
    shows; a run makes the same plan while its first moves go). The hosts' connections are
    closed again: each move opens its own."""
    source, targets, in_maintenance, usable = _hosts(request, store)
    with ThreadPoolExecutor(max_workers=1) as background:
        # The link's probe (1 s) starts now, on its own connection: it runs while the
        # hosts' facts and the checks are gathered instead of after the facts.
        probing = background.submit(probe_link, request.bandwidth_mib, usable)
        sessions = _sessions(source, targets)
        try:
            inp = _gathered(request, sessions, _purpose(source, targets), in_maintenance, probing)
        finally:
            close_sessions(sessions)
    return source, targets, inp, plan_moves(inp)


def _purpose(source: HostRef, targets: tuple[HostRef, ...]) -> Purpose:
    return Purpose(
        EVACUATE, source.name, (source.name,), tuple(t.name for t in targets), source.uri
    )


def _sessions(source: HostRef, targets: tuple[HostRef, ...]) -> dict[str, HostSession]:
    """Every host's session, once the host to empty and at least one target answer."""
    sessions = open_sessions([source, *targets])
    src = sessions[source.name]
    target_sessions = [sessions[t.name] for t in targets]
    problem: VmigrateError | None = None
    if src.facts is None:
        problem = HostUnreachable(
            f"cannot reach libvirt on the host to empty: {src.error}",
            host=source.name,
            fix="check that libvirtd runs there and that its port is open; nothing was moved",
        )
    elif not any(s.facts is not None for s in target_sessions):
        problem = HostUnreachable(
            "no target host answers: "
            + "; ".join(f"{s.ref.name}: {s.error}" for s in target_sessions),
            host=source.name,
            fix="check the targets' libvirtd and network; nothing was moved",
        )
    if problem is not None:
        close_sessions(sessions)
        raise problem
    return sessions


def _gathered(
    request: EvacuateRequest,
    sessions: dict[str, HostSession],
    purpose: Purpose,
    in_maintenance: Collection[str],
    probing: Future[tuple[float, str]],
    *,
    on_vm: Callable[[GatheredVm], None] | None = None,
    checked_at: float | None = None,
) -> FleetInput:
    return gather_input(
        purpose,
        [(sessions[purpose.subject], None)],
        [sessions[name] for name in purpose.targets],
        mode=request.mode,
        limits=Limits(request.max_parallel, request.max_per_host),
        bandwidth_mib=request.bandwidth_mib,
        maintenance=in_maintenance,
        probing=probing,
        on_vm=on_vm,
        checked_at=checked_at,
    )


def _start_input(
    request: EvacuateRequest,
    sessions: dict[str, HostSession],
    purpose: Purpose,
    in_maintenance: Collection[str],
    checked_at: float,
) -> FleetInput:
    """What a streaming plan knows before any VM is checked: the targets and their budgets,
    the limits, the link as far as it is known without measuring."""
    bandwidth, bandwidth_source = known_bandwidth(
        request.bandwidth_mib, [sessions[name].ref for name in purpose.targets]
    ) or (ASSUMED[0], "not measured yet")
    return FleetInput(
        purpose,
        vms=(),
        targets=tuple(
            target_host(sessions[name], sessions[name].ref.uri in in_maintenance)
            for name in purpose.targets
        ),
        verdicts=(),
        mode=request.mode,
        limits=Limits(request.max_parallel, request.max_per_host),
        bandwidth_bps=bandwidth,
        bandwidth_source=bandwidth_source,
        checked_at=checked_at,
    )


def _left_on(ref: HostRef) -> list[str] | None:
    """The VMs still on the host (running or defined); None when it does not answer."""
    sessions = open_sessions([ref])
    try:
        facts = sessions[ref.name].facts
        return None if facts is None else [g.name for g in facts.guests]
    finally:
        close_sessions(sessions)


def evacuate(
    request: EvacuateRequest, on_event: EventSink, job_id: int | None = None
) -> EvacuationReport:
    started = time.monotonic()
    emit = JobEvents(on_event)  # stored once the job exists
    with JobStore(request.store_path) as store:
        if request.dry_run:
            source, _targets, _inp, plan = prepare(request, store)
            emit(PlanMade(plan.to_dict()))
            return EvacuationReport(None, source.name, plan.to_dict(), message="dry run")
        return _evacuate_streaming(request, store, emit, job_id, started)


def _evacuate_streaming(
    request: EvacuateRequest,
    store: JobStore,
    emit: JobEvents,
    job_id: int | None,
    started: float,
) -> EvacuationReport:
    """The job's first moves start while the rest of the plan is made (stream.py): each VM
    is placed as soon as its checks are made, and its move joins the scheduler's queue."""
    source, targets, in_maintenance, usable = _hosts(request, store)
    purpose = _purpose(source, targets)
    with ThreadPoolExecutor(max_workers=2) as background:
        probing = background.submit(probe_link, request.bandwidth_mib, usable)
        sessions = _sessions(source, targets)
        checked_at = time.time()
        feed = PlanFeed(_start_input(request, sessions, purpose, in_maintenance, checked_at))

        def placed(vm: GatheredVm) -> None:
            # No move starts beside the link's probe (1 s): a child starting then took the
            # probe's CPU and link, and the probe read 62 MiB/s of a 119 MiB/s link (E1).
            probing.result()
            feed.offer(vm.load, vm.verdicts, vm.reports)

        def make_plan() -> None:
            try:
                inp = _gathered(
                    request,
                    sessions,
                    purpose,
                    in_maintenance,
                    probing,
                    on_vm=placed,
                    checked_at=checked_at,
                )
                feed.complete(inp)
            except BaseException as err:  # the scheduler hears of it; its moves go on
                feed.fail(err)
            finally:
                close_sessions(sessions)

        run = FleetRun(
            store, {ref.name: ref for ref in (source, *targets)}, request.hosts_file, emit
        )
        made: list[FleetPlan] = []
        planning: list[Future[None]] = []

        def into_maintenance(job: int) -> None:
            store.set_maintenance(source.name, source.uri, job, f"evacuated by job {job}")
            planning.append(background.submit(make_plan))  # the job exists: moves can join

        def plan_complete(job: int, plan: FleetPlan) -> None:
            made.append(plan)
            store.set_job_params(job, {**store.job(job).params, "plan": plan.to_dict()})
            emit(PlanMade(plan.to_dict()))

        params = {"request": asdict(request), "plan": None}
        try:
            scheduled = schedule(
                run,
                feed.placer.plan(feed.start),
                feed.start,
                params,
                job_id=job_id,
                before_moves=into_maintenance,
                feed=feed,
                on_complete=plan_complete,
            )
        finally:
            feed.stop()
            if not planning:  # the job was never made: the sessions are still ours
                close_sessions(sessions)
    plan = made[-1]
    report = _report(
        scheduled.job_id, source, plan, scheduled.results, scheduled.cancelled, started
    )
    report.moves_s = scheduled.moves_s
    failure = feed.failure
    if failure is not None:
        report.empty = False
        report.message = f"{report.message}; planning stopped: {failure}"
    finish(run, scheduled.job_id, report.empty, report.message, report.to_dict())
    return report


def _report(
    job_id: int,
    source: HostRef,
    plan: FleetPlan,
    results: list[MoveResult],
    cancelled: bool,
    started: float,
) -> EvacuationReport:
    left = _left_on(source)
    if left is not None:
        results = reconcile(results, source.name, left)
    moved = [r for r in results if r.state == MOVED]
    unsure = [r.vm for r in results if r.state == UNKNOWN]
    if left is None:
        message = f"{source.name} did not answer at the end: cannot prove it is empty"
        empty = False
    elif left:
        message = f"{len(moved)} VM(s) moved; {len(left)} still on {source.name}: {', '.join(left)}"
        empty = False
    else:
        message = f"{source.name} is empty: {len(moved)} VM(s) moved"
        empty = not unsure
    if unsure:
        message += f"; where {', '.join(unsure)} is not proven: `vmigrate recover VM`"
    return EvacuationReport(
        job_id,
        source.name,
        plan.to_dict(),
        results,
        left or [],
        empty,
        cancelled,
        time.monotonic() - started,
        message + ("; cancelled" if cancelled else ""),
    )


def reconcile(results: list[MoveResult], source: str, left: list[str]) -> list[MoveResult]:
    """Each result checked against the source's own list at the end: a VM reported moved
    that is still there, or reported on the source and gone from it, is not proven."""
    checked = []
    for result in results:
        still = result.vm in left
        if result.state == MOVED and still:
            result = replace(
                result,
                state=UNKNOWN,
                runs_on=None,
                reason=f"{result.reason}; but {source} still lists it: "
                f"run `vmigrate recover {result.vm}`",
            )
        elif result.state in (STAYED, CANCELLED) and result.runs_on == source and not still:
            result = replace(
                result,
                state=UNKNOWN,
                runs_on=None,
                reason=f"{result.reason}; but {source} no longer lists it: "
                f"run `vmigrate recover {result.vm}`",
            )
        checked.append(result)
    return checked


SETTLED = "its move completed after its driver died"


def settle_in_flight(store: JobStore, job_id: int, emit: EventSink) -> None:
    """Before a resumed evacuation goes on: wait for the moves its killed driver left running
    (each is its own process and finishes cleanly), recover those whose process died, and
    record as moved those that completed meanwhile."""
    for step in store.steps(job_id):
        if step.state not in ("running", "planned"):
            continue
        child = step.detail.get("child_job")
        if child is None:
            open_jobs = store.open_jobs(step.name)
            child = open_jobs[-1].id if open_jobs else None
        if child is None:
            continue
        deadline = time.monotonic() + RESUME_WAIT_S
        record = store.job(int(child))
        if record.state == RUNNING:
            emit(Notice(f"{step.name}: waiting for job {child} to finish"))
        while record.state == RUNNING and time.monotonic() < deadline:
            time.sleep(1.0)
            record = store.job(int(child))
        if record.state == "interrupted":
            store_args = ["--store", str(store.path)]
            how = (
                ["recover", step.name, *store_args]
                if record.kind == "live"
                else ["jobs", *store_args, "resume", str(child)]
            )
            emit(Notice(f"{step.name}: job {child} was interrupted: {how[0]}"))
            subprocess.run(
                [*VMIGRATE, *how],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
                timeout=RESUME_WAIT_S,
            )
            record = store.job(int(child))
        if record.state == "completed" and step.detail.get("destination"):
            # Its move ended after its driver died: the VM is on the step's destination.
            # Recorded as moved, so the report counts it and a return brings it back.
            detail = {**step.detail, "child_job": int(child), "settled": SETTLED}
            store.record_step(job_id, step.seq, step.name, MOVED, detail)


def resume_evacuation(
    job_id: int, store_path: StoreLocation | None, emit: EventSink
) -> EvacuationReport:
    with JobStore(store_path) as store:
        record = store.job(job_id)
        if record.kind != KIND:
            raise UsageError(f"job {job_id} is a {record.kind} job, not an evacuation")
        if record.state == RUNNING:
            raise VmigrateError(
                f"evacuation {job_id} is still running (process {record.pid})",
                host=record.vm,
                fix=f"wait for it, or stop process {record.pid} first",
            )
        if record.state == "completed":
            raise UsageError(f"evacuation {job_id} already finished: {record.outcome}")
        settle_in_flight(store, job_id, emit)
        store.reopen_job(job_id)
        request = EvacuateRequest.from_dict(record.params["request"])
    if store_path is not None:
        request = replace(request, store_path=store_path)
    try:
        return evacuate(request, emit, job_id=job_id)
    except BaseException as err:
        with JobStore(store_path) as store, contextlib.suppress(Exception):
            store.finish_job(job_id, "interrupted", f"resume failed: {err}", {})
        raise


__all__: Sequence[str] = (
    "EvacuateRequest",
    "EvacuationReport",
    "evacuate",
    "resume_evacuation",
)
