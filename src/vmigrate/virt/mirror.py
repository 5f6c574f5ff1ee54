"""What QEMU's helper domains share (virt/pool_copy.py runs them): the kind of domain a host
can start, destroying one an interrupted run left, and libvirt's words when QEMU cannot open
or copy a disk."""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import libvirt

from vmigrate.errors import VmigrateError
from vmigrate.virt.connection import find_domain

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
