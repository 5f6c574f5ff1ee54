"""The fleet planner: where each VM to move goes (out of a host, or back to it), in which
order, and how long it all takes (pure: it reads gathered facts and check verdicts, it never
calls libvirt).

Placement, VM by VM, the largest memory first (so the big ones still find room):
- candidates are the target hosts that answer, are not in maintenance, passed every check
  of `vmigrate check` for this VM except memory, and still have the memory (after the moves
  already planned there: capacity.py) and the declared vCPUs it needs;
- among them the one with the largest share of its usable memory still free after the move
  wins (the evacuated load spreads instead of piling onto one host); ties go to the host
  with fewer planned moves, then by name;
- the others stay as its alternatives, in the same order: a move that fails is retried on
  the next one that still admits it (`next_destination`).
A VM no host admits is listed with each host's reason before anything moves.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any

from vmigrate.capacity import MIB, HostBudget, memory_need_bytes
from vmigrate.fleet.predict import (
    COLD_FINISH_S,
    LINK_SLACK,
    LIVE_FINISH_S,
    SETUP_S,
    FleetMove,
    LiveModel,
    MoveCost,
    cold_cost,
    live_cost,
    simulate_fleet,
)
from vmigrate.model import CheckReport
from vmigrate.versions import format_version

LIVE, COLD, AUTO = "live", "cold", "auto"
MODES = (LIVE, COLD, AUTO)
RUNNING_STATES = ("running", "paused", "blocked")
#: Defaults of the concurrency limits: how many moves' children may run at once, in all and
#: into or out of one host. How many of them *send* at once follows the link (predict.py,
#: `link_ready`): on a link one stream fills, one sends while the next one sets up and the
#: one before finishes, hence 3. (The systems operators use run 1-2 transfers per host:
#: oVirt 2, KubeVirt 2 outbound, OpenStack 1; a move's set-up and finish use no link.)
DEFAULT_MAX_PARALLEL = 3
DEFAULT_MAX_PER_HOST = 3
#: The most parallel connections (multifd) a planned move is given.
MAX_MULTIFD = 8
#: multifd is planned only where it shortens the move by more than this share.
MULTIFD_GAIN = 0.05


@dataclass(frozen=True)
class VmLoad:
    """A VM to move, as gathered on the host it is on."""

    name: str
    host: str  # where it is now
    state: str
    persistent: bool
    memory_bytes: int
    vcpus: int
    dirty_rate_bps: float | None  # None: not measured (not running, or QEMU could not)
    local_disks: tuple[str, ...] = ()  # disk targets not on storage the targets share
    local_disk_bytes: int = 0  # their allocated bytes

    @property
    def running(self) -> bool:
        return self.state in RUNNING_STATES


def move_mode(vm: VmLoad, mode: str) -> tuple[str | None, str]:
    """How the VM moves under --mode: (live | cold | None, why)."""
    if mode == COLD:
        return COLD, "cold: --mode cold (a running VM is shut down first)"
    if vm.running:
        how = "live with its local disks (--copy-storage)" if vm.local_disks else "live"
        return LIVE, how
    if mode == LIVE:
        return None, (
            f"it is {vm.state}: a live move needs it running; --mode auto or cold moves its "
            "definition and disks"
        )
    return COLD, f"cold: it is {vm.state}"


@dataclass(frozen=True)
class PairVerdict:
    """The checks of one VM moving to one target, memory aside (the planner counts it)."""

    vm: str
    destination: str
    blockers: tuple[str, ...]  # "check: summary" of every failed check
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class TargetHost:
    name: str
    budget: HostBudget | None  # None: the host did not answer
    maintenance: bool = False
    problem: str | None = None  # why it did not answer


@dataclass(frozen=True)
class Limits:
    max_parallel: int = DEFAULT_MAX_PARALLEL
    max_per_host: int = DEFAULT_MAX_PER_HOST


EVACUATE, RETURN, BALANCE, ROLLING = "evacuate", "return", "balance", "rolling"
PURPOSES = (EVACUATE, RETURN, BALANCE, ROLLING)


@dataclass(frozen=True)
class Purpose:
    """What a fleet job is for, and so what its job row says: `kind` is the job's kind,
    `subject` what it is named by (the host it empties, the host its VMs return to, the
    cluster it balances), `sources`/`targets` the hosts VMs leave and may go to, by name."""

    kind: str  # evacuate | return | balance | rolling
    subject: str
    sources: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    subject_uri: str = ""  # the subject host's libvirt URI (a cluster has none)

    @property
    def emptied_host(self) -> str:
        """The host this job empties; "" for a return or a balance round."""
        return self.subject if self.kind == EVACUATE else ""

    @property
    def what(self) -> str:
        return {
            EVACUATE: f"empty host {self.subject}",
            RETURN: f"return VMs to {self.subject}",
            BALANCE: f"balance cluster {self.subject}",
            ROLLING: f"roll an upgrade over cluster {self.subject}",
        }[self.kind]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "sources": list(self.sources),
            "targets": list(self.targets),
            "subject_uri": self.subject_uri,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Purpose:
        return cls(
            str(values["kind"]),
            str(values["subject"]),
            tuple(values.get("sources", ())),
            tuple(values.get("targets", ())),
            str(values.get("subject_uri", "")),
        )


@dataclass(frozen=True)
class FleetInput:
    """What a fleet plan is made from: the VMs to move, the hosts they may go to, the
    checks of each pair, the limits and the link."""

    purpose: Purpose
    vms: tuple[VmLoad, ...]
    targets: tuple[TargetHost, ...]
    verdicts: tuple[PairVerdict, ...]
    mode: str = AUTO
    limits: Limits = field(default_factory=Limits)
    bandwidth_bps: float = 119 * MIB
    bandwidth_source: str = "default (1 Gbit/s)"
    live_model: LiveModel = field(default_factory=LiveModel)
    #: The checks behind `verdicts`, in full, and when they were made (time.time()): a
    #: move's child trusts them and checks again only what can have changed.
    checks: tuple[CheckReport, ...] = ()
    checked_at: float = 0.0
    #: What one migration stream carries, where something measured it below the link's
    #: bandwidth (None: one stream fills the link, as the probe, itself one stream, found).
    stream_bps: float | None = None
    stream_source: str = ""

    @property
    def one_stream_bps(self) -> float:
        return min(self.stream_bps or self.bandwidth_bps, self.bandwidth_bps)

    def checks_of(self, vm: str, destination: str) -> CheckReport | None:
        return next((c for c in self.checks if (c.vm, c.destination) == (vm, destination)), None)


@dataclass(frozen=True)
class PlannedMove:
    vm: str
    source: str
    destination: str
    mode: str  # live | cold
    copy_storage: bool
    need_bytes: int
    vcpus: int
    predicted_s: float
    predicted_downtime_ms: float | None  # None for a cold move (the VM is down throughout)
    predicted_bytes: int
    converges: bool
    reason: str
    alternatives: tuple[str, ...] = ()
    predicted_start_s: float = 0.0
    solo: bool = False  # runs with no other move out of its source (see _needs_the_link)
    # How it uses the link (predict.py): its set-up before the first byte, the seconds it
    # sends at the rate it gets alone, that rate (0: the link's), its multifd connections.
    setup_s: float = 0.0
    link_s: float = 0.0
    stream_bps: float = 0.0
    parallel: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Unplaced:
    vm: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HostLoad:
    name: str
    usable_bytes: int
    free_before_bytes: int
    free_after_bytes: int
    incoming: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LinkPlan:
    """How the plan uses the link, in words the plan's text and --json show."""

    sending_at_once: int  # moves that send at once on one host's link
    stream_bps: float  # what one stream carries
    overlap: str  # how a move's set-up overlaps the moves before it
    multifd: str  # where parallel connections are used, or why not
    compression: str  # why compression is not used

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FleetPlan:
    """The moves of a fleet job (an evacuation, a return, a balance round), in order, with
    what could not be placed and the predicted total."""

    purpose: Purpose
    mode: str
    moves: tuple[PlannedMove, ...]
    unplaced: tuple[Unplaced, ...]
    predicted_total_s: float
    limits: Limits
    bandwidth_bps: float
    bandwidth_source: str
    hosts: tuple[HostLoad, ...] = field(default=())
    link: LinkPlan | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "link": None if self.link is None else self.link.to_dict(),
            "source": self.purpose.emptied_host,
            "purpose": self.purpose.to_dict(),
            "mode": self.mode,
            "moves": [m.to_dict() for m in self.moves],
            "unplaced": [u.to_dict() for u in self.unplaced],
            "predicted_total_s": round(self.predicted_total_s, 1),
            "limits": asdict(self.limits),
            "bandwidth_bps": self.bandwidth_bps,
            "bandwidth_source": self.bandwidth_source,
            "hosts": [h.to_dict() for h in self.hosts],
        }


