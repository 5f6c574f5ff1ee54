"""One fleet job, whatever it is for (empty a host, return VMs to it, balance a cluster).
Each purpose gathers and plans in its own module (evacuate.py, returning.py, rebalance.py);
from the plan on they share one path: the job row written from the plan's purpose, the moves
run by the scheduler (execute.py), the job's end recorded and reported.

A fleet job's row: `kind` is its purpose; `vm` its subject, what `jobs list` names it by (the
host it empties or returns VMs to, the cluster it balances; a live or cold job's VM);
`source` and `destination` the names of the hosts VMs leave and may go to, comma-joined;
`params["purpose"]` says the same, typed (`Purpose.from_dict`), for code to read."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmigrate.events import Done, JobEvents
from vmigrate.fleet.execute import MoveContext, MoveResult, MoveScheduler, Runtime
from vmigrate.fleet.leases import Reserver
from vmigrate.fleet.logs import MoveLogs
from vmigrate.fleet.plan import PURPOSES, FleetInput, FleetPlan, Purpose
from vmigrate.fleet.stream import Completion, PlanFeed
from vmigrate.guard import TOKEN_PARAM, new_token
from vmigrate.hosts import HostRef
from vmigrate.store import JobRecord, JobStore, default_store_path


def create_fleet_job(store: JobStore, purpose: Purpose, params: dict[str, Any]) -> int:
    """The job row of a fleet job (see the module's docstring)."""
    return store.create_job(
        purpose.kind,
        purpose.subject,
        ",".join(purpose.sources),
        ",".join(purpose.targets),
        {**params, "purpose": purpose.to_dict()},
    )


def purpose_of(record: JobRecord) -> Purpose | None:
    """A fleet job's purpose as its row stored it; None for another kind of job, or a fleet
    job stored before rows carried one."""
    stored = record.params.get("purpose")
    if record.kind not in PURPOSES or not isinstance(stored, dict):
        return None
    return Purpose.from_dict(stored)


def log_dir(store: JobStore, job_id: int) -> MoveLogs:
    """`<store dir>/fleet/<job>/`, private; under the default state directory when the store
    is a database server rather than a file."""
    location = getattr(store, "path", None)
    base = location.parent if isinstance(location, Path) else default_store_path().parent
    return MoveLogs(base, ("fleet", str(job_id)))


@dataclass
class Scheduled:
    """What the moves of a fleet job came to."""

    job_id: int
    results: list[MoveResult]
    cancelled: bool
    moves_s: float  # from the first move's start to the last one's end


@dataclass(frozen=True)
class FleetRun:
    """Where a fleet job's moves run: the store, the hosts by name, how to report."""

    store: JobStore
    refs: dict[str, HostRef]
    hosts_file: Path | None
    emit: JobEvents


def schedule(
    run: FleetRun,
    plan: FleetPlan,
    inp: FleetInput,
    params: dict[str, Any],
    *,
    job_id: int | None = None,
    before_moves: Callable[[int], None] | None = None,
    retry_elsewhere: bool = True,
    feed: PlanFeed | None = None,
    on_complete: Callable[[int, FleetPlan], None] | None = None,
) -> Scheduled:
    """Create the job (or go on with `job_id`, resumed), then run the plan's moves.
    `before_moves(job_id)` runs once the job exists, before its events are stored. With
    `feed` (a plan still being made: stream.py), `plan` holds what is known before it, the
    moves join as they are placed, and `on_complete(job_id, plan)` gets the complete plan
    (its unplaced VMs are recorded first)."""
    store = run.store
    if job_id is None:
        job_id = create_fleet_job(store, plan.purpose, {**params, TOKEN_PARAM: new_token()})
    else:
        earlier = store.job(job_id).params  # a resumed job keeps its token: the same holder
        kept = {TOKEN_PARAM: earlier.get(TOKEN_PARAM) or new_token()}
        store.set_job_params(job_id, {**earlier, **params, **kept})
    token = str(store.job(job_id).params[TOKEN_PARAM])
    if before_moves is not None:
        before_moves(job_id)
    run.emit.start(store, job_id, str(store.path))
    created = job_id

    def record_unplaced(complete: FleetPlan) -> None:
        for unplaced in complete.unplaced:
            store.add_action(created, "unplaced", f"{unplaced.vm}: {unplaced.reason}", "planner")

    def completed(completion: Completion) -> None:
        record_unplaced(completion.plan)
        if on_complete is not None:
            on_complete(created, completion.plan)

    if feed is None:
        record_unplaced(plan)
    seq_base = max((step.seq for step in store.steps(job_id)), default=-1) + 1
    ctx = MoveContext(
        job_id,
        store,
        run.refs,
        run.hosts_file,
        log_dir(store, job_id),
        run.emit,
        seq_base,
        Reserver(store, job_id, plan.purpose.kind, token),
    )
    scheduler = MoveScheduler(
        plan,
        inp,
        ctx,
        retry_elsewhere=retry_elsewhere,
        runtime=Runtime(wait_for_moves=PlanFeed.wait),
        feed=feed,
        on_complete=completed,
    )
    moving = time.monotonic()
    results = scheduler.run()
    return Scheduled(job_id, results, scheduler.cancelled, time.monotonic() - moving)


def finish(
    run: FleetRun,
    job_id: int,
    ok: bool,
    message: str,
    report: dict[str, Any],
    done: dict[str, Any] | None = None,
) -> None:
    """The job's end in the store, then the last event (`done`, else the report)."""
    run.store.finish_job(job_id, "completed" if ok else "failed", message, report)
    run.emit(Done(report if done is None else done))
