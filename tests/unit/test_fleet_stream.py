"""A plan made while its first moves run (fleet/stream.py) is the plan `--dry-run` shows:
the streaming planner is replayed over the same facts as the batch planner (recorded from the
real lab, and generated), VM by VM as a planning thread hands them over, the dirty rates and
the link coming only at the end."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_fleet_plan import EMPTY_A, budget, e1_input, vm
from tests.unit.test_fleet_recorded import evacuation
from tests.unit.test_scheduler import SOURCE, check_invariants, simulate
from tests.unit.test_scheduler import evacuation as scheduler_input
from vmigrate.capacity import MIB
from vmigrate.fleet.execute import MOVED
from vmigrate.fleet.plan import (
    FleetInput,
    FleetPlan,
    Limits,
    PairVerdict,
    PlannedMove,
    TargetHost,
    placement_order,
    plan_moves,
)
from vmigrate.fleet.stream import PlanFeed
from vmigrate.store import JobStore


def streamed(inp: FleetInput) -> tuple[list[PlannedMove], list[PlannedMove], FleetPlan]:
    """Replay the streaming planner over `inp`: each VM as the planning thread hands it over
    (checked, its dirty rate not yet measured), then the complete input. Returns the moves
    handed to the scheduler before the plan was complete, those handed over with it, and
    the plan."""
    feed = PlanFeed(replace(inp, vms=(), verdicts=(), checks=(), bandwidth_source="not yet"))
    early: list[PlannedMove] = []
    for load in placement_order(inp.vms):
        verdicts = [v for v in inp.verdicts if v.vm == load.name]
        feed.offer(replace(load, dirty_rate_bps=None), verdicts, ())
        ready, completion = feed.take()
        assert completion is None
        early += [arrival.move for arrival in ready]
    plan = feed.complete(inp)
    late, completion = feed.take()
    assert completion is not None and completion.plan == plan
    return early, [arrival.move for arrival in late], plan


def what_the_child_runs(move: PlannedMove) -> tuple[object, ...]:
    """What a move's child is started with: final before the plan is."""
    return (move.vm, move.source, move.destination, move.mode, move.copy_storage, move.parallel)


def test_streaming_over_the_recorded_lab_facts_makes_the_dry_runs_plan() -> None:
    inp = evacuation()
    early, late, plan = streamed(inp)
    batch = plan_moves(inp)
    assert plan.to_dict() == batch.to_dict()
    assert not late  # every move could start as soon as it was placed
    assert [what_the_child_runs(m) for m in early] == [what_the_child_runs(m) for m in batch.moves]


def test_streaming_e1_starts_every_move_early_with_its_final_options() -> None:
    inp = e1_input()
    early, late, plan = streamed(inp)
    assert plan.to_dict() == plan_moves(inp).to_dict()
    assert [what_the_child_runs(m) for m in early] == [what_the_child_runs(m) for m in plan.moves]
    assert not late
    # the largest first, as placed
    assert [m.vm for m in plan.moves] == [v.name for v in placement_order(inp.vms)]


def test_where_multifd_may_be_used_moves_wait_for_the_complete_plan() -> None:
    # one stream carries less than the link: the connections depend on the measured link
    inp = e1_input(bandwidth_bps=1190 * MIB, stream_bps=300 * MIB, stream_source="earlier")
    early, late, plan = streamed(inp)
    assert not early
    assert late == list(plan.moves)
    assert plan.to_dict() == plan_moves(inp).to_dict()


@settings(max_examples=150, deadline=None)
@given(
    vms=st.lists(
        st.tuples(
            st.integers(64, 3072),
            st.sampled_from([0.0, 20.0, 200.0]),
            st.sampled_from(["running", "running", "shut off"]),
        ),
        max_size=10,
    ),
    capacities=st.lists(st.integers(512, 6144), min_size=1, max_size=4),
    blocked=st.sets(st.tuples(st.integers(0, 9), st.integers(0, 3)), max_size=8),
    mode=st.sampled_from(["auto", "live", "cold"]),
    limits=st.tuples(st.integers(1, 4), st.integers(1, 4)),
)
def test_property_streaming_and_batch_planning_make_the_same_moves(
    vms: list[tuple[int, float, str]],
    capacities: list[int],
    blocked: set[tuple[int, int]],
    mode: str,
    limits: tuple[int, int],
) -> None:
    loads = tuple(vm(f"v{i}", size, dirty, state) for i, (size, dirty, state) in enumerate(vms))
    names = [f"h{i}" for i in range(len(capacities))]
    targets = tuple(TargetHost(n, budget(n, c)) for n, c in zip(names, capacities, strict=True))
    verdicts = tuple(
        PairVerdict(v.name, h, ("cpu.model: refused",) if (i, j) in blocked else ())
        for i, v in enumerate(loads)
        for j, h in enumerate(names)
    )
    inp = FleetInput(EMPTY_A, loads, targets, verdicts, mode=mode, limits=Limits(*limits))
    early, late, plan = streamed(inp)
    batch = plan_moves(inp)
    assert plan.to_dict() == batch.to_dict()
    assert not late
    assert sorted(what_the_child_runs(m) for m in early) == sorted(
        what_the_child_runs(m) for m in batch.moves
    )


def test_a_streamed_move_that_fails_before_the_plan_is_complete_is_retried_after(
    tmp_path: Path,
) -> None:
    # the first move's child is refused at once; the plan completes a few polls later
    inp = scheduler_input([(512, True)] * 5, [4096, 4096], "auto", Limits(2, 2))
    out = simulate(tmp_path, inp, ["refused"], None, streaming=True)
    check_invariants(out)
    first = next(r for r in out.results if r.attempts[0]["outcome"] == "refused")
    assert first.state == MOVED and len(first.attempts) == 2
    assert first.attempts[0]["destination"] != first.destination
    assert out.scheduler.complete
    with JobStore(tmp_path / "jobs.sqlite") as store:  # each move recorded in the job
        steps = store.steps(out.scheduler.ctx.job_id)
    assert sorted(s.name for s in steps) == [f"vm{i}" for i in range(5)]
    assert all(s.state == MOVED for s in steps)
    assert all(r.runs_on != SOURCE for r in out.results)
