"""Where a move's child left the VM, judged from its final report (pure).

A fleet operation may send a VM elsewhere only when the child *proved* the VM runs on its
source alone, as it did before. Anything else (a post-copy that failed, a source left paused,
a host that could not be checked while the VM may be there) is the VM moved or unknown,
never "stayed": a retry then would start a second copy of a VM that already runs."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

MOVED, STAYED, UNKNOWN, CANCELLED = "moved", "stayed", "unknown", "cancelled"


@dataclass(frozen=True)
class Judgement:
    state: str  # MOVED | STAYED | UNKNOWN
    why: str  # a sentence on where the VM is

    @property
    def on_source(self) -> bool:
        return self.state == STAYED


def _states(report: dict[str, Any]) -> dict[str, str]:
    placement = report.get("placement") or {}
    states = placement.get("states") or {}
    return {str(host): str(state) for host, state in states.items()}


def _running_on(report: dict[str, Any]) -> list[str]:
    placement = report.get("placement") or {}
    return [str(host) for host in placement.get("running_on") or []]


def _recover(vm: str) -> str:
    return f"run `vmigrate recover {shlex.quote(vm)}`"


def judge(
    report: dict[str, Any] | None,
    *,
    vm: str,
    source: str,
    destination: str,
    state_before: str,
    job_started: bool,
) -> Judgement:
    """MOVED, STAYED (provably on the source alone, as it was) or UNKNOWN.

    `report` is the child's final `done` event (a live or cold report), None when it ended
    without one; `job_started` whether it had created its job (before that it changes
    nothing); `state_before` the VM's state when the fleet operation looked at it."""
    if report is None:
        if not job_started:
            return Judgement(STAYED, f"nothing was changed; it stays on {source}")
        return Judgement(
            UNKNOWN, f"the move to {destination} ended without a report: {_recover(vm)}"
        )
    states = _states(report)
    summary = str((report.get("placement") or {}).get("summary") or "")
    if report.get("outcome") == "completed" and report.get("placement_ok"):
        return Judgement(MOVED, f"on {destination}: {summary}")
    on_destination = states.get(destination) == "running"
    if report.get("postcopy"):
        # Post-copy has no way back: the source's copy (paused) is older than the guest.
        if on_destination and states.get(source, "absent") != "running":
            leftover = (
                f"; a stale paused copy stays on {source}: {_recover(vm)}"
                if source in states
                else ""
            )
            return Judgement(MOVED, f"runs on {destination} after post-copy{leftover}")
        return Judgement(
            UNKNOWN,
            f"post-copy to {destination} did not finish cleanly ({summary or 'no placement'}): "
            f"never resume the paused copy on {source}; {_recover(vm)}",
        )
    source_state = states.get(source)
    expected = "paused" if state_before == "paused" else "running"
    if report.get("outcome") != "completed" and _running_on(report) == [source]:
        # A destination that did not answer the child's last look cannot run the guest: in
        # pre-copy its QEMU waits, paused, for a resume that only the finished job gives.
        if source_state == expected:
            return Judgement(STAYED, f"it runs on {source}")
        return Judgement(
            UNKNOWN,
            f"it is {source_state} on {source}, it was {state_before}: {_recover(vm)}",
        )
    if report.get("outcome") != "completed" and report.get("placement_ok"):
        # A VM that was not running (a cold move of a shut-off VM): defined on the source.
        return Judgement(STAYED, f"it stays on {source} ({summary})")
    return Judgement(
        UNKNOWN,
        f"the move to {destination} ended without proving where the VM is "
        f"({report.get('message') or summary or 'no placement'}): {_recover(vm)}",
    )
