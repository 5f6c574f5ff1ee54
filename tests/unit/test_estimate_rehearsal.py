"""`estimate`'s rehearsal against the live policy replayed over jobStats traces recorded in
the lab: the same policy, fed the same guest and link, takes the same route at the same
passes. Plus the rehearsal's own rules, and the fixed costs learned from finished jobs."""

from __future__ import annotations

import json
import statistics
from dataclasses import replace

import pytest

from vmigrate.live.history import FinishedMove, learned_costs
from vmigrate.live.policy import PRESETS, PolicyConfig
from vmigrate.live.postcopy_cost import BEHIND_GUEST_SHARE, POSTCOPY_PAUSE_MS, postcopy_gap_ms
from vmigrate.live.rehearsal import (
    PAUSE_OVERHEAD_MS,
    STORAGE_SWITCH_EXTRA_MS,
    FixedCosts,
    LivePrediction,
    Workload,
    rehearse,
    route_of,
)
from vmigrate.live.samples import JobSample

from .test_policy import TRACES, replay

MIB = 1 << 20


#: The guests the traces were recorded with (bench/live.py): 512 MiB, a 384 MiB working set,
#: dirtied at the rate in the trace's name.
TRACE_GUESTS = {
    "l2-100mibs-1gbit-precopy.json": 100 * MIB,
    "l3-200mibs-1gbit-postcopy-after-precopy.json": 200 * MIB,
}


def _guest_and_link(trace: str, samples: list[JobSample]) -> tuple[Workload, float]:
    """The guest as estimate measures it (its rate and working set) and the link the trace
    ran at."""
    bandwidth = statistics.median(s.bandwidth_bps for s in samples if s.bandwidth_bps > 0)
    load = Workload(samples[0].memory_total, TRACE_GUESTS[trace], 384 * MIB)
    return load, bandwidth


def _rehearsed(trace: str, config: PolicyConfig) -> tuple[LivePrediction, list[tuple[int, str]]]:
    samples, _ = replay(trace, config)
    load, bandwidth = _guest_and_link(trace, samples)
    prediction = rehearse(load, bandwidth, config)
    return prediction, [(a.pass_no, a.kind) for a in prediction.actions]


def _replayed(trace: str, config: PolicyConfig) -> list[tuple[int, str]]:
    samples, actions = replay(trace, config)
    at = {round(s.elapsed_s, 3): s.iteration for s in samples}
    return [(at[round(a.at_s, 3)], a.kind) for a in actions]


TRACE_NAMES = ["l2-100mibs-1gbit-precopy.json", "l3-200mibs-1gbit-postcopy-after-precopy.json"]


@pytest.mark.parametrize("trace", TRACE_NAMES)
@pytest.mark.parametrize("preset", ["fast", "strict"])
def test_rehearsal_takes_the_route_the_replayed_policy_takes(trace: str, preset: str) -> None:
    config = PRESETS[preset]
    prediction, rehearsed = _rehearsed(trace, config)
    replayed = _replayed(trace, config)
    # The replayed policy ends pre-copy (post-copy or abort): the rehearsal ends it the
    # same way at the same pass, having taken the same steps before.
    assert replayed[-1][1] in ("postcopy", "abort")
    assert rehearsed[-1] == replayed[-1], (rehearsed, replayed)
    assert prediction.route == route_of(kind for _, kind in replayed)


@pytest.mark.parametrize("trace", TRACE_NAMES)
def test_safe_raises_the_limit_at_the_pass_the_replayed_policy_does(trace: str) -> None:
    config = PRESETS["safe"]
    _, rehearsed = _rehearsed(trace, config)
    replayed = _replayed(trace, config)
    # The trace ran under virsh's fixed limit, so only the first decision is the policy's
    # reaction to the same guest; the rehearsal must make it at the same pass, the same way.
    assert rehearsed[0] == replayed[0] == (2, "set-downtime")


