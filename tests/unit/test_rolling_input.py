"""`vmigrate rolling`'s bad input: a clear error, a non-zero exit, nothing changed (no job,
no host in maintenance), all refused before any host is contacted."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from vmigrate.cli.main import cli
from vmigrate.errors import UsageError
from vmigrate.fleet.rolling_host import command_argv
from vmigrate.store import JobStore

HOSTS = (
    '[hosts.n1]\nuri = "qemu+tcp://127.0.0.91/system"\n'
    '[hosts.n2]\nuri = "qemu+tcp://127.0.0.92/system"\n'
    '[hosts.n3]\nuri = "qemu+tcp://127.0.0.93/system"\n'
    '[clusters.trio]\nhosts = ["n1", "n2", "n3"]\n'
    '[clusters.solo]\nhosts = ["n1"]\n'
)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--cluster", "nowhere", "--run", "true"], "unknown cluster 'nowhere'"),
        (["--cluster", "solo", "--run", "true"], "needs at least two"),
        (["--cluster", "trio", "--run", "true", "--hosts-at-once", "3"], "no host would be left"),
        (
            ["--cluster", "trio", "--run", "no-such-upgrader-xyz {host}"],
            "command 'no-such-upgrader-xyz' not found",
        ),
        (["--cluster", "trio", "--run", "'unclosed {host}"], "cannot be split"),
    ],
)
def test_bad_input_is_refused_before_anything_changes(
    tmp_path: Path, args: list[str], words: str
) -> None:
    hosts = tmp_path / "hosts.toml"
    hosts.write_text(HOSTS)
    store = tmp_path / "jobs.sqlite"
    result = CliRunner().invoke(
        cli, ["rolling", *args, "--hosts", str(hosts), "--store", str(store)]
    )
    assert result.exit_code != 0
    assert words in result.output, result.output
    assert "Traceback" not in result.output
    with JobStore(store) as opened:
        assert opened.jobs_of_kind("rolling") == []
        assert opened.maintenance() == {}


def test_the_command_is_split_like_a_shell_and_the_host_replaced_inside_words() -> None:
    argv = command_argv("ssh 'root@{host}' apt-get -y 'upgrade; reboot' --tag={host}", "h1")
    assert argv == ["ssh", "root@h1", "apt-get", "-y", "upgrade; reboot", "--tag=h1"]


def test_the_api_runs_a_roll_as_the_cli_does() -> None:
    from vmigrate.serve.actions import ACTIONS, command_line, validate

    action = ACTIONS["rolling"]
    values = validate(action, {"cluster": "lab", "run": "upgrade {host}", "hosts_at_once": 1})
    assert command_line(action, values, "/s/jobs.sqlite", None) == [
        "rolling", "--cluster", "lab", "--run", "upgrade {host}", "--hosts-at-once", "1",
        "--store", "/s/jobs.sqlite", "--json",
    ]  # fmt: skip
    with pytest.raises(UsageError, match="control characters"):
        validate(action, {"cluster": "lab", "run": "upgrade\n{host}"})


def test_a_command_that_fails_or_hangs_is_a_failed_step_that_says_why() -> None:
    from vmigrate.fleet.rolling_host import RollStepFailed, run_command

    pids: list[int] = []
    ok = run_command(["sh", "-c", "echo upgraded $0", "h1"], "h1", 10, pids.append)
    assert ok.returncode == 0 and "upgraded h1" in ok.output and len(pids) == 1
    with pytest.raises(RollStepFailed) as failed:
        run_command(["sh", "-c", "echo mirror down >&2; exit 3"], "h1", 10, pids.append)
    assert "exited 3" in failed.value.message and "mirror down" in failed.value.message
    assert failed.value.host == "h1" and "jobs resume" in failed.value.fix
    with pytest.raises(RollStepFailed) as hung:
        run_command(["sleep", "30"], "h1", 0.5, pids.append)
    assert "stopped after 0.5 s" in hung.value.message
    with pytest.raises(RollStepFailed) as missing:
        run_command(["/nonexistent/upgrade"], "h1", 10, pids.append)
    assert "could not start" in missing.value.message


def test_a_move_that_completed_after_the_roll_died_counts_as_moved(tmp_path: Path) -> None:
    # Evacuate's own resume does this (a roll resumes its evacuation through it): found by a
    # roll SIGKILLed mid-evacuation whose resumed return left the VM on hostB.
    from vmigrate.fleet.evacuate import settle_in_flight

    with JobStore(tmp_path / "jobs.sqlite") as store:
        evacuation = store.create_job("evacuate", "hostA", "hostA", "hostB", {})
        done = store.create_job("live", "web", "qemu:///a", "qemu:///b", {})
        store.finish_job(done, "completed", "completed", {})
        failed = store.create_job("live", "db", "qemu:///a", "qemu:///b", {})
        store.finish_job(failed, "failed", "failed", {})
        move = {"source": "hostA", "destination": "hostB"}
        store.record_step(evacuation, 0, "web", "running", {**move, "child_job": done})
        store.record_step(evacuation, 1, "db", "running", {**move, "child_job": failed})
        store.record_step(evacuation, 2, "idle", "planned", move)
        notices: list[object] = []
        settle_in_flight(store, evacuation, notices.append)
        assert notices == []  # nothing was running: nothing waited for, nothing recovered
        states = {step.name: step.state for step in store.steps(evacuation)}
    assert states == {"web": "moved", "db": "running", "idle": "planned"}
