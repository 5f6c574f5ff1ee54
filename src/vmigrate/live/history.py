"""What the store remembers of a host pair's moves: the fixed costs of a live move, learned
from its finished jobs, and the latest estimate made before a move (pure).

Set-up: from the migration's start to its first byte (the first sample's elapsed time less
what it had sent by then). Finish: from the last byte (the last sample plus what it still
had to send) to the end of the job's measured total (switch-over, libvirt's finish phase,
verifying where the VM runs). The median over the latest jobs, so one odd run counts little.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vmigrate.live.rehearsal import FixedCosts
from vmigrate.store import JobRecord, JobStore

#: How many of the pair's latest finished moves to learn from.
LATEST_JOBS = 10
#: A job whose fixed costs look longer than this measured something else (a host that
#: hung, a post-copy that waited for its link): left out.
IMPLAUSIBLE_S = 30.0


@dataclass(frozen=True)
class FinishedMove:
    """What a finished live job recorded: its report and its samples, oldest first."""

    report: dict[str, Any]
    samples: Sequence[dict[str, Any]]


def _costs_of(move: FinishedMove) -> tuple[float, float] | None:
    total = move.report.get("total_s")
    moving = [
        s
        for s in move.samples
        if s.get("memory_processed", 0) > 0 and s.get("bandwidth_bps", 0) > 0
    ]
    if total is None or not moving or move.report.get("storage"):
        return None
    # A sample that shows nothing left was taken in or after the stop-and-copy: it does not
    # say when sending ended (L4's, after 1 s pauses, made its finish read 2.4 s, not 1.9).
    sending = [s for s in moving if s.get("memory_remaining", 0) > 0] or moving
    first, last = moving[0], sending[-1]
    # What the stream really got, where its samples span enough time: QEMU's own rate
    # averages in the ramp (L1 over the unshaped loopback: QEMU said 349 MiB/s, the stream
    # sent 445 MiB in 0.5 s), and a move that fast left out read a negative set-up.
    rate = _stream_rate_of(move.samples) or first["bandwidth_bps"]
    started = next(
        (s for s in move.samples if s.get("memory_processed", 0) > 0 and s["elapsed_s"] > 0),
        first,
    )
    setup = started["elapsed_s"] - started["memory_processed"] / rate
    finish = float(total) - (last["elapsed_s"] + last.get("memory_remaining", 0) / rate)
    if not (0 <= setup <= IMPLAUSIBLE_S and 0 <= finish <= IMPLAUSIBLE_S):
        return None
    return setup, finish


#: Moves of a guest within this factor of the one predicted (memory, either way) count as
#: alike: their finish is the one to learn from when there are any.
SAME_SIZE_FACTOR = 1.5


def _memory_of(move: FinishedMove) -> int:
    return next((int(s["memory_total"]) for s in move.samples if s.get("memory_total")), 0)


def learned_costs(moves: Sequence[FinishedMove], memory_bytes: int | None = None) -> FixedCosts:
    """The pair's costs from its latest completed moves (newest first), finish apart for the
    moves that ended in post-copy; the lab's defaults where none tells.

    Given the guest's `memory_bytes`, a finish is learned from the moves (of the same kind)
    of guests of about its size (within SAME_SIZE_FACTOR), if the pair has any: L1's
    estimate (a 512 MiB guest) learned a 1.3 s finish from the bench store's two 256 MiB
    moves (1.2-1.4 s) and came out -23 %; the lab's 512 MiB guests finished in 1.3-2.3 s
    (median 1.66 s over 21 pre-copy moves)."""
    measured = [
        (m, c) for m, c in ((m, _costs_of(m)) for m in moves[: 5 * LATEST_JOBS]) if c is not None
    ]
    if not measured:
        return FixedCosts()

    def alike_first(pairs: list[tuple[FinishedMove, tuple[float, float]]]) -> list[float]:
        """The finishes of the latest like-sized moves among `pairs`, else of all of them."""
        alike = [
            (m, c)
            for m, c in pairs
            if memory_bytes
            and _memory_of(m)
            and _times_apart(_memory_of(m), memory_bytes) <= SAME_SIZE_FACTOR
        ]
        return [c[1] for _, c in (alike or pairs)[:LATEST_JOBS]]

    precopy = alike_first([(m, c) for m, c in measured if not m.report.get("postcopy")])
    postcopy = alike_first([(m, c) for m, c in measured if m.report.get("postcopy")])
    default = FixedCosts()
    latest = measured[:LATEST_JOBS]
    return FixedCosts(
        setup_s=statistics.median(c[0] for _, c in latest),
        finish_s=statistics.median(precopy) if precopy else default.finish_s,
        learned_from=len(latest),
        postcopy_finish_s=statistics.median(postcopy) if postcopy else default.postcopy_finish_s,
    )


def _stream_rate_of(samples: Sequence[dict[str, Any]]) -> float | None:
    """What a move's pre-copy really sent per second: bytes over time between its first and
    last sample (QEMU's own rate averages in its ramp and reads low on a short move)."""
    moving = [
        s for s in samples if s.get("phase") == "precopy" and s.get("memory_processed", 0) > 0
    ]
    if len(moving) >= 2 and moving[-1]["elapsed_s"] - moving[0]["elapsed_s"] >= MIN_SPAN_S:
        sent = moving[-1]["memory_processed"] - moving[0]["memory_processed"]
        return float(sent / (moving[-1]["elapsed_s"] - moving[0]["elapsed_s"]))
    rates = [s["bandwidth_bps"] for s in moving if s.get("bandwidth_bps", 0) > 0]
    return statistics.median(rates) if rates else None


#: The job kind `vmigrate estimate` records its predictions as.
ESTIMATE_KIND = "estimate"
#: An estimate older than this before a move does not describe it.
ESTIMATE_VALID_S = 3600.0


def finished_moves(store: JobStore, source_uri: str, destination_uri: str) -> list[FinishedMove]:
    """The pair's completed live moves, newest first."""
    return [
        FinishedMove(job.report or {}, store.samples(job.id))
        for job in store.jobs_of_kind("live")[: 5 * LATEST_JOBS]
        if job.state == "completed"
        and job.source == source_uri
        and job.destination == destination_uri
    ]


def latest_estimate(
    store: JobStore, vm: str, source_uri: str, destination_uri: str, before: float
) -> dict[str, Any] | None:
    """The newest estimate of this VM's move between these hosts made before `before`
    (epoch s), within ESTIMATE_VALID_S: the prediction a move started then had."""
    for job in store.jobs_of_kind(ESTIMATE_KIND):
        if (
            job.vm == vm
            and job.source == source_uri
            and job.destination == destination_uri
            and before - ESTIMATE_VALID_S <= job.started <= before
            and job.report
        ):
            return {**job.report, "job_id": job.id, "made": job.started}
    return None


#: A probe reading within this share of an earlier one (the larger over the smaller) met
#: the same link: the probe reads ±30 % from run to run through libvirt's TLS connection on
#: the lab's busy 2-CPU machine. The shaped link read 110-119 MiB/s over 14 runs, the
#: unshaped loopback 179-195: 1.54x, which the share measured one way only (117/180 - 1 =
#: -0.35) let in, so L1 took the shaped link's 119 MiB/s for a stream that got 760-860.
SAME_LINK_SHARE = 0.4
#: A move's rate from fewer seconds of samples is QEMU's own figure instead.
MIN_SPAN_S = 0.3
#: How long after its estimate a move still counts as the one it predicted.
MOVE_AFTER_ESTIMATE_S = 600.0


@dataclass(frozen=True)
class LinkHistory:
    """What the pair's earlier moves over the same link showed (None: nothing learned)."""

    rate_bps: float | None = None  # what their streams really got
    moves: int = 0
    # Their QEMU's resident memory at the estimate less what their first pass sent: QEMU's
    # own memory and the zero pages pass 1 skips (learned over any link).
    resident_overhead_bytes: float | None = None


def _estimates_and_moves(
    store: JobStore, source_uri: str, destination_uri: str
) -> list[tuple[JobRecord, JobRecord]]:
    """The pair's estimates, newest first, each with the completed move that followed it."""
    moves = [
        job
        for job in store.jobs_of_kind("live")[: 5 * LATEST_JOBS]
        if job.state == "completed"
        and job.source == source_uri
        and job.destination == destination_uri
    ]
    pairs = []
    for estimate in store.jobs_of_kind(ESTIMATE_KIND)[: 5 * LATEST_JOBS]:
        if estimate.source != source_uri or estimate.destination != destination_uri:
            continue
        move = next(
            (
                m
                for m in reversed(moves)
                if m.vm == estimate.vm
                and estimate.started <= m.started <= estimate.started + MOVE_AFTER_ESTIMATE_S
            ),
            None,
        )
        if move is not None:
            pairs.append((estimate, move))
    return pairs


def first_pass_bytes(samples: Sequence[dict[str, Any]]) -> int | None:
    """What a move's first pre-copy pass sent: the bytes processed when the second pass
    began (the monitor samples the moment a pass ends). None if it never got there."""
    second = next(
        (s for s in samples if s.get("phase") == "precopy" and s.get("iteration", 0) >= 2),
        None,
    )
    return None if second is None else int(second.get("memory_processed", 0)) or None


def link_history(
    store: JobStore, source_uri: str, destination_uri: str, probed_bps: float, *, tls: bool
) -> LinkHistory:
    """What the pair's migrations really did (QEMU to QEMU, in the move's direction) when
    the probe before them read about what it reads now, with the same TLS: the median of
    their pre-copy rates; and, over any link, how much less than its QEMU's resident memory
    their first pass sent. The probe goes from this machine through libvirt and reads low
    on a busy host; once a move has run over the same link, its own figures are the better
    ones."""
    rates: list[tuple[float, float, float]] = []  # (how far from now's, its probe, its rate)
    overheads: list[float] = []
    for estimate, move in _estimates_and_moves(store, source_uri, destination_uri):
        report = estimate.report or {}
        samples = store.samples(move.id)
        touched = report.get("touched_bytes")
        sent = first_pass_bytes(samples)
        if touched and sent and not (move.report or {}).get("storage") and sent <= touched:
            overheads.append(float(touched - sent))
        earlier = report.get("link_bps") or 0.0
        apart = _probes_apart(earlier, probed_bps)
        if bool(report.get("tls")) != tls or apart > SAME_LINK_SHARE:
            continue
        seen = _stream_rate_of(samples)
        if seen is not None:
            rates.append((apart, earlier, seen))
    # The moves whose probe read nearest to now's (newest first among equals), and only
    # those that met the same link as the nearest one: a reading between the lab's shaped
    # link (110-119 MiB/s, the stream got 119) and its unshaped loopback (179-195, the
    # stream got 760-950) takes one or the other, not a median of both.
    rates.sort(key=lambda r: r[0])
    alike = [r for r in rates if _probes_apart(r[1], rates[0][1]) <= SAME_LINK_SHARE]
    nearest = [rate for _, _, rate in alike[: LATEST_JOBS // 2]]
    return LinkHistory(
        statistics.median(nearest) if nearest else None,
        len(nearest),
        statistics.median(overheads[:LATEST_JOBS]) if overheads else None,
    )


def _times_apart(a: float, b: float) -> float:
    return max(a, b) / min(a, b)


def _probes_apart(earlier_bps: float, now_bps: float) -> float:
    """How far apart two probe readings are, the same either way round: 0.5 for 100 and
    150 MiB/s, or 150 and 100; infinite when one read nothing."""
    if earlier_bps <= 0 or now_bps <= 0:
        return math.inf
    return max(earlier_bps, now_bps) / min(earlier_bps, now_bps) - 1
