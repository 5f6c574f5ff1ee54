"""Which disks of a cold move change their kind of pool (--pool-map LOCAL:RBD or RBD:LOCAL),
read from both hosts' pools, and planned by cold/pool_change.py."""

from __future__ import annotations

from dataclasses import dataclass

from vmigrate.cold.pool_change import (
    ExportSource,
    PoolChange,
    image_name_for,
    plan_export,
    plan_import,
    refuse_clashes,
    refuse_short_source_scratch,
)
from vmigrate.domxml.domain import DiskInfo
from vmigrate.errors import UsageError
from vmigrate.facts import HostFacts
from vmigrate.network_pools import match_pool
from vmigrate.virt.connection import Connection
from vmigrate.virt.pool_volumes import active_rbd_pools, volume_exists_now, volume_sizes
from vmigrate.virt.storage import find_network_volume, volume_chain


@dataclass(frozen=True)
class _Move:
    """What every disk's pool change is decided against: the map and both hosts."""

    pool_map: dict[str, str]
    conns: tuple[Connection, Connection]
    facts: tuple[HostFacts, HostFacts]
    rbd_xml: dict[str, dict[str, str]]  # each side's active rbd pools: name -> XML


def plan_pool_changes(
    pool_map: dict[str, str],
    disks: tuple[DiskInfo, ...],
    conns: tuple[Connection, Connection],
    facts: tuple[HostFacts, HostFacts],
) -> tuple[PoolChange, ...]:
    """The pool changes --pool-map asks for: a local disk whose pool maps to an rbd pool of
    the destination, an rbd disk in a source rbd pool that maps to a directory pool there."""
    src, dst = conns
    rbd_xml = {"source": active_rbd_pools(src), "destination": active_rbd_pools(dst)}
    move = _Move(pool_map, conns, facts, rbd_xml)
    changes: list[PoolChange] = []
    for disk in disks:
        if disk.readonly:
            continue
        change = None
        if disk.source_type in ("file", "block") and disk.path is not None:
            change = _import(disk, move)
        elif disk.network is not None and disk.network.protocol == "rbd":
            change = _export(disk, move)
        if change is not None:
            changes.append(change)
    refuse_clashes(tuple(changes))
    refuse_short_source_scratch(tuple(changes), facts[0])
    return tuple(changes)


def _refuse_shared_by_others(disk: DiskInfo, host: str) -> None:
    if disk.shareable:
        raise UsageError(
            f"{disk.target} is shareable (other VMs may write it): a copy of it into another "
            "pool would part from what they see",
            host=host,
            fix="leave it where it is (no --pool-map for its pool), or make it unshared first",
        )


def _import(disk: DiskInfo, move: _Move) -> PoolChange | None:
    assert disk.path is not None
    chain = volume_chain(move.conns[0], disk.path)
    mapped = move.pool_map.get(chain[0].pool) if chain else None
    if chain is None or mapped is None or mapped not in move.rbd_xml["destination"]:
        return None
    host = move.facts[0].ref.name
    _refuse_shared_by_others(disk, host)
    if disk.source_type != "file":
        raise UsageError(
            f"{disk.target} is a block device ({disk.path}): vmigrate imports disk files "
            f"into rbd, not devices",
            host=host,
            fix=f"copy it into Ceph by hand, or leave pool {chain[0].pool!r} out of --pool-map",
        )
    image = image_name_for(chain[0].path)
    taken = frozenset({image} if volume_exists_now(move.conns[1], mapped, image) else ())
    return plan_import(
        disk.target,
        chain,
        mapped,
        facts=move.facts,
        rbd_pool_xml=move.rbd_xml,
        taken_images=taken,
    )


def _export(disk: DiskInfo, move: _Move) -> PoolChange | None:
    """The disk's image in a mapped rbd pool of the source (each mapped pool on the disk's
    Ceph pool is asked, not just the first pool that lists it), or None: not mapped."""
    assert disk.network is not None
    host = move.facts[0].ref.name
    for pool in sorted(set(move.pool_map) & set(move.rbd_xml["source"])):
        match = match_pool(move.rbd_xml["source"][pool], disk.network)
        if match is None:
            continue
        _refuse_shared_by_others(disk, host)
        if (disk.format or "raw") != "raw":
            raise UsageError(
                f"{disk.target} is a {disk.format} image in Ceph: vmigrate exports raw rbd "
                "images into raw files, and this one would reach the guest as its container",
                host=host,
                fix=f"leave it in Ceph (no --pool-map {pool}:...), or convert it first",
            )
        sizes = volume_sizes(move.conns[0], pool, match.volume)
        if sizes is None:
            raise UsageError(
                f"{disk.target}: pool {pool!r} on {host} reaches the disk's Ceph pool but "
                f"does not list image {match.volume!r}",
                host=host,
                fix=f"refresh it (virsh pool-refresh {pool}) and retry",
            )
        seen = find_network_volume(move.conns[1], disk.network)
        export = ExportSource(
            disk.target, match.volume, pool, seen.pool, sizes[0], sizes[1], seen.error
        )
        return plan_export(export, move.pool_map[pool], facts=move.facts, rbd_pool_xml=move.rbd_xml)
    return None
