"""Bulk statistics of a host's running domains (one libvirt call per host)."""

from __future__ import annotations

import libvirt

from vmigrate.virt.errors import libvirt_errors


def domain_cpu_seconds(conn: libvirt.virConnect, *, host: str) -> dict[str, float]:
    """Each running domain's total CPU time so far (vCPUs and QEMU's own threads), seconds."""
    with libvirt_errors(host=host, doing="read the VMs' CPU time"):
        records = conn.getAllDomainStats(
            libvirt.VIR_DOMAIN_STATS_CPU_TOTAL,
            libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE,
        )
        return {domain.name(): float(stats.get("cpu.time", 0)) / 1e9 for domain, stats in records}
