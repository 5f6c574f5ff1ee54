"""Storage questions only libvirt can answer: which pool holds a disk, and is a pool shared?

Shared storage is proven, not guessed from path names: a small probe volume with random
content is written through a pool on one host and read back through the other host's pools.
The probe is deleted afterwards; nothing else is changed on either host.
"""

from __future__ import annotations

import contextlib
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import libvirt

from vmigrate.domxml.domain import NetworkSource
from vmigrate.facts import NetworkVolume, ShareProbe, VolumeInfo, VolumeLocation
from vmigrate.network_pools import PoolMatch, is_the_volume, match_pool
from vmigrate.virt.errors import translate

PROBE_BYTES = 4096
PROBE_PREFIX = ".vmigrate-probe-"
# Refreshing these pool types is cheap and local; others (iSCSI, RBD) are left alone.
_REFRESHABLE = {"dir", "fs", "netfs"}


#: A file in no pool, or one that went away as we looked: "no pool holds it", not an error.
_NOT_IN_A_POOL = {libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_NO_STORAGE_POOL}


@contextlib.contextmanager
def _in_no_pool_is_none(path: str) -> Iterator[None]:
    """Swallow "no such volume/pool" (the caller then answers None); other errors leave
    translated."""
    try:
        yield
    except libvirt.libvirtError as err:
        if err.get_error_code() not in _NOT_IN_A_POOL:
            raise translate(err, host=None, doing=f"look up the volume {path}") from err


def locate_volume(conn: libvirt.virConnect, path: str) -> VolumeLocation | None:
    """The pool (and sizes) of the volume at `path` on this host, if any pool holds it."""
    with _in_no_pool_is_none(path):
        return _locate_volume(conn, path)
    return None


def _locate_volume(conn: libvirt.virConnect, path: str) -> VolumeLocation:
    volume = conn.storageVolLookupByPath(path)
    pool = volume.storagePoolLookupByVolume()
    _type, capacity, allocation = volume.info()
    root = ET.fromstring(pool.XMLDesc(0))
    return VolumeLocation(
        pool.name(), root.get("type", "?"), root.findtext("target/path"), capacity, allocation
    )


def volume_exists(conn: libvirt.virConnect, path: str) -> bool:
    try:
        conn.storageVolLookupByPath(path)
    except libvirt.libvirtError:
        return False
    return True


def _probe_xml(name: str) -> str:
    volume = ET.Element("volume")
    ET.SubElement(volume, "name").text = name
    ET.SubElement(volume, "capacity", unit="bytes").text = str(PROBE_BYTES)
    ET.SubElement(ET.SubElement(volume, "target"), "format", type="raw")
    return ET.tostring(volume, encoding="unicode")


def _read(conn: libvirt.virConnect, volume: libvirt.virStorageVol) -> bytes:
    stream = conn.newStream(0)
    chunks = []
    with _aborted_on_error(stream):
        volume.download(stream, 0, PROBE_BYTES, 0)
        while True:
            chunk = stream.recv(PROBE_BYTES)
            if not chunk:
                break
            chunks.append(chunk)
        stream.finish()
    return b"".join(chunks)


def _write(conn: libvirt.virConnect, volume: libvirt.virStorageVol, data: bytes) -> None:
    stream = conn.newStream(0)
    with _aborted_on_error(stream):
        volume.upload(stream, 0, len(data), 0)
        stream.send(data)
        stream.finish()


