"""The libvirt side of `vmigrate recover`: see the VM on a host, wait out its job, act."""

from __future__ import annotations

import time

import libvirt

from vmigrate.model import DomainView, Step
from vmigrate.virt.connection import UNDEFINE_KEEP_NVRAM, domain_state, find_domain
from vmigrate.virt.errors import libvirt_errors, translate
from vmigrate.virt.facts import active_job

_PAUSED = {
    libvirt.VIR_DOMAIN_PAUSED_MIGRATION: "migration",
    libvirt.VIR_DOMAIN_PAUSED_POSTCOPY: "postcopy",
    libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED: "postcopy-failed",
    libvirt.VIR_DOMAIN_PAUSED_STARTING_UP: "starting up",
    libvirt.VIR_DOMAIN_PAUSED_USER: "user",
    libvirt.VIR_DOMAIN_PAUSED_IOERROR: "I/O error",
}
_RUNNING = {
    libvirt.VIR_DOMAIN_RUNNING_POSTCOPY: "postcopy",
    libvirt.VIR_DOMAIN_RUNNING_POSTCOPY_FAILED: "postcopy-failed",
    libvirt.VIR_DOMAIN_RUNNING_MIGRATED: "migrated",
    libvirt.VIR_DOMAIN_RUNNING_MIGRATION_CANCELED: "migration canceled",
}


def observe(conn: libvirt.virConnect, host: str, uri: str, vm: str) -> DomainView:
    """How the VM is on this host; a VM that vanishes as we look is absent, not an error."""
    try:
        return _observe(conn, host, uri, vm)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return DomainView(host, uri, exists=False)
        raise translate(err, host=host, vm=vm, doing="look at the VM") from err


def _observe(conn: libvirt.virConnect, host: str, uri: str, vm: str) -> DomainView:
    domain = find_domain(conn, vm)
    if domain is None:
        return DomainView(host, uri, exists=False)
    state, reason = domain.state()
    names = _PAUSED if state == libvirt.VIR_DOMAIN_PAUSED else _RUNNING
    return DomainView(
        host,
        uri,
        exists=True,
        state=domain_state(domain),
        reason=names.get(reason, "") if state in (1, 3) else "",
        persistent=bool(domain.isPersistent()),
        uuid=domain.UUIDString(),
        job=active_job(domain) if domain.isActive() else None,
    )


def wait_for_jobs(
    conns: dict[str, libvirt.virConnect], vm: str, *, timeout_s: float
) -> dict[str, str]:
    """Wait while a libvirt job (the migration itself) still runs; returns what still runs."""
    deadline = time.monotonic() + timeout_s
    while True:
        busy = {}
        for host, conn in conns.items():
            job = _running_job(conn, host, vm)
            if job:
                busy[host] = job
        if not busy or time.monotonic() > deadline:
            return busy
        time.sleep(0.5)


def _running_job(conn: libvirt.virConnect, host: str, vm: str) -> str | None:
    """The libvirt job the VM runs on this host; none if it has none or vanished meanwhile
    (a half-received guest goes when its migration ends)."""
    try:
        domain = find_domain(conn, vm)
        return active_job(domain) if domain is not None and domain.isActive() else None
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise translate(err, host=host, vm=vm, doing="look for a running job") from err


def apply(
    step: Step,
    vm: str,
    src: libvirt.virConnect,
    dst: libvirt.virConnect,
    *,
    source_name: str,
    destination_name: str,
) -> None:
    """One recovery step; a host's refusal leaves as a translated error naming the step."""
    host = destination_name if step == "destroy-destination-leftover" else source_name
    with libvirt_errors(host=host, vm=vm, doing=step):
        _apply(step, vm, src, dst)


def _apply(step: Step, vm: str, src: libvirt.virConnect, dst: libvirt.virConnect) -> None:
    if step == "resume-source":
        src.lookupByName(vm).resume()
    elif step == "start-source":
        src.lookupByName(vm).create()
    elif step == "destroy-destination-leftover":
        dst.lookupByName(vm).destroy()  # the transient incoming domain vanishes with it
    elif step == "undefine-source":
        domain = src.lookupByName(vm)
        if not domain.isActive():
            domain.undefineFlags(UNDEFINE_KEEP_NVRAM)
