"""Free memory and enough CPUs on the destination."""

from __future__ import annotations

from vmigrate.checks.context import CheckInput
from vmigrate.model import Finding, Verdict

FAMILY = "resources"
MIB = 1 << 20
#: Memory a host keeps for itself (kernel, libvirtd, its own services) and never gives a VM.
HOST_RESERVE_BYTES = 512 * MIB


def qemu_overhead_bytes(memory_bytes: int) -> int:
    """QEMU's own memory beside guest RAM: page tables, device state, TCG caches (generous)."""
    return max(256 * MIB, memory_bytes // 20)


def check_resources(facts: CheckInput) -> list[Finding]:
    domain, dst = facts.domain, facts.destination
    if domain is None or dst is None:
        return [
            Finding(
                "resources.memory",
                FAMILY,
                Verdict.SKIPPED,
                "resources not checked: the VM or the destination is unknown",
            )
        ]
    memory = domain.summary.memory_kib * 1024
    need = memory + qemu_overhead_bytes(memory)
    # MemFree alone understates a host with a warm page cache: count what the kernel gives
    # back on demand, and keep a reserve for the host itself.
    can_give = max(0, dst.memory_available_bytes - HOST_RESERVE_BYTES)
    evidence = {
        "guest_memory": memory,
        "needed_with_overhead": need,
        "destination_available": dst.memory_available_bytes,
        "destination_free": dst.memory_free_bytes,
        "host_reserve": HOST_RESERVE_BYTES,
        "destination_can_give": can_give,
    }
    seen = (
        f"{dst.ref.name} can give {can_give // MIB} MiB ({dst.memory_available_bytes // MIB} MiB "
        f"available: {dst.memory_free_bytes // MIB} MiB free plus page cache and buffers, "
        f"less {HOST_RESERVE_BYTES // MIB} MiB kept for the host)"
    )
    if can_give < need:
        memory_finding = Finding(
            "resources.memory",
            FAMILY,
            Verdict.FAIL,
            f"{seen}; the VM needs {memory // MIB} MiB plus ~{(need - memory) // MIB} MiB for QEMU",
            evidence,
            fix=f"free memory on {dst.ref.name} (move or stop other VMs) or pick another host",
        )
    else:
        memory_finding = Finding(
            "resources.memory",
            FAMILY,
            Verdict.PASS,
            f"{seen}; the VM needs {need // MIB} MiB with QEMU's overhead",
            evidence,
        )
    vcpus = domain.summary.vcpus
    cpu_evidence = {"vcpus": vcpus, "destination_cpus": dst.cpus}
    if vcpus > dst.cpus:
        cpu_finding = Finding(
            "resources.vcpus",
            FAMILY,
            Verdict.FAIL,
            f"the VM has {vcpus} vCPUs; {dst.ref.name} has {dst.cpus} CPUs",
            cpu_evidence,
            fix="reduce the VM's vCPUs or pick a larger host",
        )
    else:
        cpu_finding = Finding(
            "resources.vcpus",
            FAMILY,
            Verdict.PASS,
            f"{vcpus} vCPU(s) on a {dst.cpus}-CPU host",
            cpu_evidence,
        )
    return [memory_finding, cpu_finding]
