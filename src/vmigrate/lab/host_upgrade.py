"""`lab host upgrade HOST`: the lab's package upgrade. The host restarts on the machine's own
(newer) QEMU and libvirt; as a real upgrade would need, only once no VM runs there: checked
through libvirt first (a clear refusal, nothing changed), then again with its libvirtd
frozen right before it is stopped (host_freeze.py), so a VM started in between is found
and nothing is stopped under it."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

from vmigrate.errors import LabError
from vmigrate.lab.config import LabHost, lab_host
from vmigrate.lab.daemons import DaemonRecord, start_libvirtd, stop_host_processes
from vmigrate.lab.host_freeze import frozen, kill_frozen, vms_while_frozen
from vmigrate.lab.lifecycle import (
    connect,
    lab_files,
    require_root,
    wait_until_ready,
)
from vmigrate.lab.processes import pids_in_mount_namespace
from vmigrate.lab.releases import SYSTEM_RELEASE, Release
from vmigrate.lab.rootfs import ensure_root
from vmigrate.lab.state import load_records, save_records, serves_insecure_tcp
from vmigrate.versions import format_version
from vmigrate.virt.connection import Connection, LibvirtError
from vmigrate.virt.errors import libvirt_errors


@dataclass(frozen=True)
class UpgradeReport:
    host: str
    from_release: str
    to_release: str
    libvirt_version: str  # read from the restarted daemon
    qemu_version: str
    seconds: float
    upgraded: bool  # False: the host already ran those packages


def _versions(conn: Connection, host: LabHost) -> tuple[str, str]:
    with libvirt_errors(host=host.name, doing="read its libvirt and QEMU versions"):
        return format_version(conn.getLibVersion()), format_version(conn.getVersion())


def _running_vms(conn: Connection, host: LabHost) -> list[str]:
    with libvirt_errors(host=host.name, doing="list its running VMs"):
        names = []
        for domain in conn.listAllDomains(0):
            with contextlib.suppress(LibvirtError):  # gone while we looked
                if domain.isActive():
                    names.append(domain.name())
        return sorted(names)


def _lab_host(name: str) -> LabHost:
    host = lab_host(name)
    if host is None:
        raise LabError(f"{name!r} is not a lab host", fix="use hostA, hostB, hostC or hostD")
    return host


def _refuse(host: LabHost, running: list[str], when: str) -> LabError:
    return LabError(
        f"{len(running)} VM(s) still run there{when}: {', '.join(running)}; an upgrade "
        "restarts its libvirtd and QEMU: nothing was changed",
        host=host.name,
        fix=f"move them away first (`vmigrate evacuate {host.name}` or `vmigrate live VM "
        "--from HOST --to HOST`), or stop them, then upgrade again",
    )


def _stop_unless_vms(record: DaemonRecord, host: LabHost) -> None:
    """Stop the host's processes, unless a VM was started since it was checked: the check
    made again with its libvirtd frozen (host_freeze.py), so none can start after it."""
    with frozen(record.pid, host.name):
        pids = pids_in_mount_namespace(record.mount_namespace)
        running = vms_while_frozen(pids, record.pid)
        if running:
            raise _refuse(host, running, " (started after the first check)")
        kill_frozen(record.pid)
    stop_host_processes(record)  # its sshd, and libvirtd's end awaited


def upgrade_host(name: str) -> UpgradeReport:
    """Restart the host on the machine's own packages; refuse while a VM runs there."""
    return restart_on_release(name, None)


def restart_on_release(name: str, release: Release | None) -> UpgradeReport:
    """Restart the host on `release` (None: the machine's own packages), as an upgrade or a
    downgrade of its packages would; refused while a VM runs there, nothing changed."""
    require_root()
    host = _lab_host(name)
    to_release = release.name if release is not None else ""
    started = time.monotonic()
    conn = connect(host)  # a host that is not running: a clear error, nothing changed
    try:
        running = _running_vms(conn, host)
        versions = _versions(conn, host)
    finally:
        with contextlib.suppress(LibvirtError):
            conn.close()
    if running:
        raise _refuse(host, running, "")
    records = load_records()
    record = records[host.name]
    from_release = record.release or SYSTEM_RELEASE
    if record.release == to_release:
        return UpgradeReport(host.name, from_release, from_release, *versions, 0.0, upgraded=False)
    root = ensure_root(release) if release is not None else None  # before anything stops
    _stop_unless_vms(record, host)
    insecure_tcp = serves_insecure_tcp()
    with lab_files():
        records[host.name] = start_libvirtd(
            host, insecure_tcp=insecure_tcp, root=root, release=to_release
        )
    try:
        wait_until_ready(host, records, start_ssh=True)
    finally:
        with lab_files():
            save_records(records, insecure_tcp=insecure_tcp)
    conn = connect(host)
    try:
        versions = _versions(conn, host)
    finally:
        with contextlib.suppress(LibvirtError):
            conn.close()
    return UpgradeReport(
        host.name,
        from_release,
        to_release or SYSTEM_RELEASE,
        *versions,
        round(time.monotonic() - started, 1),
        upgraded=True,
    )
