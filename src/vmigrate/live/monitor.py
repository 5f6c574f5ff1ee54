"""While the migrate call runs: sample the job, let the policy (and users) steer it.

Every sample and action goes into the job store and to the event sink.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from vmigrate.errors import VmigrateError
from vmigrate.events import EventSink, Notice, PolicyAction, Sample
from vmigrate.live.policy import Action, PolicyConfig, decide, initial_state
from vmigrate.live.postcopy_link import LinkWatch
from vmigrate.live.samples import JobSample, sample_from_job_stats, with_disk_rate
from vmigrate.store import ControlRequest, JobStore
from vmigrate.virt.migration import (
    MigrationCall,
    abort_job,
    job_stats,
    set_bandwidth,
    set_max_downtime,
    start_postcopy,
)

SAMPLE_INTERVAL_S = 0.5


class Steering:
    """Applies the policy's (and the user's) actions to the running job, and records them."""

    def __init__(self, store: JobStore, job_id: int, emit: EventSink) -> None:
        self.store, self.job_id, self.emit = store, job_id, emit
        self.taken: list[dict[str, Any]] = []

    def abort_action(self) -> dict[str, Any] | None:
        """The abort that ended the job, if one was taken."""
        return next((a for a in reversed(self.taken) if a["action"] == "abort"), None)

    def apply(self, domain: Any, action: Action, actor: str = "policy") -> None:
        self.act(domain, action)
        self.record(action, actor)

    @staticmethod
    def act(domain: Any, action: Action) -> None:
        """The libvirt call alone: safe from libvirt's event thread (no store, no sink)."""
        if action.kind == "set-downtime" and action.value is not None:
            set_max_downtime(domain, action.value)
        elif action.kind == "set-bandwidth" and action.value is not None:
            set_bandwidth(domain, action.value)
        elif action.kind == "postcopy":
            start_postcopy(domain, action.value)
        elif action.kind == "abort":
            abort_job(domain)

    def record(self, action: Action, actor: str = "policy") -> None:
        record = PolicyAction(
            round(action.at_s, 2), action.kind, action.value, action.reason, actor
        )
        self.taken.append(asdict(record))
        label = action.kind if action.value is None else f"{action.kind} {action.value:g}"
        self.store.add_action(self.job_id, label, action.reason, actor)
        self.emit(record)


@dataclass(frozen=True)
class _Observed:
    """One sample and what the policy did about it, waiting to be recorded."""

    sample: JobSample
    downtime_ms: float  # the limit when the sample was taken
    actions: tuple[Action, ...]
    failures: tuple[str, ...]  # actions libvirt refused (the job ended a moment ago, ...)


