"""Free memory and enough CPUs on the destination."""

from __future__ import annotations

from vmigrate.checks.context import CheckInput
from vmigrate.model import Finding, Verdict

FAMILY = "resources"
MIB = 1 << 20


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
    evidence = {
        "guest_memory": memory,
        "needed_with_overhead": need,
        "destination_free": dst.memory_free_bytes,
    }
    if dst.memory_free_bytes < need:
        memory_finding = Finding(
            "resources.memory",
            FAMILY,
            Verdict.FAIL,
            f"{dst.ref.name} has {dst.memory_free_bytes // MIB} MiB free; the VM needs "
            f"{memory // MIB} MiB plus ~{(need - memory) // MIB} MiB for QEMU",
            evidence,
            fix=f"free memory on {dst.ref.name} (move or stop other VMs) or pick another host",
        )
    else:
        memory_finding = Finding(
            "resources.memory",
            FAMILY,
            Verdict.PASS,
            f"{dst.ref.name} has {dst.memory_free_bytes // MIB} MiB free for {need // MIB} MiB",
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
