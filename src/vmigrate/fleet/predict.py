"""How long one move takes, and how long moves that share a link take together (pure).

A live move is predicted by the very simulation `vmigrate estimate` runs (live/rehearsal.py:
live's own policy, with live's defaults, over the modelled migration) at the bandwidth it
gets; local disks copied with the memory add their allocated bytes first. A cold move sends
the disks' allocated bytes. Every move also pays what a move run by the fleet costs beyond
the migration itself (its own pre-flight checks, creating the job, verifying), measured in
the lab.

Moves out of one host share that host's link: the simulation gives each of the k moves in
flight 1/k of the bandwidth and recomputes their speed whenever one starts or ends.
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
