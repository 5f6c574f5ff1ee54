"""Host names and libvirt URIs: the hosts file, URI validation, and the lab's built-in names.

A host is named on the command line either by a libvirt URI or by a name from the hosts file
(`~/.config/vmigrate/hosts.toml`, or `--hosts FILE`):

    [hosts.web-a]
    uri = "qemu+tls://web-a.example.net/system"
    migration_address = "10.0.0.11"     # optional: where QEMU listens for incoming migrations
    migration_ports = [49152, 49215]    # optional: the destination's migration port range
    bandwidth = 119                     # optional: MiB/s of the link to this host (estimate)

The lab's hostA and hostB work without a hosts file.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from vmigrate.errors import UsageError
from vmigrate.lab.config import lab_host

DEFAULT_MIGRATION_PORTS = (49152, 49215)
_TRANSPORT_PORTS = {"tcp": 16509, "tls": 16514, "ssh": 22, "libssh": 22, "libssh2": 22}
_TRANSPORTS = {"", "tcp", "tls", "ssh", "libssh", "libssh2", "unix", "ext"}
_DRIVERS = {"qemu", "test"}


@dataclass(frozen=True)
class ParsedUri:
    driver: str
    transport: str  # "" means TLS for a remote host, the local socket otherwise
    host: str | None
    port: int | None
    path: str

    @property
    def is_remote(self) -> bool:
        return self.host is not None and self.transport not in ("unix",)

    @property
    def effective_transport(self) -> str:
        if not self.is_remote:
            return "unix"
        return self.transport or "tls"

    @property
    def daemon_port(self) -> int | None:
        """The TCP port the client connects to, for transports that use one."""
        if not self.is_remote:
            return None
        return self.port or _TRANSPORT_PORTS.get(self.effective_transport)

    @property
    def encrypted(self) -> bool:
        return self.effective_transport in ("tls", "ssh", "libssh", "libssh2", "unix")


@dataclass(frozen=True)
class HostRef:
    name: str
    uri: str
    migration_address: str | None = None
    migration_ports: tuple[int, int] = DEFAULT_MIGRATION_PORTS
    bandwidth_mib: float | None = None  # the link to this host, when the operator knows it

    @property
    def parsed(self) -> ParsedUri:
        return parse_uri(self.uri)

    @property
    def address(self) -> str | None:
        """Where the destination's migration stream goes (the migration address or URI host)."""
        return self.migration_address or self.parsed.host


def parse_uri(uri: str) -> ParsedUri:
    """Validate a libvirt URI such as qemu+tcp://host/system; UsageError says what is wrong."""
    fix = "use a libvirt URI like qemu+ssh://root@host/system or qemu+tls://host/system"
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as err:
        raise UsageError(f"malformed libvirt URI {uri!r}: {err}", fix=fix) from err
    driver, _, transport = parts.scheme.partition("+")
    if not parts.scheme or "://" not in uri:
        raise UsageError(f"malformed libvirt URI {uri!r}: no scheme", fix=fix)
    if driver not in _DRIVERS:
        raise UsageError(f"unsupported hypervisor driver {driver!r} in {uri!r}", fix=fix)
    if transport not in _TRANSPORTS:
        raise UsageError(f"unknown transport {transport!r} in {uri!r}", fix=fix)
    if driver == "qemu" and parts.path not in ("/system", "/session"):
        raise UsageError(f"{uri!r} names no qemu daemon path", fix=fix)
    return ParsedUri(driver, transport, parts.hostname, port, parts.path)


def default_hosts_file() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "vmigrate" / "hosts.toml"


def _ports(value: object, where: str) -> tuple[int, int]:
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(p, int) and 1 <= p <= 65535 for p in value)
        and value[0] <= value[1]
    ):
        return (value[0], value[1])
    raise UsageError(f"{where}: migration_ports must be [first, last], e.g. [49152, 49215]")


def load_hosts_file(path: Path) -> dict[str, HostRef]:
    """Read a hosts file; a missing default file is fine, a malformed one is a usage error."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise UsageError(
            f"cannot read hosts file {path}: {err}",
            fix="fix the file (TOML) or point --hosts at another",
        ) from err
    unknown = set(raw) - {"hosts"}
    if unknown or not isinstance(raw.get("hosts", {}), dict):
        raise UsageError(
            f"hosts file {path}: expected only [hosts.NAME] tables, "
            f"found {', '.join(sorted(unknown)) or 'hosts = ...'}",
            fix='write each host as [hosts.NAME] with uri = "qemu+...://.../system"',
        )
    hosts = {}
    for name, table in raw.get("hosts", {}).items():
        where = f"hosts file {path}, host {name!r}"
        if not isinstance(table, dict) or not isinstance(table.get("uri"), str):
            raise UsageError(f'{where}: needs uri = "qemu+...://.../system"')
        extra = set(table) - {"uri", "migration_address", "migration_ports", "bandwidth"}
        if extra:
            raise UsageError(
                f"{where}: unknown keys {', '.join(sorted(extra))}",
                fix="allowed: uri, migration_address, migration_ports, bandwidth",
            )
        try:
            parse_uri(table["uri"])
        except UsageError as err:
            raise UsageError(f"{where}: {err.message}", fix=err.fix) from err
        address = table.get("migration_address")
        if address is not None and not isinstance(address, str):
            raise UsageError(f"{where}: migration_address must be a string")
        ports = (
            _ports(table["migration_ports"], where)
            if "migration_ports" in table
            else DEFAULT_MIGRATION_PORTS
        )
        bandwidth = table.get("bandwidth")
        if bandwidth is not None and (
            isinstance(bandwidth, bool)
            or not isinstance(bandwidth, int | float)
            or not math.isfinite(bandwidth)
            or bandwidth <= 0
        ):
            raise UsageError(
                f"{where}: bandwidth must be a positive number of MiB/s, e.g. 119 for 1 Gbit/s"
            )
        hosts[name] = HostRef(
            name, table["uri"], address, ports, float(bandwidth) if bandwidth else None
        )
    return hosts


def resolve_host(spec: str, hosts_file: Path | None = None) -> HostRef:
    """A HostRef for a URI, a name from the hosts file, or the lab's hostA/hostB."""
    if "://" in spec or ":/" in spec:
        parse_uri(spec)
        return HostRef(spec, spec)
    path = hosts_file or default_hosts_file()
    if hosts_file is not None and not hosts_file.exists():
        raise UsageError(f"hosts file {hosts_file} does not exist")
    hosts = load_hosts_file(path)
    if spec in hosts:
        return hosts[spec]
    lab = lab_host(spec) if spec.lower().startswith("host") else None
    if lab is not None:
        return HostRef(lab.name, lab.uri, lab.address)
    raise UsageError(
        f"unknown host {spec!r}: not a libvirt URI and not in {path}",
        fix=f"pass a URI (qemu+ssh://root@{spec}/system) or add [hosts.{spec}] to {path}",
    )
