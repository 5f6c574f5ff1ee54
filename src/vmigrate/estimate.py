"""A pass-by-pass model of QEMU pre-copy live migration, and advice on how to finish it.

Pure arithmetic: no libvirt, no I/O. Units are bytes, bytes/s, seconds and milliseconds.

Modelling rules:

* Pass 1 sends all guest RAM M (minus ``already_sent_bytes``); pass k+1 sends what the guest
  dirtied during pass k. In a pass of t seconds the guest dirties ``min(D * t, W)`` distinct
  bytes (W = working set, default and cap M). ``already_sent_bytes`` describes a migration
  already in its first pass: only the rest of pass 1 is sent and timed, but the dirty bitmap
  has been filling since pass 1 began, so pass 2 is ``min(D * M / B, W)`` either way.
* After each pass QEMU switches over when the remaining dirty bytes R satisfy
  ``R / B <= max_downtime``; the guest then pauses for ``R / B + switchover_overhead``.
  The overhead is not part of QEMU's test, so the real pause can exceed the limit by it.
* QEMU itself never gives up; ``max_passes`` is the model's horizon. A run that has not
  converged after ``max_passes`` passes is reported as not converging.
* Auto-converge: pass 1 runs unthrottled; each pass after one that did not converge runs
  with the throttle at ``initial``, then ``+increment`` per pass, capped at ``max``; the
  dirty rate is scaled by ``1 - throttle``.
* Post-copy: after ``precopy_passes`` passes the guest moves to the destination after a
  pause of ``switchover_overhead``; the remaining dirty bytes R are then fetched at B (on
  demand + background; pages dirtied afterwards live at the destination and cost nothing).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

MIB = 1024 * 1024
DOWNTIME_STEP_MS = 50.0  # raised downtime limits are rounded up to this step
POSTCOPY_OVER_RAISE_FACTOR = 2.0  # prefer post-copy when the needed limit exceeds 2x the start
ADVISE_FEW_PASSES = 10  # advise: pre-copy (or a raised limit) must converge within this many

AdviceAction = Literal["precopy", "raise-downtime", "postcopy", "auto-converge", "abort"]


def mib(bytes_or_rate: float) -> float:
    """Bytes (or bytes/s) in MiB (or MiB/s)."""
    return bytes_or_rate / MIB


@dataclass(frozen=True)
class PrecopyInput:
    memory_bytes: int
    dirty_rate_bps: float
    bandwidth_bps: float
    max_downtime_ms: float
    working_set_bytes: int | None = None
    switchover_overhead_ms: float = 30.0
    max_passes: int = 30
    already_sent_bytes: int = 0

    def __post_init__(self) -> None:
        for name in (
            "dirty_rate_bps",
            "bandwidth_bps",
            "max_downtime_ms",
            "switchover_overhead_ms",
        ):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.memory_bytes <= 0:
            raise ValueError(f"memory_bytes must be > 0, got {self.memory_bytes}")
        if self.bandwidth_bps <= 0:
            raise ValueError(
                f"bandwidth_bps must be > 0 (zero bandwidth is rejected), got {self.bandwidth_bps}"
            )
        if self.dirty_rate_bps < 0:
            raise ValueError(f"dirty_rate_bps must be >= 0, got {self.dirty_rate_bps}")
        if self.max_downtime_ms <= 0:
            raise ValueError(f"max_downtime_ms must be > 0, got {self.max_downtime_ms}")
        if self.working_set_bytes is not None and self.working_set_bytes < 0:
            raise ValueError(f"working_set_bytes must be >= 0, got {self.working_set_bytes}")
        if self.switchover_overhead_ms < 0:
            raise ValueError(
                f"switchover_overhead_ms must be >= 0, got {self.switchover_overhead_ms}"
            )
        if self.max_passes < 1:
            raise ValueError(f"max_passes must be >= 1, got {self.max_passes}")
        if not 0 <= self.already_sent_bytes <= self.memory_bytes:
            raise ValueError(
                f"already_sent_bytes must be within 0..memory_bytes ({self.memory_bytes}), "
                f"got {self.already_sent_bytes}"
            )


@dataclass(frozen=True)
class PrecopyEstimate:
    """Outcome of pre-copy.

    Converging: ``passes`` live passes (sizes in ``pass_bytes``), then a stop-and-copy of
    ``final_remaining_bytes``; ``total_seconds``/``bytes_sent`` include that final copy and
    ``downtime_ms`` is the guest pause. Not converging: the figures describe running
    ``max_passes`` passes without finishing; ``final_remaining_bytes`` is what is still
    dirty and ``downtime_ms`` is the pause a forced switch-over at that point would cost.
    ``needed_downtime_ms`` is the smallest downtime limit under which pre-copy converges
    within ``max_passes`` (for a stuck guest: the steady-state pass size / B).
    """

    converges: bool
    passes: int
    total_seconds: float
    downtime_ms: float
    bytes_sent: int
    final_remaining_bytes: int
    pass_bytes: tuple[int, ...]
    needed_downtime_ms: float


@dataclass(frozen=True)
class PostcopyEstimate:
    total_seconds: float
    bytes_sent: int
    switch_pause_ms: float  # guest-observed pause at the switch
    postcopy_seconds: float  # time the guest runs at the destination while pages arrive


@dataclass(frozen=True)
class Advice:
    """``downtime_ms`` is the max-downtime setting to use (None for abort)."""

    action: AdviceAction
    downtime_ms: float | None
    reason: str


@dataclass(frozen=True)
class _Pass:
    sent: float  # bytes sent in this pass
    remaining: float  # bytes dirtied during it, still to send
    throttle_pct: int


def _ms(nbytes: float, bandwidth: float) -> float:
    return nbytes / bandwidth * 1000.0


def _passes(inp: PrecopyInput, n: int, throttle_at: Callable[[int], int]) -> list[_Pass]:
    """The first n passes, ignoring the downtime limit (it only decides where to stop)."""
    m, b = float(inp.memory_bytes), inp.bandwidth_bps
    ws = m if inp.working_set_bytes is None else min(float(inp.working_set_bytes), m)
    out: list[_Pass] = []
    send = m - inp.already_sent_bytes
    for k in range(1, n + 1):
        pct = throttle_at(k)
        window = m / b if k == 1 else send / b  # pass 1 dirties since it began
        remaining = min(inp.dirty_rate_bps * (1.0 - pct / 100.0) * window, ws)
        out.append(_Pass(send, remaining, pct))
        send = remaining
    return out


def _estimate(inp: PrecopyInput, throttle_at: Callable[[int], int]) -> tuple[PrecopyEstimate, int]:
    b = inp.bandwidth_bps
    seq = _passes(inp, inp.max_passes, throttle_at)
    needed = min(_ms(p.remaining, b) for p in seq)
    done = next((i for i, p in enumerate(seq) if _ms(p.remaining, b) <= inp.max_downtime_ms), None)
    used = seq if done is None else seq[: done + 1]
    last = used[-1]
    # converged: the stop-and-copy and the switch-over cost are part of the run
    final, switch_s = (
        (0.0, 0.0) if done is None else (last.remaining, inp.switchover_overhead_ms / 1e3)
    )
    sent = sum(p.sent for p in used) + final
    est = PrecopyEstimate(
        converges=done is not None,
        passes=len(used),
        total_seconds=sent / b + switch_s,
        downtime_ms=_ms(last.remaining, b) + inp.switchover_overhead_ms,
        bytes_sent=round(sent),
        final_remaining_bytes=round(last.remaining),
        pass_bytes=tuple(round(p.sent) for p in used),
        needed_downtime_ms=needed,
    )
    return est, last.throttle_pct


def estimate_precopy(inp: PrecopyInput) -> PrecopyEstimate:
    """Simulate plain pre-copy pass by pass (see the module rules)."""
    return _estimate(inp, lambda _k: 0)[0]


def estimate_with_autoconverge(
    inp: PrecopyInput, initial_pct: int = 20, increment_pct: int = 10, max_pct: int = 99
) -> tuple[PrecopyEstimate, int]:
    """Pre-copy with vCPU throttling; returns the estimate and the throttle % reached."""
    if not (0 <= initial_pct <= max_pct <= 99 and increment_pct >= 0):
        raise ValueError(
            "auto-converge needs 0 <= initial_pct <= max_pct <= 99 and increment_pct >= 0, got "
            f"initial={initial_pct} increment={increment_pct} max={max_pct}"
        )

    def throttle_at(k: int) -> int:
        return 0 if k == 1 else min(initial_pct + (k - 2) * increment_pct, max_pct)

    return _estimate(inp, throttle_at)


def estimate_postcopy(inp: PrecopyInput, precopy_passes: int = 1) -> PostcopyEstimate:
    """Switch to post-copy after ``precopy_passes`` passes.

    If pre-copy converges before then, it simply finishes as pre-copy (postcopy_seconds 0).
    """
    if precopy_passes < 1:
        raise ValueError(f"precopy_passes must be >= 1, got {precopy_passes}")
    b = inp.bandwidth_bps
    pre = estimate_precopy(inp)
    if pre.converges and pre.passes <= precopy_passes:
        return PostcopyEstimate(pre.total_seconds, pre.bytes_sent, pre.downtime_ms, 0.0)
    seq = _passes(inp, precopy_passes, lambda _k: 0)
    sent = sum(p.sent for p in seq)
    rest = seq[-1].remaining
    return PostcopyEstimate(
        total_seconds=(sent + rest) / b + inp.switchover_overhead_ms / 1000.0,
        bytes_sent=round(sent + rest),
        switch_pause_ms=inp.switchover_overhead_ms,
        postcopy_seconds=rest / b,
    )


def _n(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 10 or x == 0 else f"{x:.1f}"


def _passes_txt(n: int) -> str:
    return f"{n} pass" if n == 1 else f"{n} passes"


def _outcome(est: PrecopyEstimate) -> str:
    return f"{_passes_txt(est.passes)}, {est.total_seconds:.1f} s, pause ~{_n(est.downtime_ms)} ms"


def advise(
    inp: PrecopyInput,
    *,
    allowed_max_downtime_ms: float,
    postcopy_allowed: bool,
    autoconverge_allowed: bool = True,
) -> Advice:
    """The fastest way to finish with a low pause, in this order of preference.

    "A few passes" is ``min(inp.max_passes, ADVISE_FEW_PASSES)``.

    1. ``precopy``: plain pre-copy converges under ``inp.max_downtime_ms`` within a few passes.
    2. ``raise-downtime``: the limit needed to converge within a few passes, rounded up to the
       next 50 ms (capped at the allowed maximum), is <= ``allowed_max_downtime_ms`` -- but
       when post-copy is allowed only if the needed limit is at most 2x the starting limit;
       a bigger raise loses to
    3. ``postcopy`` (switch after pass 1), when allowed;
    4. ``auto-converge``, when allowed and it converges within ``inp.max_passes``;
    5. ``precopy`` again if plain pre-copy converges, slowly, within ``inp.max_passes``;
    6. ``abort``.
    """
    limit = inp.max_downtime_ms
    few = replace(inp, max_passes=min(inp.max_passes, ADVISE_FEW_PASSES))
    est = estimate_precopy(few)
    ws = inp.working_set_bytes
    ws_txt = "" if ws is None or ws >= inp.memory_bytes else f" (working set {_n(mib(ws))} MiB)"
    rates = (
        f"guest dirties {_n(mib(inp.dirty_rate_bps))} MiB/s{ws_txt}, "
        f"link carries {_n(mib(inp.bandwidth_bps))} MiB/s"
    )
    if est.converges:
        return Advice(
            "precopy",
            limit,
            f"{rates}: pre-copy converges under {_n(limit)} ms in {_outcome(est)}",
        )
    needed = est.needed_downtime_ms
    step = math.ceil(needed / DOWNTIME_STEP_MS) * DOWNTIME_STEP_MS
    raise_to = min(step, allowed_max_downtime_ms)
    stuck = f"{rates}: cannot converge under {_n(limit)} ms within {_passes_txt(few.max_passes)}"
    if needed <= allowed_max_downtime_ms and (
        not postcopy_allowed or needed <= POSTCOPY_OVER_RAISE_FACTOR * limit
    ):
        return Advice(
            "raise-downtime",
            raise_to,
            f"{stuck}; raise the downtime limit to {_n(raise_to)} ms "
            f"(allowed up to {_n(allowed_max_downtime_ms)} ms)",
        )
    if postcopy_allowed:
        pc = estimate_postcopy(inp)
        return Advice(
            "postcopy",
            limit,
            f"{stuck} (would need {_n(step)} ms); switch to post-copy after pass 1: "
            f"~{pc.total_seconds:.1f} s, pause ~{_n(pc.switch_pause_ms)} ms, "
            f"then {pc.postcopy_seconds:.1f} s of page fetching",
        )
    if autoconverge_allowed:
        ac, pct = estimate_with_autoconverge(inp)
        if ac.converges:
            return Advice(
                "auto-converge",
                limit,
                f"{stuck}; auto-converge throttling vCPUs to {pct}% converges in {_outcome(ac)}",
            )
    slow = estimate_precopy(inp)
    if slow.converges:
        return Advice(
            "precopy",
            limit,
            f"{stuck}; no faster option allowed, plain pre-copy converges in {_outcome(slow)}",
        )
    return Advice(
        "abort",
        None,
        f"{stuck}; allow post-copy or a downtime of {_n(step)} ms "
        f"(allowed {_n(allowed_max_downtime_ms)} ms)",
    )
