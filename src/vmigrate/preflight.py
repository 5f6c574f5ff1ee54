"""`vmigrate check`: gather facts from both hosts once, then run every check over them.

Nothing is changed on either host; the only thing written is the shared-storage probe
volume, which is deleted again before the check returns.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from vmigrate.checks.connectivity import check_connectivity
from vmigrate.checks.context import CheckInput, DiskStorage, NetworkDiskView, PortProbe
from vmigrate.checks.cpu import CpuFacts, check_cpu
from vmigrate.checks.devices import check_conflicts, check_devices, check_networks
from vmigrate.checks.drivers import check_drivers
from vmigrate.checks.encryption import check_encryption
from vmigrate.checks.machine import check_devices_offered, check_machine
from vmigrate.checks.network_disks import server_endpoints
from vmigrate.checks.resources import check_resources
from vmigrate.checks.storage import check_storage
from vmigrate.checks.versions import (
    check_known_incompatibilities,
    check_migration_features,
    check_versions,
)
from vmigrate.domxml.cpu import cpu_xml_element, parse_domain_capabilities, parse_domain_cpu
from vmigrate.encryption import migration_tls
from vmigrate.errors import HostUnreachable, UsageError, VmigrateError
from vmigrate.events import EventSink, Notice, ignore
from vmigrate.facts import DomainFacts, HostFacts, ShareProbe
from vmigrate.hosts import HostRef, resolve_host
from vmigrate.live.policy import DEFAULT_POLICY, PRESETS
from vmigrate.migration_features import FeatureUse, features_used
from vmigrate.model import CheckReport, Finding, Mode
from vmigrate.trusted_checks import TrustedChecks, merged, rechecked, trusted_notice
from vmigrate.virt.connection import Connection, lookup_domain, open_with_timeout, probe_tcp
from vmigrate.virt.facts import (
    baseline_cpu,
    compare_cpu,
    domain_capabilities,
    gather_domain_facts,
    gather_host_facts,
)
from vmigrate.virt.storage import (
    find_network_volume,
    locate_volume,
    probe_shared_pool,
    volume_exists,
)
from vmigrate.volume_probe import read_volume

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_SECONDS = 8.0
PORT_TIMEOUT_SECONDS = 1.5


def _is_local(ref: HostRef) -> bool:
    uri = ref.parsed
    if not uri.is_remote or uri.host is None:
        return True
    try:
        return ipaddress.ip_address(uri.host).is_loopback
    except ValueError:
        return uri.host == "localhost"


_TRANSPORT_OF_PORT = {16514: "tls", 16509: "tcp", 22: "ssh"}


def _served_elsewhere(address: str, port: int) -> list[str]:
    """The other libvirt transports' ports that answer on a host that refused `port`."""
    answering = []
    for other, transport in _TRANSPORT_OF_PORT.items():
        if other != port and probe_tcp(address, other, timeout=PORT_TIMEOUT_SECONDS)[0] == "open":
            answering.append(f"{other} ({transport})")
    return answering


def _connect(
    ref: HostRef, port_probe: PortProbe | None
) -> tuple[Connection | None, str | None, str]:
    """A connection, or why not and what to do."""
    if port_probe is not None and port_probe.result not in ("open",):
        error = f"port {port_probe.port} on {port_probe.address} is {port_probe.result}"
        transport = ref.parsed.effective_transport
        if port_probe.result == "refused":
            others = _served_elsewhere(port_probe.address, port_probe.port)
            if others:
                return (
                    None,
                    f"{error}: the host does not serve qemu+{transport} there, but answers on "
                    + ", ".join(others),
                    f"reach {ref.name} over a transport it serves (qemu+tls:// on 16514, "
                    f"qemu+ssh:// on 22), or enable {transport} in its libvirtd.conf",
                )
        return None, error, ""
    try:
        conn = open_with_timeout(ref.uri, host=ref.name, timeout=CONNECT_TIMEOUT_SECONDS)
    except HostUnreachable as err:
        return None, err.message, err.fix
    return conn, None, ""


