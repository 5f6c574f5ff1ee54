"""`vmigrate balance`: a round of the fleet's one path for load. Facts of every host of the
cluster gathered once, in parallel, with each running VM's CPU use over a window (bulk
statistics) and its dirty rate (QEMU) -> the checks of each VM against each other host ->
the plan (balance.py, pure), as a fleet plan whose purpose is the cluster -> its moves as a
fleet job (job.py), each an ordinary live job -> the load measured again -> a report. Every
round that moves something is a job (kind "balance")."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vmigrate.capacity import HostBudget, host_budget
from vmigrate.errors import HostUnreachable, UsageError, VmigrateError
from vmigrate.events import EventSink, JobEvents, Notice, PlanMade
from vmigrate.fleet.balance import (
    DEFAULT_MAX_MOVES,
    DEFAULT_MIN_GAIN,
    DEFAULT_THRESHOLD,
    BalanceInput,
    BalancePlan,
    HostSample,
    VmSample,
    as_planned_moves,
    check_settings,
    host_shares,
    imbalance,
    plan_balance,
    target_hosts,
    vm_loads,
)
from vmigrate.fleet.execute import MOVED, MoveResult
from vmigrate.fleet.gather import close_sessions, gather_vms, link_bandwidth, open_sessions
from vmigrate.fleet.job import FleetRun, finish, schedule
from vmigrate.fleet.plan import BALANCE, LIVE, FleetInput, FleetPlan, Limits, PairVerdict, Purpose
from vmigrate.hosts import LAB_CLUSTER, HostRef, cluster_names, resolve_cluster
from vmigrate.model import CheckReport
from vmigrate.preflight import HostSession
from vmigrate.store import JobStore, StoreLocation
from vmigrate.virt.stats import domain_cpu_seconds

KIND = BALANCE
DEFAULT_WINDOW_S = 5.0
#: A VM balance moved is left alone this long (no ping-pong while loads settle).
DEFAULT_COOL_DOWN_S = 1800.0


@dataclass(frozen=True)
class BalanceRequest:
    cluster: str | None = None
    threshold: float = DEFAULT_THRESHOLD
    min_gain: float = DEFAULT_MIN_GAIN
    max_moves: int = DEFAULT_MAX_MOVES
    window_s: float = DEFAULT_WINDOW_S
    cool_down_s: float = DEFAULT_COOL_DOWN_S
    max_parallel: int = 1
    bandwidth_mib: float | None = None
    dry_run: bool = False
    hosts_file: Path | None = None
    store_path: StoreLocation | None = None


@dataclass
class BalanceReport:
    job_id: int | None
    cluster: str
    plan: dict[str, Any]
    moves: list[MoveResult] = field(default_factory=list)
    imbalance_measured_after: float | None = None
    hosts_measured_after: list[dict[str, Any]] = field(default_factory=list)
    total_s: float = 0.0
    message: str = ""
    cancelled: bool = False  # Ctrl-C: the moves in flight stopped, and so do further rounds

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "cluster": self.cluster,
            "cancelled": self.cancelled,
            "plan": self.plan,
            "imbalance_before": self.plan["imbalance_before"],
            "imbalance_after": self.plan["imbalance_after"],
            "moves": [m.to_dict() for m in self.moves],
            "imbalance_measured_after": self.imbalance_measured_after,
            "hosts_measured_after": self.hosts_measured_after,
            "total_s": round(self.total_s, 1),
            "message": self.message,
        }


def _validate(request: BalanceRequest) -> None:
    check_settings(request.threshold, request.min_gain, request.max_moves)
    if request.window_s <= 0 or request.cool_down_s < 0 or request.max_parallel < 1:
        raise UsageError(
            "--window must be positive, --cool-down not negative, --max-parallel at least 1"
        )


def _cluster(request: BalanceRequest) -> tuple[str, tuple[HostRef, ...]]:
    name = request.cluster
    if name is None:
        known = cluster_names(request.hosts_file)
        if known != [LAB_CLUSTER] and len(known) != 1:
            raise UsageError(
                f"which cluster? known: {', '.join(known) or 'none'}",
                fix="pass --cluster NAME (clusters are [clusters.NAME] in the hosts file)",
            )
        name = known[0]
    refs = resolve_cluster(name, request.hosts_file)
    if len(refs) < 2:
        raise UsageError(f"cluster {name!r} has one host: there is nothing to balance")
    return name, refs


def _cpu_seconds(sessions: Sequence[HostSession]) -> dict[str, dict[str, float]]:
    """Every answering host's per-VM CPU seconds, read at once (host -> VM -> seconds)."""

    def read(session: HostSession) -> tuple[str, dict[str, float]]:
        if session.conn is None:
            return session.ref.name, {}
        try:
            return session.ref.name, domain_cpu_seconds(session.conn, host=session.ref.name)
        except VmigrateError:
            return session.ref.name, {}

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(sessions)))) as pool:
        return dict(pool.map(read, sessions))


