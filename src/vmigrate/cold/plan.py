"""Where every file of a cold move goes, decided before anything is touched (pure).

Every local disk file and its whole backing chain is copied verbatim, bottom of the chain
first, into the destination pool chosen by --path-map, --pool-map, a pool of the same name,
or a pool with the same directory. A qcow2 overlay names its backing file by absolute path,
so a chain may only move to the same directory on the destination.
"""

from __future__ import annotations

import posixpath
from dataclasses import asdict, dataclass, replace
from typing import Any

from vmigrate.domxml.domain import InterfaceInfo
from vmigrate.errors import UsageError
from vmigrate.facts import HostFacts, PoolFacts, VolumeInfo


@dataclass(frozen=True)
class VolumeCopy:
    source_path: str
    source_pool: str
    destination_pool: str
    destination_path: str
    format: str
    capacity: int
    allocation: int
    physical: int
    backing_path: str | None  # on the destination (same as on the source by construction)
    flatten: bool = False  # --flatten: copy one standalone image made from the whole chain


@dataclass(frozen=True)
class ColdPlan:
    vm: str
    state: str  # running | paused | shut off
    persistent: bool
    keep_state: bool
    start_after: bool
    copies: tuple[VolumeCopy, ...]
    shared_disks: tuple[str, ...]  # targets left in place
    source_xml: str
    destination_xml: str
    changes: tuple[str, ...]
    restore_xml: str | None = None  # the running definition, rewritten, for --keep-state

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> ColdPlan:
        copies = tuple(VolumeCopy(**c) for c in data["copies"])
        return ColdPlan(
            **{
                **data,
                "copies": copies,
                "shared_disks": tuple(data["shared_disks"]),
                "changes": tuple(data["changes"]),
            }
        )


def _mapped_path(path: str, path_map: dict[str, str]) -> str | None:
    for old, new in sorted(path_map.items(), key=lambda item: -len(item[0])):
        prefix = old.rstrip("/")
        if path == prefix or path.startswith(prefix + "/"):
            return new.rstrip("/") + path[len(prefix) :]
    return None


def destination_for(
    volume: VolumeInfo,
    pools: tuple[PoolFacts, ...],
    *,
    pool_map: dict[str, str],
    path_map: dict[str, str],
) -> tuple[str, str]:
    """(destination pool, destination path) for one source file, or a UsageError saying why."""
    by_name = {p.name: p for p in pools if p.active}
    mapped = _mapped_path(volume.path, path_map)
    if mapped is not None:
        folder = posixpath.dirname(mapped)
        pool = next((p for p in by_name.values() if p.target_path == folder), None)
        if pool is None:
            raise UsageError(
                f"--path-map sends {volume.path} to {folder}, where the "
                "destination has no active storage pool",
                fix=f"define a pool with target {folder} on the destination",
            )
        return pool.name, mapped
    name = pool_map.get(volume.pool)
    if name is not None and name not in by_name:
        raise UsageError(
            f"--pool-map names pool {name!r}, which is not active on the destination",
            fix="list its pools: virsh pool-list --all",
        )
    pool = by_name.get(name or volume.pool) or next(
        (p for p in by_name.values() if p.target_path == volume.pool_path), None
    )
    if pool is None or pool.target_path is None:
        raise UsageError(
            f"no destination pool for {volume.path} (pool {volume.pool!r})",
            fix=f"add --pool-map {volume.pool}:DESTINATION_POOL",
        )
    return pool.name, posixpath.join(pool.target_path, posixpath.basename(volume.path))


