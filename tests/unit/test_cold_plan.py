"""Where a cold move puts each file: maps, same-name pools, chains, space, the state file
(pure)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from vmigrate.cold.plan import (
    ColdPlan,
    StateFile,
    VolumeCopy,
    check_space,
    destination_for,
    plan_copies,
    plan_state_file,
    state_file_size,
    validate_maps,
)
from vmigrate.domxml.domain import InterfaceInfo
from vmigrate.errors import OutOfSpace, UsageError, VmigrateError
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


# ---- --keep-state: where the state file goes -------------------------------------------
MIB = 1 << 20
IMAGES = "/var/lib/libvirt/images"
SHARED = "/srv/nfs"
STATE = state_file_size(1024 * 1024)  # a guest of 1 GiB: up to 1 GiB and its device state


def _pools(local_free: int = 50 * GIB, shared_free: int = 50 * GIB) -> tuple[PoolFacts, ...]:
    return (
        PoolFacts("local", "dir", IMAGES, True, 100 * GIB, 0, local_free),
        PoolFacts("shared", "netfs", SHARED, True, 100 * GIB, 0, shared_free),
        PoolFacts("lvm", "logical", "/dev/vg0", True, 100 * GIB, 0, 100 * GIB),
    )


def _hosts(
    source: tuple[PoolFacts, ...] | None = None, destination: tuple[PoolFacts, ...] | None = None
) -> dict[str, HostFacts]:
    base = _destination()
    return {
        "source": replace(
            base, ref=HostRef("kvm1", "qemu+tls://kvm1/system"), pools=source or _pools()
        ),
        "destination": replace(base, pools=destination or _pools()),
    }


def _state(
    *,
    copies: tuple[VolumeCopy, ...] = (),
    shared_disk_pools: tuple[str, ...] = (),
    state_pool: str | None = None,
    source: tuple[PoolFacts, ...] | None = None,
    destination: tuple[PoolFacts, ...] | None = None,
    shared_pools: dict[str, str] | None = None,
    check_room: bool = True,
) -> StateFile:
    return plan_state_file(
        ".vmigrate-vm-ab12.save",
        STATE,
        copies=copies,
        shared_pools={"shared": "shared"} if shared_pools is None else shared_pools,
        shared_disk_pools=shared_disk_pools,
        state_pool=state_pool,
        check_room=check_room,
        **_hosts(source, destination),
    )


def test_state_file_travels_with_a_local_disk() -> None:
    copies = plan_copies({"vda": [volume(f"{IMAGES}/a.qcow2")]}, _pools(), pool_map={}, path_map={})
    state = _state(copies=copies)
    assert (state.source_pool, state.destination_pool, state.shared) == ("local", "local", False)
    assert state.source_path == state.destination_path == f"{IMAGES}/.vmigrate-vm-ab12.save"
    assert state.size == GIB + 64 * MIB


def test_state_file_of_a_diskless_vm_goes_through_the_destinations_local_pool() -> None:
    state = _state()
    assert (state.source_pool, state.destination_pool, state.shared) == ("local", "local", False)
    assert state.destination_path == f"{IMAGES}/.vmigrate-vm-ab12.save"


def test_state_file_of_a_shared_disk_vm_stays_on_the_shared_pool_uncopied() -> None:
    state = _state(shared_disk_pools=("shared",))
    assert (state.source_pool, state.destination_pool, state.shared) == ("shared", "shared", True)
    assert state.source_path == state.destination_path == f"{SHARED}/.vmigrate-vm-ab12.save"


def test_a_shared_pool_seen_under_another_name_and_path_on_the_destination() -> None:
    elsewhere = (PoolFacts("nfs", "netfs", "/mnt/nfs", True, 100 * GIB, 0, 50 * GIB),)
    state = _state(
        shared_disk_pools=("shared",), shared_pools={"shared": "nfs"}, destination=elsewhere
    )
    assert state.shared and state.destination_pool == "nfs"
    assert state.source_path == f"{SHARED}/.vmigrate-vm-ab12.save"
    assert state.destination_path == "/mnt/nfs/.vmigrate-vm-ab12.save"


def test_state_file_goes_where_the_user_says() -> None:
    shared = _state(state_pool="shared")  # a shared pool: not copied
    assert (shared.source_pool, shared.destination_pool, shared.shared) == (
        "shared",
        "shared",
        True,
    )
    fast = (*_pools(), PoolFacts("fast", "dir", "/srv/nvme", True, 10 * GIB, 0, 5 * GIB))
    mapped = _state(state_pool="local:fast", destination=fast)  # each side named
    assert (mapped.source_pool, mapped.destination_pool, mapped.shared) == ("local", "fast", False)
    assert mapped.destination_path == "/srv/nvme/.vmigrate-vm-ab12.save"
    # The user's pool wins over the one the disks go to.
    copies = plan_copies({"vda": [volume(f"{IMAGES}/a.qcow2")]}, _pools(), pool_map={}, path_map={})
    assert _state(copies=copies, state_pool="shared").shared


@pytest.mark.parametrize(
    ("state_pool", "words"),
    [
        ("fast", "kvm1 has no active pool 'fast'"),
        ("local:fast", "kvm2 has no active pool 'fast'"),
        ("lvm", "pool 'lvm' on kvm1 is a logical pool, not a directory"),
        ("local:", "write NAME or SRC:DST"),
    ],
)
def test_a_pool_the_user_names_that_cannot_carry_it_is_refused(state_pool: str, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        _state(state_pool=state_pool)


def test_no_pool_on_the_destination_for_the_state_file_is_refused() -> None:
    only_lvm = (PoolFacts("lvm", "logical", "/dev/vg0", True, 100 * GIB, 0, 100 * GIB),)
    with pytest.raises(VmigrateError, match="no pool can carry the state file") as caught:
        _state(destination=only_lvm, shared_pools={})
    assert "kvm1 and kvm2 have no directory pool of the same name" in caught.value.message
    assert "--state-pool" in caught.value.fix
    # The disk goes to an LVM pool: the file cannot follow it, and nothing else is there.
    lvm_disk = VolumeCopy("/dev/vg0/a", "lvm", "lvm", "/dev/vg0/a", "raw", GIB, GIB, GIB, None)
    with pytest.raises(VmigrateError, match="'lvm' on kvm1 is a logical pool, not a directory"):
        _state(copies=(lvm_disk,), destination=only_lvm, shared_pools={})


def test_state_file_bigger_than_the_free_space_is_refused() -> None:
    tight = _pools(local_free=512 * MIB, shared_free=512 * MIB)
    with pytest.raises(OutOfSpace, match="'local' on kvm1 has 512 MiB free") as caught:
        _state(destination=tight, source=tight)
    # 1 GiB of memory and 64 MiB of device state; every route tried is named.
    assert "for the state file (1088 MiB)" in caught.value.message
    assert "'shared' on kvm1 has 512 MiB free" in caught.value.message
    # Room on the source alone does not do: the copy needs it on the destination too.
    with pytest.raises(OutOfSpace, match="'local' on kvm2 has 512 MiB free"):
        _state(destination=tight, shared_pools={})
    # --force: the steps find out.
    assert _state(destination=tight, source=tight, check_room=False).source_pool == "local"


def test_the_disks_copied_into_a_pool_count_against_the_state_file() -> None:
    roomy = _pools(local_free=4 * GIB)
    copies = plan_copies(
        {"vda": [volume(f"{IMAGES}/a.qcow2", allocation=3 * GIB)]}, roomy, pool_map={}, path_map={}
    )
    state = _state(copies=copies, destination=roomy)  # 3 GiB + 1.06 GiB > 4 GiB: not local
    assert (state.source_pool, state.shared) == ("shared", True)
    with pytest.raises(OutOfSpace, match=r"for the disks and the state file \(4160 MiB\)"):
        _state(copies=copies, destination=roomy, state_pool="local")


def test_plan_with_a_state_file_round_trips_through_the_job_store_format() -> None:
    plan = ColdPlan(
        "vm", "running", True, True, True, (), (), "<domain/>", "<domain/>", (),
        restore_xml="<domain/>", state_file=_state(),
    )  # fmt: skip
    assert ColdPlan.from_dict(plan.to_dict()) == plan
    old = plan.to_dict()
    del old["state_file"]  # a job recorded before state files had a plan of their own
    assert ColdPlan.from_dict(old).state_file is None
