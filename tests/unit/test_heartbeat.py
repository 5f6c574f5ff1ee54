"""Heartbeat analysis over a log recorded in the lab during a real live migration."""

from __future__ import annotations

from pathlib import Path

from vmigrate.lab.heartbeat import Beat, analyse, beats_of, parse_console

RECORDED = Path(__file__).parent / "data" / "heartbeat-live-migration.log"


def recorded_beats() -> list[Beat]:
    return beats_of(parse_console(RECORDED.read_text().splitlines()))


def test_recorded_migration_is_contiguous_with_one_switchover_gap() -> None:
    report = analyse("t1", recorded_beats())
    assert report.contiguous
    assert report.problems == []
    assert report.first_seq == 1
    assert report.beats == report.last_seq
    # The VM moved from hostA to hostB: both hosts delivered beats, B the last ones.
    assert set(report.last_seq_by_host) == {"hostA", "hostB"}
    assert report.last_seq_by_host["hostA"] < report.last_seq_by_host["hostB"]
    # The largest gap is at the switch-over, between the last beat of A and the first of B.
    assert report.largest_gap_hosts == ("hostA", "hostB")
    assert report.largest_gap_after_seq == report.last_seq_by_host["hostA"]
    assert 10 < report.largest_gap_ms < 1000


def test_console_lines_other_than_beats_are_kept_apart() -> None:
    lines = parse_console(RECORDED.read_text().splitlines())
    texts = [line.text for line in lines if not line.text.startswith("HB ")]
    assert "RATE 100" in texts
    assert "#connected" in texts
    assert any(text.startswith("VMIGRATE workload") for text in texts)


def test_lost_beats_are_named() -> None:
    beats = [Beat(i * 10_000_000, "hostA", seq) for i, seq in enumerate([1, 2, 3, 6, 7])]
    report = analyse("vm", beats)
    assert not report.contiguous
    assert report.problems == ["beats 4..5 lost (between hostA and hostA)"]


def test_repeated_beat_is_not_contiguous() -> None:
    beats = [Beat(0, "hostA", 5), Beat(10_000_000, "hostB", 5), Beat(20_000_000, "hostB", 6)]
    report = analyse("vm", beats)
    assert not report.contiguous
    assert "repeated or restarted" in report.problems[0]


def test_largest_gap_is_measured_in_host_time() -> None:
    times_ms = [0, 10, 20, 245, 255]
    beats = [Beat(t * 1_000_000, "h", seq) for seq, t in enumerate(times_ms, start=1)]
    report = analyse("vm", beats, now_ns=300 * 1_000_000)
    assert report.largest_gap_ms == 225
    assert report.largest_gap_after_seq == 3
    assert report.last_beat_age_ms == 45


def test_no_beats_is_reported_not_raised() -> None:
    report = analyse("vm", [])
    assert report.beats == 0
    assert not report.contiguous
    assert report.problems == ["no heartbeat received"]


def test_malformed_lines_are_ignored() -> None:
    lines = parse_console(["garbage", "12 hostA HB 1", "13 hostA HB x", "nonsense 1 2"])
    assert [b.seq for b in beats_of(lines)] == [1]