def test_post_copy_total_is_the_trace_s_own() -> None:
    """The L3 trace switched to post-copy after pass 1, as `fast` does: the rehearsal's time
    from the first byte to the last is within 10 % of the trace's."""
    trace = json.loads((TRACES / "l3-200mibs-1gbit-postcopy-after-precopy.json").read_text())
    moving = [e for e in trace["trace"] if e["stats"].get("memory_remaining") is not None]
    measured = moving[-1]["t"] - moving[0]["t"] + 0.5  # the first sample came 0.5 s in
    prediction, _ = _rehearsed(trace_name := TRACE_NAMES[1], PRESETS["fast"])
    assert trace_name and prediction.route == "postcopy"
    costs = prediction.costs
    modelled = prediction.total_s - costs.setup_s - costs.postcopy_finish_s
    assert modelled == pytest.approx(measured, rel=0.10)


def test_an_idle_guest_converges_in_pre_copy_with_the_pause_the_policy_starts_at() -> None:
    prediction = rehearse(Workload(512 * MIB, 0.0), 119 * MIB, PRESETS["fast"])
    assert prediction.route == "precopy" and prediction.outcome == "completed"
    assert prediction.downtime_ms is not None
    assert prediction.downtime_ms <= 30 + PAUSE_OVERHEAD_MS
    costs = FixedCosts()
    assert prediction.total_s == pytest.approx(512 / 119 + costs.setup_s + costs.finish_s, 0.01)
    assert prediction.timeline() == "no action needed"


def test_a_busy_guest_goes_post_copy_and_the_gap_counts_its_page_faults() -> None:
    prediction = rehearse(Workload(512 * MIB, 200 * MIB, 384 * MIB), 119 * MIB, PRESETS["fast"])
    assert prediction.route == "postcopy"
    assert prediction.timeline() == "pass 2: switch to post-copy"
    assert prediction.downtime_ms is not None and prediction.downtime_ms < 10
    # It dirties faster than the push delivers: it runs into pages the push has not
    # reached, and waits a share of the time it takes to write over what was left.
    left = prediction.postcopy_s * 119 * MIB
    assert prediction.guest_gap_ms == pytest.approx(
        BEHIND_GUEST_SHARE * left / (200 * MIB) * 1000, rel=0.01
    )


def test_a_faster_writer_waits_less_after_the_switch_as_the_recorded_runs_did() -> None:
    """L2 (100 MiB/s) waited 1.3-2.8 s (median 1.8), L3 (200 MiB/s) 0.5-3.0 s (median 0.94),
    each with ~381 MiB left at the switch over the 119 MiB/s link."""
    left, link = 381 * MIB, 119 * MIB
    l2 = postcopy_gap_ms(left, 100 * MIB, link, link)
    l3 = postcopy_gap_ms(left, 200 * MIB, link, link)
    assert l2 == pytest.approx(1801, rel=0.25) and l3 == pytest.approx(943, rel=0.25)
    # Never longer than the push takes to send all that was left.
    assert postcopy_gap_ms(left, 72 * MIB, link, link) <= left / link * 1000


def test_a_guest_slower_than_the_push_waits_for_the_switch_and_a_fault() -> None:
    """G1 in the lab: 50 MiB/s over 119 MiB/s, 148-150 ms gaps."""
    load = Workload(1024 * MIB, 50 * MIB, 512 * MIB, 582 * MIB)
    near = rehearse(load, 119 * MIB, PRESETS["fast"])
    assert near.route == "postcopy" and near.guest_gap_ms is not None
    assert 120 < near.guest_gap_ms < 180
    # Latency adds a round trip to the fault.
    far = rehearse(load, 119 * MIB, PRESETS["fast"], latency_ms=50)
    assert far.guest_gap_ms == pytest.approx(near.guest_gap_ms + 100)
    assert postcopy_gap_ms(0, 50 * MIB, 119 * MIB, 119 * MIB) == POSTCOPY_PAUSE_MS


