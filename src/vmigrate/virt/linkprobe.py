"""Measuring the bandwidth to a destination host through libvirt, when nobody gave it.

An upload of random data into a temporary volume of the destination, for a couple of
seconds: the rate a migration stream from this machine to the destination gets. When
vmigrate runs on the source host that is the migration's path; elsewhere it is a lower
bound, and the report says so.
"""

from __future__ import annotations

import contextlib
import os
import time
import xml.etree.ElementTree as ET

import libvirt

from vmigrate.virt.errors import libvirt_errors

CHUNK = 4 << 20
PROBE_NAME = ".vmigrate-bandwidth-probe"


def measure_upload(
    conn: libvirt.virConnect, *, host: str, seconds: float = 2.0, max_bytes: int = 512 << 20
) -> float | None:
    """Bytes per second into the destination, or None when no pool has room to try."""
    with libvirt_errors(host=host, doing="measure the bandwidth with a probe upload"):
        return _measure_upload(conn, seconds, max_bytes)


def _measure_upload(conn: libvirt.virConnect, seconds: float, max_bytes: int) -> float | None:
    pool = _roomy_pool(conn, 2 * max_bytes)
    if pool is None:
        return None
    volume_xml = ET.Element("volume")
    ET.SubElement(volume_xml, "name").text = PROBE_NAME
    ET.SubElement(volume_xml, "capacity", unit="bytes").text = str(max_bytes)
    ET.SubElement(volume_xml, "allocation", unit="bytes").text = "0"
    ET.SubElement(ET.SubElement(volume_xml, "target"), "format", type="raw")
    with contextlib.suppress(libvirt.libvirtError):  # left by an interrupted probe
        pool.storageVolLookupByName(PROBE_NAME).delete(0)
    volume = pool.createXML(ET.tostring(volume_xml, encoding="unicode"), 0)
    try:
        stream = conn.newStream(0)
        volume.upload(stream, 0, max_bytes, 0)
        data = os.urandom(CHUNK)  # incompressible, like guest memory
        sent, started = 0, time.monotonic()
        try:
            while sent + CHUNK <= max_bytes and time.monotonic() - started < seconds:
                sent += stream.send(data)
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
        return sent / max(time.monotonic() - started, 1e-6)
    finally:
        # Never let the clean-up hide why the probe failed; a left-over probe is deleted
        # by the next one.
        with contextlib.suppress(libvirt.libvirtError):
            volume.delete(0)


def _roomy_pool(conn: libvirt.virConnect, room: int) -> libvirt.virStoragePool | None:
    for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        kind = ET.fromstring(pool.XMLDesc(0)).get("type")
        if kind in ("dir", "fs", "netfs") and pool.info()[3] >= room:
            return pool
    return None
