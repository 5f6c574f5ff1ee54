"""What a rolling upgrade asks for, and what it plans: each host's evacuation planned as
`evacuate` plans it, with the roll's rule that no VM goes to an older QEMU, and the whole
roll predicted step by step from the fleet's model (fleet/predict.py through the planner)
plus stated estimates for what the model cannot know (the command, the health check)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vmigrate.fleet.balance import DEFAULT_BANDWIDTH_BPS, HostSample, VmSample, as_planned_moves
from vmigrate.fleet.evacuate import EvacuateRequest, prepare
from vmigrate.fleet.gather import close_sessions
from vmigrate.fleet.plan import (
    FleetInput,
    FleetPlan,
    Limits,
    PairVerdict,
    VmLoad,
    never_to_older_qemu,
    plan_moves,
)
from vmigrate.fleet.rebalance import BalanceRequest, sample_cluster
from vmigrate.fleet.rolling_order import RollOrder
from vmigrate.fleet.rolling_report import COMMAND_STEP, EVACUATE_STEP, HEALTH_STEP, RETURN_STEP
from vmigrate.fleet.rolling_return import (
    BETTER_WINDOW_S,
    RETURN_ALWAYS,
    RETURN_BETTER,
    moved_to,
    plan_return,
)
from vmigrate.hosts import HostRef, resolve_cluster
from vmigrate.store import JobStore, StoreLocation, store_location

#: Defaults of what the roll cannot predict from the fleet's model (stated in the dry run).
COMMAND_ESTIMATE_S = 60.0
HEALTH_ESTIMATE_S = 10.0
#: Gathering facts, checks and dirty rates before an evacuation's or a return's moves.
GATHER_ESTIMATE_S = 5.0


@dataclass(frozen=True)
class RollingRequest:
    cluster: str
    run: str  # the command, `{host}` in its arguments
    hosts_at_once: int = 1
    dry_run: bool = False
    command_timeout_s: float = 1800.0
    wait_s: float = 600.0  # for the host to answer again after the command
    test_domain: Path | None = None
    command_estimate_s: float = COMMAND_ESTIMATE_S
    health_estimate_s: float = HEALTH_ESTIMATE_S
    max_parallel: int = Limits().max_parallel
    max_per_host: int = Limits().max_per_host
    bandwidth_mib: float | None = None
    hosts_file: Path | None = None
    store_path: StoreLocation | None = None
    return_policy: str = RETURN_ALWAYS  # rolling_return.py: always | better

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RollingRequest:
        paths = {
            k: Path(values[k]) if values.get(k) else None for k in ("hosts_file", "test_domain")
        }
        return cls(**{**values, **paths, "store_path": store_location(values.get("store_path"))})


def evacuate_request(request: RollingRequest, host: str) -> EvacuateRequest:
    return EvacuateRequest(
        host=host,
        cluster=request.cluster,
        max_parallel=request.max_parallel,
        max_per_host=request.max_per_host,
        bandwidth_mib=request.bandwidth_mib,
        hosts_file=request.hosts_file,
        store_path=request.store_path,
    )


def planned_evacuation(
    request: RollingRequest, store: JobStore, host: str, versions: dict[str, int], away: set[str]
) -> tuple[HostRef, tuple[HostRef, ...], FleetInput, FleetPlan]:
    """The evacuation of `host`, planned as evacuate plans it, with the roll's version rule
    and the hosts emptied with it (`away`) taken as in maintenance."""
    source, targets, inp, _plan = prepare(evacuate_request(request, host), store)
    inp = never_to_older_qemu(inp, versions)
    inp = replace(
        inp,
        targets=tuple(replace(t, maintenance=True) if t.name in away else t for t in inp.targets),
    )
    return source, targets, inp, plan_moves(inp)


def return_sampling(request: RollingRequest) -> BalanceRequest:
    """How --return better samples the cluster: balance's own sampling, over its window."""
    return BalanceRequest(
        cluster=request.cluster,
        window_s=BETTER_WINDOW_S,
        bandwidth_mib=request.bandwidth_mib,
        hosts_file=request.hosts_file,
    )


