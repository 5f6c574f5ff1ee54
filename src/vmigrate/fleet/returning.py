"""`vmigrate maintenance end HOST --return`: the VMs the host's last evacuation moved away
come back to it through the fleet's one path: gathered on the hosts that hold them, planned
onto the host (plan.py), moved as a `return` job (job.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vmigrate.errors import HostUnreachable
from vmigrate.events import Done, EventSink, JobEvents, Notice, PlanMade
from vmigrate.fleet.execute import MOVED, MoveResult
from vmigrate.fleet.gather import close_sessions, gather_input, open_sessions
from vmigrate.fleet.job import FleetRun, finish, purpose_of, schedule
from vmigrate.fleet.plan import EVACUATE, RETURN, Limits, Purpose, plan_moves
from vmigrate.hosts import HostRef, resolve_host
from vmigrate.store import JobStore, StoreLocation


def returning_moves(store: JobStore, host: HostRef) -> dict[str, str]:
    """VM -> host it went to, for the VMs the last evacuation of `host` moved away."""
    for record in store.jobs_of_kind(EVACUATE):
        purpose = purpose_of(record)
        # Rows stored before they carried a purpose held the emptied host's URI as source.
        emptied = (purpose.subject_uri if purpose else record.source) == host.uri
        if not emptied:
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

    def done(was: bool, results: list[MoveResult]) -> dict[str, Any]:
        moves = [r.to_dict() for r in results]
        return {"host": host, "was_in_maintenance": was, "moves": moves}

    with JobStore(store_path) as store:
        was = store.end_maintenance(ref.uri) is not None
        away = returning_moves(store, ref) if bring_back else {}
        if not away:
            emit(Done(done(was, [])))
            return was, [], None
        by_host: dict[str, list[str]] = {}
        for vm, where in away.items():
            by_host.setdefault(where, []).append(vm)
        holders = [resolve_host(name, hosts_file) for name in by_host]
        purpose = Purpose(RETURN, ref.name, tuple(by_host), (ref.name,), ref.uri)
        sessions = open_sessions([ref, *holders])
        try:
            home = sessions[ref.name]
            if home.facts is None:
                raise HostUnreachable(
                    f"cannot bring VMs back: {home.error}", host=ref.name, fix="start it first"
                )
            answering = []
            for name, vms in by_host.items():
                if sessions[name].facts is None:
                    emit(Notice(f"{name} does not answer: {', '.join(vms)} stay"))
                    continue
                answering.append((sessions[name], vms))
            inp = gather_input(
                purpose,
                answering,
                [home],
                mode="auto",
                limits=Limits(max_parallel, Limits().max_per_host),
            )
        finally:
            close_sessions(sessions)
        plan = plan_moves(inp)
        emit(PlanMade(plan.to_dict()))
        run = FleetRun(store, {r.name: r for r in (ref, *holders)}, hosts_file, emit)
        scheduled = schedule(run, plan, inp, {"plan": plan.to_dict()})
        results = scheduled.results
        results += [MoveResult(u.vm, "", ref.name, "stayed", "", u.reason) for u in plan.unplaced]
        moved = sum(r.state == MOVED for r in results)
        finish(
            run,
            scheduled.job_id,
            moved == len(results),
            f"{moved} of {len(results)} VM(s) back on {ref.name}",
            {"moves": [r.to_dict() for r in results]},
            done(was, results),
        )
    return was, results, plan.to_dict()
