"""The storage servers as every lab host sees them: libvirt pools and the cephx secret on
each host, and the lab disks made on (and removed from) the servers."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable, Iterable

from vmigrate.errors import LabError, UsageError
from vmigrate.lab.config import LabHost
from vmigrate.lab.storage import ceph, iscsi, nfs
from vmigrate.lab.storage.common import is_vm_disk, load_servers
from vmigrate.lab.storage.pools import (
    ISCSI_POOL,
    RBD_POOL,
    NetworkDiskSource,
    iscsi_source,
    nfs_source,
    rbd_source,
    render_iscsi_pool_xml,
    render_rbd_pool_xml,
    render_rbd_volume_xml,
    render_secret_xml,
)
from vmigrate.virt.connection import Connection
from vmigrate.virt.errors import libvirt_errors
from vmigrate.virt.storage import pool_by_name

NETWORK_DISKS = ("iscsi", "rbd", "nfs")


def define_rbd_secret(conn: Connection, key: str) -> None:
    """The cephx key as libvirt keeps it: the key's bytes (virsh secret-set-value --base64)."""
    secret = conn.secretDefineXML(render_secret_xml(), 0)
    secret.setValue(base64.b64decode(key), 0)


def _ensure_pool(conn: Connection, name: str, xml: str) -> None:
    pool = pool_by_name(conn, name)
    if pool is None:
        pool = conn.storagePoolDefineXML(xml, 0)
        pool.setAutostart(True)
    if not pool.isActive():
        pool.create(0)
    pool.refresh(0)


def prepare_host(conn: Connection, host: LabHost, backends: Iterable[str]) -> None:
    """Pools (and the rbd secret) for each running backend on this host; idempotent."""
    wanted = set(backends)
    if "rbd" in wanted:
        with libvirt_errors(host=host.name, doing="defining the lab's cephx secret"):
            # Always the current key: a cluster made again has new keys.
            define_rbd_secret(conn, ceph.client_key())
        with libvirt_errors(host=host.name, doing=f"setting up the lab pool {RBD_POOL!r}"):
            _ensure_pool(conn, RBD_POOL, render_rbd_pool_xml())
    if "iscsi" in wanted:
        with libvirt_errors(host=host.name, doing=f"setting up the lab pool {ISCSI_POOL!r}"):
            _ensure_pool(conn, ISCSI_POOL, render_iscsi_pool_xml(host.name))


def refresh_pool(conn: Connection, backend: str) -> None:
    """Let this host's pool list a volume made through another host's (the lab does what an
    orchestrator would; vmigrate's checks never refresh a pool)."""
    name = {"iscsi": ISCSI_POOL, "rbd": RBD_POOL}.get(backend)
    pool = pool_by_name(conn, name) if name else None
    if pool is not None and pool.isActive():
        pool.refresh(0)


def _require_server(backend: str) -> None:
    record = load_servers().get(backend)
    if record is None or not record.running():
        raise UsageError(
            f"the lab's {backend} storage server is not running",
            fix=f"start it: vmigrate lab up --storage {backend}",
        )


def create_network_disk(
    conn: Connection, backend: str, disk_name: str, fmt: str, size_bytes: int
) -> tuple[NetworkDiskSource, Callable[[], None]]:
    """A new, empty lab disk on a storage server; its source and how to delete it again."""
    _require_server(backend)
    if backend == "iscsi":
        lun = iscsi.add_lun(disk_name, size_bytes)

        def remove_lun() -> None:
            iscsi.remove_lun(disk_name)

        return iscsi_source(lun), remove_lun
    if backend == "rbd":
        pool = conn.storagePoolLookupByName(RBD_POOL)
        volume = pool.createXML(render_rbd_volume_xml(disk_name, size_bytes), 0)
        return rbd_source(disk_name), lambda: volume.delete(0)
    path = nfs.disk_path(disk_name, fmt)
    made = subprocess.run(
        ["qemu-img", "create", "-q", "-f", fmt, str(path), str(size_bytes)],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        raise LabError(f"cannot make {path} in the NFS export: {made.stderr.strip()}")
    return nfs_source(path.name), lambda: path.unlink(missing_ok=True)


def remove_network_disks(conn: Connection, vm: str) -> bool:
    """Delete the VM's lab disks on every storage server that runs; whether there were any."""
    servers = load_servers()
    found = False
    if "iscsi" in servers:
        for disk in iscsi.luns_of_vm(vm):
            found = iscsi.remove_lun(disk) or found
    if "rbd" in servers and servers["rbd"].running():
        pool = pool_by_name(conn, RBD_POOL)
        if pool is not None and pool.isActive():
            pool.refresh(0)
            for volume in pool.listAllVolumes(0):
                if is_vm_disk(vm, volume.name()):
                    volume.delete(0)
                    found = True
    if "nfs" in servers and nfs.EXPORT_DIR.is_dir():
        for path in nfs.EXPORT_DIR.iterdir():
            if is_vm_disk(vm, path.name):
                path.unlink(missing_ok=True)
                found = True
    return found
