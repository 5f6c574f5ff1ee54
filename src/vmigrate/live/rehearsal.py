"""What `vmigrate live` will do, before it starts: its own policy run over a modelled move.

Pure. The migration is modelled as QEMU runs it. Pass 1 sends the guest's memory; the guest
meanwhile dirties ``min(D * t, W)`` distinct bytes (rate D, working set W), slowed by
auto-converge's throttle. QEMU syncs its dirty bitmap (a new pass) whenever what is left of
the current pass fits in the downtime limit, and switches over when what is left plus what
was dirtied since fits too. At the start of each pass from the second on, the simulation
hands `live.policy.decide` the sample the monitor would see, and applies what it returns
(a raised limit, post-copy, auto-converge, an abort). The route and the passes are the
policy's own decisions: change the policy or a default, and `estimate`, the fleet's plans
and `live` follow together.

Time is fixed costs (set-up before the first byte, switch-over and verification after the
last; learned per host pair from finished jobs, see `FixedCosts`) plus bytes / bandwidth.

What the guest feels, besides libvirt's downtime (both measured in the lab, docs/benchmarks.md):
* pre-copy: the heartbeat's largest gap is libvirt's downtime plus ``PRECOPY_GAP_EXTRA_MS``
  (the vCPUs stop before and start after the part libvirt counts), plus
  ``STORAGE_SWITCH_EXTRA_MS`` when disks are copied along;
* post-copy: see `live.postcopy_cost`. libvirt's pause is a few ms, but the destination starts
  the guest only once the device state has crossed behind the memory already on the link,
  and the guest then waits for every page it touches that is still on the source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from vmigrate.estimate import mib
from vmigrate.live.policy import (
    Action,
    PolicyConfig,
    PolicyState,
    decide,
    initial_state,
)
from vmigrate.live.postcopy_cost import POSTCOPY_PAUSE_MS, postcopy_gap_ms
from vmigrate.live.samples import JobSample

#: libvirt's downtime beyond the bytes of the stop-and-copy (device state, the final sync
#: and handshake): an idle guest's pre-copy measured 35-54 ms in the lab (L1), the switch to
#: post-copy 2-5 ms (L2, L3).
PAUSE_OVERHEAD_MS = 35.0
#: The heartbeat's largest gap beyond libvirt's downtime in pre-copy (lab, L1: 23-74 ms
#: more than libvirt's downtime, median 32).
PRECOPY_GAP_EXTRA_MS = 30.0
#: With --copy-storage the guest stays paused beyond that while libvirt completes the disks'
#: mirror. S1's heartbeat gap exceeded libvirt's downtime by 84 and 68 ms in one run and by
#: 26 and 37 ms in the next (bench/results/storage-estimate.json, now and before): the
#: median, 52 ms, is 22 ms more than PRECOPY_GAP_EXTRA_MS. The spread is wider than #29's
#: ±25 % aim for gaps of ~100 ms.
STORAGE_SWITCH_EXTRA_MS = 22.0
#: What a guest dirties with a whole vCPU to itself, for the throttle's effect: the lab's
#: guest dirtied ~10 MiB/s with 1 % left (L4, throttle 99 %).
THROTTLED_DIRTY_BPS = 1000 * 1024 * 1024
#: QEMU's CPU throttle runs a vCPU in slices of this length, then sleeps it
#: (softmmu/cpu-throttle.c, CPU_THROTTLE_TIMESLICE_NS).
CPU_THROTTLE_SLICE_S = 0.010
#: QEMU's auto-converge trigger: a sync period that dirtied more than this share of what
#: it sent counts as "high"; every second high period raises the throttle.
THROTTLE_TRIGGER_SHARE = 0.5
#: How long into a pass the policy acts: at once, from libvirt's event as the pass begins
#: (live/monitor.py), after one job-statistics call.
DECISION_LAG_S = 0.01
#: QEMU sends in rate-limit windows of this length and checks for the switch-over between.
CHECK_WINDOW_S = 0.1
#: QEMU's reported dirty rate over the distinct bytes dirtied per second of the period
#: (L4: 104 MiB/s for 383 MiB over 4.0 s; the L2 trace: 99.8 MiB/s for 352 MiB over 4.3 s).
RATE_AS_QEMU_COUNTS = 1.15
#: QEMU recomputes its dirty rate only over sync periods at least this long.
RATE_PERIOD_S = 1.0
#: Simulation horizon (passes); the policy itself stops a run at its max_passes.
HORIZON_PASSES = 2000

#: Until finished moves of the pair teach better: the lab's, learned from a pre-copy move
#: of the lab test (tests/lab/test_estimate.py; post-copy moves finish later, ~1.8 s).
DEFAULT_SETUP_S = 0.5
DEFAULT_FINISH_S = 1.3
DEFAULT_POSTCOPY_FINISH_S = 1.8  # L2, L3 in the lab


@dataclass(frozen=True)
class Workload:
    """How the guest dirties memory: ``min(rate * t, working_set)`` distinct bytes in t s."""

    memory_bytes: int
    dirty_rate_bps: float
    working_set_bytes: int | None = None  # None: all of memory
    # What the guest has touched (its QEMU's resident memory): pass 1 sends untouched pages
    # as zero-page markers, almost free. None: all of memory.
    touched_bytes: int | None = None

    @property
    def first_pass_bytes(self) -> int:
        touched = self.memory_bytes if self.touched_bytes is None else self.touched_bytes
        return min(self.memory_bytes, max(touched, self.working_set_bytes or 0))

    def pending(self, unsent: float, seconds: float, throttle_pct: int = 0) -> float:
        """What QEMU's bitmap holds after a sync: the pass's unsent pages and those dirtied
        since, one set. Both lie in the working set, so together they fill it at most (L4:
        every pass from the second on was the 384 MiB working set, whatever the limit kept
        back)."""
        ws = float(self.memory_bytes if self.working_set_bytes is None else self.working_set_bytes)
        return min(unsent + self.dirtied(seconds, throttle_pct), max(ws, unsent))

    def dirtied(self, seconds: float, throttle_pct: int = 0) -> float:
        ws = self.working_set_bytes
        limit = float(self.memory_bytes if ws is None else ws)
        # A throttled vCPU still dirties at the workload's own rate while the CPU time it
        # keeps suffices (measured: the lab's 200 MiB/s guest slowed only at 99 %).
        rate = min(self.dirty_rate_bps, (1.0 - throttle_pct / 100.0) * THROTTLED_DIRTY_BPS)
        return min(rate * max(seconds, 0.0), limit, float(self.memory_bytes))


@dataclass(frozen=True)
class FixedCosts:
    """Seconds a move spends besides sending memory: before the first byte (libvirt and
    QEMU setting up the destination) and after the last (switch-over, finish, verifying
    where the VM runs). `learned_from`: finished jobs of this host pair they come from."""

    setup_s: float = DEFAULT_SETUP_S
    finish_s: float = DEFAULT_FINISH_S
    learned_from: int = 0
    # A move that switched to post-copy finishes later (the destination fetches the last
    # pages, libvirt confirms the post-copy's end).
    postcopy_finish_s: float = DEFAULT_POSTCOPY_FINISH_S

    def describe(self) -> str:
        where = (
            f"learned from {self.learned_from} finished move(s) of this host pair"
            if self.learned_from
            else "the lab's defaults: no finished move of this host pair yet"
        )
        return (
            f"set-up {self.setup_s:.1f} s, switch-over and finish {self.finish_s:.1f} s "
            f"({self.postcopy_finish_s:.1f} s after post-copy; {where})"
        )


@dataclass(frozen=True)
class PlannedAction:
    """One action the policy will take, at the pass and time the simulation reached it."""

    pass_no: int
    at_s: float
    kind: str
    value: float | None
    reason: str

    def describe(self) -> str:
        if self.kind == "set-downtime" and self.value is not None:
            return f"pass {self.pass_no}: raise max downtime to {self.value:g} ms"
        if self.kind == "postcopy":
            return f"pass {self.pass_no}: switch to post-copy"
        if self.kind == "abort":
            return f"pass {self.pass_no}: abort (the VM stays on the source)"
        return f"pass {self.pass_no}: let QEMU throttle the guest (auto-converge)"


@dataclass(frozen=True)
class LivePrediction:
    route: str  # precopy | raise-downtime | auto-converge | postcopy | abort | unfinished
    outcome: str  # completed | aborted | unfinished
    total_s: float
    passes: int
    downtime_ms: float | None  # libvirt's, None when the move does not finish
    guest_gap_ms: float | None  # the largest gap the guest feels
    bytes_sent: int
    postcopy_s: float  # seconds the guest runs on the destination while pages arrive
    actions: tuple[PlannedAction, ...]
    policy: str
    bandwidth_bps: float
    dirty_rate_bps: float
    working_set_bytes: int | None
    costs: FixedCosts

    def timeline(self) -> str:
        """When the policy acts, e.g. "pass 3: raise max downtime to 60 ms; pass 5: switch
        to post-copy"."""
        return "; ".join(a.describe() for a in self.actions if a.reason) or "no action needed"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "timeline": self.timeline()}


