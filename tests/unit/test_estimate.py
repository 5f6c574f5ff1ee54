from __future__ import annotations

import math
from typing import Any

import pytest

from vmigrate.estimate import (
    MIB,
    PrecopyInput,
    advise,
    estimate_postcopy,
    estimate_precopy,
    estimate_with_autoconverge,
    mib,
)


def approx_mib(x: float) -> object:
    return pytest.approx(x * MIB, abs=2)  # pass sizes are rounded to whole bytes


def inp(
    mem_mib: float = 512,
    dirty_mib_s: float = 10,
    bw_mib_s: float = 100,
    limit_ms: float = 300,
    ws_mib: float | None = None,
    **kw: int,
) -> PrecopyInput:
    return PrecopyInput(
        memory_bytes=round(mem_mib * MIB),
        dirty_rate_bps=dirty_mib_s * MIB,
        bandwidth_bps=bw_mib_s * MIB,
        max_downtime_ms=limit_ms,
        working_set_bytes=None if ws_mib is None else round(ws_mib * MIB),
        **kw,
    )


def test_mib() -> None:
    assert mib(3 * MIB) == 3.0
    assert mib(512 * 1024) == 0.5


def test_converging_guest_geometric_passes() -> None:
    # r = D/B = 0.1. Pass 1: 512 MiB in 5.12 s, dirties 51.2 MiB (512 ms at 100 MiB/s > 300).
    # Pass 2: 51.2 MiB in 0.512 s, dirties 5.12 MiB = 51.2 ms <= 300 -> switch over.
    # total = 5.12 + 0.512 + 0.0512 + 0.030 = 5.7132 s; downtime = 51.2 + 30 = 81.2 ms
    # bytes = 512 + 51.2 + 5.12 = 568.32 MiB
    est = estimate_precopy(inp())
    assert est.converges
    assert est.passes == 2
    assert est.pass_bytes[0] == 512 * MIB
    assert est.pass_bytes[1] == approx_mib(51.2)
    assert est.final_remaining_bytes == approx_mib(5.12)
    assert est.total_seconds == pytest.approx(5.7132)
    assert est.downtime_ms == pytest.approx(81.2)
    assert est.bytes_sent == approx_mib(568.32)
    # the smallest limit converging within 30 passes: R_30 = 512 MiB * 0.1^30, i.e. ~0 ms
    assert est.needed_downtime_ms == pytest.approx(0.0, abs=1e-9)


def test_tighter_limit_needs_one_more_pass() -> None:
    # limit 40 ms: R2 = 5.12 MiB = 51.2 ms > 40; pass 3 sends 5.12 MiB, R3 = 0.512 MiB = 5.12 ms
    est = estimate_precopy(inp(limit_ms=40))
    assert est.converges
    assert est.passes == 3
    assert est.downtime_ms == pytest.approx(35.12)
    assert est.total_seconds == pytest.approx(5.12 + 0.512 + 0.0512 + 0.00512 + 0.03)


def test_dirtying_faster_than_the_link_never_converges() -> None:
    # D=200 > B=100, W=M: every pass is min(200 * 5.12, 512) = 512 MiB, 5.12 s.
    est = estimate_precopy(inp(dirty_mib_s=200))
    assert not est.converges
    assert est.passes == 30
    assert est.pass_bytes == (512 * MIB,) * 30
    assert est.total_seconds == pytest.approx(30 * 5.12)  # 30 passes, no switch-over
    assert est.bytes_sent == 30 * 512 * MIB
    assert est.final_remaining_bytes == 512 * MIB
    assert est.needed_downtime_ms == pytest.approx(5120.0)  # steady pass 512 MiB / 100 MiB/s
    assert est.downtime_ms == pytest.approx(5150.0)  # a forced switch-over now


def test_small_working_set_rescues_a_fast_dirtier() -> None:
    # D=200 > B=100 but W=20 MiB: pass 1 dirties min(1024, 20) = 20 MiB = 200 ms <= 300.
    est = estimate_precopy(inp(dirty_mib_s=200, ws_mib=20))
    assert est.converges
    assert est.passes == 1
    assert est.downtime_ms == pytest.approx(230.0)
    assert est.total_seconds == pytest.approx(5.12 + 0.2 + 0.03)


