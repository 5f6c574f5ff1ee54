"""Host names and libvirt URIs: the hosts file, URI validation, and hosts known by name.

A host is named on the command line either by a libvirt URI or by a name from the hosts file
(`~/.config/vmigrate/hosts.toml`, or `--hosts FILE`):

    [hosts.web-a]
    uri = "qemu+tls://web-a.example.net/system"
    peer_uri = "qemu+tls://web-a.mig.lan/system"  # optional: how the other hosts' libvirtd
                                        # reaches this one (peer-to-peer); default: uri
    migration_tls = true                # optional: QEMU TLS credentials in /etc/pki/qemu
    migration_address = "10.0.0.11"     # optional: where QEMU listens for incoming migrations
    migration_ports = [49152, 49215]    # optional: the destination's migration port range
    bandwidth = 119                     # optional: MiB/s of the link to this host (estimate)
    capacity_mib = 65536                # optional: memory VMs may use here (placement)
    reserve_mib = 2048                  # optional: memory kept for the host itself
    vcpus = 32                          # optional: vCPUs VMs may use here in all

    [hosts.web-b]                       # or the URI's parts instead of uri:
    address = "web-b.example.net"       # default: the name
    transport = "ssh"                   # ssh (default), libssh, libssh2, tls, tcp
    user = "root"                       # ssh transports; default root
    key_file = "/root/.ssh/id_ed25519"  # ssh transports
    known_hosts = "/etc/vmigrate/known_hosts"  # libssh and libssh2 only (see below)

    [defaults]                          # optional: the same keys, for every host without
    transport = "ssh"                   # them, and for bare names not listed above
    user = "root"                       # (web-c then means qemu+ssh://root@web-c/system)

    [clusters.web]
    hosts = ["web-a", "web-b", "web-c"]

openssh (qemu+ssh) reads known hosts only from ssh's own configuration (~/.ssh/known_hosts);
libvirt passes a `known_hosts` file to its libssh and libssh2 transports only.

What a host can give a VM is min(what libvirt reports, capacity_mib) less reserve_mib and
less what its running VMs already use (capacity.py). A host source's host listed without a
URI keeps its URI and takes what the table declares (`[hosts.hostA] capacity_mib = 16384`).

Hosts known without a hosts file come from registered host sources: the CLI registers the
lab's (vmigrate/lab/host_source.py), so hostA..hostD work with their declared lab capacities
and form the cluster `lab`. This module imports no source: the product runs without the lab.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlencode, urlsplit

from vmigrate.errors import UsageError

DEFAULT_MIGRATION_PORTS = (49152, 49215)
#: A host name or address as a bare name may be (no spaces, no URI punctuation).
_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.:-]*[A-Za-z0-9])?")
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
    capacity_mib: int | None = None  # memory VMs may use here; None: what libvirt reports
    reserve_mib: int | None = None  # memory kept for the host; None: the default reserve
    vcpus: int | None = None  # vCPUs VMs may use here in all; None: no limit but the CPUs
    peer_uri: str | None = None  # how another host's libvirtd reaches this one; None: uri
    migration_tls: bool | None = None  # QEMU TLS credentials here; None: not declared

    @property
    def peer_connection_uri(self) -> str:
        """The URI a source host's libvirtd opens to this host in peer-to-peer migration."""
        return self.peer_uri or self.uri

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


_URI_PART_KEYS = ("address", "transport", "user", "port", "key_file", "known_hosts")
_DEFAULT_KEYS = ("transport", "user", "key_file", "known_hosts", "migration_tls")
_SSH_TRANSPORTS = ("ssh", "libssh", "libssh2")
_HOST_KEYS = (
    "uri",
    "peer_uri",
    "migration_tls",
    *_URI_PART_KEYS,
    "migration_address",
    "migration_ports",
    "bandwidth",
    "capacity_mib",
    "reserve_mib",
    "vcpus",
)


def _positive_int(table: dict[str, Any], key: str, where: str, example: str) -> int | None:
    value = table.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < 0
        or (value == 0 and key != "reserve_mib")
    ):
        raise UsageError(f"{where}: {key} must be a whole number, e.g. {key} = {example}")
    return value


