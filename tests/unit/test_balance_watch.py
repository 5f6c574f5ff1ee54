"""`balance --watch` (fleet/rebalance.py `watch`): rounds until Ctrl-C, and none after a
round whose moves Ctrl-C cancelled (the scheduler takes that Ctrl-C, so the watch must ask)."""

from __future__ import annotations

from typing import Any

from vmigrate.events import Event, Notice
from vmigrate.fleet.rebalance import BalanceReport, BalanceRequest, watch


def _rounds(cancel_on: int | None, interrupt_on: int | None = None) -> tuple[int, list[str]]:
    played: list[int] = []
    notices: list[str] = []

    def one_round(_request: BalanceRequest, _emit: Any) -> BalanceReport:
        played.append(len(played) + 1)
        if len(played) == interrupt_on:
            raise KeyboardInterrupt
        return BalanceReport(len(played), "lab", {}, cancelled=len(played) == cancel_on)

    def sleep(_seconds: float) -> None:
        if len(played) >= 5:
            raise KeyboardInterrupt  # Ctrl-C between rounds

    def emit(event: Event) -> None:
        if isinstance(event, Notice):
            notices.append(event.message)

    reports = watch(BalanceRequest(), 1.0, emit, one_round=one_round, sleep=sleep)
    assert [r.job_id for r in reports] == played[: len(reports)]
    return len(played), notices


def test_a_round_cancelled_by_ctrl_c_is_the_last() -> None:
    played, notices = _rounds(cancel_on=2)
    assert played == 2
    assert notices[-1] == "cancelled: no more rounds"


def test_ctrl_c_between_rounds_or_while_sampling_ends_the_watch() -> None:
    assert _rounds(cancel_on=None)[0] == 5
    assert _rounds(cancel_on=None, interrupt_on=3)[0] == 3
