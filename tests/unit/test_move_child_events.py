"""How a fleet operation reads its child moves (fleet/moves.py): a real child process writes
`--json` lines to its events file, the parent decodes them. A cold child's copy progress
(issue #24: it used to show 0 % "moving" until it ended) becomes the move's phase and a
share that grows over all its disks; lines it cannot read are skipped."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from vmigrate.events import (
    CopyProgress,
    Done,
    Event,
    JobStarted,
    LeaseEvent,
    PlanMade,
    encode,
    to_json_line,
)
from vmigrate.fleet import moves
from vmigrate.fleet.logs import MoveLogs
from vmigrate.fleet.moves import ChildMove, CopyTally, MoveCommand, start_move

GIB = 1 << 30
DISKS = ("/var/lib/libvirt/images/db.qcow2", "/var/lib/libvirt/images/db-data.qcow2")


def cold_lines() -> list[str]:
    """What `vmigrate cold --json` writes for a VM with two disks, in order."""
    plan = {"copies": [{"source_path": path, "physical": GIB} for path in DISKS], "mode": "cold"}
    events: list[Event] = [PlanMade(plan), JobStarted(41, "/tmp/jobs.sqlite")]
    events.append(LeaseEvent("taken", "hostA", {"job": 41, "owner": "ops@here"}))
    for path in DISKS:
        events += [CopyProgress(path, done, GIB) for done in (0, GIB // 2, GIB)]
    lines = [to_json_line(e) for e in events]
    lines.insert(3, json.dumps({"event": "teleport", "schema": 1}))  # a kind from the future
    lines.insert(5, json.dumps({**encode(events[3]), "schema": 9}))  # a newer version
    lines.append("not json at all")
    lines.append(to_json_line(Done({"outcome": "completed", "placement_ok": True})))
    return lines


def child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: list[str]) -> ChildMove:
    script = tmp_path / "child.py"
    script.write_text(
        "import sys, time\n"
        f"for line in {lines!r}:\n"
        "    print(line, flush=True)\n"
        "    time.sleep(0.01)\n"
    )
    monkeypatch.setattr(moves, "VMIGRATE", [sys.executable, str(script)])
    command = MoveCommand("db1", "hostA", "hostB", "cold", False, None, tmp_path / "jobs.sqlite")
    return start_move(command, MoveLogs(tmp_path, ("fleet", "41")), 1)


def test_a_cold_childs_copies_show_as_rising_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    move = child(tmp_path, monkeypatch, cold_lines())
    events: list[Event] = []
    shares: list[float] = []  # after each read, as the scheduler polls
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        finished = move.finished()
        got = move.read_events()
        events += got
        if got and move.phase == "copy":
            shares.append(move.percent)
        if finished:
            break
        time.sleep(0.005)
    move.close()
    assert move.exit_code == 0 and move.job_id == 41
    # The unknown kind, the newer version and the line that is no JSON are skipped.
    assert [e.KIND for e in events] == ["plan", "job", "lease", *["copy"] * 6, "done"]
    assert move.report == {"outcome": "completed", "placement_ok": True}
    assert shares == sorted(shares) and shares[-1] == 100.0, shares
    assert set(shares) <= {0.0, 25.0, 50.0, 75.0, 100.0}


def test_the_share_counts_every_planned_disk() -> None:
    tally = CopyTally()
    tally.planned({"copies": [{"source_path": path, "physical": GIB} for path in DISKS]})
    shares = [
        tally.add(CopyProgress(path, done, GIB)) for path in DISKS for done in (0, GIB // 2, GIB)
    ]
    # Half of the first disk is a quarter of the move, and it never goes back.
    assert shares == [0.0, 25.0, 50.0, 50.0, 75.0, 100.0]
    # A file the plan did not name (a pool change's disk) joins the total when it reports.
    assert tally.add(CopyProgress("/dev/rbd0", 0, 2 * GIB)) == 50.0


def test_a_live_childs_disk_copies_set_the_phase_not_the_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    move = child(tmp_path, monkeypatch, [to_json_line(CopyProgress(DISKS[0], GIB, 2 * GIB))])
    move = ChildMove(
        MoveCommand("db1", "hostA", "hostB", "live", True, None, tmp_path / "jobs.sqlite"),
        move.process,
        move.files,
    )
    move.process.wait()
    move.read_events()
    move.close()
    assert (move.phase, move.percent) == ("copy", 0.0)