def route_of(action_kinds: Iterable[str]) -> str:
    """The route a run took (or will take), from its policy's actions in order (kinds, or
    the store's labels such as "set-downtime 650")."""
    kinds = [kind.split()[0] for kind in action_kinds if kind.strip()]
    for kind, route in (("abort", "abort"), ("postcopy", "postcopy"), ("note", "auto-converge")):
        if kind in kinds:
            return route
    return "raise-downtime" if "set-downtime" in kinds else "precopy"


@dataclass
class _Run:
    """The simulation's running state."""

    config: PolicyConfig
    state: PolicyState
    elapsed: float
    bandwidth_bps: float
    memory_bytes: int
    processed: float = 0.0
    iteration: int = 1
    throttle: int = 0
    high_periods: int = 0
    rate: float = 0.0
    samples: list[JobSample] | None = None
    planned: list[PlannedAction] | None = None
    reading_factor: float = 1.0  # the policy's reading of the link over the stream's rate


def rehearse(
    load: Workload,
    bandwidth_bps: float,
    config: PolicyConfig,
    costs: FixedCosts | None = None,
    *,
    latency_ms: float = 0.0,
    disk_bytes: int = 0,
    tcg: bool = False,
    link_reading_factor: float = 1.0,
) -> LivePrediction:
    """Run `config`'s policy over the modelled migration of `load` at `bandwidth_bps`.

    `disk_bytes`: local disks copied along (--copy-storage); QEMU mirrors them before
    memory's first pass. `tcg`: the guest runs under QEMU's TCG (the domain's type "qemu"),
    where each sync of the dirty bitmap waits on the vCPUs (throttled_sync_wait_s).
    `link_reading_factor`: the policy reads the link this much above or below the stream's
    rate (its median of QEMU's latest samples)."""
    if bandwidth_bps <= 0:
        raise ValueError(f"bandwidth_bps must be > 0, got {bandwidth_bps}")
    costs = costs or FixedCosts()
    b = bandwidth_bps
    run = _Run(
        config,
        initial_state(config),
        costs.setup_s + disk_bytes / b,
        b,
        load.memory_bytes,
        processed=float(disk_bytes),
        samples=[],
        planned=[],
        reading_factor=link_reading_factor,
    )
    size = float(load.first_pass_bytes)  # what the current pass has to send
    since_pass = 0.0  # seconds since the dirty bitmap was last synced
    pass_time = 0.0

    def finish(route: str, outcome: str, syncs_after: int, **figures: Any) -> LivePrediction:
        return LivePrediction(
            route=route,
            outcome=outcome,
            passes=run.iteration + syncs_after,
            actions=tuple(run.planned or ()),
            policy=config.name,
            bandwidth_bps=b,
            dirty_rate_bps=load.dirty_rate_bps,
            working_set_bytes=load.working_set_bytes,
            costs=costs,
            **figures,
        )

    kinds: list[str] = []
    for _ in range(HORIZON_PASSES):
        limit_bytes = run.state.downtime_ms / 1000.0 * b
        # QEMU syncs once what is left of this pass fits in the limit; it checks between
        # rate-limit windows, on average half a window's bytes below it.
        send = max(size - max(limit_bytes - 0.5 * CHECK_WINDOW_S * b, 0.0), 0.0)
        t = send / b
        timeout = _timeout_inside(run, t)
        if timeout is not None:
            run.elapsed += timeout
            run.processed += timeout * b
            left = load.pending(size - timeout * b, since_pass + timeout, run.throttle)
            acted = _ask_policy(run, left, kinds, mid_pass=True)
            if acted is not None:
                return _ended(acted, run, left, load, costs, latency_ms, kinds, finish)
            t, send = t - timeout, send - timeout * b
        run.elapsed += t
        run.processed += send
        pass_time += t
        since_pass += t
        left = load.pending(size - send, since_pass, run.throttle)
        if left <= limit_bytes:  # stop-and-copy
            downtime = left / b * 1000.0 + PAUSE_OVERHEAD_MS
            run.processed += left
            return finish(
                route_of(kinds),
                "completed",
                2,  # QEMU counts the sync that found it small enough, and the final one
                total_s=run.elapsed + left / b + costs.finish_s,
                downtime_ms=downtime,
                guest_gap_ms=downtime
                + PRECOPY_GAP_EXTRA_MS
                + (STORAGE_SWITCH_EXTRA_MS if disk_bytes else 0.0),
                bytes_sent=round(run.processed),
                postcopy_s=0.0,
            )
        # A sync: a new pass of what is left plus what was dirtied.
        dirtied = load.dirtied(since_pass, run.throttle)
        if since_pass >= RATE_PERIOD_S:
            # QEMU counts the pages its bitmap sees newly dirtied over the period: the
            # distinct rate, a little over it in the lab's recorded runs.
            run.rate = min(RATE_AS_QEMU_COUNTS * dirtied / since_pass, load.dirty_rate_bps)
            _throttle_after_sync(run, dirtied, pass_time * b)
        run.iteration += 1
        size, since_pass, pass_time = left, 0.0, 0.0
        if tcg:
            # Under TCG the sync, its bitmap read, then waits for each vCPU to come out of
            # the throttle's sleep: time passes, nothing is sent, the sleeping vCPU dirties
            # nothing (its throttled rate already averages its sleep in).
            run.elapsed += throttled_sync_wait_s(run.throttle)
        acted = _ask_policy(run, size, kinds, mid_pass=False)
        if acted is not None:
            return _ended(acted, run, size, load, costs, latency_ms, kinds, finish)
    return finish(
        "unfinished",
        "unfinished",
        0,
        total_s=run.elapsed,
        downtime_ms=None,
        guest_gap_ms=None,
        bytes_sent=round(run.processed),
        postcopy_s=0.0,
    )


