"""A journal of idempotent steps: each is recorded before and after it runs, in the job store.

A step already done is skipped when a job resumes; a step that was started and not finished
runs again with what it had recorded (a copy continues from its last checkpoint). A step
that makes something on a host journals its intent first (`intend`: the exact name, the
size, the job's token), so that a run interrupted between making it and journalling it made
can still tell the job's own thing from a stranger's.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from vmigrate.failpoints import failpoint
from vmigrate.store import JobStore, StepRecord

Detail = dict[str, Any]

#: The job's parameter that holds its token (128 bits, hex): the token of the VM's lease,
#: and the proof on the hosts that a thing was made by this job (of this store).
TOKEN_PARAM = "lease_token"  # noqa: S105 - a parameter's name, not a secret
#: The key under which a step journals what it is about to make, before making it.
INTENT = "intent"


class Journal:
    def __init__(self, store: JobStore, job_id: int) -> None:
        self.store, self.job_id = store, job_id
        self.records: dict[str, StepRecord] = {s.name: s for s in store.steps(job_id)}
        self._next_seq = max((s.seq for s in self.records.values()), default=0) + 1
        self._token: str | None = None

    @property
    def token(self) -> str:
        """The job's token, kept in its parameters (made on first use, before anything is
        made on a host, so that everything made carries it)."""
        if self._token is None:
            params = self.store.job(self.job_id).params
            token = params.get(TOKEN_PARAM)
            if not token:
                token = secrets.token_hex(16)
                self.store.set_job_params(self.job_id, {**params, TOKEN_PARAM: token})
            self._token = str(token)
        return self._token

    def intend(self, name: str, detail: Detail, **what: Any) -> Detail:
        """Journal, before it is made, exactly what step `name` is about to make (`what`:
        a path or a pool and a name, the size it is made with) with the job's token; the
        step's detail becomes `detail` plus that intent. A run interrupted before the step
        journals the thing as made can then tell it from a stranger's (`intended`)."""
        recorded = {**detail, INTENT: {**what, "token": self.token}}
        self.record(name, "started", recorded)
        return recorded

    def intended(self, name: str, detail: Detail | None = None) -> Detail | None:
        """What step `name` journalled it was about to make, if this job (its token) did."""
        intent = (self.detail(name) if detail is None else detail).get(INTENT)
        if isinstance(intent, dict) and intent.get("token") == self.token:
            return dict(intent)
        return None

    def done(self, name: str) -> bool:
        record = self.records.get(name)
        return record is not None and record.state == "done"

    def detail(self, name: str) -> Detail:
        record = self.records.get(name)
        return dict(record.detail) if record else {}

    def _seq(self, name: str) -> int:
        if name in self.records:
            return self.records[name].seq
        seq, self._next_seq = self._next_seq, self._next_seq + 1
        return seq

    def record(self, name: str, state: str, detail: Detail) -> None:
        seq = self._seq(name)
        self.store.record_step(self.job_id, seq, name, state, detail)
        self.records[name] = StepRecord(seq, name, state, detail, 0.0)

    def run(self, name: str, step: Callable[[Detail], Detail], point: str = "") -> Detail:
        """Run `step` unless already done; it gets the detail recorded so far (for resuming).
        `point`: the failpoints' prefix (failpoints.py), `.started` and `.before-done`."""
        if self.done(name):
            return self.detail(name)
        previous = self.detail(name)
        self.record(name, "started", previous)
        if point:
            failpoint(f"{point}.started")
        try:
            detail = step(previous)
        except BaseException as err:
            self.record(name, "failed", {**self.detail(name), "error": str(err)})
            raise
        if point:
            failpoint(f"{point}.before-done")
        self.record(name, "done", detail)
        return detail

    def done_in_reverse(self) -> list[StepRecord]:
        """Steps that changed something, latest first: what a rollback must undo."""
        return sorted(
            (s for s in self.records.values() if s.state in ("done", "started", "failed")),
            key=lambda s: -s.seq,
        )


def made_as_intended(intent: Detail | None, found: tuple[int, int] | None) -> bool:
    """Whether a thing `found` (capacity, allocation in bytes) where this job journalled it
    would make one is that very thing, made just before the job was interrupted: exactly as
    big as the intent says, and nothing written into it yet (a step journals what it made
    before it writes a byte into it, so the job's own can only be empty in that window) -
    or, made at a size that carries the job's token (`marked_capacity`), exactly that size.
    Anything else is a stranger's and is never touched."""
    if intent is None or found is None:
        return False
    capacity, allocation = found
    if capacity != int(intent.get("capacity", -1)):
        return False
    return allocation == 0 or bool(intent.get("marked"))


def marked_capacity(capacity: int, token: str) -> int:
    """A size that carries the job's token: `capacity` less 512 B to 1 MiB chosen by the
    token. A volume is made at this size and grown to `capacity` once journalled made: a
    volume found at exactly this size is the job's, where its allocation proves nothing (an
    rbd image without fast-diff reports its whole size allocated)."""
    pad = 512 * (1 + int(token[:8], 16) % 2048)
    return capacity - pad if capacity > 2 * pad else capacity
