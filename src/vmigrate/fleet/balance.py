"""`vmigrate balance`, the pure core: the few live moves that even out a cluster's load, each
weighed by what it costs against the balance it buys (no libvirt, no I/O).

Load of a host, between 0 and about 1 (more when it is overcommitted):

    load         = (cpu_share + memory_share) / 2
    cpu_share    = sum(cpu_cores of its VMs) / CPU capacity (its declared vCPUs, else its CPUs)
    memory_share = sum(memory_need_bytes(VM RAM)) / usable bytes (capacity less the reserve)

Only VMs that hold memory count (a shut-off VM uses neither). `cpu_cores` is what the VM used
on average over the sampling window, so a burst shorter than the window does not move
anything. The mix is Proxmox CRS's ((cpu% + mem%) / 2): CPU alone would pile RAM onto idle
hosts, memory alone would leave busy guests side by side.

Imbalance: the coefficient of variation (population standard deviation / mean) of the loads
of the hosts that answer and are not in maintenance; 0 with fewer than 2 such hosts or a mean
of 0. It does not depend on how full the cluster is (hosts at 20/40 % and at 40/80 % are
equally unbalanced), like Watcher's standard deviation of normalised loads (threshold 0.1).
Proxmox divides it by sqrt(n - 1); we do not: all load on one host of n gives sqrt(n - 1)
(1.41 on 3 hosts), two equal hosts and an empty one 0.71.

Moves, greedy, at most `max_moves` per plan. Each round simulates every candidate -- a
running VM not moved yet in this plan nor in cool-down, to every other host that answers, is
not in maintenance, passed the VM's checks, and still has its memory and declared vCPUs after
the moves already chosen (the evacuation's rules and Ledger, plan.py) -- and predicts the
imbalance with the destination's load *after* the move (a target judged by its load before
takes too much: ProxLB#23). gain = imbalance before - after. Among the moves whose relative
gain (gain / imbalance before this move) is at least `min_gain`, the best score wins:

    score = gain / cost_factor
    cost_factor = (1 + seconds / COST_REFERENCE_S + downtime_ms / DOWNTIME_REFERENCE_MS)
                  x POSTCOPY_FACTOR when the policy would switch to post-copy

from the pre-copy model at the whole link (predict.live_cost; bytes sent are in the seconds).
So between two moves that buy the same balance the cheaper one goes, and a busy guest moves
only when it buys clearly more. A move predicted not to converge is never proposed: the
policy would abort it after sending its memory, and it would buy nothing. Memory a VM leaves
is not credited to its source within a plan: the moves may run at once, in any order.

Hysteresis (no ping-pong, ProxLB#390, #69; no storms, kubevirt/monitoring#266): nothing
moves while the imbalance is at or under `threshold`, and a plan stops as soon as it gets
there; every move must improve the imbalance by `min_gain` relative (Proxmox: 10 %); a VM
moves at most once per plan and never while in cool-down (`cooled`, the caller's record of
recent balance moves); `max_moves` per plan, after which the next plan measures what the
moves did instead of trusting the model further. Re-planning the state a plan leads to
proposes nothing when the plan ended at or under the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from vmigrate.capacity import HOLDING_STATES, MIB, HostBudget, memory_need_bytes
from vmigrate.errors import UsageError
from vmigrate.fleet.plan import (
    LIVE,
    RUNNING_STATES,
    Ledger,
    Limits,
    PairVerdict,
    PlannedMove,
    TargetHost,
    VmLoad,
    refusal,
)
from vmigrate.fleet.predict import LiveModel, MoveCost, live_cost, simulate

#: Act above this imbalance (coefficient of variation of the loads): Watcher's default 0.1.
DEFAULT_THRESHOLD = 0.1
#: All load on one host of n gives sqrt(n - 1): 10 is past any cluster of 100 hosts.
MAX_THRESHOLD = 10.0
#: A move must lower the imbalance by this much relative to it (Proxmox CRS: 10 %).
DEFAULT_MIN_GAIN = 0.10
#: Moves per plan: a few, then measure again (one at a time in Proxmox CRS, one per minute in
#: oVirt; xen-orchestra settled on 3 at once after moves without a limit, #6065).
DEFAULT_MAX_MOVES = 3
#: A move this long halves its score: about what an idle 3 GiB guest takes over 1 Gbit/s.
COST_REFERENCE_S = 30.0
#: A pause the guest's users feel weighs more than time in the background: 1 s of pause
#: counts like 30 s of moving (the `fast` preset allows up to 500 ms).
DOWNTIME_REFERENCE_MS = 1000.0
#: A balancing move is optional: one through post-copy, whose failure leaves the guest split
#: between the hosts, must buy twice the balance.
POSTCOPY_FACTOR = 2.0
DEFAULT_BANDWIDTH_BPS = 119.0 * MIB
#: Gains below this are rounding, not balance.
_GAIN_EPSILON = 1e-9


@dataclass(frozen=True)
class VmSample:
    """A VM as sampled on its host over the sampling window."""

    name: str
    host: str
    vcpus: int
    cpu_cores: float  # average cores used: vCPU time delta / window seconds
    memory_bytes: int
    dirty_rate_bps: float | None  # None: not measured (taken as 0 by the cost model)
    persistent: bool = True
    state: str = "running"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cpu_cores) and self.cpu_cores >= 0):
            raise ValueError(f"VM {self.name}: cpu_cores must be >= 0, not {self.cpu_cores}")
        if self.memory_bytes < 0 or self.vcpus < 0:
            raise ValueError(f"VM {self.name}: negative memory or vCPUs")
        if self.dirty_rate_bps is not None and not self.dirty_rate_bps >= 0:
            raise ValueError(f"VM {self.name}: dirty_rate_bps must be >= 0 or None")

    @property
    def holds(self) -> bool:
        """It takes memory and CPU on its host (counts in the host's load)."""
        return self.state in HOLDING_STATES

    @property
    def running(self) -> bool:
        """It can move live."""
        return self.state in RUNNING_STATES


@dataclass(frozen=True)
class HostSample:
    name: str
    budget: HostBudget | None  # None only for a host that did not answer
    maintenance: bool = False
    reachable: bool = True
    problem: str | None = None  # why it did not answer

    @property
    def active(self) -> bool:
        """Part of the balance: it answers and is not in maintenance."""
        return self.reachable and not self.maintenance and self.budget is not None


def cpu_capacity(budget: HostBudget) -> int:
    """The CPU a host's load is measured against: its declared vCPUs, else its CPUs."""
    return budget.vcpus_declared if budget.vcpus_declared is not None else budget.cpus


def check_settings(
    threshold: float, min_gain: float, max_moves: int, bandwidth_bps: float = DEFAULT_BANDWIDTH_BPS
) -> None:
    """Refuse settings out of range (the CLI can call this before it samples anything)."""
    if not 0 < threshold <= MAX_THRESHOLD:
        raise UsageError(
            f"imbalance threshold {threshold} is out of range",
            fix=f"give a threshold in (0, {MAX_THRESHOLD:g}]; {DEFAULT_THRESHOLD} (the default) "
            "acts when the hosts' loads spread more than about 10 % around their mean",
        )
    if not 0 <= min_gain < 1:
        raise UsageError(
            f"minimum gain {min_gain} is out of range",
            fix=f"give a relative gain in [0, 1); {DEFAULT_MIN_GAIN} (the default) means each "
            "move must lower the imbalance by 10 %",
        )
    if max_moves < 1:
        raise UsageError(
            f"max moves {max_moves}: a plan needs room for at least 1 move",
            fix=f"give 1 or more (default {DEFAULT_MAX_MOVES})",
        )
    if not (math.isfinite(bandwidth_bps) and bandwidth_bps > 0):
        raise UsageError(
            f"bandwidth {bandwidth_bps} B/s: it must be a positive number",
            fix="give the link's speed in MiB/s",
        )


@dataclass(frozen=True)
class BalanceInput:
    hosts: tuple[HostSample, ...]
    vms: tuple[VmSample, ...]
    verdicts: tuple[PairVerdict, ...]  # a (vm, destination) pair absent or with blockers: no
    threshold: float = DEFAULT_THRESHOLD
    min_gain: float = DEFAULT_MIN_GAIN
    max_moves: int = DEFAULT_MAX_MOVES
    cooled: frozenset[str] = frozenset()  # VMs moved by balance within the cool-down
    bandwidth_bps: float = DEFAULT_BANDWIDTH_BPS
    live_model: LiveModel = field(default_factory=LiveModel)

    def __post_init__(self) -> None:
        check_settings(self.threshold, self.min_gain, self.max_moves, self.bandwidth_bps)
        hosts = {h.name: h for h in self.hosts}
        if len(hosts) != len(self.hosts):
            twice = sorted({h.name for h in self.hosts if self.hosts.count(hosts[h.name]) != 1})
            raise ValueError(f"hosts listed twice: {', '.join(twice)}")
        for host in self.hosts:
            _check_host(host)
        holding: dict[str, str] = {}
        for vm in self.vms:
            if vm.host not in hosts:
                raise ValueError(f"VM {vm.name} is on {vm.host}, which is not among the hosts")
            if vm.holds and vm.name in holding:
                raise ValueError(f"VM {vm.name} runs on both {holding[vm.name]} and {vm.host}")
            if vm.holds:
                holding[vm.name] = vm.host


def _check_host(host: HostSample) -> None:
    if host.reachable and host.budget is None:
        raise ValueError(f"host {host.name} answers but has no budget")
    if not host.active or host.budget is None:
        return
    if host.budget.usable_bytes <= 0 or cpu_capacity(host.budget) <= 0:
        raise UsageError(
            f"host {host.name} has nothing for VMs to balance onto ({host.budget.describe()}, "
            f"{cpu_capacity(host.budget)} CPUs)",
            fix="correct its capacity_mib, reserve_mib or vcpus in the hosts file, "
            "or put it in maintenance",
            host=host.name,
        )


# -- output ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostShare:
    """A host's load, and what it is made of."""

    name: str
    load: float
    cpu_share: float
    memory_share: float

    def to_dict(self) -> dict[str, Any]:
        return _rounded(asdict(self))


def _rounded(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in fields.items()}


@dataclass(frozen=True)
class BalanceMove:
    vm: str
    source: str
    destination: str
    gain: float  # imbalance before this move - after it
    score: float  # gain / cost factor
    predicted_s: float  # alone on the link
    predicted_bytes: int
    predicted_downtime_ms: float
    converges: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return _rounded(asdict(self))


@dataclass(frozen=True)
class Skipped:
    kind: str  # vm | host
    name: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BalancePlan:
    imbalance_before: float
    imbalance_after: float
    threshold: float
    hosts_before: tuple[HostShare, ...]  # the hosts that answer and are not in maintenance
    hosts_after: tuple[HostShare, ...]
    moves: tuple[BalanceMove, ...]
    skipped: tuple[Skipped, ...]
    reason: str  # why the plan stops where it does

    def to_dict(self) -> dict[str, Any]:
        return {
            "imbalance_before": round(self.imbalance_before, 4),
            "imbalance_after": round(self.imbalance_after, 4),
            "threshold": self.threshold,
            "moves": [m.to_dict() for m in self.moves],
            "hosts_before": [h.to_dict() for h in self.hosts_before],
            "hosts_after": [h.to_dict() for h in self.hosts_after],
            "skipped": [s.to_dict() for s in self.skipped],
            "reason": self.reason,
        }


# -- the metric -----------------------------------------------------------------------------


def imbalance(loads: Sequence[float]) -> float:
    """Coefficient of variation (population std / mean); 0 for < 2 loads or a mean of 0."""
    if len(loads) < 2:
        return 0.0
    mean = math.fsum(loads) / len(loads)
    if mean <= 0:
        return 0.0
    return math.sqrt(math.fsum((x - mean) ** 2 for x in loads) / len(loads)) / mean


def _fast_imbalance(total: float, squares: float, n: int) -> float:
    """The same from the sum and the sum of squares: O(1) per candidate move."""
    if n < 2 or total <= 0:
        return 0.0
    mean = total / n
    return math.sqrt(max(squares / n - mean * mean, 0.0)) / mean


@dataclass
class _Host:
    name: str
    cpu_capacity: int
    usable_bytes: int
    cores: float = 0.0  # what its VMs use
    need_bytes: int = 0  # what its VMs hold, QEMU's overhead included

    def load_with(self, cores: float, need_bytes: int) -> float:
        cpu = (self.cores + cores) / self.cpu_capacity
        return (cpu + (self.need_bytes + need_bytes) / self.usable_bytes) / 2

    @property
    def load(self) -> float:
        return self.load_with(0.0, 0)

    def share(self) -> HostShare:
        return HostShare(
            self.name,
            self.load,
            self.cores / self.cpu_capacity,
            self.need_bytes / self.usable_bytes,
        )


class _Cluster:
    """The active hosts and where each VM that counts is, as moves are chosen."""

    def __init__(self, inp: BalanceInput) -> None:
        self.hosts: dict[str, _Host] = {}
        for h in sorted(inp.hosts, key=lambda h: h.name):
            if h.active and h.budget is not None:
                self.hosts[h.name] = _Host(h.name, cpu_capacity(h.budget), h.budget.usable_bytes)
        self.counted = [vm for vm in inp.vms if vm.holds and vm.host in self.hosts]
        self.where = {vm.name: vm.host for vm in self.counted}
        self._recount()

    def _recount(self) -> None:
        # From scratch with fsum (exact, in any order): the same loads a fresh sample of the
        # state after the moves gives, so a re-plan sees what this plan predicted.
        cores: dict[str, list[float]] = {name: [] for name in self.hosts}
        needs: dict[str, int] = dict.fromkeys(self.hosts, 0)
        for vm in self.counted:
            where = self.where[vm.name]
            cores[where].append(vm.cpu_cores)
            needs[where] += memory_need_bytes(vm.memory_bytes)
        for name, host in self.hosts.items():
            host.cores = math.fsum(cores[name])
            host.need_bytes = needs[name]

    def move(self, vm: str, destination: str) -> None:
        self.where[vm] = destination
        self._recount()

    def shares(self) -> tuple[HostShare, ...]:
        return tuple(h.share() for h in self.hosts.values())

    def imbalance(self) -> float:
        return imbalance([h.load for h in self.hosts.values()])


def host_shares(inp: BalanceInput) -> tuple[HostShare, ...]:
    """Each active host's load now."""
    return _Cluster(inp).shares()


# -- the planner ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    load: VmLoad
    cores: float
    need_bytes: int
    cost: MoveCost
    factor: float


@dataclass(frozen=True)
class _Choice:
    candidate: _Candidate
    destination: str
    score: float


def cost_factor(cost: MoveCost) -> float:
    """What a move's score is divided by (module docstring)."""
    factor = 1 + cost.seconds / COST_REFERENCE_S + cost.downtime_ms / DOWNTIME_REFERENCE_MS
    return factor * (POSTCOPY_FACTOR if cost.how == "postcopy" else 1.0)


def _as_load(vm: VmSample) -> VmLoad:
    return VmLoad(
        vm.name, vm.host, vm.state, vm.persistent, vm.memory_bytes, vm.vcpus, vm.dirty_rate_bps
    )


def _as_target(host: HostSample) -> TargetHost:
    budget = host.budget if host.reachable else None
    return TargetHost(host.name, budget, host.maintenance, host.problem)


def target_hosts(inp: BalanceInput) -> tuple[TargetHost, ...]:
    """The hosts as the evacuation's types (for Ledger.of and the MoveScheduler)."""
    return tuple(_as_target(h) for h in inp.hosts)


def vm_loads(inp: BalanceInput, plan: BalancePlan | None = None) -> tuple[VmLoad, ...]:
    """The VMs as the evacuation's type: all of them, or only those `plan` moves."""
    if plan is None:
        return tuple(_as_load(vm) for vm in inp.vms)
    moved = {(m.vm, m.source) for m in plan.moves}
    return tuple(_as_load(vm) for vm in inp.vms if (vm.name, vm.host) in moved)


def _movable(inp: BalanceInput, cluster: _Cluster) -> tuple[list[_Candidate], list[Skipped]]:
    """The VMs a plan may move (by name), and why each other one stays."""
    hosts = {h.name: h for h in inp.hosts}
    movable: list[_Candidate] = []
    skipped: list[Skipped] = []
    for vm in sorted(inp.vms, key=lambda vm: vm.name):
        why = _why_stays(vm, hosts[vm.host], inp)
        if why is None:
            cost = live_cost(
                vm.memory_bytes, vm.dirty_rate_bps or 0.0, inp.bandwidth_bps, inp.live_model
            )
            if not cost.converges:
                why = (
                    f"predicted NOT to converge at {inp.bandwidth_bps / MIB:.0f} MiB/s: the move "
                    "would be aborted and buy nothing"
                )
            else:
                need = memory_need_bytes(vm.memory_bytes)
                movable.append(
                    _Candidate(_as_load(vm), vm.cpu_cores, need, cost, cost_factor(cost))
                )
        if why is not None:
            skipped.append(Skipped("vm", vm.name, why))
    for host in sorted(inp.hosts, key=lambda h: h.name):
        if host.name not in cluster.hosts:
            why = "in maintenance" if host.maintenance else "does not answer"
            if not host.maintenance:
                why += f" ({host.problem or 'unreachable'})"
            skipped.append(Skipped("host", host.name, f"{why}: not balanced, never a target"))
    return movable, skipped


def _why_stays(vm: VmSample, host: HostSample, inp: BalanceInput) -> str | None:
    if not host.active:
        return f"on {host.name}, which is " + (
            "in maintenance (vmigrate evacuate empties it)" if host.maintenance else "not answering"
        )
    if vm.name in inp.cooled:
        return "moved by balance within the cool-down"
    if not vm.running:
        return f"it is {vm.state}: balance moves running VMs live"
    return None


def _by_size(cluster: _Cluster, loads: dict[str, float]) -> list[list[_Host]]:
    """The hosts in groups of equal capacity, each group least loaded first."""
    groups: dict[tuple[int, int], list[_Host]] = {}
    for host in cluster.hosts.values():
        groups.setdefault((host.cpu_capacity, host.usable_bytes), []).append(host)
    return [
        sorted(group, key=lambda h: (loads[h.name], h.name))
        for _size, group in sorted(groups.items())
    ]


def _best_move(
    cluster: _Cluster,
    candidates: Iterable[_Candidate],
    targets: dict[str, TargetHost],
    verdicts: dict[tuple[str, str], PairVerdict],
    ledger: Ledger,
    min_gain: float,
) -> _Choice | None:
    """The best-scoring move that improves the imbalance by `min_gain` relative, if any.

    Within a group of hosts of equal capacity a VM adds the same to each one's load, so the
    imbalance after the move grows with the destination's load before it: the group is
    walked least loaded first and left at the first host that does not beat the best move
    so far (what is behind it buys less). Thousands of VMs on hundreds of hosts of a few
    sizes thus cost a few hosts per VM, not all of them."""
    loads = {name: host.load for name, host in cluster.hosts.items()}
    n = len(loads)
    total = math.fsum(loads.values())
    squares = math.fsum(x * x for x in loads.values())
    current = _fast_imbalance(total, squares, n)
    groups = _by_size(cluster, loads)
    best: _Choice | None = None
    for cand in candidates:
        source = cluster.where[cand.load.name]
        ls = loads[source]
        ls_after = cluster.hosts[source].load_with(-cand.cores, -cand.need_bytes)
        rest_total, rest_squares = total - ls + ls_after, squares - ls * ls + ls_after * ls_after
        for group in groups:
            for host in group:
                if host.name == source:
                    continue
                ld = loads[host.name]
                ld_after = host.load_with(cand.cores, cand.need_bytes)
                after = _fast_imbalance(
                    rest_total - ld + ld_after,
                    rest_squares - ld * ld + ld_after * ld_after,
                    n,
                )
                gain = current - after
                score = gain / cand.factor
                if (
                    gain <= _GAIN_EPSILON
                    or gain < min_gain * current
                    or (best is not None and score <= best.score)  # ties: the first found
                ):
                    break
                # Checked last: the arithmetic above rules out most pairs more cheaply.
                if refusal(cand.load, targets[host.name], verdicts, ledger) is None:
                    best = _Choice(cand, host.name, score)
                    break
    return best


def _reason(
    before: dict[str, HostShare], after: dict[str, HostShare], src: str, dst: str, cost: MoveCost
) -> str:
    text = (
        f"{src} load {before[src].load:.2f} -> {after[src].load:.2f}, "
        f"{dst} {before[dst].load:.2f} -> {after[dst].load:.2f}; "
        f"~{cost.seconds:.0f} s, {cost.bytes_sent // MIB} MiB, pause ~{cost.downtime_ms:.0f} ms"
    )
    return text + ("; post-copy" if cost.how == "postcopy" else "")


def plan_balance(inp: BalanceInput) -> BalancePlan:
    """The moves that even out the load (module docstring: metric, scoring, hysteresis)."""
    cluster = _Cluster(inp)
    candidates, skipped = _movable(inp, cluster)
    targets = {t.name: t for t in target_hosts(inp)}
    verdicts = {(v.vm, v.destination): v for v in inp.verdicts}
    ledger = Ledger.of(tuple(targets.values()))
    hosts_before = cluster.shares()
    start = cluster.imbalance()
    moves: list[BalanceMove] = []
    moved: set[str] = set()
    reason = f"stopped after {inp.max_moves} move(s) (max_moves); the next plan measures again"
    while len(moves) < inp.max_moves:
        current = cluster.imbalance()
        if current <= inp.threshold:
            reason = _balanced(current, inp.threshold, len(cluster.hosts))
            break
        pool = (c for c in candidates if c.load.name not in moved)
        choice = _best_move(cluster, pool, targets, verdicts, ledger, inp.min_gain)
        if choice is None:
            enough = f" by {inp.min_gain:.0%} or more" if inp.min_gain else ""
            reason = (
                f"imbalance {current:.3f} > threshold {inp.threshold:g}, "
                f"but no move lowers it{enough}"
            )
            break
        cand, dst = choice.candidate, choice.destination
        shares = {s.name: s for s in cluster.shares()}
        cluster.move(cand.load.name, dst)
        ledger.take(dst, cand.need_bytes, cand.load.vcpus)
        moved.add(cand.load.name)
        gain = current - cluster.imbalance()
        after = {s.name: s for s in cluster.shares()}
        moves.append(
            BalanceMove(
                vm=cand.load.name,
                source=cand.load.host,
                destination=dst,
                gain=gain,
                score=gain / cand.factor,
                predicted_s=round(cand.cost.seconds, 1),
                predicted_bytes=cand.cost.bytes_sent,
                predicted_downtime_ms=round(cand.cost.downtime_ms, 1),
                converges=cand.cost.converges,
                reason=_reason(shares, after, cand.load.host, dst, cand.cost),
            )
        )
    else:  # max_moves reached: say so only if the last move did not balance it
        if cluster.imbalance() <= inp.threshold:
            reason = _balanced(cluster.imbalance(), inp.threshold, len(cluster.hosts))
    return BalancePlan(
        imbalance_before=start,
        imbalance_after=cluster.imbalance(),
        threshold=inp.threshold,
        hosts_before=hosts_before,
        hosts_after=cluster.shares(),
        moves=tuple(moves),
        skipped=tuple(skipped),
        reason=reason,
    )


def _balanced(value: float, threshold: float, hosts: int) -> str:
    if hosts < 2:
        return f"balanced: {hosts} host(s) to balance between"
    return f"balanced: {value:.3f} <= threshold {threshold:g}"


def as_planned_moves(
    plan: BalancePlan, inp: BalanceInput, limits: Limits | None = None
) -> tuple[PlannedMove, ...]:
    """The plan's moves as the evacuation's type, for the MoveScheduler: live, without
    --copy-storage (a VM whose disks the hosts do not share needs a blocker in its verdicts),
    no alternatives (a failed balancing move is not worth one elsewhere).

    Without `limits` each keeps its prediction alone on the link and starts at 0 (the
    scheduler keeps the plan's order); with them, start times and predictions come from
    predict.simulate, the moves out of one host sharing its link, as `evacuate` shows them."""
    samples = {(vm.name, vm.host): vm for vm in inp.vms}
    vms = [samples[m.vm, m.source] for m in plan.moves]
    starts = [0.0] * len(vms)
    costs: list[MoveCost | None] = [None] * len(vms)
    if limits is not None:
        runs = simulate(
            [_cost_at(vm, inp.live_model) for vm in vms],
            [(m.source, m.destination) for m in plan.moves],
            inp.bandwidth_bps,
            limits.max_parallel,
            limits.max_per_host,
        )
        starts = [round(r.start_s, 1) for r in runs]
        costs = [_ran(r.cost, r.end_s - r.start_s) for r in runs]
    return tuple(
        _planned(move, vm, start, cost)
        for move, vm, start, cost in zip(plan.moves, vms, starts, costs, strict=True)
    )


def _cost_at(vm: VmSample, model: LiveModel) -> Callable[[float], MoveCost]:
    def at(bandwidth: float) -> MoveCost:
        return live_cost(vm.memory_bytes, vm.dirty_rate_bps or 0.0, bandwidth, model)

    return at


def _ran(cost: MoveCost, seconds: float) -> MoveCost:
    return MoveCost(seconds, cost.downtime_ms, cost.bytes_sent, cost.converges, cost.how)


def _planned(move: BalanceMove, vm: VmSample, start: float, cost: MoveCost | None) -> PlannedMove:
    seconds, downtime, sent, converges = (
        (move.predicted_s, move.predicted_downtime_ms, move.predicted_bytes, move.converges)
        if cost is None
        else (round(cost.seconds, 1), round(cost.downtime_ms, 1), cost.bytes_sent, cost.converges)
    )
    return PlannedMove(
        vm=move.vm,
        source=move.source,
        destination=move.destination,
        mode=LIVE,
        copy_storage=False,
        need_bytes=memory_need_bytes(vm.memory_bytes),
        vcpus=vm.vcpus,
        predicted_s=seconds,
        predicted_downtime_ms=downtime,
        predicted_bytes=sent,
        converges=converges,
        reason=move.reason,
        alternatives=(),
        predicted_start_s=start,
    )