def test_working_set_above_the_limit_stays_stuck() -> None:
    # W=40 MiB = 400 ms > 300: every later pass is 40 MiB (0.4 s * 200 MiB/s capped at 40).
    est = estimate_precopy(inp(dirty_mib_s=200, ws_mib=40))
    assert not est.converges
    assert est.pass_bytes[1:] == (40 * MIB,) * 29
    assert est.needed_downtime_ms == pytest.approx(400.0)
    assert estimate_precopy(inp(dirty_mib_s=200, ws_mib=40, limit_ms=400.0)).converges


def test_zero_dirty_rate_is_one_pass() -> None:
    # 1024 MiB at 1024 MiB/s = 1 s; nothing left, so downtime = the overhead only
    est = estimate_precopy(inp(mem_mib=1024, dirty_mib_s=0, bw_mib_s=1024))
    assert est.converges
    assert est.passes == 1
    assert est.final_remaining_bytes == 0
    assert est.downtime_ms == pytest.approx(30.0)
    assert est.total_seconds == pytest.approx(1.03)
    assert est.bytes_sent == 1024 * MIB


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("bandwidth_bps", 0.0, "bandwidth_bps must be > 0"),
        ("bandwidth_bps", -1.0, "bandwidth_bps must be > 0"),
        ("dirty_rate_bps", -1.0, "dirty_rate_bps must be >= 0"),
        ("memory_bytes", 0, "memory_bytes must be > 0"),
        ("max_downtime_ms", 0.0, "max_downtime_ms must be > 0"),
        ("max_downtime_ms", -5.0, "max_downtime_ms must be > 0"),
        ("working_set_bytes", -1, "working_set_bytes must be >= 0"),
        ("max_passes", 0, "max_passes must be >= 1"),
        ("already_sent_bytes", 513 * MIB, "already_sent_bytes must be within"),
        ("already_sent_bytes", -1, "already_sent_bytes must be within"),
        ("switchover_overhead_ms", -1.0, "switchover_overhead_ms must be >= 0"),
        ("dirty_rate_bps", math.nan, "dirty_rate_bps must be a finite number"),
        ("bandwidth_bps", math.inf, "bandwidth_bps must be a finite number"),
    ],
)
def test_bad_inputs_rejected(field: str, value: float, message: str) -> None:
    args: dict[str, Any] = {
        "memory_bytes": 512 * MIB,
        "dirty_rate_bps": 10.0 * MIB,
        "bandwidth_bps": 100.0 * MIB,
        "max_downtime_ms": 300.0,
        field: value,
    }
    with pytest.raises(ValueError, match=message):
        PrecopyInput(**args)


def test_already_sent_shortens_the_first_pass() -> None:
    # 256 MiB of pass 1 already sent: only 256 MiB (2.56 s) remain. The dirty bitmap has been
    # filling since pass 1 began, so pass 2 is still 10 MiB/s * 5.12 s = 51.2 MiB.
    # total = 2.56 + 0.512 + 0.0512 + 0.03 = 3.1532 s
    est = estimate_precopy(inp(already_sent_bytes=256 * MIB))
    assert est.converges
    assert est.pass_bytes[0] == 256 * MIB
    assert est.pass_bytes[1] == approx_mib(51.2)
    assert est.total_seconds == pytest.approx(3.1532)
    assert est.bytes_sent == approx_mib(256 + 51.2 + 5.12)


