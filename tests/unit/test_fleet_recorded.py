"""The planner over facts recorded from the real three-host lab (fleet.gather's output:
sizes, QEMU-measured dirty rates, local disks, every check of each VM against each target,
and each target's budget as libvirt reported it)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from vmigrate.capacity import MIB, HostBudget
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

DATA = Path(__file__).parent / "data" / "fleet" / "lab-evacuation.json"


def recorded() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DATA.read_text())
    return data


def evacuation(
    limits: Limits | None = None, capacities: dict[str, int] | None = None
) -> FleetInput:
    raw = recorded()
    vms = tuple(VmLoad(**{**v, "local_disks": tuple(v["local_disks"])}) for v in raw["vms"])
    verdicts = tuple(
        PairVerdict(v["vm"], v["destination"], tuple(v["blockers"]), tuple(v["warnings"]))
        for v in raw["verdicts"]
    )
    targets = []
    for t in raw["targets"]:
        budget = HostBudget(**t["budget"])
        if capacities and t["name"] in capacities:
            budget = replace(budget, declared_bytes=capacities[t["name"]] * MIB)
        targets.append(TargetHost(t["name"], budget, t["maintenance"], t["problem"]))
    return FleetInput(
        Purpose(EVACUATE, "hostA", ("hostA",)),
        vms,
        tuple(targets),
        verdicts,
        limits=limits or Limits(),
        bandwidth_bps=119 * MIB,
    )


def test_every_recorded_vm_finds_a_place_and_the_local_disk_is_copied_along() -> None:
    plan = plan_moves(evacuation())
    assert not plan.unplaced
    assert {m.vm for m in plan.moves} == {"rec-big", "rec-mid", "rec-small", "rec-disk"}
    disk = next(m for m in plan.moves if m.vm == "rec-disk")
    assert disk.mode == "live" and disk.copy_storage
    assert all(not m.copy_storage for m in plan.moves if m.vm != "rec-disk")
    for host in plan.hosts:
        assert 0 <= host.free_after_bytes <= host.free_before_bytes


def test_the_measured_dirty_rate_makes_the_busy_guest_the_slowest_move() -> None:
    plan = plan_moves(evacuation(Limits(1, 1)))
    by_vm = {m.vm: m for m in plan.moves}
    assert by_vm["rec-big"].predicted_s == max(m.predicted_s for m in plan.moves)
    # one at a time, the total is the sum of the moves
    assert plan.predicted_total_s == pytest.approx(sum(m.predicted_s for m in plan.moves), abs=0.3)


def test_smaller_declared_capacities_leave_the_largest_vm_nowhere_with_each_hosts_reason() -> None:
    plan = plan_moves(evacuation(capacities={"hostB": 1024, "hostC": 1280}))
    # usable 512 and 768 MiB: the 512 MiB guest needs 768 MiB and goes first to hostC
    placed = {m.vm: m.destination for m in plan.moves}
    assert placed.get("rec-big") == "hostC"
    unplaced = {u.vm: u.reason for u in plan.unplaced}
    assert "rec-mid" in unplaced  # 640 MiB: hostB has 512 usable, hostC is full
    assert "hostB: needs 640 MiB, 512 MiB free" in unplaced["rec-mid"]
    assert "hostC: needs 640 MiB, 0 MiB free after 1 planned move(s)" in unplaced["rec-mid"]