@dataclass
class Ledger:
    """What each target has left while moves are planned (and, executing, while they run)."""

    free: dict[str, int]
    vcpus_free: dict[str, int | None]
    incoming: dict[str, int]

    @classmethod
    def of(cls, targets: tuple[TargetHost, ...]) -> Ledger:
        answering = [t for t in targets if t.budget is not None]
        return cls(
            {t.name: t.budget.free_bytes for t in answering if t.budget},
            {t.name: t.budget.vcpus_free for t in answering if t.budget},
            {t.name: 0 for t in answering},
        )

    def take(self, host: str, need_bytes: int, vcpus: int) -> None:
        self._add(host, -need_bytes, -vcpus, 1)

    def give_back(self, host: str, need_bytes: int, vcpus: int) -> None:
        self._add(host, need_bytes, vcpus, -1)

    def _add(self, host: str, memory: int, vcpus: int, moves: int) -> None:
        self.free[host] += memory
        spare = self.vcpus_free.get(host)
        if spare is not None:
            self.vcpus_free[host] = spare + vcpus
        self.incoming[host] += moves


def refusal(
    vm: VmLoad,
    target: TargetHost,
    verdicts: dict[tuple[str, str], PairVerdict],
    ledger: Ledger,
) -> str | None:
    """Why `target` cannot take `vm` now; None when it can."""
    if target.name == vm.host:
        return "it is where the VM is"
    if target.maintenance:
        return "in maintenance"
    if target.budget is None:
        return f"does not answer ({target.problem or 'unreachable'})"
    verdict = verdicts.get((vm.name, target.name))
    if verdict is None:
        return "not checked"
    if verdict.blockers:
        return "; ".join(verdict.blockers)
    need = memory_need_bytes(vm.memory_bytes)
    free = ledger.free[target.name]
    if need > free:
        planned = ledger.incoming[target.name]
        after = f" after {planned} planned move(s)" if planned else ""
        return f"needs {need // MIB} MiB, {max(free, 0) // MIB} MiB free{after}"
    if vm.vcpus > target.budget.cpus:
        return f"the VM has {vm.vcpus} vCPUs, the host {target.budget.cpus} CPUs"
    spare = ledger.vcpus_free[target.name]
    if spare is not None and vm.vcpus > spare:
        return f"needs {vm.vcpus} vCPUs, {max(spare, 0)} of its declared vCPUs free"
    return None


