"""What post-copy costs the guest: its largest gap, from the page faults it takes (pure).

Used by the policy (whether one more pre-copy pass would spare the guest faults) and by the
rehearsal (the gap `estimate` predicts). Calibrated on the lab's recorded runs, where a
heartbeat measures the gap (docs/benchmarks.md): the lab's guests are TCG guests on a
2-CPU machine, and the spread between identical runs is wide.
"""

from __future__ import annotations

#: libvirt's pause at the switch to post-copy (lab: 2-5 ms in L2, L3).
POSTCOPY_PAUSE_MS = 4.0
PAGE_BYTES = 4096
#: What the push has on the link (socket buffers, the link's queue) when post-copy starts or
#: a page is requested: the device state and each requested page wait behind it. From G1's
#: gaps (1 GiB guest, 50 MiB/s, 1 Gbit/s): 148-150 ms in three runs, the switch alone.
POSTCOPY_QUEUED_BYTES = 17 * 1024 * 1024
#: A guest that touches memory at least this share of the push's rate runs into pages the
#: push has not reached (L2 at 100 MiB/s and L3 at 200 MiB/s over 119 MiB/s did, with gaps
#: of 0.5-3 s; G1 at 50 MiB/s did not).
CATCH_UP_SHARE = 0.6
#: Such a guest's largest wait, as a share of the time the guest itself takes to write over
#: what was left at the switch (left / its dirty rate). 22 recorded runs (bench/results:
#: accuracy-calibration, accuracy-previous, postcopy-gap, and live and accuracy-live before
#: commit 5785965), each leaving ~381 MiB: L2 (100 MiB/s) waited 1.3-2.8 s (median 1.8),
#: L3 (200 MiB/s) 0.5-3.0 s (median 0.94): shares 0.28-1.56, median 0.47 for both. The
#: faster writer waits the shorter time; a share of the push's time (the first model, 0.45)
#: predicted both alike, 1.3-1.45 s, which put L2 at -27 % and L3 at about +50 %.
BEHIND_GUEST_SHARE = 0.47


def postcopy_gap_ms(
    remaining_bytes: float,
    dirty_rate_bps: float,
    bandwidth_bps: float,
    push_bps: float,
    latency_ms: float = 0.0,
) -> float:
    """The guest's largest gap when a move switches to post-copy with `remaining_bytes` still
    on the source, the push sending them at `push_bps` over a link of `bandwidth_bps`.

    * The switch: libvirt's pause, then the device state crosses behind what the push has
      on the link; the destination starts the guest once it has it.
    * Each fault: a round trip, then the page behind what is on the link.
    * A guest that touches memory slower than the push delivers it faults once and then
      finds its pages there: the push goes on from the page it asked for. One that touches
      memory about as fast runs into pages the push has not reached: in the lab (L3B,
      heartbeat timelines) its first writes after resuming waited page by page for
      0.5-1.3 s, the largest gap of every run, then the push followed it (~84 ms gaps).
      That wait spreads widely between identical runs; the model takes a share of the
      time the guest needs to write over what was left (BEHIND_GUEST_SHARE), at most the
      push's whole time.
    """
    if remaining_bytes <= 0:
        return POSTCOPY_PAUSE_MS
    queued = min(POSTCOPY_QUEUED_BYTES, remaining_bytes)
    behind_ms = 2 * latency_ms + (queued + PAGE_BYTES) / bandwidth_bps * 1000.0
    gap = POSTCOPY_PAUSE_MS + behind_ms
    if dirty_rate_bps >= CATCH_UP_SHARE * push_bps:
        behind_s = min(
            BEHIND_GUEST_SHARE * remaining_bytes / dirty_rate_bps, remaining_bytes / push_bps
        )
        gap = max(gap, behind_s * 1000.0)
    return gap
