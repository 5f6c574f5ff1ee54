"""The lab's two hosts and the configuration files each libvirtd runs with (pure functions)."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from vmigrate.lab.paths import HOST_CACHE_DIR, LAB_DIR

# A fixed namespace so host UUIDs are stable across `lab up` runs yet distinct per host:
# libvirt refuses to migrate between two hosts that report the same UUID.
_HOST_UUID_NAMESPACE = uuid.UUID("6f1c7a52-3c57-4d0e-9a53-2f0d7f0b6a11")

#: The directories each lab libvirtd sees privately (bind-mounted from its own state dir).
PRIVATE_DIRS: tuple[str, ...] = (
    "/etc/libvirt",
    "/run/libvirt",
    "/var/lib/libvirt",
    "/var/cache/libvirt",
    "/var/log/libvirt",
)

SHARED_POOL = "shared"
LOCAL_POOL = "local"
LOCAL_POOL_PATH = "/var/lib/libvirt/images"


@dataclass(frozen=True)
class LabHost:
    """One libvirt host of the lab: a libvirtd in its own mount and UTS namespace."""

    name: str
    address: str

    @property
    def uri(self) -> str:
        return f"qemu+tcp://{self.address}/system"

    @property
    def root(self) -> Path:
        return LAB_DIR / self.name

    @property
    def host_uuid(self) -> str:
        return str(uuid.uuid5(_HOST_UUID_NAMESPACE, self.name))

    def private_dir(self, system_path: str) -> Path:
        """Where `system_path` (one of PRIVATE_DIRS) lives for this host, seen from outside."""
        flat = system_path.strip("/").replace("/", "-")
        if system_path == "/var/cache/libvirt":
            # libvirt's QEMU capability cache outlives `lab down`: probing QEMU on a fresh
            # cache takes ~15 s under TCG, and libvirt revalidates the cache on its own.
            return HOST_CACHE_DIR / self.name / flat
        return self.root / flat

    @property
    def pid_file(self) -> Path:
        return self.private_dir("/run/libvirt") / "libvirtd.pid"

    @property
    def daemon_log(self) -> Path:
        return self.private_dir("/var/log/libvirt") / "libvirtd.log"

    @property
    def qemu_run_dir(self) -> Path:
        """QEMU pid files of this host's domains, seen from outside its namespace."""
        return self.private_dir("/run/libvirt") / "qemu"


HOST_A = LabHost("hostA", "127.0.0.2")
HOST_B = LabHost("hostB", "127.0.0.3")
LAB_HOSTS: tuple[LabHost, ...] = (HOST_A, HOST_B)
SHARED_POOL_PATH = LAB_DIR / "shared"


def lab_host(name: str) -> LabHost | None:
    """Find a lab host by name; 'A', 'hostA' and 'hosta' all name host A."""
    wanted = name.lower()
    for host in LAB_HOSTS:
        if wanted in (host.name.lower(), host.name[-1].lower()):
            return host
    return None


def render_libvirtd_conf(host: LabHost) -> str:
    # Plain TCP without authentication: acceptable only because it listens on a loopback
    # address of a lab that exists for tests. Real hosts use TLS or SSH.
    return "\n".join(
        [
            "# Written by `vmigrate lab up`; lab only: unauthenticated TCP on loopback.",
            "listen_tls = 0",
            "listen_tcp = 1",
            f'listen_addr = "{host.address}"',
            'tcp_port = "16509"',
            'auth_tcp = "none"',
            'auth_unix_rw = "none"',
            'auth_unix_ro = "none"',
            f'host_uuid = "{host.host_uuid}"',
            'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"',
            "",
        ]
    )


def render_qemu_conf(host: LabHost) -> str:
    return "\n".join(
        [
            "# Written by `vmigrate lab up`.",
            # Incoming migration streams listen on, and are sent to, this host's own address.
            f'migration_address = "{host.address}"',
            f'migration_host = "{host.address}"',
            'user = "root"',
            'group = "root"',
            # No SELinux/AppArmor, cgroups, virtlogd or per-VM /dev namespaces in a container.
            'security_driver = "none"',
            "cgroup_controllers = [ ]",
            'stdio_handler = "file"',
            "dynamic_ownership = 0",
            "remember_owner = 0",
            "namespaces = [ ]",
            # The shared pool stands in for NFS: tell libvirt it is shared, or it refuses to
            # live-migrate disks on it without copying them.
            f'shared_filesystems = [ "{SHARED_POOL_PATH}" ]',
            "",
        ]
    )


def render_dir_pool_xml(name: str, path: Path | str) -> str:
    """A directory pool (built with ElementTree: names and paths are escaped, never pasted)."""
    pool = ET.Element("pool", type="dir")
    ET.SubElement(pool, "name").text = name
    target = ET.SubElement(pool, "target")
    ET.SubElement(target, "path").text = str(path)
    return ET.tostring(pool, encoding="unicode")