def test_without_post_copy_the_limit_is_raised_pass_by_pass_and_said_when() -> None:
    config = PRESETS["fast"].with_limits(postcopy=False)
    prediction = rehearse(Workload(512 * MIB, 100 * MIB, 384 * MIB), 119 * MIB, config)
    assert prediction.route in ("raise-downtime", "auto-converge")
    assert prediction.timeline().startswith("pass 2: ")
    assert "raise max downtime to " in prediction.timeline()
    assert prediction.downtime_ms is not None
    # QEMU keeps to the limit; libvirt adds the device state and handshake on top.
    assert prediction.downtime_ms <= config.max_downtime_ms + PAUSE_OVERHEAD_MS


def test_strict_aborts_a_guest_it_cannot_move() -> None:
    prediction = rehearse(Workload(512 * MIB, 200 * MIB, 384 * MIB), 119 * MIB, PRESETS["strict"])
    assert prediction.route == "abort" and prediction.outcome == "aborted"
    assert "abort" in prediction.timeline()


def test_a_timeout_inside_a_pass_switches_to_post_copy_then() -> None:
    config = PRESETS["fast"].with_limits(timeout_s=2.0)
    prediction = rehearse(Workload(1024 * MIB, 50 * MIB), 119 * MIB, config)
    assert prediction.actions[0].kind == "postcopy"
    assert prediction.actions[0].at_s == pytest.approx(2.0)


def test_a_small_working_set_costs_less_than_the_same_rate_over_all_of_memory() -> None:
    small = rehearse(Workload(1024 * MIB, 20 * MIB, 16 * MIB), 119 * MIB, PRESETS["fast"])
    large = rehearse(Workload(1024 * MIB, 20 * MIB, 384 * MIB), 119 * MIB, PRESETS["fast"])
    assert small.bytes_sent < large.bytes_sent and small.total_s < large.total_s


def _move(total: float, first: tuple[float, int], last: tuple[float, int]) -> FinishedMove:
    rate = 100 * MIB
    return FinishedMove(
        {"total_s": total, "storage": {}},
        [
            {"elapsed_s": first[0], "memory_processed": first[1], "bandwidth_bps": rate},
            {
                "elapsed_s": last[0],
                "memory_processed": 500 * MIB,
                "memory_remaining": last[1],
                "bandwidth_bps": rate,
            },
        ],
    )


def test_fixed_costs_are_learned_from_the_pair_s_finished_moves() -> None:
    # 50 MiB sent 1.0 s in at 100 MiB/s: set-up 0.5 s; 100 MiB left at 4.0 s, done at 6.2 s
    # of 6.2 + 1.2: finish 1.2 s.
    moves = [_move(6.2, (1.0, 50 * MIB), (4.0, 100 * MIB))] * 3
    costs = learned_costs(moves)
    assert costs.setup_s == pytest.approx(0.5) and costs.finish_s == pytest.approx(1.2)
    assert costs.learned_from == 3 and "3 finished" in costs.describe()
    assert learned_costs([]) == FixedCosts()
    with_disks = FinishedMove({"total_s": 9.0, "storage": {"copied": ["vda"]}}, [])
    assert learned_costs([with_disks]).learned_from == 0


def test_the_dirty_rate_curve_tells_a_small_working_set_from_a_spreading_one() -> None:
    from vmigrate.forecast import workload_from_curve

    # Rewrites 16 MiB: the 4 s window saw no more than the 1 s one.
    small = workload_from_curve(1024 * MIB, [(1.0, 16 * MIB), (4.0, 16 * MIB)])
    assert small.working_set_bytes == 16 * MIB and small.dirty_rate_bps == 16 * MIB
    # The lab's L2 guest (measured 112 and 101 MiB/s): 384 MiB over 4 s, still spreading
    # as far as the windows tell; the longer window's rate is the steadier figure.
    spreading = workload_from_curve(512 * MIB, [(1.0, 112 * MIB), (4.0, 404 * MIB)])
    assert spreading.working_set_bytes is None and spreading.dirty_rate_bps == 101 * MIB
    # Page sampling is noisy: a long window reading below the short one is a small set.
    noisy = workload_from_curve(512 * MIB, [(1.0, 2 * MIB), (4.0, 0.0)])
    assert noisy.working_set_bytes == 2 * MIB


