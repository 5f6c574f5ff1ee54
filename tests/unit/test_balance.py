"""The balance planner over samples shaped like the 3-host lab (hostA 4096 MiB, hostB 2048 MiB,
hostC 3072 MiB, 4 declared vCPUs each, 512 MiB reserve), and its properties (hypothesis)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmigrate.capacity import MIB, HostBudget, memory_need_bytes
from vmigrate.errors import UsageError
from vmigrate.fleet.balance import (
    DEFAULT_MAX_MOVES,
    BalanceInput,
    BalancePlan,
    HostSample,
    VmSample,
    as_planned_moves,
    cost_factor,
    host_shares,
    imbalance,
    plan_balance,
    target_hosts,
    vm_loads,
)
from vmigrate.fleet.plan import Ledger, Limits, PairVerdict, refusal
from vmigrate.fleet.predict import LiveModel, live_cost

GIB = 1024 * MIB
LAB = {"hostA": 4096, "hostB": 2048, "hostC": 3072}


def guest(
    name: str,
    cpu: float = 0.05,
    dirty_mib: float | None = 0.5,
    memory_mib: int = 512,
    host: str = "hostA",
    state: str = "running",
) -> VmSample:
    dirty = None if dirty_mib is None else dirty_mib * MIB
    return VmSample(name, host, 1, cpu, memory_mib * MIB, dirty, True, state)


def budget(
    name: str, capacity_mib: int, vms: list[VmSample], vcpus: int | None = 4, cpus: int = 8
) -> HostBudget:
    mine = [v for v in vms if v.host == name and v.holds]
    placed = sum(memory_need_bytes(v.memory_bytes) for v in mine)
    return HostBudget(
        host=name,
        reported_bytes=24 * GIB,
        declared_bytes=capacity_mib * MIB,
        reserve_bytes=512 * MIB,
        placed_bytes=placed,
        available_now_bytes=20 * GIB - placed,
        vcpus_declared=vcpus,
        vcpus_placed=sum(v.vcpus for v in mine),
        cpus=cpus,
    )


def passing(vms: list[VmSample], hosts: list[str]) -> tuple[PairVerdict, ...]:
    return tuple(PairVerdict(v.name, h, ()) for v in vms for h in hosts)


def lab(
    vms: list[VmSample],
    maintenance: frozenset[str] = frozenset(),
    capacities: dict[str, int] | None = None,
    verdicts: tuple[PairVerdict, ...] | None = None,
    **settings_: Any,
) -> BalanceInput:
    capacities = capacities or LAB
    hosts = tuple(
        HostSample(n, budget(n, c, vms), maintenance=n in maintenance)
        for n, c in capacities.items()
    )
    if verdicts is None:
        verdicts = passing(vms, list(capacities))
    return BalanceInput(hosts, tuple(vms), verdicts, **settings_)


def four_guests() -> list[VmSample]:
    return [
        guest("busy1", cpu=0.9, dirty_mib=40),
        guest("busy2", cpu=0.9, dirty_mib=40),
        guest("idle1"),
        guest("idle2"),
    ]


def applied(inp: BalanceInput, plan: BalancePlan) -> BalanceInput:
    """The state the plan's moves lead to, as a fresh sample would see it, moved VMs cooled."""
    where = {m.vm: (m.source, m.destination) for m in plan.moves}
    budgets = {h.name: h.budget for h in inp.hosts}
    vms = []
    for vm in inp.vms:
        if vm.name in where and where[vm.name][0] == vm.host:
            src, dst = where[vm.name]
            need = memory_need_bytes(vm.memory_bytes)
            for host, sign in ((src, -1), (dst, 1)):
                b = budgets[host]
                assert b is not None
                budgets[host] = replace(
                    b,
                    placed_bytes=b.placed_bytes + sign * need,
                    available_now_bytes=b.available_now_bytes - sign * need,
                    vcpus_placed=b.vcpus_placed + sign * vm.vcpus,
                )
            vm = replace(vm, host=dst)
        vms.append(vm)
    hosts = tuple(replace(h, budget=budgets[h.name]) for h in inp.hosts)
    return replace(inp, hosts=hosts, vms=tuple(vms), cooled=inp.cooled | set(where))