@contextlib.contextmanager
def _aborted_on_error(stream: libvirt.virStream) -> Iterator[None]:
    """A stream whose transfer failed is aborted, so the daemon frees it; the first error
    is the one raised."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
        raise


def probe_shared_pool(
    source: libvirt.virConnect, destination: libvirt.virConnect, source_pool: str
) -> ShareProbe:
    """Write a probe through `source_pool` and look for it, byte for byte, on the destination.

    A host that fails mid-probe gives a "not shared" answer that says why, never an error:
    the check then says the storage could not be proven shared."""
    try:
        pool = source.storagePoolLookupByName(source_pool)
        name = PROBE_PREFIX + secrets.token_hex(6)
        probe = pool.createXML(_probe_xml(name), 0)
    except libvirt.libvirtError as err:
        return ShareProbe(False, None, f"could not write a probe volume: {err.get_error_message()}")
    try:
        return _look_for_probe(source, destination, source_pool, probe, name)
    except libvirt.libvirtError as err:
        return ShareProbe(False, None, f"the probe failed: {err.get_error_message()}")
    finally:
        # Clean-up errors must not hide the answer (or the first error): a left-over probe
        # volume is tiny, named .vmigrate-probe-*, and safe to delete by hand.
        with contextlib.suppress(libvirt.libvirtError):
            probe.delete(0)
        with contextlib.suppress(libvirt.libvirtError):
            _refresh_all(destination)


def _refresh_all(conn: libvirt.virConnect) -> None:
    for candidate in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        if ET.fromstring(candidate.XMLDesc(0)).get("type") in _REFRESHABLE:
            with contextlib.suppress(libvirt.libvirtError):  # a pool that went inactive
                candidate.refresh(0)


def _look_for_probe(
    source: libvirt.virConnect,
    destination: libvirt.virConnect,
    source_pool: str,
    probe: libvirt.virStorageVol,
    name: str,
) -> ShareProbe:
    content = secrets.token_bytes(PROBE_BYTES)
    _write(source, probe, content)
    for candidate in destination.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        if ET.fromstring(candidate.XMLDesc(0)).get("type") not in _REFRESHABLE:
            continue
        try:
            candidate.refresh(0)
            seen = candidate.storageVolLookupByName(name)
        except libvirt.libvirtError:
            continue
        if _read(destination, seen) == content:
            return ShareProbe(
                True,
                candidate.name(),
                f"a probe written through pool {source_pool!r} was read back "
                f"byte for byte through pool {candidate.name()!r}",
            )
    return ShareProbe(
        False,
        None,
        f"a probe written through pool {source_pool!r} is not "
        "visible in any pool of the destination",
    )


def volume_info(conn: libvirt.virConnect, path: str) -> VolumeInfo | None:
    """The volume at `path` with its pool, format, sizes and backing file; None if no pool
    holds it."""
    with _in_no_pool_is_none(path):
        return _volume_info(conn, path)
    return None


def _volume_info(conn: libvirt.virConnect, path: str) -> VolumeInfo:
    volume = conn.storageVolLookupByPath(path)
    pool = volume.storagePoolLookupByVolume()
    root = ET.fromstring(volume.XMLDesc(0))
    pool_root = ET.fromstring(pool.XMLDesc(0))
    fmt = root.find("target/format")
    _type, capacity, allocation = volume.info()
    return VolumeInfo(
        path=path,
        name=volume.name(),
        pool=pool.name(),
        pool_path=pool_root.findtext("target/path"),
        format=fmt.get("type", "raw") if fmt is not None else "raw",
        capacity=capacity,
        allocation=allocation,
        physical=int(root.findtext("physical") or capacity),
        backing_path=root.findtext("backingStore/path"),
    )


def volume_chain(conn: libvirt.virConnect, path: str) -> list[VolumeInfo] | None:
    """The volume at `path` and its backing files, top first; None if one is in no pool."""
    chain: list[VolumeInfo] = []
    current: str | None = path
    while current is not None:
        info = volume_info(conn, current)
        if info is None or len(chain) > 32:
            return None
        chain.append(info)
        current = info.backing_path
    return chain


def pool_by_name(conn: libvirt.virConnect, name: str) -> libvirt.virStoragePool | None:
    """The pool, or None if the host has none of that name (any other error is raised)."""
    try:
        return conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
            return None
        raise


def _volume_in(pool: libvirt.virStoragePool, match: PoolMatch) -> tuple[str, int] | None:
    """The matched volume in the pool's list: its name and size. The list is not refreshed:
    a failed refresh makes libvirt stop the pool, and a check must never change a host."""
    for volume in pool.listAllVolumes(0):
        if is_the_volume(match, volume.name(), volume.path()):
            return volume.name(), int(volume.info()[1])
    return None


def find_network_volume(conn: libvirt.virConnect, source: NetworkSource) -> NetworkVolume:
    """Which of this host's active pools reaches the network disk's server and volume set,
    and the volume there (same name, its size), as the pools last listed them. A libvirt
    error (the host, a pool's server, its secret) is the answer's `error`, not a failure."""
    looked_at: list[str] = []
    secret: str | None = None
    usage: str | None = None
    try:
        for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
            match = match_pool(pool.XMLDesc(0), source)
            if match is None:
                continue
            looked_at.append(pool.name())
            secret, usage = match.secret_uuid, match.secret_usage
            found = _volume_in(pool, match)
            if found is not None:
                return NetworkVolume(
                    pool.name(),
                    found[0],
                    found[1],
                    secret,
                    tuple(looked_at),
                    pool_secret_usage=usage,
                )
    except libvirt.libvirtError as err:
        return NetworkVolume(
            None, None, None, secret, tuple(looked_at), error=err.get_error_message()
        )
    return NetworkVolume(None, None, None, None, tuple(looked_at))
