"""The live policy replayed over jobStats traces recorded in the lab, and the samples they make."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from vmigrate.errors import UsageError
from vmigrate.live.policy import PRESETS, Action, PolicyConfig, decide, initial_state
from vmigrate.live.postcopy_link import LinkWatch
from vmigrate.live.samples import JobSample, sample_from_job_stats, with_disk_rate

TRACES = Path(__file__).parent / "data" / "jobstats"
MIB = 1 << 20


def replay(trace_name: str, config: PolicyConfig) -> tuple[list[JobSample], list[Action]]:
    """Feed a recorded trace to the policy as the runner would, sample by sample."""
    trace = json.loads((TRACES / trace_name).read_text())["trace"]
    state, samples, taken = initial_state(config), [], []
    for entry in trace:
        sample = sample_from_job_stats(entry["stats"], entry["t"], postcopy=state.postcopy)
        if sample is None:
            continue
        samples.append(sample)
        actions = decide(samples, config, state)
        taken += actions
        state = state.after(actions, sample.iteration, sample.throttle_pct)
    return samples, taken


def test_samples_from_a_recorded_trace() -> None:
    samples, _ = replay("l3-200mibs-1gbit-postcopy-after-precopy.json", PRESETS["strict"])
    first = samples[0]
    assert first.phase == "precopy" and first.iteration == 1
    assert first.memory_total == 537403392  # 512 MiB guest + device memory
    assert 100 * MIB < first.bandwidth_bps < 140 * MIB  # the 1 Gbit/s lab link
    assert first.dirty_rate_bps == 0  # unknown until the first sync
    second_pass = next(s for s in samples if s.iteration == 2)
    # QEMU counts distinct pages: a 384 MiB working set re-dirtied over a ~3.7 s pass.
    assert 95 * MIB < second_pass.dirty_rate_bps < 115 * MIB
    assert 0 < second_pass.percent <= 100


def test_no_sample_without_a_running_job() -> None:
    assert sample_from_job_stats({"type": 0}, 0.0, postcopy=False) is None
    assert sample_from_job_stats({}, 0.0, postcopy=False) is None


@pytest.mark.parametrize(
    "trace", ["l3-200mibs-1gbit-postcopy-after-precopy.json", "l2-100mibs-1gbit-precopy.json"]
)
def test_fast_switches_to_postcopy_right_after_the_first_pass(trace: str) -> None:
    _, actions = replay(trace, PRESETS["fast"])
    assert [a.kind for a in actions] == ["postcopy"]
    assert actions[0].reason.startswith("pass 2:")
    assert actions[0].at_s < 5  # decided at the first sync, not after a timeout


def test_safe_raises_downtime_as_far_as_needed_never_beyond_the_maximum() -> None:
    config = PRESETS["safe"]
    _, actions = replay("l2-100mibs-1gbit-precopy.json", config)
    downtimes = [a.value for a in actions if a.kind == "set-downtime"]
    assert downtimes and all(d is not None and d <= config.max_downtime_ms for d in downtimes)
    assert "postcopy" not in [a.kind for a in actions]


def test_strict_aborts_early_with_a_diagnosis() -> None:
    _, actions = replay("l3-200mibs-1gbit-postcopy-after-precopy.json", PRESETS["strict"])
    assert [a.kind for a in actions] == ["abort"]
    reason = actions[0].reason
    assert "MiB/s" in reason and "allow post-copy or a downtime of" in reason
    assert "the VM stays on the source" in reason


def test_timeout_forces_postcopy_or_abort() -> None:
    with_postcopy = PRESETS["fast"].with_limits(timeout_s=2.0)
    _, actions = replay("l3-200mibs-1gbit-postcopy-after-precopy.json", with_postcopy)
    assert actions[0].kind == "postcopy" and "--timeout" in actions[0].reason
    without = PRESETS["strict"].with_limits(timeout_s=2.0)
    _, actions = replay("l3-200mibs-1gbit-postcopy-after-precopy.json", without)
    assert actions[0].kind == "abort" and "--timeout" in actions[0].reason


def test_limits_override_presets() -> None:
    config = PRESETS["fast"].with_limits(max_downtime_ms=30, postcopy=False)
    assert config.max_downtime_ms == 30 and config.start_downtime_ms == 30
    assert not config.postcopy_allowed and config.autoconverge_at_start
    with pytest.raises(UsageError):
        PRESETS["fast"].with_limits(max_downtime_ms=0)
    with pytest.raises(UsageError):
        PRESETS["fast"].with_limits(timeout_s=-1)


def _throttled(iteration: int, remaining_mib: int) -> JobSample:
    return JobSample(
        elapsed_s=iteration * 2.0,
        phase="precopy",
        iteration=iteration,
        memory_total=512 * MIB,
        memory_processed=iteration * 512 * MIB,
        memory_remaining=remaining_mib * MIB,
        bandwidth_bps=119 * MIB,
        dirty_rate_bps=100 * MIB,
        expected_downtime_ms=None,
        disk_total=0,
        disk_processed=0,
        disk_remaining=0,
        throttle_pct=99,
        postcopy_requests=0,
    )


def _run(passes: list[int], config: PolicyConfig) -> list[Action]:
    state = initial_state(config).after([], 1, None)
    samples: list[JobSample] = []
    taken: list[Action] = []
    for iteration, remaining in enumerate(passes, start=2):
        samples.append(_throttled(iteration, remaining))
        actions = decide(samples, config, state)
        taken += actions
        state = state.after(actions, iteration, 99)
    return taken


def test_full_throttle_gives_up_only_when_passes_stop_shrinking() -> None:
    config = PRESETS["safe"]
    shrinking = _run([380, 330, 290, 250, 215, 185, 160], config)
    assert "abort" not in [a.kind for a in shrinking]
    stuck = _run([380, 378, 379, 377, 378, 379, 378], config)
    assert [a.kind for a in stuck][-1] == "abort"
    assert "throttled to the maximum" in stuck[-1].reason


@pytest.mark.parametrize("preset", ["safe", "strict"])
def test_postcopy_contradicting_the_policy_is_refused(preset: str) -> None:
    with pytest.raises(UsageError, match="never uses post-copy"):
        PRESETS[preset].with_limits(postcopy=True)
    assert PRESETS["fast"].with_limits(postcopy=False).postcopy_allowed is False


def _first_pass(elapsed_s: float, sent_mib: int) -> JobSample:
    return replace(
        _throttled(1, 512 - sent_mib),
        elapsed_s=elapsed_s,
        memory_processed=sent_mib * MIB,
        throttle_pct=None,
    )


def _feed(samples: list[JobSample], config: PolicyConfig) -> list[Action]:
    state, seen, taken = initial_state(config), [], []
    for sample in samples:
        seen.append(sample)
        actions = decide(seen, config, state)
        taken += actions
        state = state.after(actions, sample.iteration, sample.throttle_pct)
    return taken


def test_a_stalled_link_in_precopy_aborts_after_the_stall_time() -> None:
    moving = [_first_pass(t * 0.5, 10 + t) for t in range(10)]
    stalled = [_first_pass(5.0 + t * 0.5, 19) for t in range(1, 45)]
    taken = _feed(moving + stalled, PRESETS["fast"])
    assert [a.kind for a in taken] == ["abort"]
    assert "link is down or blocked" in taken[0].reason
    assert taken[0].at_s == pytest.approx(4.5 + PRESETS["fast"].stall_s, abs=0.6)


def test_a_slow_link_that_still_moves_is_not_a_stall() -> None:
    # 1 MiB every 10 s: slow, but moving; with a long stall time nothing is aborted.
    samples = [_first_pass(t * 0.5, 10 + t // 20) for t in range(120)]
    assert _feed(samples, PRESETS["fast"]) == []


def test_link_watch_notes_a_break_in_postcopy_once_and_its_end() -> None:
    notes: list[str] = []
    watch = LinkWatch(0.05, "hostB", notes.append)
    watch.update(100)
    time.sleep(0.08)
    watch.update(100)
    watch.update(100)
    watch.update(200)
    assert len(notes) == 2
    assert "the link is broken" in notes[0] and "does not abort" in notes[0]
    assert notes[1] == "data reaches hostB again: post-copy continues"


def test_before_the_first_byte_the_stall_limit_is_longer() -> None:
    nothing_yet = [_first_pass(t * 0.5, 0) for t in range(100)]  # 50 s of setup
    assert _feed(nothing_yet, PRESETS["fast"]) == []
    taken = _feed([_first_pass(t * 0.5, 0) for t in range(130)], PRESETS["fast"])
    assert [a.kind for a in taken] == ["abort"] and "60 s" in taken[0].reason


def test_the_disk_mirror_rate_is_derived_from_two_samples() -> None:
    first = replace(_first_pass(1.0, 0), disk_total=100 * MIB, disk_processed=10 * MIB)
    second = replace(first, elapsed_s=1.5, disk_processed=30 * MIB)
    assert with_disk_rate(second, first).disk_bandwidth_bps == 40 * MIB
    assert with_disk_rate(first, None).disk_bandwidth_bps == 0.0