class Monitor:
    """Samples the job every SAMPLE_INTERVAL_S and the moment a pass ends, and lets the
    policy act; records every sample and action.

    At a pass's end libvirt's event thread samples, decides and acts itself (`on_pass_end`):
    the switch to post-copy then comes at the pass's very start, as virsh's
    --postcopy-after-precopy does, rather than after the main thread wakes, records and
    decides (the lab's L3B: ~70 ms and ~8 MiB into pass 2). Only libvirt calls and the pure
    policy run there; the main thread records what it did (the store is the main thread's).

    Ctrl-C aborts the job (the VM stays on the source) unless post-copy has begun: then the
    guest already runs on the destination and the only safe way is forward.
    """

    def __init__(
        self,
        domain: Any,
        policy: PolicyConfig,
        store: JobStore,
        job_id: int,
        steering: Steering,
        emit: EventSink,
        started: float,
        destination: str,
    ) -> None:
        self.domain, self.policy, self.store, self.job_id = domain, policy, store, job_id
        self.steering, self.emit, self.started = steering, emit, started
        self.state = initial_state(policy)
        self.samples: list[JobSample] = []
        self._downtime_set = False
        self.link_watch = LinkWatch(policy.stall_s, destination, self.note)
        # Held while sampling, deciding and acting, by whichever thread does it.
        self._lock = threading.Lock()
        self._unrecorded: list[_Observed] = []

    def note(self, message: str) -> None:
        note = Action("note", None, message, time.monotonic() - self.started)
        self.steering.apply(self.domain, note, actor="vmigrate")

    def finished(self, call: MigrationCall) -> bool:
        """One monitoring step; True once the migrate call has returned."""
        try:
            # Woken early when a pass ends (libvirt's iteration event) or the call returns.
            call.wake.wait(SAMPLE_INTERVAL_S)
            call.wake.clear()
            if not call.running():
                call.wait()
                self._record()
                return True
            self._step()
        except KeyboardInterrupt:
            self._interrupted()
        return False

    def on_pass_end(self, _iteration: int) -> None:
        """libvirt's event thread, as a new pass begins: sample, decide, act now."""
        try:
            with self._lock:
                if not (self.state.postcopy or self.state.aborting):
                    self._observe_and_act()
        except Exception:  # never into libvirt's loop: the main thread samples next
            return

    def _step(self) -> None:
        for request in self.store.pending_controls(self.job_id):
            with self._lock:
                outcome = self._control(request)
            self.store.mark_control(request.id, outcome)
        with self._lock:
            self._observe_and_act()
        self._record()
        if self.state.postcopy and self.samples:
            self.link_watch.update(self.samples[-1].data_processed)

    def _observe_and_act(self) -> None:
        """Sample the job, let the policy decide, make the libvirt calls; with the lock held.
        What happened waits in `_unrecorded` for the main thread."""
        elapsed = time.monotonic() - self.started
        sample = sample_from_job_stats(
            job_stats(self.domain), elapsed, postcopy=self.state.postcopy
        )
        if sample is None:
            return
        sample = with_disk_rate(sample, self.samples[-1] if self.samples else None)
        failures: list[str] = []
        if not self._downtime_set:
            # Start low: the policy raises it only as far as the guest needs.
            self._downtime_set = True
            try:
                set_max_downtime(self.domain, self.state.downtime_ms)
            except VmigrateError as err:  # the job ended a moment ago, or the host went
                failures.append(f"the starting downtime limit could not be set: {err.message}")
        downtime = self.state.downtime_ms
        self.samples.append(sample)
        actions = decide(self.samples, self.policy, self.state)
        for action in actions:
            try:
                self.steering.act(self.domain, action)
            except VmigrateError as err:  # e.g. the job ended a moment ago
                failures.append(f"{action.kind} could not be applied: {err.message}")
        self.state = self.state.after(actions, sample.iteration, sample.throttle_pct)
        self._unrecorded.append(_Observed(sample, downtime, tuple(actions), tuple(failures)))

    def _record(self) -> None:
        """Into the store and to the sink: the samples and actions taken since last time."""
        with self._lock:
            observed, self._unrecorded = self._unrecorded, []
        for seen in observed:
            self.store.add_sample(self.job_id, seen.sample.to_dict())
            self.emit(Sample.of(seen.sample, seen.downtime_ms))
            for action in seen.actions:
                self.steering.record(action)
            for failure in seen.failures:
                self.note(failure)

    def _control(self, request: ControlRequest) -> str:
        """Apply a request from `vmigrate jobs cancel|postcopy|set` in another terminal."""
        now = time.monotonic() - self.started
        reason = f"requested by {request.requested_by}"
        if self.state.aborting:
            return "refused: the job is already being aborted"
        if request.command == "cancel":
            if self.state.postcopy:
                return (
                    "refused: in post-copy the guest already runs on the destination "
                    "and cannot go back"
                )
            action = Action("abort", None, f"cancelled: {reason}", now)
        elif request.command == "postcopy":
            if not self.policy.postcopy_allowed:
                return "refused: post-copy was not enabled for this job (policy/--no-postcopy)"
            if self.state.postcopy:
                return "refused: already in post-copy"
            action = Action("postcopy", None, f"switch forced: {reason}", now)
        elif request.command == "max-downtime" and request.value:
            self.policy = self.policy.with_limits(max_downtime_ms=int(request.value))
            action = Action("set-downtime", request.value, f"new maximum: {reason}", now)
        elif request.command == "bandwidth" and request.value:
            action = Action("set-bandwidth", request.value, reason, now)
        else:
            return f"refused: unknown request {request.command!r}"
        try:
            self.steering.apply(self.domain, action, actor="user")
        except VmigrateError as err:
            return f"failed: {err.message}"
        self.state = self.state.after([action], 0, None)
        return "applied"

    def _interrupted(self) -> None:
        with self._lock:
            self._interrupted_locked()

    def _interrupted_locked(self) -> None:
        if self.state.postcopy:
            self.emit(
                Notice(
                    "in post-copy the guest already runs on the "
                    "destination and cannot go back: finishing the migration"
                )
            )
            return
        if self.state.aborting:
            return
        abort = Action(
            "abort", None, "interrupted by the user (Ctrl-C)", time.monotonic() - self.started
        )
        with contextlib.suppress(Exception):  # the job may have ended a moment ago
            self.steering.apply(self.domain, abort, actor="user")
        self.state = self.state.after([abort], 0, None)