_MOVE_KEYS = ("vm", "source", "destination", "mode", "predicted_s")


def predict(
    request: RollingRequest, store: JobStore, order: RollOrder, versions: dict[str, int]
) -> tuple[dict[str, Any], float | None]:
    """Each step's moves and predicted seconds, as if the steps before it went as planned
    (earlier hosts upgraded to the newest QEMU; their VMs back, or with --return better
    where the balance planner leaves them); the whole roll's sum. The command and the health
    check are the request's estimates. Also the bandwidth measured."""
    newest = max(versions.values())
    assumed = dict(versions)
    steps: list[dict[str, Any]] = []
    bandwidth = request.bandwidth_mib
    better = _Simulated.of(request, store) if request.return_policy == RETURN_BETTER else None
    for group in order.steps:
        for host in group:
            req = replace(request, bandwidth_mib=bandwidth)
            _s, _t, inp, plan = planned_evacuation(req, store, host, assumed, set(group) - {host})
            if better is not None:
                inp, plan = better.evacuated(inp, plan, host, assumed)
            bandwidth = inp.bandwidth_bps / (1 << 20)
            moves = [{k: m.to_dict()[k] for k in _MOVE_KEYS} for m in plan.moves]
            moving = plan.predicted_total_s + GATHER_ESTIMATE_S
            steps.append(
                {
                    "name": f"{EVACUATE_STEP} {host}",
                    "predicted_s": round(moving, 1),
                    "moves": moves,
                    "unplaced": [u.to_dict() for u in plan.unplaced],
                }
            )
        for index, host in enumerate(group):
            evacuation = next(s for s in steps if s["name"] == f"{EVACUATE_STEP} {host}")
            upgraded = {**assumed, host: max(newest, assumed[host])}
            if better is not None:
                still_away = set(group[index + 1 :])
                back_step = better.returned(request, host, evacuation, upgraded, still_away)
            else:
                back = [
                    {**m, "source": m["destination"], "destination": m["source"]}
                    for m in evacuation["moves"]
                ]
                back_step = {"predicted_s": evacuation["predicted_s"] if back else 0.0}
                back_step["moves"] = back
            steps += [
                {"name": f"{COMMAND_STEP} {host}", "predicted_s": request.command_estimate_s},
                {"name": f"{HEALTH_STEP} {host}", "predicted_s": request.health_estimate_s},
                {"name": f"{RETURN_STEP} {host}", **back_step},
            ]
        for host in group:
            assumed[host] = max(newest, assumed[host])
    total = round(sum(float(s["predicted_s"]) for s in steps), 1)
    predicted = {
        "steps": steps,
        "total_s": total,
        "assumed": {
            "command_s": request.command_estimate_s,
            "health_s": request.health_estimate_s,
            "gather_s": GATHER_ESTIMATE_S,
            "returns": RETURNS_ASSUMED[request.return_policy],
        },
    }
    return predicted, bandwidth


RETURNS_ASSUMED = {
    RETURN_ALWAYS: "each return takes what its evacuation takes (the same VMs, link and "
    "model, the other way)",
    RETURN_BETTER: "each return is planned by the balance planner over the cluster as the "
    f"steps before leave it (each VM's CPU use as measured over {BETTER_WINDOW_S:g} s now); "
    f"it takes {BETTER_WINDOW_S:g} s more to measure it again",
}


