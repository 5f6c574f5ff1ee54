"""Named points where a test makes vmigrate die, to prove every crash window recoverable
(pure), as etcd's gofail and TiKV's fail-rs do.

A point does nothing unless armed: `VMIGRATE_FAILPOINTS=cold.copy.after-create` (or
`NAME=kill`, several separated by commas) in the environment of a `vmigrate` process makes
it SIGKILL itself the first time it reaches that point, as a crash of the machine or an
OOM kill would. Unarmed, a point costs one test of an empty set.

Every point is declared here, in the order a cold move reaches it, so that a harness can
iterate over all of them (tests/lab/test_crash_windows.py); a unit test checks that each
declared point is called in the code and that the code calls no undeclared one.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

ENV = "VMIGRATE_FAILPOINTS"
ACTIONS = ("kill",)


@dataclass(frozen=True)
class Point:
    name: str
    window: str  # what has happened, and what not, when the process dies here
    needs: frozenset[str]  # what a cold move must do to reach it (empty: every move does)


#: What a move does, for `Point.needs`: copies a local file (FILES), saves the state
#: (KEEP_STATE), changes a disk's kind of pool (POOL_CHANGE), starts the VM on the
#: destination (START), deletes the source's disks (DELETE_SOURCE).
FILES, KEEP_STATE, POOL_CHANGE, START, DELETE_SOURCE = (
    "files",
    "keep-state",
    "pool-change",
    "start",
    "delete-source",
)


def _points(*rows: tuple[str, str, str]) -> tuple[Point, ...]:
    return tuple(Point(name, window, frozenset(needs.split())) for name, window, needs in rows)


#: The points of a cold move, in order. Each journalled step has `.started` (the journal
#: says started, nothing done yet: the step boundary) and `.before-done` (done on the hosts,
#: not yet journalled done); inside a step, the windows where a thing exists half-recorded.
COLD: tuple[Point, ...] = _points(
    ("cold.reserve.started", "reserve journalled started, nothing made", POOL_CHANGE),
    ("cold.reserve.after-intent", "the new volume's name journalled, not made", POOL_CHANGE),
    ("cold.reserve.after-create", "the new volume made, not journalled as made", POOL_CHANGE),
    ("cold.reserve.before-done", "the new volume made and journalled", POOL_CHANGE),
    ("cold.stop.started", "stop journalled started, the VM not stopped yet", ""),
    ("cold.stop.after-intent", "the state file's path journalled, not saved", KEEP_STATE),
    ("cold.stop.before-done", "the VM stopped (or saved), not journalled", ""),
    ("cold.copy.started", "a file's copy journalled started, nothing made", FILES),
    ("cold.copy.after-intent", "the destination file's path journalled, not made", FILES),
    ("cold.copy.after-create", "the destination file made, not journalled as made", FILES),
    ("cold.copy.mid-copy", "the destination file partly written", FILES),
    ("cold.copy.before-done", "the file copied, not journalled done", FILES),
    ("cold.verify.started", "a file's checksum journalled started", FILES),
    ("cold.verify.before-done", "checksums equal, not journalled", FILES),
    ("cold.pool-change.started", "QEMU's copy journalled started, not begun", POOL_CHANGE),
    ("cold.pool-change.mid-copy", "QEMU's copy into the new volume under way", POOL_CHANGE),
    ("cold.pool-change.before-done", "QEMU's copy complete, not journalled", POOL_CHANGE),
    ("cold.verify-pool-change.started", "the digests journalled started", POOL_CHANGE),
    ("cold.verify-pool-change.mid-read", "a raw read for a digest made", POOL_CHANGE),
    ("cold.verify-pool-change.before-done", "digests equal, not journalled", POOL_CHANGE),
    ("cold.copy-state.started", "the state file's copy journalled started", KEEP_STATE),
    ("cold.copy-state.after-intent", "the state copy's path journalled, not made", KEEP_STATE),
    ("cold.copy-state.after-create", "the state copy made, not journalled", KEEP_STATE),
    ("cold.copy-state.mid-copy", "the state copy partly written", KEEP_STATE),
    ("cold.copy-state.before-done", "the state file copied, not journalled", KEEP_STATE),
    ("cold.verify-state.started", "the state copy's checksum journalled started", KEEP_STATE),
    ("cold.verify-state.before-done", "the state copy's checksums equal", KEEP_STATE),
    ("cold.define.started", "define journalled started", ""),
    ("cold.define.after-intent", "'defining' journalled, not defined", ""),
    ("cold.define.before-done", "defined on the destination, not journalled", ""),
    ("cold.start.started", "start journalled started", ""),
    ("cold.start.after-intent", "'starting' journalled, not started or restored", START),
    ("cold.start.before-done", "started (or restored) there, not journalled", ""),
    ("cold.verify-running.started", "the check that it runs journalled started", ""),
    ("cold.verify-running.before-done", "it runs there, not journalled", ""),
    ("cold.undefine-source.started", "undefining the source journalled started", ""),
    ("cold.undefine-source.before-done", "the source undefined, not journalled", ""),
    ("cold.cleanup-state.started", "removing state files journalled started", ""),
    ("cold.cleanup-state.before-done", "state files removed, not journalled", ""),
    ("cold.delete-source-disks.started", "deleting source disks started", DELETE_SOURCE),
    ("cold.delete-source-disks.after-first", "one source disk deleted", DELETE_SOURCE),
    ("cold.delete-source-disks.before-done", "source disks deleted", DELETE_SOURCE),
    ("cold.unmark.started", "removing the job's marker started", ""),
    ("cold.unmark.before-done", "the job's marker removed, not journalled", ""),
)

REGISTRY: dict[str, Point] = {point.name: point for point in COLD}


def parse(text: str) -> frozenset[str]:
    """The points armed by the variable's value; an unknown name or action is an error (a
    harness must never believe it tested a point that does not exist)."""
    armed = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, action = item.partition("=")
        if name not in REGISTRY:
            raise ValueError(f"{ENV}: unknown failpoint {name!r}; known: {', '.join(REGISTRY)}")
        if action and action not in ACTIONS:
            raise ValueError(f"{ENV}: {name}: unknown action {action!r}; known: {ACTIONS}")
        armed.add(name)
    return frozenset(armed)


_ARMED = parse(os.environ.get(ENV, ""))


def failpoint(name: str) -> None:
    """Die here, at once and without cleanup, if a test armed `name`; else nothing."""
    if _ARMED and name in _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
