"""The evacuation planner and its prediction, over facts shaped like the lab's."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmigrate.capacity import MIB, HostBudget, memory_need_bytes
from vmigrate.fleet.plan import (
    EVACUATE,
    FleetInput,
    Ledger,
    Limits,
    PairVerdict,
    Purpose,
    TargetHost,
    VmLoad,
    next_destination,
    plan_moves,
    sending_at_once,
)
from vmigrate.fleet.predict import (
    LIVE_FINISH_S,
    LIVE_OVERHEAD_S,
    SETUP_S,
    LinkClaim,
    LiveModel,
    link_ready,
    live_cost,
    simulate,
)

GIB = 1024 * MIB

EMPTY_A = Purpose(EVACUATE, "hostA", ("hostA",))


def budget(
    name: str, capacity_mib: int, placed_mib: int = 0, vcpus: int | None = None
) -> HostBudget:
    return HostBudget(
        host=name,
        reported_bytes=24 * GIB,
        declared_bytes=capacity_mib * MIB,
        reserve_bytes=512 * MIB,
        placed_bytes=placed_mib * MIB,
        available_now_bytes=20 * GIB,
        vcpus_declared=vcpus,
        vcpus_placed=0,
        cpus=2,
    )


def vm(name: str, memory_mib: int, dirty_mib: float = 0.0, state: str = "running") -> VmLoad:
    return VmLoad(name, "hostA", state, True, memory_mib * MIB, 1, dirty_mib * MIB)


def passing(vms: list[VmLoad], hosts: list[str]) -> tuple[PairVerdict, ...]:
    return tuple(PairVerdict(v.name, h, ()) for v in vms for h in hosts)


def test_a_512_mib_vm_needs_768_mib_with_qemus_overhead() -> None:
    assert memory_need_bytes(512 * MIB) == 768 * MIB
    assert budget("hostB", 2048).free_bytes == 1536 * MIB


def test_no_target_overfills_and_what_does_not_fit_is_listed_with_each_hosts_reason() -> None:
    # hostB takes two 768 MiB needs (1536 usable), hostC one (1024 usable): five VMs, three fit
    vms = [vm(f"g{i}", 512) for i in range(5)]
    inp = FleetInput(
        purpose=EMPTY_A,
        vms=tuple(vms),
        targets=(
            TargetHost("hostB", budget("hostB", 2048)),
            TargetHost("hostC", budget("hostC", 1536)),
        ),
        verdicts=passing(vms, ["hostB", "hostC"]),
    )
    plan = plan_moves(inp)
    placed = [m.destination for m in plan.moves]
    assert sorted(placed) == ["hostB", "hostB", "hostC"]
    assert len(plan.unplaced) == 2
    assert "hostB: needs 768 MiB, 0 MiB free after 2 planned move(s)" in plan.unplaced[0].reason
    assert "hostC: needs 768 MiB, 256 MiB free after 1 planned move(s)" in plan.unplaced[0].reason
    for host in plan.hosts:
        assert host.free_after_bytes >= 0


def test_the_largest_vm_goes_first_and_the_load_spreads() -> None:
    vms = [vm("small", 256), vm("big", 1024), vm("mid", 512)]
    inp = FleetInput(
        EMPTY_A,
        tuple(vms),
        (TargetHost("hostB", budget("hostB", 3072)), TargetHost("hostC", budget("hostC", 3072))),
        passing(vms, ["hostB", "hostC"]),
    )
    plan = plan_moves(inp)
    assert [m.vm for m in plan.moves] == ["big", "mid", "small"]
    first, second = plan.moves[0].destination, plan.moves[1].destination
    assert first != second  # the second VM goes where more is left
    assert plan.moves[0].alternatives == (second,)


def test_maintenance_unreachable_and_failed_checks_exclude_a_target() -> None:
    vms = [vm("web", 256)]
    verdicts = (
        PairVerdict("web", "hostB", ()),
        PairVerdict("web", "hostC", ("networks: network 'prod' is missing on hostC",)),
        PairVerdict("web", "hostD", ()),
    )
    inp = FleetInput(
        EMPTY_A,
        tuple(vms),
        (
            TargetHost("hostB", budget("hostB", 4096), maintenance=True),
            TargetHost("hostC", budget("hostC", 4096)),
            TargetHost("hostD", None, problem="connection refused"),
        ),
        verdicts,
    )
    plan = plan_moves(inp)
    assert plan.moves == ()
    reason = plan.unplaced[0].reason
    assert "hostB: in maintenance" in reason
    assert "hostC: networks: network 'prod' is missing on hostC" in reason
    assert "hostD: does not answer (connection refused)" in reason


def test_live_mode_refuses_a_shut_off_vm_and_auto_moves_it_cold() -> None:
    vms = [vm("off", 256, state="shut off")]
    targets = (TargetHost("hostB", budget("hostB", 4096)),)
    live = plan_moves(
        FleetInput(EMPTY_A, tuple(vms), targets, passing(vms, ["hostB"]), mode="live")
    )
    assert live.moves == () and "live move needs it running" in live.unplaced[0].reason
    auto = plan_moves(FleetInput(EMPTY_A, tuple(vms), targets, passing(vms, ["hostB"])))
    assert auto.moves[0].mode == "cold" and auto.moves[0].predicted_downtime_ms is None


def test_declared_vcpus_limit_placement() -> None:
    vms = [VmLoad(f"v{i}", "hostA", "running", True, 256 * MIB, 2, 0.0) for i in range(2)]
    inp = FleetInput(
        EMPTY_A,
        tuple(vms),
        (TargetHost("hostB", budget("hostB", 8192, vcpus=3)),),
        passing(vms, ["hostB"]),
    )
    plan = plan_moves(inp)
    assert len(plan.moves) == 1
    assert "needs 2 vCPUs, 1 of its declared vCPUs free" in plan.unplaced[0].reason


def test_a_failed_move_goes_to_the_next_host_not_tried_yet() -> None:
    vms = [vm("web", 512)]
    targets = (
        TargetHost("hostB", budget("hostB", 4096)),
        TargetHost("hostC", budget("hostC", 2048)),
    )
    inp = FleetInput(EMPTY_A, tuple(vms), targets, passing(vms, ["hostB", "hostC"]))
    ledger = Ledger.of(targets)
    assert next_destination(vms[0], inp, ledger, frozenset({"hostB"}))[0] == "hostC"
    nowhere, why = next_destination(vms[0], inp, ledger, frozenset({"hostB", "hostC"}))
    assert nowhere is None and "hostB: already tried" in why


def test_parallel_moves_share_the_link_so_two_at_once_end_no_sooner_than_one_after_another() -> (
    None
):
    model = LiveModel()
    costs = [lambda b: live_cost(512 * MIB, 0.0, b, model)] * 2
    hosts = [("hostA", "hostB"), ("hostA", "hostC")]
    serial = simulate(costs, hosts, 119 * MIB, max_parallel=1, max_per_host=1)
    parallel = simulate(costs, hosts, 119 * MIB, max_parallel=2, max_per_host=2)
    assert serial[1].start_s == pytest.approx(serial[0].end_s)
    assert parallel[0].start_s == parallel[1].start_s == 0
    # data moves at the link's rate either way; in parallel the fixed overheads overlap
    assert max(s.end_s for s in parallel) < max(s.end_s for s in serial)
    assert max(s.end_s for s in parallel) > 2 * 512 / 119


def test_the_predicted_total_counts_the_limits() -> None:
    vms = [vm(f"g{i}", 256) for i in range(4)]
    targets = (
        TargetHost("hostB", budget("hostB", 8192)),
        TargetHost("hostC", budget("hostC", 8192)),
    )
    one = plan_moves(
        FleetInput(
            EMPTY_A, tuple(vms), targets, passing(vms, ["hostB", "hostC"]), limits=Limits(1, 1)
        )
    )
    single = live_cost(256 * MIB, 0.0, 119 * MIB, LiveModel()).seconds
    assert one.predicted_total_s == pytest.approx(4 * single, rel=1e-6)
    assert single == pytest.approx(256 / 119 + LIVE_OVERHEAD_S, rel=0.05)


def test_a_guest_that_cannot_converge_is_flagged() -> None:
    cost = live_cost(1024 * MIB, 500 * MIB, 119 * MIB, LiveModel(postcopy_allowed=False))
    assert not cost.converges or cost.how == "auto-converge"
    vms = [vm("busy", 1024, dirty_mib=500)]
    plan = plan_moves(
        FleetInput(
            EMPTY_A,
            tuple(vms),
            (TargetHost("hostB", budget("hostB", 8192)),),
            passing(vms, ["hostB"]),
        )
    )
    assert plan.moves[0].predicted_s > 1024 / 119  # post-copy: all of memory, and then some
    assert math.isfinite(plan.predicted_total_s)


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(64, 4096), min_size=0, max_size=12),
    capacities=st.lists(st.integers(512, 8192), min_size=1, max_size=4),
)
def test_property_no_host_is_ever_overfilled_and_every_vm_is_placed_or_explained(
    sizes: list[int], capacities: list[int]
) -> None:
    vms = [vm(f"v{i}", size) for i, size in enumerate(sizes)]
    names = [f"h{i}" for i in range(len(capacities))]
    targets = tuple(TargetHost(n, budget(n, c)) for n, c in zip(names, capacities, strict=True))
    plan = plan_moves(FleetInput(EMPTY_A, tuple(vms), targets, passing(vms, names)))
    assert {m.vm for m in plan.moves} | {u.vm for u in plan.unplaced} == {v.name for v in vms}
    for target in targets:
        assert target.budget is not None
        taken = sum(m.need_bytes for m in plan.moves if m.destination == target.name)
        assert taken <= target.budget.free_bytes


E1_SIZES = [(512, 50), (512, 0), (384, 20), (384, 0), (256, 10), (256, 0)]


def e1_input(**fields: Any) -> FleetInput:
    """E1 as the planner sees it: six guests of hostA onto hostB and hostC."""
    vms = [vm(f"g{i}", memory, dirty) for i, (memory, dirty) in enumerate(E1_SIZES)]
    targets = (
        TargetHost("hostB", budget("hostB", 2048)),
        TargetHost("hostC", budget("hostC", 3072)),
    )
    return FleetInput(EMPTY_A, tuple(vms), targets, passing(vms, ["hostB", "hostC"]), **fields)


def test_on_a_link_one_stream_fills_one_move_sends_while_the_next_one_sets_up() -> None:
    plan = plan_moves(e1_input())
    moves = sorted(plan.moves, key=lambda m: m.predicted_start_s)
    assert plan.link is not None and plan.link.sending_at_once == 1
    sending = [
        (m.predicted_start_s + m.setup_s, m.predicted_start_s + m.setup_s + m.link_s) for m in moves
    ]
    for (_start, end), (next_start, _end) in itertools.pairwise(sending):
        # the next one's first byte comes as the last one's last byte goes: no idle link...
        assert next_start == pytest.approx(end, abs=0.15)
    for before, after in itertools.pairwise(moves):
        # ...because its set-up ran while the one before it was still sending
        assert after.predicted_start_s < before.predicted_start_s + before.setup_s + before.link_s
    # the link's share of the total: one set-up, every transfer, one finish
    transfers = sum(m.link_s for m in moves)
    assert plan.predicted_total_s == pytest.approx(
        moves[0].setup_s + transfers + LIVE_FINISH_S, abs=0.5
    )
    one_by_one = plan_moves(e1_input(limits=Limits(1, 1)))
    assert plan.predicted_total_s < one_by_one.predicted_total_s - 4 * SETUP_S
    # the longest transfer (the busiest large guest) goes first
    assert moves[0].vm == "g0"


def test_the_plan_says_why_it_neither_uses_multifd_nor_compresses() -> None:
    link = plan_moves(e1_input()).to_dict()["link"]
    assert "one stream carries the link's measured rate" in link["multifd"]
    assert "QEMU 10.0 removed the 'compress' capability" in link["compression"]
    assert "set-up" in link["overlap"]


def test_multifd_is_planned_where_one_stream_carries_less_than_the_link() -> None:
    # a 10 Gbit/s link on which one stream carries 300 MiB/s: four connections fill it
    plan = plan_moves(
        e1_input(bandwidth_bps=1190 * MIB, stream_bps=300 * MIB, stream_source="earlier moves")
    )
    assert all(m.parallel == 4 for m in plan.moves)
    assert all("multifd: 4 connections" in m.reason for m in plan.moves)
    assert plan.link is not None and "used by 6 move(s)" in plan.link.multifd
    without = plan_moves(e1_input(bandwidth_bps=300 * MIB))
    assert plan.predicted_total_s < without.predicted_total_s


def test_streams_that_fill_a_third_of_the_link_send_three_at_once() -> None:
    # one stream carries a third of the link: three send at once, within the limits
    inp = e1_input(bandwidth_bps=360 * MIB, stream_bps=120 * MIB)
    assert sending_at_once(inp) == 3
    with_four = replace(inp, limits=Limits(4, 4))
    assert sending_at_once(with_four) == 3
    assert sending_at_once(replace(inp, limits=Limits(2, 2))) == 2


def test_a_busy_guest_that_needs_the_whole_link_runs_alone() -> None:
    # 50 MiB/s of dirtying converges at 119 MiB/s, but at half of it only through post-copy,
    # which stalls the guest on every page it lacks: where the link carries two streams
    # (one stream: 60 MiB/s), it gets multifd and moves with the link to itself
    vms = [vm("busy", 512, dirty_mib=50), vm("quiet1", 256), vm("quiet2", 256)]
    targets = (
        TargetHost("hostB", budget("hostB", 8192)),
        TargetHost("hostC", budget("hostC", 8192)),
    )
    inp = FleetInput(
        EMPTY_A, tuple(vms), targets, passing(vms, ["hostB", "hostC"]), stream_bps=60 * MIB
    )
    moves = {m.vm: m for m in plan_moves(inp).moves}
    busy = moves["busy"]
    assert busy.solo and "runs alone on hostA's link" in busy.reason
    assert busy.parallel == 2
    for other in (moves["quiet1"], moves["quiet2"]):
        sends_from = other.predicted_start_s + other.setup_s
        sends_until = sends_from + other.link_s
        busy_from = busy.predicted_start_s + busy.setup_s
        assert sends_until <= busy_from + 0.1 or sends_from >= busy_from + busy.link_s - 0.1


def test_link_ready_counts_only_what_still_sends_when_the_candidate_would() -> None:
    link = 100.0
    candidate = LinkClaim("hostA", "hostC", 100.0, 0.0)
    ends_soon = LinkClaim("hostA", "hostB", 100.0, busy_for_s=1.5)
    ends_late = LinkClaim("hostA", "hostB", 100.0, busy_for_s=5.0)
    elsewhere = LinkClaim("hostD", "hostE", 100.0, busy_for_s=50.0)
    assert link_ready(candidate, [ends_soon, elsewhere], 2.0, link)
    assert not link_ready(candidate, [ends_late], 2.0, link)
    half = LinkClaim("hostA", "hostC", 50.0, 0.0)
    assert link_ready(half, [replace(ends_late, stream_bps=50.0)], 2.0, link)
    assert not link_ready(half, [replace(ends_late, stream_bps=50.0, solo=True)], 2.0, link)
    assert not link_ready(
        replace(half, solo=True), [replace(ends_late, stream_bps=50.0)], 2.0, link
    )
