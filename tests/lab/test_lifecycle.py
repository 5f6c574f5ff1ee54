"""`lab up` / `lab down`: idempotent, and down leaves nothing behind, even mid-migration."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from vmigrate.lab import link
from vmigrate.lab.config import HOST_A, HOST_B, LAB_HOSTS
from vmigrate.lab.daemons import DaemonRecord
from vmigrate.lab.lifecycle import HostStatus, lab_down, lab_status, lab_up
from vmigrate.lab.paths import LAB_DIR
from vmigrate.lab.processes import is_alive, pids_in_mount_namespace
from vmigrate.lab.state import load_records
from vmigrate.lab.vms import LabVmRequest, create_vm

pytestmark = pytest.mark.lab


def _cmdlines() -> list[str]:
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            lines.append(raw.replace(b"\0", b" ").decode(errors="replace"))
    return lines


def _port_open(address: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((address, port)) == 0


def assert_nothing_left(records: dict[str, DaemonRecord], vm_names: list[str]) -> None:
    for name, record in records.items():
        assert not record.is_running(), f"{name}'s libvirtd is still running"
        assert pids_in_mount_namespace(record.mount_namespace) == [], f"{name} left processes"
    cmdlines = _cmdlines()
    assert not [c for c in cmdlines if "vmigrate.lab.heartbeat_collector" in c]
    for vm in vm_names:
        assert not [c for c in cmdlines if f"guest={vm}," in c], f"QEMU of {vm} still runs"
    assert not link.status().shaped
    assert not LAB_DIR.exists()
    assert str(LAB_DIR) not in Path("/proc/self/mountinfo").read_text()
    for host in LAB_HOSTS:
        for port in (16514, 22, 16509):  # TLS, its sshd, plain TCP
            assert not _port_open(host.address, port), f"{host.name} still listens on {port}"
    # No daemon of a lab host is left, sshd included (counted by state, not by name).
    for pid in Path("/proc").iterdir():
        if pid.name.isdigit() and is_alive(int(pid.name)):
            with contextlib.suppress(OSError):
                assert f"{LAB_DIR}/" not in (pid / "cmdline").read_text(), pid


def test_up_is_idempotent_and_down_up_leaves_nothing_behind(lab: list[HostStatus]) -> None:
    first = {h.name: h.pid for h in lab_up()}
    assert first == {h.name: h.pid for h in lab_up()}, "a second `up` restarted a daemon"
    assert all(h.running and h.libvirt_version and h.qemu_version for h in lab_status())
    records = load_records()
    made = json.loads((LAB_DIR / "made-dirs.json").read_text())  # mount points lab up made
    link.shape("1gbit")
    lab_down()
    assert_nothing_left(records, [])
    assert not [path for path in made if Path(path).exists()], made
    lab_down()  # a second `down` has nothing to do and does not fail
    hosts = lab_up()
    assert [h.name for h in hosts if h.running] == ["hostA", "hostB"]
    assert {h.hostname for h in hosts} == {"hostA", "hostB"}


def test_down_during_a_migration_still_cleans_up(lab: list[HostStatus], vm_name: str) -> None:
    # A guest that dirties faster than the shaped link carries never converges: the
    # migration is guaranteed to be in flight when the lab goes down.
    create_vm(
        LabVmRequest(vm_name, host="A", memory_mib=256, working_set_mib=128, dirty_rate_mib=200)
    )
    link.shape("100mbit")
    migration = subprocess.Popen(
        ["virsh", "-c", HOST_A.uri, "migrate", "--live", "--p2p", vm_name, HOST_B.uri],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3.0)
        assert migration.poll() is None, "the migration ended before the lab went down"
        records = load_records()
        lab_down()
        assert_nothing_left(records, [vm_name])
        out, err = migration.communicate(timeout=30)
        # The migration did not complete. virsh itself exits 0 now and then when the daemon
        # it talks to goes away mid-command, after printing the error (seen over TLS).
        assert migration.returncode != 0 or "error: Disconnected" in err, (out, err)
    finally:
        if migration.poll() is None:
            migration.kill()
        link.reset()
        lab_up()
