"""Network disks (rbd, iscsi, nfs, gluster): shared by nature, and what can still fail on
the destination: the secret, the servers, the cache mode."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from vmigrate.checks.context import CheckInput, NetworkDiskView, PortProbe
from vmigrate.checks.network_disks import server_endpoints
from vmigrate.checks.storage import check_storage
from vmigrate.domxml.domain import parse_domain
from vmigrate.facts import NetworkVolume, SecretFacts
from vmigrate.model import Mode, Verdict
from vmigrate.volume_probe import VolumeRead, volume_url

from .test_checks import domain, facts, host, only

XML = (Path(__file__).parent / "data" / "domains" / "network-disks.xml").read_text()
CEPH = "1f4f0b8e-9d3c-4c55-8a55-6f2a3f1c2b77"


def _secret(value: str | None = "a" * 64, uuid: str = CEPH) -> SecretFacts:
    return SecretFacts(uuid, "ceph", "client.libvirt secret", value)


def _input(
    src_secrets: tuple[SecretFacts, ...] | None = (),
    dst_secrets: tuple[SecretFacts, ...] | None = (),
    **changes: object,
) -> CheckInput:
    summary = parse_domain(XML)
    return facts(
        domain=domain(live_xml=XML, summary=summary),
        disks=(),
        source=host("kvm1", "qemu+tls://kvm1/system", secrets=src_secrets),
        destination=host("kvm2", "qemu+tls://kvm2/system", secrets=dst_secrets),
        **changes,
    )


def test_network_sources_are_read_with_their_servers_and_secrets() -> None:
    disks = {d.target: d.network for d in parse_domain(XML).disks}
    rbd, iscsi, nfs, gluster = disks["vda"], disks["vdb"], disks["vdc"], disks["vdd"]
    assert rbd is not None and rbd.protocol == "rbd" and rbd.name == "vmigrate/netdisks-vda"
    assert rbd.secret_uuid == CEPH and rbd.secret_type == "ceph" and rbd.username == "libvirt"
    assert iscsi is not None and server_endpoints(iscsi) == (("127.0.0.21", 3260),)
    assert nfs is not None and server_endpoints(nfs) == (("127.0.0.22", 2049),)  # default
    # <auth> beside <source>, named by usage (the older layout libvirt still accepts)
    assert gluster is not None and gluster.secret_usage == "libvirtiscsi"


def test_each_network_disk_is_shared_and_named() -> None:
    found = check_storage(_input(dst_secrets=(_secret(),), src_secrets=(_secret(),)))
    rbd = only(found, "storage.shared", "vda")
    assert rbd.verdict is Verdict.PASS and "rbd network disk vmigrate/netdisks-vda" in rbd.summary
    assert rbd.evidence["placement"] == "network" and "nothing is copied" in rbd.summary
    gluster = only(found, "storage.shared", "vdd")
    assert gluster.verdict is Verdict.WARN and "deprecated" in gluster.summary


def test_a_secret_missing_on_the_destination_fails_with_the_fix() -> None:
    found = check_storage(_input(src_secrets=(_secret(),), dst_secrets=()))
    secret = only(found, "storage.secret", "vda")
    assert secret.verdict is Verdict.FAIL and CEPH in secret.summary
    assert "virsh secret-define" in secret.fix and f"secret-set-value {CEPH}" in secret.fix


def test_a_secret_is_compared_by_digest_or_said_unverifiable() -> None:
    same = check_storage(_input(src_secrets=(_secret(),), dst_secrets=(_secret(),)))
    assert only(same, "storage.secret", "vda").verdict is Verdict.PASS
    other = check_storage(_input(src_secrets=(_secret(),), dst_secrets=(_secret("b" * 64),)))
    assert "ANOTHER value" in only(other, "storage.secret", "vda").summary
    private = check_storage(_input(src_secrets=(_secret(None),), dst_secrets=(_secret(None),)))
    said = only(private, "storage.secret", "vda")
    assert said.verdict is Verdict.PASS and "was not verified" in said.summary
    no_driver = only(check_storage(_input(dst_secrets=None)), "storage.secret", "vda")
    assert no_driver.verdict is Verdict.FAIL
    assert "libvirt-daemon-driver-secret" in no_driver.fix


def test_servers_are_probed_only_where_the_destination_runs() -> None:
    far = check_storage(_input())
    assert only(far, "storage.servers", "vdb").verdict is Verdict.SKIPPED
    blocked = _input(
        destination_probes_representative=True,
        storage_servers=(
            PortProbe("127.0.0.21", 3260, "filtered", 1.5),
            PortProbe("127.0.0.20", 6789, "open", 0.001),
        ),
    )
    found = check_storage(blocked)
    portal = only(found, "storage.servers", "vdb")
    assert portal.verdict is Verdict.FAIL and "127.0.0.21:3260 (filtered)" in portal.summary
    assert only(found, "storage.servers", "vda").verdict is Verdict.PASS


def test_cache_modes_libvirt_refuses_on_network_disks() -> None:
    found = check_storage(_input(src_secrets=(_secret(),), dst_secrets=(_secret(),)))
    iscsi = only(found, "storage.cache", "vdb")
    assert iscsi.verdict is Verdict.FAIL and "cache='writeback'" in iscsi.summary
    assert not [f for f in found if f.check == "storage.cache" and f.subject == "vda"]  # rbd
    cold = check_storage(replace(_input(), mode=Mode.COLD))
    assert not [f for f in cold if f.check == "storage.cache"]


def _views(
    **by_target: tuple[NetworkVolume | None, NetworkVolume | None],
) -> tuple[NetworkDiskView, ...]:
    return tuple(NetworkDiskView(t, here, there) for t, (here, there) in by_target.items())


GIB = 1 << 30


def test_the_destination_sees_the_same_volume_through_its_own_pool() -> None:
    here = NetworkVolume("rbd", "netdisks-vda", GIB, CEPH, ("rbd",))
    views = _views(vda=(here, here))
    found = check_storage(
        _input(src_secrets=(_secret(None),), dst_secrets=(_secret(None),), network_disks=views)
    )
    volume = only(found, "storage.volume", "vda")
    assert volume.verdict is Verdict.PASS and "through its own pool 'rbd'" in volume.summary
    assert "the same size as on kvm1" in volume.summary
    # The destination's pool authenticates with the disk's secret and listed the volume:
    # the key is proven there, though its value cannot be read back.
    secret = only(found, "storage.secret", "vda")
    assert secret.verdict is Verdict.PASS and "the key works there" in secret.summary
    # A pool that names the secret by its usage proves the key just the same.
    by_usage = replace(here, pool_secret_uuid=None, pool_secret_usage="client.libvirt secret")
    found = check_storage(
        _input(
            src_secrets=(_secret(None),),
            dst_secrets=(_secret(None),),
            network_disks=_views(vda=(here, by_usage)),
        )
    )
    assert "the key works there" in only(found, "storage.secret", "vda").summary
    # Usage names are unique per secret type only: an iSCSI secret of that name proves nothing.
    iscsi_kind = SecretFacts(CEPH, "iscsi", "client.libvirt secret", None)
    found = check_storage(
        _input(
            src_secrets=(_secret(None),),
            dst_secrets=(iscsi_kind,),
            network_disks=_views(vda=(here, by_usage)),
        )
    )
    assert "was not verified" in only(found, "storage.secret", "vda").summary
    elsewhere = replace(by_usage, pool_secret_usage="client.other secret")
    found = check_storage(
        _input(
            src_secrets=(_secret(None),),
            dst_secrets=(_secret(None),),
            network_disks=_views(vda=(here, elsewhere)),
        )
    )
    assert "was not verified" in only(found, "storage.secret", "vda").summary


def test_another_size_fails_and_a_volume_the_pool_does_not_list_warns() -> None:
    here = NetworkVolume("rbd", "netdisks-vda", GIB, CEPH, ("rbd",))
    smaller = NetworkVolume("ceph", "netdisks-vda", GIB // 2, CEPH, ("ceph",))
    other = only(
        check_storage(_input(network_disks=_views(vda=(here, smaller)))), "storage.volume", "vda"
    )
    assert other.verdict is Verdict.FAIL and "not the same volume" in other.summary
    absent = NetworkVolume(None, None, None, None, ("ceph",))
    missing = only(
        check_storage(_input(network_disks=_views(vda=(here, absent)))), "storage.volume", "vda"
    )
    assert missing.verdict is Verdict.WARN and "does not list that volume" in missing.summary
    assert "virsh pool-refresh ceph" in missing.fix


def test_no_pool_on_the_destination_is_said_unverified() -> None:
    nothing = NetworkVolume(None, None, None, None, ())
    found = check_storage(
        _input(network_disks=_views(vda=(nothing, nothing), vdc=(nothing, nothing)))
    )
    rbd = only(found, "storage.volume", "vda")
    assert rbd.verdict is Verdict.WARN and "was not verified" in rbd.summary
    assert "virsh pool-define" in rbd.fix
    nfs = only(found, "storage.volume", "vdc")  # libvirt reaches NFS only by a kernel mount
    assert nfs.verdict is Verdict.SKIPPED and "libnfs" in nfs.summary
    unlisted = NetworkVolume(None, None, None, CEPH, ("rbd",), error="timed out")
    said = only(
        check_storage(_input(network_disks=_views(vda=(nothing, unlisted)))),
        "storage.volume",
        "vda",
    )
    assert said.verdict is Verdict.WARN and "could not be listed: timed out" in said.summary


def test_a_read_from_the_destination_confirms_or_fails_the_volume() -> None:
    here = NetworkVolume("iscsi", "unit:0:0:1", GIB, None, ("iscsi",))
    read = VolumeRead("iscsi://127.0.0.21:3260/iqn.2026-12.lab.vmigrate:store/1", GIB, None, 0.1)
    # libvirt's iscsi-direct pool lists one block less than the LUN holds (measured).
    listed = replace(here, capacity=GIB - 512)
    views = (NetworkDiskView("vdb", listed, listed, read),)
    ok = only(check_storage(_input(network_disks=views)), "storage.volume", "vdb")
    assert (
        ok.verdict is Verdict.PASS and "read from here as kvm2's QEMU will: 1.00 GiB" in ok.summary
    )
    halved = replace(here, capacity=GIB // 2)
    views = (NetworkDiskView("vdb", halved, halved, read),)
    other = only(check_storage(_input(network_disks=views)), "storage.volume", "vdb")
    assert other.verdict is Verdict.FAIL and "not the same volume" in other.summary
    failed = replace(read, size=None, error="iSCSI: Failed to connect to LUN")
    views = (NetworkDiskView("vdb", here, here, failed),)
    bad = only(check_storage(_input(network_disks=views)), "storage.volume", "vdb")
    assert bad.verdict is Verdict.WARN and "Failed to connect to LUN" in bad.summary
    # NFS has no pool: the read alone proves the destination sees the file.
    nothing = NetworkVolume(None, None, None, None, ())
    nfs_read = VolumeRead("nfs://127.0.0.22/export/netdisks-vdc.qcow2", GIB, None, 0.1)
    views = (NetworkDiskView("vdc", nothing, nothing, nfs_read),)
    nfs = only(check_storage(_input(network_disks=views)), "storage.volume", "vdc")
    assert nfs.verdict is Verdict.PASS and "no pool needed" in nfs.summary


def test_volume_urls_are_the_ones_qemu_opens() -> None:
    disks = {d.target: d.network for d in parse_domain(XML).disks}
    iscsi, nfs, rbd = disks["vdb"], disks["vdc"], disks["vda"]
    assert iscsi is not None and nfs is not None and rbd is not None
    assert volume_url(iscsi) == f"iscsi://127.0.0.21:3260/{iscsi.name}"
    assert volume_url(nfs) == f"nfs://127.0.0.22/{(nfs.name or '').lstrip('/')}"
    assert volume_url(rbd) is None  # needs a cephx key
