"""Steering a running live migration from a second terminal by job id."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmigrate.lab import link
from vmigrate.lab.lifecycle import HostStatus
from vmigrate.lab.vms import LabVmRequest, create_vm, locate_vm
from vmigrate.store import JobStore

from .helpers import read_events_until, read_rest, run_cli, start_cli

pytestmark = pytest.mark.lab


@pytest.fixture
def running_job(
    lab: list[HostStatus], vm_name: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], int, Path, str]]:
    """A live migration that cannot converge on its own (strict limits, slow link)."""
    store = tmp_path / "jobs.sqlite"
    create_vm(LabVmRequest(vm_name, memory_mib=384, working_set_mib=256, dirty_rate_mib=200))
    link.shape("1gbit")
    process = start_cli(
        "live",
        vm_name,
        "--from",
        "hostA",
        "--to",
        "hostB",
        "--policy",
        "safe",
        "--max-downtime",
        "3000",
        "--store",
        str(store),
        "--json",
    )
    job_id = read_events_until(process, "sample")
    try:
        yield process, job_id, store, vm_name
    finally:
        if process.poll() is None:
            process.kill()
        link.reset()


def finish(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = read_rest(process, timeout=180)
    return next(json.loads(line) for line in out.splitlines() if '"event": "done"' in line)


def test_cancel_from_another_terminal(
    running_job: tuple[subprocess.Popen[str], int, Path, str],
) -> None:
    process, job_id, store, vm = running_job
    result = run_cli("jobs", "--store", str(store), "cancel", str(job_id))
    assert result.returncode == 0, result.stderr
    assert "applied" in result.stdout
    done = finish(process)
    assert done["outcome"] == "cancelled"
    assert done["placement_ok"]
    actions = done["actions"]
    assert actions[-1]["by"] == "user"
    assert "cancelled: requested by" in actions[-1]["reason"]
    assert locate_vm(vm) == {"hostA": "running"}
    # The job is over: further requests are refused with a clear error.
    again = run_cli("jobs", "--store", str(store), "cancel", str(job_id))
    assert again.returncode == 1 and "is not running (it is cancelled)" in again.stderr


def test_set_max_downtime_from_another_terminal(
    running_job: tuple[subprocess.Popen[str], int, Path, str],
) -> None:
    process, job_id, store, _vm = running_job
    result = run_cli("jobs", "--store", str(store), "set", str(job_id), "--max-downtime", "250")
    assert result.returncode == 0, result.stderr
    process.send_signal(2)  # Ctrl-C: end the test quickly
    done = finish(process)
    by_user = [a for a in done["actions"] if a["by"] == "user"]
    assert by_user[0]["action"] == "set-downtime" and by_user[0]["value"] == 250
    controls = JobStore(store).actions(job_id)
    assert any(a.actor == "user" and a.action == "set-downtime 250" for a in controls)


def test_postcopy_is_refused_when_the_job_did_not_enable_it(
    running_job: tuple[subprocess.Popen[str], int, Path, str],
) -> None:
    process, job_id, store, _vm = running_job
    result = run_cli("jobs", "--store", str(store), "postcopy", str(job_id))
    assert result.returncode == 1
    assert "post-copy was not enabled" in result.stderr and "Traceback" not in result.stderr
    process.send_signal(2)
    finish(process)


def test_unknown_job_id(lab: list[HostStatus], tmp_path: Path) -> None:
    store = str(tmp_path / "jobs.sqlite")
    for args in (("cancel", "7"), ("postcopy", "7"), ("set", "7", "--max-downtime", "100")):
        result = run_cli("jobs", "--store", store, *args)
        assert result.returncode == 1, result.stderr
        assert "no job 7" in result.stderr and "Traceback" not in result.stderr
    bad = run_cli("jobs", "--store", store, "set", "7", "--max-downtime", "0")
    assert bad.returncode == 2