# -- the lab's shapes -----------------------------------------------------------------------


def test_four_guests_on_hostA_spread_out_from_hostA() -> None:
    inp = lab(four_guests())
    plan = plan_balance(inp)
    assert plan.imbalance_before == pytest.approx(math.sqrt(2))  # all load on one of three
    assert plan.moves
    assert plan.imbalance_after < plan.imbalance_before
    assert {m.source for m in plan.moves} == {"hostA"}
    assert len(plan.moves) <= DEFAULT_MAX_MOVES
    # the busy guests carry the CPU: they buy the balance
    assert {m.vm for m in plan.moves} >= {"busy1", "busy2"}
    first = plan.moves[0]
    assert first.reason.startswith("hostA load 0.67 -> ")
    assert first.converges and first.predicted_s > 0 and first.predicted_bytes >= 512 * MIB
    loads = [h.load for h in plan.hosts_after]
    assert max(loads) - min(loads) < 0.67
    assert [h.name for h in plan.hosts_before] == ["hostA", "hostB", "hostC"]
    assert plan.hosts_before[0].cpu_share == pytest.approx((0.9 * 2 + 0.05 * 2) / 4)
    assert plan.hosts_before[0].memory_share == pytest.approx(4 * 768 / 3584)


def test_between_an_idle_and_a_busy_guest_buying_the_same_gain_the_idle_one_goes() -> None:
    # same CPU and memory, only the dirty rate differs: the same gain, not the same cost
    vms = [
        guest("anchor", cpu=1.5, memory_mib=1024),
        guest("busy", cpu=0.5, dirty_mib=60),
        guest("idle", cpu=0.5, dirty_mib=0),
    ]
    idle_first = plan_balance(lab(vms, max_moves=1, cooled=frozenset({"anchor"})))
    busy_only = plan_balance(lab(vms, max_moves=1, cooled=frozenset({"anchor", "idle"})))
    assert [m.vm for m in idle_first.moves] == ["idle"]
    assert [m.vm for m in busy_only.moves] == ["busy"]
    idle, busy = idle_first.moves[0], busy_only.moves[0]
    assert idle.destination == busy.destination
    assert idle.gain == pytest.approx(busy.gain)
    assert idle.predicted_s < busy.predicted_s
    assert idle.score > busy.score


def test_the_cost_factor_weighs_time_pause_and_post_copy() -> None:
    idle = live_cost(512 * MIB, 0.0, 119 * MIB, LiveModel())
    busy = live_cost(1024 * MIB, 200 * MIB, 119 * MIB, LiveModel())
    assert busy.how == "postcopy"
    assert 1 < cost_factor(idle) < 1.5
    assert cost_factor(busy) > 2 * (1 + busy.seconds / 30)


def test_a_host_in_maintenance_or_not_answering_is_never_a_target() -> None:
    vms = four_guests()
    base = lab(vms, maintenance=frozenset({"hostC"}))
    hosts = (*base.hosts, HostSample("hostD", None, reachable=False, problem="connection refused"))
    inp = replace(base, hosts=hosts, verdicts=passing(vms, ["hostA", "hostB", "hostC", "hostD"]))
    plan = plan_balance(inp)
    assert plan.moves
    assert {m.destination for m in plan.moves} == {"hostB"}
    assert [h.name for h in plan.hosts_before] == ["hostA", "hostB"]
    reasons = {s.name: s.reason for s in plan.skipped if s.kind == "host"}
    assert reasons["hostC"].startswith("in maintenance")
    assert "connection refused" in reasons["hostD"]


def test_a_cooled_vm_is_never_moved() -> None:
    plan = plan_balance(lab(four_guests(), cooled=frozenset({"busy1", "busy2"})))
    assert plan.moves
    assert not {m.vm for m in plan.moves} & {"busy1", "busy2"}
    cooled = {s.name for s in plan.skipped if "cool-down" in s.reason}
    assert cooled == {"busy1", "busy2"}