def _storage_server_probes(domain: DomainFacts, destination: HostRef) -> tuple[PortProbe, ...]:
    """The network disks' servers, probed from here when here is the destination (else what
    we saw would say nothing of what it sees)."""
    if not _is_local(destination):
        return ()
    endpoints = {
        endpoint
        for disk in domain.summary.disks
        if disk.network is not None
        for endpoint in server_endpoints(disk.network)
    }
    return tuple(
        PortProbe(host, port, *probe_tcp(host, port, timeout=PORT_TIMEOUT_SECONDS))
        for host, port in sorted(endpoints)
    )


def _daemon_probe(ref: HostRef) -> PortProbe | None:
    uri = ref.parsed
    if uri.host is None or uri.daemon_port is None:
        return None
    result, seconds = probe_tcp(uri.host, uri.daemon_port, timeout=PORT_TIMEOUT_SECONDS * 2)
    return PortProbe(uri.host, uri.daemon_port, result, seconds)


def _disk_storage(
    src: Connection,
    dst: Connection,
    domain: DomainFacts,
    dst_facts: HostFacts,
    probes: dict[str, ShareProbe],
) -> tuple[DiskStorage, ...]:
    result = []
    for disk in domain.summary.disks:
        if disk.path is None or disk.source_type not in ("file", "block"):
            continue
        location = locate_volume(src, disk.path)
        probe = None
        if location is not None:
            if location.pool not in probes:
                probes[location.pool] = probe_shared_pool(src, dst, location.pool)
            probe = probes[location.pool]
        copy_pool = None
        if location is not None:
            copy_pool = next(
                (p for p in dst_facts.pools if p.active and p.target_path == location.pool_path),
                None,
            )
        result.append(
            DiskStorage(
                target=disk.target,
                source_location=location,
                share_probe=probe,
                exists_on_destination=volume_exists(dst, disk.path),
                destination_pool_for_copy=copy_pool.name if copy_pool else None,
                destination_available=copy_pool.available if copy_pool else None,
            )
        )
    return tuple(result)


def _network_disks(
    src: Connection,
    dst: Connection,
    domain: DomainFacts,
    facts: tuple[HostFacts, HostFacts],
    server_probes: tuple[PortProbe, ...],
    *,
    source_here: bool,
    destination_here: bool,
) -> tuple[NetworkDiskView, ...]:
    """Each network disk's volume as the source's and the destination's own pools see it.

    The probes are made here, where the destination runs. A host that runs here too is not
    asked when they found its servers unreachable: reading an rbd volume's size makes its
    libvirt connect to the cluster, and it would only wait out its own 30 s to fail."""
    unreachable = {(p.address, p.port) for p in server_probes if p.result != "open"}
    views = []
    for disk in domain.summary.disks:
        if disk.network is None:
            continue
        blocked = bool(unreachable & set(server_endpoints(disk.network)))
        views.append(
            NetworkDiskView(
                disk.target,
                None
                if facts[0].lacks("storage") or (blocked and source_here)
                else find_network_volume(src, disk.network),
                None
                if facts[1].lacks("storage") or blocked
                else find_network_volume(dst, disk.network),
                read_volume(disk.network, disk.format)
                if destination_here and not blocked
                else None,
            )
        )
    return tuple(views)


def _cpu_facts(
    domain: DomainFacts | None,
    src: Connection | None,
    dst: Connection | None,
    dst_domcaps: str | None,
) -> CpuFacts:
    if domain is None:
        return CpuFacts(
            domain_xml="<domain/>",
            source_domcaps_xml=None,
            destination_domcaps_xml=None,
            libvirt_compare=None,
        )
    src_domcaps = domain_capabilities(src, domain.summary)[0] if src is not None else None
    verdict, message, baseline = None, "", None
    cpu = parse_domain_cpu(domain.live_xml)
    if dst is not None and cpu.mode not in ("none", "host-passthrough", "maximum"):
        verdict, message = compare_cpu(dst, domain.summary, cpu_xml_element(cpu))
    if dst is not None and src_domcaps and dst_domcaps:
        hosts = [_host_model_xml(src_domcaps), _host_model_xml(dst_domcaps)]
        if all(hosts):
            baseline = baseline_cpu(dst, domain.summary, [h for h in hosts if h])
    return CpuFacts(
        domain_xml=domain.live_xml,
        source_domcaps_xml=src_domcaps,
        destination_domcaps_xml=dst_domcaps,
        libvirt_compare=verdict,
        libvirt_compare_message=message,
        libvirt_baseline_xml=baseline,
    )


