"""The pure plan of --copy-storage: what is mirrored, created, copied first, or refused."""

from __future__ import annotations

import pytest

from vmigrate.domxml.domain import DiskInfo
from vmigrate.errors import UsageError
from vmigrate.facts import PoolFacts, VolumeInfo
from vmigrate.live.storage_plan import StorageCopyPlan, check_room, plan_storage_copy

IMAGES = "/var/lib/libvirt/images"
GIB = 1 << 30
POOLS = (
    PoolFacts("default", "dir", IMAGES, True, 100 * GIB, 10 * GIB, 90 * GIB),
    PoolFacts("nfs", "netfs", "/mnt/nfs", True, 100 * GIB, 0, 100 * GIB),
)


def disk(target: str, path: str | None, **overrides: object) -> DiskInfo:
    values: dict[str, object] = {
        "target": target,
        "device": "disk",
        "source_type": "file",
        "path": path,
        "pool": None,
        "volume": None,
        "protocol": None,
        "format": "qcow2",
        "cache": "none",
        "readonly": False,
        "shareable": False,
        "backing_chain": (),
        **overrides,
    }
    return DiskInfo(**values)  # type: ignore[arg-type]


def volume(path: str, fmt: str = "qcow2", backing: str | None = None) -> VolumeInfo:
    return VolumeInfo(
        path, path.rsplit("/", 1)[1], "default", IMAGES, fmt, GIB, GIB // 4, GIB // 4, backing
    )


VDA = f"{IMAGES}/vm-vda.qcow2"
BASE = f"{IMAGES}/base.img"
VDB = f"{IMAGES}/vm-vdb.qcow2"
SHARED = "/mnt/nfs/vm-vdc.qcow2"
DISKS = [disk("vda", VDA), disk("vdb", VDB), disk("vdc", SHARED)]
PLACEMENT = {"vda": "local", "vdb": "local", "vdc": "shared"}
CHAINS = {"vda": [volume(VDA, backing=BASE), volume(BASE, "raw")], "vdb": [volume(VDB)]}


def plan(
    selection: tuple[str, ...] | None = None, on_destination: frozenset[str] = frozenset()
) -> StorageCopyPlan:
    return plan_storage_copy("vm", DISKS, PLACEMENT, CHAINS, POOLS, on_destination, selection)


def test_local_disks_are_mirrored_on_new_images_and_missing_backing_files_copied_first() -> None:
    result = plan()
    assert result.copied == ("vda", "vdb") and result.shared == ("vdc",)
    vda = result.images[0]
    assert (vda.path, vda.pool, vda.format, vda.capacity) == (VDA, "default", "qcow2", GIB)
    assert (vda.backing_path, vda.backing_format) == (BASE, "raw")
    assert result.images[1].backing_path is None
    assert [b.path for b in result.backing] == [BASE]
    assert result.bytes_needed() == {"default": 3 * (GIB // 4)}


def test_a_backing_file_already_on_the_destination_is_not_copied_but_checked() -> None:
    result = plan(on_destination=frozenset({BASE}))
    assert result.backing == () and result.backing_present == (BASE,)


def test_naming_a_shared_disk_is_a_notice_not_a_copy() -> None:
    result = plan(("vda", "vdb", "vdc"))
    assert result.copied == ("vda", "vdb")
    assert result.notices == ("vdc is on shared storage: it is not copied",)


@pytest.mark.parametrize(
    ("selection", "on_destination", "message"),
    [
        (("vda", "vdb", "vdz"), frozenset(), "vdz, which 'vm' does not have"),
        (("vda",), frozenset(), "vdb"),
        (None, frozenset({VDB}), "already exists on the destination"),
    ],
    ids=["unknown-disk", "local-disk-left-out", "image-exists"],
)
def test_refusals(
    selection: tuple[str, ...] | None, on_destination: frozenset[str], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        plan(selection, on_destination)


def test_no_destination_pool_for_the_directory_is_refused() -> None:
    with pytest.raises(UsageError, match="no active storage pool for /var/lib/libvirt/images"):
        plan_storage_copy("vm", DISKS, PLACEMENT, CHAINS, POOLS[1:], frozenset())


def test_a_disk_in_no_pool_cannot_be_copied() -> None:
    with pytest.raises(UsageError, match="in no libvirt storage pool"):
        plan_storage_copy("vm", DISKS, {**PLACEMENT, "vdb": "unknown"}, CHAINS, POOLS, frozenset())


def test_read_only_media_are_never_copied() -> None:
    cdrom = disk("sda", "/iso/x.iso", device="cdrom", readonly=True, format="raw")
    result = plan_storage_copy(
        "vm", [*DISKS, cdrom], {**PLACEMENT, "sda": "local"}, CHAINS, POOLS, frozenset()
    )
    assert "sda" not in result.copied


def test_room_is_checked_per_pool() -> None:
    check_room(plan(), {"default": GIB}, "vm")
    with pytest.raises(UsageError, match=r"768 MiB in pool 'default'.*512 MiB free"):
        check_room(plan(), {"default": GIB // 2}, "vm")


def test_a_disk_in_no_pool_left_out_of_disks_stays_in_place() -> None:
    result = plan_storage_copy(
        "vm", DISKS, {**PLACEMENT, "vdb": "unknown"}, CHAINS, POOLS, frozenset(), ("vda",)
    )
    assert result.copied == ("vda",)
    assert result.notices == (
        "vdb is left in place: it must be at the same path on the destination",
    )
