"""Checks that know versions, over what libvirt 9.0/QEMU 7.2 (Debian 12) and libvirt 11.3/QEMU
10.0 (bookworm-backports) really answered (tests/unit/data/versions): machine types with their
aliases, devices, CPU models, and the fleet's pair verdicts made of the same findings."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from vmigrate.checks.context import CheckInput
from vmigrate.checks.cpu import CpuFacts, check_cpu
from vmigrate.checks.machine import check_devices_offered, check_machine
from vmigrate.checks.versions import check_versions
from vmigrate.domxml.capabilities import host_capabilities
from vmigrate.domxml.domain import parse_domain
from vmigrate.facts import DomainFacts, HostCapabilities, HostFacts
from vmigrate.fleet.gather import _verdict
from vmigrate.model import Finding, Mode, Verdict
from vmigrate.preflight import pair_findings

from .test_checks import domain, facts, host, only

DATA = Path(__file__).parent / "data" / "versions"
OLD = "libvirt-9.0.0-qemu-7.2.22"
NEW = "libvirt-11.3.0-qemu-10.0.2"
VERSIONS = {OLD: (9_000_000, 7_002_022), NEW: (11_003_000, 10_000_002)}


def recorded(prefix: str) -> HostCapabilities:
    libvirt, qemu = VERSIONS[prefix]
    return host_capabilities(
        (DATA / f"{prefix}-capabilities.xml").read_text(),
        [(DATA / f"{prefix}-domcaps-{kind}.xml").read_text() for kind in ("kvm", "tcg")],
        libvirt_version=libvirt,
        qemu_version=qemu,
    )


def lab_host(name: str, prefix: str) -> HostFacts:
    libvirt, qemu = VERSIONS[prefix]
    return host(
        name,
        f"qemu+tls://{name}/system",
        libvirt_version=libvirt,
        hypervisor_version=qemu,
        capabilities=recorded(prefix),
    )


HOST_A = lab_host("hostA", NEW)
HOST_C = lab_host("hostC", OLD)


def guest_xml(machine: str, *, cpu: str = "", devices: str = "") -> str:
    """A lab guest's live XML as libvirt gives it (TCG, the machine type expanded)."""
    return f"""<domain type='qemu'>
  <name>rv</name><uuid>8f1c1e8e-3a43-4f7e-9d7c-2b0e0c7e3b11</uuid>
  <memory unit='KiB'>262144</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='{machine}'>hvm</type></os>
  <features><acpi/></features>{cpu}
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='unix'><source mode='connect' path='/run/rv.sock'/><target port='0'/></serial>
    {devices}
  </devices>
</domain>"""


def vm(xml: str) -> DomainFacts:
    return domain(name="rv", live_xml=xml, summary=parse_domain(xml))


def move(source: HostFacts, destination: HostFacts, xml: str, **changes: object) -> CheckInput:
    return facts(
        source=source,
        destination=destination,
        source_name=source.ref.name,
        destination_name=destination.ref.name,
        domain=vm(xml),
        disks=(),  # a diskless lab guest: nothing but versions may stand in the way
        **changes,
    )


def test_capabilities_resolve_aliases_and_families() -> None:
    old, new = recorded(OLD), recorded(NEW)
    assert old.canonical_machine("x86_64", "pc") == "pc-i440fx-7.2"
    assert new.canonical_machine("x86_64", "q35") == "pc-q35-10.0"
    assert old.canonical_machine("x86_64", "pc-i440fx-10.0") is None
    assert new.canonical_machine("x86_64", "pc-i440fx-7.2") == "pc-i440fx-7.2"
    assert old.newest_machine("x86_64", "pc-q35") == "pc-q35-7.2"
    assert new.newest_machine("x86_64", "pc-i440fx") == "pc-i440fx-10.0"
    # The README's counts: 53 custom-mode CPU models on the older, 145 on the newer.
    assert {o.virt_type: len(o.cpu_models) for o in old.offers} == {"kvm": 53, "qemu": 53}
    assert {o.virt_type: len(o.cpu_models) for o in new.offers} == {"kvm": 145, "qemu": 145}


def test_newer_machine_type_is_refused_for_the_older_qemu_by_name() -> None:
    found = check_machine(move(HOST_A, HOST_C, guest_xml("pc-i440fx-10.0")))
    machine = only(found, "machine.available")
    assert machine.verdict is Verdict.FAIL
    assert machine.summary.startswith("pc-i440fx-10.0 is unknown to hostC's QEMU 7.2.22")
    assert "vmigrate cold rv --from hostA --to hostC --adapt" in machine.fix
    assert "pc-i440fx-7.2" in machine.fix  # what --adapt makes of it: hostC's newest i440fx
    assert machine.evidence["destination_newest_of_family"] == "pc-i440fx-7.2"


def test_older_machine_type_runs_on_the_newer_qemu() -> None:
    found = check_machine(move(HOST_C, HOST_A, guest_xml("pc-i440fx-7.2")))
    assert only(found, "machine.available").verdict is Verdict.PASS