def _admits(
    vm: VmLoad, verdicts: dict[tuple[str, str], PairVerdict], ledger: Ledger, target: TargetHost
) -> bool:
    return refusal(vm, target, verdicts, ledger) is None


def _weight(target: TargetHost, ledger: Ledger) -> tuple[float, int, str]:
    """Best first: the largest share of its usable memory still free, then the fewest
    moves planned there, then the name."""
    assert target.budget is not None
    usable = max(target.budget.usable_bytes, 1)
    return (-ledger.free[target.name] / usable, ledger.incoming[target.name], target.name)


def verdict_index(inp: FleetInput) -> dict[tuple[str, str], PairVerdict]:
    return {(v.vm, v.destination): v for v in inp.verdicts}


def ranked_destinations(
    vm: VmLoad,
    inp: FleetInput,
    ledger: Ledger,
    exclude: frozenset[str] = frozenset(),
    verdicts: dict[tuple[str, str], PairVerdict] | None = None,
) -> tuple[list[TargetHost], dict[str, str]]:
    """The targets that admit `vm` now, best first, and why each other one does not."""
    if verdicts is None:
        verdicts = verdict_index(inp)
    return _ranked(vm, inp.targets, ledger, exclude, verdicts)


def _ranked(
    vm: VmLoad,
    targets: tuple[TargetHost, ...],
    ledger: Ledger,
    exclude: frozenset[str],
    verdicts: dict[tuple[str, str], PairVerdict],
) -> tuple[list[TargetHost], dict[str, str]]:
    admitted, refused = [], {}
    for target in targets:
        if target.name in exclude:
            refused[target.name] = "already tried"
            continue
        why = refusal(vm, target, verdicts, ledger)
        if why is None:
            admitted.append(target)
        elif target.name != vm.host:
            refused[target.name] = why
    admitted.sort(key=lambda t: _weight(t, ledger))
    return admitted, refused


