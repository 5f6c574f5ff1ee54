"""A journal of idempotent steps: each is recorded before and after it runs, in the job store.

A step already done is skipped when a job resumes; a step that was started and not finished
runs again with what it had recorded (a copy continues from its last checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vmigrate.store import JobStore, StepRecord

Detail = dict[str, Any]


class Journal:
    def __init__(self, store: JobStore, job_id: int) -> None:
        self.store, self.job_id = store, job_id
        self.records: dict[str, StepRecord] = {s.name: s for s in store.steps(job_id)}
        self._next_seq = max((s.seq for s in self.records.values()), default=0) + 1

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

    def run(self, name: str, step: Callable[[Detail], Detail]) -> Detail:
        """Run `step` unless already done; it gets the detail recorded so far (for resuming)."""
        if self.done(name):
            return self.detail(name)
        previous = self.detail(name)
        self.record(name, "started", previous)
        try:
            detail = step(previous)
        except BaseException as err:
            self.record(name, "failed", {**self.detail(name), "error": str(err)})
            raise
        self.record(name, "done", detail)
        return detail

    def done_in_reverse(self) -> list[StepRecord]:
        """Steps that changed something, latest first: what a rollback must undo."""
        return sorted(
            (s for s in self.records.values() if s.state in ("done", "started", "failed")),
            key=lambda s: -s.seq,
        )
