"""`vmigrate rolling --cluster C --run 'COMMAND {host}'`: a rolling upgrade as one fleet job.

Host by host, in the order of rolling_order.py (oldest QEMU first), four steps:
1. evacuate: the host goes into maintenance and is emptied through evacuate's own path
   (prepare -> plan -> schedule, an ordinary `evacuate` job), with one more rule for the
   planner: no VM is planned onto a host whose QEMU is older than the one it runs on. A VM
   that can go nowhere fails the step before anything moves;
2. command: the operator's command, an argument list with `{host}` replaced (rolling_host);
3. health: the host answers again, versions read again, pools active, a test domain;
4. return: `maintenance end --return`'s path brings its VMs back (a `return` job); a VM
   that cannot go back stays where it runs, said in the report.

Each step is recorded in the job as it starts and ends (the steps table), so `jobs resume`
after a failure or a SIGKILL goes on from the first step not done: an evacuation or return
whose driver died has its moves in flight waited for first, and an evacuation goes on as
the same `evacuate` job, so `maintenance end --return` still knows every VM it moved. The
roll stops at the first failed step; every VM then still runs on exactly one host, and the
report says which hosts are done, which is in maintenance, and where each VM runs."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from vmigrate.capacity import host_budget, memory_need_bytes
from vmigrate.errors import HostUnreachable, UsageError, VmigrateError
from vmigrate.events import Done, Event, EventSink, JobEvents, JobStarted, Notice, PlanMade
from vmigrate.fleet.evacuate import _report, settle_in_flight
from vmigrate.fleet.execute import MOVED, UNKNOWN
from vmigrate.fleet.gather import close_sessions, open_sessions
from vmigrate.fleet.job import FleetRun, create_fleet_job, finish, schedule
from vmigrate.fleet.plan import (
    ROLLING,
    Purpose,
)
from vmigrate.fleet.returning import end_maintenance
from vmigrate.fleet.rolling_guard import (
    FOUND_AFTER_COMMAND,
    appeared_during_command,
    found_on_emptied_host,
    host_kept_empty,
)
from vmigrate.fleet.rolling_host import (
    RollStepFailed,
    active_pools,
    check_command,
    health_check,
    run_command,
)
from vmigrate.fleet.rolling_order import RollHost, RollOrder, RollVm, roll_order, validate_roll
from vmigrate.fleet.rolling_plan import (
    RollingRequest,
    evacuate_request,
    planned_evacuation,
    predict,
)
from vmigrate.fleet.rolling_report import (
    COMMAND_STEP,
    DONE,
    EVACUATE_STEP,
    FAILED,
    HEALTH_STEP,
    RETURN_STEP,
    STARTED,
    RollingReport,
    final_report,
    versions_of,
)
from vmigrate.fleet.rolling_return import RETURN_BETTER, RETURN_POLICIES
from vmigrate.fleet.rolling_return_job import return_if_better
from vmigrate.hosts import HostRef, resolve_cluster
from vmigrate.owner import process_start
from vmigrate.store import RUNNING, JobStore, StoreLocation
from vmigrate.versions import format_version

KIND = ROLLING


@dataclass(frozen=True)
class Step:
    seq: int
    action: str  # evacuate | command | health | return
    host: str

    @property
    def name(self) -> str:
        return f"{self.action} {self.host}"


def steps_of(order: RollOrder) -> list[Step]:
    """Per group of hosts taken at once: evacuate each, then per host command, health,
    return."""
    steps: list[Step] = []
    for group in order.steps:
        actions = [(EVACUATE_STEP, h) for h in group]
        actions += [(a, h) for h in group for a in (COMMAND_STEP, HEALTH_STEP, RETURN_STEP)]
        steps += [Step(len(steps) + i, a, h) for i, (a, h) in enumerate(actions)]
    return steps


@dataclass
class _Roll:
    """What a running roll needs at hand."""

    request: RollingRequest
    store: JobStore
    refs: dict[str, HostRef]
    emit: JobEvents  # the roll's own events (stored with its job)
    downstream: EventSink  # the caller's: its sub-jobs' events go there, not into the roll's
    job_id: int = 0
    versions: dict[str, int] = field(default_factory=dict)  # host -> QEMU, as last read
    step: Step | None = None
    child_jobs: dict[int, int] = field(default_factory=dict)  # step seq -> its sub-job

    def sub_sink(self, event: Event) -> None:
        """A sub-job's events: its start names it in the step (before any move, so a
        resume finds it), its Done is its own (the roll's Done comes last)."""
        if isinstance(event, JobStarted) and self.step is not None:
            self.child_jobs[self.step.seq] = event.job_id
            self.store.record_step(
                self.job_id, self.step.seq, self.step.name, STARTED, {"child_job": event.job_id}
            )
            self.emit(Notice(f"{self.step.name}: job {event.job_id}"))
            return
        if isinstance(event, Done):
            return
        self.downstream(event)


def _validate(request: RollingRequest) -> None:
    for name, value in (
        ("--command-timeout", request.command_timeout_s),
        ("--wait", request.wait_s),
        ("--max-parallel", request.max_parallel),
        ("--max-per-host", request.max_per_host),
    ):
        if value <= 0:
            raise UsageError(f"{name} {value:g}: it must be positive", fix=f"give {name} > 0")
    if request.return_policy not in RETURN_POLICIES:
        raise UsageError(
            f"--return {request.return_policy!r}: unknown",
            fix=f"give one of {', '.join(RETURN_POLICIES)}",
        )
    if request.test_domain is not None and not request.test_domain.is_file():
        raise UsageError(
            f"--test-domain {request.test_domain}: no such file",
            fix="give the path of a domain XML file the hosts can start",
        )


def _roll_hosts(refs: Sequence[HostRef]) -> tuple[list[RollHost], dict[str, Any]]:
    """Each host's QEMU, free memory and VMs, and what its health check compares with
    (versions, active pools); a host that does not answer refuses the roll."""
    sessions = open_sessions(refs)
    try:
        silent = [s for s in sessions.values() if s.facts is None]
        if silent:
            raise HostUnreachable(
                "a rolling upgrade needs every host of the cluster answering; "
                + "; ".join(f"{s.ref.name}: {s.error}" for s in silent),
                host=silent[0].ref.name,
                fix="bring it back first; nothing was changed",
            )
        hosts, before = [], {}
        for ref in refs:
            facts = sessions[ref.name].facts
            assert facts is not None
            vms = tuple(RollVm(g.name, memory_need_bytes(g.memory_bytes)) for g in facts.guests)
            hosts.append(
                RollHost(ref.name, facts.hypervisor_version, host_budget(facts).free_bytes, vms)
            )
            before[ref.name] = {
                "libvirt": format_version(facts.libvirt_version),
                "qemu": format_version(facts.hypervisor_version),
                "qemu_encoded": facts.hypervisor_version,
                "pools_active": active_pools(facts),
                "vms": [g.name for g in facts.guests],
            }
        return hosts, before
    finally:
        close_sessions(sessions)


def _start(
    request: RollingRequest, store: JobStore
) -> tuple[dict[str, HostRef], RollOrder, dict[str, Any]]:
    """Everything checked before anything moves: the command exists, the cluster makes a
    roll, every host answers, an order strands no VM."""
    _validate(request)
    refs = resolve_cluster(request.cluster, request.hosts_file)
    validate_roll(len(refs), request.hosts_at_once, request.cluster)
    check_command(request.run, refs[0].name)
    running = [
        r for r in store.jobs_of_kind(KIND) if r.vm == request.cluster and r.state == RUNNING
    ]
    if running:
        raise VmigrateError(
            f"job {running[0].id} is already rolling cluster {request.cluster!r}",
            host=request.cluster,
            fix=f"wait for it (`vmigrate jobs show {running[0].id}`)",
        )
    hosts, before = _roll_hosts(refs)
    order = roll_order(hosts, request.hosts_at_once)
    return {r.name: r for r in refs}, order, before


def rolling(
    request: RollingRequest, on_event: EventSink, job_id: int | None = None
) -> RollingReport:
    """Plan the roll, then (unless a dry run, or going on with `job_id`) run its steps."""
    started = time.monotonic()
    emit = JobEvents(on_event)
    with JobStore(request.store_path) as store:
        if job_id is not None:
            return _go_on(request, store, emit, on_event, job_id, started)
        refs, order, before = _start(request, store)
        versions = {h: int(v["qemu_encoded"]) for h, v in before.items()}
        predicted, bandwidth = predict(request, store, order, versions)
        report = RollingReport(None, request.cluster, order.to_dict(), predicted=predicted)
        report.hosts = {h: {"before": versions_of(v)} for h, v in before.items()}
        if request.dry_run:
            report.ok = not any(s.get("unplaced") for s in predicted["steps"])
            report.message = "dry run: nothing was changed"
            emit(PlanMade({"rolling": report.to_dict()}))
            return report
        purpose = Purpose(KIND, request.cluster, tuple(refs), tuple(refs))
        params = {
            "request": replace(request, bandwidth_mib=request.bandwidth_mib or bandwidth).to_dict(),
            "order": order.to_dict(),
            "before": before,
            "predicted": predicted,
        }
        job_id = create_fleet_job(store, purpose, params)
        emit.start(store, job_id, str(store.path))
        emit(PlanMade({"rolling": report.to_dict()}))
        roll = _Roll(request, store, refs, emit, on_event, job_id, versions)
        return _run_steps(roll, order, before, predicted, started)


def _go_on(
    request: RollingRequest,
    store: JobStore,
    emit: JobEvents,
    downstream: EventSink,
    job_id: int,
    started: float,
) -> RollingReport:
    record = store.job(job_id)
    params = record.params
    order = RollOrder(
        tuple(tuple(s) for s in params["order"]["steps"]), tuple(params["order"]["reasons"])
    )
    before: dict[str, Any] = params["before"]
    refs = {r.name: r for r in resolve_cluster(request.cluster, request.hosts_file)}
    refs = {h: refs[h] for h in order.hosts if h in refs}
    missing = [h for h in order.hosts if h not in refs]
    if missing:
        raise UsageError(
            f"{', '.join(missing)} left cluster {request.cluster!r} since the roll started",
            fix="put them back in the cluster to finish this roll",
        )
    check_command(request.run, order.hosts[0])
    versions = {h: int(v["qemu_encoded"]) for h, v in before.items()}
    for step in store.steps(job_id):  # hosts already checked run what their check read
        if step.state == DONE and step.name.startswith(HEALTH_STEP):
            versions[step.name.split(" ", 1)[1]] = int(step.detail["qemu_encoded"])
    emit.start(store, job_id, str(store.path))
    roll = _Roll(request, store, refs, emit, downstream, job_id, versions)
    return _run_steps(roll, order, before, params.get("predicted", {}), started)


def _run_steps(
    roll: _Roll,
    order: RollOrder,
    before: dict[str, Any],
    predicted: dict[str, Any],
    started: float,
) -> RollingReport:
    store, job_id = roll.store, roll.job_id
    recorded = {s.seq: s for s in store.steps(job_id)}
    failure: str | None = None
    previous: dict[str, Any] = {}
    try:
        for step in steps_of(order):
            done = recorded.get(step.seq)
            if done is not None and done.state == DONE:
                continue
            roll.step = step
            previous = dict(done.detail) if done is not None else {}
            store.record_step(job_id, step.seq, step.name, STARTED, previous)
            roll.emit(Notice(f"step {step.seq + 1}: {step.name}"))
            began = time.monotonic()
            try:
                detail = _STEPS[step.action](roll, step, previous, before)
            except VmigrateError as err:
                failure = f"{step.name}: {err.message}" + (
                    f" (what to do: {err.fix})" if err.fix else ""
                )
                detail = {**previous, **roll_detail(roll, step), "error": str(err)}
                store.record_step(job_id, step.seq, step.name, FAILED, _timed(detail, began))
                break
            store.record_step(
                job_id,
                step.seq,
                step.name,
                DONE,
                _timed({**roll_detail(roll, step), **detail}, began),
            )
            roll.emit(Notice(f"{step.name}: done in {time.monotonic() - began:.1f} s"))
    except BaseException as err:  # Ctrl-C, or a crash: the job ends failed, the step says why
        if roll.step is not None:  # what the step recorded (a command's PID) is kept
            seq = roll.step.seq
            now = next((s.detail for s in store.steps(job_id) if s.seq == seq), previous)
            store.record_step(job_id, seq, roll.step.name, FAILED, {**now, "error": repr(err)})
        with contextlib.suppress(Exception):
            store.finish_job(job_id, "failed", f"stopped: {err!r}", {})
        raise
    report = final_report(
        store, job_id, roll.request.cluster, roll.refs, order, before, predicted, failure, started
    )
    run = FleetRun(store, roll.refs, roll.request.hosts_file, roll.emit)
    finish(run, job_id, report.ok, report.message, report.to_dict())
    return report


def roll_detail(roll: _Roll, step: Step) -> dict[str, Any]:
    child = roll.child_jobs.get(step.seq)
    return {} if child is None else {"child_job": child}


def _timed(detail: dict[str, Any], began: float) -> dict[str, Any]:
    return {**detail, "seconds": round(time.monotonic() - began, 1)}


def _evacuate_step(
    roll: _Roll, step: Step, previous: dict[str, Any], _before: dict[str, Any]
) -> dict[str, Any]:
    """Empty the host through evacuate's path; its job goes on when the step is resumed."""
    store, request = roll.store, roll.request
    group = next(g for g in _order_of(roll) if step.host in g)
    for mate in group:  # the hosts emptied together take none of each other's VMs
        store.set_maintenance(mate, roll.refs[mate].uri, None, f"rolling upgrade job {roll.job_id}")
    child = previous.get("child_job")
    if child is not None:
        record = store.job(int(child))
        if record.state == "completed":
            return {"child_job": child, "moved": [], "resumed": "its evacuation had finished"}
        settle_in_flight(store, int(child), roll.sub_sink)
        store.reopen_job(int(child))
        roll.child_jobs[step.seq] = int(child)
    began = time.monotonic()
    source, targets, inp, plan = planned_evacuation(request, store, step.host, roll.versions, set())
    roll.downstream(PlanMade(plan.to_dict()))
    if plan.unplaced:
        why = "; ".join(f"{u.vm}: {u.reason}" for u in plan.unplaced)
        if child is not None:
            store.finish_job(int(child), "failed", f"nothing moved: {why}", {})
        raise RollStepFailed(
            f"{len(plan.unplaced)} VM(s) have nowhere to go, nothing was moved: {why}",
            host=step.host,
            fix="free memory on the other hosts (or move those VMs by hand), then "
            f"`vmigrate jobs resume {roll.job_id}`",
        )
    run = FleetRun(
        store, {r.name: r for r in (source, *targets)}, request.hosts_file, JobEvents(roll.sub_sink)
    )

    def into_maintenance(job: int) -> None:
        store.set_maintenance(source.name, source.uri, job, f"rolling upgrade job {roll.job_id}")

    params = {"request": asdict(evacuate_request(request, step.host)), "plan": plan.to_dict()}
    scheduled = schedule(
        run,
        plan,
        inp,
        params,
        job_id=int(child) if child is not None else None,
        before_moves=into_maintenance,
    )
    # evacuate's report builder has no public name yet, and fleet/evacuate.py is another
    # engineer's this round: it should become a public `evacuation_report` (in __all__).
    report = _report(scheduled.job_id, source, plan, scheduled.results, scheduled.cancelled, began)
    report.moves_s = scheduled.moves_s
    finish(run, scheduled.job_id, report.empty, report.message, report.to_dict())
    detail = {
        "child_job": scheduled.job_id,
        "moved": [_move_line(r.to_dict()) for r in report.moves],
        "moves_s": round(scheduled.moves_s, 1),
        "predicted_moves_s": round(plan.predicted_total_s, 1),
    }
    if not report.empty:
        raise RollStepFailed(
            f"the evacuation did not empty it: {report.message}",
            host=step.host,
            fix=f"see `vmigrate jobs show {scheduled.job_id}`, fix the cause, then "
            f"`vmigrate jobs resume {roll.job_id}`",
        )
    return detail


def _move_line(move: dict[str, Any]) -> dict[str, Any]:
    keep = ("vm", "source", "destination", "state", "mode", "seconds", "predicted_s", "gap_ms")
    return {k: move.get(k) for k in keep}


def _order_of(roll: _Roll) -> tuple[tuple[str, ...], ...]:
    stored = roll.store.job(roll.job_id).params["order"]["steps"]
    return tuple(tuple(g) for g in stored)


def _command_step(
    roll: _Roll, step: Step, previous: dict[str, Any], _before: dict[str, Any]
) -> dict[str, Any]:
    """The operator's command; when resumed, a run of it that still goes on (its roll was
    killed) is waited for first, then the command runs again."""
    _wait_for_earlier(previous, roll.request.command_timeout_s)
    argv = check_command(roll.request.run, step.host)

    def started(pid: int) -> None:
        roll.store.record_step(
            roll.job_id, step.seq, step.name, STARTED, {"pid": pid, "pid_start": process_start(pid)}
        )

    def remarked(message: str) -> None:
        roll.emit(Notice(message, level="warning"))

    ref = roll.refs[step.host]
    with host_kept_empty(roll.store, roll.job_id, ref, remarked) as watch:
        try:
            result = run_command(argv, step.host, roll.request.command_timeout_s, started)
        except RollStepFailed as failed:  # what a second actor did comes first
            appeared_during_command(step.host, watch.appeared(), failed.message, roll.job_id)
            raise
        outcome = f"it exited {result.returncode} after {result.seconds:g} s"
        appeared_during_command(step.host, watch.appeared(), outcome, roll.job_id)
    return result.to_dict()


def _wait_for_earlier(previous: dict[str, Any], timeout_s: float) -> None:
    pid, start = previous.get("pid"), previous.get("pid_start")
    if pid is None or start is None:
        return
    deadline = time.monotonic() + timeout_s
    while process_start(int(pid)) == start and time.monotonic() < deadline:
        time.sleep(1.0)


def _health_step(
    roll: _Roll, step: Step, _previous: dict[str, Any], before: dict[str, Any]
) -> dict[str, Any]:
    request = roll.request
    health = health_check(
        roll.refs[step.host],
        list(before[step.host]["pools_active"]),
        request.test_domain,
        request.wait_s,
    )
    found_on_emptied_host(step.host, health.domains, roll.job_id, FOUND_AFTER_COMMAND)
    old = before[step.host]
    roll.versions[step.host] = health.qemu_encoded
    roll.emit(
        Notice(
            f"{step.host}: libvirt {old['libvirt']} -> {health.libvirt_version}, "
            f"QEMU {old['qemu']} -> {health.qemu_version}"
        )
    )
    return health.to_dict()


def _return_step(
    roll: _Roll, step: Step, previous: dict[str, Any], _before: dict[str, Any]
) -> dict[str, Any]:
    """`maintenance end --return`'s path: the host leaves maintenance, the VMs its
    evacuation moved come back; one that cannot come back stays where it runs."""
    child = previous.get("child_job")
    if child is not None:  # a return whose driver died: its moves in flight end first
        settle_in_flight(roll.store, int(child), roll.sub_sink)
    began = time.monotonic()
    if roll.request.return_policy == RETURN_BETTER:
        results, better = return_if_better(
            roll.request,
            roll.store,
            roll.refs,
            roll.refs[step.host],
            roll.versions,
            roll.sub_sink,
        )
        unplaced = dict(better.staying) if better is not None else {}
        predicted = sum(m.predicted_s for m in better.plan.moves) if better else 0.0
    else:
        _was, results, plan = end_maintenance(
            step.host,
            bring_back=True,
            hosts_file=roll.request.hosts_file,
            store_path=roll.request.store_path,
            on_event=roll.sub_sink,
            max_parallel=roll.request.max_parallel,
        )
        unplaced = {u["vm"]: u["reason"] for u in (plan or {}).get("unplaced", [])}
        predicted = (plan or {}).get("predicted_total_s", 0.0)
    failed = [r for r in results if r.vm not in unplaced and r.state != MOVED]
    detail = {
        "moved": [_move_line(r.to_dict()) for r in results if r.state == MOVED],
        "stayed": unplaced,
        "moves_s": round(time.monotonic() - began, 1),
        "predicted_moves_s": predicted,
    }
    if failed:
        unsure = [r.vm for r in failed if r.state == UNKNOWN]
        raise RollStepFailed(
            "VM(s) did not come back: "
            + "; ".join(f"{r.vm}: {r.reason}" for r in failed)
            + (f" (where {', '.join(unsure)} runs is not proven)" if unsure else ""),
            host=step.host,
            fix=("`vmigrate recover VM` first; " if unsure else "")
            + f"then `vmigrate jobs resume {roll.job_id}`",
        )
    for vm, reason in unplaced.items():
        roll.emit(Notice(f"{vm} stays where it runs: {reason}", level="warning"))
    return detail


_STEPS: dict[str, Callable[[_Roll, Step, dict[str, Any], dict[str, Any]], dict[str, Any]]] = {
    EVACUATE_STEP: _evacuate_step,
    COMMAND_STEP: _command_step,
    HEALTH_STEP: _health_step,
    RETURN_STEP: _return_step,
}


def resume_rolling(
    job_id: int, store_path: StoreLocation | None, on_event: EventSink
) -> RollingReport:
    """Go on with a roll that failed or whose process died, from its first step not done."""
    with JobStore(store_path) as store:
        record = store.job(job_id)
        if record.kind != KIND:
            raise UsageError(f"job {job_id} is a {record.kind} job, not a rolling upgrade")
        store.reopen_job(job_id)
        request = RollingRequest.from_dict(record.params["request"])
    if store_path is not None:
        request = replace(request, store_path=store_path)
    try:
        return rolling(request, on_event, job_id=job_id)
    except BaseException as err:
        with JobStore(store_path) as store, contextlib.suppress(Exception):
            store.finish_job(job_id, "interrupted", f"resume failed: {err}", {})
        raise


__all__: Sequence[str] = (
    "resume_rolling",
    "rolling",
    "steps_of",
)