def _host_model_xml(domcaps: str) -> str | None:
    from vmigrate.domxml.cpu import DomainCpu

    offer = parse_domain_capabilities(domcaps)
    if offer.host_model is None:
        return None
    return cpu_xml_element(
        DomainCpu(
            mode="custom",
            model=offer.host_model,
            vendor=offer.host_model_vendor,
            features=dict(offer.host_model_features),
            check=None,
        )
    )


@dataclass
class HostSession:
    """One host as the checks see it: an open connection and its facts, read once, or why
    it cannot be reached. Several checks (a whole evacuation plan) share one session."""

    ref: HostRef
    conn: Connection | None
    facts: HostFacts | None
    error: str | None
    port: PortProbe | None
    _migration_ports: tuple[PortProbe, ...] | None = None
    error_fix: str = ""  # what to do about `error`, when its cause is known

    def migration_ports(self) -> tuple[PortProbe, ...]:
        """The destination's migration ports, probed once per session."""
        if self._migration_ports is None:
            address = self.ref.address
            self._migration_ports = tuple(
                PortProbe(address, port, *probe_tcp(address, port, timeout=PORT_TIMEOUT_SECONDS))
                for port in sorted(set(self.ref.migration_ports))
                if address
            )
        return self._migration_ports

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None


def open_session(ref: HostRef) -> HostSession:
    """Connect and gather the host's facts; an unreachable host is a session with an error."""
    port = _daemon_probe(ref)
    conn, error, fix = _connect(ref, port)
    if conn is None:
        return HostSession(ref, None, None, error, port, error_fix=fix)
    try:
        facts = gather_host_facts(conn, ref)
    except VmigrateError as err:
        conn.close()
        return HostSession(ref, None, None, err.message, port)
    return HostSession(ref, conn, facts, None, port)


class PairChecks:
    """Every check of moving VMs from one source to destinations, over gathered facts; the
    shared-storage probes are made once per source pool and destination."""

    def __init__(self, source: HostSession) -> None:
        if source.conn is None or source.facts is None:
            raise HostUnreachable(
                f"cannot reach libvirt on the source: {source.error}",
                host=source.ref.name,
                fix=source.error_fix
                or "check that libvirtd runs there and that its port is open (or use qemu+ssh://)",
            )
        self.source = source
        self._probes: dict[str, dict[str, ShareProbe]] = {}  # destination URI -> pool -> probe

    def disk_storage(
        self, domain: DomainFacts, destination: HostSession
    ) -> tuple[DiskStorage, ...]:
        """Where each disk of the VM lives, and whether `destination` shares it (probed)."""
        src_conn, src_facts = self.source.conn, self.source.facts
        assert src_conn is not None and src_facts is not None
        dst_conn, dst_facts = destination.conn, destination.facts
        if dst_conn is None or dst_facts is None:
            return ()
        if src_facts.lacks("storage") or dst_facts.lacks("storage"):
            return ()
        probes = self._probes.setdefault(destination.ref.uri, {})
        return _disk_storage(src_conn, dst_conn, domain, dst_facts, probes)

    def findings(
        self,
        domain: DomainFacts,
        destination: HostSession,
        *,
        mode: Mode = Mode.LIVE,
        copy_storage: bool = False,
        tls: bool | None = None,
        peer_to_peer: bool = True,
        features: FeatureUse | None = None,
    ) -> tuple[Finding, ...]:
        """Every check of moving `domain` to `destination`; `features`: what the live move
        would use (None: what `live` uses by default)."""
        src_conn, src_facts = self.source.conn, self.source.facts
        assert src_conn is not None and src_facts is not None
        dst_conn, dst_facts = destination.conn, destination.facts
        dst_domcaps, dst_domcaps_error = (
            domain_capabilities(dst_conn, domain.summary) if dst_conn else (None, destination.error)
        )
        if features is None and mode is Mode.LIVE:
            features = default_features(migration_tls(tls, self.source.ref, destination.ref))
        disks = self.disk_storage(domain, destination)
        servers = _storage_server_probes(domain, destination.ref)
        facts = CheckInput(
            mode=mode,
            copy_storage=copy_storage,
            source_name=self.source.ref.name,
            destination_name=destination.ref.name,
            source=src_facts,
            destination=dst_facts,
            source_error=None,
            destination_error=destination.error,
            destination_error_fix=destination.error_fix,
            domain=domain,
            destination_domcaps=dst_domcaps,
            destination_domcaps_error=dst_domcaps_error,
            disks=disks,
            libvirt_port=destination.port,
            migration_ports=destination.migration_ports() if mode is Mode.LIVE else (),
            probes_representative=_is_local(self.source.ref),
            source_ref=self.source.ref,
            destination_ref=destination.ref,
            migration_tls_requested=tls,
            peer_to_peer=peer_to_peer,
            features=features,
            storage_servers=servers,
            destination_probes_representative=_is_local(destination.ref),
            network_disks=(
                _network_disks(
                    src_conn,
                    dst_conn,
                    domain,
                    (src_facts, dst_facts),
                    servers,
                    source_here=_is_local(self.source.ref),
                    destination_here=_is_local(destination.ref),
                )
                if dst_conn is not None and dst_facts is not None
                else ()
            ),
        )
        found = pair_findings(facts)
        cpu_domcaps = dst_domcaps or _host_domcaps(dst_facts, domain)
        found += check_cpu(_cpu_facts(domain, src_conn, dst_conn, cpu_domcaps))
        return tuple(found)


