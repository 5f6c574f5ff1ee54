"""A fleet move's child trusts the checks its parent made: only for the very move, only
while they are fresh, only from a private file of this user; and it replaces exactly the
findings it checked again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmigrate.errors import UsageError
from vmigrate.fleet.logs import MoveLogs
from vmigrate.fleet.moves import MoveCommand
from vmigrate.model import CheckReport, Finding, Mode, Verdict
from vmigrate.trusted_checks import TRUST_FOR_S, TrustedChecks, merged, read_trusted

MADE_AT = 1_000_000.0


def finding(check: str, verdict: Verdict = Verdict.PASS, **evidence: object) -> Finding:
    return Finding(check, check.split(".")[0], verdict, f"{check} seen", dict(evidence))


PARENT = CheckReport(
    "web",
    "hostA",
    "hostB",
    Mode.LIVE,
    False,
    (
        finding("versions.libvirt"),
        finding("storage.shared", probe="pool shared"),
        finding("cpu.compatible"),
        finding("resources.memory", Verdict.FAIL, free=1),
        finding("state.mode", state="running"),
    ),
    2.5,
)
TRUSTED = TrustedChecks(7, MADE_AT, PARENT)


def test_the_checks_stand_only_for_the_move_they_were_made_for() -> None:
    assert TRUSTED.refusal("web", "hostA", "hostB", Mode.LIVE, False, MADE_AT + 5) is None
    assert "not of web from hostA to hostC" in str(
        TRUSTED.refusal("web", "hostA", "hostC", Mode.LIVE, False, MADE_AT)
    )
    assert TRUSTED.refusal("db", "hostA", "hostB", Mode.LIVE, False, MADE_AT) is not None
    assert TRUSTED.refusal("web", "hostA", "hostB", Mode.LIVE, True, MADE_AT) is not None
    assert TRUSTED.refusal("web", "hostA", "hostB", Mode.COLD, False, MADE_AT) is not None
    stale = TRUSTED.refusal("web", "hostA", "hostB", Mode.LIVE, False, MADE_AT + TRUST_FOR_S + 1)
    assert stale is not None and "old" in stale


def test_what_was_checked_again_replaces_the_parents_findings_and_nothing_else() -> None:
    fresh = [
        finding("resources.memory", free=2),
        finding("state.mode", state="running"),
        finding("devices.hostdev"),  # not rechecked: the parent's verdict stands
    ]
    report = merged(PARENT, fresh, 0.25)
    by_check = {f.check: f for f in report.findings}
    assert sorted(by_check) == [
        "cpu.compatible",
        "resources.memory",
        "state.mode",
        "storage.shared",
        "versions.libvirt",
    ]
    assert by_check["resources.memory"].evidence == {"free": 2}
    assert not report.failed  # the memory freed since counts
    assert by_check["storage.shared"] is PARENT.findings[1]
    assert report.seconds == 0.25


def test_the_file_round_trips_through_the_private_log_directory(tmp_path: Path) -> None:
    logs = MoveLogs(tmp_path, ("fleet", "7"))
    path = logs.private_file("web.1.checks.json", TRUSTED.to_json())
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert read_trusted(path) == TRUSTED
    command = MoveCommand("web", "hostA", "hostB", "live", False, None, tmp_path / "jobs.db")
    argv = command.argv(path)
    assert argv[argv.index("--trust-checks") + 1] == str(path)
    assert "--trust-checks" not in command.argv()


def test_a_file_others_can_read_or_a_link_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "checks.json"
    shared.write_text(TRUSTED.to_json())
    shared.chmod(0o644)
    with pytest.raises(UsageError, match="not a private file"):
        read_trusted(shared)
    shared.chmod(0o600)
    link = tmp_path / "link.json"
    link.symlink_to(shared)
    with pytest.raises(UsageError):
        read_trusted(link)
    with pytest.raises(UsageError):
        read_trusted(tmp_path / "missing.json")


def test_a_cold_child_is_handed_the_checks_too_and_cold_reads_them() -> None:
    from vmigrate.cli.cold import cold

    command = MoveCommand("web", "hostA", "hostB", "cold", False, None, Path("jobs.db"))
    argv = command.argv(Path("web.1.checks.json"))
    assert argv[argv.index("--trust-checks") + 1] == "web.1.checks.json"
    assert argv[argv.index("cold") + 1] == "web"
    assert "trust_checks" in {p.name for p in cold.params}


def test_multifd_connections_go_to_a_live_child_only() -> None:
    live = MoveCommand("web", "hostA", "hostB", "live", False, None, Path("j"), parallel=4)
    assert live.argv()[live.argv().index("--parallel") + 1] == "4"
    cold = MoveCommand("web", "hostA", "hostB", "cold", False, None, Path("j"), parallel=4)
    assert "--parallel" not in cold.argv()
