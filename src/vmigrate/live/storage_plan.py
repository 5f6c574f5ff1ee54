"""What a live migration with --copy-storage copies, and what it creates first (pure).

QEMU mirrors the top image of each copied disk over NBD (libvirt's non-shared incremental
migration). The destination must already hold an image at the same path, of the same format
and size, on top of the same backing chain: we create it, and copy backing files that the
destination lacks verbatim beforehand. Shared and network disks are never copied.
"""

from __future__ import annotations

import posixpath
from dataclasses import asdict, dataclass
from typing import Any

from vmigrate.domxml.domain import DiskInfo
from vmigrate.errors import UsageError
from vmigrate.facts import PoolFacts, VolumeInfo

SHARED, NETWORK, LOCAL, UNKNOWN = "shared", "network", "local", "unknown"


@dataclass(frozen=True)
class ImageToCreate:
    """An empty image on the destination for QEMU to mirror the top of one disk into."""

    target: str
    path: str
    pool: str
    format: str
    capacity: int
    allocation: int  # on the source: what the mirror will write, about
    backing_path: str | None
    backing_format: str | None


@dataclass(frozen=True)
class BackingCopy:
    """A backing file the destination lacks, copied verbatim before the migration starts."""

    path: str
    source_pool: str
    destination_pool: str
    format: str
    physical: int


@dataclass(frozen=True)
class StorageCopyPlan:
    copied: tuple[str, ...]  # targets QEMU mirrors
    shared: tuple[str, ...]  # targets left in place
    images: tuple[ImageToCreate, ...]
    backing: tuple[BackingCopy, ...]  # bottom of each chain first
    backing_present: tuple[str, ...]  # backing files already on the destination (verified)
    notices: tuple[str, ...]

    def bytes_needed(self) -> dict[str, int]:
        """Per destination pool, what the copies will write (an estimate for the mirror)."""
        need: dict[str, int] = {}
        for image in self.images:
            need[image.pool] = need.get(image.pool, 0) + image.allocation
        for copy in self.backing:
            need[copy.destination_pool] = need.get(copy.destination_pool, 0) + copy.physical
        return need

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _copyable(disk: DiskInfo) -> bool:
    return (
        disk.device == "disk"
        and not disk.readonly
        and not disk.shareable
        and disk.source_type in ("file", "block")
        and disk.path is not None
    )


def _selected(
    disks: list[DiskInfo], placement: dict[str, str], selection: tuple[str, ...] | None, vm: str
) -> tuple[list[DiskInfo], list[str], list[str]]:
    """The disks to copy, the shared ones, and notices; refuses a selection that cannot work."""
    by_target = {d.target: d for d in disks}
    unknown = [t for t in selection or () if t not in by_target]
    if unknown:
        raise UsageError(
            f"--disks names {', '.join(unknown)}, which {vm!r} does not have "
            f"(its disks: {', '.join(by_target) or 'none'})",
            vm=vm,
            fix="name targets as `virsh domblklist` shows them, e.g. --disks vda,vdb",
        )
    notices: list[str] = []
    copy: list[DiskInfo] = []
    shared: list[str] = []
    for disk in disks:
        where = placement.get(disk.target, UNKNOWN)
        wanted = selection is None or disk.target in selection
        if where in (SHARED, NETWORK):
            shared.append(disk.target)
            if selection is not None and wanted:
                notices.append(f"{disk.target} is on {where} storage: it is not copied")
            continue
        if not _copyable(disk):
            if selection is not None and wanted:
                raise UsageError(
                    f"{disk.target} ({disk.device}{', read-only' if disk.readonly else ''}"
                    f"{', shareable' if disk.shareable else ''}) cannot be copied live",
                    vm=vm,
                    fix=f"leave {disk.target} out of --disks; read-only media must "
                    "exist at the same path on the destination",
                )
            continue
        if where != LOCAL and not wanted:
            notices.append(
                f"{disk.target} is left in place: it must be at the same path on the destination"
            )
            continue
        if where != LOCAL:
            raise UsageError(
                f"{disk.target}: {disk.path} is in no libvirt storage pool on the source, "
                "so vmigrate cannot create its copy on the destination",
                vm=vm,
                fix="define a pool for its directory on both hosts "
                "(virsh pool-define-as NAME dir --target DIR)",
            )
        if not wanted:
            raise UsageError(
                f"{disk.target} ({disk.path}) is local to the source and not in --disks: "
                "the VM would lose it on the destination",
                vm=vm,
                fix=f"add {disk.target} to --disks, or leave --disks out to copy every local disk",
            )
        copy.append(disk)
    return copy, shared, notices


