"""Which of a host's VMs come back once the roll has upgraded it (pure).

`--return always` (the default) brings back every VM its evacuation moved, as `maintenance
end --return` does: the cluster ends placed as the operator had it (pinned, licensed,
arranged by hand), a roll changes versions, not placement. `--return better` asks the
balance planner (fleet/balance.py) instead: the VMs that left the host are its only
candidates and the host its only target, so a VM comes back only when its return lowers
the cluster's imbalance by the planner's own rules (threshold, minimum gain, cost); the
others stay where they run, each with the reason. A VM never returns to a QEMU older than
the one it runs on (the roll's rule, a blocker of its pair)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from vmigrate.capacity import memory_need_bytes
from vmigrate.fleet.balance import (
    DEFAULT_BANDWIDTH_BPS,
    BalanceInput,
    BalancePlan,
    HostSample,
    VmSample,
    plan_balance,
)
from vmigrate.fleet.plan import PairVerdict
from vmigrate.versions import format_version

RETURN_ALWAYS, RETURN_BETTER = "always", "better"
RETURN_POLICIES = (RETURN_ALWAYS, RETURN_BETTER)
#: The planner's --threshold and --min-gain for a return: balance's own defaults.
RETURN_THRESHOLD = 0.1
RETURN_MIN_GAIN = 0.10
#: Seconds over which each VM's CPU use is measured before a return is planned.
BETTER_WINDOW_S = 5.0


@dataclass(frozen=True)
class ReturnPlan:
    home: str
    plan: BalancePlan  # its moves are the returns
    inp: BalanceInput
    staying: dict[str, str]  # VM -> why it stays where it runs

    @property
    def returning(self) -> tuple[str, ...]:
        return tuple(m.vm for m in self.plan.moves)

    def to_dict(self) -> dict[str, Any]:
        return {
            "home": self.home,
            "returning": list(self.returning),
            "staying": dict(self.staying),
            "balance": self.plan.to_dict(),
        }


def _blockers_home(
    vm: str, where: str, home: str, versions: Mapping[str, int], verdict: PairVerdict | None
) -> tuple[str, ...]:
    found = verdict.blockers if verdict is not None else ()
    here, there = versions.get(where), versions.get(home)
    if here is not None and there is not None and there < here:
        found = (
            *found,
            f"versions.rolling: {home}'s QEMU {format_version(there)} is older than "
            f"{format_version(here)}, where {vm} runs",
        )
    return found


def plan_return(
    hosts: Sequence[HostSample],
    vms: Sequence[VmSample],
    home: str,
    away: Mapping[str, str],
    versions: Mapping[str, int],
    verdicts: Sequence[PairVerdict] | None = None,
    bandwidth_bps: float = DEFAULT_BANDWIDTH_BPS,
) -> ReturnPlan:
    """The returns to `home` that improve the balance. `away`: VM -> the host its
    evacuation sent it to; `vms`: every VM where it runs now; `verdicts`: the checks of
    each away VM against `home` (None: assumed passed, it ran there before: a dry run)."""
    holding = {vm.name: vm.host for vm in vms if vm.holds}
    staying: dict[str, str] = {}
    candidates: dict[str, str] = {}
    for vm, sent_to in sorted(away.items()):
        where = holding.get(vm)
        if where == home:
            continue  # back already (a resumed return)
        if where is None:
            still = next((s for s in vms if s.name == vm), None)
            staying[vm] = (
                f"it is {still.state} on {still.host}: a return moves running VMs live"
                if still is not None
                else f"not found on any host (its evacuation sent it to {sent_to})"
            )
            continue
        candidates[vm] = where
    checked = {v.vm: v for v in verdicts or () if v.destination == home}

    def pair(vm: str, where: str) -> PairVerdict:
        if verdicts is not None and vm not in checked:
            return PairVerdict(vm, home, (f"checks: {vm} was not checked against {home}",))
        verdict = checked.get(vm)
        return PairVerdict(vm, home, _blockers_home(vm, where, home, versions, verdict))

    pairs = tuple(pair(vm, where) for vm, where in candidates.items())
    inp = BalanceInput(
        hosts=tuple(replace(h, maintenance=False) if h.name == home else h for h in hosts),
        vms=tuple(vms),
        verdicts=pairs,
        threshold=RETURN_THRESHOLD,
        min_gain=RETURN_MIN_GAIN,
        max_moves=max(1, len(candidates)),
        cooled=frozenset(vm.name for vm in vms if vm.name not in candidates),
        bandwidth_bps=bandwidth_bps,
    )
    plan = plan_balance(inp)
    returning = {m.vm for m in plan.moves}
    skipped = {s.name: s.reason for s in plan.skipped if s.kind == "vm"}
    blocked = {v.vm: "; ".join(v.blockers) for v in pairs if v.blockers}
    for vm in candidates:
        if vm in returning:
            continue
        staying[vm] = (
            blocked.get(vm)
            or skipped.get(vm)
            or f"its return would not improve the balance enough ({plan.reason})"
        )
    return ReturnPlan(home, plan, inp, staying)


def moved_to(
    hosts: Sequence[HostSample], vms: Sequence[VmSample], where: Mapping[str, str]
) -> tuple[tuple[HostSample, ...], tuple[VmSample, ...]]:
    """The cluster as sampled, with VMs placed at `where` (VM -> host) instead: each host's
    budget counts the memory and vCPUs of the VMs it would hold (a dry run's later steps)."""
    placed = tuple(replace(vm, host=where.get(vm.name, vm.host)) for vm in vms)
    result = []
    for host in hosts:
        if host.budget is None:
            result.append(host)
            continue
        mine = [vm for vm in placed if vm.host == host.name and vm.holds]
        need = sum(memory_need_bytes(vm.memory_bytes) for vm in mine)
        budget = replace(
            host.budget,
            placed_bytes=need,
            vcpus_placed=sum(vm.vcpus for vm in mine),
            available_now_bytes=max(
                0, host.budget.available_now_bytes + host.budget.placed_bytes - need
            ),
        )
        result.append(replace(host, budget=budget))
    return tuple(result), placed
