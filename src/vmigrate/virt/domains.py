"""Domain and volume operations a cold move needs, one libvirt call each, with waiting."""

from __future__ import annotations

import contextlib
import time
import xml.etree.ElementTree as ET
from functools import partial

import libvirt

from vmigrate.virt.connection import (
    domain_state,
    find_domain,
    find_domain_by_uuid,
    unless_vanished,
)
from vmigrate.virt.errors import libvirt_errors


def shutdown(domain: libvirt.virDomain, *, timeout: float) -> bool:
    """Ask the guest to shut down (ACPI) and wait; False if it is still running at the end."""
    domain.shutdown()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _active(domain):
            return True
        time.sleep(0.5)
    return not _active(domain)


def _active(domain: libvirt.virDomain) -> bool:
    try:
        return bool(domain.isActive())
    except libvirt.libvirtError:
        return False  # a transient domain is gone once it stops


def power_off(domain: libvirt.virDomain) -> None:
    domain.destroy()


def save_state(domain: libvirt.virDomain, path: str) -> None:
    """Save memory and device state to `path` (the domain stops)."""
    domain.saveFlags(path, None, 0)


def restore_state(conn: libvirt.virConnect, path: str, xml: str | None) -> None:
    conn.restoreFlags(path, xml, libvirt.VIR_DOMAIN_SAVE_RUNNING)


def is_running(conn: libvirt.virConnect, vm: str) -> bool:
    domain = find_domain(conn, vm)
    return domain is not None and domain_state(domain) == "running"


def refresh_pool(conn: libvirt.virConnect, pool: str) -> None:
    conn.storagePoolLookupByName(pool).refresh(0)


def pool_available(conn: libvirt.virConnect, pool: str) -> int:
    """Free bytes in a pool now (refreshed first: other writers may have used some)."""
    handle = conn.storagePoolLookupByName(pool)
    handle.refresh(0)
    return int(handle.info()[3])


def physical_size(conn: libvirt.virConnect, path: str) -> int:
    """The file's size on disk as the host sees it (a verbatim copy writes this much)."""
    volume = conn.storageVolLookupByPath(path)
    return int(volume.infoFlags(libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)[2])


def flatten_volume(conn: libvirt.virConnect, pool: str, path: str, name: str) -> str:
    """A new volume `name` in `pool` with the guest-visible content of the chain at `path`.

    libvirt's createXMLFrom runs qemu-img convert, which reads through the backing chain.
    """
    source = conn.storageVolLookupByPath(path)
    fmt = ET.fromstring(source.XMLDesc(0)).find("target/format")
    volume = ET.Element("volume")
    ET.SubElement(volume, "name").text = name
    ET.SubElement(volume, "capacity", unit="bytes").text = str(source.info()[1])
    ET.SubElement(
        ET.SubElement(volume, "target"),
        "format",
        type=fmt.get("type", "qcow2") if fmt is not None else "qcow2",
    )
    created = conn.storagePoolLookupByName(pool).createXMLFrom(
        ET.tostring(volume, encoding="unicode"), source, 0
    )
    return str(created.path())


def create_file_volume(conn: libvirt.virConnect, pool: str, name: str, size: int) -> str:
    """An empty sparse file to copy into verbatim (its real format is in its bytes); its
    path."""
    volume = ET.Element("volume")
    ET.SubElement(volume, "name").text = name
    ET.SubElement(volume, "capacity", unit="bytes").text = str(size)
    ET.SubElement(volume, "allocation", unit="bytes").text = "0"
    ET.SubElement(ET.SubElement(volume, "target"), "format", type="raw")
    xml = ET.tostring(volume, encoding="unicode")
    return str(conn.storagePoolLookupByName(pool).createXML(xml, 0).path())