def _pool_for(path: str, pools: tuple[PoolFacts, ...], vm: str, target: str) -> str:
    """The destination pool whose directory holds `path`: the copy keeps the same path."""
    folder = posixpath.dirname(path)
    pool = next((p for p in pools if p.active and p.target_path == folder), None)
    if pool is None:
        raise UsageError(
            f"{target}: the destination has no active storage pool for {folder}, "
            f"where {posixpath.basename(path)} must be created",
            vm=vm,
            fix=f"define and start a pool with target {folder} on the destination",
        )
    return pool.name


def plan_storage_copy(
    vm: str,
    disks: list[DiskInfo],
    placement: dict[str, str],
    chains: dict[str, list[VolumeInfo]],
    destination_pools: tuple[PoolFacts, ...],
    on_destination: frozenset[str],
    selection: tuple[str, ...] | None = None,
) -> StorageCopyPlan:
    """Decide everything before anything is touched; a UsageError says why it cannot work.

    `placement` says per target whether the disk is shared, network, local or unknown (from
    the pre-flight storage check); `chains` holds each local disk's chain, top first;
    `on_destination` the paths that already exist on the destination.
    """
    to_copy, shared, notices = _selected(disks, placement, selection, vm)
    images: list[ImageToCreate] = []
    backing: dict[str, BackingCopy] = {}
    present: list[str] = []
    for disk in to_copy:
        chain = chains.get(disk.target)
        if not chain:
            raise UsageError(
                f"{disk.target}: the backing chain of {disk.path} could not be read: "
                "a file of it is in no storage pool on the source",
                vm=vm,
                fix="define a pool for each directory of the chain (virsh pool-define-as)",
            )
        top = chain[0]
        if top.path in on_destination:
            raise UsageError(
                f"{disk.target}: {top.path} already exists on the destination; "
                "it is never overwritten",
                vm=vm,
                fix="remove it there if it is stale, or move the VM cold with --pool-map",
            )
        below = chain[1] if len(chain) > 1 else None
        images.append(
            ImageToCreate(
                target=disk.target,
                path=top.path,
                pool=_pool_for(top.path, destination_pools, vm, disk.target),
                format=top.format,
                capacity=top.capacity,
                allocation=top.allocation,
                backing_path=below.path if below else None,
                backing_format=below.format if below else None,
            )
        )
        for volume in reversed(chain[1:]):  # bottom of the chain first
            if volume.path in on_destination:
                if volume.path not in present:
                    present.append(volume.path)
            elif volume.path not in backing:
                backing[volume.path] = BackingCopy(
                    path=volume.path,
                    source_pool=volume.pool,
                    destination_pool=_pool_for(volume.path, destination_pools, vm, disk.target),
                    format=volume.format,
                    physical=volume.physical,
                )
    return StorageCopyPlan(
        copied=tuple(d.target for d in to_copy),
        shared=tuple(shared),
        images=tuple(images),
        backing=tuple(backing.values()),
        backing_present=tuple(present),
        notices=tuple(notices),
    )


def check_room(plan: StorageCopyPlan, available: dict[str, int], vm: str) -> None:
    """Refuse before anything is created when a destination pool cannot take the copies."""
    for pool, need in plan.bytes_needed().items():
        have = available.get(pool, 0)
        if need > have:
            raise UsageError(
                f"copying the disks needs {need / (1 << 20):.0f} MiB in pool {pool!r} "
                f"on the destination, which has {have / (1 << 20):.0f} MiB free",
                vm=vm,
                fix="free space in that pool, or choose another destination",
            )
