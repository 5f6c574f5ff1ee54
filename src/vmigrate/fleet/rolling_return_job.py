"""A roll's return step with `--return better`: the host leaves maintenance, the cluster is
sampled as `balance` samples it (facts, each VM's CPU use over a window, dirty rates, the
checks of each VM against each host), the balance planner chooses which of the VMs that
left the host come back (rolling_return.py), and those move as a `return` job through the
fleet's scheduler; the others stay where they run, each with its reason."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from vmigrate.events import EventSink, JobEvents, PlanMade
from vmigrate.fleet.execute import MOVED, MoveResult
from vmigrate.fleet.gather import close_sessions
from vmigrate.fleet.job import FleetRun, finish, schedule
from vmigrate.fleet.plan import RETURN, Limits, Purpose
from vmigrate.fleet.rebalance import as_fleet_plan, sample_cluster
from vmigrate.fleet.returning import returning_moves
from vmigrate.fleet.rolling_plan import RollingRequest, return_sampling
from vmigrate.fleet.rolling_return import ReturnPlan, plan_return
from vmigrate.hosts import HostRef
from vmigrate.store import JobStore


def return_if_better(
    request: RollingRequest,
    store: JobStore,
    refs: dict[str, HostRef],
    home: HostRef,
    versions: dict[str, int],
    sink: EventSink,
) -> tuple[list[MoveResult], ReturnPlan | None]:
    """The moves made, and the plan (None when the host's evacuation moved nothing)."""
    store.end_maintenance(home.uri)
    away = returning_moves(store, home)
    if not away:
        return [], None
    sampled = sample_cluster(
        list(refs.values()), return_sampling(request), set(store.maintenance()), frozenset()
    )
    close_sessions(sampled.sessions)
    inp = sampled.inp
    planned = plan_return(
        inp.hosts, inp.vms, home.name, away, versions, inp.verdicts, inp.bandwidth_bps
    )
    emit = JobEvents(sink)
    if not planned.plan.moves:
        return [], planned
    limits = Limits(request.max_parallel, request.max_per_host)
    plan, fleet_input = as_fleet_plan(
        request.cluster, planned.plan, replace(sampled, inp=planned.inp), limits
    )
    purpose = Purpose(RETURN, home.name, plan.purpose.sources, (home.name,), home.uri)
    plan, fleet_input = replace(plan, purpose=purpose), replace(fleet_input, purpose=purpose)
    emit(PlanMade(plan.to_dict()))
    run = FleetRun(store, refs, request.hosts_file, emit)
    params: dict[str, Any] = {"plan": plan.to_dict(), "return": planned.to_dict()}
    scheduled = schedule(run, plan, fleet_input, params, retry_elsewhere=False)
    results = scheduled.results
    moved = sum(r.state == MOVED for r in results)
    report = {"moves": [r.to_dict() for r in results], "stayed": planned.staying}
    message = f"{moved} of {len(results)} VM(s) back on {home.name}; {len(planned.staying)} stay"
    finish(run, scheduled.job_id, moved == len(results), message, report)
    return results, planned
