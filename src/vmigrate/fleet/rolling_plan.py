"""What a rolling upgrade asks for, and what it plans: each host's evacuation planned as
`evacuate` plans it, with the roll's rule that no VM goes to an older QEMU, and the whole
roll predicted step by step from the fleet's model (fleet/predict.py through the planner)
plus stated estimates for what the model cannot know (the command, the health check)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from vmigrate.fleet.evacuate import EvacuateRequest, prepare
from vmigrate.fleet.plan import FleetInput, FleetPlan, Limits, never_to_older_qemu, plan_moves
from vmigrate.fleet.rolling_order import RollOrder
from vmigrate.fleet.rolling_report import COMMAND_STEP, EVACUATE_STEP, HEALTH_STEP, RETURN_STEP
from vmigrate.hosts import HostRef
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


def predict(
    request: RollingRequest, store: JobStore, order: RollOrder, versions: dict[str, int]
) -> tuple[dict[str, Any], float | None]:
    """Each step's moves and predicted seconds, as if the steps before it went as planned
    (earlier hosts upgraded to the newest QEMU, their VMs back); the whole roll's sum. The
    command and the health check are the request's estimates. Also the bandwidth measured."""
    newest = max(versions.values())
    assumed = dict(versions)
    steps: list[dict[str, Any]] = []
    bandwidth = request.bandwidth_mib
    for group in order.steps:
        for host in group:
            req = replace(request, bandwidth_mib=bandwidth)
            _s, _t, inp, plan = planned_evacuation(req, store, host, assumed, set(group) - {host})
            bandwidth = inp.bandwidth_bps / (1 << 20)
            moves = [
                {k: m.to_dict()[k] for k in ("vm", "source", "destination", "mode", "predicted_s")}
                for m in plan.moves
            ]
            moving = plan.predicted_total_s + GATHER_ESTIMATE_S
            steps.append(
                {
                    "name": f"{EVACUATE_STEP} {host}",
                    "predicted_s": round(moving, 1),
                    "moves": moves,
                    "unplaced": [u.to_dict() for u in plan.unplaced],
                }
            )
        for host in group:
            evacuation = next(s for s in steps if s["name"] == f"{EVACUATE_STEP} {host}")
            back = [
                {**m, "source": m["destination"], "destination": m["source"]}
                for m in evacuation["moves"]
            ]
            steps += [
                {"name": f"{COMMAND_STEP} {host}", "predicted_s": request.command_estimate_s},
                {"name": f"{HEALTH_STEP} {host}", "predicted_s": request.health_estimate_s},
                {
                    "name": f"{RETURN_STEP} {host}",
                    "predicted_s": evacuation["predicted_s"] if back else 0.0,
                    "moves": back,
                },
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
            "returns": "each return takes what its evacuation takes (the same VMs, link "
            "and model, the other way)",
        },
    }
    return predicted, bandwidth
