"""How long one move takes, and how long moves that share a link take together (pure).

A live move is predicted by the very simulation `vmigrate estimate` runs (live/rehearsal.py:
live's own policy, with live's defaults, over the modelled migration) at the bandwidth it
gets; local disks copied with the memory add their allocated bytes first. A cold move sends
the disks' allocated bytes. Every move also pays what a move run by the fleet costs beyond
the migration itself (its own pre-flight checks, creating the job, verifying), measured in
the lab.

Moves out of one host share that host's link: the simulation gives each of the k moves in
flight 1/k of the bandwidth and recomputes their speed whenever one starts or ends.

A fleet's moves are scheduled by their link use (`simulate_fleet`, and the scheduler in
execute.py with the same rule, `link_ready`): a move is set-up (its child starts, connects,
checks again what can have changed, takes the lease, creates its job), then transfer (the
only part that uses the link), then finish (switch-over, verification). The next move's
set-up runs while the moves before it still send, timed so that its first byte comes as
their last one goes; how many send at once follows the link's bandwidth and what one move's
streams carry, never a fixed count.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from vmigrate.live.policy import DEFAULT_POLICY, PRESETS, PolicyConfig
from vmigrate.live.rehearsal import FixedCosts, Workload, rehearse

#: Seconds every move spends besides sending data: the child's pre-flight checks (connect,
#: facts, shared-storage probe), creating the job, libvirt's set-up and the final
#: verification on both hosts. Measured in the lab (docs/benchmarks.md, E1). The part of it
#: inside the migration (set-up, switch-over) is the rehearsal's FixedCosts.
LIVE_OVERHEAD_S = 3.0
_DEFAULT_FIXED = FixedCosts()
_OUTSIDE_THE_MIGRATION_S = LIVE_OVERHEAD_S - _DEFAULT_FIXED.setup_s - _DEFAULT_FIXED.finish_s
#: A cold move also defines the VM, starts it on the destination and waits for it to run.
COLD_OVERHEAD_S = 4.0
#: Of those seconds, what a fleet move's child spends before its first byte crosses the
#: link: the process starts, connects to both hosts, checks again what can have changed
#: (trusted_checks.py), takes the VM's lease and creates its job; libvirt sets up. E1 in the
#: lab (docs/benchmarks.md) saw 2.5-4.1 s from a child's start to its first sample as the
#: fleet reads it (median 3.5 s, 0.5 s polls on both sides) and finishes shorter than the
#: 1 s here: the split is a first guess, their sum predicted E1's moves within 1 %. The
#: scheduler does not rely on it: it times the next move by what this job's children took.
#: A child alone in the lab (trusted checks, 256 MiB guest, two runs): Python and imports
#: 0.55-0.60 s, re-checks, connections, job 0.05 s, the lease's settle 0.51 s, then libvirt
#: (destination QEMU, TLS) until QEMU's first bytes, about 1.7 s from its start.
SETUP_S = 2.0
LIVE_FINISH_S = LIVE_OVERHEAD_S - SETUP_S
COLD_FINISH_S = COLD_OVERHEAD_S - SETUP_S
#: Streams fit on a link when they ask at most this much more than it carries (the probe
#: reads ±30 % from run to run: a few percent over is one link, not two).
LINK_SLACK = 0.05


@dataclass(frozen=True)
class MoveCost:
    """What one move costs at one bandwidth."""

    seconds: float
    downtime_ms: float
    bytes_sent: int
    converges: bool
    how: str  # the route: precopy | raise-downtime | postcopy | auto-converge | abort | cold
    guest_gap_ms: float | None = None


@dataclass(frozen=True)
class LiveModel:
    """The policy the fleet's moves run under: `live`'s default preset, as `live` would
    run it with these overrides (None: the preset's own)."""

    policy: str = DEFAULT_POLICY
    max_downtime_ms: int | None = None
    postcopy_allowed: bool | None = None

    def config(self) -> PolicyConfig:
        return PRESETS[self.policy].with_limits(
            max_downtime_ms=self.max_downtime_ms, postcopy=self.postcopy_allowed
        )


def live_cost(
    memory_bytes: int,
    dirty_rate_bps: float,
    bandwidth_bps: float,
    model: LiveModel,
    disk_bytes: int = 0,
) -> MoveCost:
    # libvirt reports QEMU's dirty-rate measurement in whole MiB/s: steps of 1 MiB/s lose
    # nothing and let a plan of thousands of VMs reuse the model's answers.
    step = 1024 * 1024
    return _live_cost(
        memory_bytes, round(dirty_rate_bps / step) * step, bandwidth_bps, model, disk_bytes
    )


@functools.lru_cache(maxsize=65536)
def _live_cost(
    memory_bytes: int,
    dirty_rate_bps: float,
    bandwidth_bps: float,
    model: LiveModel,
    disk_bytes: int,
) -> MoveCost:
    load = Workload(max(memory_bytes, 1), max(dirty_rate_bps, 0.0))
    run = rehearse(load, bandwidth_bps, model.config(), _DEFAULT_FIXED, disk_bytes=disk_bytes)
    return MoveCost(
        run.total_s + _OUTSIDE_THE_MIGRATION_S,
        run.downtime_ms if run.downtime_ms is not None else math.nan,
        run.bytes_sent,
        run.outcome == "completed",
        run.route,
        run.guest_gap_ms,
    )


def cold_cost(disk_bytes: int, bandwidth_bps: float) -> MoveCost:
    return MoveCost(
        disk_bytes / bandwidth_bps + COLD_OVERHEAD_S, math.nan, disk_bytes, True, "cold"
    )


def link_free(source: str, solo: bool, running: Iterable[tuple[str, bool]]) -> bool:
    """A move out of `source` may start beside the `running` moves (source, solo): neither
    it nor a running move out of the same source must have that source's link to itself."""
    same = [running_solo for running_source, running_solo in running if running_source == source]
    return not same or not (solo or any(same))


@dataclass(frozen=True)
class Scheduled:
    """One move as the simulation ran it."""

    index: int
    start_s: float
    end_s: float
    cost: MoveCost  # at the bandwidth share it started with


def simulate(
    costs_at: Sequence[Callable[[float], MoveCost]],
    hosts: Sequence[tuple[str, str]],
    bandwidth_bps: float,
    max_parallel: int,
    max_per_host: int,
    solo: Sequence[bool] | None = None,
) -> list[Scheduled]:
    """Run the moves in order under the limits (a move starts when a slot is free in all,
    on its source and on its destination), the moves out of one source sharing that
    source's `bandwidth_bps`.

    `costs_at[i](bandwidth)` is move i's cost at that bandwidth; `hosts[i]` its (source,
    destination). A move marked `solo` runs with no other move out of its source. Returns
    when each move starts and ends."""
    alone = list(solo) if solo is not None else [False] * len(costs_at)
    pending = list(range(len(costs_at)))
    running: dict[int, float] = {}  # index -> fraction done
    busy: dict[str, int] = {}  # host -> moves in flight into or out of it
    started: dict[int, tuple[float, MoveCost]] = {}
    memo: dict[tuple[int, int], MoveCost] = {}  # (move, moves sharing its source) -> cost
    done: list[Scheduled] = []
    now = 0.0

    def cost(i: int, sharing: int) -> MoveCost:
        if (i, sharing) not in memo:
            memo[i, sharing] = costs_at[i](bandwidth_bps / sharing)
        return memo[i, sharing]

    while pending or running:
        still: list[int] = []
        for index in pending:
            source, destination = hosts[index]
            if (
                len(running) < max_parallel
                and busy.get(source, 0) < max_per_host
                and busy.get(destination, 0) < max_per_host
                and link_free(source, alone[index], ((hosts[i][0], alone[i]) for i in running))
            ):
                running[index] = 0.0
                busy[source] = busy.get(source, 0) + 1
                busy[destination] = busy.get(destination, 0) + 1
            else:
                still.append(index)
            if len(running) >= max_parallel:
                still += pending[pending.index(index) + 1 :]
                break
        pending = still
        if not running:  # nothing can start: the limits admit no move (never with limits >= 1)
            break
        out_of: dict[str, int] = {}
        for i in running:
            out_of[hosts[i][0]] = out_of.get(hosts[i][0], 0) + 1
        costs = {i: cost(i, out_of[hosts[i][0]]) for i in running}
        speeds = {i: 1.0 / max(c.seconds, 1e-6) for i, c in costs.items()}
        for i, c in costs.items():
            if i not in started:
                started[i] = (now, c)
        step = min((1.0 - running[i]) / speeds[i] for i in running)
        now += step
        for i in list(running):
            running[i] += speeds[i] * step
            if running[i] >= 1.0 - 1e-9:
                del running[i]
                for host in hosts[i]:
                    busy[host] -= 1
                first, first_cost = started[i]
                done.append(Scheduled(i, first, now, first_cost))
    return sorted(done, key=lambda s: s.index)


@dataclass(frozen=True)
class LinkClaim:
    """A move as the links see it: its hosts, the most its streams carry, and how many
    seconds from now it will still be sending (what is left of its set-up plus its transfer;
    0 once its last byte went)."""

    source: str
    destination: str
    stream_bps: float
    busy_for_s: float
    solo: bool = False

    def shares_a_link(self, other: LinkClaim) -> bool:
        return bool({self.source, self.destination} & {other.source, other.destination})


def link_ready(
    candidate: LinkClaim, others: Iterable[LinkClaim], lead_s: float, bandwidth_bps: float
) -> bool:
    """The candidate may start its set-up now: by the time it is ready to send (`lead_s`
    from now), the moves still sending over its source's or its destination's link leave
    room for its streams, and neither it nor one of them must have the link to itself."""
    sending = [o for o in others if o.busy_for_s > lead_s and o.shares_a_link(candidate)]
    if not sending:
        return True
    if candidate.solo or any(o.solo for o in sending):
        return False
    asked = candidate.stream_bps + sum(o.stream_bps for o in sending)
    return asked <= bandwidth_bps * (1 + LINK_SLACK)


@dataclass(frozen=True)
class FleetMove:
    """One move for `simulate_fleet`: its cost at a bandwidth, its hosts, the seconds of its
    set-up and finish (no link), and the most its streams carry."""

    cost_at: Callable[[float], MoveCost]
    source: str
    destination: str
    setup_s: float
    finish_s: float
    stream_bps: float
    solo: bool = False

    def transfer_s(self, bandwidth_bps: float) -> float:
        """Seconds it holds the link at this bandwidth (its cost less set-up and finish)."""
        cost = self.cost_at(bandwidth_bps)
        return max(cost.seconds - self.setup_s - self.finish_s, MIN_TRANSFER_S)


#: The shortest transfer the simulation counts (a cold move of a VM without local disks
#: sends nothing but still holds its slot for an instant).
MIN_TRANSFER_S = 0.05
_PENDING, _SETUP, _SENDING, _FINISH, _DONE = range(5)


@dataclass
class _Flight:
    """Where one move is in `simulate_fleet`."""

    stage: int = _PENDING
    stage_ends: float = 0.0  # set-up and finish: when they end
    done: float = 0.0  # sending: the share of its transfer sent
    started: float = 0.0
    cost: MoveCost | None = None


def simulate_fleet(
    moves: Sequence[FleetMove], bandwidth_bps: float, max_parallel: int, max_per_host: int
) -> list[Scheduled]:
    """Run the moves in order as the scheduler does: a move starts when the limits have a
    slot for its child (in all, on its source, on its destination) and `link_ready` says its
    first byte will find room on its links; moves sending over one host's link share it
    (each gets at most its streams' rate). Returns when each move starts and ends."""
    flights = [_Flight() for _ in moves]
    memo: dict[tuple[int, int], float] = {}
    now = 0.0
    leads = sorted({m.setup_s for m in moves})

    def transfer_s(i: int, rate: float) -> float:
        key = (i, round(rate))
        if key not in memo:
            memo[key] = moves[i].transfer_s(rate)
        return memo[key]

    def rates(active: list[int]) -> dict[int, float]:
        sending = [i for i in active if flights[i].stage == _SENDING]
        out_of: dict[str, int] = {}
        into: dict[str, int] = {}
        for i in sending:
            out_of[moves[i].source] = out_of.get(moves[i].source, 0) + 1
            into[moves[i].destination] = into.get(moves[i].destination, 0) + 1
        return {
            i: min(
                moves[i].stream_bps,
                bandwidth_bps / out_of[moves[i].source],
                bandwidth_bps / into[moves[i].destination],
            )
            for i in sending
        }

    def busy_for(i: int, rate: dict[int, float]) -> float:
        flight, move = flights[i], moves[i]
        if flight.stage == _SETUP:
            alone = min(move.stream_bps, bandwidth_bps)
            return flight.stage_ends - now + transfer_s(i, alone)
        if flight.stage == _SENDING:
            return (1.0 - flight.done) * transfer_s(i, rate[i])
        return 0.0

    pending = list(range(len(moves)))
    active: list[int] = []  # in set-up, sending or finishing
    for _guard in range(100 * len(moves) + 100):
        active = [i for i in active if flights[i].stage != _DONE]
        if not pending and not active:
            break
        busy: dict[str, int] = {}
        for i in active:
            for host in (moves[i].source, moves[i].destination):
                busy[host] = busy.get(host, 0) + 1
        rate = rates(active)
        claims = [
            LinkClaim(m.source, m.destination, m.stream_bps, busy_for(i, rate), m.solo)
            for i in active
            for m in (moves[i],)
        ]
        blocked: set[tuple[str, str, float, float, bool]] = set()
        still: list[int] = []
        for position, index in enumerate(pending):
            if len(active) >= max_parallel:
                still += pending[position:]
                break
            move = moves[index]
            key = (move.source, move.destination, move.setup_s, move.stream_bps, move.solo)
            if (
                busy.get(move.source, 0) >= max_per_host
                or busy.get(move.destination, 0) >= max_per_host
                or key in blocked
            ):
                still.append(index)
                continue
            claim = LinkClaim(move.source, move.destination, move.stream_bps, 0.0, move.solo)
            if not link_ready(claim, claims, move.setup_s, bandwidth_bps):
                blocked.add(key)
                still.append(index)
                continue
            flights[index] = _Flight(_SETUP, now + move.setup_s, 0.0, now)
            active.append(index)
            for host in (move.source, move.destination):
                busy[host] = busy.get(host, 0) + 1
            claims.append(
                LinkClaim(
                    move.source, move.destination, move.stream_bps, busy_for(index, rate), move.solo
                )
            )
        pending = still
        if not active:  # the limits admit no move (never with limits >= 1)
            break
        # the next thing that happens: a stage ends, or a waiting move's link frees up
        steps = [flights[i].stage_ends - now for i in active if flights[i].stage != _SENDING]
        steps += [(1.0 - flights[i].done) * transfer_s(i, r) for i, r in rate.items()]
        if pending:
            steps += [c.busy_for_s - lead for c in claims for lead in leads if c.busy_for_s > lead]
        step = max(min(steps), 1e-6)  # float rounding must not stall the clock
        now += step
        for i, r in rate.items():
            flight = flights[i]
            if flight.cost is None:
                flight.cost = moves[i].cost_at(r)
            flight.done += step / transfer_s(i, r)
            if flight.done >= 1.0 - 1e-9:
                flight.stage, flight.stage_ends = _FINISH, now + moves[i].finish_s
        for i in active:
            flight = flights[i]
            if flight.stage == _SETUP and flight.stage_ends <= now + 1e-9:
                flight.stage = _SENDING
            elif flight.stage == _FINISH and flight.stage_ends <= now + 1e-9:
                flight.stage = _DONE
                flight.stage_ends = now
    return [
        Scheduled(
            i,
            f.started,
            f.stage_ends,
            f.cost or m.cost_at(min(m.stream_bps, bandwidth_bps)),
        )
        for i, (f, m) in enumerate(zip(flights, moves, strict=True))
        if f.stage == _DONE
    ]
