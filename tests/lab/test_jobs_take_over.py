"""`jobs resume --take-over-lease`: a cold move killed mid-way, and another vmigrate's stale
lease found on its VM since (as a job of another store that died would leave it): the
resume is refused without the flag, nothing changed, and finishes the move with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmigrate.failpoints import ENV
from vmigrate.lab.config import HOST_A, HOST_B
from vmigrate.lab.lifecycle import HostStatus
from vmigrate.lab.vms import LabVmRequest, create_vm, locate_vm
from vmigrate.store import JobStore

from .helpers import run_cli
from .test_leases import foreign_lease, lease_on, write_by_hand

pytestmark = pytest.mark.lab


def test_a_resume_takes_over_a_stale_lease_only_with_the_flag(
    lab: list[HostStatus], vm_name: str, tmp_path: Path
) -> None:
    store = tmp_path / "jobs.sqlite"
    create_vm(LabVmRequest(vm_name, memory_mib=128))
    killed = run_cli(
        "cold", vm_name, "--from", HOST_A.name, "--to", HOST_B.name, "--store", str(store),
        "--json", env={ENV: "cold.stop.started=kill"},
    )  # fmt: skip
    assert killed.returncode == -9, killed.stdout[-1500:] + killed.stderr[-1500:]
    with JobStore(store) as jobs:
        job = jobs.jobs(1)[0].id
    stale = foreign_lease(renewed_ago_s=600)
    write_by_hand(HOST_A.name, vm_name, stale)

    refused = run_cli("jobs", "--store", str(store), "resume", str(job))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "stale lease of live job 977" in refused.stderr, refused.stderr
    assert "--take-over-lease" in refused.stderr
    assert locate_vm(vm_name) == {HOST_A.name: "running"}
    assert lease_on(HOST_A.name, vm_name) == stale  # untouched

    taken = run_cli(
        "jobs", "--store", str(store), "resume", str(job), "--take-over-lease", "--json"
    )
    assert taken.returncode == 0, taken.stdout[-2000:] + taken.stderr[-2000:]
    done = [json.loads(line) for line in taken.stdout.splitlines() if '"event": "done"' in line]
    assert done and done[-1]["outcome"] == "completed", taken.stdout[-2000:]
    assert locate_vm(vm_name) == {HOST_B.name: "running"}
    assert lease_on(HOST_B.name, vm_name) is None  # released where the VM ends
    with JobStore(store) as jobs:
        events = jobs.lease_events(job)
    assert [e["event"] for e in events].count("taken over") == 1
