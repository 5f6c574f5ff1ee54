"""`jobs resume` and `jobs rollback` take --take-over-lease as the move commands do; a fleet
job, which holds no VM's lease itself, refuses it with the way to the lease it is about.
(The take-over itself on a real lease: tests/lab/test_jobs_take_over.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from vmigrate.cli.main import cli
from vmigrate.store import JobStore


@pytest.mark.parametrize("action", ["resume", "rollback"])
def test_both_take_the_option(action: str) -> None:
    shown = CliRunner().invoke(cli, ["jobs", action, "--help"])
    assert shown.exit_code == 0
    assert "--take-over-lease" in shown.output


@pytest.mark.parametrize("kind", ["evacuate", "rolling"])
def test_a_fleet_job_refuses_it_and_nothing_changes(tmp_path: Path, kind: str) -> None:
    store_path = tmp_path / "jobs.sqlite"
    with JobStore(store_path) as store:
        job = store.create_job(kind, "hostA", "hostA", "hostB,hostC", {})
        store.finish_job(job, "failed", "stopped", {})
    result = CliRunner().invoke(
        cli, ["jobs", "--store", str(store_path), "resume", str(job), "--take-over-lease"]
    )
    assert result.exit_code == 2, result.output
    assert f"job {job} is a {kind} job, which holds no VM's lease itself" in result.output
    assert "--take-over-lease" in result.output
    with JobStore(store_path) as store:
        assert store.job(job).state == "failed"
