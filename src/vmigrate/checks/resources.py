"""Free memory and enough CPUs on the destination."""

from __future__ import annotations

from vmigrate.capacity import host_budget, memory_need_bytes
from vmigrate.checks.context import CheckInput
from vmigrate.model import Finding, Verdict

FAMILY = "resources"
MIB = 1 << 20


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
    budget = host_budget(dst)
    memory = domain.summary.memory_kib * 1024
    need = memory_need_bytes(memory)
    # MemFree alone understates a host with a warm page cache: count what the kernel gives
    # back on demand, keep the host's reserve, and stay inside its declared capacity.
    can_give = budget.free_bytes
    evidence = {
        "guest_memory": memory,
        "needed_with_overhead": need,
        "destination_available": dst.memory_available_bytes,
        "destination_free": dst.memory_free_bytes,
        "destination_capacity": budget.capacity_bytes,
        "destination_declared": budget.declared_bytes,
        "destination_placed": budget.placed_bytes,
        "host_reserve": budget.reserve_bytes,
        "destination_can_give": can_give,
    }
    seen = (
        f"{dst.ref.name} can give {can_give // MIB} MiB ({budget.capacity_bytes // MIB} MiB "
        + ("declared capacity" if budget.declared_bytes is not None else "memory")
        + f", {budget.placed_bytes // MIB} MiB held by its VMs, "
        f"{dst.memory_available_bytes // MIB} MiB available now: "
        f"{dst.memory_free_bytes // MIB} MiB free plus page cache and buffers, "
        f"less {budget.reserve_bytes // MIB} MiB kept for the host)"
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
    cpu_evidence = {
        "vcpus": vcpus,
        "destination_cpus": dst.cpus,
        "destination_vcpus_free": budget.vcpus_free,
    }
    if budget.vcpus_free is not None and vcpus > budget.vcpus_free:
        cpu_finding = Finding(
            "resources.vcpus",
            FAMILY,
            Verdict.FAIL,
            f"the VM has {vcpus} vCPUs; {dst.ref.name} declares {budget.vcpus_declared} vCPUs "
            f"and its VMs hold {budget.vcpus_placed}",
            cpu_evidence,
            fix=f"pick another host, or raise vcpus for {dst.ref.name} in the hosts file",
        )
    elif vcpus > dst.cpus:
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