def next_destination(
    vm: VmLoad, inp: FleetInput, ledger: Ledger, exclude: frozenset[str]
) -> tuple[str | None, str]:
    """Where a move that failed (or whose host stopped answering) goes next, and why."""
    admitted, refused = ranked_destinations(vm, inp, ledger, exclude)
    if admitted:
        return admitted[0].name, _chosen_reason(admitted[0], vm, ledger)
    return None, _nowhere(refused)


def _chosen_reason(target: TargetHost, vm: VmLoad, ledger: Ledger) -> str:
    assert target.budget is not None
    after = ledger.free[target.name] - memory_need_bytes(vm.memory_bytes)
    return (
        f"most free memory after the move: {after // MIB} MiB of "
        f"{target.budget.usable_bytes // MIB} MiB usable"
    )


def _nowhere(refused: dict[str, str]) -> str:
    if not refused:
        return "no target host"
    return "no host can take it: " + "; ".join(f"{host}: {why}" for host, why in refused.items())


def _cost(vm: VmLoad, mode: str, inp: FleetInput, bandwidth: float) -> MoveCost:
    if mode == COLD:
        return cold_cost(vm.local_disk_bytes, bandwidth)
    return live_cost(
        vm.memory_bytes, vm.dirty_rate_bps or 0.0, bandwidth, inp.live_model, vm.local_disk_bytes
    )


def sending_at_once(inp: FleetInput) -> int:
    """How many moves' streams one host's link carries at once (within the limits)."""
    fit = math.floor(inp.bandwidth_bps * (1 + LINK_SLACK) / inp.one_stream_bps)
    return max(1, min(fit, inp.limits.max_parallel, inp.limits.max_per_host))


def _multifd(vm: VmLoad, inp: FleetInput) -> tuple[int | None, str]:
    """Parallel connections for a live move where one stream carries less than the link
    and more of them shorten the move; (None, why not) otherwise."""
    one, link = inp.one_stream_bps, inp.bandwidth_bps
    if one * (1 + LINK_SLACK) >= link:
        return None, ""
    connections = min(MAX_MULTIFD, math.ceil(link / one))
    single = _cost(vm, LIVE, inp, one)
    several = _cost(vm, LIVE, inp, min(link, one * connections))
    if several.how == "postcopy":
        return None, "no multifd: it needs post-copy, which QEMU cannot combine with multifd"
    if several.seconds > single.seconds * (1 - MULTIFD_GAIN):
        return None, ""
    return connections, (
        f"multifd: {connections} connections ({single.seconds:.1f} s -> "
        f"{several.seconds:.1f} s; one stream carries {one / MIB:,.0f} of the link's "
        f"{link / MIB:,.0f} MiB/s)"
    )


#: Why a plan never compresses: QEMU 10.0 has no `compress` capability any more
#: (tests/unit/data/versions/README.md), and where QEMU still has it, it spends the hosts'
#: CPU on every page for a ratio nothing here measured.
NO_COMPRESSION = (
    "not used: QEMU 10.0 removed the 'compress' capability, and on older QEMUs nothing "
    "measured shows it shortens a move over this link"
)