def test_autoconverge_converges_where_plain_precopy_cannot() -> None:
    # D=200, B=100, W=M=512, limit 300 ms (30 MiB). Throttle per pass: 0, 20, 30, ... %.
    # Passes 1-5 (D_eff 200,160,140,120,100 MiB/s over 5.12 s) all dirty the full 512 MiB.
    # Pass 6 (60%, 80 MiB/s): 409.6; pass 7 (70%, 60 MiB/s over 4.096 s): 245.76;
    # pass 8 (80%, 40 over 2.4576 s): 98.304; pass 9 (90%, 20 over 0.98304 s): 19.6608 MiB
    # = 196.608 ms <= 300 -> converges in 9 passes with the throttle at 90%.
    # total = (6*512 + 409.6 + 245.76 + 98.304 + 19.6608) MiB / 100 MiB/s + 0.03 s
    plain = inp(dirty_mib_s=200)
    assert not estimate_precopy(plain).converges
    est, throttle = estimate_with_autoconverge(plain)
    assert est.converges
    assert throttle == 90
    assert est.passes == 9
    assert est.downtime_ms == pytest.approx(226.608)
    sent = 6 * 512 + 409.6 + 245.76 + 98.304 + 19.6608  # passes 1-8 + the stop-and-copy
    assert est.total_seconds == pytest.approx(sent / 100 + 0.03)
    assert est.bytes_sent == approx_mib(sent)


def test_autoconverge_reports_zero_throttle_when_not_needed() -> None:
    est, throttle = estimate_with_autoconverge(inp(dirty_mib_s=0))
    assert est.passes == 1
    assert throttle == 0
    with pytest.raises(ValueError, match="auto-converge needs"):
        estimate_with_autoconverge(inp(), initial_pct=50, max_pct=40)


def test_postcopy_totals() -> None:
    # D=200, B=100, W=M: after pass 1 (512 MiB, 5.12 s) all 512 MiB are dirty again;
    # switch (30 ms pause), then 512 MiB fetched in 5.12 s. total 10.27 s, 1024 MiB.
    pc = estimate_postcopy(inp(dirty_mib_s=200))
    assert pc.total_seconds == pytest.approx(10.27)
    assert pc.bytes_sent == 1024 * MIB
    assert pc.switch_pause_ms == pytest.approx(30.0)
    assert pc.postcopy_seconds == pytest.approx(5.12)
    pc2 = estimate_postcopy(inp(dirty_mib_s=200), precopy_passes=2)
    assert pc2.total_seconds == pytest.approx(15.39)
    with pytest.raises(ValueError, match="precopy_passes"):
        estimate_postcopy(inp(), precopy_passes=0)


def test_postcopy_after_convergence_is_just_precopy() -> None:
    # D=10: after pass 1, 51.2 MiB remain (512 ms > 300): post-copy fetches them in 0.512 s.
    pc = estimate_postcopy(inp())
    assert pc.total_seconds == pytest.approx(5.12 + 0.03 + 0.512)
    assert pc.postcopy_seconds == pytest.approx(0.512)
    # pre-copy converges at pass 2, before a switch after pass 2 would happen
    pc2 = estimate_postcopy(inp(), precopy_passes=2)
    assert pc2.postcopy_seconds == 0.0
    assert pc2.total_seconds == pytest.approx(5.7132)
    assert pc2.switch_pause_ms == pytest.approx(81.2)


def test_advise_precopy() -> None:
    adv = advise(inp(), allowed_max_downtime_ms=300, postcopy_allowed=True)
    assert adv.action == "precopy"
    assert adv.downtime_ms == 300
    assert "10 MiB/s" in adv.reason
    assert "100 MiB/s" in adv.reason
    assert "2 passes" in adv.reason
    assert "81 ms" in adv.reason


def test_advise_raise_downtime_small_raise() -> None:
    # W=42 MiB: stuck at 420 ms passes; 420 <= 2 x 300, so raising beats post-copy -> 450 ms
    adv = advise(
        inp(dirty_mib_s=200, ws_mib=42), allowed_max_downtime_ms=1000, postcopy_allowed=True
    )
    assert adv.action == "raise-downtime"
    assert adv.downtime_ms == 450
    assert "450 ms" in adv.reason
    assert "200 MiB/s" in adv.reason
    assert "working set 42 MiB" in adv.reason


