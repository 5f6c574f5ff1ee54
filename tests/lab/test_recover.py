"""vmigrate itself SIGKILLed mid-migration, then `vmigrate recover`: the VM ends on exactly
one host, its heartbeat contiguous, and the job records what happened."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from vmigrate.lab.heartbeat import heartbeat_report
from vmigrate.lab.lifecycle import HostStatus
from vmigrate.lab.vms import locate_vm
from vmigrate.store import JobStore

from .helpers import busy_migration, read_events_until, run_cli

pytestmark = pytest.mark.lab


def _kill_when(process: subprocess.Popen[str], wanted: str) -> int:
    """Read the JSON events until one of kind `wanted`, then SIGKILL vmigrate."""
    job_id = read_events_until(process, wanted)
    process.kill()
    process.wait(timeout=30)
    return job_id


def _recover(vm: str, store: Path) -> dict[str, object]:
    result = run_cli("recover", vm, "--store", str(store), "--wait", "120", "--json", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    return report


@pytest.mark.parametrize(
    ("moment", "extra"),
    [("sample", ()), ("postcopy", ()), ("sample", ("--direct",))],
    ids=["mid-precopy", "mid-postcopy", "direct-mid-precopy"],
)
def test_vmigrate_killed_then_recover(
    lab: list[HostStatus], vm_name: str, tmp_path: Path, moment: str, extra: tuple[str, ...]
) -> None:
    store = tmp_path / "jobs.sqlite"
    with busy_migration(vm_name, store, *extra) as process:
        job_id = _kill_when(process, moment)
        assert JobStore(store).job(job_id).state == "interrupted"
        jobs = run_cli("jobs", "--store", str(store), env={"COLUMNS": "200"}, timeout=60)
        assert "interrupted" in jobs.stdout
    report = _recover(vm_name, store)
    assert report["outcome"] in ("completed", "aborted"), report
    placement = locate_vm(vm_name)
    assert list(placement.values()) == ["running"], placement  # exactly one host
    expected = "hostB" if report["outcome"] == "completed" else "hostA"
    assert list(placement) == [expected], (placement, report)
    if moment == "postcopy":
        assert report["outcome"] == "completed"  # post-copy cannot go back: it finishes
    beats = heartbeat_report(vm_name)
    assert beats.contiguous, beats.problems
    record = JobStore(store).job(job_id)
    assert record.state == report["outcome"] and record.outcome
    assert "recovered" in record.outcome
    again = run_cli("recover", vm_name, "--store", str(store), timeout=60)
    assert again.returncode == 1 and "no interrupted or unverified live migration" in again.stderr
