"""Disks that change their kind of storage on a cold move (pure): --pool-map LOCAL:RBD
imports a local file (and its backing chain) into a Ceph image, --pool-map RBD:LOCAL exports
an image into a local raw file.

QEMU copies them (domxml/disks.py says why): the host that holds the local file does the
copy, through its own rbd pool on the same Ceph pool, so the bytes go straight between that
host and Ceph. Each side then reads the disk it knows (the source the original, the
destination the new one) and the two digests of the guest-visible bytes must be equal.
"""

from __future__ import annotations

import posixpath
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from typing import Any

from vmigrate.domxml.disks import file_disk_xml, rbd_disk_xml
from vmigrate.errors import UsageError
from vmigrate.facts import HostFacts, PoolFacts, VolumeInfo
from vmigrate.network_pools import same_ceph_pool

#: Pool types whose volumes are files in a directory: a state file, an exported image and a
#: raw read for a digest go there (cold/plan.py uses the same set).
FILE_POOL_TYPES = frozenset({"dir", "fs", "netfs"})


@dataclass(frozen=True)
class PoolChange:
    """One disk copied by QEMU into another kind of pool, and how each host opens it."""

    target: str  # vda
    kind: str  # import (file -> rbd) | export (rbd -> file)
    source_pool: str
    source: str  # import: the top file's path; export: CEPH_POOL/IMAGE
    destination_pool: str
    destination: str  # import: CEPH_POOL/IMAGE; export: the new file's path
    image: str  # the rbd image's name
    capacity: int  # the guest-visible size: the new disk's size
    allocation: int  # bytes the original holds (its whole chain): room the new one needs
    writer: str  # source | destination: whose QEMU copies
    create_pool: str  # the writer's pool the new volume is made in
    read_xml: str  # the original disk as the writer opens it
    write_xml: str  # the new disk as the writer opens it
    original_xml: str  # the original as the source opens it (for its digest)
    new_xml: str  # the new disk as the destination opens it (its digest, the domain XML)
    original_file: str | None  # the original is one raw file: digested as it is
    new_file: str | None  # the new disk is a raw file on the destination
    source_scratch_pool: str | None  # where the source reads the original into raw
    destination_scratch_pool: str | None  # where the destination reads the new disk into raw

    def describe(self) -> str:
        if self.kind == "import":
            return (
                f"{self.target}: {self.source} -> rbd image {self.destination} in pool "
                f"{self.destination_pool!r} (raw, written from the source through its pool "
                f"{self.create_pool!r})"
            )
        return (
            f"{self.target}: rbd image {self.source} -> {self.destination} in pool "
            f"{self.destination_pool!r} (raw, read from Ceph by the destination)"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ExportSource:
    """An rbd disk of the VM as each host's pools see it."""

    target: str
    image: str
    source_pool: str  # the source's pool that holds it
    destination_pool: str | None  # the destination's rbd pool that sees it, if any
    capacity: int
    allocation: int
    destination_error: str | None = None  # the destination's pools could not be listed


def image_name_for(path: str) -> str:
    """The new image's name: the file's, without its extension (vm-vda.qcow2 -> vm-vda)."""
    stem, _ext = posixpath.splitext(posixpath.basename(path))
    return stem or posixpath.basename(path)


def _directory_pool(
    pools: tuple[PoolFacts, ...], need: int, prefer: str | None, host: str, why: str
) -> str:
    """A directory pool with room for `need` bytes: `prefer` if it can, else the roomiest."""
    usable = [p for p in pools if p.active and p.type in FILE_POOL_TYPES and p.target_path]
    fitting = [p for p in usable if p.available >= need]
    for pool in fitting:
        if pool.name == prefer:
            return pool.name
    if fitting:
        return max(fitting, key=lambda p: p.available).name
    room = ", ".join(f"{p.name!r} {p.available >> 20} MiB free" for p in usable) or "none"
    raise UsageError(
        f"{host} needs a directory pool with {need >> 20} MiB free to {why} (it has: {room})",
        host=host,
        fix=f"free space in a directory pool on {host}, or define one (virsh pool-define-as)",
    )


def _pool(pools: tuple[PoolFacts, ...], name: str) -> PoolFacts | None:
    return next((p for p in pools if p.name == name and p.active), None)


def plan_import(
    target: str,
    chain: list[VolumeInfo],
    destination_pool: str,
    *,
    facts: tuple[HostFacts, HostFacts],
    rbd_pool_xml: dict[str, dict[str, str]],
    taken_images: frozenset[str] = frozenset(),
) -> PoolChange:
    """A local chain into the destination's rbd pool, written by the source's QEMU.

    `rbd_pool_xml` holds each side's active rbd pools ({"source": {name: xml}, ...})."""
    top = chain[0]
    source_host, destination_host = facts[0].ref.name, facts[1].ref.name
    destination_xml = rbd_pool_xml["destination"][destination_pool]
    writer = next(
        (
            name
            for name, xml in sorted(rbd_pool_xml["source"].items())
            if same_ceph_pool(xml, destination_xml)
        ),
        None,
    )
    if writer is None:
        raise UsageError(
            f"{target}: {source_host} has no active rbd pool on the Ceph pool that "
            f"{destination_host}'s pool {destination_pool!r} uses: the source's QEMU writes "
            "the new image, so it must reach that Ceph pool too",
            host=source_host,
            fix=f"define and start an rbd pool on {source_host} with the same monitors, Ceph "
            "pool and cephx user (and its secret), then retry",
        )
    image = image_name_for(top.path)
    if image in taken_images:
        raise UsageError(
            f"{target}: the Ceph pool already holds an image {image!r}; vmigrate never "
            "overwrites what it did not create",
            host=destination_host,
            fix="check it is not needed and remove it (virsh vol-delete --pool "
            f"{destination_pool} {image}), or move the VM under another name",
        )
    _require_secret(rbd_pool_xml["source"][writer], facts[0], writer)
    _require_secret(destination_xml, facts[1], destination_pool)
    allocation = sum(v.allocation for v in chain)
    standalone_raw = top.format == "raw" and len(chain) == 1
    original = file_disk_xml(top.path, top.format)
    ceph_pool = _ceph_pool_name(destination_xml)
    return PoolChange(
        target=target,
        kind="import",
        source_pool=top.pool,
        source=top.path,
        destination_pool=destination_pool,
        destination=f"{ceph_pool}/{image}",
        image=image,
        capacity=top.capacity,
        allocation=allocation,
        writer="source",
        create_pool=writer,
        read_xml=original,
        write_xml=rbd_disk_xml(rbd_pool_xml["source"][writer], image),
        original_xml=original,
        new_xml=rbd_disk_xml(destination_xml, image),
        original_file=top.path if standalone_raw else None,
        new_file=None,
        source_scratch_pool=None
        if standalone_raw
        else _directory_pool(
            facts[0].pools, allocation, top.pool, source_host, f"read {target} for its digest"
        ),
        destination_scratch_pool=_directory_pool(
            facts[1].pools,
            allocation,
            None,
            destination_host,
            f"read the new image of {target} back for its digest",
        ),
    )


def _require_secret(pool_xml: str, host: HostFacts, pool: str) -> None:
    """The cephx secret a pool authenticates with must exist on its host: QEMU opens the
    image with it (its value cannot be read back; the read on each side proves it)."""
    secret = ET.fromstring(pool_xml).find("source/auth/secret")
    if secret is None or host.secrets is None:
        return
    uuid, usage = secret.get("uuid"), secret.get("usage")
    if host.secret(uuid, usage) is None:
        name = uuid or usage
        raise UsageError(
            f"pool {pool!r} on {host.ref.name} authenticates with secret {name}, which "
            f"{host.ref.name} does not have: its QEMU could not open the image",
            host=host.ref.name,
            fix=f"on {host.ref.name}: virsh secret-define (a ceph secret with that "
            f"{'UUID' if uuid else 'usage'}) and virsh secret-set-value {name} with the "
            "client's key",
        )


def _ceph_pool_name(pool_xml: str) -> str:
    return ET.fromstring(pool_xml).findtext("source/name") or ""


def plan_export(
    disk: ExportSource,
    destination_pool: str,
    *,
    facts: tuple[HostFacts, HostFacts],
    rbd_pool_xml: dict[str, dict[str, str]],
) -> PoolChange:
    """An rbd image into a raw file in the destination's directory pool, written by the
    destination's QEMU through its own rbd pool."""
    source_host, destination_host = facts[0].ref.name, facts[1].ref.name
    pool = _pool(facts[1].pools, destination_pool)
    if pool is None or pool.type not in FILE_POOL_TYPES or not pool.target_path:
        kind = pool.type if pool is not None else "missing"
        raise UsageError(
            f"--pool-map {disk.source_pool}:{destination_pool}: pool {destination_pool!r} on "
            f"{destination_host} is {kind}, not a directory pool; an rbd image goes into a "
            "file there, or stays in Ceph",
            host=destination_host,
            fix="map it to a directory pool, or leave the disk in Ceph (no --pool-map for it)",
        )
    if disk.destination_pool is None:
        why = f" (listing its pools: {disk.destination_error})" if disk.destination_error else ""
        raise UsageError(
            f"{disk.target}: {destination_host} has no active rbd pool that holds image "
            f"{disk.image!r}{why}: its QEMU reads the image to write the file",
            host=destination_host,
            fix=f"define and start an rbd pool on {destination_host} on the same Ceph pool "
            "(with its secret), then retry",
        )
    source_xml = rbd_pool_xml["source"][disk.source_pool]
    reader_xml = rbd_pool_xml["destination"][disk.destination_pool]
    _require_secret(source_xml, facts[0], disk.source_pool)
    _require_secret(reader_xml, facts[1], disk.destination_pool)
    path = posixpath.join(pool.target_path, f"{disk.image}.img")
    new = file_disk_xml(path, "raw")
    return PoolChange(
        target=disk.target,
        kind="export",
        source_pool=disk.source_pool,
        source=f"{_ceph_pool_name(source_xml)}/{disk.image}",
        destination_pool=destination_pool,
        destination=path,
        image=disk.image,
        capacity=disk.capacity,
        allocation=disk.allocation,
        writer="destination",
        create_pool=destination_pool,
        read_xml=rbd_disk_xml(reader_xml, disk.image),
        write_xml=new,
        original_xml=rbd_disk_xml(source_xml, disk.image),
        new_xml=new,
        original_file=None,
        new_file=path,
        source_scratch_pool=_directory_pool(
            facts[0].pools,
            disk.allocation,
            None,
            source_host,
            f"read image {disk.image!r} for its digest",
        ),
        destination_scratch_pool=None,
    )


def pool_change_needs(changes: tuple[PoolChange, ...]) -> dict[str, int]:
    """Bytes each destination pool takes: the new disks (rbd and directory pools alike), and
    the raw reads of the new disks for their digests (all disks are read at once)."""
    need: dict[str, int] = {}
    for change in changes:
        need[change.destination_pool] = need.get(change.destination_pool, 0) + change.allocation
    return _add_scratch(need, changes, "destination")


def source_scratch_needs(changes: tuple[PoolChange, ...]) -> dict[str, int]:
    """Bytes each source pool takes at once for the raw reads the source digests."""
    return _add_scratch({}, changes, "source")


def _add_scratch(
    need: dict[str, int], changes: tuple[PoolChange, ...], side: str
) -> dict[str, int]:
    for change in changes:
        pool = change.source_scratch_pool if side == "source" else change.destination_scratch_pool
        if pool is not None:
            need[pool] = need.get(pool, 0) + change.allocation
    return need


def refuse_short_source_scratch(changes: tuple[PoolChange, ...], source: HostFacts) -> None:
    """The source reads every disk it digests into its pools at once: room for all."""
    for name, need in source_scratch_needs(changes).items():
        pool = _pool(source.pools, name)
        if pool is not None and pool.available < need:
            raise UsageError(
                f"{source.ref.name}'s pool {name!r} has {pool.available >> 20} MiB free, and "
                f"the raw reads of the disks for their digests take {need >> 20} MiB",
                host=source.ref.name,
                fix=f"free space in pool {name!r} on {source.ref.name}, or move fewer disks "
                "into another pool at once",
            )


def refuse_clashes(
    changes: tuple[PoolChange, ...], other_files: frozenset[str] = frozenset()
) -> None:
    """Two disks must never become one: two files of one name imported into one Ceph pool,
    two images exported to one path, or an export onto a file another disk is copied to."""
    seen: dict[str, str] = {}
    for change in changes:
        where = change.destination
        if where in seen or where in other_files:
            other = seen.get(where, "another disk's copy")
            raise UsageError(
                f"{change.target} and {other} would both become {where}",
                fix="rename one of the files (or images) first, or move them in two steps",
            )
        seen[where] = change.target
