"""A host whose libvirtd lacks a driver package: `lab up` and `check` name the package, exit
non-zero, print no traceback, and change nothing.

The storage driver module is hidden in hostB's mount namespace only (covered by /dev/null),
as on a Debian host where `libvirt-daemon-driver-storage` was never installed.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import time
from collections.abc import Iterator

import pytest

from vmigrate.lab.config import HOST_B
from vmigrate.lab.daemons import namespace_when_ready, start_libvirtd, stop_host_processes
from vmigrate.lab.lifecycle import HostStatus, lab_up
from vmigrate.lab.processes import is_alive
from vmigrate.lab.sshd import stop_sshd
from vmigrate.lab.state import load_records, save_records
from vmigrate.lab.vms import LabVmRequest, create_vm, locate_vm
from vmigrate.virt.connection import wait_for_connection

from .helpers import run_cli

PACKAGE = "libvirt-daemon-driver-storage"


def _storage_module() -> str:
    found = glob.glob("/usr/lib/*/libvirt/connection-driver/libvirt_driver_storage.so")
    assert found, f"{PACKAGE} is not installed on this machine: scripts/setup.sh installs it"
    return found[0]


@pytest.fixture
def host_b_without_storage(lab: list[HostStatus]) -> Iterator[None]:
    """hostB's libvirtd restarted without its storage driver; the real one back afterwards."""
    records = load_records()
    old = records["hostB"]
    os.kill(old.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while is_alive(old.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    stop_sshd(old.mount_namespace)  # it holds hostB's port 22 for the host that comes back
    crippled = start_libvirtd(HOST_B, hide=[_storage_module()])
    wait_for_connection(HOST_B.uri, timeout=30, host="hostB").close()
    records["hostB"] = namespace_when_ready(crippled)
    save_records(records)
    try:
        yield
    finally:
        stop_host_processes(load_records()["hostB"])
        lab_up()


def _no_traceback(output: str) -> None:
    assert "Traceback" not in output, output
    assert "libvirtError" not in output, output


def test_lab_up_names_the_missing_storage_driver_and_stops_nothing(
    host_b_without_storage: None,
) -> None:
    before = {name: record.pid for name, record in load_records().items()}
    result = run_cli("lab", "up")
    _no_traceback(result.stdout + result.stderr)
    assert result.returncode == 1, result.stderr
    assert "host hostB" in result.stderr
    assert "no storage driver" in result.stderr
    assert PACKAGE in result.stderr
    # Nothing half-started, nothing stopped: the hosts it did not start run as they were.
    after = {name: record.pid for name, record in load_records().items()}
    assert after == before
    assert all(is_alive(pid) for pid in after.values())


def test_check_reports_the_missing_driver_as_a_finding(
    host_b_without_storage: None, vm_name: str
) -> None:
    create_vm(LabVmRequest(vm_name, memory_mib=256, disk="local"))
    result = run_cli("check", vm_name, "--from", "hostA", "--to", "hostB", "--json")
    _no_traceback(result.stdout + result.stderr)
    assert result.returncode == 1, result.stderr
    findings = {f["check"]: f for f in json.loads(result.stdout)["findings"]}
    drivers = findings["drivers.destination"]
    assert drivers["verdict"] == "fail"
    assert drivers["evidence"]["package"] == PACKAGE
    assert PACKAGE in drivers["fix"]
    assert findings["drivers.source"]["verdict"] == "pass"
    # The check changed nothing: the VM still runs on hostA only.
    assert locate_vm(vm_name) == {"hostA": "running"}
