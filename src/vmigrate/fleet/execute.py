"""Running a plan's moves: limits per source, per destination and in all; a failed move
retried on the next host that admits it; a host that stops answering gets no more moves;
Ctrl-C stops the moves in flight cleanly and starts no more.

What always holds (tests/unit/test_scheduler.py checks it over random failures):
- a VM has at most one child at any moment (a move, or the rollback of an interrupted one);
- each VM goes to each destination at most once;
- each VM gets exactly one result, and the result says where it runs: a VM is sent
  elsewhere only when its child proved it runs on its source alone (fleet/outcome.py);
- Ctrl-C in a cold move rolls it back (the VM runs on its source again) or, past the point
  of no return, lets it finish; a live move aborts (unless in post-copy, which finishes);
- the hosts of the moves in flight are probed every few seconds: a live move into a host
  that stopped answering is stopped (the VM stays on its source) and tried elsewhere.

Which move starts when follows the link (predict.link_ready, the rule the plan's prediction
runs): a move's child starts once the moves still sending over its links will have sent
their last byte by the time its set-up is over, as their latest samples say (or leave room
for its streams, on a link that carries several). The set-up time is learned from this
job's own children as they start sending."""

from __future__ import annotations

import contextlib
import logging
import signal
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vmigrate.events import EventSink, MoveEnded, MoveProgress, MoveStarted, Notice
from vmigrate.fleet.hostwatch import HostWatch, ProbingWatch, host_answers
from vmigrate.fleet.leases import Reserver
from vmigrate.fleet.logs import MoveLogs
from vmigrate.fleet.moves import RESUME, ROLLBACK, MoveChild, MoveCommand, start_move
from vmigrate.fleet.outcome import CANCELLED, MOVED, STAYED, UNKNOWN, judge
from vmigrate.fleet.plan import (
    COLD,
    LIVE,
    FleetInput,
    FleetPlan,
    Ledger,
    PlannedMove,
    VmLoad,
    next_destination,
)
from vmigrate.fleet.predict import LinkClaim, link_ready
from vmigrate.fleet.stream import Completion, PlanFeed, PlanningStopped
from vmigrate.guest_gap import measured_gap_ms
from vmigrate.hosts import HostRef
from vmigrate.journal import Journal
from vmigrate.store import JobStore
from vmigrate.trusted_checks import TrustedChecks

__all__ = [
    "CANCELLED",
    "MOVED",
    "STAYED",
    "UNKNOWN",
    "MoveContext",
    "MoveResult",
    "MoveScheduler",
    "Runtime",
    "host_answers",
]

log = logging.getLogger(__name__)
#: How often the scheduler reads its children: a move's end or first byte is seen (and the
#: next move started) at most this late; a step costs a few non-blocking reads.
POLL_S = 0.2
#: Probes in a row a host of a move in flight may miss before it counts as dead.
DEAD_AFTER_FAILURES = 2
#: A live child stopped because its destination died gets a second SIGINT after this long:
#: it ends the child's wait for the dead host to answer (it reports what it knows).
HURRY_AFTER_S = 5.0
#: The cold journal's step after which the VM runs on the destination: no way back.
NO_RETURN_STEP = "verify running"

WAITING, RUNNING, ENDED, DONE = "waiting", "running", "ended", "done"


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
    gap_ms: float | None = None  # largest gap the guest saw, where a probe measures it
    bytes_sent: int | None = None  # what crossed the link: memory QEMU sent + the disks' data
    predicted_s: float | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    job_id: int | None = None
    runs_on: str | None = None  # where the VM is, as this result says (None: unknown)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Track:
    seq: int
    load: VmLoad
    move: PlannedMove
    tried: set[str] = field(default_factory=set)  # destinations a child was started for
    attempts: list[dict[str, Any]] = field(default_factory=list)
    child: MoveChild | None = None
    started_ns: int = 0
    phase: str = ""  # waiting | running | ended | done
    recovering: str | None = None  # rollback | resume: the child finishes an interrupted job
    recover_job: int | None = None
    stop_sent_at: float | None = None
    stop_reason: str | None = None
    stop_pending: bool = False  # Ctrl-C: to be stopped at the next clean point
    sending: bool = False  # its child has started to send (its set-up is over)