@dataclass
class _Sampled:
    inp: BalanceInput
    sessions: dict[str, HostSession]
    checks: tuple[CheckReport, ...] = ()  # behind inp.verdicts, for the moves' children
    checked_at: float = 0.0


def sample_cluster(
    refs: Sequence[HostRef],
    request: BalanceRequest,
    maintenance: set[str],
    cooled: frozenset[str],
    *,
    with_checks: bool = True,
) -> _Sampled:
    """The cluster's load: facts of every host at once, CPU use over the window, and (for a
    plan) each running VM's dirty rate and checks against every other host."""
    sessions = open_sessions(refs)
    answering = [s for s in sessions.values() if s.facts is not None]
    if not answering:
        close_sessions(sessions)
        raise HostUnreachable(
            "no host of the cluster answers: "
            + "; ".join(f"{s.ref.name}: {s.error}" for s in sessions.values()),
            fix="check the hosts' libvirtd and network; nothing was moved",
        )
    try:
        first, started = _cpu_seconds(answering), time.monotonic()
        loads, verdicts, reports = [], [], []
        checked_at = time.time()
        if with_checks:
            for session in answering:
                others = [s for s in answering if s is not session]
                for gathered in gather_vms(session, others, "live"):
                    loads.append(gathered.load)
                    verdicts += _memory_only(gathered.load.local_disks, gathered.verdicts)
                    reports += gathered.reports
        time.sleep(max(0.0, request.window_s - (time.monotonic() - started)))
        second, window = _cpu_seconds(answering), time.monotonic() - started
        samples = _vm_samples(answering, loads, first, second, window)
        bandwidth, _source = link_bandwidth(
            request.bandwidth_mib
            if request.bandwidth_mib
            else (119.0 if not with_checks else None),
            answering,
        )
        hosts = tuple(
            HostSample(
                s.ref.name,
                _budget(s),
                maintenance=s.ref.uri in maintenance,
                reachable=s.facts is not None,
                problem=s.error,
            )
            for s in sessions.values()
        )
        inp = BalanceInput(
            hosts=hosts,
            vms=tuple(samples),
            verdicts=tuple(verdicts),
            threshold=request.threshold,
            min_gain=request.min_gain,
            max_moves=request.max_moves,
            cooled=cooled,
            bandwidth_bps=bandwidth,
        )
    except BaseException:
        close_sessions(sessions)
        raise
    return _Sampled(inp, sessions, tuple(reports), checked_at)


def _budget(session: HostSession) -> HostBudget | None:
    return host_budget(session.facts) if session.facts is not None else None


def _memory_only(local_disks: tuple[str, ...], verdicts: list[PairVerdict]) -> list[PairVerdict]:
    """Balance moves memory only: a VM with disks the hosts do not share stays."""
    if not local_disks:
        return verdicts
    blocker = f"storage: local disks ({', '.join(local_disks)}); balance moves memory only"
    return [replace(v, blockers=(*v.blockers, blocker)) for v in verdicts]


def _vm_samples(
    sessions: Sequence[HostSession],
    loads: Sequence[Any],
    first: dict[str, dict[str, float]],
    second: dict[str, dict[str, float]],
    window: float,
) -> list[VmSample]:
    dirty = {(load.host, load.name): load.dirty_rate_bps for load in loads}
    samples = []
    for session in sessions:
        assert session.facts is not None
        host = session.ref.name
        for guest in session.facts.guests:
            before = first.get(host, {}).get(guest.name)
            after = second.get(host, {}).get(guest.name)
            cores = 0.0
            if before is not None and after is not None and window > 0:
                cores = max(0.0, (after - before) / window)  # a VM restarted mid-window: 0
            samples.append(
                VmSample(
                    name=guest.name,
                    host=host,
                    vcpus=guest.vcpus,
                    cpu_cores=round(cores, 4),
                    memory_bytes=guest.memory_bytes,
                    dirty_rate_bps=dirty.get((host, guest.name)),
                    persistent=guest.persistent,
                    state=guest.state,
                )
            )
    return _in_flight_left_out(samples)


#: What balance calls a VM that holds memory on two hosts at once: a migration in flight.
MIGRATING = "migrating"


def _in_flight_left_out(samples: list[VmSample]) -> list[VmSample]:
    """A VM seen running on two hosts is being moved by someone (an evacuation, another
    operator): it is no candidate for this round, and is counted on neither host."""
    holders: dict[str, int] = {}
    for sample in samples:
        if sample.holds:
            holders[sample.name] = holders.get(sample.name, 0) + 1
    return [
        replace(sample, state=MIGRATING) if holders.get(sample.name, 0) > 1 else sample
        for sample in samples
    ]


