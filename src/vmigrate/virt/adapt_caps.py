"""What `cold --adapt` reads of a destination: its capabilities (machine types per arch, with
their aliases) and its domain capabilities for the guest's arch and domain type, with the
host's default machine (CPU models, device enums). Plain XML for domxml/adapt.py."""

from __future__ import annotations

import libvirt

from vmigrate.virt.errors import libvirt_errors


def destination_capabilities(
    conn: libvirt.virConnect, *, host: str, arch: str, virt_type: str
) -> tuple[str, str | None]:
    """(capabilities XML, domain capabilities XML or None when the host will not say)."""
    with libvirt_errors(host=host, doing="read the host's capabilities"):
        capabilities = str(conn.getCapabilities())
    try:
        domcaps = str(conn.getDomainCapabilities(None, arch, None, virt_type, 0))
    except libvirt.libvirtError:  # e.g. no emulator for that arch: the machine says why
        domcaps = None
    return capabilities, domcaps