@dataclass
class _Simulated:
    """The cluster as a dry run with --return better expects each step to leave it: where
    each VM runs, and what the planners knew of the VMs that moved (to plan them again)."""

    hosts: tuple[HostSample, ...]
    vms: tuple[VmSample, ...]
    where: dict[str, str]  # VM -> host, as the steps so far leave it
    loads: dict[str, tuple[VmLoad, tuple[PairVerdict, ...]]] = field(default_factory=dict)
    home: dict[str, str] = field(default_factory=dict)  # a VM that stayed away -> its home

    @classmethod
    def of(cls, request: RollingRequest, store: JobStore) -> _Simulated:
        refs = resolve_cluster(request.cluster, request.hosts_file)
        sampled = sample_cluster(
            refs,
            return_sampling(request),
            set(store.maintenance()),
            frozenset(),
            with_checks=False,
        )
        close_sessions(sampled.sessions)
        vms = sampled.inp.vms
        return cls(sampled.inp.hosts, vms, {vm.name: vm.host for vm in vms if vm.holds})

    def evacuated(
        self, inp: FleetInput, plan: FleetPlan, host: str, versions: dict[str, int]
    ) -> tuple[FleetInput, FleetPlan]:
        """The evacuation of `host` with the VMs earlier returns left there, planned again."""
        inp = with_stayed(inp, host, self.where, self.home, self.loads, versions)
        if any(vm.name in self.home for vm in inp.vms):
            plan = plan_moves(inp)
        by_name = {vm.name: vm for vm in inp.vms}
        for move in plan.moves:
            pairs = tuple(v for v in inp.verdicts if v.vm == move.vm)
            self.loads[move.vm] = (by_name[move.vm], pairs)
            self.where[move.vm] = move.destination
            self.home.setdefault(move.vm, host)
        return inp, plan

    def returned(
        self,
        request: RollingRequest,
        host: str,
        evacuation: dict[str, Any],
        versions: dict[str, int],
        still_away: set[str],
    ) -> dict[str, Any]:
        """The return step: the moves the balance planner makes, the VMs that stay."""
        away = {m["vm"]: m["destination"] for m in evacuation["moves"]}
        hosts, vms = moved_to(self.hosts, self.vms, self.where)
        hosts = tuple(replace(h, maintenance=h.maintenance or h.name in still_away) for h in hosts)
        bandwidth = (request.bandwidth_mib or DEFAULT_BANDWIDTH_BPS / (1 << 20)) * (1 << 20)
        returning = plan_return(hosts, vms, host, away, versions, None, bandwidth)
        limits = Limits(request.max_parallel, request.max_per_host)
        moves = as_planned_moves(returning.plan, returning.inp, limits)
        for vm in returning.returning:
            self.where[vm] = host
            self.home.pop(vm, None)
        took = max((m.predicted_start_s + m.predicted_s for m in moves), default=0.0)
        return {
            "predicted_s": round(took + GATHER_ESTIMATE_S + BETTER_WINDOW_S, 1) if away else 0.0,
            "moves": [{k: m.to_dict()[k] for k in _MOVE_KEYS} for m in moves],
            "stays": returning.staying,
        }


def with_stayed(
    inp: FleetInput,
    host: str,
    where: dict[str, str],
    home: dict[str, str],
    loads: dict[str, tuple[VmLoad, tuple[PairVerdict, ...]]],
    versions: dict[str, int],
) -> FleetInput:
    """`inp` (the evacuation of `host` as gathered now) with the VMs an earlier return left
    on `host`: their loads and checks as their own evacuation knew them, their home (where
    they ran before, since upgraded) passing, and the roll's version rule."""
    extra = [vm for vm, at in sorted(where.items()) if at == host and vm in home]
    if not extra:
        return inp
    targets = {t.name for t in inp.targets}
    new_vms = tuple(replace(loads[vm][0], host=host) for vm in extra)
    new_pairs = tuple(
        verdict
        for vm in extra
        for verdict in (*loads[vm][1], PairVerdict(vm, home[vm], ()))
        if verdict.destination in targets
    )
    added = never_to_older_qemu(replace(inp, vms=new_vms, verdicts=new_pairs), versions)
    return replace(inp, vms=inp.vms + new_vms, verdicts=inp.verdicts + added.verdicts)