def _link_plan(inp: FleetInput, multifd_moves: int) -> LinkPlan:
    one = inp.one_stream_bps
    if multifd_moves:
        multifd = f"used by {multifd_moves} move(s): one stream carries {one / MIB:,.0f} MiB/s"
    elif inp.stream_bps is None:
        multifd = "not used: one stream carries the link's measured rate (the probe is one stream)"
    else:
        multifd = f"not used: it shortens no move ({inp.stream_source or 'measured'})"
    return LinkPlan(
        sending_at_once(inp),
        one,
        f"each move's set-up (about {SETUP_S:.0f} s: its child, connecting, checking again, "
        "its lease) runs while the moves before it send, timed so that its first byte comes "
        "as their last one goes",
        multifd,
        NO_COMPRESSION,
    )


def _needs_the_link(vm: VmLoad, inp: FleetInput, stream_bps: float) -> bool:
    """A busy guest that converges in pre-copy with its source's link to itself but would
    need post-copy (or not finish) sharing it: it runs alone. Post-copy at a shared link
    stalls the guest on every page it still lacks (measured: a 894 ms gap, E1)."""
    sharing = sending_at_once(inp)
    if sharing < 2:
        return False
    alone = _cost(vm, LIVE, inp, stream_bps)
    shared = _cost(vm, LIVE, inp, min(stream_bps, inp.bandwidth_bps / sharing))
    quiet = ("precopy", "raise-downtime")
    return (
        alone.converges and alone.how in quiet and (not shared.converges or shared.how not in quiet)
    )


class _Candidates:
    """The targets that answer and are not in maintenance, best first (a heap with lazy
    updates: placing one VM changes one host's weight), so that placing thousands of VMs
    on hundreds of hosts looks at a few hosts per VM, not at all of them."""

    def __init__(self, targets: tuple[TargetHost, ...], ledger: Ledger) -> None:
        self.ledger = ledger
        self.by_name = {t.name: t for t in targets if t.budget and not t.maintenance}
        self.heap = [(_weight(t, ledger), t.name) for t in self.by_name.values()]
        heapq.heapify(self.heap)

    def best(self, admits: Callable[[TargetHost], bool], count: int) -> list[TargetHost]:
        """Up to `count` hosts that admit the VM, best first."""
        found: list[TargetHost] = []
        popped = []
        while self.heap and len(found) < count:
            weight, name = heapq.heappop(self.heap)
            target = self.by_name[name]
            if weight != _weight(target, self.ledger):
                continue  # stale: a newer entry for this host is in the heap
            popped.append((weight, name))
            if admits(target):
                found.append(target)
        for entry in popped:
            heapq.heappush(self.heap, entry)
        return found

    def changed(self, name: str) -> None:
        heapq.heappush(self.heap, (_weight(self.by_name[name], self.ledger), name))


#: Alternatives kept with each move (a retry looks at every host again anyway).
ALTERNATIVES = 3


def _flight(
    vm: VmLoad, destination: str, mode: str, inp: FleetInput
) -> tuple[FleetMove, int | None, str]:
    """The move as the link sees it, with its multifd connections and why."""
    connections, why = _multifd(vm, inp) if mode == LIVE else (None, "")
    stream = min(inp.bandwidth_bps, inp.one_stream_bps * (connections or 1))
    flight = FleetMove(
        partial(_cost, vm, mode, inp),
        vm.host,
        destination,
        SETUP_S,
        LIVE_FINISH_S if mode == LIVE else COLD_FINISH_S,
        stream,
        solo=mode == LIVE and _needs_the_link(vm, inp, stream),
    )
    return flight, connections, why