def test_a_balanced_cluster_proposes_nothing() -> None:
    # loads proportional to each host's size
    vms = [
        guest("a1", cpu=0.5, host="hostA"),
        guest("a2", cpu=0.5, host="hostA"),
        guest("b1", cpu=0.5, host="hostB"),
        guest("c1", cpu=0.5, host="hostC"),
        guest("c2", cpu=0.2, memory_mib=256, host="hostC"),
    ]
    plan = plan_balance(lab(vms))
    assert plan.imbalance_before <= 0.1
    assert plan.moves == ()
    assert plan.reason.startswith("balanced: ")
    assert plan.imbalance_after == plan.imbalance_before


def test_replanning_the_state_a_plan_leads_to_proposes_nothing() -> None:
    inp = lab(four_guests(), max_moves=10)
    plan = plan_balance(inp)
    assert plan.moves
    after = applied(inp, plan)
    again = plan_balance(after)
    assert again.moves == ()
    assert again.imbalance_before == pytest.approx(plan.imbalance_after, abs=1e-12)
    # not only because the moved VMs cool down: nothing else is worth it either
    assert plan_balance(replace(after, cooled=frozenset())).moves == ()


def test_a_failed_check_or_a_pair_never_checked_keeps_a_vm_off_a_host() -> None:
    vms = four_guests()
    verdicts = tuple(
        PairVerdict(v.name, h, ("cpu: hostB lacks avx512",) if h == "hostB" else ())
        for v in vms
        for h in ("hostA", "hostB")  # hostC: never checked
    )
    plan = plan_balance(lab(vms, verdicts=verdicts))
    assert plan.moves == ()
    assert "no move lowers it" in plan.reason


def test_no_host_takes_more_than_its_free_memory() -> None:
    # both busy guests would go to hostB, large and empty, but its kernel can give one
    # 768 MiB need only: the second stays
    inp = lab(four_guests(), capacities={"hostA": 4096, "hostB": 8192}, max_moves=10)
    assert [m.destination for m in plan_balance(inp).moves] == ["hostB", "hostB"]
    b = inp.hosts[1].budget
    assert b is not None
    tight = replace(inp.hosts[1], budget=replace(b, available_now_bytes=(512 + 900) * MIB))
    plan = plan_balance(replace(inp, hosts=(inp.hosts[0], tight)))
    assert [(m.vm, m.destination) for m in plan.moves] == [("busy1", "hostB")]


def test_a_move_must_buy_min_gain_of_the_imbalance() -> None:
    # the first move lowers 1.41 to 0.72: 49 %
    assert plan_balance(lab(four_guests(), min_gain=0.45)).moves
    refused = plan_balance(lab(four_guests(), min_gain=0.5))
    assert refused.moves == ()
    assert refused.reason.endswith("no move lowers it by 50% or more")


def test_a_shut_off_guest_neither_counts_nor_moves() -> None:
    vms = [*four_guests(), guest("off", cpu=0.0, memory_mib=2048, state="shut off")]
    plan = plan_balance(lab(vms))
    assert "off" not in {m.vm for m in plan.moves}
    assert any(s.name == "off" and "shut off" in s.reason for s in plan.skipped)
    assert host_shares(lab(vms)) == host_shares(lab(four_guests()))


def test_a_move_predicted_not_to_converge_is_never_proposed() -> None:
    # a slow link, no post-copy: the busy guest would be aborted
    vms = [guest("busy", cpu=0.9, dirty_mib=1000), guest("idle", cpu=0.9, dirty_mib=0)]
    model = LiveModel(postcopy_allowed=False)
    plan = plan_balance(lab(vms, bandwidth_bps=5 * MIB, live_model=model))
    assert [m.vm for m in plan.moves] == ["idle"]
    assert any(s.name == "busy" and "NOT to converge" in s.reason for s in plan.skipped)