#: How far the policy's reading of the link against the dirty rate strays from the estimate's:
#: its median of QEMU's latest samples read 113-125 MiB/s over the lab's 119 MiB/s link, and
#: QEMU's dirty rate at the first sync 50 MiB/s where the estimate read 51-54 (G1).
LINK_READING_SPREAD = 0.10


def boundary_alternative(
    load: Workload,
    bandwidth_bps: float,
    config: PolicyConfig,
    costs: FixedCosts | None,
    prediction: LivePrediction,
    **options: Any,
) -> LivePrediction | None:
    """The other route live takes if the policy reads the link LINK_READING_SPREAD lower or
    higher than the stream gets, when one does: the guest sits on the policy's boundary
    and either route may come (G1 took post-copy once and a raised limit once)."""
    for factor in (1.0 - LINK_READING_SPREAD, 1.0 + LINK_READING_SPREAD):
        other = rehearse(load, bandwidth_bps, config, costs, link_reading_factor=factor, **options)
        if other.route != prediction.route:
            return other
    return None


def throttled_sync_wait_s(throttle_pct: int) -> float:
    """How long a sync of the dirty bitmap waits under TCG with the vCPUs throttled.

    QEMU's TCG flushes each vCPU's TLB after a sync and waits for the vCPU to run it; a
    throttled vCPU sleeps ``pct / (100 - pct)`` of the throttle's 10 ms time slice between
    slices of running: 15 ms at 60 %, 40 ms at 80 %, 990 ms at 99 %. The lab's L4 (TCG,
    throttle at 99 %) synced about once a second, sending 0-38 MiB between syncs, for its
    last 2.5 s of pre-copy; KVM's sync reads the kernel's log and does not wait."""
    if throttle_pct <= 0:
        return 0.0
    pct = min(throttle_pct, 99)
    return pct / (100 - pct) * CPU_THROTTLE_SLICE_S


