"""The E1/E2 benchmark's own arithmetic (bench/fleet.py): the scenarios fit the capacities
they declare, and the phases read from an evacuation's events add up. No lab, no timing."""

from __future__ import annotations

from typing import Any

from bench.fleet import E1, E2, MIB, StageClock, phases

from vmigrate.capacity import DEFAULT_RESERVE_BYTES, HostBudget, memory_need_bytes
from vmigrate.fleet.plan import (
    EVACUATE,
    FleetInput,
    Limits,
    PairVerdict,
    Purpose,
    TargetHost,
    VmLoad,
    plan_moves,
)


def _need_by_host(scenario: Any) -> dict[str, int]:
    held: dict[str, int] = {}
    for guest, host in zip(scenario.guests, scenario.spread, strict=True):
        held[host] = held.get(host, 0) + memory_need_bytes(guest.memory_mib * MIB)
    return held


def test_the_hand_spread_overfills_no_target() -> None:
    for scenario in (E1, E2):
        for host, need in _need_by_host(scenario).items():
            assert host in scenario.targets
            assert need <= scenario.capacity(host) * MIB, (scenario.name, host, need)
    # E2's even leaves each target the reserve vmigrate keeps (E1's fills hostB to 1920/2048)
    for host, need in _need_by_host(E2).items():
        assert need <= E2.capacity(host) * MIB - DEFAULT_RESERVE_BYTES, (host, need)


def test_e2_needs_more_than_the_lab_declares_and_the_planner_places_every_guest() -> None:
    lab = sum(E1.capacity(h) for h in ("hostB", "hostC")) + 2048  # hostD as the lab declares
    need = sum(memory_need_bytes(g.memory_mib * MIB) for g in E2.guests)
    assert need > lab * MIB  # why E2 declares capacities of its own
    assert sum(1 for g in E2.guests if g.dirty_mib == 50) == 2
    assert {g.memory_mib for g in E2.guests} <= set(range(512, 2049))
    vms = tuple(
        VmLoad(f"vm{i}", "hostA", "running", True, g.memory_mib * MIB, 1, g.dirty_mib * MIB)
        for i, g in enumerate(E2.guests)
    )
    targets = tuple(
        TargetHost(
            h,
            HostBudget(
                h,
                24 * 1024 * MIB,
                E2.capacity(h) * MIB,
                DEFAULT_RESERVE_BYTES,
                0,
                20 * 1024 * MIB,
                4,
                0,
                2,
            ),
        )
        for h in E2.targets
    )
    plan = plan_moves(
        FleetInput(
            Purpose(EVACUATE, "hostA", ("hostA",), E2.targets),
            vms,
            targets,
            tuple(PairVerdict(v.name, t.name, ()) for v in vms for t in targets),
            limits=Limits(3, 3),
            bandwidth_bps=119 * MIB,
        )
    )
    assert not plan.unplaced and len(plan.moves) == len(E2.guests)


def test_phases_split_the_moves_into_set_up_sending_and_idle_link() -> None:
    def sending(vm: str) -> dict[str, Any]:
        return {"event": "move-progress", "vm": vm, "phase": "precopy"}

    lines = [
        (2.0, {"event": "plan"}),
        (2.5, {"event": "move-start", "vm": "a"}),
        (4.5, sending("a")),
        (8.0, {"event": "move-start", "vm": "b"}),
        (9.0, sending("b")),
        (10.5, sending("a")),
        (10.7, {"event": "move-end", "vm": "a"}),
        (15.0, sending("b")),
        (15.2, {"event": "move-end", "vm": "b"}),
    ]
    found = phases(lines, 16.0)
    assert found["gather_and_plan_s"] == 2.0
    assert found["plan_to_first_move_s"] == 0.5
    assert found["first_setup_s"] == 2.0
    assert found["moves_span_s"] == 12.7  # 2.5 .. 15.2
    assert found["link_sending_s"] == 10.5  # 4.5 .. 15.0, the two moves overlapping
    assert found["link_idle_s"] == 2.2
    assert sorted(found["setup_s"]) == [1.0, 2.0]
    assert found["after_last_move_s"] == 0.8


class _Module:
    @staticmethod
    def step(x: int) -> int:
        return x + 1


def test_stage_clock_times_calls_and_puts_the_originals_back() -> None:
    original = _Module.step
    clock = StageClock()
    clock.wrap(_Module, "step", "step")
    clock.wrap(_Module, "gone_in_a_refactor", "never")
    assert _Module.step(1) == 2 and _Module.step(2) == 3
    clock.restore()
    assert _Module.step is original
    summary = clock.summary()
    assert set(summary) == {"step"} and summary["step"]["calls"] == 2
