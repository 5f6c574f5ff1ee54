"""Volumes named by pool and name, the way rbd pools know them (they have no file paths)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt


def pool_type(pool: libvirt.virStoragePool) -> str:
    return ET.fromstring(pool.XMLDesc(0)).get("type", "")


def create_raw_volume(
    conn: libvirt.virConnect, pool: str, name: str, capacity: int
) -> libvirt.virStorageVol:
    """A new raw volume of `capacity` bytes, sparse where the pool can (an rbd image is raw
    and thin by nature, and its pool takes neither an allocation nor a format)."""
    handle = conn.storagePoolLookupByName(pool)
    volume = ET.Element("volume")
    ET.SubElement(volume, "name").text = name
    ET.SubElement(volume, "capacity", unit="bytes").text = str(capacity)
    if pool_type(handle) != "rbd":
        ET.SubElement(volume, "allocation", unit="bytes").text = "0"
        ET.SubElement(ET.SubElement(volume, "target"), "format", type="raw")
    return handle.createXML(ET.tostring(volume, encoding="unicode"), 0)


def create_scratch_file(conn: libvirt.virConnect, pool: str, name: str, capacity: int) -> str:
    """A new sparse raw file in a directory pool (one left by an interrupted run goes first);
    its path."""
    delete_pool_volume(conn, pool, name)
    return str(create_raw_volume(conn, pool, name, capacity).path())


def grow_pool_volume(conn: libvirt.virConnect, pool: str, name: str, capacity: int) -> None:
    """Grow volume `name` of `pool` to `capacity` bytes (nothing if it is that big)."""
    volume = conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
    if int(volume.info()[1]) < capacity:
        volume.resize(capacity, 0)


def find_pool_volume(
    conn: libvirt.virConnect, pool: str, name: str
) -> libvirt.virStorageVol | None:
    """Volume `name` of `pool` as the pool last listed it, or None."""
    try:
        return conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return None
        raise


def delete_pool_volume(conn: libvirt.virConnect, pool: str, name: str) -> bool:
    """Delete volume `name` of `pool`; False if it is not there. A directory pool is listed
    afresh first; an rbd pool is not (a refresh that fails stops the pool), and it lists
    what was made through it."""
    handle = conn.storagePoolLookupByName(pool)
    if pool_type(handle) != "rbd":
        handle.refresh(0)
    volume = find_pool_volume(conn, pool, name)
    if volume is None:
        return False
    volume.delete(0)
    return True


def volume_sizes(conn: libvirt.virConnect, pool: str, name: str) -> tuple[int, int] | None:
    """(capacity, allocation) of volume `name` in `pool` as last listed; None if absent."""
    volume = find_pool_volume(conn, pool, name)
    if volume is None:
        return None
    info = volume.info()
    return int(info[1]), int(info[2])


def volume_exists_now(conn: libvirt.virConnect, pool: str, name: str) -> bool:
    """Whether `pool` holds `name` now. An rbd pool's list is only as new as its last
    refresh (an image deleted through another host stays listed), and a refresh that fails
    stops the pool; reading the one volume's size asks Ceph itself, and changes nothing."""
    volume = find_pool_volume(conn, pool, name)
    if volume is None:
        return False
    try:
        volume.info()
    except libvirt.libvirtError as err:
        if "No such file or directory" in (err.get_error_message() or ""):
            return False
        raise
    return True


def active_rbd_pools(conn: libvirt.virConnect) -> dict[str, str]:
    """This host's active rbd pools: name -> pool XML."""
    pools = conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)
    xml = {p.name(): p.XMLDesc(0) for p in pools}
    return {name: text for name, text in xml.items() if ET.fromstring(text).get("type") == "rbd"}