@dataclass
class MoveContext:
    """What the moves of one fleet job share."""

    job_id: int
    store: JobStore
    refs: dict[str, HostRef]
    hosts_file: Path | None
    logs: MoveLogs
    emit: EventSink
    seq_base: int = 0
    #: Takes the next move's lease while the moves before it send, for its child (None:
    #: each child takes its own).
    reserver: Reserver | None = None


@dataclass(frozen=True)
class Runtime:
    """What the scheduler runs on: real children, probes and time (stand-ins in tests)."""

    start: Callable[[MoveCommand, MoveLogs, int], MoveChild] = start_move
    watch: Callable[[dict[str, HostRef]], HostWatch] = ProbingWatch
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    poll_s: float = POLL_S
    gap_ms: Callable[[str, int], float | None] = measured_gap_ms
    #: While a streamed plan is being made: wait for its next move instead of a plain
    #: sleep (None: sleep; the tests' simulated time places moves from `sleep`).
    wait_for_moves: Callable[[PlanFeed, float], None] | None = None


@contextlib.contextmanager
def _stops_deferred(on_stop: Callable[[], None]) -> Iterator[None]:
    """Ctrl-C and SIGTERM (where they would raise KeyboardInterrupt) only set a flag while
    the scheduler runs, so they never land halfway through its bookkeeping."""
    previous: dict[signal.Signals, Any] = {}
    with contextlib.suppress(ValueError):  # not the main thread: KeyboardInterrupt as usual
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) is signal.default_int_handler:
                previous[signum] = signal.signal(signum, lambda _n, _f: on_stop())
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class MoveScheduler:
    def __init__(
        self,
        plan: FleetPlan,
        inp: FleetInput,
        ctx: MoveContext,
        *,
        retry_elsewhere: bool = True,
        runtime: Runtime | None = None,
        feed: PlanFeed | None = None,
        on_complete: Callable[[Completion], None] | None = None,
    ) -> None:
        """`plan`'s moves run; with `feed` (a plan still being made, stream.py) its moves
        join as they are placed, and `on_complete` gets the plan once it is complete."""
        self.inp, self.ctx = inp, ctx
        self.rt = runtime or Runtime()
        # Balance turns this off: its later moves assumed the earlier ones happened, so a
        # failed one is re-planned by the next round rather than sent somewhere else.
        self.retry_elsewhere = retry_elsewhere
        self.limits = plan.limits
        self.bandwidth = plan.bandwidth_bps
        self.setups_seen: list[float] = []  # seconds from a child's start to its first byte
        self.tracks: list[_Track] = []
        self.queue: list[_Track] = []
        self.running: list[_Track] = []
        self.results: list[MoveResult] = []
        self.dead: set[str] = set()
        self.ledger = Ledger.of(inp.targets)
        self.cancelled = False
        self._stop_requested = False
        self.watch = self.rt.watch(ctx.refs)
        self.feed, self.on_complete = feed, on_complete
        self.complete = feed is None  # every move of the plan is known
        # Moves that failed before the plan was complete: retried once it is (a retry
        # takes room the planner may still be giving to the VMs it places).
        self.deferred: list[tuple[_Track, str]] = []
        loads = {vm.name: vm for vm in inp.vms}
        for move in sorted(plan.moves, key=lambda m: m.predicted_start_s):
            self._admit(move, loads[move.vm])

    def _admit(self, move: PlannedMove, load: VmLoad) -> None:
        """A placed move joins: its room taken, recorded in the job, queued."""
        track = _Track(self.ctx.seq_base + len(self.tracks), load, move)
        self.tracks.append(track)
        self.ledger.take(move.destination, move.need_bytes, move.vcpus)
        self._enqueue(track)
        self._record(track, "planned", {})
        if self.cancelled:
            self._stays(track, f"not started: cancelled; it stays on {move.source}")

    def _take_placed(self) -> None:
        """The moves the planning thread placed since the last step, then its completion."""
        if self.feed is None or self.complete:
            return
        arrivals, completion = self.feed.take()
        for arrival in arrivals:
            self.inp = replace(
                self.inp,
                vms=(*self.inp.vms, arrival.load),
                verdicts=(*self.inp.verdicts, *arrival.verdicts),
                checks=(*self.inp.checks, *arrival.checks),
            )
            self._admit(arrival.move, arrival.load)
        if completion is not None:
            self._completed(completion)

    def _completed(self, completion: Completion) -> None:
        """The plan is complete: each move gets its link figures and predictions, the queue
        the plan's order, and moves that failed meanwhile their retry."""
        self.complete = True
        self.inp = completion.inp
        self.bandwidth = completion.plan.bandwidth_bps
        final = {move.vm: move for move in completion.plan.moves}
        for track in self.tracks:
            planned = final.get(track.load.name)
            if planned is None or track.phase == DONE:
                continue
            if planned.destination == track.move.destination:
                track.move = planned
            else:  # sent elsewhere meanwhile: the new link figures, its own destination
                track.move = replace(
                    planned,
                    destination=track.move.destination,
                    reason=track.move.reason,
                    alternatives=track.move.alternatives,
                )
        self.queue.sort(key=lambda t: t.move.predicted_start_s)
        if completion.error is not None and not isinstance(completion.error, PlanningStopped):
            self.ctx.emit(
                Notice(f"planning stopped: {completion.error}; the moves placed before go on")
            )
        deferred, self.deferred = self.deferred, []
        for track, why in deferred:
            if self.cancelled:
                self._stays(track, f"cancelled; it stays on {track.move.source}: {why}")
            else:
                self._retry(track, why)
        if self.on_complete is not None:
            self.on_complete(completion)

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

    def _enqueue(self, track: _Track, *, first: bool = False) -> None:
        """The one way into the queue: a track waits at most once, never while it runs."""
        assert track.phase in ("", ENDED), f"{track.load.name} cannot wait: it is {track.phase}"
        assert track.child is None and track not in self.queue
        track.phase = WAITING
        self.queue.insert(0 if first else len(self.queue), track)

    def _finish(
        self, track: _Track, state: str, reason: str, runs_on: str | None, **extra: Any
    ) -> None:
        """The VM's one result."""
        assert track.phase in (WAITING, ENDED), f"{track.load.name} finished while {track.phase}"
        assert track.child is None
        assert all(r.vm != track.load.name for r in self.results), track.load.name
        if track.phase == WAITING:
            self.queue.remove(track)
        track.phase = DONE
        self._release_lease(track)
        result = MoveResult(
            vm=track.load.name,
            source=track.move.source,
            destination=track.move.destination,
            state=state,
            mode=track.move.mode,
            reason=reason,
            predicted_s=track.move.predicted_s,
            attempts=track.attempts,
            runs_on=runs_on,
            **extra,
        )
        self.results.append(result)
        self._record(track, state, {"reason": reason, "result": result.to_dict()})
        self.ctx.emit(MoveEnded(**result.to_dict()))

    def _stays(self, track: _Track, reason: str) -> None:
        """The VM runs on its source: the destination's room is free again."""
        move = track.move
        self.ledger.give_back(move.destination, move.need_bytes, move.vcpus)
        state = CANCELLED if self.cancelled else STAYED
        self._finish(track, state, reason, move.source)

    # -- the loop -----------------------------------------------------------------------
    def interrupt(self) -> None:
        """Ctrl-C: stop at the next step of the loop."""
        self._stop_requested = True

    def run(self) -> list[MoveResult]:
        with _stops_deferred(self.interrupt):
            try:
                while self.queue or self.running or not self.complete:
                    try:
                        self._step()
                        self._pause()
                    except KeyboardInterrupt:
                        self.interrupt()
            finally:
                self.watch.close()
                if self.ctx.reserver is not None:
                    self.ctx.reserver.close()
                self.ctx.logs.close()
        assert all(t.phase == DONE for t in self.tracks)
        assert len(self.results) == len(self.tracks)
        return self.results

    def _pause(self) -> None:
        waiting = self.rt.wait_for_moves
        if self.feed is not None and not self.complete and waiting is not None:
            waiting(self.feed, self.rt.poll_s)
        else:
            self.rt.sleep(self.rt.poll_s)

    def _step(self) -> None:
        if self._stop_requested and not self.cancelled:
            self._cancel()
        if self.cancelled:
            self._stop_children()
        self._take_placed()
        self._poll()  # first: the link's next move is chosen from the latest samples
        self._dispatch()
        self._reserve_ahead()
        self._watch_hosts()

    def _dispatch(self) -> None:
        for track in list(self.queue):
            if len(self.running) >= self.limits.max_parallel:
                return
            if not self.complete and self.running:
                return  # the link figures come with the complete plan: one move till then
            source, destination = track.move.source, track.move.destination
            if source in self.dead:
                self._stays(track, f"not started: {source} stopped answering; it stays there")
                continue
            if destination in self.dead and (
                not self.complete  # sent elsewhere once every VM has its place
                or not self._redirect(track, f"{destination} stopped answering")
            ):
                continue
            destination = track.move.destination
            if (
                self._busy(source) >= self.limits.max_per_host
                or self._busy(destination) >= self.limits.max_per_host
                or not self._link_ready(track)
                or self._lease_state(track) == "taking"  # its child starts once it is ours
            ):
                continue
            self._start(track)

    # -- the lease, taken ahead ---------------------------------------------------------
    def _lease_state(self, track: _Track) -> str:
        reserver = self.ctx.reserver
        return "none" if reserver is None else reserver.state(track.load.name)

    def _reserve_ahead(self) -> None:
        """While moves run, the lease of the next move to start is taken (fleet/leases.py),
        so that its child need not wait the lease's settle; one at a time."""
        reserver = self.ctx.reserver
        if reserver is None or self.cancelled or not self.running or reserver.busy():
            return
        for track in self.queue:
            source = track.move.source
            if source not in self.dead and source in self.ctx.refs:
                reserver.reserve(track.load.name, self.ctx.refs[source])
                return

    def _release_lease(self, track: _Track) -> None:
        """The VM's child ended, or none will start: the fleet's lease goes where it is
        still ours (a child that took it over holds its own)."""
        if self.ctx.reserver is not None:
            self.ctx.reserver.release(track.load.name)

    # -- the link -------------------------------------------------------------------------
    def _lead_s(self, track: _Track) -> float:
        """How long a child takes from its start to its first byte: as this job's children
        took (the median), else as planned."""
        if self.setups_seen:
            return statistics.median(self.setups_seen)
        return track.move.setup_s

    def _stream_bps(self, track: _Track) -> float:
        return min(track.move.stream_bps or self.bandwidth, self.bandwidth)

    def _busy_for(self, track: _Track) -> float:
        """Seconds from now this move will still send: what its latest event says is left
        at the rate it gets (in its first pass, plus the later passes the plan predicted: a
        busy guest's pages dirtied meanwhile go again), or, before its first byte, what is
        left of its set-up plus its planned transfer. A rollback or a resume sends next to
        nothing."""
        child = track.child
        if child is None or track.recovering is not None:
            return 0.0
        left = child.link_bytes_left
        if left is None:
            return max(self._lead_s(track) - child.elapsed(), 0.0) + track.move.link_s
        rate = max(child.link_rate_bps or self._stream_bps(track), 1.0)
        later = 0.0
        if child.link_pass <= 1 and child.link_total > 0:
            later = max(track.move.link_s - child.link_total / self._stream_bps(track), 0.0)
        return left / rate + later

    def _link_ready(self, track: _Track) -> bool:
        move = track.move
        running = [
            LinkClaim(
                t.move.source,
                t.move.destination,
                self._stream_bps(t),
                self._busy_for(t),
                t.move.solo,
            )
            for t in self.running
        ]
        candidate = LinkClaim(
            move.source, move.destination, self._stream_bps(track), 0.0, move.solo
        )
        return link_ready(candidate, running, self._lead_s(track), self.bandwidth)

    def _command(self, track: _Track) -> MoveCommand:
        move = track.move
        checks = self.inp.checks_of(move.vm, move.destination)
        return MoveCommand(
            trusted=None
            if checks is None
            else TrustedChecks(self.ctx.job_id, self.inp.checked_at, checks),
            vm=move.vm,
            source=move.source,
            destination=move.destination,
            mode=move.mode,
            copy_storage=move.copy_storage,
            hosts_file=self.ctx.hosts_file,
            store_path=self.ctx.store.path,
            parallel=move.parallel,
        )

    def _start(self, track: _Track) -> None:
        move = track.move
        assert track.phase == WAITING
        assert move.destination not in track.tried, f"{move.vm} was tried on {move.destination}"
        self.queue.remove(track)
        track.tried.add(move.destination)
        track.stop_sent_at = track.stop_reason = None
        command = self._command(track)
        if self.ctx.reserver is not None:
            command = replace(command, lease=self.ctx.reserver.hand_over(track.load.name))
        self._launch(track, command)
        self.ctx.emit(
            MoveStarted(
                vm=move.vm,
                source=move.source,
                destination=move.destination,
                mode=move.mode,
                copy_storage=move.copy_storage,
                attempt=len(track.attempts) + 1,
                predicted_s=move.predicted_s,
            )
        )

    def _launch(self, track: _Track, command: MoveCommand, recovering: str | None = None) -> None:
        """Start a child for the VM: never while another one works on it."""
        if track.child is not None or any(t.load.name == track.load.name for t in self.running):
            # Kept even under `python -O`: two children on one VM is what must never happen.
            raise RuntimeError(f"{track.load.name}: a child already works on it")
        track.recovering = recovering
        track.started_ns = time.monotonic_ns()
        track.child = self.rt.start(command, self.ctx.logs, len(track.attempts) + 1)
        track.phase = RUNNING
        track.sending = False
        self.running.append(track)
        self._record(track, "running", {"pid": track.child.pid, "action": command.action})

    def _poll(self) -> None:
        for track in list(self.running):
            child = track.child
            assert child is not None
            had_job = child.job_id
            if child.read_events() or had_job != child.job_id:
                if not track.sending and child.link_bytes_left is not None:
                    track.sending = True
                    if track.recovering is None:
                        self.setups_seen.append(child.elapsed())
                if had_job != child.job_id:
                    self._record(track, "running", {"child_job": child.job_id})
                self.ctx.emit(
                    MoveProgress(
                        vm=track.load.name,
                        destination=track.move.destination,
                        phase=child.phase,
                        percent=child.percent,
                        elapsed_s=round(child.elapsed(), 1),
                        job_id=child.job_id,
                    )
                )
            if child.finished():
                child.read_events()
                self._settle(track)

    # -- a child ended ------------------------------------------------------------------
    def _settle(self, track: _Track) -> None:
        child = track.child
        assert child is not None and track.phase == RUNNING
        self.running.remove(track)
        track.child, track.phase = None, ENDED
        self._release_lease(track)
        error = child.error_text()
        child.close()
        if track.recovering is not None:
            self._settle_recovery(track, child, error)
            return
        destination, report = track.move.destination, child.report
        attempt: dict[str, Any] = {
            "destination": destination,
            "job_id": child.job_id,
            "exit_code": child.exit_code,
            "seconds": round(child.elapsed(), 1),
        }
        if report is not None:
            attempt["outcome"] = report.get("outcome")
            attempt["message"] = report.get("message")
        elif child.job_id is None:
            attempt["outcome"] = "refused"
            attempt["message"] = error or "the move ended before it started"
        else:
            attempt["outcome"] = "interrupted"
            attempt["message"] = error or "the move ended without a report"
        if track.stop_reason:
            attempt["stopped"] = track.stop_reason
        track.attempts.append(attempt)
        if report is None and child.job_id is not None and track.move.mode == COLD:
            self._recover_cold(track, child.job_id)
            return
        verdict = judge(
            report,
            vm=track.load.name,
            source=track.move.source,
            destination=destination,
            state_before=track.load.state,
            job_started=child.job_id is not None,
        )
        if verdict.state == MOVED:
            self._moved(track, verdict.why, report or {}, child.job_id, attempt["seconds"])
            return
        if verdict.state == UNKNOWN:
            self._finish(track, UNKNOWN, verdict.why, None, job_id=child.job_id)
            return
        why = str(attempt.get("message") or "failed")
        if track.stop_reason:
            why = f"{track.stop_reason}: {why}"
        if self.cancelled:
            self._stays(track, f"cancelled; it stays on {track.move.source}: {why}")
            return
        if not self.retry_elsewhere:
            self._stays(track, f"{why}; it stays on {track.move.source}")
            return
        if destination not in self.dead and (
            self.watch.failures(destination) > 0 or not self.watch.answers(destination)
        ):
            self._mark_dead(destination)
        move = track.move
        self.ledger.give_back(move.destination, move.need_bytes, move.vcpus)
        if not self.complete:
            self.deferred.append((track, f"the move to {destination} failed: {why}"))
            return
        self._retry(track, f"the move to {destination} failed: {why}")

    def _moved(
        self,
        track: _Track,
        where: str,
        report: dict[str, Any],
        job_id: int | None,
        seconds: float,
    ) -> None:
        earlier = "; ".join(
            f"{a['destination']} failed first: {a.get('message') or a.get('outcome')}"
            for a in track.attempts[:-1]
        )
        self._finish(
            track,
            MOVED,
            where + (f" ({earlier})" if earlier else ""),
            track.move.destination,
            seconds=report.get("total_s", seconds),
            downtime_ms=report.get("downtime_ms"),
            gap_ms=self.rt.gap_ms(track.load.name, track.started_ns),
            bytes_sent=report.get("bytes_sent", report.get("bytes_moved")),
            job_id=job_id,
        )

    def _recover_cold(self, track: _Track, job_id: int) -> None:
        """A cold child stopped without finishing its job (Ctrl-C, or it died): the VM may be
        shut off on its source. Roll the job back, or finish it once the VM runs on the
        destination: a person would run the same `vmigrate jobs rollback|resume`."""
        past = Journal(self.ctx.store, job_id).done(NO_RETURN_STEP)
        action = RESUME if past else ROLLBACK
        how = (
            f"it already runs on {track.move.destination}: finishing the move"
            if past
            else f"rolling it back, so that it runs on {track.move.source} again"
        )
        self.ctx.emit(Notice(f"{track.load.name}: job {job_id} stopped; {how}"))
        track.recover_job = job_id
        self._launch(track, replace(self._command(track), action=action, job_id=job_id), action)

    def _settle_recovery(self, track: _Track, child: MoveChild, error: str) -> None:
        job = track.recover_job
        verdict = judge(
            child.report,
            vm=track.load.name,
            source=track.move.source,
            destination=track.move.destination,
            state_before=track.load.state,
            job_started=True,
        )
        message = (child.report or {}).get("message") or error or "no report"
        track.attempts.append(
            {
                "destination": track.move.destination,
                "job_id": job,
                "action": track.recovering,
                "exit_code": child.exit_code,
                "outcome": (child.report or {}).get("outcome"),
                "message": message,
            }
        )
        if verdict.state == MOVED:
            self._moved(track, verdict.why, child.report or {}, job, round(child.elapsed(), 1))
        elif verdict.state == STAYED:
            self._stays(track, f"job {job} was interrupted and rolled back: {message}")
        else:
            self._finish(
                track,
                UNKNOWN,
                f"job {job} was interrupted and its {track.recovering} did not prove where "
                f"the VM is ({message}): run `vmigrate jobs rollback {job}` or "
                f"`vmigrate jobs resume {job}`",
                None,
                job_id=job,
            )

    # -- elsewhere ----------------------------------------------------------------------
    def _retry(self, track: _Track, why: str) -> None:
        """Queue the VM for the next host that admits it (its room already given back);
        it stays where it is when none does."""
        move = track.move
        exclude = frozenset(track.tried | self.dead)
        destination, reason = next_destination(track.load, self.inp, self.ledger, exclude)
        if destination is None:
            self._finish(track, STAYED, f"{why}; it stays on {move.source}: {reason}", move.source)
            return
        self.ledger.take(destination, move.need_bytes, move.vcpus)
        track.move = replace(move, destination=destination, reason=f"retry ({why}): {reason}")
        self.ctx.emit(Notice(f"{move.vm}: {why}; next: {destination} ({reason})"))
        self._enqueue(track, first=True)

    def _redirect(self, track: _Track, why: str) -> bool:
        """A waiting move whose destination died goes to the next host; False (and its
        result) when none admits it."""
        assert track.phase == WAITING
        move = track.move
        self.ledger.give_back(move.destination, move.need_bytes, move.vcpus)
        exclude = frozenset(track.tried | self.dead)
        destination, reason = next_destination(track.load, self.inp, self.ledger, exclude)
        if destination is None:
            self._finish(
                track,
                STAYED,
                f"not started: {why}; it stays on {move.source}: {reason}",
                move.source,
            )
            return False
        self.ledger.take(destination, move.need_bytes, move.vcpus)
        track.move = replace(move, destination=destination, reason=f"{why}: {reason}")
        self.ctx.emit(Notice(f"{move.vm}: {why}; next: {destination} ({reason})"))
        return True

    # -- hosts that stop answering ------------------------------------------------------
    def _mark_dead(self, host: str) -> None:
        if host not in self.dead:
            self.dead.add(host)
            self.ctx.emit(Notice(f"{host} stopped answering: it gets no more moves"))

    def _watch_hosts(self) -> None:
        hosts = {h for t in self.running for h in (t.move.source, t.move.destination)}
        self.watch.watch(hosts)
        for host in sorted(hosts - self.dead):
            if self.watch.failures(host) >= DEAD_AFTER_FAILURES:
                self._mark_dead(host)
        now = self.rt.clock()
        for track in self.running:
            child = track.child
            assert child is not None
            # A cold child finds a dead destination itself (its next step fails, it rolls
            # back); a rollback runs to its end; post-copy has no way back.
            if (
                track.recovering is not None
                or track.move.mode != LIVE
                or track.move.destination not in self.dead
                or child.phase == "postcopy"
            ):
                continue
            if track.stop_sent_at is None or track.stop_reason is None:
                track.stop_reason = f"{track.move.destination} stopped answering"
                self.ctx.emit(
                    Notice(
                        f"{track.load.name}: {track.stop_reason}: stopping its move "
                        f"(the VM stays on {track.move.source})"
                    )
                )
                child.stop()
                track.stop_sent_at = now
            elif now - track.stop_sent_at >= HURRY_AFTER_S:
                child.hurry()

    # -- Ctrl-C -------------------------------------------------------------------------
    def _cancel(self) -> None:
        """Start no more; stop the moves in flight (each aborts cleanly); a cold move that
        already runs the VM on its destination finishes."""
        self.cancelled = True
        if self.feed is not None:
            self.feed.stop()
        self.ctx.emit(Notice("cancelling: the moves in flight abort"))
        for track in list(self.queue):
            self._stays(track, f"not started: cancelled; it stays on {track.move.source}")
        for track in self.running:
            if track.recovering is None:
                track.stop_pending = True
        self._stop_children()

    def _stop_children(self) -> None:
        """Each child to stop gets its SIGINT, but a cold child that is shutting its VM down
        only once the guest is off (interrupted then, the guest would finish shutting down
        after the rollback restarted it), and one whose VM runs on the destination never."""
        for track in self.running:
            child = track.child
            assert child is not None
            if not track.stop_pending:
                continue
            point = self._cold_point(child.job_id) if track.move.mode == COLD else ""
            if point == "stopping":
                continue
            track.stop_pending = False
            if point == "no return":
                self.ctx.emit(
                    Notice(
                        f"{track.load.name} already runs on "
                        f"{track.move.destination}: its move finishes"
                    )
                )
                continue
            child.stop()
            track.stop_sent_at = self.rt.clock()

    def _cold_point(self, job_id: int | None) -> str:
        """Where a cold job is: "no return" (the VM runs on the destination), "stopping"
        (the guest is shutting down or being saved), or "" (a clean point to stop at)."""
        if job_id is None:
            return ""
        journal = Journal(self.ctx.store, job_id)
        if journal.done(NO_RETURN_STEP):
            return "no return"
        stop = journal.records.get("stop")
        return "stopping" if stop is not None and stop.state == "started" else ""
