"""Where a VM really is: running and defined on which hosts (the exactly-one-host check)."""

from __future__ import annotations

import libvirt

from vmigrate.errors import VmigrateError
from vmigrate.model import Placement
from vmigrate.virt.connection import domain_state, find_domain


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
