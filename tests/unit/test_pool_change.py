"""Disks that change their kind of pool on a cold move (--pool-map LOCAL:RBD and RBD:LOCAL):
who copies, how each host opens the disk, what is refused before anything changes (pure,
on pool XML recorded from the lab)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from vmigrate.cold.plan import ColdPlan, destination_for
from vmigrate.cold.pool_change import (
    ExportSource,
    image_name_for,
    plan_export,
    plan_import,
    pool_change_needs,
    refuse_clashes,
)
from vmigrate.domxml.disks import (
    file_disk_xml,
    helper_domain_xml,
    helper_domain_xml_for,
    helper_targets,
    rbd_disk_xml,
    uncached_disk_xml,
)
from vmigrate.domxml.domain import parse_domain
from vmigrate.domxml.rewrite import Rewrite, rewrite_for_destination
from vmigrate.errors import UsageError
from vmigrate.facts import HostFacts, NetworkFacts, PoolFacts, SecretFacts, VolumeInfo
from vmigrate.hosts import HostRef
from vmigrate.network_pools import same_ceph_pool

GIB = 1 << 30
RBD_XML = (Path(__file__).parent / "data" / "pools" / "rbd.xml").read_text()
SECRET = "c93c047b-b59f-50db-b966-0a900c2110eb"
IMAGES = "/var/lib/libvirt/images"
POOLS = (
    PoolFacts("local", "dir", IMAGES, True, 100 * GIB, 0, 50 * GIB),
    PoolFacts("rbd", "rbd", None, True, 4 * GIB, 0, 4 * GIB),
)


def _host(name: str, *, secrets: bool = True, pools: tuple[PoolFacts, ...] = POOLS) -> HostFacts:
    return HostFacts(
        ref=HostRef(name, f"qemu+tls://{name}/system"),
        hostname=name,
        host_uuid=name,
        libvirt_version=11_003_000,
        hypervisor_type="QEMU",
        hypervisor_version=10_000_002,
        arch="x86_64",
        cpus=4,
        memory_free_bytes=1 << 33,
        memory_available_bytes=1 << 33,
        rtt_ms=0.2,
        pools=pools,
        networks=(NetworkFacts("default", True, "virbr0", ()),),
        host_interfaces=(),
        domains={},
        secrets=(SecretFacts(SECRET, "ceph", "client.libvirt secret", None),) if secrets else (),
    )


FACTS = (_host("hostA"), _host("hostB"))
BOTH_RBD = {"source": {"rbd": RBD_XML}, "destination": {"rbd": RBD_XML}}


def _chain(raw: bool = False) -> list[VolumeInfo]:
    if raw:
        return [VolumeInfo(f"{IMAGES}/vm-vda.img", "vm-vda.img", "local", IMAGES, "raw",
                           GIB, 16 << 20, GIB, None)]  # fmt: skip
    return [
        VolumeInfo(f"{IMAGES}/vm-vda.qcow2", "vm-vda.qcow2", "local", IMAGES, "qcow2", GIB,
                   20 << 20, 21 << 20, f"{IMAGES}/vm-base.img"),
        VolumeInfo(f"{IMAGES}/vm-base.img", "vm-base.img", "local", IMAGES, "raw", GIB,
                   1 << 20, GIB, None),
    ]  # fmt: skip


def test_rbd_disk_names_the_pools_monitors_user_and_secret() -> None:
    disk = ET.fromstring(rbd_disk_xml(RBD_XML, "vm-vda"))
    source = disk.find("source")
    assert disk.get("type") == "network" and source is not None
    assert (source.get("protocol"), source.get("name")) == ("rbd", "vmigrate/vm-vda")
    host = source.find("host")
    assert host is not None and host.attrib == {"name": "127.0.0.21", "port": "6789"}
    auth = source.find("auth")
    assert auth is not None and auth.get("username") == "libvirt"
    secret = auth.find("secret")
    assert secret is not None and secret.attrib == {"type": "ceph", "uuid": SECRET}
    driver = disk.find("driver")
    assert driver is not None and driver.get("type") == "raw"


def test_same_ceph_pool_needs_the_pool_name_and_a_monitor_in_common() -> None:
    assert same_ceph_pool(RBD_XML, RBD_XML)
    other_pool = RBD_XML.replace("<name>vmigrate</name>", "<name>volumes</name>")
    other_cluster = RBD_XML.replace("127.0.0.21", "127.0.0.99")
    no_monitor = RBD_XML.replace("<host name='127.0.0.21' port='6789'/>", "")
    assert not same_ceph_pool(RBD_XML, other_pool)
    assert not same_ceph_pool(RBD_XML, other_cluster)
    assert same_ceph_pool(RBD_XML, no_monitor)  # ceph.conf's monitors: no verdict
    directory = "<pool type='dir'><name>local</name><target><path>/x</path></target></pool>"
    assert not same_ceph_pool(RBD_XML, directory)


def test_helper_domain_holds_only_the_disk_and_never_boots() -> None:
    xml = helper_domain_xml("vmigrate-7-vda-copy", file_disk_xml("/images/a.qcow2", "qcow2"))
    summary = parse_domain(xml)
    assert [d.target for d in summary.disks] == ["vda"]
    assert summary.disks[0].path == "/images/a.qcow2" and summary.disks[0].format == "qcow2"
    assert not summary.interfaces
    root = ET.fromstring(xml)
    assert root.find("os/kernel") is None and root.find("devices/interface") is None
    # libvirt gives the copy's target this disk's discard mode: zeros stay holes.
    driver = root.find("devices/disk/driver")
    assert driver is not None and driver.get("discard") == "unmap"
    assert (
        ET.fromstring(helper_domain_xml("h", file_disk_xml("/a", "raw"), "kvm")).get("type")
        == "kvm"
    )


def test_one_helper_holds_every_disk_of_the_move_in_order() -> None:
    """One helper per host for all the disks: each its own device, the images as given."""
    disks = (
        file_disk_xml("/images/a.qcow2", "qcow2"),
        uncached_disk_xml(rbd_disk_xml(RBD_XML, "b")),
    )
    xml = helper_domain_xml_for("h", tuple(zip(helper_targets(2), disks, strict=True)))
    summary = parse_domain(xml)
    assert [d.target for d in summary.disks] == ["vda", "vdb"]
    assert summary.disks[0].path == "/images/a.qcow2"
    assert summary.disks[1].network is not None and summary.disks[1].network.name == "vmigrate/b"
    drivers = ET.fromstring(xml).findall("devices/disk/driver")
    assert [d.get("discard") for d in drivers] == ["unmap", "unmap"]
    # An image opened before another host writes it caches nothing it could read stale.
    assert [d.get("cache") for d in drivers] == [None, "none"]
    assert helper_targets(28)[-3:] == ("vdz", "vdaa", "vdab")


def test_import_of_a_qcow2_chain_is_written_by_the_source_and_read_back_by_each_side() -> None:
    change = plan_import("vda", _chain(), "rbd", facts=FACTS, rbd_pool_xml=BOTH_RBD)
    assert change.kind == "import" and change.writer == "source"
    assert change.image == "vm-vda" and change.destination == "vmigrate/vm-vda"
    assert change.create_pool == "rbd" and change.capacity == GIB
    assert change.allocation == (20 << 20) + (1 << 20)  # the whole chain's data
    # A qcow2 chain has no raw bytes to hash as they are: each side reads into raw.
    assert change.original_file is None and change.source_scratch_pool == "local"
    assert change.new_file is None and change.destination_scratch_pool == "local"
    assert ET.fromstring(change.read_xml).find("source").get("file") == f"{IMAGES}/vm-vda.qcow2"  # type: ignore[union-attr]
    assert "vmigrate/vm-vda" in change.write_xml and "vmigrate/vm-vda" in change.new_xml
    # The new image in Ceph, and the destination's raw read of it, one disk at a time.
    assert pool_change_needs((change,)) == {"rbd": change.allocation, "local": change.allocation}
    assert "rbd image vmigrate/vm-vda" in change.describe()


def test_import_of_a_standalone_raw_file_hashes_it_as_it_is() -> None:
    change = plan_import("vda", _chain(raw=True), "rbd", facts=FACTS, rbd_pool_xml=BOTH_RBD)
    assert change.original_file == f"{IMAGES}/vm-vda.img"
    assert change.source_scratch_pool is None
    assert image_name_for(f"{IMAGES}/vm-vda.img") == "vm-vda"


def test_import_needs_an_rbd_pool_on_the_same_ceph_pool_at_the_source() -> None:
    elsewhere = RBD_XML.replace("<name>vmigrate</name>", "<name>volumes</name>")
    for source_pools in ({}, {"rbd": elsewhere}):
        with pytest.raises(UsageError) as caught:
            plan_import(
                "vda",
                _chain(),
                "rbd",
                facts=FACTS,
                rbd_pool_xml={"source": source_pools, "destination": {"rbd": RBD_XML}},
            )
        assert caught.value.host == "hostA" and "source's QEMU writes" in caught.value.message
        assert "define and start an rbd pool on hostA" in (caught.value.fix or "")


def test_import_never_overwrites_an_image() -> None:
    with pytest.raises(UsageError, match="already holds an image 'vm-vda'") as caught:
        plan_import(
            "vda",
            _chain(),
            "rbd",
            facts=FACTS,
            rbd_pool_xml=BOTH_RBD,
            taken_images=frozenset({"vm-vda"}),
        )
    assert "virsh vol-delete --pool rbd vm-vda" in (caught.value.fix or "")


@pytest.mark.parametrize("side", [0, 1])
def test_a_side_without_the_cephx_secret_is_refused_before_anything_moves(side: int) -> None:
    facts = list(FACTS)
    facts[side] = _host(facts[side].ref.name, secrets=False)
    with pytest.raises(UsageError) as caught:
        plan_import("vda", _chain(), "rbd", facts=(facts[0], facts[1]), rbd_pool_xml=BOTH_RBD)
    assert SECRET in caught.value.message and caught.value.host == facts[side].ref.name
    assert "secret-define" in (caught.value.fix or "")
    assert "secret-set-value" in (caught.value.fix or "")


def test_no_directory_pool_with_room_for_the_read_back_is_refused() -> None:
    full = (
        PoolFacts("local", "dir", IMAGES, True, 100 * GIB, 0, 1 << 20),
        PoolFacts("rbd", "rbd", None, True, 4 * GIB, 0, 4 * GIB),
    )
    with pytest.raises(UsageError, match="hostB needs a directory pool with 21 MiB free"):
        plan_import(
            "vda",
            _chain(),
            "rbd",
            facts=(FACTS[0], _host("hostB", pools=full)),
            rbd_pool_xml=BOTH_RBD,
        )


def _export_source(destination_pool: str | None = "rbd") -> ExportSource:
    return ExportSource("vda", "vm-vda", "rbd", destination_pool, GIB, 16 << 20)


def test_export_is_written_by_the_destination_into_a_raw_file() -> None:
    change = plan_export(_export_source(), "local", facts=FACTS, rbd_pool_xml=BOTH_RBD)
    assert change.kind == "export" and change.writer == "destination"
    assert change.destination == f"{IMAGES}/vm-vda.img" == change.new_file
    assert change.source == "vmigrate/vm-vda" and change.create_pool == "local"
    assert change.source_scratch_pool == "local" and change.destination_scratch_pool is None
    assert "vmigrate/vm-vda" in change.read_xml and "vmigrate/vm-vda" in change.original_xml
    assert ET.fromstring(change.write_xml).get("type") == "file"


def test_export_needs_a_directory_pool_and_an_rbd_pool_at_the_destination() -> None:
    with pytest.raises(UsageError, match="is rbd, not a directory pool"):
        plan_export(_export_source(), "rbd", facts=FACTS, rbd_pool_xml=BOTH_RBD)
    with pytest.raises(UsageError, match="hostB has no active rbd pool that holds image"):
        plan_export(_export_source(None), "local", facts=FACTS, rbd_pool_xml=BOTH_RBD)


DOMAIN = f"""<domain type='kvm'><name>vm</name><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>
<source file='{IMAGES}/vm-vda.qcow2'/>
<backingStore type='file'><format type='raw'/><source file='{IMAGES}/vm-base.img'/></backingStore>
<target dev='vda' bus='virtio'/><address type='pci' slot='0x04'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='{IMAGES}/vm-vdb.qcow2'/><target dev='vdb' bus='virtio'/></disk>
</devices></domain>"""


def test_the_destination_domain_opens_the_new_disk_and_keeps_the_rest() -> None:
    change = plan_import("vda", _chain(), "rbd", facts=FACTS, rbd_pool_xml=BOTH_RBD)
    result = rewrite_for_destination(DOMAIN, Rewrite(disk_sources={"vda": change.new_xml}))
    disks = {d.target: d for d in parse_domain(result.xml).disks}
    vda = disks["vda"]
    assert vda.source_type == "network" and vda.network is not None
    assert vda.network.name == "vmigrate/vm-vda" and vda.network.secret_uuid == SECRET
    assert vda.format == "raw" and vda.cache == "none" and not vda.backing_chain
    assert "slot='0x04'" in result.xml.replace('"', "'")
    assert disks["vdb"].path == f"{IMAGES}/vm-vdb.qcow2"  # not mapped: untouched
    assert result.changes == (f"vda: {IMAGES}/vm-vda.qcow2 -> rbd vmigrate/vm-vda",)

    back = plan_export(_export_source(), "local", facts=FACTS, rbd_pool_xml=BOTH_RBD)
    again = rewrite_for_destination(result.xml, Rewrite(disk_sources={"vda": back.new_xml}))
    vda = next(d for d in parse_domain(again.xml).disks if d.target == "vda")
    assert vda.source_type == "file" and vda.path == f"{IMAGES}/vm-vda.img"
    assert vda.format == "raw" and vda.network is None and "auth" not in again.xml


def test_two_disks_never_become_one() -> None:
    first = plan_import("vda", _chain(), "rbd", facts=FACTS, rbd_pool_xml=BOTH_RBD)
    other = [replace(v, path=v.path.replace(IMAGES, "/srv/b")) for v in _chain()]
    second = plan_import("vdb", other, "rbd", facts=FACTS, rbd_pool_xml=BOTH_RBD)
    assert first.destination == second.destination == "vmigrate/vm-vda"
    with pytest.raises(UsageError, match="vdb and vda would both become vmigrate/vm-vda"):
        refuse_clashes((first, second))
    exported = plan_export(_export_source(), "local", facts=FACTS, rbd_pool_xml=BOTH_RBD)
    with pytest.raises(UsageError, match="vda and another disk's copy would both become"):
        refuse_clashes((exported,), frozenset({f"{IMAGES}/vm-vda.img"}))
    refuse_clashes((first, exported), frozenset({f"{IMAGES}/other.qcow2"}))


def test_plan_with_pool_changes_round_trips_through_the_job_store_format() -> None:
    change = plan_import("vda", _chain(), "rbd", facts=FACTS, rbd_pool_xml=BOTH_RBD)
    plan = ColdPlan(
        "vm", "running", True, False, True, (), (), "<domain/>", "<domain/>", (),
        pool_changes=(change, replace(change, target="vdb")),
    )  # fmt: skip
    assert ColdPlan.from_dict(plan.to_dict()) == plan


def test_a_backing_file_is_never_sent_alone_into_an_rbd_pool() -> None:
    base = _chain()[1]
    with pytest.raises(UsageError, match="only a VM's own disk files go into such a pool"):
        destination_for(base, POOLS, pool_map={"local": "rbd"}, path_map={})