def _text(table: dict[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise UsageError(f"{where}: {key} must be a non-empty string")
    return value


def build_uri(name: str, parts: dict[str, Any], where: str) -> str:
    """A libvirt URI from a host's parts (address, transport, user, port, key file, known
    hosts); values are percent-encoded, never pasted."""
    transport = _text(parts, "transport", where) or "ssh"
    if transport not in ("ssh", "libssh", "libssh2", "tls", "tcp"):
        raise UsageError(
            f"{where}: transport must be ssh, libssh, libssh2, tls or tcp, not {transport!r}"
        )
    address = _text(parts, "address", where) or name
    user = _text(parts, "user", where)
    key_file = _text(parts, "key_file", where)
    known_hosts = _text(parts, "known_hosts", where)
    port = parts.get("port")
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536
    ):
        raise UsageError(f"{where}: port must be a TCP port number")
    ssh = transport in _SSH_TRANSPORTS
    if not ssh and (user or key_file or known_hosts):
        raise UsageError(f"{where}: user, key_file and known_hosts apply to ssh transports only")
    if known_hosts and transport == "ssh":
        raise UsageError(
            f"{where}: openssh (transport ssh) takes no known_hosts file from libvirt; it "
            "reads ~/.ssh/known_hosts",
            fix='use transport = "libssh" to name a known_hosts file, or add the host key '
            "to ~/.ssh/known_hosts (ssh-keyscan, verified out of band)",
        )
    address = _uri_host(address, where)
    netloc = (quote(user or "root", safe="") + "@" if ssh else "") + address
    if port is not None:
        netloc += f":{port}"
    query = {k: v for k, v in (("keyfile", key_file), ("known_hosts", known_hosts)) if v}
    uri = f"qemu+{transport}://{netloc}/system"
    # libvirt undoes %XX escapes only (a '+' stays a '+'): quote, never form-encode.
    return uri + ("?" + urlencode(query, quote_via=quote, safe="/") if query else "")


def _uri_host(address: str, where: str) -> str:
    """A host name or address as a URI's host part: IPv6 in brackets, nothing else let in."""
    try:
        parsed = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        if not _HOST_NAME.fullmatch(address) or ":" in address:
            raise UsageError(
                f"{where}: address {address!r} is not a host name or an IP address",
                fix="give the name or address alone; the port goes in port = ...",
            ) from None
        return address
    return f"[{parsed}]" if parsed.version == 6 else str(parsed)


def _host(name: str, table: object, where: str, defaults: dict[str, Any]) -> HostRef:
    if not isinstance(table, dict):
        raise UsageError(f'{where}: write it as a table with uri = "qemu+...://.../system"')
    extra = set(table) - set(_HOST_KEYS)
    if extra:
        raise UsageError(
            f"{where}: unknown keys {', '.join(sorted(extra))}",
            fix=f"allowed: {', '.join(_HOST_KEYS)}",
        )
    # A host source's host (the lab's hostA) listed without a URI: the table changes only what
    # it declares, e.g. capacity_mib for a bigger guest than the lab declares room for.
    built_in = None if {"uri", *_URI_PART_KEYS} & set(table) else _source_host(name)
    if built_in is not None:
        uri = built_in.uri
    elif "uri" in table:
        if not isinstance(table["uri"], str):
            raise UsageError(f'{where}: needs uri = "qemu+...://.../system"')
        both = set(table) & set(_URI_PART_KEYS)
        if both:
            raise UsageError(
                f"{where}: give either uri or its parts ({', '.join(sorted(both))}), not both"
            )
        uri = table["uri"]
    else:
        parts = {k: v for k, v in defaults.items() if k in _URI_PART_KEYS} | table
        uri = build_uri(name, parts, where)
    for key in ("uri", "peer_uri"):
        if key == "uri" or table.get(key) is not None:
            value = uri if key == "uri" else table[key]
            if not isinstance(value, str):
                raise UsageError(f"{where}: {key} must be a libvirt URI")
            try:
                parse_uri(value)
            except UsageError as err:
                raise UsageError(f"{where}: {err.message}", fix=err.fix) from err
    tls = table.get("migration_tls", defaults.get("migration_tls"))
    if tls is not None and not isinstance(tls, bool):
        raise UsageError(f"{where}: migration_tls must be true or false")
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
    ref = HostRef(
        name,
        uri,
        address,
        ports,
        float(bandwidth) if bandwidth else None,
        capacity_mib=_positive_int(table, "capacity_mib", where, "65536"),
        reserve_mib=_positive_int(table, "reserve_mib", where, "2048"),
        vcpus=_positive_int(table, "vcpus", where, "32"),
        peer_uri=table.get("peer_uri"),
        migration_tls=tls,
    )
    if built_in is None:
        return ref
    given = {field: getattr(ref, field) for field, key in _OVERLAID.items() if key in table}
    return replace(built_in, **given)


#: What a hosts file may change of a host source's host: HostRef field -> hosts file key.
_OVERLAID = {
    "migration_address": "migration_address",
    "migration_ports": "migration_ports",
    "bandwidth_mib": "bandwidth",
    "capacity_mib": "capacity_mib",
    "reserve_mib": "reserve_mib",
    "vcpus": "vcpus",
    "peer_uri": "peer_uri",
    "migration_tls": "migration_tls",
}


@dataclass(frozen=True)
class Inventory:
    """The hosts file: its hosts and its clusters (each a tuple of host names)."""

    path: Path
    hosts: dict[str, HostRef]
    clusters: dict[str, tuple[str, ...]]
    defaults: dict[str, Any] | None = None  # [defaults]: bare names resolve with these


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise UsageError(
            f"cannot read hosts file {path}: {err}",
            fix="fix the file (TOML) or point --hosts at another",
        ) from err


def _clusters(raw: object, hosts: dict[str, HostRef], path: Path) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, dict):
        raise UsageError(f"hosts file {path}: write each cluster as [clusters.NAME]")
    clusters = {}
    for name, table in raw.items():
        where = f"hosts file {path}, cluster {name!r}"
        members = table.get("hosts") if isinstance(table, dict) else None
        if (
            not isinstance(members, list)
            or not members
            or not all(isinstance(m, str) for m in members)
            or set(table) != {"hosts"}
        ):
            raise UsageError(
                f"{where}: needs only hosts = [...], a list of host names",
                fix='e.g. hosts = ["web-a", "web-b"]',
            )
        unknown = [m for m in members if m not in hosts and _source_host(m) is None]
        if unknown:
            raise UsageError(
                f"{where}: {', '.join(unknown)} not defined",
                fix=f"add [hosts.{unknown[0]}] with its uri to {path}",
            )
        clusters[name] = tuple(dict.fromkeys(members))
    return clusters


