"""`vmigrate evacuate HOST`: empty a host for maintenance through one pipeline: facts of
every host gathered once, in parallel (gather.py) -> checks of each VM against each target
-> a plan (plan.py, pure) -> moves under limits (execute.py), each an ordinary job -> a
report that says where every VM went, or why it stayed. The evacuation is itself a job, and
the host stays in maintenance (in the job store) until `vmigrate maintenance end`."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vmigrate.errors import HostUnreachable, UsageError, VmigrateError
from vmigrate.events import Done, EventSink, JobEvents, Notice, PlanMade
from vmigrate.fleet.execute import (
    CANCELLED,
    MOVED,
    STAYED,
    UNKNOWN,
    MoveContext,
    MoveResult,
    MoveScheduler,
)
from vmigrate.fleet.gather import (
    close_sessions,
    gather_vms,
    link_bandwidth,
    open_sessions,
    target_host,
)
from vmigrate.fleet.logs import MoveLogs
from vmigrate.fleet.moves import VMIGRATE
from vmigrate.fleet.plan import MODES, EvacuationInput, EvacuationPlan, Limits, plan_evacuation
from vmigrate.hosts import HostRef, cluster_of, resolve_cluster, resolve_host
from vmigrate.store import (
    RUNNING,
    JobStore,
    StoreLocation,
    default_store_path,
    store_location,
)

KIND = "evacuate"
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


def prepare(
    request: EvacuateRequest, store: JobStore
) -> tuple[HostRef, tuple[HostRef, ...], EvacuationInput, EvacuationPlan]:
    """Everything before anything moves: targets, facts, checks, the plan. The hosts'
    connections are closed again: each move opens its own."""
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
    sessions = open_sessions([source, *targets])
    try:
        src = sessions[source.name]
        if src.facts is None:
            raise HostUnreachable(
                f"cannot reach libvirt on the host to empty: {src.error}",
                host=source.name,
                fix="check that libvirtd runs there and that its port is open; nothing was moved",
            )
        target_sessions = [sessions[t.name] for t in targets]
        if not any(s.facts is not None for s in target_sessions):
            raise HostUnreachable(
                "no target host answers: "
                + "; ".join(f"{s.ref.name}: {s.error}" for s in target_sessions),
                host=source.name,
                fix="check the targets' libvirtd and network; nothing was moved",
            )
        gathered = gather_vms(src, [s for s in target_sessions if s.facts], request.mode)
        bandwidth, bandwidth_source = link_bandwidth(request.bandwidth_mib, target_sessions)
        inp = EvacuationInput(
            source=source.name,
            vms=tuple(g.load for g in gathered),
            targets=tuple(target_host(s, s.ref.uri in in_maintenance) for s in target_sessions),
            verdicts=tuple(v for g in gathered for v in g.verdicts),
            mode=request.mode,
            limits=Limits(request.max_parallel, request.max_per_host),
            bandwidth_bps=bandwidth,
            bandwidth_source=bandwidth_source,
        )
    finally:
        close_sessions(sessions)
    return source, targets, inp, plan_evacuation(inp)


def _left_on(ref: HostRef) -> list[str] | None:
    """The VMs still on the host (running or defined); None when it does not answer."""
    sessions = open_sessions([ref])
    try:
        facts = sessions[ref.name].facts
        return None if facts is None else [g.name for g in facts.guests]
    finally:
        close_sessions(sessions)


def log_dir(store: JobStore, job_id: int) -> MoveLogs:
    """`<store dir>/fleet/<job>/`, private; under the default state directory when the store
    is a database server rather than a file."""
    location = getattr(store, "path", None)
    base = location.parent if isinstance(location, Path) else default_store_path().parent
    return MoveLogs(base, ("fleet", str(job_id)))


def evacuate(
    request: EvacuateRequest, on_event: EventSink, job_id: int | None = None
) -> EvacuationReport:
    started = time.monotonic()
    emit = JobEvents(on_event)  # stored once the job exists
    with JobStore(request.store_path) as store:
        source, targets, inp, plan = prepare(request, store)
        emit(PlanMade(plan.to_dict()))
        if request.dry_run:
            return EvacuationReport(None, source.name, plan.to_dict(), message="dry run")
        params = {"request": asdict(request), "plan": plan.to_dict()}
        if job_id is None:
            job_id = store.create_job(
                KIND, source.name, source.uri, ",".join(t.name for t in targets), params
            )
        else:
            store.set_job_params(job_id, {**store.job(job_id).params, "plan": plan.to_dict()})
        store.set_maintenance(source.name, source.uri, job_id, f"evacuated by job {job_id}")
        emit.start(store, job_id, str(store.path))
        for unplaced in plan.unplaced:
            store.add_action(job_id, "unplaced", f"{unplaced.vm}: {unplaced.reason}", "planner")
        seq_base = max((step.seq for step in store.steps(job_id)), default=-1) + 1
        ctx = MoveContext(
            job_id,
            store,
            {ref.name: ref for ref in (source, *targets)},
            request.hosts_file,
            log_dir(store, job_id),
            emit,
            seq_base,
        )
        scheduler = MoveScheduler(plan, inp, ctx)
        moving = time.monotonic()
        results = scheduler.run()
        report = _report(job_id, source, plan, results, scheduler.cancelled, started)
        report.moves_s = time.monotonic() - moving
        store.finish_job(
            job_id, "completed" if report.empty else "failed", report.message, report.to_dict()
        )
        emit(Done(report.to_dict()))
    return report


def _report(
    job_id: int,
    source: HostRef,
    plan: EvacuationPlan,
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


def _settle_in_flight(store: JobStore, job_id: int, emit: EventSink) -> None:
    """Before a resumed evacuation goes on: wait for the moves its killed driver left running
    (each is its own process and finishes cleanly), and recover those whose process died."""
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
        _settle_in_flight(store, job_id, emit)
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


def returning_moves(store: JobStore, host: HostRef) -> dict[str, str]:
    """VM -> host it went to, for the VMs the last evacuation of `host` moved away."""
    for record in store.jobs_of_kind(KIND):
        if record.source != host.uri:
            continue
        return {
            step.name: str(step.detail.get("destination"))
            for step in store.steps(record.id)
            if step.state == MOVED
        }
    return {}


def end_maintenance(
    host: str,
    *,
    bring_back: bool,
    hosts_file: Path | None,
    store_path: StoreLocation | None,
    on_event: EventSink,
    max_parallel: int = Limits().max_parallel,
) -> tuple[bool, list[MoveResult], dict[str, Any] | None]:
    """Clear the mark; with `bring_back`, move the VMs that left the host back to it through
    the same planner (a `return` job). (was in maintenance, results, plan); the last event
    is Done with the host, whether it was in maintenance, and the moves."""
    ref = resolve_host(host, hosts_file)
    emit = JobEvents(on_event)  # stored once the job exists

    def done(was: bool, results: list[MoveResult]) -> None:
        moves = [r.to_dict() for r in results]
        emit(Done({"host": host, "was_in_maintenance": was, "moves": moves}))

    with JobStore(store_path) as store:
        was = store.end_maintenance(ref.uri)
        away = returning_moves(store, ref) if bring_back else {}
        if not away:
            done(was is not None, [])
            return was is not None, [], None
        by_host: dict[str, list[str]] = {}
        for vm, where in away.items():
            by_host.setdefault(where, []).append(vm)
        holders = [resolve_host(name, hosts_file) for name in by_host]
        sessions = open_sessions([ref, *holders])
        try:
            home = sessions[ref.name]
            if home.facts is None:
                raise HostUnreachable(
                    f"cannot bring VMs back: {home.error}", host=ref.name, fix="start it first"
                )
            gathered = []
            for name, vms in by_host.items():
                holder = sessions[name]
                if holder.facts is None:
                    emit(Notice(f"{name} does not answer: {', '.join(vms)} stay"))
                    continue
                gathered += gather_vms(holder, [home], "auto", names=vms)
            bandwidth, bandwidth_source = link_bandwidth(None, [home])
            inp = EvacuationInput(
                source="",
                vms=tuple(g.load for g in gathered),
                targets=(target_host(home, False),),
                verdicts=tuple(v for g in gathered for v in g.verdicts),
                limits=Limits(max_parallel, Limits().max_per_host),
                bandwidth_bps=bandwidth,
                bandwidth_source=bandwidth_source,
            )
        finally:
            close_sessions(sessions)
        plan = plan_evacuation(inp)
        emit(PlanMade(plan.to_dict()))
        job_id = store.create_job(
            "return", ref.name, ",".join(by_host), ref.uri, {"plan": plan.to_dict()}
        )
        emit.start(store, job_id, str(store.path))
        refs = {r.name: r for r in (ref, *holders)}
        ctx = MoveContext(job_id, store, refs, hosts_file, log_dir(store, job_id), emit)
        scheduler = MoveScheduler(plan, inp, ctx)
        results = scheduler.run()
        results += [MoveResult(u.vm, "", ref.name, "stayed", "", u.reason) for u in plan.unplaced]
        ok = all(r.state == MOVED for r in results)
        store.finish_job(
            job_id,
            "completed" if ok else "failed",
            f"{sum(r.state == MOVED for r in results)} of {len(results)} VM(s) back on {ref.name}",
            {"moves": [r.to_dict() for r in results]},
        )
        done(was is not None, results)
    return was is not None, results, plan.to_dict()


__all__: Sequence[str] = (
    "EvacuateRequest",
    "EvacuationReport",
    "end_maintenance",
    "evacuate",
    "resume_evacuation",
)