def test_the_stream_gets_the_link_a_limit_and_tls_leave() -> None:
    from vmigrate.forecast import TLS_THROUGHPUT, StreamChoice, stream_bandwidth

    assert stream_bandwidth(119 * MIB, StreamChoice(), tls=False) == 119 * MIB
    assert stream_bandwidth(119 * MIB, StreamChoice(bandwidth_mib=50), tls=False) == 50 * MIB
    assert stream_bandwidth(119 * MIB, StreamChoice(), tls=True) == 119 * MIB * TLS_THROUGHPUT


def test_the_route_reads_the_store_s_labels_as_well_as_kinds() -> None:
    # The store records "set-downtime 650"; a run that only raised the limit is that route.
    assert route_of(["set-downtime 650", "set-downtime 1000"]) == "raise-downtime"
    assert route_of(["set-downtime 650", "note", "set-downtime 1000"]) == "auto-converge"
    assert route_of(["postcopy"]) == "postcopy" and route_of([]) == "precopy"


def test_safe_says_once_that_qemu_throttles_whether_or_not_a_sample_shows_it_yet() -> None:
    """L4 in the lab: live took "auto-converge" or "raise-downtime" depending on whether the
    sample after the sync already showed QEMU's throttle. The note is said once either way,
    so the route does not depend on that race."""
    config = PRESETS["safe"]
    prediction = rehearse(Workload(512 * MIB, 200 * MIB, 384 * MIB), 119 * MIB, config)
    kinds = [a.kind for a in prediction.actions]
    assert prediction.route == "auto-converge" and kinds.count("note") == 1


def test_a_held_post_copy_push_is_set_at_the_switch_and_lengthens_post_copy() -> None:
    load = Workload(512 * MIB, 200 * MIB, 384 * MIB)
    whole = rehearse(load, 119 * MIB, PRESETS["fast"])
    held_config = replace(PRESETS["fast"], postcopy_push_share=0.5)
    held = rehearse(load, 119 * MIB, held_config)
    switch = held.actions[-1]
    assert switch.kind == "postcopy" and switch.value is not None
    assert switch.value == pytest.approx(60, abs=1)
    assert "held at 60 MiB/s" in switch.reason
    assert held.postcopy_s == pytest.approx(whole.postcopy_s * 119 / switch.value, rel=0.01)
    assert whole.actions[-1].value is None


def test_the_policy_waits_a_pass_when_it_spares_the_guest_most_of_its_faults() -> None:
    """With the push held to half the link, a guest dirtying 55 MiB/s would catch up with
    it and wait on pages; one more pass leaves less than half as much behind, so the policy
    waits, and pre-copy then finishes with a raised limit: a shorter gap for ~1.4 s more."""
    load = Workload(1024 * MIB, 55 * MIB, 512 * MIB, 580 * MIB)
    held = rehearse(load, 119 * MIB, replace(PRESETS["fast"], postcopy_push_share=0.5))
    assert "postcopy" not in [a.kind for a in held.actions]
    assert held.timeline().startswith("pass 3: ")
    # With the whole link the push outruns this guest: the gap is the switch's alone, no
    # later pass could shrink it, and the policy switches at once.
    whole = rehearse(load, 119 * MIB, PRESETS["fast"])
    assert whole.timeline() == "pass 2: switch to post-copy"
    assert held.guest_gap_ms is not None and whole.guest_gap_ms is not None
    assert held.guest_gap_ms < whole.guest_gap_ms


