"""The convergence policy: pure decisions from samples, so every policy replays from a trace.

`decide(samples, config, state)` looks at the samples of a running migration and returns the
actions to take now. It decides once per pre-copy pass, from the second pass on (after the
first pass QEMU has measured the dirty rate), using the pre-copy model in `estimate.py`:
keep going, raise the downtime limit as far as needed (never beyond the user's maximum),
switch to post-copy, let auto-converge throttle the guest, or abort with a diagnosis.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Literal

from vmigrate.errors import UsageError
from vmigrate.estimate import Advice, PrecopyInput, advise, estimate_with_autoconverge, mib
from vmigrate.live.postcopy_cost import postcopy_gap_ms
from vmigrate.live.samples import JobSample

ActionKind = Literal["set-downtime", "set-bandwidth", "postcopy", "abort", "note"]
#: How many passes ahead the model must see convergence to call plain pre-copy good enough;
#: without post-copy to fall back on, more passes are worth waiting for.
LOOKAHEAD_PASSES = 4
LOOKAHEAD_PASSES_WITHOUT_POSTCOPY = 10
#: Wait a pre-copy pass more before post-copy when that pass would cut the guest's predicted
#: largest gap to this share of switching now (live/postcopy_cost.py).
WAIT_GAIN = 0.5
#: A pass at least this share of the one before makes no progress.
STUCK_RATIO = 0.9
#: Under auto-converge, give up once the throttle has been at its maximum for this many
#: passes and the passes no longer shrink.
PASSES_AT_FULL_THROTTLE = 4


@dataclass(frozen=True)
class PolicyConfig:
    name: str
    start_downtime_ms: int
    max_downtime_ms: int
    postcopy_allowed: bool
    autoconverge_allowed: bool
    timeout_s: float | None = None
    max_passes: int = 60
    # QEMU throttles only a guest that is not converging, so starting firm costs the others
    # nothing and spares a hopeless guest many passes (QEMU's own default is 20 % + 10 %).
    autoconverge_initial_pct: int = 60
    autoconverge_increment_pct: int = 20
    # No byte moved for this long before post-copy: the link is down or blocked. Aborting
    # then is safe (the VM keeps running on the source); TCP alone would wait for minutes.
    stall_s: float = 20.0
    # In post-copy, the share of the measured link QEMU's background push may take
    # (libvirt's post-copy bandwidth), so that the pages the guest faults on do not queue
    # behind it; None: QEMU's default, the whole link.
    postcopy_push_share: float | None = None

    def with_limits(
        self,
        *,
        max_downtime_ms: int | None = None,
        timeout_s: float | None = None,
        postcopy: bool | None = None,
    ) -> PolicyConfig:
        config = self
        if max_downtime_ms is not None:
            if max_downtime_ms <= 0:
                raise UsageError(f"--max-downtime {max_downtime_ms} ms must be positive")
            config = replace(
                config,
                max_downtime_ms=max_downtime_ms,
                start_downtime_ms=min(config.start_downtime_ms, max_downtime_ms),
            )
        if timeout_s is not None:
            if timeout_s <= 0:
                raise UsageError(f"--timeout {timeout_s} s must be positive")
            config = replace(config, timeout_s=timeout_s)
        if postcopy and not self.postcopy_allowed and self.name in POSTCOPY_FORBIDDEN:
            raise UsageError(
                f"--policy {self.name} never uses post-copy, so --allow-postcopy contradicts it",
                fix="use --policy fast for post-copy, or drop --allow-postcopy",
            )
        if postcopy is not None:
            config = replace(
                config,
                postcopy_allowed=postcopy,
                autoconverge_allowed=config.autoconverge_allowed or not postcopy,
            )
        return config

    @property
    def autoconverge_at_start(self) -> bool:
        # QEMU can only enable auto-converge when the migration starts. With post-copy at
        # hand the policy switches instead, so the guest is not throttled for nothing.
        return self.autoconverge_allowed and not self.postcopy_allowed


#: Presets whose whole point is to avoid post-copy (a broken link in post-copy needs recovery).
POSTCOPY_FORBIDDEN = ("safe", "strict")

#: What `live` and `estimate` run when no --policy is given.
DEFAULT_POLICY = "fast"

PRESETS = {
    # Finish fast with a short pause; post-copy when pre-copy cannot converge.
    "fast": PolicyConfig(
        "fast",
        start_downtime_ms=30,
        max_downtime_ms=500,
        postcopy_allowed=True,
        autoconverge_allowed=True,
    ),
    # Never post-copy (a broken link during post-copy needs recovery); throttle instead.
    "safe": PolicyConfig(
        "safe",
        start_downtime_ms=30,
        max_downtime_ms=1000,
        postcopy_allowed=False,
        autoconverge_allowed=True,
    ),
    # A short pause or nothing: no post-copy, no throttling, abort early with the reason.
    "strict": PolicyConfig(
        "strict",
        start_downtime_ms=30,
        max_downtime_ms=300,
        postcopy_allowed=False,
        autoconverge_allowed=False,
    ),
}


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    value: float | None
    reason: str
    at_s: float


@dataclass(frozen=True)
class PolicyState:
    downtime_ms: float
    postcopy: bool = False
    aborting: bool = False
    decided_iteration: int = 0
    full_throttle_passes: int = 0
    # The policy has said it leaves the guest to auto-converge's throttle (said once).
    throttle_noted: bool = False

    def after(
        self, actions: Sequence[Action], iteration: int, throttle_pct: int | None
    ) -> PolicyState:
        new_pass = iteration > self.decided_iteration
        state = replace(self, decided_iteration=max(self.decided_iteration, iteration))
        if new_pass and throttle_pct is not None and throttle_pct >= 99:
            state = replace(state, full_throttle_passes=state.full_throttle_passes + 1)
        for action in actions:
            if action.kind == "set-downtime" and action.value is not None:
                state = replace(state, downtime_ms=action.value)
            elif action.kind == "postcopy":
                state = replace(state, postcopy=True)
            elif action.kind == "note":
                state = replace(state, throttle_noted=True)
            elif action.kind == "abort":
                state = replace(state, aborting=True)
        return state


def initial_state(config: PolicyConfig) -> PolicyState:
    return PolicyState(downtime_ms=config.start_downtime_ms)


def _bandwidth(samples: Sequence[JobSample]) -> float:
    recent = [s.bandwidth_bps for s in samples[-6:] if s.bandwidth_bps > 0]
    return statistics.median(recent) if recent else 0.0


def _working_set(samples: Sequence[JobSample]) -> int:
    """The largest pass after the first: what the guest re-dirties, at most."""
    later = [s.memory_remaining for s in samples if s.iteration >= 2]
    return max(later) if later else 0


def _not_shrinking(samples: Sequence[JobSample]) -> bool:
    """Two passes in a row left nearly as much to send as the pass before: the guest
    re-dirties its whole working set each pass, whatever rate QEMU reports.

    QEMU's dirty rate counts distinct pages per pass, so for a guest that saturates its
    working set it reads about working-set / pass-time and understates the real rate.
    """
    starts: dict[int, int] = {}
    for sample in samples:
        if sample.iteration >= 2:
            starts.setdefault(sample.iteration, sample.memory_remaining)
    sizes = [starts[i] for i in sorted(starts)][-3:]
    return len(sizes) == 3 and all(b >= STUCK_RATIO * a for a, b in pairwise(sizes))


def stalled_for(samples: Sequence[JobSample]) -> float:
    """Seconds since the amount of data sent (memory and disks) last grew."""
    if not samples:
        return 0.0
    now = samples[-1]
    moved = next(
        (s for s in reversed(samples) if s.data_processed != now.data_processed), samples[0]
    )
    return now.elapsed_s - moved.elapsed_s


def postcopy_push_mib(bandwidth_bps: float, config: PolicyConfig) -> float | None:
    """The post-copy background rate (MiB/s) the policy sets at the switch, None for none."""
    if config.postcopy_push_share is None or bandwidth_bps <= 0:
        return None
    return float(max(1, round(config.postcopy_push_share * bandwidth_bps / (1 << 20))))


def _faults_fewer_after_a_pass(
    remaining: int, dirty_bps: float, bandwidth_bps: float, config: PolicyConfig
) -> bool:
    """Would one more pre-copy pass cut the guest's predicted largest post-copy gap to
    WAIT_GAIN of switching now? Only a guest slower than the link leaves less behind each
    pass; one fast enough to catch the push keeps its working set dirty."""
    if dirty_bps >= bandwidth_bps:
        return False
    mib = postcopy_push_mib(bandwidth_bps, config)
    push = bandwidth_bps if mib is None else min(bandwidth_bps, mib * (1 << 20))
    now = postcopy_gap_ms(remaining, dirty_bps, bandwidth_bps, push)
    later = postcopy_gap_ms(remaining * dirty_bps / bandwidth_bps, dirty_bps, bandwidth_bps, push)
    return later <= WAIT_GAIN * now


def _postcopy(samples: Sequence[JobSample], config: PolicyConfig, reason: str) -> Action:
    """Switch to post-copy; the action's value is the background push's rate, if held."""
    push = postcopy_push_mib(_bandwidth(samples), config)
    if push is not None:
        reason += (
            f"; background push held at {push:g} MiB/s so the pages the guest faults on "
            "do not queue behind it"
        )
    return Action("postcopy", push, reason, samples[-1].elapsed_s)


def decide(samples: Sequence[JobSample], config: PolicyConfig, state: PolicyState) -> list[Action]:
    if not samples or state.postcopy or state.aborting:
        return []
    now = samples[-1]
    # Before the first byte the destination may still be starting QEMU (preallocating a
    # large guest's memory, say): give that longer before calling the link dead.
    stall_limit = config.stall_s if now.data_processed > 0 else max(60.0, 3 * config.stall_s)
    if stalled_for(samples) >= stall_limit:
        return [
            Action(
                "abort",
                None,
                f"nothing reached the destination for {stall_limit:g} s: the link is "
                "down or blocked (a firewall on the migration ports?); aborting, "
                "the VM stays on the source",
                now.elapsed_s,
            )
        ]
    if config.timeout_s is not None and now.elapsed_s >= config.timeout_s:
        why = f"not finished after {config.timeout_s:g} s (--timeout)"
        if config.postcopy_allowed:
            return [_postcopy(samples, config, f"{why}: switching to post-copy")]
        return [
            Action("abort", None, f"{why}: aborting; the VM stays on the source", now.elapsed_s)
        ]
    if now.phase != "precopy" or now.iteration < 2 or now.iteration <= state.decided_iteration:
        return []
    throttled_out = state.full_throttle_passes >= PASSES_AT_FULL_THROTTLE and _not_shrinking(
        samples
    )
    if now.iteration > config.max_passes or throttled_out:
        why = (
            f"{now.iteration} passes"
            if now.iteration > config.max_passes
            else "the guest is throttled to the maximum"
        )
        if config.postcopy_allowed:
            return [
                _postcopy(
                    samples, config, f"{why} and still not converging: switching to post-copy"
                )
            ]
        return [
            Action(
                "abort",
                None,
                f"{why} and still not converging under "
                f"{state.downtime_ms:g} ms: aborting; the VM stays on the source",
                now.elapsed_s,
            )
        ]
    bandwidth = _bandwidth(samples)
    if bandwidth <= 0 or now.memory_remaining <= 0:
        return []
    dirty = now.dirty_rate_bps
    if _not_shrinking(samples):
        dirty = max(dirty, bandwidth)
    model = PrecopyInput(
        memory_bytes=now.memory_remaining,
        dirty_rate_bps=dirty,
        bandwidth_bps=bandwidth,
        max_downtime_ms=state.downtime_ms,
        working_set_bytes=max(_working_set(samples), 1),
        max_passes=LOOKAHEAD_PASSES
        if config.postcopy_allowed
        else LOOKAHEAD_PASSES_WITHOUT_POSTCOPY,
    )
    advice = advise(
        model,
        allowed_max_downtime_ms=config.max_downtime_ms,
        postcopy_allowed=config.postcopy_allowed,
        autoconverge_allowed=config.autoconverge_at_start,
    )
    if advice.action == "abort" and config.autoconverge_at_start:
        throttled, _pct = estimate_with_autoconverge(
            replace(model, max_downtime_ms=config.max_downtime_ms, max_passes=config.max_passes)
        )
        if throttled.converges:
            advice = Advice("auto-converge", config.max_downtime_ms, advice.reason)
    reason = f"pass {now.iteration}: {advice.reason}"
    if (
        advice.action == "raise-downtime"
        and advice.downtime_ms is not None
        and advice.downtime_ms > state.downtime_ms
    ):
        return [Action("set-downtime", advice.downtime_ms, reason, now.elapsed_s)]
    if advice.action == "postcopy":
        if _faults_fewer_after_a_pass(now.memory_remaining, dirty, bandwidth, config):
            return []  # decided again at the next pass, with less left to fault on
        return [_postcopy(samples, config, reason)]
    if advice.action == "auto-converge":
        actions = (
            [
                Action(
                    "note",
                    None,
                    f"{reason}; QEMU throttles the guest (auto-converge)",
                    now.elapsed_s,
                )
            ]
            # Once, whether or not QEMU has throttled yet: the sample that shows it may come
            # a pass late, and the route must not depend on that race (L4 took either).
            if not state.throttle_noted
            else []
        )
        if state.downtime_ms < config.max_downtime_ms:
            actions.append(
                Action(
                    "set-downtime",
                    float(config.max_downtime_ms),
                    "let a throttled guest finish sooner",
                    now.elapsed_s,
                )
            )
        return actions
    if advice.action == "abort":
        return [Action("abort", None, f"{reason}; the VM stays on the source", now.elapsed_s)]
    return []


def describe_rates(sample: JobSample) -> str:
    return (
        f"dirty {mib(sample.dirty_rate_bps):.0f} MiB/s, link {mib(sample.bandwidth_bps):.0f} MiB/s"
    )
