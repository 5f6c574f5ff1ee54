"""Where a VM really is: running and defined on which hosts (the exactly-one-host check)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import libvirt

from vmigrate.errors import VmigrateError
from vmigrate.model import Placement
from vmigrate.virt.connection import (
    domain_state,
    find_domain,
    find_domain_by_uuid,
    unless_vanished,
)
from vmigrate.virt.errors import libvirt_errors


def locate(vm: str, hosts: dict[str, libvirt.virConnect]) -> Placement:
    states, persistent = {}, {}
    for name, conn in hosts.items():
        try:
            domain = find_domain(conn, vm)
            if domain is None:
                continue
            persistent[name] = bool(domain.isPersistent())
            states[name] = domain_state(domain)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:  # vanished as we looked
                states.pop(name, None)
                persistent.pop(name, None)
                continue
            states[name] = f"unknown ({err.get_error_message()})"
        except VmigrateError as err:  # find_domain's, translated
            states[name] = f"unknown ({err.message})"
    return Placement(vm, states, persistent)


#: How a shut-off domain came to be off (virDomainShutoffReason).
_SHUTOFF_REASONS = {
    libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN: "unknown",
    libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: "shut down",
    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: "destroyed",
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED: "migrated",
    libvirt.VIR_DOMAIN_SHUTOFF_SAVED: "saved",
    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: "failed",
    libvirt.VIR_DOMAIN_SHUTOFF_FROM_SNAPSHOT: "from snapshot",
}


@dataclass(frozen=True)
class Seen:
    """One host's domain with a given UUID, as it is now."""

    host: str
    name: str
    state: str  # running, paused, shut off, ...
    active: bool
    persistent: bool
    shutoff_reason: str  # shut off: how it got there (saved, shut down, ...); else ""


def look_by_uuid(conn: libvirt.virConnect, uuid: str, *, host: str) -> Seen | None:
    """The domain with this UUID on `host` now, or None if it has none (gone as we looked
    counts as none); any other error raises, naming the host."""
    domain = find_domain_by_uuid(conn, uuid, host=host)
    if domain is None:
        return None
    with libvirt_errors(host=host, doing=f"read the state of the VM with UUID {uuid}"):
        return unless_vanished(partial(_seen, domain, host))


def _seen(domain: libvirt.virDomain, host: str) -> Seen:
    state, reason = domain.state()
    off = state == libvirt.VIR_DOMAIN_SHUTOFF
    return Seen(
        host=host,
        name=str(domain.name()),
        state=domain_state(domain),
        active=bool(domain.isActive()),
        persistent=bool(domain.isPersistent()),
        shutoff_reason=_SHUTOFF_REASONS.get(reason, f"reason {reason}") if off else "",
    )


def active_with_uuid(uuid: str, hosts: dict[str, libvirt.virConnect]) -> dict[str, Seen]:
    """The hosts where a domain with this UUID is active (running, paused, ...).

    Compared by UUID, not name: a copy defined under another name still writes the same disks.
    A host that cannot answer raises (naming it): absence is never claimed from a failed look.
    """
    found = {}
    for host, conn in hosts.items():
        seen = look_by_uuid(conn, uuid, host=host)
        if seen is not None and seen.active:
            found[host] = seen
    return found
