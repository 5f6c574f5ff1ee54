"""The order of a rolling upgrade over synthetic clusters: oldest QEMU first, no VM ever
left without a host at least as new as its own, and a clear refusal when none exists."""

from __future__ import annotations

import pytest

from vmigrate.errors import UsageError
from vmigrate.fleet.plan import FleetInput
from vmigrate.fleet.rolling_order import (
    NoSafeOrder,
    RollHost,
    RollVm,
    roll_order,
    stranded,
    validate_roll,
)

MIB = 1 << 20
OLD, NEW, NEWER = 7_002_000, 10_000_002, 11_000_000


def host(name: str, qemu: int, free_mib: int, *vm_mib: int) -> RollHost:
    vms = tuple(RollVm(f"{name}-vm{i}", size * MIB) for i, size in enumerate(vm_mib))
    return RollHost(name, qemu, free_mib * MIB, vms)


def test_the_oldest_host_goes_first_then_the_least_loaded() -> None:
    hosts = [
        host("hostA", NEW, 4096, 512, 512),
        host("hostB", NEW, 4096, 256),
        host("hostC", OLD, 4096, 256),
    ]
    order = roll_order(hosts)
    assert order.steps == (("hostC",), ("hostB",), ("hostA",))
    assert "oldest QEMU first" in order.reasons[0]
    assert "7.2.0" in order.reasons[0]


def test_newest_first_would_strand_so_the_order_avoids_it() -> None:
    # hostA is the only new host; its VM fits nowhere else at its version. Oldest first
    # upgrades hostB and hostC before hostA is emptied, so they can take it.
    hosts = [host("hostA", NEW, 1024, 768), host("hostB", OLD, 1024), host("hostC", OLD, 1024)]
    order = roll_order(hosts)
    assert order.hosts[-1] == "hostA"
    newest_first = [hosts[0], hosts[1], hosts[2]]
    why = stranded(newest_first, 1)
    assert why is not None and why.host == "hostA" and why.vm == "hostA-vm0"
    assert "older than 10.0.2" in why.reason


def test_capacity_decides_among_equal_versions() -> None:
    # The preferred order (least loaded first) empties hostB while hostA holds 900 MiB of
    # 1000 free... every order is tried and the one that fits is taken.
    hosts = [
        host("hostA", NEW, 100, 300),
        host("hostB", NEW, 200, 100),
        host("hostC", NEW, 250, 350),
    ]
    with pytest.raises(NoSafeOrder) as refused:
        roll_order(hosts)
    assert "fits on no host" in refused.value.message
    assert refused.value.fix

    roomy = [host("hostA", NEW, 400, 300), host("hostB", NEW, 50, 100), host("hostC", NEW, 350)]
    order = roll_order(roomy)
    assert stranded([next(h for h in roomy if h.name == n) for n in order.hosts], 1) is None


def test_hosts_at_once_groups_steps_and_keeps_their_vms_apart() -> None:
    hosts = [host(f"h{i}", OLD if i < 2 else NEW, 2048, 256) for i in range(4)]
    order = roll_order(hosts, hosts_at_once=2)
    assert order.steps == (("h0", "h1"), ("h2", "h3"))
    # Two hosts at once with room for one host's VMs only: refused, not stranded.
    tight = [host(f"h{i}", NEW, 300, 256) for i in range(3)]
    with pytest.raises(NoSafeOrder):
        roll_order(tight, hosts_at_once=2)
    assert roll_order(tight, hosts_at_once=1).hosts == ("h0", "h1", "h2")


def test_a_vm_on_an_old_host_may_go_anywhere_but_never_to_an_older_one() -> None:
    hosts = [host("a", 6_000_000, 0), host("b", OLD, 4096, 512), host("c", NEW, 4096)]
    order = roll_order(hosts)
    assert order.hosts == ("a", "b", "c")
    why = stranded([hosts[1], hosts[0], hosts[2]], 1)
    assert why is None  # b's VM goes to c (newer), never to a (older)


@pytest.mark.parametrize(
    ("count", "at_once", "words"),
    [
        (1, 1, "at least two"),
        (3, 3, "no host would be left"),
        (3, 4, "no host would be left"),
        (3, 0, "at least one host per step"),
    ],
)
def test_bad_rolls_are_refused(count: int, at_once: int, words: str) -> None:
    with pytest.raises(UsageError) as refused:
        validate_roll(count, at_once, "lab")
    assert words in refused.value.message
    assert refused.value.fix


def test_the_planner_never_sends_a_vm_to_an_older_qemu_in_a_roll() -> None:
    from vmigrate.capacity import HostBudget
    from vmigrate.fleet.plan import (
        EVACUATE,
        FleetInput,
        PairVerdict,
        Purpose,
        TargetHost,
        VmLoad,
        never_to_older_qemu,
        plan_moves,
    )

    def budget(name: str, placed_mib: int) -> HostBudget:
        return HostBudget(
            name, 24 << 30, 4096 * MIB, 512 * MIB, placed_mib * MIB, 20 << 30, None, 0, 2
        )

    vms = (VmLoad("web", "hostA", "running", True, 512 * MIB, 1, 0.0),)
    inp = FleetInput(
        Purpose(EVACUATE, "hostA", ("hostA",), ("hostB", "hostC")),
        vms,
        (TargetHost("hostB", budget("hostB", 1024)), TargetHost("hostC", budget("hostC", 0))),
        (PairVerdict("web", "hostB", ()), PairVerdict("web", "hostC", ())),
    )
    # hostC wins on free memory alone; older, it takes nothing.
    assert [m.destination for m in plan_moves(inp).moves] == ["hostC"]
    versions = {"hostA": NEW, "hostB": NEWER, "hostC": OLD}
    plan = plan_moves(never_to_older_qemu(inp, versions))
    assert [(m.vm, m.destination) for m in plan.moves] == [("web", "hostB")]
    # With hostB gone too, the VM has nowhere to go, and the reason names the versions.
    only_old = never_to_older_qemu(replace_targets(inp, "hostC"), versions)
    plan = plan_moves(only_old)
    assert not plan.moves
    assert "hostC's QEMU 7.2.0 is older than 10.0.2" in plan.unplaced[0].reason
    # The same version is no obstacle.
    same = plan_moves(never_to_older_qemu(inp, {"hostA": NEW, "hostB": NEW, "hostC": NEW}))
    assert len(same.moves) == 1


def replace_targets(inp: FleetInput, *names: str) -> FleetInput:
    from dataclasses import replace

    return replace(inp, targets=tuple(t for t in inp.targets if t.name in names))


def test_each_group_of_hosts_is_emptied_first_then_each_host_checked_and_refilled() -> None:
    from vmigrate.fleet.rolling import steps_of
    from vmigrate.fleet.rolling_order import RollOrder

    steps = steps_of(RollOrder((("a", "b"), ("c",)), ()))
    assert [s.name for s in steps] == [
        "evacuate a", "evacuate b",
        "command a", "health a", "return a",
        "command b", "health b", "return b",
        "evacuate c", "command c", "health c", "return c",
    ]  # fmt: skip
    assert [s.seq for s in steps] == list(range(12))