def _timeout_inside(run: _Run, pass_s: float) -> float | None:
    """Seconds into this pass at which the policy's --timeout falls, if it does."""
    timeout = run.config.timeout_s
    if timeout is None or run.elapsed >= timeout or run.elapsed + pass_s < timeout:
        return None
    return timeout - run.elapsed


def _throttle_after_sync(run: _Run, dirtied: float, sent: float) -> None:
    """QEMU's auto-converge (enabled at the start by the policy): every second sync period
    that dirtied more than half of what it sent raises the throttle."""
    if not run.config.autoconverge_at_start or dirtied <= THROTTLE_TRIGGER_SHARE * sent:
        return
    run.high_periods += 1
    if run.high_periods < 2:
        return
    run.high_periods = 0
    run.throttle = (
        run.config.autoconverge_initial_pct
        if run.throttle == 0
        else min(run.throttle + run.config.autoconverge_increment_pct, 99)
    )


def _ask_policy(run: _Run, remaining: float, kinds: list[str], *, mid_pass: bool) -> str | None:
    """Hand the policy the sample the monitor would see; apply its actions. Returns
    "postcopy" or "abort" when the policy ends pre-copy."""
    assert run.samples is not None and run.planned is not None
    sample = JobSample(
        elapsed_s=run.elapsed if mid_pass else run.elapsed + DECISION_LAG_S,
        phase="precopy",
        iteration=run.iteration,
        memory_total=run.memory_bytes,
        memory_processed=round(run.processed),
        memory_remaining=round(remaining),
        bandwidth_bps=run.bandwidth_bps * run.reading_factor,
        dirty_rate_bps=run.rate,
        expected_downtime_ms=None,
        disk_total=0,
        disk_processed=0,
        disk_remaining=0,
        throttle_pct=run.throttle,
        postcopy_requests=0,
    )
    run.samples.append(sample)
    actions: list[Action] = decide(run.samples, run.config, run.state)
    run.state = run.state.after(actions, run.iteration, run.throttle)
    for action in actions:
        kinds.append(action.kind)
        run.planned.append(
            PlannedAction(run.iteration, sample.elapsed_s, action.kind, action.value, action.reason)
        )
    if run.state.postcopy:
        return "postcopy"
    if run.state.aborting:
        return "abort"
    return None


