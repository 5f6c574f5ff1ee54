"""QEMU copies a disk into another kind of pool: a paused helper domain and a block copy
(domxml/disks.py says why), and the digest of a disk's guest-visible bytes read the same way.

The helper is started with AUTODESTROY: if vmigrate dies, libvirt destroys it when our
connection closes, so no helper outlives the job that made it.
"""

from __future__ import annotations

import contextlib
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator

import libvirt

from vmigrate.domxml.disks import file_disk_xml, helper_domain_xml
from vmigrate.errors import VmigrateError
from vmigrate.failpoints import failpoint
from vmigrate.virt.connection import find_domain
from vmigrate.virt.pool_volumes import create_raw_volume, delete_pool_volume
from vmigrate.virt.streams import volume_digest

Progress = Callable[[int, int], None]
POLL_S = 0.2
#: A block copy whose position has not moved for this long is given up (its server is gone).
STALL_S = 120.0


class MirrorError(VmigrateError):
    """QEMU could not copy the disk."""


def helper_type(conn: libvirt.virConnect) -> str:
    """KVM where the host offers it (some distributions build QEMU without TCG), else TCG:
    the helper's CPU never runs, so either serves."""
    caps = ET.fromstring(conn.getCapabilities())
    arch = caps.findtext("host/cpu/arch")
    types: set[str] = set()
    for guest in caps.findall("guest"):
        offered = guest.find("arch")
        if (
            guest.findtext("os_type") == "hvm"
            and offered is not None
            and offered.get("name") == arch
        ):
            types |= {d.get("type", "") for d in offered.findall("domain")}
    return "kvm" if "kvm" in types else "qemu"


def destroy_helper(conn: libvirt.virConnect, name: str) -> bool:
    """Stop a helper domain left by an interrupted run; False if there is none."""
    domain = find_domain(conn, name)
    if domain is None:
        return False
    with contextlib.suppress(libvirt.libvirtError):  # it stopped as we looked
        domain.destroy()
    return True


@contextlib.contextmanager
def _helper(conn: libvirt.virConnect, name: str, disk_xml: str) -> Iterator[libvirt.virDomain]:
    destroy_helper(conn, name)
    flags = libvirt.VIR_DOMAIN_START_PAUSED | libvirt.VIR_DOMAIN_START_AUTODESTROY
    domain = conn.createXML(helper_domain_xml(name, disk_xml, helper_type(conn)), flags)
    try:
        yield domain
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            domain.destroy()


@contextlib.contextmanager
def qemu_errors(host: str, doing: str) -> Iterator[None]:
    """libvirt's words when QEMU cannot open or copy a disk, with what to check."""
    try:
        yield
    except libvirt.libvirtError as err:
        raise MirrorError(
            f"{doing} on {host}: {err.get_error_message() or err}",
            host=host,
            fix=f"check that {host} reaches the disk's storage servers (vmigrate check) and "
            "that the secret its rbd pool names holds the cephx user's key there (virsh "
            "secret-set-value); libvirt keeps secrets per host",
        ) from err


def mirror_disk(
    conn: libvirt.virConnect,
    helper: str,
    read_xml: str,
    write_xml: str,
    *,
    host: str,
    progress: Progress | None = None,
) -> float:
    """Copy every guest-visible byte of `read_xml` into the existing `write_xml` disk, with
    this host's QEMU; the seconds it took. The copy is complete only once QEMU pivots to it
    (it refuses before the two are in sync), so a finished call means a whole copy."""
    started = time.monotonic()
    with qemu_errors(host, "copying the disk"), _helper(conn, helper, read_xml) as domain:
        domain.blockCopy("vda", write_xml, {}, libvirt.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT)
        last, moved_at = -1, time.monotonic()
        while True:
            info = domain.blockJobInfo("vda", 0)
            if not info:
                raise MirrorError(f"QEMU's block copy in helper {helper} stopped half-way")
            cur, end = int(info["cur"]), int(info["end"])
            if progress is not None:
                progress(cur, end)
            if end and cur == end and _pivoted(domain):
                break
            if cur != last:
                last, moved_at = cur, time.monotonic()
            elif time.monotonic() - moved_at > STALL_S:
                with contextlib.suppress(libvirt.libvirtError):
                    domain.blockJobAbort("vda", 0)
                raise MirrorError(
                    f"QEMU's block copy in helper {helper} made no progress for {STALL_S:g} s",
                    fix="check that the host reaches its storage servers, then resume the job",
                )
            time.sleep(POLL_S)
    return time.monotonic() - started


def _pivoted(domain: libvirt.virDomain) -> bool:
    """Ask QEMU to complete the copy; False while the copy is not yet in sync."""
    try:
        domain.blockJobAbort("vda", libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_BLOCK_COPY_ACTIVE:
            return False
        raise
    return True


def content_digest(
    conn: libvirt.virConnect,
    disk_xml: str,
    *,
    file: str | None,
    scratch: tuple[str, str] | None,
    capacity: int,
    helper: str,
    host: str,
) -> str:
    """The digest of a disk's guest-visible bytes on this host: of the raw `file` as it is,
    or of a raw copy QEMU makes in `scratch` (pool, name), removed afterwards."""
    with qemu_errors(host, "reading the disk for its digest"):
        if file is not None:
            return volume_digest(conn, conn.storageVolLookupByPath(file))
        if scratch is None:
            raise MirrorError("no directory pool to read the disk into for its digest")
        pool, name = scratch
        delete_pool_volume(conn, pool, name)  # left by an interrupted run
        volume = create_raw_volume(conn, pool, name, capacity)
        failpoint("cold.verify-pool-change.mid-read")
        try:
            target = file_disk_xml(volume.path(), "raw")
            mirror_disk(conn, helper, disk_xml, target, host=host)
            return volume_digest(conn, volume)
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                volume.delete(0)