def plan_copies(
    chains: dict[str, list[VolumeInfo]],
    pools: tuple[PoolFacts, ...],
    *,
    pool_map: dict[str, str],
    path_map: dict[str, str],
    flatten_targets: frozenset[str] = frozenset(),
) -> tuple[VolumeCopy, ...]:
    """Every file to copy, backing files before the overlays that need them, each once.

    A disk in `flatten_targets` is copied as one standalone image of its whole chain.
    """
    copies: dict[str, VolumeCopy] = {}
    for target, full_chain in chains.items():
        chain = full_chain[:1] if target in flatten_targets else full_chain
        for volume in reversed(chain):  # bottom of the chain first
            if volume.path in copies:
                continue
            pool, path = destination_for(volume, pools, pool_map=pool_map, path_map=path_map)
            flatten = volume.backing_path is not None and target in flatten_targets
            if flatten:
                volume = replace(
                    volume,
                    backing_path=None,
                    allocation=sum(v.allocation for v in full_chain),
                )
            elif volume.backing_path is not None and path != volume.path:
                raise UsageError(
                    f"{target}: {volume.path} is a qcow2 overlay whose backing file is named "
                    f"by its absolute path; moved to {path} it would lose its backing chain",
                    fix="keep the chain in the same directory on the destination (a pool with "
                    f"target {posixpath.dirname(volume.path)}), or add --flatten to move one "
                    "standalone image instead of the chain",
                )
            copies[volume.path] = VolumeCopy(
                source_path=volume.path,
                source_pool=volume.pool,
                destination_pool=pool,
                destination_path=path,
                format=volume.format,
                capacity=volume.capacity,
                allocation=volume.allocation,
                physical=volume.physical,
                backing_path=volume.backing_path,
                flatten=flatten,
            )
    return tuple(copies.values())


def check_space(
    copies: tuple[VolumeCopy, ...],
    pools: tuple[PoolFacts, ...],
    extra: dict[str, int] | None = None,
) -> None:
    """Refuse before copying anything when a destination pool cannot hold its files."""
    need: dict[str, int] = dict(extra or {})
    for copy in copies:
        need[copy.destination_pool] = need.get(copy.destination_pool, 0) + copy.allocation
    available = {p.name: p.available for p in pools}
    for pool, bytes_needed in need.items():
        if bytes_needed > available.get(pool, 0):
            raise UsageError(
                f"destination pool {pool!r} has {available.get(pool, 0) >> 20} MiB free; the "
                f"copy needs {bytes_needed >> 20} MiB",
                fix="free space there or use --pool-map",
            )


def validate_maps(
    *,
    pool_map: dict[str, str],
    net_map: dict[str, str],
    source_pools: tuple[str, ...],
    interfaces: tuple[InterfaceInfo, ...],
    destination: HostFacts,
) -> None:
    """Refuse maps that name what does not exist: a typo must not move a VM somewhere else."""
    destination_pools = {p.name for p in destination.pools if p.active}
    for old, new in pool_map.items():
        if old not in source_pools:
            raise UsageError(
                f"--pool-map {old}:{new}: the source has no pool {old!r} "
                f"(it has: {', '.join(sorted(source_pools)) or 'none'})",
                fix="list the source's pools with `virsh pool-list --all`",
            )
        if new not in destination_pools:
            raise UsageError(
                f"--pool-map {old}:{new}: {destination.ref.name} has no active pool {new!r} "
                f"(it has: {', '.join(sorted(destination_pools)) or 'none'})",
                fix=f"create or start it on {destination.ref.name}, or map to another pool",
            )
    used = {i.source for i in interfaces if i.source}
    networks = {n.name for n in destination.networks if n.active}
    bridges = {n.bridge for n in destination.networks if n.bridge}
    bridges |= set(destination.host_interfaces or ())
    for old, new in net_map.items():
        if old not in used:
            raise UsageError(
                f"--net-map {old}:{new}: no interface of the VM uses {old!r} "
                f"(it uses: {', '.join(sorted(used)) or 'none'})",
                fix="map the networks or bridges the VM's interfaces name",
            )
        kinds = {i.kind for i in interfaces if i.source == old}
        known = networks if kinds == {"network"} else networks | bridges
        if new not in known and not (destination.host_interfaces is None and kinds != {"network"}):
            raise UsageError(
                f"--net-map {old}:{new}: {destination.ref.name} has no active network "
                f"or bridge {new!r}",
                fix=f"create it on {destination.ref.name} (virsh net-list --all), "
                "or map to one that exists",
            )
