"""Real faults during a live migration: the link cut in pre-copy and in post-copy, hostB's
libvirtd killed, a copy-storage job cancelled. Each ends with the VM running on exactly one
host, its heartbeat contiguous, and nothing of the job left behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from vmigrate.lab.config import HOST_A, HOST_B, LOCAL_POOL
from vmigrate.lab.heartbeat import heartbeat_report
from vmigrate.lab.lifecycle import HostStatus, lab_up
from vmigrate.lab.state import load_records
from vmigrate.lab.vms import LabVmRequest, add_disk, create_vm, locate_vm

from .firewall import dropped
from .helpers import (
    busy_migration,
    in_host,
    pool_volumes,
    read_events_until,
    read_rest,
    run_cli,
    start_cli,
)

pytestmark = pytest.mark.lab


@contextlib.contextmanager
def link_cut() -> Iterator[None]:
    """Nothing reaches hostB: neither its libvirtd (TLS, ssh) nor its migration ports."""
    with (
        dropped(HOST_B.address, "16514"),
        dropped(HOST_B.address, "22"),
        dropped(HOST_B.address, "49152:49215"),
    ):
        yield


def finish(process: subprocess.Popen[str], timeout: float = 300) -> dict[str, Any]:
    """Let vmigrate end; its final report (the "done" event)."""
    out, err = read_rest(process, timeout=timeout)
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    done = [e for e in events if e["event"] == "done"]
    assert done, f"vmigrate ended without a report: {err[-2000:]}"
    assert "Traceback" not in err, err[-3000:]
    report: dict[str, Any] = done[-1]
    return report


def _destination_images(paths: set[str]) -> set[str]:
    """Which of `paths` exist in hostB's local pool."""
    return pool_volumes(HOST_B.uri, LOCAL_POOL) & paths


