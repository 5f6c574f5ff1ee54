"""Facts about hosts and domains, read from libvirt once and turned into plain values."""

from __future__ import annotations

import contextlib
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import libvirt

from vmigrate.domxml.capabilities import guest_virt_types, host_capabilities
from vmigrate.domxml.domain import DomainSummary, parse_domain
from vmigrate.errors import HostError
from vmigrate.facts import (
    DomainFacts,
    GuestUsage,
    HostCapabilities,
    HostFacts,
    MissingDriver,
    NetworkFacts,
    PoolFacts,
    SecretFacts,
    available_memory_bytes,
)
from vmigrate.hosts import HostRef
from vmigrate.virt.connection import domain_state, unless_vanished
from vmigrate.virt.errors import libvirt_errors, missing_driver

T = TypeVar("T")


def _pool(pool: libvirt.virStoragePool) -> PoolFacts:
    root = ET.fromstring(pool.XMLDesc(0))
    active = bool(pool.isActive())
    _state, capacity, allocation, available = pool.info() if active else (0, 0, 0, 0)
    return PoolFacts(
        name=pool.name(),
        type=root.get("type", "?"),
        target_path=root.findtext("target/path"),
        active=active,
        capacity=capacity,
        allocation=allocation,
        available=available,
    )


def _network(network: libvirt.virNetwork) -> NetworkFacts:
    root = ET.fromstring(network.XMLDesc(0))
    bridge = root.find("bridge")
    return NetworkFacts(
        name=network.name(),
        active=bool(network.isActive()),
        bridge=bridge.get("name") if bridge is not None else None,
        portgroups=tuple(pg.get("name", "") for pg in root.findall("portgroup")),
    )


def _host_interfaces(conn: libvirt.virConnect) -> tuple[str, ...] | None:
    try:
        return tuple(iface.name() for iface in conn.listAllInterfaces(0))
    except libvirt.libvirtError:
        return None


def _listing(call: Callable[[], list[T]], missing: list[MissingDriver]) -> list[T]:
    """A listing that a daemon without the driver cannot give: empty, and the gap noted."""
    try:
        return call()
    except libvirt.libvirtError as err:
        driver = missing_driver(err.get_error_message() or "")
        if driver is None:
            raise
        missing.append(MissingDriver(driver[0], driver[1], err.get_error_message()))
        return []


def gather_host_facts(conn: libvirt.virConnect, ref: HostRef) -> HostFacts:
    """Everything the checks and plans need of one host; libvirt errors leave translated."""
    with libvirt_errors(host=ref.name, doing="read the host's facts"):
        return _gather_host_facts(conn, ref)


def _gather_host_facts(conn: libvirt.virConnect, ref: HostRef) -> HostFacts:
    started = time.monotonic()
    libvirt_version = conn.getLibVersion()
    rtt_ms = (time.monotonic() - started) * 1000
    capabilities_xml = conn.getCapabilities()
    capabilities = ET.fromstring(capabilities_xml)
    hypervisor_version = conn.getVersion()
    _model, memory_mib, cpus, *_rest = conn.getInfo()
    missing: list[MissingDriver] = []
    guests = _guests(conn)
    return HostFacts(
        ref=ref,
        hostname=conn.getHostname(),
        host_uuid=capabilities.findtext("host/uuid", ""),
        libvirt_version=libvirt_version,
        hypervisor_type=conn.getType(),
        hypervisor_version=hypervisor_version,
        arch=capabilities.findtext("host/cpu/arch", ""),
        cpus=cpus,
        memory_free_bytes=conn.getFreeMemory(),
        memory_available_bytes=available_memory_bytes(
            conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
        ),
        rtt_ms=rtt_ms,
        pools=tuple(_pool(p) for p in _listing(lambda: conn.listAllStoragePools(0), missing)),
        networks=tuple(_network(n) for n in _listing(lambda: conn.listAllNetworks(0), missing)),
        host_interfaces=_host_interfaces(conn),
        domains={guest.name: guest.uuid for guest in guests},
        missing_drivers=tuple(missing),
        memory_total_bytes=int(memory_mib) * 1024 * 1024,
        guests=guests,
        cpu_model=capabilities.findtext("host/cpu/model", ""),
        secrets=_secrets(conn),
        capabilities=read_capabilities(
            conn,
            capabilities_xml,
            capabilities.findtext("host/cpu/arch", ""),
            libvirt_version=libvirt_version,
            qemu_version=hypervisor_version,
        ),
    )


