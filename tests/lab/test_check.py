"""`vmigrate check` against the real lab: a passing check, and each failure we can stage."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmigrate.lab.config import HOST_A, HOST_B
from vmigrate.lab.lifecycle import HostStatus
from vmigrate.lab.vms import LabVmRequest, create_vm, locate_vm
from vmigrate.model import CheckReport, Finding, Mode, Verdict
from vmigrate.preflight import run_checks
from vmigrate.virt.connection import open_connection

from .firewall import dropped
from .helpers import run_cli, small_pool

pytestmark = pytest.mark.lab


def findings(report: CheckReport, check: str) -> list[Finding]:
    return [f for f in report.findings if f.check == check]


def verdict(report: CheckReport, check: str) -> Verdict:
    found = findings(report, check)
    assert found, f"no finding {check}: {[f.check for f in report.findings]}"
    order = [Verdict.FAIL, Verdict.WARN, Verdict.SKIPPED, Verdict.PASS]
    return min((f.verdict for f in found), key=order.index)


@pytest.fixture
def running_vm(lab: list[HostStatus], vm_name: str) -> str:
    create_vm(LabVmRequest(vm_name, host="A", memory_mib=256, disk="shared"))
    return vm_name


def test_a_lab_vm_passes_a_live_check_in_seconds(running_vm: str) -> None:
    started = time.monotonic()
    result = run_cli("check", running_vm, "--from", "hostA", "--to", "hostB", "--json")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    by_check = {f["check"]: f for f in report["findings"]}
    for family in (
        "versions",
        "machine",
        "connectivity",
        "storage",
        "cpu",
        "resources",
        "devices",
        "networks",
        "conflicts",
        "state",
    ):
        assert any(f["family"] == family for f in report["findings"]), family
    assert by_check["storage.shared"]["verdict"] == "pass"
    assert "byte for byte" in by_check["storage.shared"]["summary"]
    assert by_check["connectivity.migration-ports"]["verdict"] == "pass"
    # The lab speaks TLS, and both hosts have QEMU TLS credentials: the stream is encrypted.
    assert by_check["encryption.control-destination"]["verdict"] == "pass"
    assert "TLS" in by_check["encryption.control-destination"]["summary"]
    assert by_check["encryption.migration-stream"]["evidence"]["tls"] is True
    assert elapsed < 30
    # The probe volume is gone again: nothing changed on either host.
    assert not list(Path("/var/lib/vmigrate-lab/shared").glob(".vmigrate-probe-*"))


def test_human_output_is_a_table_with_a_verdict(running_vm: str) -> None:
    result = run_cli("check", running_vm, "--from", "hostA", "--to", HOST_B.uri)
    assert result.returncode == 0, result.stderr
    assert "can go ahead" in result.stdout
    assert "storage.shared" in result.stdout


def test_blocked_libvirt_port_fails_within_seconds(running_vm: str) -> None:
    started = time.monotonic()
    with dropped(HOST_B.address, "16514"):
        report = run_checks(running_vm, "hostA", "hostB")
    assert time.monotonic() - started < 20
    assert report.failed
    port = findings(report, "connectivity.libvirt-port")[0]
    assert port.verdict is Verdict.FAIL
    assert "firewall drops" in port.summary and "16514" in port.fix
    assert verdict(report, "connectivity.destination") is Verdict.FAIL
    assert verdict(report, "storage.shared") is Verdict.SKIPPED


def test_blocked_migration_ports_fail(running_vm: str) -> None:
    with dropped(HOST_B.address, "49152:49215"):
        report = run_checks(running_vm, "hostA", "hostB")
    ports = findings(report, "connectivity.migration-ports")[0]
    assert ports.verdict is Verdict.FAIL
    assert "49152" in ports.summary and "firewall" in ports.summary
    # Everything else still works: only this check fails.
    assert [f.check for f in report.findings if f.verdict is Verdict.FAIL] == [
        "connectivity.migration-ports"
    ]


@pytest.fixture
def defined_on_b(running_vm: str) -> Iterator[str]:
    """A stale definition of the same name on hostB (with another UUID)."""
    src = open_connection(HOST_A.uri)
    dst = open_connection(HOST_B.uri)
    root = ET.fromstring(src.lookupByName(running_vm).XMLDesc(0))
    root.remove(root.find("uuid"))  # type: ignore[arg-type]
    stale = dst.defineXML(ET.tostring(root, encoding="unicode"))
    yield running_vm
    stale.undefine()
    src.close()
    dst.close()


def test_name_clash_fails(defined_on_b: str) -> None:
    report = run_checks(defined_on_b, "hostA", "hostB")
    clash = findings(report, "conflicts.name")[0]
    assert clash.verdict is Verdict.FAIL
    assert "already defined on hostB" in clash.summary


def test_local_disk_needs_copy_storage(lab: list[HostStatus], vm_name: str) -> None:
    create_vm(LabVmRequest(vm_name, host="A", memory_mib=256, disk="local"))
    report = run_checks(vm_name, "hostA", "hostB")
    shared = findings(report, "storage.shared")[0]
    assert shared.verdict is Verdict.FAIL
    assert "local to hostA" in shared.summary and "--copy-storage" in shared.fix
    copied = run_checks(vm_name, "hostA", "hostB", copy_storage=True)
    assert verdict(copied, "storage.shared") is Verdict.PASS
    assert verdict(copied, "storage.space") is Verdict.PASS
    assert not copied.failed


@pytest.fixture
def shut_off_vm_with_network(lab: list[HostStatus], vm_name: str) -> Iterator[str]:
    """A defined, shut-off VM on hostA whose NIC uses a network hostB does not have."""
    conn = open_connection(HOST_A.uri)
    xml = (
        f"<domain type='qemu'><name>{vm_name}</name><memory unit='MiB'>128</memory>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
        "<interface type='network'><source network='lab-only-on-a'/></interface>"
        "</devices></domain>"
    )
    domain = conn.defineXML(xml)
    yield vm_name
    domain.undefine()
    conn.close()


def test_missing_network_fails_a_cold_check(shut_off_vm_with_network: str) -> None:
    report = run_checks(shut_off_vm_with_network, "hostA", "hostB", mode=Mode.COLD)
    network = findings(report, "networks.present")[0]
    assert network.verdict is Verdict.FAIL
    assert "'lab-only-on-a' does not exist on hostB" in network.summary
    # A shut-off VM cannot move live: that is said too.
    live = run_checks(shut_off_vm_with_network, "hostA", "hostB", mode=Mode.LIVE)
    assert verdict(live, "state.mode") is Verdict.FAIL


def test_destination_pool_too_small(lab: list[HostStatus], vm_name: str) -> None:
    """hostB's copy of pool 'small' is a 16 MiB tmpfs; the VM's disk there holds 64 MiB."""
    with small_pool(16):
        src = open_connection(HOST_A.uri)
        volume = src.storagePoolLookupByName("small").createXML(
            "<volume><name>big.img</name><capacity unit='MiB'>64</capacity>"
            "<allocation unit='MiB'>64</allocation><target><format type='raw'/></target>"
            "</volume>",
            0,
        )
        domain = src.defineXML(
            f"<domain type='qemu'><name>{vm_name}</name><memory unit='MiB'>128</memory>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
            f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file='{volume.path()}'/><target dev='vda' bus='virtio'/></disk>"
            "</devices></domain>"
        )
        try:
            report = run_checks(vm_name, "hostA", "hostB", mode=Mode.COLD)
        finally:
            domain.undefine()
            volume.delete(0)
            src.close()
        space = findings(report, "storage.space")[0]
        assert space.verdict is Verdict.FAIL, space
        assert "pool 'small' on hostB" in space.summary
        assert locate_vm(vm_name) == {}
