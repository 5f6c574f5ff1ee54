"""`vmigrate estimate` against a busy lab VM: a sanity check against a real migration."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmigrate.lab import link
from vmigrate.lab.config import HOST_A, HOST_B
from vmigrate.lab.lifecycle import HostStatus
from vmigrate.lab.vms import LabVmRequest, create_vm
from vmigrate.live.policy import PRESETS
from vmigrate.live.runner import LiveRequest, migrate_live
from vmigrate.virt.connection import open_connection

from .helpers import run_cli

pytestmark = pytest.mark.lab


@pytest.fixture
def gigabit(lab: list[HostStatus]) -> Iterator[None]:
    link.shape("1gbit")
    yield
    link.reset()


def test_converging_estimate_matches_a_real_migration_roughly(
    lab: list[HostStatus], vm_name: str, gigabit: None, tmp_path: Path
) -> None:
    create_vm(LabVmRequest(vm_name, memory_mib=256, working_set_mib=64, dirty_rate_mib=20))
    # No --bandwidth: estimate measures the 1 Gbit/s link to hostB (119 MiB/s of payload).
    result = run_cli("estimate", vm_name, "--from", "hostA", "--to", "hostB", "--json")
    assert result.returncode == 0, result.stderr
    forecast = json.loads(result.stdout)
    assert forecast["bandwidth_source"].startswith("measured")
    assert 90 < forecast["bandwidth_bps"] / (1 << 20) < 130, forecast["bandwidth_bps"]
    hostb = open_connection(HOST_B.uri)
    names = [v.name() for p in hostb.listAllStoragePools(0) for v in p.listAllVolumes(0)]
    hostb.close()
    assert ".vmigrate-bandwidth-probe" not in names
    assert forecast["dirty_rate_bps"] > 0
    assert forecast["precopy"]["converges"]
    predicted = forecast["precopy"]["total_seconds"]
    report = migrate_live(
        LiveRequest(
            vm_name,
            "hostA",
            "hostB",
            PRESETS["fast"].with_limits(max_downtime_ms=300),
            store_path=tmp_path / "jobs.sqlite",
        )
    )
    assert report.outcome == "completed"
    # A sanity bound, not the accuracy figure (that one lives in docs/benchmarks.md).
    assert predicted / 2 < report.total_s < predicted * 2, (predicted, report.total_s)


def test_bad_input(lab: list[HostStatus], vm_name: str) -> None:
    create_vm(LabVmRequest(vm_name, memory_mib=256, disk="local"))
    conn = open_connection(HOST_A.uri)
    conn.lookupByName(vm_name).destroy()
    conn.close()
    cases = [
        (("no-such-vm", "--bandwidth", "100"), 1, "no VM named"),
        ((vm_name, "--bandwidth", "100"), 1, "vmigrate cold"),
        ((vm_name, "--bandwidth", "0"), 2, "impossible"),
        ((vm_name, "--bandwidth", "100", "--max-downtime", "-1"), 2, "impossible"),
    ]
    for args, code, words in cases:
        result = run_cli("estimate", args[0], "--from", "hostA", "--to", "hostB", *args[1:])
        assert result.returncode == code, (args, result.stderr)
        assert words in result.stderr and "Traceback" not in result.stderr