def never_to_older_qemu(inp: FleetInput, qemu_versions: dict[str, int]) -> FleetInput:
    """The rolling upgrade's rule on top of the checks: no VM is planned onto a host whose
    QEMU is older than the one it runs on (it would have to move again, and a VM started on
    the newer QEMU may not run there at all). `qemu_versions`: host -> libvirt's encoding."""
    hosts = {vm.name: vm.host for vm in inp.vms}
    verdicts = []
    for verdict in inp.verdicts:
        here = qemu_versions.get(hosts.get(verdict.vm, ""))
        there = qemu_versions.get(verdict.destination)
        if here is not None and there is not None and there < here:
            older = (
                f"versions.rolling: {verdict.destination}'s QEMU {format_version(there)} is "
                f"older than {format_version(here)}, where the VM runs (a rolling upgrade "
                "never moves a VM to an older QEMU)"
            )
            verdict = replace(verdict, blockers=(*verdict.blockers, older))
        verdicts.append(verdict)
    return replace(inp, verdicts=tuple(verdicts))


def placement_order(vms: Iterable[VmLoad]) -> list[VmLoad]:
    """The order VMs are placed in: the largest memory first (so the big ones still find
    room), then by name. A streaming run gathers each VM's checks in this order."""
    return sorted(vms, key=lambda vm: (-memory_need_bytes(vm.memory_bytes), vm.name))


@dataclass(frozen=True)
class Placed:
    """One VM's placement: final once made (its room is taken in the ledger, and no later
    VM changes it)."""

    vm: VmLoad
    destination: str
    mode: str
    reason: str
    alternatives: tuple[str, ...]


class Placer:
    """Places VMs one at a time, in placement_order, each placement final once made: what a
    placement looks at (the VM's size, state and checks, the targets' capacity after the
    VMs placed before it) never depends on a VM placed later, so a fleet job can start a
    move as soon as it is placed while the rest of the plan is made (`plan_moves` runs the
    same placer over every VM at once: a streaming run and --dry-run make the same plan)."""

    def __init__(self, targets: tuple[TargetHost, ...], mode: str) -> None:
        self.targets, self.mode = targets, mode
        self.ledger = Ledger.of(targets)
        self.candidates = _Candidates(targets, self.ledger)
        self.placed: list[Placed] = []
        self.unplaced: list[Unplaced] = []

    def place(self, vm: VmLoad, verdicts: dict[tuple[str, str], PairVerdict]) -> Placed | None:
        """Place `vm` (None: it goes nowhere, and `unplaced` says why)."""
        mode, how = move_mode(vm, self.mode)
        if mode is None:
            self.unplaced.append(Unplaced(vm.name, how))
            return None
        admits = partial(_admits, vm, verdicts, self.ledger)
        admitted = self.candidates.best(admits, 1 + ALTERNATIVES)
        if not admitted:  # say why for every host: only for the VMs that go nowhere
            _none, refused = _ranked(vm, self.targets, self.ledger, frozenset(), verdicts)
            self.unplaced.append(Unplaced(vm.name, _nowhere(refused)))
            return None
        best = admitted[0]
        reason = f"{how}; {_chosen_reason(best, vm, self.ledger)}"
        self.ledger.take(best.name, memory_need_bytes(vm.memory_bytes), vm.vcpus)
        self.candidates.changed(best.name)
        placed = Placed(vm, best.name, mode, reason, tuple(t.name for t in admitted[1:]))
        self.placed.append(placed)
        return placed

    def plan(self, inp: FleetInput) -> FleetPlan:
        """The plan of the VMs placed so far, their link use and timing from `inp` (which
        has their dirty rates and the link's bandwidth once those are measured)."""
        return _timed_plan(inp, self.placed, self.unplaced, self.ledger)


