"""Properties of the live policy over arbitrary sample sequences (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vmigrate.live.policy import PRESETS, Action, PolicyConfig, decide, initial_state
from vmigrate.live.runner import job_outcome
from vmigrate.live.samples import JobSample

MIB = 1 << 20

passes = st.lists(
    st.tuples(
        st.integers(0, 600),
        st.integers(1, 400),
        st.integers(0, 800),
        st.sampled_from([None, 0, 60, 80, 99]),
    ),
    min_size=1,
    max_size=40,
)


def run(
    config: PolicyConfig,
    trace: list[tuple[int, int, int, int | None]],
    postcopy_at: int | None = None,
) -> list[tuple[int, list[Action], bool]]:
    """Feed samples (remaining MiB, bandwidth MiB/s, dirty MiB/s, throttle) as the runner does."""
    state, samples, log = initial_state(config), [], []
    iteration = 1
    for index, (remaining, bandwidth, dirty, throttle) in enumerate(trace):
        if index % 2 == 1:
            iteration += 1
        samples.append(
            JobSample(
                elapsed_s=index * 0.5,
                phase="postcopy" if state.postcopy else "precopy",
                iteration=iteration,
                memory_total=512 * MIB,
                memory_processed=index * 60 * MIB,
                memory_remaining=remaining * MIB,
                bandwidth_bps=bandwidth * MIB,
                dirty_rate_bps=dirty * MIB,
                expected_downtime_ms=None,
                disk_total=0,
                disk_processed=0,
                disk_remaining=0,
                throttle_pct=throttle,
                postcopy_requests=0,
            )
        )
        was_postcopy = state.postcopy
        actions = decide(samples, config, state)
        log.append((iteration, actions, was_postcopy))
        state = state.after(actions, iteration, throttle)
    return log


@settings(max_examples=300, deadline=None)
@given(trace=passes, preset=st.sampled_from(sorted(PRESETS)))
def test_downtime_target_never_goes_down(
    trace: list[tuple[int, int, int, int | None]], preset: str
) -> None:
    config = PRESETS[preset]
    targets: list[float] = [config.start_downtime_ms]
    for _iteration, actions, _ in run(config, trace):
        targets += [a.value for a in actions if a.kind == "set-downtime" and a.value]
    assert targets == sorted(targets)
    assert max(targets) <= config.max_downtime_ms


@settings(max_examples=300, deadline=None)
@given(trace=passes, preset=st.sampled_from(sorted(PRESETS)))
def test_nothing_after_postcopy_or_abort(
    trace: list[tuple[int, int, int, int | None]], preset: str
) -> None:
    config = PRESETS[preset]
    ended = False
    for _iteration, actions, was_postcopy in run(config, trace):
        if was_postcopy or ended:
            assert actions == []
        if any(a.kind in ("postcopy", "abort") for a in actions):
            ended = True
        if not config.postcopy_allowed:
            assert all(a.kind != "postcopy" for a in actions)


@given(
    error=st.one_of(st.none(), st.text(min_size=1)),
    abort_by=st.sampled_from([None, "policy", "user"]),
    running_on=st.sampled_from([[], ["hostA"], ["hostB"], ["hostA", "hostB"]]),
)
def test_every_job_ends_completed_aborted_cancelled_or_failed(
    error: str | None, abort_by: str | None, running_on: list[str]
) -> None:
    abort = None if abort_by is None else {"by": abort_by, "reason": "r"}
    outcome, message = job_outcome(
        call_error=error, abort=abort, running_on=running_on, destination="hostB"
    )
    assert outcome in ("completed", "aborted", "cancelled", "failed")
    assert message
    # Completed means it runs on the destination and only there.
    assert (outcome == "completed") == (running_on == ["hostB"] and error is None)