#: The checks of one move over its gathered facts (the CPU's, which also needs libvirt's own
#: comparison, comes after): `check`, live, cold and the fleet's pair verdicts all run these.
PAIR_CHECKS: tuple[Callable[[CheckInput], list[Finding]], ...] = (
    check_drivers,
    check_versions,
    check_migration_features,
    check_known_incompatibilities,
    check_machine,
    check_devices_offered,
    check_connectivity,
    check_encryption,
    check_storage,
    check_resources,
    check_devices,
    check_networks,
    check_conflicts,
)


def pair_findings(facts: CheckInput) -> list[Finding]:
    return [finding for check in PAIR_CHECKS for finding in check(facts)]


def default_features(tls: bool) -> FeatureUse:
    """What `live` uses with its default options (the default policy, no --parallel or
    --compress): the fleet's moves and `vmigrate check` assume these."""
    policy = PRESETS[DEFAULT_POLICY]
    return features_used(
        postcopy=policy.postcopy_allowed,
        autoconverge=policy.autoconverge_at_start,
        parallel=False,
        compressed=False,
        tls=tls,
    )


def _host_domcaps(facts: HostFacts | None, domain: DomainFacts) -> str | None:
    """The destination's domain capabilities read with its facts, for the VM's architecture
    and virt type: what the CPU check reads when the destination refuses the VM's own
    machine type (an older QEMU), so that the CPU model is still compared."""
    caps = facts.capabilities if facts is not None else None
    offer = caps.offer(domain.summary.arch, domain.summary.virt_type) if caps else None
    return offer.xml if offer is not None else None


@dataclass(frozen=True)
class Checked:
    """A check's report and the facts it was made over, for the move that follows: a move
    gathers each host's facts once, in its checks, and plans with those."""

    report: CheckReport
    source: HostFacts
    destination: HostFacts | None


def run_checks(
    vm: str,
    source: str,
    destination: str,
    *,
    mode: Mode = Mode.LIVE,
    copy_storage: bool = False,
    hosts_file: Path | None = None,
    tls: bool | None = None,
    features: FeatureUse | None = None,
) -> CheckReport:
    """Check whether `vm` can move from `source` to `destination`; raises only for bad input.
    `features`: the migration features the live move would use (None: live's defaults)."""
    return check_move(
        vm,
        source,
        destination,
        mode=mode,
        copy_storage=copy_storage,
        hosts_file=hosts_file,
        tls=tls,
        features=features,
    ).report