def load_inventory(path: Path) -> Inventory:
    """Read a hosts file; a missing default file is fine, a malformed one is a usage error."""
    raw = _read_toml(path)
    unknown = set(raw) - {"hosts", "clusters", "defaults"}
    if unknown or not isinstance(raw.get("hosts", {}), dict):
        raise UsageError(
            f"hosts file {path}: expected only [hosts.NAME], [clusters.NAME] and [defaults] "
            f"tables, found {', '.join(sorted(unknown)) or 'hosts = ...'}",
            fix='write each host as [hosts.NAME] with uri = "qemu+...://.../system"',
        )
    defaults = raw.get("defaults")
    if defaults is not None and (
        not isinstance(defaults, dict) or set(defaults) - set(_DEFAULT_KEYS)
    ):
        raise UsageError(
            f"hosts file {path}: [defaults] takes only {', '.join(_DEFAULT_KEYS)}",
            fix='e.g. [defaults] transport = "ssh" and user = "root"',
        )
    if defaults is not None:  # a mistake in them is reported now, not at first use
        build_uri("example", defaults, f"hosts file {path}, [defaults]")
    hosts = {
        name: _host(name, table, f"hosts file {path}, host {name!r}", defaults or {})
        for name, table in raw.get("hosts", {}).items()
    }
    return Inventory(path, hosts, _clusters(raw.get("clusters", {}), hosts, path), defaults)


def load_hosts_file(path: Path) -> dict[str, HostRef]:
    return load_inventory(path).hosts


def _inventory(hosts_file: Path | None) -> Inventory:
    if hosts_file is not None and not hosts_file.exists():
        raise UsageError(f"hosts file {hosts_file} does not exist")
    return load_inventory(hosts_file or default_hosts_file())


@dataclass(frozen=True)
class SourceHost:
    """A host of a host source that runs now, and every URI that names it."""

    name: str
    uris: frozenset[str]


class HostSource(Protocol):
    """Hosts known by name without a hosts file, and the cluster those that run form."""

    @property
    def cluster(self) -> str: ...

    def host(self, name: str) -> HostRef | None:
        """The host this source calls `name`, or None."""
        ...

    def host_for_uri(self, uri: str) -> HostRef | None:
        """The host one of this source's URIs names, or None."""
        ...

    def running(self) -> tuple[SourceHost, ...]:
        """The hosts that run now, in order: they make up the cluster."""
        ...

    def not_running(self) -> UsageError:
        """The error for a command that names the cluster while none of its hosts runs."""
        ...


