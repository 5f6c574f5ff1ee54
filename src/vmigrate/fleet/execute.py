"""Running a plan's moves: limits per source, per destination and in all; a failed move
retried on the next host that admits it; a host that stops answering gets no more moves;
Ctrl-C stops the moves in flight cleanly and starts no more."""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vmigrate.errors import VmigrateError
from vmigrate.fleet.moves import ChildMove, MoveCommand, start_move
from vmigrate.fleet.plan import (
    EvacuationInput,
    EvacuationPlan,
    Ledger,
    PlannedMove,
    VmLoad,
    next_destination,
)
from vmigrate.fleet.predict import link_free
from vmigrate.hosts import HostRef
from vmigrate.store import JobStore
from vmigrate.virt.connection import open_with_timeout

log = logging.getLogger(__name__)
Emit = Callable[[str, dict[str, Any]], None]
POLL_S = 0.5
ANSWER_TIMEOUT_S = 5.0

MOVED, STAYED, UNKNOWN, CANCELLED = "moved", "stayed", "unknown", "cancelled"


@dataclass
class MoveResult:
    vm: str
    source: str
    destination: str | None  # where it went (moved), or where it was last tried
    state: str  # moved | stayed | unknown | cancelled
    mode: str
    reason: str
    seconds: float | None = None
    downtime_ms: float | None = None
    gap_ms: float | None = None  # largest gap the lab's heartbeat saw during the move
    bytes_sent: int | None = None  # what the move sent (memory and disks), libvirt's count
    predicted_s: float | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    job_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Track:
    seq: int
    load: VmLoad
    move: PlannedMove
    tried: set[str] = field(default_factory=set)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    child: ChildMove | None = None
    started_ns: int = 0


@dataclass
class MoveContext:
    """What the moves of one fleet job share."""

    job_id: int
    store: JobStore
    refs: dict[str, HostRef]
    hosts_file: Path | None
    log_dir: Path
    emit: Emit
    seq_base: int = 0


def host_answers(ref: HostRef) -> bool:
    try:
        open_with_timeout(ref.uri, host=ref.name, timeout=ANSWER_TIMEOUT_S).close()
    except VmigrateError:
        return False
    return True


def _lab_gap_ms(vm: str, since_ns: int) -> float | None:
    """The guest-observed gap, for lab VMs whose heartbeat the lab records."""
    try:
        from vmigrate.lab.heartbeat import heartbeat_report

        report = heartbeat_report(vm, since_ns=since_ns)
    except (VmigrateError, OSError):
        return None
    return round(report.largest_gap_ms, 1) if report.beats else None


def _still_on_source(report: dict[str, Any], source: str) -> bool:
    """The move failed and the VM runs on its source alone. A destination that did not
    answer the child's final look cannot be running it either: its QEMU waits, paused, for
    libvirt to resume it after a finished migration, and the source still runs it."""
    if report.get("outcome") == "completed":
        return False
    if report.get("placement_ok"):
        return True
    placement = report.get("placement", {})
    return bool(placement.get("running_on") == [source])