def wait_until_only_on(vm: str, host: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while locate_vm(vm) != {host: "running"}:
        assert time.monotonic() < deadline, locate_vm(vm)
        time.sleep(1)


def past_setup() -> None:
    """The first sample comes while libvirt still sets the job up (TLS handshakes, the
    disks' NBD connections); a fault meant for mid-transfer waits until data flows."""
    time.sleep(5)


def slow_precopy(vm: str, tmp_path: Path) -> subprocess.Popen[str]:
    """A live migration held to 8 MiB/s, once its first sample is out (it runs ~30 s)."""
    create_vm(LabVmRequest(vm, memory_mib=256, dirty_rate_mib=20))
    process = start_cli(
        "live", vm, "--from", "hostA", "--to", "hostB", "--bandwidth", "8",
        "--store", str(tmp_path / "jobs.sqlite"), "--json",
    )  # fmt: skip
    read_events_until(process, "sample")
    past_setup()
    return process


def test_link_cut_mid_precopy_aborts_and_keeps_the_vm_on_hosta(
    lab: list[HostStatus], vm_name: str, tmp_path: Path
) -> None:
    process = slow_precopy(vm_name, tmp_path)
    with link_cut():
        read_events_until(process, "abort")  # the policy notices that nothing moves
    report = finish(process)
    assert report["outcome"] == "aborted", report
    assert "link is down or blocked" in report["message"]
    assert report["placement_ok"], report["placement"]
    assert process.returncode == 1
    wait_until_only_on(vm_name, "hostA")
    assert heartbeat_report(vm_name).contiguous


@contextlib.contextmanager
def postcopy_job(vm: str, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A busy guest's live migration, once the policy has asked for post-copy."""
    with busy_migration(vm, tmp_path / "jobs.sqlite") as process:
        read_events_until(process, "postcopy")
        yield process


def test_link_cut_mid_postcopy_then_restored_completes_on_hostb(
    lab: list[HostStatus], vm_name: str, tmp_path: Path
) -> None:
    with postcopy_job(vm_name, tmp_path) as process:
        # The policy's request is not the switch: under load QEMU took longer than a fixed
        # 0.5 s, the cut came in pre-copy and the move failed (CI, stop 32).
        _until_source_paused_in_postcopy(vm_name)
        # Longer than libvirt's own keepalive between the daemons (30 s): libvirt marks the
        # job "post-copy failed" and its migrate call returns; vmigrate must see it through.
        with link_cut():
            time.sleep(40)
        report = finish(process)
    if report["outcome"] == "failed" and "stopped on hostB during post-copy" in report["message"]:
        # Open finding: in about 1 lab run in 6 (CI stop 32; main 2026-12-08 01:20) the guest
        # was gone on hostB some 30 s after the link came back. vmigrate said so and destroyed
        # nothing (hostA keeps its paused copy); the cause is not known yet.
        assert locate_vm(vm_name).get("hostA") == "paused", locate_vm(vm_name)
        pytest.xfail("the guest was gone on hostB after the link came back (open finding)")
    assert report["outcome"] == "completed", (report["message"], report["actions"])
    assert report["placement_ok"] and report["postcopy"], report["placement"]
    notes = [a["reason"] for a in report["actions"] if a["action"] == "note"]
    assert any("the link is broken" in n for n in notes), notes
    assert locate_vm(vm_name) == {"hostB": "running"}
    assert heartbeat_report(vm_name).contiguous


@pytest.mark.parametrize("host", ["hostB", "hostA"])
def test_libvirtd_killed_mid_precopy_leaves_the_vm_on_hosta(
    lab: list[HostStatus], vm_name: str, tmp_path: Path, host: str
) -> None:
    process = slow_precopy(vm_name, tmp_path)
    os.kill(load_records()[host].pid, signal.SIGKILL)
    time.sleep(2)
    lab_up()  # the daemon comes back (as systemd would restart it)
    report = finish(process)
    assert report["outcome"] == "failed", report
    assert f"lost the connection to {host}" in report["message"], report["message"]
    assert process.returncode == 1
    # Verified once the host answered again. A restarted hostB removes its half-received
    # guest; a restarted hostA cancels the outgoing migration and keeps the guest running.
    assert report["placement_ok"], report["placement"]
    assert locate_vm(vm_name) == {"hostA": "running"}
    assert heartbeat_report(vm_name).contiguous


def slow_copy_storage(
    vm: str, store: Path, *extra: str
) -> tuple[subprocess.Popen[str], set[str], int]:
    """A --copy-storage migration of vda and a 64 MiB-filled vdb at 4 MiB/s, once its first
    sample is out; with its two local images and its job id."""
    created = create_vm(LabVmRequest(vm, memory_mib=256, disk="local"))
    assert created.disk_path is not None
    vdb = add_disk(vm, LOCAL_POOL, "vdb", 128, "write -P 0xa5 0 64M")
    process = start_cli(
        "live", vm, "--from", "hostA", "--to", "hostB", "--copy-storage", *extra,
        "--bandwidth", "4", "--store", str(store), "--json",
    )  # fmt: skip
    job_id = read_events_until(process, "sample")
    past_setup()
    return process, {created.disk_path, vdb}, job_id


def test_destination_qemu_killed_mid_precopy_leaves_the_vm_on_hosta(
    lab: list[HostStatus], vm_name: str, tmp_path: Path
) -> None:
    process = slow_precopy(vm_name, tmp_path)
    incoming = in_host("hostB", "cat", f"/run/libvirt/qemu/{vm_name}.pid").stdout.strip()
    os.kill(int(incoming), signal.SIGKILL)
    report = finish(process)
    assert report["outcome"] == "failed", report
    assert "the migration stream to hostB broke" in report["message"], report["message"]
    assert report["placement_ok"], report["placement"]
    assert locate_vm(vm_name) == {"hostA": "running"}
    assert heartbeat_report(vm_name).contiguous


def _until_source_paused_in_postcopy(vm: str, timeout: float = 60) -> None:
    conn = libvirt.open(HOST_A.uri)
    try:
        deadline = time.monotonic() + timeout
        postcopy = [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY]
        while conn.lookupByName(vm).state() != postcopy:
            assert time.monotonic() < deadline, "the switch to post-copy never happened"
            time.sleep(0.05)
    finally:
        conn.close()


def test_destination_qemu_killed_mid_postcopy_is_reported_and_nothing_is_destroyed(
    lab: list[HostStatus], vm_name: str, tmp_path: Path
) -> None:
    with postcopy_job(vm_name, tmp_path) as process:
        _until_source_paused_in_postcopy(vm_name)  # the switch has really happened
        running = in_host("hostB", "cat", f"/run/libvirt/qemu/{vm_name}.pid").stdout.strip()
        os.kill(int(running), signal.SIGKILL)  # post-copy's one unrecoverable failure
        started = time.monotonic()
        report = finish(process)
    # Said at once (not after --postcopy-wait), as what it is, with what to do.
    assert time.monotonic() - started < 60
    assert report["outcome"] == "failed" and not report["placement_ok"], report
    assert "stopped on hostB during post-copy" in report["message"], report["message"]
    assert "older than its disks" in report["fix"]
    # vmigrate destroyed nothing: the source's paused copy is still there for the operator
    # (and hostB keeps the definition libvirt gave it at the switch).
    where = locate_vm(vm_name)
    assert where["hostA"] == "paused" and where.get("hostB", "shut off") == "shut off", where


def test_copy_storage_cancelled_from_another_terminal_removes_the_destination_images(
    lab: list[HostStatus], vm_name: str, tmp_path: Path
) -> None:
    store = tmp_path / "jobs.sqlite"
    process, images, job_id = slow_copy_storage(vm_name, store)
    cancelled = run_cli("jobs", "--store", str(store), "cancel", str(job_id))
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    report = finish(process)
    assert report["outcome"] == "cancelled", report
    assert report["placement_ok"], report["placement"]
    storage = report["storage"]
    assert sorted(storage["removed_from_destination"]) == sorted(images)
    assert storage["left_on_destination"] == []
    assert not _destination_images(images)
    assert locate_vm(vm_name) == {"hostA": "running"}
    assert heartbeat_report(vm_name).contiguous


def test_copy_storage_vmigrate_killed_then_recover_removes_the_destination_images(
    lab: list[HostStatus], vm_name: str, tmp_path: Path
) -> None:
    store = tmp_path / "jobs.sqlite"
    # --direct: libvirt aborts a client-driven migration whose client is gone.
    process, images, _job = slow_copy_storage(vm_name, store, "--direct")
    process.kill()
    process.wait(timeout=30)
    assert _destination_images(images)  # made before the mirror started
    result = run_cli("recover", vm_name, "--store", str(store), "--wait", "120", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["outcome"] == "aborted", report
    assert "removed from the destination" in report["message"], report["message"]
    assert not _destination_images(images)
    assert locate_vm(vm_name) == {"hostA": "running"}
    assert heartbeat_report(vm_name).contiguous


def test_link_cut_mid_disk_copy_aborts_and_removes_the_destination_images(
    lab: list[HostStatus], vm_name: str, tmp_path: Path
) -> None:
    process, images, _job = slow_copy_storage(vm_name, tmp_path / "jobs.sqlite")
    with link_cut():
        read_events_until(process, "abort")  # nothing moves: the disk mirror stalls too
    report = finish(process)
    assert report["outcome"] == "aborted", report
    assert report["placement_ok"], report["placement"]
    assert sorted(report["storage"]["removed_from_destination"]) == sorted(images)
    assert not _destination_images(images)
    wait_until_only_on(vm_name, "hostA")
    assert heartbeat_report(vm_name).contiguous