def create_image(
    conn: libvirt.virConnect,
    pool: str,
    name: str,
    *,
    fmt: str,
    capacity: int,
    backing: tuple[str, str] | None = None,
) -> libvirt.virStorageVol:
    """An empty image of `fmt` and `capacity`, on top of `backing` (path, format) if given."""
    volume = ET.Element("volume")
    ET.SubElement(volume, "name").text = name
    ET.SubElement(volume, "capacity", unit="bytes").text = str(capacity)
    ET.SubElement(volume, "allocation", unit="bytes").text = "0"
    ET.SubElement(ET.SubElement(volume, "target"), "format", type=fmt)
    if backing is not None:
        store = ET.SubElement(volume, "backingStore")
        ET.SubElement(store, "path").text = backing[0]
        ET.SubElement(store, "format", type=backing[1])
    return conn.storagePoolLookupByName(pool).createXML(ET.tostring(volume, encoding="unicode"), 0)


def volume_at(conn: libvirt.virConnect, path: str) -> libvirt.virStorageVol | None:
    """The volume at `path`, or None if there is none; a host that does not answer raises."""
    try:
        return conn.storageVolLookupByPath(path)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return None
        raise


def volume_sizes_at(conn: libvirt.virConnect, path: str) -> tuple[int, int] | None:
    """(capacity, allocation) in bytes of the volume at `path` as it is now (libvirt stats
    the file again), or None if there is none."""
    volume = volume_at(conn, path)
    if volume is None:
        return None
    info = volume.info()
    return int(info[1]), int(info[2])


def delete_volume(conn: libvirt.virConnect, path: str) -> bool:
    """Delete the volume at `path`: False if there is none; a refusal is a translated error."""
    with libvirt_errors(host=None, doing=f"delete {path}"):
        volume = volume_at(conn, path)
        if volume is None:
            return False
        volume.delete(0)
    return True


def domain_using(conn: libvirt.virConnect, path: str, *, host: str | None = None) -> str | None:
    """The domain whose disks (or their backing chains) name `path`, if any.

    A domain gone since the listing uses nothing; any other error reading one raises
    (translated, naming `host`): "nobody uses it" is never claimed from a failed read."""
    with libvirt_errors(host=host, doing=f"look for a VM that uses {path}"):
        for domain in conn.listAllDomains(0):
            if path in (unless_vanished(partial(domain.XMLDesc, 0)) or ""):
                return str(domain.name())
    return None


def is_active(domain: libvirt.virDomain, *, host: str | None = None) -> bool:
    """Whether the domain runs (or is paused); a domain gone meanwhile (a transient one
    that stopped) does not. A host that does not answer raises, translated: "not running"
    is never claimed from a failed read."""
    with libvirt_errors(host=host, doing="ask whether the VM runs"):
        return bool(unless_vanished(domain.isActive))


def is_persistent(domain: libvirt.virDomain, *, host: str | None = None) -> bool:
    with libvirt_errors(host=host, doing="ask whether the VM is defined"):
        return bool(domain.isPersistent())


def uuid_of(domain: libvirt.virDomain) -> str:
    return str(domain.UUIDString())


def definition(
    domain: libvirt.virDomain,
    *,
    inactive: bool = False,
    migratable: bool = False,
    host: str | None = None,
) -> str:
    """The domain's XML: the live one, the persistent one (`inactive`), or the live one as
    a destination must see it (`migratable`). Without secrets (see secure_definition)."""
    flags = (libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0) | (
        libvirt.VIR_DOMAIN_XML_MIGRATABLE if migratable else 0
    )
    with libvirt_errors(host=host, doing="read the VM's definition"):
        return str(domain.XMLDesc(flags))


def define(conn: libvirt.virConnect, xml: str, *, host: str | None = None) -> None:
    with libvirt_errors(host=host, doing="define the VM"):
        conn.defineXML(xml)


def start(domain: libvirt.virDomain, *, host: str | None = None) -> None:
    """Start a defined domain."""
    with libvirt_errors(host=host, doing="start the VM"):
        domain.create()