def test_estimate_says_what_pass_1_sends_and_where_the_overhead_comes_from() -> None:
    from vmigrate.cli import estimate as cli_estimate
    from vmigrate.forecast import Forecast

    load = Workload(512 * MIB, 20 * MIB, 64 * MIB, 130 * MIB)
    prediction = rehearse(load, 119 * MIB, PRESETS["fast"])
    result = Forecast(
        "vm1", "hostA", "hostB", 512 * MIB, [[1.0, 20 * MIB], [4.0, 64 * MIB]], 20 * MIB,
        64 * MIB, 300 * MIB, 119 * MIB, 119 * MIB, "given", False, {
            "name": "fast", "max_downtime_ms": 500, "postcopy_allowed": True
        }, FixedCosts().describe(), prediction.to_dict(), 0, 0.0,
        resident_overhead_bytes=170 * MIB, overhead_learned=True,
    )  # fmt: skip
    with cli_estimate.console.capture() as captured:
        cli_estimate.render(result)
    text = " ".join(captured.get().split())  # the console wraps long lines
    assert "300 MiB resident, less 170 MiB QEMU keeps for itself (learned" in text
    assert f"live will take {prediction.total_s:.1f} s" in text


def _sized_move(memory_mib: int, finish_s: float) -> FinishedMove:
    """A finished move of a guest of `memory_mib` that sent its last byte at 4.0 s."""
    sample = {"memory_total": memory_mib * MIB, "bandwidth_bps": 100 * MIB}
    return FinishedMove(
        {"total_s": 4.0 + finish_s, "storage": {}},
        [
            {**sample, "elapsed_s": 1.0, "memory_processed": 50 * MIB},
            {**sample, "elapsed_s": 4.0, "memory_processed": 350 * MIB, "memory_remaining": 1},
        ],
    )


def test_the_finish_is_learned_from_moves_of_guests_of_about_the_same_size() -> None:
    """The bench's L1 (512 MiB) learned 1.3 s from two 256 MiB moves and took ~2 s."""
    moves = [_sized_move(256, 1.3), _sized_move(256, 1.4), _sized_move(512, 1.8)]
    assert learned_costs(moves, 512 * MIB).finish_s == pytest.approx(1.8, abs=0.01)
    assert learned_costs(moves, 256 * MIB).finish_s == pytest.approx(1.35, abs=0.01)
    # No move of a like guest: all of the pair's moves teach.
    assert learned_costs(moves, 4096 * MIB).learned_from == 3
    assert learned_costs(moves).learned_from == 3


def test_copying_disks_along_adds_the_mirror_s_completion_to_the_guest_s_gap() -> None:
    """S1 in the lab: heartbeat gaps 26-84 ms over libvirt's downtime in four runs."""
    load = Workload(256 * MIB, 0.0)
    without = rehearse(load, 119 * MIB, PRESETS["fast"])
    with_disks = rehearse(load, 119 * MIB, PRESETS["fast"], disk_bytes=300 * MIB)
    assert with_disks.guest_gap_ms and with_disks.downtime_ms
    assert without.guest_gap_ms and without.downtime_ms
    assert with_disks.guest_gap_ms - with_disks.downtime_ms == pytest.approx(
        without.guest_gap_ms - without.downtime_ms + STORAGE_SWITCH_EXTRA_MS
    )


def test_without_a_like_sized_move_of_its_kind_the_finish_comes_from_all_of_that_kind() -> None:
    """G1 (1 GiB) had only post-copy moves of its size: its pre-copy finish is learned from
    the pair's other pre-copy moves, not the lab's default."""
    post = replace(_sized_move(1024, 1.5), report={"total_s": 5.5, "storage": {}, "postcopy": True})
    moves = [post, _sized_move(512, 1.8), _sized_move(512, 1.6)]
    costs = learned_costs(moves, 1024 * MIB)
    assert costs.finish_s == pytest.approx(1.7, abs=0.01)
    assert costs.postcopy_finish_s == pytest.approx(1.5, abs=0.01)
