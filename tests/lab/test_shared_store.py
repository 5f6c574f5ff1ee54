"""A job store in PostgreSQL, end to end in the lab: a cold move recorded there by the
`vmigrate` command, and the guarded lifecycle holding on a real VM (a completed job is never
rolled back: the VM stays on hostB with its disk unchanged)."""

from __future__ import annotations

import contextlib
import json
import time

import pytest

from vmigrate.errors import VmigrateError
from vmigrate.lab import link
from vmigrate.lab.config import HOST_A
from vmigrate.lab.hostfs import file_sha256, on_host
from vmigrate.lab.lifecycle import HostStatus
from vmigrate.lab.vms import LabVmRequest, create_vm, locate_vm, remove_vm
from vmigrate.store import JobStore
from vmigrate.virt.connection import open_connection

from .helpers import run_cli, start_cli

pytestmark = pytest.mark.lab


def test_a_completed_cold_job_in_a_postgresql_store_is_never_rolled_back(
    lab: list[HostStatus], vm_name: str, pg_url: str
) -> None:
    created = create_vm(LabVmRequest(vm_name, memory_mib=128, disk="local", disk_format="raw"))
    conn = open_connection(HOST_A.uri)
    conn.lookupByName(vm_name).destroy()
    conn.close()
    moved = run_cli(
        "cold", vm_name, "--from", "hostA", "--to", "hostB", "--store", pg_url, "--json",
        timeout=300,
    )  # fmt: skip
    assert moved.returncode == 0, moved.stdout + moved.stderr
    done = next(json.loads(line) for line in moved.stdout.splitlines() if '"event": "done"' in line)
    job_id = done["job_id"]
    assert done["outcome"] == "completed" and locate_vm(vm_name) == {"hostB": "shut off"}
    record = JobStore(pg_url).job(job_id)  # recorded in PostgreSQL, by that process
    assert record.state == "completed" and record.owner is not None
    assert record.owner.start is not None and record.owner.boot_id
    assert created.disk_path is not None
    disk = on_host("hostB", created.disk_path)
    before = file_sha256(disk)

    refused = run_cli("jobs", "--store", pg_url, "rollback", str(job_id), timeout=60)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"job {job_id} completed: {vm_name} runs on hostB" in refused.stderr
    assert f"vmigrate cold {vm_name} --from hostB --to hostA" in refused.stderr
    assert "Traceback" not in refused.stderr
    # Nothing changed: the VM, its disk, the job.
    assert locate_vm(vm_name) == {"hostB": "shut off"}
    assert file_sha256(disk) == before
    after = JobStore(pg_url).job(job_id)
    assert after.state == "completed" and after.action is None


def test_an_evacuation_and_its_moves_share_one_postgresql_store_with_a_second_operator(
    lab: list[HostStatus], vm_name: str, pg_url: str
) -> None:
    """The evacuation's children get the store's URL (no password on their command line:
    PGPASSWORD reaches them as it reached the parent); a second vmigrate process with the
    same URL sees hostA in maintenance and will not target it."""
    create_vm(LabVmRequest(vm_name, memory_mib=256))
    evacuated = run_cli(
        "evacuate", "hostA", "--to", "hostB", "--store", pg_url, "--json", timeout=300
    )
    assert evacuated.returncode == 0, evacuated.stdout + evacuated.stderr
    assert locate_vm(vm_name) == {"hostB": "running"}
    store = JobStore(pg_url)
    kinds = {(j.kind, j.vm, j.state) for j in store.jobs()}
    assert ("evacuate", "hostA", "completed") in kinds
    assert ("live", vm_name, "completed") in kinds  # the child recorded its move here
    assert [m.host for m in store.maintenance().values()] == ["hostA"]
    other = run_cli("evacuate", "hostB", "--to", "hostA", "--store", pg_url, "--dry-run")
    assert other.returncode == 2, other.stdout + other.stderr
    assert "every target is in maintenance (hostA)" in other.stderr
    ended = run_cli("maintenance", "end", "hostA", "--store", pg_url, timeout=60)
    assert ended.returncode == 0, ended.stdout + ended.stderr
    assert not JobStore(pg_url).maintenance()


def test_once_one_operator_evacuates_hosta_the_other_never_targets_it(
    lab: list[HostStatus], vm_name: str, pg_url: str
) -> None:
    """Two vmigrate processes share one PostgreSQL store, as two operators on two machines
    would: as soon as the first's evacuation has marked hostA (its move may still run or
    have ended: the mark stays), the second's `live --to hostA` is refused and its `balance`
    plan leaves hostA out; both VMs end on exactly one host."""
    leaving, staying = f"{vm_name[:50]}-a", f"{vm_name[:50]}-b"
    try:
        # A 128 MiB working set rewritten at 40 MiB/s, over ~12 MiB/s: the move's first pass
        # alone lasts ~20 s, long enough for the second operator's two commands (and were it
        # over sooner, the mark stays: the test holds either way, it only runs longer).
        create_vm(LabVmRequest(leaving, memory_mib=256, dirty_rate_mib=40, working_set_mib=128))
        create_vm(LabVmRequest(staying, memory_mib=128, host="hostB"))
        link.shape("100mbit")
        evacuation = start_cli("evacuate", "hostA", "--to", "hostB", "--store", pg_url, "--json")
        try:
            deadline = time.monotonic() + 120
            while not JobStore(pg_url).in_maintenance(HOST_A.uri):  # the first operator's mark
                assert evacuation.poll() is None, evacuation.communicate()
                assert time.monotonic() < deadline, "the evacuation never marked hostA"
                time.sleep(0.2)
            refused = run_cli(
                "live", staying, "--from", "hostB", "--to", "hostA", "--store", pg_url,
                timeout=120,
            )  # fmt: skip
            planned = run_cli(
                "balance", "--cluster", "lab", "--dry-run", "--threshold", "0.01",
                "--window", "2", "--store", pg_url, "--json", timeout=120,
            )  # fmt: skip
        finally:
            link.reset()
            out, err = evacuation.communicate(timeout=600)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "hostA is in maintenance" in refused.stderr and "Traceback" not in refused.stderr
        assert planned.returncode == 0, planned.stdout + planned.stderr
        events = [json.loads(line) for line in planned.stdout.splitlines() if line[:1] == "{"]
        plans = [e for e in events if e.get("event") == "plan"]
        assert plans, planned.stdout
        for plan in plans:
            assert "hostA" not in {m["destination"] for m in plan.get("moves", [])}
            assert "hostA" not in {h["name"] for h in plan.get("hosts_before", [])}
        assert evacuation.returncode == 0, out + err
        assert locate_vm(leaving) == {"hostB": "running"}
        assert locate_vm(staying) == {"hostB": "running"}
    finally:
        for name in (leaving, staying):
            with contextlib.suppress(VmigrateError):
                remove_vm(name)
