"""The pure checks, over domain XML with every blocker and hand-made host facts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from vmigrate.checks.connectivity import check_connectivity
from vmigrate.checks.context import CheckInput, DiskStorage, PortProbe
from vmigrate.checks.devices import check_conflicts, check_devices, check_networks
from vmigrate.checks.encryption import check_encryption
from vmigrate.checks.resources import check_resources
from vmigrate.checks.storage import check_storage
from vmigrate.checks.versions import check_machine, check_versions
from vmigrate.domxml.domain import parse_domain
from vmigrate.facts import (
    DomainFacts,
    HostFacts,
    NetworkFacts,
    PoolFacts,
    ShareProbe,
    VolumeLocation,
    available_memory_bytes,
)
from vmigrate.hosts import HostRef
from vmigrate.model import Finding, Mode, Verdict

BLOCKERS = (Path(__file__).parent / "data" / "domains" / "blockers.xml").read_text()
GIB = 1 << 30


def host(name: str, uri: str, **changes: object) -> HostFacts:
    facts = HostFacts(
        ref=HostRef(name, uri),
        hostname=name,
        host_uuid=f"uuid-of-{name}",
        libvirt_version=11_003_000,
        hypervisor_type="QEMU",
        hypervisor_version=10_000_002,
        arch="x86_64",
        cpus=16,
        memory_free_bytes=64 * GIB,
        memory_available_bytes=64 * GIB,
        rtt_ms=0.4,
        pools=(
            PoolFacts("default", "dir", "/var/lib/libvirt/images", True, 100 * GIB, 0, 100 * GIB),
        ),
        networks=(NetworkFacts("prod", True, "virbr1", ("vlan42",)),),
        host_interfaces=("br-storage", "eth0"),
        domains={},
    )
    return replace(facts, **changes)  # type: ignore[arg-type]


def domain(state: str = "running", **changes: object) -> DomainFacts:
    facts = DomainFacts(
        name="db1",
        state=state,
        persistent=True,
        live_xml=BLOCKERS,
        summary=parse_domain(BLOCKERS),
        snapshots=0,
        managed_save=False,
        block_jobs=(),
        migratable_error=None,
    )
    return replace(facts, **changes)  # type: ignore[arg-type]


def local_disk(available: int = 100 * GIB) -> DiskStorage:
    return DiskStorage(
        target="vda",
        source_location=VolumeLocation(
            "default", "dir", "/var/lib/libvirt/images", 40 * GIB, 12 * GIB
        ),
        share_probe=ShareProbe(
            False,
            None,
            "a probe written through pool 'default' is not visible in any pool of the destination",
        ),
        exists_on_destination=False,
        destination_pool_for_copy="default",
        destination_available=available,
    )


def facts(**changes: object) -> CheckInput:
    base = CheckInput(
        mode=Mode.LIVE,
        copy_storage=False,
        source_name="kvm1",
        destination_name="kvm2",
        source=host("kvm1", "qemu+tls://kvm1/system"),
        destination=host("kvm2", "qemu+tls://kvm2/system"),
        source_error=None,
        destination_error=None,
        domain=domain(),
        destination_domcaps="<domainCapabilities/>",
        destination_domcaps_error=None,
        disks=(local_disk(),),
        libvirt_port=PortProbe("kvm2", 16514, "open", 0.001),
        migration_ports=(PortProbe("kvm2", 49152, "refused", 0.001),),
        probes_representative=True,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def only(found: list[Finding], check: str, subject: str | None = None) -> Finding:
    matching = [f for f in found if f.check == check and (subject is None or f.subject == subject)]
    assert len(matching) == 1, found
    return matching[0]


def test_domain_xml_is_read_with_every_device() -> None:
    summary = parse_domain(BLOCKERS)
    assert summary.memory_kib == 4 * 1024 * 1024
    assert summary.vcpus == 8
    assert summary.machine == "pc-q35-10.0"
    assert [d.target for d in summary.disks] == ["vda", "sda", "vdb"]
    assert summary.disks[0].backing_chain == ("/var/lib/libvirt/images/base.qcow2",)
    assert summary.disks[1].readonly and summary.disks[1].device == "cdrom"
    assert summary.disks[2].protocol == "rbd"
    assert [(n.kind, n.source, n.portgroup) for n in summary.interfaces] == [
        ("network", "prod", "vlan42"),
        ("bridge", "br-storage", None),
    ]
    assert [d.kind for d in summary.host_devices] == ["pci", "mdev"]


def test_passthrough_devices_block_live_but_only_warn_cold() -> None:
    live = check_devices(facts())
    assert [f.verdict for f in live if f.check == "devices.passthrough"] == [Verdict.FAIL] * 2
    assert "pci host device" in live[0].summary
    cold = check_devices(facts(mode=Mode.COLD))
    assert {f.verdict for f in cold} == {Verdict.WARN}


def test_unsafe_cache_snapshots_block_jobs_and_migratable_xml() -> None:
    found = check_devices(
        facts(
            domain=domain(snapshots=2, block_jobs=("vda",), migratable_error="unsupported device")
        )
    )
    assert only(found, "devices.disk-cache").subject == "vda"
    assert only(found, "devices.snapshots").verdict is Verdict.WARN
    assert only(found, "devices.block-jobs").verdict is Verdict.FAIL
    assert "unsupported device" in only(found, "devices.migratable").summary


def test_local_disk_needs_copy_storage_and_space() -> None:
    found = check_storage(facts())
    vda = only(found, "storage.shared", "vda")
    assert vda.verdict is Verdict.FAIL and "--copy-storage" in vda.fix
    assert "base.qcow2" in vda.summary  # the backing chain is listed
    copied = check_storage(facts(copy_storage=True))
    assert only(copied, "storage.space", "vda").verdict is Verdict.PASS
    full = check_storage(facts(copy_storage=True, disks=(local_disk(available=5 * GIB),)))
    space = only(full, "storage.space", "vda")
    assert space.verdict is Verdict.FAIL
    assert "needs 12.00 GiB" in space.summary and "5.00 GiB" in space.summary


def test_shared_disk_network_disk_and_missing_iso() -> None:
    shared = replace(local_disk(), share_probe=ShareProbe(True, "default", "read back"))
    found = check_storage(facts(disks=(shared,)))
    assert only(found, "storage.shared", "vda").verdict is Verdict.PASS
    assert only(found, "storage.shared", "vdb").verdict is Verdict.PASS  # rbd
    iso = only(found, "storage.media", "sda")
    assert iso.verdict is Verdict.FAIL and "/srv/iso/debian-12.iso" in iso.summary
    iso_there = DiskStorage("sda", None, None, True, None, None)
    found = check_storage(facts(disks=(shared, iso_there)))
    assert only(found, "storage.media", "sda").verdict is Verdict.PASS


def test_networks_bridges_and_portgroups() -> None:
    assert {f.verdict for f in check_networks(facts())} == {Verdict.PASS}
    bare = host("kvm2", "qemu+tls://kvm2/system", networks=(), host_interfaces=("eth0",))
    found = check_networks(facts(destination=bare))
    assert [f.verdict for f in found] == [Verdict.FAIL, Verdict.FAIL]
    assert "network 'prod' does not exist on kvm2" in found[0].summary
    inactive = host(
        "kvm2",
        "qemu+tls://kvm2/system",
        networks=(NetworkFacts("prod", False, "virbr1", ("vlan42",)),),
    )
    assert "not active" in check_networks(facts(destination=inactive))[0].summary
    no_pg = host(
        "kvm2", "qemu+tls://kvm2/system", networks=(NetworkFacts("prod", True, "virbr1", ()),)
    )
    assert "portgroup 'vlan42'" in check_networks(facts(destination=no_pg))[0].summary
    unknowable = host("kvm2", "qemu+tls://kvm2/system", host_interfaces=None)
    assert check_networks(facts(destination=unknowable))[1].verdict is Verdict.SKIPPED


def test_name_and_uuid_clashes_and_state() -> None:
    by_name = host("kvm2", "qemu+tls://kvm2/system", domains={"db1": "other-uuid"})
    assert (
        only(check_conflicts(facts(destination=by_name)), "conflicts.name").verdict is Verdict.FAIL
    )
    by_uuid = host(
        "kvm2",
        "qemu+tls://kvm2/system",
        domains={"old-db1": "5b1f3c9e-4a7d-4f5e-9a2b-0c1d2e3f4a5b"},
    )
    clash = only(check_conflicts(facts(destination=by_uuid)), "conflicts.name")
    assert "old-db1" in clash.summary
    off = check_conflicts(facts(domain=domain(state="shut off")))
    assert only(off, "state.mode").verdict is Verdict.FAIL
    assert (
        only(
            check_conflicts(facts(domain=domain(state="shut off"), mode=Mode.COLD)), "state.mode"
        ).verdict
        is Verdict.PASS
    )


def test_memory_and_vcpus() -> None:
    small = host(
        "kvm2",
        "qemu+tls://kvm2/system",
        memory_free_bytes=3 * GIB,
        memory_available_bytes=3 * GIB,
        cpus=4,
    )
    found = check_resources(facts(destination=small))
    assert only(found, "resources.memory").verdict is Verdict.FAIL
    assert "8 vCPUs" in only(found, "resources.vcpus").summary


def test_memory_counts_the_page_cache_not_memfree_alone() -> None:
    # Recorded from lab hostB (libvirt getMemoryStats, KiB) with a warm page cache:
    # MemFree is 10 GiB of the 23.5 GiB the kernel would give back.
    stats = {"total": 24_731_184, "free": 10_264_500, "buffers": 188_692, "cached": 13_645_780}
    available = available_memory_bytes(stats)
    assert available == (10_264_500 + 188_692 + 13_645_780) * 1024
    # A VM bigger than MemFree that fits in what the host can really give.
    warm = host(
        "kvm2",
        "qemu+tls://kvm2/system",
        memory_free_bytes=stats["free"] * 1024,
        memory_available_bytes=available,
    )
    big = domain(summary=replace(parse_domain(BLOCKERS), memory_kib=16 * 1024 * 1024))
    memory = only(check_resources(facts(destination=warm, domain=big)), "resources.memory")
    assert memory.verdict is Verdict.PASS, memory.summary
    # Both figures are in the finding, and the reserve is held back.
    assert "10023 MiB free" in memory.summary
    assert "23534 MiB available" in memory.summary
    assert memory.evidence["destination_can_give"] == available - 512 * (1 << 20)


def test_versions() -> None:
    found = check_versions(facts())
    # 11.3 on the destination: its post-copy resume crashes the daemon (fixed in 11.4).
    assert only(found, "versions.postcopy-resume").verdict is Verdict.WARN
    assert {f.verdict for f in found if f.check != "versions.postcopy-resume"} == {Verdict.PASS}
    fixed = host("kvm3", "qemu+tls://kvm3/system", libvirt_version=11_004_000)
    assert not [
        f for f in check_versions(facts(destination=fixed)) if f.check == "versions.postcopy-resume"
    ]
    old = host("kvm1", "qemu+tls://kvm1/system", libvirt_version=3_009_000)
    assert only(check_versions(facts(source=old)), "versions.libvirt").verdict is Verdict.FAIL
    no_recovery = host("kvm2", "qemu+tls://kvm2/system", libvirt_version=8_000_000)
    assert (
        only(check_versions(facts(destination=no_recovery)), "versions.libvirt").verdict
        is Verdict.WARN
    )
    older_qemu = host("kvm2", "qemu+tls://kvm2/system", hypervisor_version=8_002_000)
    # Newer to older is best effort, not refused from numbers: machine.available decides.
    assert (
        only(check_versions(facts(destination=older_qemu)), "versions.qemu").verdict is Verdict.WARN
    )
    assert (
        only(check_versions(facts(destination=older_qemu, mode=Mode.COLD)), "versions.qemu").verdict
        is Verdict.PASS
    )
    arm = host("kvm2", "qemu+tls://kvm2/system", arch="aarch64")
    assert (
        only(check_versions(facts(destination=arm)), "versions.hypervisor").verdict is Verdict.FAIL
    )


def test_machine_type_missing_on_destination() -> None:
    found = check_machine(
        facts(
            destination_domcaps=None, destination_domcaps_error="machine 'pc-q35-10.0' unsupported"
        )
    )
    assert found[0].verdict is Verdict.FAIL and "pc-q35-10.0" in found[0].summary


def test_connectivity_ports_and_encryption() -> None:
    found = check_connectivity(facts())
    assert {f.verdict for f in found} == {Verdict.PASS}
    dropped = facts(migration_ports=(PortProbe("kvm2", 49152, "filtered", 1.5),))
    ports = only(check_connectivity(dropped), "connectivity.migration-ports")
    assert ports.verdict is Verdict.FAIL and "firewall" in ports.summary
    remote = replace(dropped, probes_representative=False)
    assert (
        only(check_connectivity(remote), "connectivity.migration-ports").verdict is Verdict.SKIPPED
    )
    down = facts(
        destination=None,
        destination_error="port 16514 on kvm2 is filtered",
        libvirt_port=PortProbe("kvm2", 16514, "filtered", 3.0),
    )
    found = check_connectivity(down)
    assert only(found, "connectivity.destination").verdict is Verdict.FAIL
    assert "16514" in only(found, "connectivity.libvirt-port").fix


def _refs(
    src: str = "qemu+ssh://root@kvm1/system",
    dst: str = "qemu+tls://kvm2/system",
    *,
    declared: tuple[bool | None, bool | None] = (True, True),
    requested: bool | None = None,
    mode: Mode = Mode.LIVE,
) -> CheckInput:
    return facts(
        mode=mode,
        source_ref=HostRef("kvm1", src, migration_tls=declared[0]),
        destination_ref=HostRef("kvm2", dst, migration_tls=declared[1]),
        migration_tls_requested=requested,
    )


def test_encryption_reports_the_control_connection_and_the_stream_apart() -> None:
    found = check_encryption(_refs())
    assert {f.verdict for f in found} == {Verdict.PASS}
    assert "SSH" in only(found, "encryption.control-source").summary
    assert "TLS" in only(found, "encryption.control-destination").summary
    stream = only(found, "encryption.migration-stream")
    assert "by default" in stream.summary and stream.evidence["tls"] is True

    plain = check_encryption(_refs(dst="qemu+tcp://kvm2/system", declared=(True, None)))
    control = only(plain, "encryption.control-destination")
    assert control.verdict is Verdict.WARN and "UNENCRYPTED" in control.summary
    stream = only(plain, "encryption.migration-stream")
    assert stream.verdict is Verdict.WARN and "kvm2 declares no QEMU TLS" in stream.summary
    assert "/etc/pki/qemu" in stream.fix

    refused = only(check_encryption(_refs(requested=False)), "encryption.migration-stream")
    assert refused.verdict is Verdict.WARN and "--no-tls" in refused.summary
    forced = only(
        check_encryption(_refs(declared=(None, None), requested=True)),
        "encryption.migration-stream",
    )
    assert forced.verdict is Verdict.PASS and forced.evidence["tls"] is True
    plain_peer = replace(
        _refs(),
        destination_ref=HostRef(
            "kvm2", "qemu+tls://kvm2/system", peer_uri="qemu+tcp://kvm2/system"
        ),
    )
    peer = only(check_encryption(plain_peer), "encryption.control-destination")
    assert peer.verdict is Verdict.WARN and "UNENCRYPTED peer connection" in peer.summary
    direct = only(
        check_encryption(replace(plain_peer, peer_to_peer=False)), "encryption.control-destination"
    )
    assert direct.verdict is Verdict.PASS  # --direct: the source's libvirtd opens no peer URI
    cold = check_encryption(_refs(mode=Mode.COLD))
    assert not [f for f in cold if f.check == "encryption.migration-stream"]


def test_same_host_is_refused() -> None:
    twin = host("kvm2", "qemu+tls://kvm2/system", host_uuid="uuid-of-kvm1")
    clash = only(check_conflicts(facts(destination=twin)), "conflicts.same-host")
    assert clash.verdict is Verdict.FAIL and "host_uuid" in clash.fix


def test_a_vm_busy_with_a_libvirt_job_is_refused() -> None:
    busy = only(
        check_conflicts(facts(domain=domain(active_job="an outgoing migration"))), "state.job"
    )
    assert busy.verdict is Verdict.FAIL and "outgoing migration" in busy.summary
    assert not [f for f in check_conflicts(facts()) if f.check == "state.job"]