def as_fleet_plan(
    cluster: str, plan: BalancePlan, sampled: _Sampled, limits: Limits
) -> tuple[FleetPlan, FleetInput]:
    """The balance plan as the fleet's plan, its purpose the cluster: the moves it chose
    (with start times from the shared link), the VMs they move, every host as a target."""
    inp = sampled.inp
    moves = as_planned_moves(plan, inp, limits)
    targets = target_hosts(inp)
    sources = tuple(sorted({m.source for m in moves}))
    purpose = Purpose(BALANCE, cluster, sources, tuple(t.name for t in targets))
    fleet_input = FleetInput(
        purpose,
        vms=vm_loads(inp, plan),
        targets=targets,
        verdicts=inp.verdicts,
        mode=LIVE,
        limits=limits,
        bandwidth_bps=inp.bandwidth_bps,
        checks=sampled.checks,
        checked_at=sampled.checked_at,
    )
    total = max((m.predicted_start_s + m.predicted_s for m in moves), default=0.0)
    fleet_plan = FleetPlan(purpose, LIVE, moves, (), total, limits, inp.bandwidth_bps, "", ())
    return fleet_plan, fleet_input


def balance_round(request: BalanceRequest, on_event: EventSink) -> BalanceReport:
    started = time.monotonic()
    emit = JobEvents(on_event)  # stored once the job exists
    _validate(request)
    name, refs = _cluster(request)
    with JobStore(request.store_path) as store:
        maintenance = set(store.maintenance())
        cooled = frozenset(store.moved_by(KIND, time.time() - request.cool_down_s))
        sampled = sample_cluster(refs, request, maintenance, cooled)
        close_sessions(sampled.sessions)
        plan = plan_balance(sampled.inp)
        emit(PlanMade(plan.to_dict()))
        if request.dry_run or not plan.moves:
            return BalanceReport(
                None,
                name,
                plan.to_dict(),
                total_s=time.monotonic() - started,
                message=plan.reason if not plan.moves else "dry run",
            )
        limits = Limits(request.max_parallel, request.max_parallel)
        fleet_plan, fleet_input = as_fleet_plan(name, plan, sampled, limits)
        run = FleetRun(store, {r.name: r for r in refs}, request.hosts_file, emit)
        params = {"request": asdict(request), "plan": plan.to_dict()}
        # A failed move is not sent elsewhere: the later moves assumed it happened, so the
        # next round plans again.
        scheduled = schedule(run, fleet_plan, fleet_input, params, retry_elsewhere=False)
        results, cancelled = scheduled.results, scheduled.cancelled
        after: list[Any] = []
        if not cancelled:
            try:
                after = _measure(refs, request, maintenance)
            except KeyboardInterrupt:
                cancelled = True
        moved = sum(r.state == MOVED for r in results)
        report = BalanceReport(
            scheduled.job_id,
            name,
            plan.to_dict(),
            results,
            round(imbalance([h.load for h in after]), 4) if after else None,
            [h.to_dict() for h in after],
            time.monotonic() - started,
            f"{moved} of {len(results)} move(s) done; imbalance {plan.imbalance_before:.3f} -> "
            f"{plan.imbalance_after:.3f} predicted" + ("; cancelled" if cancelled else ""),
            cancelled,
        )
        finish(run, scheduled.job_id, moved == len(results), report.message, report.to_dict())
    return report


def _measure(refs: Sequence[HostRef], request: BalanceRequest, maintenance: set[str]) -> list[Any]:
    """The loads after the moves, sampled again over the window."""
    try:
        sampled = sample_cluster(refs, request, maintenance, frozenset(), with_checks=False)
    except VmigrateError:
        return []
    close_sessions(sampled.sessions)
    return list(host_shares(sampled.inp))


def watch(
    request: BalanceRequest,
    every_s: float,
    emit: EventSink,
    one_round: Callable[[BalanceRequest, EventSink], BalanceReport] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[BalanceReport]:
    """Rounds until Ctrl-C, `every_s` apart; each round moves at most max_moves VMs. A
    Ctrl-C during a round's moves cancels them (the scheduler takes it) and ends the watch."""
    run_round = one_round or balance_round
    reports: list[BalanceReport] = []
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            reports.append(run_round(request, emit))
            if reports[-1].cancelled:
                emit(Notice("cancelled: no more rounds"))
                break
            emit(Notice(f"next round in {every_s:g} s (Ctrl-C stops)"))
            sleep(every_s)
    return reports