def test_an_alias_means_what_it_means_on_the_source() -> None:
    # 'pc' on hostA is pc-i440fx-10.0: hostC's own 'pc' alias does not make it runnable there.
    found = only(check_machine(move(HOST_A, HOST_C, guest_xml("pc"))), "machine.available")
    assert found.verdict is Verdict.FAIL
    assert "pc-i440fx-10.0 ('pc' on hostA) is unknown to hostC" in found.summary
    back = only(check_machine(move(HOST_C, HOST_A, guest_xml("pc"))), "machine.available")
    assert back.verdict is Verdict.PASS


def test_newer_to_older_is_a_warning_when_the_machine_type_is_known() -> None:
    # A VM still on pc-i440fx-7.2 started on the upgraded host may go back: best effort.
    checked = move(HOST_A, HOST_C, guest_xml("pc-i440fx-7.2"))
    qemu = only(check_versions(checked), "versions.qemu")
    assert qemu.verdict is Verdict.WARN and "best-effort" in qemu.summary
    assert only(check_machine(checked), "machine.available").verdict is Verdict.PASS
    # A stable update apart (10.0.2 -> 10.0.1) is no release apart.
    stable = replace(HOST_C, hypervisor_version=10_000_001, capabilities=HOST_A.capabilities)
    patch = only(check_versions(replace(checked, destination=stable)), "versions.qemu")
    assert patch.verdict is Verdict.PASS
    # Cold, the QEMU versions do not matter at all.
    cold = replace(checked, mode=Mode.COLD)
    assert only(check_versions(cold), "versions.qemu").verdict is Verdict.PASS


def test_devices_the_destination_does_not_offer() -> None:
    # Debian's QEMU 10.0 has no SPICE and no QXL; Debian 12's QEMU 7.2 has both.
    spice = (
        "<disk type='file' device='cdrom'><target dev='sda' bus='sata'/></disk>"
        "<graphics type='spice' autoport='yes'/><video><model type='qxl'/></video>"
    )
    found = only(
        check_devices_offered(move(HOST_C, HOST_A, guest_xml("pc-i440fx-7.2", devices=spice))),
        "machine.devices",
    )
    assert found.verdict is Verdict.FAIL
    assert found.evidence["unsupported"] == ["graphics type 'spice'", "video modelType 'qxl'"]
    assert found.evidence["compared"] == 4  # the cdrom's device and bus are offered
    assert "--adapt" in found.fix
    # libvirt 9.0 does not report interface backends: unknown there, so not held against it.
    passt = "<interface type='user'><backend type='passt'/><model type='virtio'/></interface>"
    quiet = check_devices_offered(move(HOST_A, HOST_C, guest_xml("pc-i440fx-7.2", devices=passt)))
    assert only(quiet, "machine.devices").verdict is Verdict.PASS
    plain = check_devices_offered(move(HOST_C, HOST_A, guest_xml("pc-i440fx-7.2")))
    assert only(plain, "machine.devices").verdict is Verdict.PASS


def test_a_cpu_model_the_older_qemu_does_not_know() -> None:
    # libvirt could not compare (hostC refuses the machine type), so the domain capabilities
    # read with hostC's facts decide.
    cpu = (
        "<cpu mode='custom' match='exact'><model fallback='forbid'>Skylake-Client-v4</model></cpu>"
    )
    offer = HOST_C.capabilities.offer("x86_64", "qemu") if HOST_C.capabilities else None
    assert offer is not None
    found = check_cpu(
        CpuFacts(
            domain_xml=guest_xml("pc-i440fx-10.0", cpu=cpu),
            source_domcaps_xml=(DATA / f"{NEW}-domcaps-tcg.xml").read_text(),
            destination_domcaps_xml=offer.xml,
            libvirt_compare="error",
        )
    )
    compatible = only(found, "cpu.compatible")
    assert compatible.verdict is Verdict.FAIL
    assert "does not know CPU model Skylake-Client-v4" in compatible.summary


def blockers(found: list[Finding]) -> tuple[str, ...]:
    return _verdict("rv", "target", found).blockers


@pytest.mark.parametrize("machine", ["pc-i440fx-10.0", "pc-q35-10.0"])
def test_fleet_pair_verdicts_hold_the_same_findings(machine: str) -> None:
    """The planner's pair verdict is made of the very findings `check` prints: a VM on a
    10.0 machine type is refused for hostC, a 7.2 one is taken by hostA."""
    refused = blockers(pair_findings(move(HOST_A, HOST_C, guest_xml(machine))))
    assert any(b.startswith(f"machine.available: {machine} is unknown to hostC") for b in refused)
    assert len(refused) == 1, refused
    accepted = blockers(pair_findings(move(HOST_C, HOST_A, guest_xml("pc-i440fx-7.2"))))
    assert accepted == ()
