"""Where every file of a cold move goes, decided before anything is touched (pure).

Every local disk file and its whole backing chain is copied verbatim, bottom of the chain
first, into the destination pool chosen by --path-map, --pool-map, a pool of the same name,
or a pool with the same directory. A qcow2 overlay names its backing file by absolute path,
so a chain may only move to the same directory on the destination.

With --keep-state the guest's memory is saved into a file pool on the source and reaches the
destination through a pool there: copied like a disk, or read in place from a pool both hosts
see (shared). Which pools, and whether they have room, is decided here too, before any step.
"""

from __future__ import annotations

import posixpath
from dataclasses import asdict, dataclass, replace
from typing import Any

from vmigrate.cold.pool_change import FILE_POOL_TYPES, PoolChange
from vmigrate.domxml.adapt import AdaptChange
from vmigrate.domxml.domain import InterfaceInfo
from vmigrate.errors import OutOfSpace, UsageError, VmigrateError
from vmigrate.facts import HostFacts, PoolFacts, VolumeInfo

#: Room a state file may need beside the guest's memory: device state, header and XML.
STATE_OVERHEAD_BYTES = 64 << 20


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
class StateFile:
    """Where --keep-state saves the guest's memory, and how the file reaches the destination.

    Saved into `source_pool` on the source; then copied like a disk into `destination_pool`,
    or, when `shared` (both hosts see the files of that pool), restored in place, never copied.
    """

    source_pool: str
    source_path: str
    destination_pool: str
    destination_path: str
    shared: bool
    size: int  # at most this many bytes: the guest's memory and its device state

    def as_copy(self) -> VolumeCopy:
        """The state file as a file to copy verbatim (the copy measures its real size)."""
        return VolumeCopy(
            self.source_path,
            self.source_pool,
            self.destination_pool,
            self.destination_path,
            "raw",
            self.size,
            self.size,
            self.size,
            None,
        )


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
    state_file: StateFile | None = None  # --keep-state: where the saved memory goes
    pool_changes: tuple[PoolChange, ...] = ()  # disks QEMU copies into another kind of pool
    #: --adapt: the definition's parts rewritten for the destination, or restored from the
    #: original an earlier job kept (each what, from, to, why)
    adapt_changes: tuple[AdaptChange, ...] = ()
    original_xml: str | None = None  # kept while a part stays adapted: how to move it back
    original_job: int | None = None  # the earlier job that kept it first (None: this one)
    still_adapted: tuple[AdaptChange, ...] = ()  # the parts adapted after this move
    adapt_note: str = ""  # e.g. --adapt with nothing to change

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["adapt_changes"] = [c.to_dict() for c in self.adapt_changes]
        data["still_adapted"] = [c.to_dict() for c in self.still_adapted]
        return data

    @staticmethod
    def from_dict(data: dict[str, Any]) -> ColdPlan:
        copies = tuple(VolumeCopy(**c) for c in data["copies"])
        state = data.get("state_file")
        return ColdPlan(
            **{
                **data,
                "copies": copies,
                "shared_disks": tuple(data["shared_disks"]),
                "changes": tuple(data["changes"]),
                "state_file": StateFile(**state) if state else None,
                "pool_changes": tuple(PoolChange(**c) for c in data.get("pool_changes", ())),
                "adapt_changes": tuple(
                    AdaptChange.from_dict(c) for c in data.get("adapt_changes", ())
                ),
                "still_adapted": tuple(
                    AdaptChange.from_dict(c) for c in data.get("still_adapted", ())
                ),
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
    if name is not None and by_name[name].target_path is None:
        raise UsageError(
            f"{volume.path} is in pool {volume.pool!r}, which --pool-map sends to "
            f"{by_name[name].type} pool {name!r}: only a VM's own disk files go into such a "
            "pool (as one image each), not a backing file another disk needs",
            fix="flatten that disk (--flatten), or map its pool to a directory pool",
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


def state_file_name(vm: str, token: str) -> str:
    """Our own temporary file: hidden, and named so that nobody takes it for a disk."""
    return f".vmigrate-{vm}-{token}.save"


def state_file_size(memory_kib: int) -> int:
    """The most a saved state takes: all of the guest's memory, and its device state."""
    return memory_kib * 1024 + STATE_OVERHEAD_BYTES


def parse_state_pool(text: str) -> tuple[str, str | None]:
    """--state-pool NAME (a pool both hosts have, or a shared pool) or SRC:DST."""
    src, sep, dst = text.partition(":")
    if not src or (sep and not dst) or ":" in dst:
        raise UsageError(
            f"--state-pool {text!r}: write NAME or SRC:DST", fix="e.g. --state-pool default"
        )
    return src, dst or None


def _state_routes(
    copies: tuple[VolumeCopy, ...],
    shared_pools: dict[str, str],
    shared_disk_pools: tuple[str, ...],
    source: HostFacts,
    destination: HostFacts,
) -> list[tuple[str, str]]:
    """(source pool, destination pool) pairs that could carry the state file, best first."""
    routes: list[tuple[str, str]] = []
    common = sorted(_file_pools(source) & _file_pools(destination))
    candidates = [
        *((c.source_pool, c.destination_pool) for c in copies),
        *((p, shared_pools[p]) for p in shared_disk_pools if p in shared_pools),
        *((p, p) for p in common if p not in shared_pools),
        *((p, shared_pools[p]) for p in sorted(shared_pools)),
    ]
    for route in candidates:
        if route not in routes:
            routes.append(route)
    return routes


def _file_pools(host: HostFacts) -> set[str]:
    return {p.name for p in host.pools if p.active and p.type in FILE_POOL_TYPES}


def _route_problem(
    src: PoolFacts | None,
    dst: PoolFacts | None,
    names: tuple[str, str],
    *,
    size: int,
    need: tuple[int, int] | None,
    hosts: tuple[str, str],
) -> tuple[str, bool] | None:
    """Why this route cannot carry the state file, and whether it is only a lack of room."""
    for pool, name, host in ((src, names[0], hosts[0]), (dst, names[1], hosts[1])):
        if pool is None or not pool.active:
            return f"{host} has no active pool {name!r}", False
        if pool.type not in FILE_POOL_TYPES or not pool.target_path:
            return f"pool {name!r} on {host} is a {pool.type} pool, not a directory", False
    assert src is not None and dst is not None
    if need is None:  # --force: the steps find out
        return None
    for pool, host, bytes_needed in ((src, hosts[0], need[0]), (dst, hosts[1], need[1])):
        if bytes_needed > pool.available:
            what = "the state file" if bytes_needed == size else "the disks and the state file"
            return (
                f"pool {pool.name!r} on {host} has {pool.available >> 20} MiB free for "
                f"{what} ({bytes_needed >> 20} MiB)",
                True,
            )
    return None


def plan_state_file(
    name: str,
    size: int,
    *,
    copies: tuple[VolumeCopy, ...],
    shared_pools: dict[str, str],
    source: HostFacts,
    destination: HostFacts,
    shared_disk_pools: tuple[str, ...] = (),
    state_pool: str | None = None,
    check_room: bool = True,
) -> StateFile:
    """Where --keep-state puts the state file: the first route that works, or a refusal.

    `shared_pools` maps each source pool proven shared to the destination pool that sees its
    files. Without `state_pool` (--state-pool) the routes tried are, in order: where the VM's
    local disks go (the file travels with them), a shared pool its disks are on (nothing is
    copied), a pool of the same name on both hosts (the destination's local pools first),
    any other shared pool. Each needs a directory pool on both sides with room for `size`.
    """
    if state_pool is not None:
        src_name, dst_name = parse_state_pool(state_pool)
        routes = [(src_name, dst_name or shared_pools.get(src_name, src_name))]
    else:
        routes = _state_routes(copies, shared_pools, shared_disk_pools, source, destination)
    by_src = {p.name: p for p in source.pools}
    by_dst = {p.name: p for p in destination.pools}
    copied_into: dict[str, int] = {}
    for copy in copies:
        copied_into[copy.destination_pool] = (
            copied_into.get(copy.destination_pool, 0) + copy.allocation
        )
    problems: list[tuple[str, bool]] = []
    for src_name, dst_name in routes:
        src, dst = by_src.get(src_name), by_dst.get(dst_name)
        shared = shared_pools.get(src_name) == dst_name
        disks = copied_into.get(dst_name, 0)
        need = ((size + disks if shared else size), size + disks) if check_room else None
        problem = _route_problem(
            src,
            dst,
            (src_name, dst_name),
            size=size,
            need=need,
            hosts=(source.ref.name, destination.ref.name),
        )
        if problem is not None:
            problems.append(problem)
            continue
        assert src is not None and dst is not None and src.target_path and dst.target_path
        return StateFile(
            source_pool=src_name,
            source_path=posixpath.join(src.target_path, name),
            destination_pool=dst_name,
            destination_path=posixpath.join(dst.target_path, name),
            shared=shared,
            size=size,
        )
    raise _no_route(problems, size, state_pool, (source.ref.name, destination.ref.name))


def _no_route(
    problems: list[tuple[str, bool]], size: int, state_pool: str | None, hosts: tuple[str, str]
) -> VmigrateError:
    why = "; ".join(text for text, _room in problems) or (
        f"{hosts[0]} and {hosts[1]} have no directory pool of the same name, and none is shared"
    )
    message = f"--keep-state: no pool can carry the state file (up to {size >> 20} MiB): {why}"
    fix = (
        "name a directory pool with room on each host: --state-pool NAME (both hosts have it, "
        "or it is shared) or --state-pool SOURCE_POOL:DESTINATION_POOL"
    )
    if problems and all(room for _text, room in problems):
        return OutOfSpace(message, fix=f"free space there, or {fix}")
    if state_pool is not None:
        return UsageError(message, fix=fix)
    return VmigrateError(message, fix=fix)