def test_the_metric() -> None:
    assert imbalance([]) == 0 and imbalance([0.5]) == 0 and imbalance([0.0, 0.0]) == 0
    assert imbalance([0.3, 0.3, 0.3]) == 0
    assert imbalance([1.0, 0.0, 0.0]) == pytest.approx(math.sqrt(2))
    assert imbalance([0.2, 0.4]) == pytest.approx(imbalance([0.4, 0.8]))  # scale-free


def test_one_host_is_balanced() -> None:
    plan = plan_balance(lab(four_guests(), capacities={"hostA": 4096}))
    assert plan.moves == () and plan.imbalance_before == 0
    assert "1 host(s)" in plan.reason


@pytest.mark.parametrize(
    ("setting", "value", "words"),
    [
        ("threshold", 0.0, "threshold 0.0 is out of range"),
        ("threshold", -0.1, "threshold -0.1 is out of range"),
        ("threshold", 10.5, "threshold 10.5 is out of range"),
        ("threshold", math.nan, "threshold nan is out of range"),
        ("max_moves", 0, "max moves 0"),
        ("min_gain", -0.1, "minimum gain -0.1 is out of range"),
        ("min_gain", 1.0, "minimum gain 1.0 is out of range"),
        ("bandwidth_bps", 0.0, "bandwidth 0.0"),
    ],
)
def test_settings_out_of_range_are_refused(setting: str, value: float, words: str) -> None:
    given_: dict[str, Any] = {setting: value}
    with pytest.raises(UsageError, match=words) as caught:
        lab(four_guests(), **given_)
    assert caught.value.fix


def test_the_edges_of_the_settings_are_accepted() -> None:
    assert lab(four_guests(), threshold=10.0, min_gain=0.0, max_moves=1).threshold == 10.0


def test_inconsistent_samples_are_refused() -> None:
    vms = four_guests()
    inp = lab(vms)
    with pytest.raises(ValueError, match="listed twice"):
        replace(inp, hosts=(*inp.hosts, inp.hosts[0]))
    with pytest.raises(ValueError, match="not among the hosts"):
        replace(inp, vms=(*inp.vms, guest("lost", host="hostZ")))
    with pytest.raises(ValueError, match="runs on both hostA and hostB"):
        replace(inp, vms=(*inp.vms, guest("busy1", host="hostB")))
    with pytest.raises(ValueError, match="answers but has no budget"):
        replace(inp, hosts=(*inp.hosts, HostSample("hostD", None)))
    with pytest.raises(ValueError, match="cpu_cores must be >= 0"):
        guest("x", cpu=-0.1)
    small = HostSample("hostD", budget("hostD", 512, []))  # all of it is the reserve
    with pytest.raises(UsageError, match="nothing for VMs"):
        replace(inp, hosts=(*inp.hosts, small))


def test_the_plan_as_json() -> None:
    plan = plan_balance(lab(four_guests()))
    data = plan.to_dict()
    assert {"imbalance_before", "imbalance_after", "moves", "hosts_before", "hosts_after"} <= set(
        data
    )
    assert set(data["moves"][0]) >= {"vm", "source", "destination", "gain", "score", "reason"}
    assert set(data["hosts_before"][0]) == {"name", "load", "cpu_share", "memory_share"}
    json.dumps(data)


def test_the_plan_in_the_evacuations_types() -> None:
    inp = lab(four_guests())
    plan = plan_balance(inp)
    moves = as_planned_moves(plan, inp)
    assert [(m.vm, m.source, m.destination) for m in moves] == [
        (m.vm, m.source, m.destination) for m in plan.moves
    ]
    first = moves[0]
    assert first.mode == "live" and not first.copy_storage and first.alternatives == ()
    assert first.need_bytes == 768 * MIB and first.vcpus == 1
    assert first.predicted_s == plan.moves[0].predicted_s and first.predicted_start_s == 0
    serial = as_planned_moves(plan, inp, Limits(max_parallel=1, max_per_host=1))
    assert serial[1].predicted_start_s == pytest.approx(serial[0].predicted_s, abs=0.1)
    loads = vm_loads(inp, plan)
    assert {v.name for v in loads} == {m.vm for m in plan.moves}
    assert all(v.host == "hostA" and v.running for v in loads)
    assert len(vm_loads(inp)) == 4
    assert [t.name for t in target_hosts(inp)] == ["hostA", "hostB", "hostC"]


