"""The job lifecycle: one state machine for every job kind, and what each kind allows (pure).

```
planned ──► running ──► completed
               │  ├───► failed ──────┐
               │  ├───► cancelled    │ (resume / rollback: running again)
               │  ├───► aborted      │
               │  ├───► rolled back  │
               │  └───► interrupted ─┘  (its process died)
```
`aborted` is a live job the policy stopped (the VM stayed on the source); `interrupted` is
mostly seen, not written: a `running` job whose process is gone reads as interrupted.
`vmigrate recover` settles a live job that nobody drives any more (interrupted, or finished
without proof of where the VM is) straight into completed, aborted or failed.

The store asks this module before every change of state and carries it out in one
transaction; a refusal says why and what to do instead.
"""

from __future__ import annotations

import shlex
from typing import Protocol

from vmigrate.errors import VmigrateError

PLANNED = "planned"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
ABORTED = "aborted"
ROLLED_BACK = "rolled back"
INTERRUPTED = "interrupted"
#: Stopped before it changed anything: another job holds the VM's lease (guard.py).
REFUSED = "refused"
STATES = (
    PLANNED,
    RUNNING,
    COMPLETED,
    FAILED,
    CANCELLED,
    ABORTED,
    ROLLED_BACK,
    INTERRUPTED,
    REFUSED,
)
#: Where a running job can end.
ENDS = frozenset({COMPLETED, FAILED, CANCELLED, ABORTED, ROLLED_BACK, INTERRUPTED, REFUSED})
#: The arrows of the diagram above (resume and rollback are the way back to running).
TRANSITIONS: dict[str, frozenset[str]] = {
    PLANNED: frozenset({RUNNING, CANCELLED}),
    RUNNING: ENDS,
    FAILED: frozenset({RUNNING}),
    INTERRUPTED: frozenset({RUNNING}),
    CANCELLED: frozenset({RUNNING}),
    ABORTED: frozenset({RUNNING}),
    COMPLETED: frozenset(),
    ROLLED_BACK: frozenset(),
    REFUSED: frozenset(),
}

RESUME = "resume"
ROLLBACK = "rollback"
RECOVER = "recover"
CANCEL = "cancel"
ACTIONS = (RESUME, ROLLBACK, RECOVER, CANCEL)
#: The actions that take a job back to running in a new process.
REOPENING = frozenset({RESUME, ROLLBACK})

#: kind -> action -> the states it is taken from. A kind or action not listed is refused.
ALLOWED: dict[str, dict[str, frozenset[str]]] = {
    "cold": {
        RESUME: frozenset({FAILED, INTERRUPTED}),
        ROLLBACK: frozenset({FAILED, INTERRUPTED}),
    },
    "live": {
        # recover checks itself that a finished job's placement was left unproven
        RECOVER: frozenset({INTERRUPTED, FAILED, COMPLETED, CANCELLED, ABORTED}),
        CANCEL: frozenset({RUNNING}),
    },
    "evacuate": {RESUME: frozenset({FAILED, INTERRUPTED, CANCELLED, ABORTED})},
    "balance": {},
    "return": {},
    "rolling": {RESUME: frozenset({FAILED, INTERRUPTED, CANCELLED, ABORTED})},
}


class TransitionRefused(VmigrateError):
    """An action the job's kind or state does not allow; nothing was changed."""