def _ended(
    how: str,
    run: _Run,
    remaining: float,
    load: Workload,
    costs: FixedCosts,
    latency_ms: float,
    kinds: list[str],
    finish: Callable[..., LivePrediction],
) -> LivePrediction:
    b = run.bandwidth_bps
    if how == "abort":
        return finish(
            "abort",
            "aborted",
            0,
            total_s=run.elapsed + costs.finish_s,
            downtime_ms=None,
            guest_gap_ms=None,
            bytes_sent=round(run.processed),
            postcopy_s=0.0,
        )
    switch = next(a for a in reversed(run.planned or ()) if a.kind == "postcopy")
    push = b if switch.value is None else min(b, switch.value * 1024 * 1024)
    post_s = remaining / push
    return finish(
        route_of(kinds),
        "completed",
        1,  # the sync that starts post-copy
        total_s=run.elapsed + post_s + costs.postcopy_finish_s,
        downtime_ms=POSTCOPY_PAUSE_MS,
        guest_gap_ms=postcopy_gap_ms(remaining, load.dirty_rate_bps, b, push, latency_ms),
        bytes_sent=round(run.processed + remaining),
        postcopy_s=post_s,
    )


def describe_load(load: Workload) -> str:
    ws = load.working_set_bytes
    return f"dirties {mib(load.dirty_rate_bps):.0f} MiB/s" + (
        f" over a {mib(ws):.0f} MiB working set" if ws is not None else ""
    )