_SOURCES: list[HostSource] = []


def register_host_source(source: HostSource) -> None:
    """Make a source's hosts and cluster known by name (registering it again changes nothing)."""
    if source not in _SOURCES:
        _SOURCES.append(source)


def unregister_host_source(source: HostSource) -> None:
    if source in _SOURCES:
        _SOURCES.remove(source)


def host_sources() -> tuple[HostSource, ...]:
    return tuple(_SOURCES)


def _source_host(name: str) -> HostRef | None:
    return next((ref for s in _SOURCES if (ref := s.host(name)) is not None), None)


def _source_host_for_uri(uri: str) -> HostRef | None:
    return next((ref for s in _SOURCES if (ref := s.host_for_uri(uri)) is not None), None)


def source_host_for_uri(uri: str) -> HostRef | None:
    """The host a registered host source knows by this URI (the lab's hostB), or None."""
    return _source_host_for_uri(uri)


def resolve_host(spec: str, hosts_file: Path | None = None) -> HostRef:
    """A HostRef for a URI, a name from the hosts file, a host source's name (the lab's
    hostA..hostD), or (with [defaults] in the hosts file) any host name."""
    if "://" in spec or ":/" in spec:
        parse_uri(spec)
        return _source_host_for_uri(spec) or HostRef(spec, spec)
    inventory = _inventory(hosts_file)
    if spec in inventory.hosts:
        return inventory.hosts[spec]
    built_in = _source_host(spec)
    if built_in is not None:
        return built_in
    if inventory.defaults is not None and _HOST_NAME.fullmatch(spec):
        where = f"hosts file {inventory.path}, [defaults] for {spec!r}"
        return _host(spec, {}, where, inventory.defaults)
    raise UsageError(
        f"unknown host {spec!r}: not a libvirt URI and not in {inventory.path}",
        fix=f"pass a URI (qemu+ssh://root@{spec}/system), add [hosts.{spec}] to "
        f'{inventory.path}, or add [defaults] transport = "ssh" there to reach bare names '
        "over qemu+ssh as root",
    )


#: The cluster the lab's host source forms (its hosts that run).
LAB_CLUSTER = "lab"


def known_hosts(hosts_file: Path | None = None) -> tuple[HostRef, ...]:
    """Every host of the hosts file, then the host sources' running hosts not already in it."""
    inventory = _inventory(hosts_file)
    refs = list(inventory.hosts.values())
    uris = {ref.uri for ref in refs}
    for source in _SOURCES:
        for host in source.running():
            if not uris & host.uris:
                refs.append(resolve_host(host.name, hosts_file))
    return tuple(refs)


def cluster_names(hosts_file: Path | None = None) -> list[str]:
    clusters = set(_inventory(hosts_file).clusters)
    clusters.update(source.cluster for source in _SOURCES if source.running())
    return sorted(clusters)


def resolve_cluster(name: str, hosts_file: Path | None = None) -> tuple[HostRef, ...]:
    """The hosts of a cluster of the hosts file; a host source's cluster (`lab`) without
    one is the source's running hosts."""
    inventory = _inventory(hosts_file)
    if name in inventory.clusters:
        return tuple(resolve_host(member, hosts_file) for member in inventory.clusters[name])
    for source in _SOURCES:
        if source.cluster == name:
            running = source.running()
            if not running:
                raise source.not_running()
            return tuple(resolve_host(host.name, hosts_file) for host in running)
    known = ", ".join(cluster_names(hosts_file)) or "none"
    raise UsageError(
        f"unknown cluster {name!r} (clusters: {known})",
        fix=f"define [clusters.{name}] hosts = [...] in {inventory.path}, or pass --cluster "
        "with one of those",
    )


def cluster_of(host: HostRef, hosts_file: Path | None = None) -> str | None:
    """The first cluster that holds the host (by name or URI); then a host source's cluster
    (the lab's hosts are `lab`)."""
    inventory = _inventory(hosts_file)
    for name, members in inventory.clusters.items():
        for member in members:
            if member == host.name or resolve_host(member, hosts_file).uri == host.uri:
                return name
    for source in _SOURCES:
        if any(host.uri in running.uris for running in source.running()):
            return source.cluster
    return None