def provisional_move(placed: Placed, inp: FleetInput) -> PlannedMove:
    """A placed move before the plan is complete: its placement and its child's options are
    final (multifd only where `inp` cannot use it: see `options_final`); its link figures
    and predictions come once the dirty rates and the link are measured."""
    flight, connections, _why = _flight(placed.vm, placed.destination, placed.mode, inp)
    cost = flight.cost_at(flight.stream_bps)
    return PlannedMove(
        vm=placed.vm.name,
        source=placed.vm.host,
        destination=placed.destination,
        mode=placed.mode,
        copy_storage=placed.mode == LIVE and bool(placed.vm.local_disks),
        need_bytes=memory_need_bytes(placed.vm.memory_bytes),
        vcpus=placed.vm.vcpus,
        predicted_s=round(cost.seconds, 1),
        predicted_downtime_ms=None,
        predicted_bytes=cost.bytes_sent,
        converges=cost.converges,
        reason=placed.reason,
        alternatives=placed.alternatives,
        solo=flight.solo,
        setup_s=flight.setup_s,
        link_s=round(flight.transfer_s(flight.stream_bps), 2),
        stream_bps=flight.stream_bps,
        parallel=connections,
    )


def options_final(inp: FleetInput) -> bool:
    """Whether a move's child options (its multifd connections) are final before the dirty
    rates and the link are measured: yes when no stream is known to carry less than the
    link (then no move uses multifd, whatever they measure)."""
    return inp.stream_bps is None


def plan_moves(inp: FleetInput) -> FleetPlan:
    """Place the VMs of `inp` in placement_order (see the module's docstring and Placer)."""
    placer = Placer(inp.targets, inp.mode)
    verdicts = verdict_index(inp)
    for vm in placement_order(inp.vms):
        placer.place(vm, verdicts)
    return placer.plan(inp)


def _timed_plan(
    inp: FleetInput, placed_vms: list[Placed], unplaced: list[Unplaced], ledger: Ledger
) -> FleetPlan:
    """The placed moves, in placement order, with their link use and predicted timing."""
    loads = {vm.name: vm for vm in inp.vms}  # as measured: with their dirty rates
    placed = [
        (loads.get(p.vm.name, p.vm), p.destination, p.mode, p.reason, p.alternatives)
        for p in placed_vms
    ]
    flights = [_flight(vm, dst, mode, inp) for vm, dst, mode, _r, _a in placed]
    schedule = simulate_fleet(
        [f for f, _n, _w in flights],
        inp.bandwidth_bps,
        inp.limits.max_parallel,
        inp.limits.max_per_host,
    )
    moves = tuple(
        PlannedMove(
            vm=vm.name,
            source=vm.host,
            destination=dst,
            mode=mode,
            copy_storage=mode == LIVE and bool(vm.local_disks),
            need_bytes=memory_need_bytes(vm.memory_bytes),
            vcpus=vm.vcpus,
            predicted_s=round(run.end_s - run.start_s, 1),
            predicted_downtime_ms=None
            if math.isnan(run.cost.downtime_ms)
            else round(run.cost.downtime_ms, 1),
            predicted_bytes=run.cost.bytes_sent,
            converges=run.cost.converges,
            reason="; ".join(
                part
                for part in (
                    reason,
                    f"runs alone on {vm.host}'s link: sharing it, it would need post-copy"
                    if flight.solo
                    else "",
                    why_multifd,
                    "" if run.cost.converges else "predicted NOT to converge at its link share",
                )
                if part
            ),
            alternatives=alternatives,
            predicted_start_s=round(run.start_s, 1),
            solo=flight.solo,
            setup_s=flight.setup_s,
            link_s=round(flight.transfer_s(flight.stream_bps), 2),
            stream_bps=flight.stream_bps,
            parallel=connections,
        )
        for (vm, dst, mode, reason, alternatives), run, (flight, connections, why_multifd) in zip(
            placed, schedule, flights, strict=True
        )
    )
    total = max((run.end_s for run in schedule), default=0.0)
    hosts = tuple(
        HostLoad(
            t.name,
            t.budget.usable_bytes,
            t.budget.free_bytes,
            ledger.free[t.name],
            ledger.incoming[t.name],
        )
        for t in inp.targets
        if t.budget is not None
    )
    return FleetPlan(
        inp.purpose,
        inp.mode,
        moves,
        tuple(sorted(unplaced, key=lambda u: u.vm)),
        total,
        inp.limits,
        inp.bandwidth_bps,
        inp.bandwidth_source,
        hosts,
        _link_plan(inp, sum(1 for m in moves if m.parallel)),
    )