# -- properties -----------------------------------------------------------------------------

STATES = ["running", "running", "running", "paused", "shut off"]


@st.composite
def inputs(draw: st.DrawFn) -> BalanceInput:
    """Up to 5 hosts of a few sizes (so that some are alike), up to 12 VMs, half of them on
    h0, some pairs unchecked or failing their checks, some VMs in cool-down."""
    count = draw(st.integers(1, 5))
    names = [f"h{i}" for i in range(count)]
    vms = [
        VmSample(
            f"v{i}",
            names[draw(st.integers(0, count - 1)) if draw(st.booleans()) else 0],
            draw(st.integers(1, 4)),
            draw(st.floats(0, 4)),
            draw(st.integers(128, 1024)) * MIB,
            draw(st.one_of(st.none(), st.floats(0, 200).map(lambda mib: mib * MIB))),
            True,
            draw(st.sampled_from(STATES)),
        )
        for i in range(draw(st.integers(0, 12)))
    ]
    hosts = []
    for name in names:
        reachable = draw(st.integers(0, 9)) > 0
        host_budget = budget(
            name,
            draw(st.sampled_from([2048, 4096, 8192])),
            vms,
            vcpus=draw(st.sampled_from([None, 2, 4, 8])),
            cpus=draw(st.sampled_from([4, 8])),
        )
        hosts.append(
            HostSample(
                name,
                host_budget if reachable else None,
                maintenance=draw(st.integers(0, 7)) == 0,
                reachable=reachable,
            )
        )
    verdicts = tuple(
        PairVerdict(v.name, h, ("cpu: no",) if pick == 1 else ())
        for v in vms
        for h in names
        if (pick := draw(st.integers(0, 9))) != 0
    )
    cooled = frozenset(v.name for v in vms if draw(st.integers(0, 5)) == 0)
    return BalanceInput(
        tuple(hosts),
        tuple(vms),
        verdicts,
        threshold=draw(st.sampled_from([0.02, 0.1, 0.3])),
        min_gain=draw(st.sampled_from([0.0, 0.05, 0.1, 0.5])),
        max_moves=draw(st.integers(1, 4)),
        cooled=cooled,
    )


@settings(max_examples=300, deadline=None)
@given(inp=inputs())
def test_property_a_plan_never_increases_the_imbalance(inp: BalanceInput) -> None:
    plan = plan_balance(inp)
    assert plan.imbalance_after <= plan.imbalance_before + 1e-12
    assert all(m.gain > 0 for m in plan.moves)
    if plan.moves:
        assert plan.imbalance_before > inp.threshold
    # what the plan predicts is what a fresh sample of the state it leads to measures
    assert plan_balance(applied(inp, plan)).imbalance_before == pytest.approx(
        plan.imbalance_after, abs=1e-9
    )


@settings(max_examples=300, deadline=None)
@given(inp=inputs())
def test_property_no_host_is_overfilled(inp: BalanceInput) -> None:
    plan = plan_balance(inp)
    vcpus = {v.name: v.vcpus for v in inp.vms}
    memory = {v.name: v.memory_bytes for v in inp.vms}
    for host in inp.hosts:
        into = [m for m in plan.moves if m.destination == host.name]
        if not into:
            continue
        assert host.budget is not None
        assert sum(memory_need_bytes(memory[m.vm]) for m in into) <= host.budget.free_bytes
        spare = host.budget.vcpus_free
        assert spare is None or sum(vcpus[m.vm] for m in into) <= spare
        assert all(vcpus[m.vm] <= host.budget.cpus for m in into)


