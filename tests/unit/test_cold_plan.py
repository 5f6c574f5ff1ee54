"""Where a cold move puts each file: maps, same-name pools, chains, space (pure)."""

from __future__ import annotations

import pytest

from vmigrate.cold.plan import (
    ColdPlan,
    check_space,
    destination_for,
    plan_copies,
    validate_maps,
)
from vmigrate.domxml.domain import InterfaceInfo
from vmigrate.errors import UsageError
from vmigrate.facts import HostFacts, NetworkFacts, PoolFacts, VolumeInfo
from vmigrate.hosts import HostRef

GIB = 1 << 30
POOLS = (
    PoolFacts("local", "dir", "/var/lib/libvirt/images", True, 100 * GIB, 0, 50 * GIB),
    PoolFacts("fast", "dir", "/srv/nvme", True, 10 * GIB, 0, 2 * GIB),
    PoolFacts("off", "dir", "/srv/off", False, 0, 0, 0),
)


def volume(
    path: str, pool: str = "local", backing: str | None = None, allocation: int = GIB
) -> VolumeInfo:
    folder = path.rsplit("/", 1)[0]
    return VolumeInfo(
        path,
        path.rsplit("/", 1)[1],
        pool,
        folder,
        "qcow2",
        4 * GIB,
        allocation,
        allocation + 65536,
        backing,
    )


def test_same_name_pool_keeps_the_path() -> None:
    pool, path = destination_for(
        volume("/var/lib/libvirt/images/a.qcow2"), POOLS, pool_map={}, path_map={}
    )
    assert (pool, path) == ("local", "/var/lib/libvirt/images/a.qcow2")


def test_pool_map_and_path_map() -> None:
    vol = volume("/var/lib/libvirt/images/a.qcow2")
    assert destination_for(vol, POOLS, pool_map={"local": "fast"}, path_map={}) == (
        "fast",
        "/srv/nvme/a.qcow2",
    )
    assert destination_for(
        vol, POOLS, pool_map={}, path_map={"/var/lib/libvirt/images": "/srv/nvme"}
    ) == ("fast", "/srv/nvme/a.qcow2")
    with pytest.raises(UsageError, match="not active"):
        destination_for(vol, POOLS, pool_map={"local": "off"}, path_map={})
    with pytest.raises(UsageError, match="no active storage pool"):
        destination_for(vol, POOLS, pool_map={}, path_map={"/var/lib/libvirt/images": "/x"})


def test_unknown_pool_asks_for_a_map() -> None:
    with pytest.raises(UsageError) as caught:
        destination_for(volume("/data/a.qcow2", pool="data"), POOLS, pool_map={}, path_map={})
    assert "--pool-map data:DESTINATION_POOL" in str(caught.value)


def test_chain_is_copied_bottom_first_once() -> None:
    base = volume("/var/lib/libvirt/images/base.qcow2")
    top_a = volume("/var/lib/libvirt/images/a.qcow2", backing=base.path)
    top_b = volume("/var/lib/libvirt/images/b.qcow2", backing=base.path)
    copies = plan_copies(
        {"vda": [top_a, base], "vdb": [top_b, base]}, POOLS, pool_map={}, path_map={}
    )
    assert [c.source_path for c in copies] == [base.path, top_a.path, top_b.path]
    assert copies[1].backing_path == base.path


def test_chain_cannot_change_directory() -> None:
    base = volume("/var/lib/libvirt/images/base.qcow2")
    top = volume("/var/lib/libvirt/images/a.qcow2", backing=base.path)
    with pytest.raises(UsageError, match="lose its backing chain"):
        plan_copies({"vda": [top, base]}, POOLS, pool_map={"local": "fast"}, path_map={})


def test_space_is_checked_per_pool() -> None:
    copies = plan_copies(
        {"vda": [volume("/var/lib/libvirt/images/a.qcow2", allocation=3 * GIB)]},
        POOLS,
        pool_map={"local": "fast"},
        path_map={},
    )
    with pytest.raises(UsageError, match="'fast' has 2048 MiB free"):
        check_space(copies, POOLS)
    check_space(copies[:0], POOLS)


def test_plan_round_trips_through_the_job_store_format() -> None:
    copies = plan_copies(
        {"vda": [volume("/var/lib/libvirt/images/a.qcow2")]}, POOLS, pool_map={}, path_map={}
    )
    plan = ColdPlan(
        "vm",
        "running",
        True,
        False,
        True,
        copies,
        ("vdb",),
        "<domain/>",
        "<domain/>",
        ("vda: a -> b",),
    )
    assert ColdPlan.from_dict(plan.to_dict()) == plan


def _destination() -> HostFacts:
    return HostFacts(
        ref=HostRef("kvm2", "qemu+tls://kvm2/system"),
        hostname="kvm2",
        host_uuid="u2",
        libvirt_version=11_003_000,
        hypervisor_type="QEMU",
        hypervisor_version=10_000_002,
        arch="x86_64",
        cpus=8,
        memory_free_bytes=1 << 34,
        memory_available_bytes=1 << 34,
        rtt_ms=0.3,
        pools=POOLS,
        networks=(NetworkFacts("prod", True, "virbr1", ()),),
        host_interfaces=("br0", "eth0"),
        domains={},
    )


NICS = (
    InterfaceInfo("network", "default", None, None),
    InterfaceInfo("bridge", "br-old", None, None),
)


@pytest.mark.parametrize(
    ("pool_map", "net_map", "words"),
    [
        ({"nope": "fast"}, {}, "the source has no pool 'nope'"),
        ({"default": "nope"}, {}, "kvm2 has no active pool 'nope'"),
        ({}, {"unused": "prod"}, "no interface of the VM uses 'unused'"),
        ({}, {"default": "nope"}, "no active network or bridge 'nope'"),
        ({}, {"default": "br0"}, "no active network or bridge 'br0'"),  # a network needs one
    ],
)
def test_maps_naming_what_does_not_exist_are_refused(
    pool_map: dict[str, str], net_map: dict[str, str], words: str
) -> None:
    with pytest.raises(UsageError, match=words):
        validate_maps(
            pool_map=pool_map,
            net_map=net_map,
            source_pools=("default",),
            interfaces=NICS,
            destination=_destination(),
        )


def test_maps_to_what_exists_are_accepted() -> None:
    validate_maps(
        pool_map={"default": "fast"},
        net_map={"default": "prod", "br-old": "br0"},
        source_pools=("default",),
        interfaces=NICS,
        destination=_destination(),
    )


def test_flatten_copies_one_standalone_image_anywhere() -> None:
    base = volume("/var/lib/libvirt/images/base.qcow2", allocation=3 * GIB)
    top = volume("/var/lib/libvirt/images/a.qcow2", backing=base.path)
    (copy,) = plan_copies(
        {"vda": [top, base]},
        POOLS,
        pool_map={"local": "fast"},
        path_map={},
        flatten_targets=frozenset({"vda"}),
    )
    assert copy.flatten and copy.backing_path is None
    assert copy.destination_path == "/srv/nvme/a.qcow2"
    assert copy.allocation == 4 * GIB  # the whole chain's data, for the space check