def read_capabilities(
    conn: libvirt.virConnect,
    capabilities_xml: str,
    arch: str,
    *,
    libvirt_version: int,
    qemu_version: int,
) -> HostCapabilities:
    """The host's machine types (every architecture) and its domain capabilities for its own
    architecture, once per virt type it offers (kvm, qemu): a few milliseconds each."""
    offers: list[str] = []
    errors: dict[str, str] = {}
    for virt_type in guest_virt_types(capabilities_xml, arch):
        try:
            offers.append(conn.getDomainCapabilities(None, arch, None, virt_type, 0))
        except libvirt.libvirtError as err:
            errors[virt_type] = err.get_error_message() or str(err)
    return host_capabilities(
        capabilities_xml,
        offers,
        libvirt_version=libvirt_version,
        qemu_version=qemu_version,
        offer_errors=errors,
    )


_USAGE_TYPES = {
    libvirt.VIR_SECRET_USAGE_TYPE_NONE: "none",
    libvirt.VIR_SECRET_USAGE_TYPE_VOLUME: "volume",
    libvirt.VIR_SECRET_USAGE_TYPE_CEPH: "ceph",
    libvirt.VIR_SECRET_USAGE_TYPE_ISCSI: "iscsi",
    libvirt.VIR_SECRET_USAGE_TYPE_TLS: "tls",
}


def _secrets(conn: libvirt.virConnect) -> tuple[SecretFacts, ...] | None:
    """The host's secrets, by UUID and usage. Their values are not read: every check of
    every VM would read every secret of every host (comparing the ones a disk names, with a
    keyed digest, belongs where that disk is checked)."""
    try:
        listed = conn.listAllSecrets(0)
    except libvirt.libvirtError:
        return None
    found = []
    for secret in listed:
        with contextlib.suppress(libvirt.libvirtError):  # one that vanishes as we look
            found.append(
                SecretFacts(
                    uuid=secret.UUIDString(),
                    usage_type=_USAGE_TYPES.get(secret.usageType(), str(secret.usageType())),
                    usage_id=secret.usageID() or "",
                    value_sha256=None,
                )
            )
    return tuple(found)


def _guests(conn: libvirt.virConnect) -> tuple[GuestUsage, ...]:
    """Every domain of the host. One that vanished since the listing is skipped; any other
    error reading one raises (the caller names the host): never a VM silently left out."""
    found = []
    for domain in conn.listAllDomains(0):
        guest = unless_vanished(partial(_guest, domain))
        if guest is not None:
            found.append(guest)
    return tuple(sorted(found, key=lambda guest: guest.name))


def _guest(domain: libvirt.virDomain) -> GuestUsage:
    _state, max_kib, _kib, vcpus, _cpu_time = domain.info()
    return GuestUsage(
        name=domain.name(),
        uuid=domain.UUIDString(),
        state=domain_state(domain),
        persistent=bool(domain.isPersistent()),
        memory_bytes=int(max_kib) * 1024,
        vcpus=int(vcpus),
    )


def _block_jobs(domain: libvirt.virDomain, summary: DomainSummary) -> tuple[str, ...]:
    busy = []
    for disk in summary.disks:
        try:
            if domain.blockJobInfo(disk.target, 0):
                busy.append(disk.target)
        except libvirt.libvirtError:
            continue
    return tuple(busy)


# virDomainJobOperation: what a running libvirt job is doing.
_JOB_OPERATIONS = {
    1: "starting",
    2: "saving",
    3: "restoring",
    4: "an incoming migration",
    5: "an outgoing migration",
    6: "a snapshot",
    7: "a snapshot revert",
    8: "a memory dump",
    9: "a backup",
    10: "a snapshot deletion",
}


def active_job(domain: libvirt.virDomain) -> str | None:
    try:
        stats = domain.jobStats(0)
    except libvirt.libvirtError:
        return None
    if int(stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE)) == libvirt.VIR_DOMAIN_JOB_NONE:
        return None
    return _JOB_OPERATIONS.get(int(stats.get("operation", 0)), "a job")


def gather_domain_facts(domain: libvirt.virDomain, *, host: str) -> DomainFacts:
    """What the checks need of one VM; a VM that vanishes meanwhile is a Vanished error."""
    with libvirt_errors(host=host, vm=domain.name(), doing="read the VM's definition"):
        return _gather_domain_facts(domain)