class Job(Protocol):
    """What the lifecycle needs to know of a job (the store's JobRecord is one)."""

    @property
    def id(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def vm(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def destination(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def holder(self) -> str: ...
    @property
    def action(self) -> str | None: ...


def allowed_from(kind: str, action: str) -> frozenset[str]:
    return ALLOWED.get(kind, {}).get(action, frozenset())


def can_move(from_state: str, to_state: str) -> bool:
    return to_state in TRANSITIONS.get(from_state, frozenset())


def check_action(job: Job, action: str) -> None:
    """Refuse `action` on `job` unless its kind allows it from the job's state (as read now,
    with a dead process seen as interrupted)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    if job.state in allowed_from(job.kind, action):
        return
    raise _refusal(job, action)


def check_finish(job: Job, to_state: str, *, ours: bool) -> None:
    """Whether a process may record that `job` ended in `to_state`: the process that drives
    it or last took it over (`ours`: nobody reopened it since), or one settling a job nobody
    drives any more (recover). Never over a job another process drives."""
    if to_state not in ENDS:
        raise ValueError(f"{to_state!r} is not a state a job ends in")
    if ours or job.state != RUNNING:
        return
    raise TransitionRefused(
        f"job {job.id} is driven by {job.holder}: only that process records its end",
        vm=job.vm,
        fix=f"wait for it (`vmigrate jobs show {job.id}`)",
    )


def _refusal(job: Job, action: str) -> TransitionRefused:
    """Why `action` cannot be taken on `job`, and what to do instead."""
    n, vm, kind, state = job.id, job.vm, job.kind, job.state
    words = {RESUME: "resumed", ROLLBACK: "rolled back", RECOVER: "recovered", CANCEL: "cancelled"}
    if state == RUNNING:
        doing = {RESUME: " (being resumed)", ROLLBACK: " (being rolled back)"}.get(
            job.action or "", ""
        )
        fix = (
            f"wait for it, or cancel it with `vmigrate jobs cancel {n}`"
            if kind == "live"
            else f"wait for it, or stop {job.holder} first"
        )
        return TransitionRefused(
            f"job {n} is still running{doing}: {job.holder} drives it", vm=vm, fix=fix
        )
    if state == REFUSED:
        return TransitionRefused(
            f"job {n} was refused before it changed anything (another job held {vm}'s "
            "lease): there is nothing to " + {CANCEL: "cancel"}.get(action, action),
            vm=vm,
            fix=f"see who held it with `vmigrate jobs show {n}`, then move {vm} again",
        )
    if kind == "cold":
        return _cold_refusal(job, action)
    if kind == "live" and action in REOPENING:
        return TransitionRefused(
            f"job {n} is a live migration: a live job is not {words[action]}",
            vm=vm,
            fix=f"`vmigrate recover {shlex.quote(vm)}` finds where the VM runs and finishes "
            "or cleans up what the job left",
        )
    if kind == "live" and action == CANCEL:
        return TransitionRefused(
            f"job {n} is not running (it is {state}): there is nothing to cancel",
            vm=vm,
            fix="see the running jobs with `vmigrate jobs`",
        )
    if kind == "live":
        return TransitionRefused(
            f"job {n} is {state}: vmigrate recover has nothing to settle",
            vm=vm,
            fix=f"see it with `vmigrate jobs show {n}`",
        )
    # The fleet's jobs: `vm` is the host or cluster they are about.
    where = {"host": vm} if kind in FLEET_KINDS else {"vm": vm}
    if kind == "evacuate" and action == ROLLBACK:
        return TransitionRefused(
            f"job {n} is an evacuation of {vm}: an evacuation is not rolled back (each VM it "
            "moved runs on its new host)",
            fix=f"bring its VMs back with `vmigrate maintenance end {shlex.quote(vm)} --return`",
            **where,
        )
    if kind == "evacuate" and action == RESUME:
        return TransitionRefused(
            f"evacuation {n} is {state}: nothing to resume",
            fix=f"to empty {vm} again: `vmigrate evacuate {shlex.quote(vm)}`",
            **where,
        )
    if action == CANCEL:
        return TransitionRefused(
            f"job {n} is {_a(kind)}: only live jobs take 'cancel'",
            fix="stop the vmigrate process that runs it with Ctrl-C (or SIGTERM)",
            **where,
        )
    again = {
        "evacuate": f"`vmigrate evacuate {shlex.quote(vm)}` empties {vm} again",
        "balance": f"`vmigrate balance --cluster {shlex.quote(vm)}` runs another round",
        "return": f"`vmigrate maintenance end {shlex.quote(vm)} --return` brings the rest back",
        "rolling": f"`vmigrate rolling --cluster {shlex.quote(vm)} --run ...` starts a new roll",
    }
    return TransitionRefused(
        f"job {n} is {_a(kind)} ({state}): it is not {words[action]}",
        fix=again.get(kind, "start what it did again"),
        **where,
    )


#: Jobs of the fleet: their `vm` is a host (evacuate, return) or a cluster (balance).
FLEET_KINDS = frozenset({"evacuate", "balance", "return", "rolling"})


def _a(kind: str) -> str:
    return {
        "evacuate": "an evacuation",
        "balance": "a balance round",
        "return": "a return of VMs to their host",
    }.get(kind, f"a {kind} job")


def _cold_refusal(job: Job, action: str) -> TransitionRefused:
    n, vm, state, src, dst = job.id, job.vm, job.state, job.source, job.destination
    again = f"vmigrate cold {shlex.quote(vm)} --from {shlex.quote(src)} --to {shlex.quote(dst)}"
    back = f"vmigrate cold {shlex.quote(vm)} --from {shlex.quote(dst)} --to {shlex.quote(src)}"
    if action not in REOPENING:
        return TransitionRefused(
            f"job {n} is a cold migration ({state}): only live jobs take '{action}'",
            vm=vm,
            fix="a running cold move stops at a clean point on Ctrl-C (or SIGTERM to its "
            f"process); then `vmigrate jobs resume {n}` or `vmigrate jobs rollback {n}`",
        )
    if state == COMPLETED and action == ROLLBACK:
        return TransitionRefused(
            f"job {n} completed: {vm} runs on {dst} with the disks it has written since; "
            "rolling back would destroy that",
            vm=vm,
            fix=f"to move it back: {back}",
        )
    if state == COMPLETED:
        return TransitionRefused(
            f"job {n} already completed: {vm} runs on {dst}; nothing to resume",
            vm=vm,
            fix=f"nothing to do; to move it back: {back}",
        )
    if state == ROLLED_BACK and action == ROLLBACK:
        return TransitionRefused(
            f"job {n} was already rolled back: {vm} is on {src} as before",
            vm=vm,
            fix=f"nothing to do; to move it again: {again}",
        )
    if state == ROLLED_BACK:
        return TransitionRefused(
            f"job {n} was rolled back: {vm} is on {src}; nothing to resume",
            vm=vm,
            fix=f"to move it again, start a new move: {again}",
        )
    return TransitionRefused(
        f"job {n} is {state}: a cold job in that state is not "
        + ("resumed" if action == RESUME else "rolled back"),
        vm=vm,
        fix=f"see it with `vmigrate jobs show {n}`",
    )