def test_advise_raise_downtime_big_raise_without_postcopy() -> None:
    # needs 5120 ms -> 5150 ms; allowed 6000 and post-copy forbidden
    adv = advise(inp(dirty_mib_s=200), allowed_max_downtime_ms=6000, postcopy_allowed=False)
    assert adv.action == "raise-downtime"
    assert adv.downtime_ms == 5150
    # capped at the allowed maximum when the step overshoots it
    adv = advise(inp(dirty_mib_s=200), allowed_max_downtime_ms=5130, postcopy_allowed=False)
    assert adv.downtime_ms == 5130


def test_advise_postcopy_over_a_big_raise() -> None:
    adv = advise(inp(dirty_mib_s=200), allowed_max_downtime_ms=6000, postcopy_allowed=True)
    assert adv.action == "postcopy"
    assert "5150 ms" in adv.reason
    assert "10.3 s" in adv.reason
    assert "300 ms" in adv.reason


def test_advise_autoconverge() -> None:
    adv = advise(inp(dirty_mib_s=200), allowed_max_downtime_ms=300, postcopy_allowed=False)
    assert adv.action == "auto-converge"
    assert adv.downtime_ms == 300
    assert "90%" in adv.reason


def test_advise_abort() -> None:
    adv = advise(
        inp(dirty_mib_s=200),
        allowed_max_downtime_ms=300,
        postcopy_allowed=False,
        autoconverge_allowed=False,
    )
    assert adv.action == "abort"
    assert adv.downtime_ms is None
    assert adv.reason == (
        "guest dirties 200 MiB/s, link carries 100 MiB/s: cannot converge under 300 ms "
        "within 10 passes; allow post-copy or a downtime of 5150 ms (allowed 300 ms)"
    )
    # even 99% throttling leaves 2000 MiB/s * 1% = 20 MiB/s > 10 MiB/s link
    adv = advise(
        inp(dirty_mib_s=2000, bw_mib_s=10), allowed_max_downtime_ms=300, postcopy_allowed=False
    )
    assert adv.action == "abort"


LAB = {"mem_mib": 512, "ws_mib": 384, "bw_mib_s": 119}


def test_lab_200_mib_s_does_not_converge() -> None:
    lab = inp(dirty_mib_s=200, limit_ms=300, **LAB)
    est = estimate_precopy(lab)
    assert not est.converges
    # steady state: the 384 MiB working set every pass = 384/119 s = 3227 ms
    assert est.needed_downtime_ms == pytest.approx(384 / 119 * 1000)
    adv = advise(lab, allowed_max_downtime_ms=300, postcopy_allowed=True)
    assert adv.action == "postcopy"
    assert "3250 ms" in adv.reason
    # 512/119 + 384/119 s + 30 ms
    assert estimate_postcopy(lab).total_seconds == pytest.approx(896 / 119 + 0.03)
    adv = advise(lab, allowed_max_downtime_ms=300, postcopy_allowed=False)
    assert adv.action != "precopy"
    assert adv.action == "auto-converge"


def test_lab_100_mib_s_converges_slowly() -> None:
    # r = 100/119 = 0.84; R_k = 384 * r^(k-1) MiB must reach 119 * 0.3 = 35.7 MiB: k = 15
    lab = inp(dirty_mib_s=100, limit_ms=300, **LAB)
    est = estimate_precopy(lab)
    assert est.converges
    assert est.passes == 15
    assert est.total_seconds > 512 / 119  # never below the 4.3 s floor
    assert 20 < est.total_seconds < 25
    # 15 passes is not "a few": within 10 it needs R_10/B ~ 674 ms -> 700 > 2 x 300
    assert advise(lab, allowed_max_downtime_ms=300, postcopy_allowed=True).action == "postcopy"
    adv = advise(lab, allowed_max_downtime_ms=1000, postcopy_allowed=False)
    assert adv.action == "raise-downtime"
    assert adv.downtime_ms == 700
    assert advise(lab, allowed_max_downtime_ms=300, postcopy_allowed=False).action == (
        "auto-converge"
    )
    adv = advise(
        lab, allowed_max_downtime_ms=300, postcopy_allowed=False, autoconverge_allowed=False
    )
    assert adv.action == "precopy"  # slow, but it does finish
    assert "15 passes" in adv.reason
