"""The lab's hosts (two by default, up to four) and the configuration files each libvirtd runs
with (pure functions)."""

from __future__ import annotations

import os
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from vmigrate.errors import UsageError
from vmigrate.lab.paths import CLIENT_PKI_DIR, CLIENT_SSH_DIR, HOST_CACHE_DIR, LAB_DIR

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
    # Each host's own credentials where libvirt, QEMU and ssh look by default: its
    # certificates (libvirt's server and client pair, QEMU's migration pair) and root's keys.
    "/etc/pki",
    "/root/.ssh",
)

#: The client identity vmigrate itself uses to reach the lab hosts over TLS.
LAB_CLIENT_CN = "vmigrate-lab-client"


def host_client_cn(host_name: str) -> str:
    """The identity a lab host's own libvirtd and QEMU use when they reach another host."""
    return f"vmigrate-lab-{host_name}"


def allowed_dn(common_name: str) -> str:
    """The subject as libvirt's tls_allowed_dn_list matches it (one RDN: no ordering doubt)."""
    return f"CN={common_name}"


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
        """How vmigrate reaches the host: the lab's default transport, TLS (docs/lab.md)."""
        return self.tls_uri

    @property
    def tls_uri(self) -> str:
        # libvirt's default client certificates are /etc/pki's of the machine: the lab's
        # client certificate is elsewhere, so the URI says where.
        return f"qemu+tls://{self.address}/system?pkipath={CLIENT_PKI_DIR}"

    @property
    def ssh_uri(self) -> str:
        return (
            f"qemu+ssh://root@{self.address}/system"
            f"?keyfile={CLIENT_SSH_DIR / 'id_ed25519'}&command={CLIENT_SSH_DIR / 'ssh'}"
        )

    @property
    def tcp_uri(self) -> str:
        return f"qemu+tcp://{self.address}/system"

    def uri_for(self, transport: str) -> str:
        return {"tls": self.tls_uri, "ssh": self.ssh_uri, "tcp": self.tcp_uri}[transport]

    def uris(self, *, insecure_tcp: bool) -> dict[str, str]:
        """Every URI the host serves, by transport; each works as is with `virsh -c` as root."""
        served = {"tls": self.tls_uri, "ssh": self.ssh_uri}
        if insecure_tcp:
            served["tcp"] = self.tcp_uri
        return served

    def peer_uri(self, transport: str) -> str:
        """How another lab host's libvirtd reaches this one (peer-to-peer migration): with
        that host's own credentials in its /etc/pki and /root/.ssh, as between real hosts."""
        if transport == "ssh":
            return f"qemu+ssh://root@{self.address}/system"
        return f"qemu+{transport}://{self.address}/system"

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
    def ssh_dir(self) -> Path:
        """The host's sshd: its configuration and host key (seen from outside and inside)."""
        return self.root / "sshd"

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


#: The transports a lab host can serve; tcp only with `lab up --insecure-tcp`.
LAB_TRANSPORTS = ("tls", "ssh", "tcp")
DEFAULT_LAB_TRANSPORT = "tls"
#: Which transport the lab's host names (hostA..hostD) resolve to.
LAB_TRANSPORT_ENV = "VMIGRATE_LAB_TRANSPORT"


def lab_transport() -> str:
    """The transport hostA..hostD mean: TLS, or what VMIGRATE_LAB_TRANSPORT names."""
    chosen = os.environ.get(LAB_TRANSPORT_ENV, "") or DEFAULT_LAB_TRANSPORT
    if chosen not in LAB_TRANSPORTS:
        raise UsageError(
            f"{LAB_TRANSPORT_ENV}={chosen!r} names no lab transport",
            fix=f"use one of {', '.join(LAB_TRANSPORTS)}, or unset it (TLS)",
        )
    return chosen


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


def render_libvirtd_conf(host: LabHost, *, insecure_tcp: bool = False) -> str:
    """TLS with client certificates always; plain TCP only when the lab is asked for it."""
    names = (LAB_CLIENT_CN, *(host_client_cn(h.name) for h in LAB_HOSTS))
    allowed = ", ".join(f'"{allowed_dn(cn)}"' for cn in names)
    lines = [
        "# Written by `vmigrate lab up`.",
        f'listen_addr = "{host.address}"',
        # TLS: the server and CA certificates are the host's own /etc/pki (libvirt's
        # defaults); a client must show a certificate of the lab CA with an allowed name.
        "listen_tls = 1",
        'tls_port = "16514"',
        'auth_tls = "none"',
        "tls_no_verify_certificate = 0",
        f"tls_allowed_dn_list = [ {allowed} ]",
    ]
    if insecure_tcp:
        lines += [
            "# --insecure-tcp: anyone who reaches this address controls the host.",
            "listen_tcp = 1",
            'tcp_port = "16509"',
            'auth_tcp = "none"',
        ]
    else:
        lines.append("listen_tcp = 0")
    lines += [
        # The UNIX sockets are in the host's private /run/libvirt, yet reachable from outside
        # through the lab's directory: root only, or any local user would control the host.
        'auth_unix_rw = "none"',
        'auth_unix_ro = "none"',
        'unix_sock_rw_perms = "0700"',
        'unix_sock_ro_perms = "0700"',
        'unix_sock_admin_perms = "0700"',
        f'host_uuid = "{host.host_uuid}"',
        'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"',
        "",
    ]
    return "\n".join(lines)


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
            # QEMU's own TLS for the migration stream: the host's /etc/pki/qemu pair, and
            # the peer's certificate verified.
            'migrate_tls_x509_cert_dir = "/etc/pki/qemu"',
            "migrate_tls_x509_verify = 1",
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