@settings(max_examples=300, deadline=None)
@given(inp=inputs())
def test_property_each_vm_moves_once_at_most_and_only_where_it_may(inp: BalanceInput) -> None:
    plan = plan_balance(inp)
    moved = [m.vm for m in plan.moves]
    assert len(moved) == len(set(moved)) <= inp.max_moves
    assert not set(moved) & inp.cooled
    hosts = {h.name: h for h in inp.hosts}
    passed = {(v.vm, v.destination) for v in inp.verdicts if not v.blockers}
    running = {(v.name, v.host) for v in inp.vms if v.running}
    for move in plan.moves:
        assert hosts[move.destination].active and hosts[move.source].active
        assert move.source != move.destination
        assert (move.vm, move.destination) in passed
        assert (move.vm, move.source) in running


@settings(max_examples=200, deadline=None)
@given(inp=inputs())
def test_property_a_plan_that_reaches_the_threshold_is_stable(inp: BalanceInput) -> None:
    plan = plan_balance(inp)
    if plan.imbalance_after <= inp.threshold:
        assert plan_balance(applied(inp, plan)).moves == ()


def reference_loads(inp: BalanceInput, where: dict[str, str]) -> list[float]:
    """The load of each active host, written out again, for VMs placed per `where`."""
    loads = []
    for host in sorted(inp.hosts, key=lambda h: h.name):
        if not host.active or host.budget is None:
            continue
        b = host.budget
        mine = [v for v in inp.vms if v.holds and where.get(v.name, v.host) == host.name]
        cpus = b.cpus if b.vcpus_declared is None else b.vcpus_declared
        cpu = sum(v.cpu_cores for v in mine) / cpus
        memory = sum(memory_need_bytes(v.memory_bytes) for v in mine) / b.usable_bytes
        loads.append((cpu + memory) / 2)
    return loads


def reference_best(inp: BalanceInput, done: list[tuple[str, str]]) -> float | None:
    """The best score of a next move after `done`, every pair tried (no shortcuts)."""
    where = {v.name: v.host for v in inp.vms if v.holds}
    targets = {t.name: t for t in target_hosts(inp)}
    ledger = Ledger.of(tuple(targets.values()))
    loads = {v.name: v for v in vm_loads(inp)}
    for name, destination in done:
        where[name] = destination
        ledger.take(destination, memory_need_bytes(loads[name].memory_bytes), loads[name].vcpus)
    current = imbalance(reference_loads(inp, where))
    verdicts = {(v.vm, v.destination): v for v in inp.verdicts}
    active = {h.name for h in inp.hosts if h.active}
    best = None
    for vm in inp.vms:
        moved = {name for name, _ in done}
        if vm.name in moved | inp.cooled or not vm.running or vm.host not in active:
            continue
        cost = live_cost(vm.memory_bytes, vm.dirty_rate_bps or 0.0, inp.bandwidth_bps, LiveModel())
        for destination in active - {vm.host}:
            if refusal(loads[vm.name], targets[destination], verdicts, ledger) is not None:
                continue
            gain = current - imbalance(reference_loads(inp, {**where, vm.name: destination}))
            if cost.converges and gain > 1e-9 and gain >= inp.min_gain * current:
                score = gain / cost_factor(cost)
                best = score if best is None else max(best, score)
    return best


@settings(max_examples=200, deadline=None)
@given(inp=inputs())
def test_property_each_move_is_the_best_of_all_pairs(inp: BalanceInput) -> None:
    """The planner's shortcuts (sums of squares, hosts grouped by size) miss no better move."""
    plan = plan_balance(inp)
    done: list[tuple[str, str]] = []
    for move in plan.moves:
        best = reference_best(inp, done)
        assert best is not None and move.score == pytest.approx(best, rel=1e-6, abs=1e-9)
        done.append((move.vm, move.destination))
    if len(plan.moves) < inp.max_moves and plan.imbalance_after > inp.threshold:
        assert reference_best(inp, done) is None
