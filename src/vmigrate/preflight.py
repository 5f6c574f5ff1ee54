"""`vmigrate check`: gather facts from both hosts once, then run every check over them.

Nothing is changed on either host; the only thing written is the shared-storage probe
volume, which is deleted again before the check returns.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from pathlib import Path

from vmigrate.checks.connectivity import check_connectivity
from vmigrate.checks.context import CheckInput, DiskStorage, PortProbe
from vmigrate.checks.cpu import CpuFacts, check_cpu
from vmigrate.checks.devices import check_conflicts, check_devices, check_networks
from vmigrate.checks.drivers import check_drivers
from vmigrate.checks.resources import check_resources
from vmigrate.checks.storage import check_storage
from vmigrate.checks.versions import check_machine, check_versions
from vmigrate.domxml.cpu import cpu_xml_element, parse_domain_capabilities, parse_domain_cpu
from vmigrate.errors import HostUnreachable, UsageError
from vmigrate.facts import DomainFacts, HostFacts, ShareProbe
from vmigrate.hosts import HostRef, resolve_host
from vmigrate.model import CheckReport, Finding, Mode
from vmigrate.virt.connection import Connection, lookup_domain, open_with_timeout, probe_tcp
from vmigrate.virt.facts import (
    baseline_cpu,
    compare_cpu,
    domain_capabilities,
    gather_domain_facts,
    gather_host_facts,
)
from vmigrate.virt.storage import locate_volume, probe_shared_pool, volume_exists

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


def _connect(ref: HostRef, port_probe: PortProbe | None) -> tuple[Connection | None, str | None]:
    if port_probe is not None and port_probe.result not in ("open",):
        return None, f"port {port_probe.port} on {port_probe.address} is {port_probe.result}"
    try:
        return open_with_timeout(ref.uri, host=ref.name, timeout=CONNECT_TIMEOUT_SECONDS), None
    except HostUnreachable as err:
        return None, err.message


def _daemon_probe(ref: HostRef) -> PortProbe | None:
    uri = ref.parsed
    if uri.host is None or uri.daemon_port is None:
        return None
    result, seconds = probe_tcp(uri.host, uri.daemon_port, timeout=PORT_TIMEOUT_SECONDS * 2)
    return PortProbe(uri.host, uri.daemon_port, result, seconds)


def _disk_storage(
    src: Connection, dst: Connection, domain: DomainFacts, dst_facts: HostFacts
) -> tuple[DiskStorage, ...]:
    probes: dict[str, ShareProbe] = {}
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


def run_checks(
    vm: str,
    source: str,
    destination: str,
    *,
    mode: Mode = Mode.LIVE,
    copy_storage: bool = False,
    hosts_file: Path | None = None,
) -> CheckReport:
    """Check whether `vm` can move from `source` to `destination`; raises only for bad input."""
    started = time.monotonic()
    src_ref = resolve_host(source, hosts_file)
    dst_ref = resolve_host(destination, hosts_file)
    if src_ref.uri == dst_ref.uri:
        raise UsageError(
            f"the source and the destination are the same host ({src_ref.uri})",
            vm=vm,
            fix="name another host with --to",
        )
    src_conn, src_error = _connect(src_ref, _daemon_probe(src_ref))
    if src_conn is None:
        raise HostUnreachable(
            f"cannot reach libvirt on the source: {src_error}",
            host=src_ref.name,
            fix="check that libvirtd runs there and that its port is open (or use qemu+ssh://)",
        )
    domain = gather_domain_facts(lookup_domain(src_conn, vm, host=src_ref.name), host=src_ref.name)
    dst_port = _daemon_probe(dst_ref)
    dst_conn, dst_error = _connect(dst_ref, dst_port)
    try:
        src_facts = gather_host_facts(src_conn, src_ref)
        dst_facts = gather_host_facts(dst_conn, dst_ref) if dst_conn else None
        dst_domcaps, dst_domcaps_error = (
            domain_capabilities(dst_conn, domain.summary) if dst_conn else (None, dst_error)
        )
        storage_answers = not (
            src_facts.lacks("storage") or (dst_facts is not None and dst_facts.lacks("storage"))
        )
        disks = (
            _disk_storage(src_conn, dst_conn, domain, dst_facts)
            if dst_conn and dst_facts and storage_answers
            else ()
        )
        migration_ports: tuple[PortProbe, ...] = ()
        address = dst_ref.address
        if mode is Mode.LIVE and address:
            migration_ports = tuple(
                PortProbe(address, port, *probe_tcp(address, port, timeout=PORT_TIMEOUT_SECONDS))
                for port in sorted(set(dst_ref.migration_ports))
            )
        facts = CheckInput(
            mode=mode,
            copy_storage=copy_storage,
            source_name=src_ref.name,
            destination_name=dst_ref.name,
            source=src_facts,
            destination=dst_facts,
            source_error=None,
            destination_error=dst_error,
            domain=domain,
            destination_domcaps=dst_domcaps,
            destination_domcaps_error=dst_domcaps_error,
            disks=disks,
            libvirt_port=dst_port,
            migration_ports=migration_ports,
            probes_representative=_is_local(src_ref),
        )
        findings: list[Finding] = []
        for check in (
            check_drivers,
            check_versions,
            check_machine,
            check_connectivity,
            check_storage,
            check_resources,
            check_devices,
            check_networks,
            check_conflicts,
        ):
            findings += check(facts)
        findings += check_cpu(_cpu_facts(domain, src_conn, dst_conn, dst_domcaps))
    finally:
        src_conn.close()
        if dst_conn is not None:
            dst_conn.close()
    return CheckReport(
        vm,
        src_ref.name,
        dst_ref.name,
        mode,
        copy_storage,
        tuple(findings),
        time.monotonic() - started,
    )
