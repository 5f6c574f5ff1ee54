"""Which disks of a cold move change their kind of pool (--pool-map LOCAL:RBD or RBD:LOCAL),
read from both hosts' pools, and planned by cold/pool_change.py."""

from __future__ import annotations

from vmigrate.cold.pool_change import (
    ExportSource,
    PoolChange,
    image_name_for,
    plan_export,
    plan_import,
)
from vmigrate.domxml.domain import DiskInfo
from vmigrate.errors import UsageError
from vmigrate.facts import HostFacts
from vmigrate.virt.connection import Connection
from vmigrate.virt.pool_volumes import active_rbd_pools, volume_exists_now, volume_sizes
from vmigrate.virt.storage import find_network_volume, volume_chain


def plan_pool_changes(
    pool_map: dict[str, str],
    disks: tuple[DiskInfo, ...],
    conns: tuple[Connection, Connection],
    facts: tuple[HostFacts, HostFacts],
) -> tuple[PoolChange, ...]:
    """The pool changes --pool-map asks for: a local disk whose pool maps to an rbd pool of
    the destination, an rbd disk whose source pool maps to a directory pool there."""
    src, dst = conns
    hosts = (facts[0].ref.name, facts[1].ref.name)
    rbd_xml = {"source": active_rbd_pools(src), "destination": active_rbd_pools(dst)}
    changes: list[PoolChange] = []
    for disk in disks:
        if disk.readonly:
            continue
        if disk.source_type == "file" and disk.path is not None:
            chain = volume_chain(src, disk.path)
            mapped = pool_map.get(chain[0].pool) if chain else None
            if chain is None or mapped not in rbd_xml["destination"]:
                continue
            assert mapped is not None
            image = image_name_for(chain[0].path)
            taken = frozenset({image} if volume_exists_now(dst, mapped, image) else ())
            changes.append(
                plan_import(
                    disk.target,
                    chain,
                    mapped,
                    facts=facts,
                    rbd_pool_xml=rbd_xml,
                    taken_images=taken,
                )
            )
        elif disk.network is not None and disk.network.protocol == "rbd":
            held = find_network_volume(src, disk.network)
            if held.pool is None or held.pool not in pool_map or held.volume is None:
                continue
            sizes = volume_sizes(src, held.pool, held.volume)
            if sizes is None:
                raise UsageError(
                    f"{disk.target}: pool {held.pool!r} on {hosts[0]} no longer lists image "
                    f"{held.volume!r}",
                    host=hosts[0],
                    fix=f"refresh it (virsh pool-refresh {held.pool}) and retry",
                )
            seen = find_network_volume(dst, disk.network)
            export = ExportSource(
                disk.target, held.volume, held.pool, seen.pool, sizes[0], sizes[1]
            )
            changes.append(
                plan_export(export, pool_map[held.pool], facts=facts, rbd_pool_xml=rbd_xml)
            )
    return tuple(changes)
