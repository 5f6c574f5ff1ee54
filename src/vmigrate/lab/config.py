"""The lab's hosts (two by default, up to four) and the configuration files each libvirtd runs
with (pure functions)."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from vmigrate.errors import UsageError
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
    """One libvirt host of the lab: a libvirtd in its own mount and UTS namespace.

    `capacity_mib` and `vcpus` are what the host declares for placement, kept small so that
    placement matters; libvirt itself still reports this machine's real memory and CPUs."""

    name: str
    address: str
    capacity_mib: int
    vcpus: int

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


HOST_A = LabHost("hostA", "127.0.0.2", capacity_mib=4096, vcpus=4)
HOST_B = LabHost("hostB", "127.0.0.3", capacity_mib=2048, vcpus=4)
HOST_C = LabHost("hostC", "127.0.0.4", capacity_mib=3072, vcpus=4)
HOST_D = LabHost("hostD", "127.0.0.5", capacity_mib=2048, vcpus=4)
#: Every host the lab can run, in order: a lab of N hosts is always the first N.
LAB_HOSTS: tuple[LabHost, ...] = (HOST_A, HOST_B, HOST_C, HOST_D)
DEFAULT_HOST_COUNT = 2
MIN_HOST_COUNT = 2
MAX_HOST_COUNT = len(LAB_HOSTS)
SHARED_POOL_PATH = LAB_DIR / "shared"


def lab_host(name: str) -> LabHost | None:
    """Find a lab host by name; 'C', 'hostC' and 'hostc' all name host C."""
    wanted = name.lower()
    for host in LAB_HOSTS:
        if wanted in (host.name.lower(), host.name[-1].lower()):
            return host
    return None


def lab_hosts(count: int) -> tuple[LabHost, ...]:
    """The hosts of a lab of `count` hosts: the first `count` of LAB_HOSTS."""
    if not MIN_HOST_COUNT <= count <= MAX_HOST_COUNT:
        raise UsageError(
            f"the lab runs {MIN_HOST_COUNT} to {MAX_HOST_COUNT} hosts, not {count}",
            fix=f"use --hosts {MIN_HOST_COUNT} to {MAX_HOST_COUNT} "
            f"({LAB_HOSTS[0].name}..{LAB_HOSTS[-1].name})",
        )
    return LAB_HOSTS[:count]


def up_command(host: LabHost) -> str:
    """The command that starts `host`: a host past the default lab needs `--hosts N`."""
    count = LAB_HOSTS.index(host) + 1
    if count <= DEFAULT_HOST_COUNT:
        return "vmigrate lab up"
    return f"vmigrate lab up --hosts {count}"


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