def check_move(
    vm: str,
    source: str,
    destination: str,
    *,
    mode: Mode = Mode.LIVE,
    copy_storage: bool = False,
    hosts_file: Path | None = None,
    tls: bool | None = None,
    peer_to_peer: bool = True,
    trusted: TrustedChecks | None = None,
    emit: EventSink = ignore,
    features: FeatureUse | None = None,
) -> Checked:
    """run_checks, with the facts gathered on the way; with `trusted` (a fleet job's checks
    of this move), only what can have changed since is checked again (checks_trusted)."""
    kept = checks_trusted(
        trusted,
        vm,
        source,
        destination,
        mode=mode,
        copy_storage=copy_storage,
        hosts_file=hosts_file,
        emit=emit,
    )
    if kept is not None:
        return kept
    started = time.monotonic()
    src_ref = resolve_host(source, hosts_file)
    dst_ref = resolve_host(destination, hosts_file)
    if src_ref.uri == dst_ref.uri:
        raise UsageError(
            f"the source and the destination are the same host ({src_ref.uri})",
            vm=vm,
            fix="name another host with --to",
        )
    src = open_session(src_ref)
    dst: HostSession | None = None
    try:
        checks = PairChecks(src)
        assert src.conn is not None
        domain = gather_domain_facts(
            lookup_domain(src.conn, vm, host=src_ref.name), host=src_ref.name
        )
        dst = open_session(dst_ref)
        findings = checks.findings(
            domain,
            dst,
            mode=mode,
            copy_storage=copy_storage,
            tls=tls,
            peer_to_peer=peer_to_peer,
            features=features,
        )
    finally:
        src.close()
        if dst is not None:
            dst.close()
    report = CheckReport(
        vm,
        src_ref.name,
        dst_ref.name,
        mode,
        copy_storage,
        findings,
        time.monotonic() - started,
    )
    assert src.facts is not None  # PairChecks refused a source without facts
    return Checked(report, src.facts, dst.facts)


def checks_trusted(
    trusted: TrustedChecks | None,
    vm: str,
    source: str,
    destination: str,
    *,
    mode: Mode,
    copy_storage: bool,
    hosts_file: Path | None = None,
    emit: EventSink = ignore,
) -> Checked | None:
    """A fleet job's checks of this move (`--trust-checks`), with what can have changed since
    checked again; None when there are none, or they do not stand for this move now (then
    the caller runs every check). Says which it did (a Notice)."""
    if trusted is None:
        return None
    src_ref = resolve_host(source, hosts_file)
    dst_ref = resolve_host(destination, hosts_file)
    why = trusted.refusal(vm, src_ref.name, dst_ref.name, mode, copy_storage, now=time.time())
    checked = None if why else recheck_move(trusted.report, src_ref, dst_ref)
    if checked is None:
        why = why or "a host does not answer now"
        emit(Notice(f"the checks of job {trusted.job_id} not used ({why}): every check runs"))
        return None
    again = sorted({f.check for f in checked.report.findings if rechecked(f.check)})
    emit(Notice(trusted_notice(trusted, again)))
    return checked


def recheck_move(trusted: CheckReport, src_ref: HostRef, dst_ref: HostRef) -> Checked | None:
    """Both hosts' facts read again, at once (the move needs them), and only what can have
    changed since the trusted checks checked again (trusted_checks.RECHECKED). None when a
    host does not answer now."""
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        src, dst = pool.map(open_session, (src_ref, dst_ref))
    try:
        if src.conn is None or src.facts is None or dst.facts is None:
            return None
        domain = gather_domain_facts(
            lookup_domain(src.conn, trusted.vm, host=src_ref.name), host=src_ref.name
        )
    finally:
        src.close()
        dst.close()
    facts = CheckInput(
        mode=trusted.mode,
        copy_storage=trusted.copy_storage,
        source_name=src_ref.name,
        destination_name=dst_ref.name,
        source=src.facts,
        destination=dst.facts,
        source_error=None,
        destination_error=None,
        domain=domain,
        destination_domcaps=None,
        destination_domcaps_error=None,
        disks=(),
        libvirt_port=dst.port,
        migration_ports=(),
        probes_representative=_is_local(src_ref),
        source_ref=src_ref,
        destination_ref=dst_ref,
    )
    fresh = [*check_resources(facts), *check_devices(facts)]
    return Checked(merged(trusted, fresh, time.monotonic() - started), src.facts, dst.facts)