def start_transient(conn: libvirt.virConnect, xml: str, *, host: str | None = None) -> None:
    """Start a domain from `xml` without defining it (a transient VM comes back so)."""
    with libvirt_errors(host=host, doing="start the VM from its definition"):
        conn.createXML(xml, 0)


def pool_names(conn: libvirt.virConnect, *, host: str | None = None) -> tuple[str, ...]:
    with libvirt_errors(host=host, doing="list the storage pools"):
        return tuple(str(p.name()) for p in conn.listAllStoragePools(0))


def undefine(domain: libvirt.virDomain, flags: int) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        if not domain.isPersistent():
            return
    domain.undefineFlags(flags)


def secure_definition(conn: libvirt.virConnect, uuid: str, *, host: str) -> str | None:
    """The definition of the domain with this UUID as it is now, secrets included
    (VIR_DOMAIN_XML_SECURE; the persistent one if it has one), or None if it is gone.
    Its text holds console passwords: never store, log or print it."""
    domain = find_domain_by_uuid(conn, uuid, host=host)
    if domain is None:
        return None
    with libvirt_errors(host=host, doing="read the VM's definition"):
        return unless_vanished(partial(_secure_xml, domain))


def _secure_xml(domain: libvirt.virDomain) -> str:
    inactive = libvirt.VIR_DOMAIN_XML_INACTIVE if domain.isPersistent() else 0
    return str(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE | inactive))


# ---- the job's marker in a domain's metadata ---------------------------------------------
#: A cold move defines the VM on the destination with this element in its <metadata>, so a
#: run interrupted before it journalled the define knows the domain is its own (and not one
#: someone else defined with the same UUID). Removed when the job is done.
JOB_NAMESPACE = "https://vmigrate.dev/xmlns/job/1"
JOB_PREFIX = "vmigratejob"
JOB_ELEMENT = "job"


def with_job_marker(xml: str, job_id: int, token: str) -> str:
    """`xml` with this job's marker in its <metadata> (any other job's marker replaced)."""
    root = ET.fromstring(xml)
    metadata = root.find("metadata")
    if metadata is None:
        metadata = ET.Element("metadata")
        position = next(
            (
                index
                for index, child in enumerate(root)
                if child.tag not in ("name", "uuid", "genid", "title", "description")
            ),
            len(root),
        )
        root.insert(position, metadata)
    for old in metadata.findall(f"{{{JOB_NAMESPACE}}}{JOB_ELEMENT}"):
        metadata.remove(old)
    ET.register_namespace(JOB_PREFIX, JOB_NAMESPACE)
    ET.SubElement(
        metadata, f"{{{JOB_NAMESPACE}}}{JOB_ELEMENT}", {"id": str(job_id), "token": token}
    )
    return ET.tostring(root, encoding="unicode")


def job_marker(domain: libvirt.virDomain) -> str | None:
    """The token of the job marker the domain carries (its live definition, else its
    persistent one), or None."""
    for flags in (libvirt.VIR_DOMAIN_AFFECT_CURRENT, libvirt.VIR_DOMAIN_AFFECT_CONFIG):
        try:
            text = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, JOB_NAMESPACE, flags)
        except libvirt.libvirtError as err:
            if err.get_error_code() in (
                libvirt.VIR_ERR_NO_DOMAIN_METADATA,
                libvirt.VIR_ERR_INVALID_ARG,  # a transient domain has no persistent one
                libvirt.VIR_ERR_OPERATION_INVALID,
            ):
                continue
            raise
        token = ET.fromstring(text).get("token")
        if token:
            return token
    return None


def remove_job_marker(domain: libvirt.virDomain) -> None:
    """Remove the job marker from the domain's definitions (live and persistent)."""
    flags = [libvirt.VIR_DOMAIN_AFFECT_CONFIG] if domain.isPersistent() else []
    if domain.isActive():
        flags.append(libvirt.VIR_DOMAIN_AFFECT_LIVE)
    for flag in flags:
        domain.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, None, None, JOB_NAMESPACE, flag)