def _gather_domain_facts(domain: libvirt.virDomain) -> DomainFacts:
    live_xml = domain.XMLDesc(0)
    summary = parse_domain(live_xml)
    try:
        domain.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE)
        migratable_error = None
    except libvirt.libvirtError as err:
        migratable_error = err.get_error_message()
    try:
        snapshots = domain.snapshotNum(0)
    except libvirt.libvirtError:
        snapshots = 0
    active = bool(domain.isActive())
    return DomainFacts(
        name=domain.name(),
        state=domain_state(domain),
        persistent=bool(domain.isPersistent()),
        live_xml=live_xml,
        summary=summary,
        snapshots=snapshots,
        managed_save=bool(domain.hasManagedSaveImage(0)),
        block_jobs=_block_jobs(domain, summary) if active else (),
        migratable_error=migratable_error,
        active_job=active_job(domain) if active else None,
    )


def domain_capabilities(
    conn: libvirt.virConnect, summary: DomainSummary
) -> tuple[str | None, str | None]:
    """The host's domain capabilities for this domain's emulator/arch/machine/type, or why not."""
    try:
        xml = conn.getDomainCapabilities(
            summary.emulator, summary.arch, summary.machine, summary.virt_type, 0
        )
    except libvirt.libvirtError as err:
        return None, err.get_error_message()
    return xml, None


_COMPARE = {
    libvirt.VIR_CPU_COMPARE_INCOMPATIBLE: "incompatible",
    libvirt.VIR_CPU_COMPARE_IDENTICAL: "identical",
    libvirt.VIR_CPU_COMPARE_SUPERSET: "superset",
}


def compare_cpu(conn: libvirt.virConnect, summary: DomainSummary, cpu_xml: str) -> tuple[str, str]:
    """libvirt's own verdict on whether this host's hypervisor can run `cpu_xml`."""
    try:
        result = conn.compareHypervisorCPU(
            summary.emulator,
            summary.arch,
            summary.machine,
            summary.virt_type,
            cpu_xml,
            libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE,
        )
    except libvirt.libvirtError as err:
        incompatible = err.get_error_code() == libvirt.VIR_ERR_CPU_INCOMPATIBLE
        return ("incompatible" if incompatible else "error"), err.get_error_message()
    return _COMPARE.get(result, "error"), ""


def baseline_cpu(
    conn: libvirt.virConnect, summary: DomainSummary, cpu_xmls: list[str]
) -> str | None:
    """A CPU definition every given CPU can run, computed by libvirt for this hypervisor."""
    try:
        return str(
            conn.baselineHypervisorCPU(
                summary.emulator,
                summary.arch,
                summary.machine,
                summary.virt_type,
                cpu_xmls,
                0,
            )
        )
    except libvirt.libvirtError:
        return None


def measure_dirty_rate(domain: libvirt.virDomain, seconds: int, *, host: str, vm: str) -> float:
    """QEMU's own measurement of the guest's dirty rate over `seconds`, in bytes per second:
    the distinct bytes dirtied in the window, over the window, from sampled pages.

    Not QEMU's dirty-bitmap mode: under TCG it read 0 MiB/s for the lab's 200 MiB/s guest
    (measured), which looks like an idle guest."""
    with libvirt_errors(host=host, vm=vm, doing="measure the guest's dirty rate"):
        domain.startDirtyRateCalc(seconds, libvirt.VIR_DOMAIN_DIRTYRATE_MODE_PAGE_SAMPLING)
        deadline = time.monotonic() + seconds + 10
        conn = domain.connect()
        while time.monotonic() < deadline:
            time.sleep(0.25)
            records = conn.domainListGetStats([domain], libvirt.VIR_DOMAIN_STATS_DIRTYRATE, 0)
            stats = records[0][1] if records else {}
            if stats.get("dirtyrate.calc_status") == libvirt.VIR_DOMAIN_DIRTYRATE_MEASURED:
                return float(stats.get("dirtyrate.megabytes_per_second", 0)) * (1 << 20)
    raise HostError(
        f"QEMU did not finish measuring the dirty rate within {seconds + 10} s",
        host=host,
        vm=vm,
        fix="the host or the guest may be overloaded: retry `vmigrate estimate` in a moment",
    )


def resident_bytes(domain: libvirt.virDomain, *, host: str, vm: str) -> int | None:
    """What the VM's QEMU process holds in RAM (its RSS): memory the guest never touched is
    not resident, and pre-copy's first pass sends untouched (zero) pages almost for free.
    None when the host does not say."""
    with libvirt_errors(host=host, vm=vm, doing="read the VM's memory statistics"):
        rss_kib = domain.memoryStats().get("rss")
    return int(rss_kib) * 1024 if rss_kib else None