class MoveScheduler:
    def __init__(
        self,
        plan: EvacuationPlan,
        inp: EvacuationInput,
        ctx: MoveContext,
        *,
        retry_elsewhere: bool = True,
    ) -> None:
        self.inp, self.ctx = inp, ctx
        # Balance turns this off: its later moves assumed the earlier ones happened, so a
        # failed one is re-planned by the next round rather than sent somewhere else.
        self.retry_elsewhere = retry_elsewhere
        self.limits = plan.limits
        loads = {vm.name: vm for vm in inp.vms}
        self.pending = [
            _Track(ctx.seq_base + i, loads[m.vm], m)
            for i, m in enumerate(sorted(plan.moves, key=lambda m: m.predicted_start_s))
        ]
        self.running: list[_Track] = []
        self.results: list[MoveResult] = []
        self.dead: set[str] = set()
        self.ledger = Ledger.of(inp.targets)
        for move in plan.moves:
            self.ledger.take(move.destination, move.need_bytes, move.vcpus)
        self.cancelled = False
        for track in self.pending:
            self._record(track, "planned", {})

    # -- bookkeeping --------------------------------------------------------------------
    def _record(self, track: _Track, state: str, extra: dict[str, Any]) -> None:
        detail = {
            "source": track.move.source,
            "destination": track.move.destination,
            "mode": track.move.mode,
            "copy_storage": track.move.copy_storage,
            "tried": sorted(track.tried),
            "attempts": track.attempts,
            **extra,
        }
        self.ctx.store.record_step(self.ctx.job_id, track.seq, track.load.name, state, detail)

    def _busy(self, host: str) -> int:
        return sum(1 for t in self.running if host in (t.move.source, t.move.destination))

    def _finish(self, track: _Track, state: str, reason: str, **extra: Any) -> None:
        result = MoveResult(
            vm=track.load.name,
            source=track.move.source,
            destination=track.move.destination,
            state=state,
            mode=track.move.mode,
            reason=reason,
            predicted_s=track.move.predicted_s,
            attempts=track.attempts,
            **extra,
        )
        self.results.append(result)
        self._record(track, state, {"reason": reason, "result": result.to_dict()})
        self.ctx.emit("move-end", result.to_dict())

    # -- the loop -----------------------------------------------------------------------
    def run(self) -> list[MoveResult]:
        try:
            while self.pending or self.running:
                self._dispatch()
                self._poll()
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            self._cancel()
        return self.results

    def _dispatch(self) -> None:
        for track in list(self.pending):
            if len(self.running) >= self.limits.max_parallel:
                return
            if track.move.destination in self.dead and not self._replace(
                track, f"{track.move.destination} stopped answering"
            ):
                continue
            source, destination = track.move.source, track.move.destination
            if (
                self._busy(source) >= self.limits.max_per_host
                or self._busy(destination) >= self.limits.max_per_host
                or not link_free(
                    source, track.move.solo, ((t.move.source, t.move.solo) for t in self.running)
                )
            ):
                continue
            self.pending.remove(track)
            self._start(track)

    def _start(self, track: _Track) -> None:
        move = track.move
        command = MoveCommand(
            vm=move.vm,
            source=move.source,
            destination=move.destination,
            mode=move.mode,
            copy_storage=move.copy_storage,
            hosts_file=self.ctx.hosts_file,
            store_path=self.ctx.store.path,
        )
        track.started_ns = time.monotonic_ns()
        track.child = start_move(command, self.ctx.log_dir, len(track.attempts) + 1)
        self.running.append(track)
        self._record(track, "running", {"pid": track.child.process.pid})
        self.ctx.emit(
            "move-start",
            {
                "vm": move.vm,
                "source": move.source,
                "destination": move.destination,
                "mode": move.mode,
                "copy_storage": move.copy_storage,
                "attempt": len(track.attempts) + 1,
                "predicted_s": move.predicted_s,
            },
        )

    def _poll(self) -> None:
        for track in list(self.running):
            child = track.child
            assert child is not None
            had_job = child.job_id
            if child.read_events() or had_job != child.job_id:
                if had_job != child.job_id:
                    self._record(track, "running", {"child_job": child.job_id})
                self.ctx.emit(
                    "move-progress",
                    {
                        "vm": track.load.name,
                        "destination": track.move.destination,
                        "phase": child.phase,
                        "percent": child.percent,
                        "elapsed_s": round(child.elapsed(), 1),
                        "job_id": child.job_id,
                    },
                )
            if child.finished():
                child.read_events()
                self.running.remove(track)
                self._settle(track, child)

    def _settle(self, track: _Track, child: ChildMove) -> None:
        destination = track.move.destination
        report = child.report
        attempt: dict[str, Any] = {
            "destination": destination,
            "job_id": child.job_id,
            "exit_code": child.process.returncode,
            "seconds": round(child.elapsed(), 1),
        }
        if report is not None:
            attempt["outcome"] = report.get("outcome")
            attempt["message"] = report.get("message")
        elif child.job_id is None:
            attempt["outcome"] = "refused"
            attempt["message"] = child.error_text() or "the move ended before it started"
        track.attempts.append(attempt)
        if (
            report is not None
            and report.get("outcome") == "completed"
            and report.get("placement_ok")
        ):
            earlier = "; ".join(
                f"{a['destination']} failed first: {a.get('message') or a.get('outcome')}"
                for a in track.attempts[:-1]
            )
            self._finish(
                track,
                MOVED,
                f"on {destination}: {report.get('placement', {}).get('summary', '')}"
                + (f" ({earlier})" if earlier else ""),
                seconds=report.get("total_s", attempt["seconds"]),
                downtime_ms=report.get("downtime_ms"),
                gap_ms=_lab_gap_ms(track.load.name, track.started_ns),
                bytes_sent=report.get("bytes_sent", report.get("bytes_moved")),
                job_id=child.job_id,
            )
            return
        untouched = report is None and child.job_id is None
        stayed = report is not None and _still_on_source(report, track.move.source)
        if not (untouched or stayed):
            self._finish(
                track,
                UNKNOWN,
                f"the move to {destination} ended without proving where the VM is "
                f"({attempt.get('message') or child.error_text() or 'no report'}): run "
                f"`vmigrate recover {track.load.name}`",
                job_id=child.job_id,
            )
            return
        why = str(attempt.get("message") or "failed")
        if self.cancelled:
            self._finish(track, CANCELLED, f"cancelled; it stays on {track.move.source}: {why}")
            return
        if not self.retry_elsewhere:
            self._finish(track, STAYED, f"{why}; it stays on {track.move.source}")
            return
        if destination not in self.dead and not host_answers(self.ctx.refs[destination]):
            self.dead.add(destination)
            self.ctx.emit(
                "notice",
                {"message": f"{destination} stopped answering: it gets no more moves"},
            )
        if not self._replace(track, f"the move to {destination} failed: {why}"):
            return
        self.pending.insert(0, track)

    def _replace(self, track: _Track, why: str) -> bool:
        """Send the move to the next host that admits it; False when none does (it stays)."""
        move = track.move
        track.tried.add(move.destination)
        self.ledger.give_back(move.destination, move.need_bytes, move.vcpus)
        if track in self.pending:
            self.pending.remove(track)
        exclude = frozenset(track.tried | self.dead)
        destination, reason = next_destination(track.load, self.inp, self.ledger, exclude)
        if destination is None:
            self._finish(track, STAYED, f"{why}; it stays on {move.source}: {reason}")
            return False
        self.ledger.take(destination, move.need_bytes, move.vcpus)
        track.move = replace(move, destination=destination, reason=f"retry ({why}): {reason}")
        self.ctx.emit(
            "notice",
            {"message": f"{move.vm}: {why}; next: {destination} ({reason})"},
        )
        self.pending.insert(0, track)
        return True

    def _cancel(self) -> None:
        """Ctrl-C: stop the moves in flight (each aborts cleanly), start no more."""
        self.cancelled = True
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.ctx.emit("notice", {"message": "cancelling: the moves in flight abort"})
            for track in self.running:
                assert track.child is not None
                track.child.stop()
            while self.running:
                self._poll()
                time.sleep(POLL_S)
            for track in self.pending:
                self._finish(
                    track, CANCELLED, f"not started: cancelled; it stays on {track.move.source}"
                )
            self.pending = []
        finally:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGINT, previous)
