"""One lab host's libvirtd: started in private mount and UTS namespaces, stopped by PID."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from vmigrate.errors import EnvironmentProblem
from vmigrate.lab.config import (
    PRIVATE_DIRS,
    SHARED_POOL_PATH,
    LabHost,
    render_libvirtd_conf,
    render_qemu_conf,
)
from vmigrate.lab.paths import GUEST_CACHE_DIR, LAB_DIR
from vmigrate.lab.processes import (
    executable_of,
    is_alive,
    mount_namespace_of,
    pids_in_mount_namespace,
    spawn_daemon,
    terminate,
)


@dataclass(frozen=True)
class DaemonRecord:
    """What `lab up` remembers about a running host daemon, to stop exactly it later."""

    pid: int
    mount_namespace: str
    #: The release whose root the host runs (vmigrate.lab.releases); "" for the machine's own.
    release: str = ""

    def is_running(self) -> bool:
        return is_alive(self.pid) and executable_of(self.pid).endswith("libvirtd")


def _tool(name: str) -> str:
    path = shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        raise EnvironmentProblem(
            f"`{name}` is not installed", fix="run scripts/setup.sh as root to install the lab"
        )
    return path


def write_host_config(host: LabHost, *, insecure_tcp: bool) -> None:
    host.root.mkdir(parents=True, exist_ok=True)
    host.root.chmod(0o700)  # the host's sockets, keys and disks: root's only
    for system_path in PRIVATE_DIRS:
        host.private_dir(system_path).mkdir(parents=True, exist_ok=True)
    # libvirt resolves `shared_filesystems` when it starts: the directory must exist by then.
    SHARED_POOL_PATH.mkdir(parents=True, exist_ok=True)
    etc = host.private_dir("/etc/libvirt")
    (etc / "libvirtd.conf").write_text(render_libvirtd_conf(host, insecure_tcp=insecure_tcp))
    (etc / "qemu.conf").write_text(render_qemu_conf(host))


def _root_arguments(root: Path | None) -> list[str]:
    """nsinit's arguments to run the daemon in another release's root: its private dirs are
    bound at the same paths inside, and so are the lab's directory (sockets, certificates,
    pools, sshd) and the guest image QEMU boots."""
    if root is None:
        return []
    shared = (LAB_DIR, GUEST_CACHE_DIR)
    return [f"--root={root}", *(f"--share={path}" for path in shared)]


def start_libvirtd(
    host: LabHost,
    *,
    hide: Sequence[str] = (),
    insecure_tcp: bool = False,
    root: Path | None = None,
    release: str = "",
) -> DaemonRecord:
    """Start the host's libvirtd; returns at once (call `wait_until_answering` next).

    `hide`: files this host must not see (fault injection: a driver module, as on a host
    without its package), absent in the host's mount namespace only.
    `root`: another release's root file system (`release` names it) to run libvirtd and
    QEMU from, instead of the machine's own."""
    libvirtd = _tool("libvirtd")
    unshare = _tool("unshare")
    write_host_config(host, insecure_tcp=insecure_tcp)
    binds = [f"--bind={host.private_dir(path)}={path}" for path in PRIVATE_DIRS]
    command = [
        unshare,
        "--mount",
        "--uts",
        "--propagation",
        "private",
        "--",
        sys.executable,
        "-m",
        "vmigrate.lab.nsinit",
        f"--hostname={host.name}",
        *binds,
        *(f"--hide={path}" for path in hide),
        *_root_arguments(root),
        *([f"--overlay-dir={host.root / 'rootfs'}"] if root is not None else []),
        "--",
        libvirtd,
        "--listen",
        "--config",
        "/etc/libvirt/libvirtd.conf",
        "--pid-file",
        "/run/libvirt/libvirtd.pid",
    ]
    pid = spawn_daemon(command, host.root / "libvirtd.console.log")
    return DaemonRecord(pid=pid, mount_namespace="", release=release)


def namespace_when_ready(record: DaemonRecord) -> DaemonRecord:
    """The namespace is known only once nsinit has exec'ed libvirtd inside it."""
    return replace(record, mount_namespace=mount_namespace_of(record.pid))


def stop_host_processes(record: DaemonRecord) -> list[int]:
    """Stop everything in the host's namespace: QEMU of its VMs first, then libvirtd.

    Killing QEMU first means a migration in flight cannot hold libvirtd's shutdown up.
    Returns the PIDs that did not stop on SIGTERM and had to be killed.
    """
    guests = [pid for pid in pids_in_mount_namespace(record.mount_namespace) if pid != record.pid]
    killed = terminate(guests, grace_seconds=5.0)
    if record.is_running():
        killed += terminate([record.pid])
    killed += terminate(pids_in_mount_namespace(record.mount_namespace), grace_seconds=2.0)
    return killed
