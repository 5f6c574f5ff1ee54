"""`lab up --hosts 3`: a third host, hostC, that answers, declares its capacity, receives a
live move from hostA and sits behind hostA's shaped uplink with hostB.

hostC stays up once started: the session's `lab down` stops it with the rest."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmigrate.lab import link
from vmigrate.lab.config import HOST_A, HOST_B, HOST_C, LAB_HOSTS, LOCAL_POOL_PATH
from vmigrate.lab.heartbeat import heartbeat_report
from vmigrate.lab.hostfs import on_host
from vmigrate.lab.lifecycle import HostStatus
from vmigrate.lab.state import load_records, running_lab_hosts
from vmigrate.lab.vms import LabVmRequest, create_vm, locate_vm

from .helpers import run_cli
from .test_link import throughput_mib_s

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def three_hosts(lab: list[HostStatus]) -> Iterator[tuple[subprocess.CompletedProcess[str], str]]:
    """`vmigrate lab up --hosts 3` with the link shaped beforehand; yields its result and the
    addresses the shaped link covered right after it (hostC's must be among them)."""
    link.shape("1gbit")
    try:
        result = run_cli("lab", "up", "--hosts", "3")
        covered = ",".join(link.status().destinations)
    finally:
        link.reset()
    yield result, covered


def _status() -> dict[str, dict[str, object]]:
    result = run_cli("lab", "status", "--json")
    assert result.returncode == 0, result.stderr
    return {host["name"]: host for host in json.loads(result.stdout)["hosts"]}


def test_up_hosts_3_starts_hostc_with_its_declared_capacity(
    three_hosts: tuple[subprocess.CompletedProcess[str], str],
) -> None:
    result, covered = three_hosts
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hostC" in result.stdout
    assert running_lab_hosts() == (HOST_A, HOST_B, HOST_C)
    hosts = _status()
    assert list(hosts) == ["hostA", "hostB", "hostC"]
    for declared in LAB_HOSTS[:3]:
        host = hosts[declared.name]
        assert host["running"] is True and host["problem"] is None, host
        assert host["uri"] == declared.uri
        assert host["hostname"] == declared.name  # its own UTS namespace
        assert (host["capacity_mib"], host["vcpus"]) == (declared.capacity_mib, declared.vcpus)
    assert (hosts["hostC"]["capacity_mib"], hosts["hostC"]["vcpus"]) == (3072, 4)
    assert on_host("hostC", LOCAL_POOL_PATH).is_dir()  # its private local pool
    # A link shaped before hostC started carries hostA's traffic to hostC too.
    assert covered.split(",") == [HOST_B.address, HOST_C.address]


def test_up_with_fewer_hosts_keeps_hostc_running_and_says_so(
    three_hosts: tuple[subprocess.CompletedProcess[str], str],
) -> None:
    pid = load_records()["hostC"].pid
    result = run_cli("lab", "up", "--hosts", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hostC keeps running (beyond --hosts 2)" in result.stdout
    assert "vmigrate lab down" in result.stdout
    assert load_records()["hostC"].pid == pid
    assert list(_status()) == ["hostA", "hostB", "hostC"]


def test_vm_moves_live_from_hosta_to_hostc(
    three_hosts: tuple[subprocess.CompletedProcess[str], str], vm_name: str, tmp_path: Path
) -> None:
    create_vm(LabVmRequest(vm_name, host="A", memory_mib=256))
    result = run_cli(
        "live", vm_name, "--from", "hostA", "--to", "hostC",
        "--store", str(tmp_path / "jobs.sqlite"), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    done = next(event for event in events if event["event"] == "done")
    assert done["outcome"] == "completed" and done["placement_ok"], done
    assert locate_vm(vm_name) == {"hostC": "running"}
    time.sleep(0.5)
    report = heartbeat_report(vm_name)
    assert report.contiguous, report.problems
    assert report.last_seq_by_host["hostC"] > report.last_seq_by_host["hostA"]


def test_moves_to_hostb_and_hostc_share_hosta_uplink(
    three_hosts: tuple[subprocess.CompletedProcess[str], str],
) -> None:
    status = link.shape("100mbit")  # 11.9 MiB/s for both destinations together
    try:
        assert status.destinations == (HOST_B.address, HOST_C.address)
        assert status.hosts == ("hostB", "hostC")
        started = time.monotonic()
        streams = [
            threading.Thread(target=throughput_mib_s, args=(address, 12))
            for address in (HOST_B.address, HOST_C.address)
        ]
        for stream in streams:
            stream.start()
        for stream in streams:
            stream.join(timeout=120)
        together = 24 / (time.monotonic() - started)
        assert together < 16, f"hostB and hostC together got {together:.1f} MiB/s"
        to_a = throughput_mib_s(HOST_A.address, 24)
        assert to_a > 40, f"traffic to hostA was slowed too ({to_a:.1f} MiB/s)"
        assert link.status().bytes_shaped >= 24 << 20
    finally:
        link.reset()
