"""What a host can give a VM: memory and vCPUs, from its facts and its declared capacity.

A host's memory capacity is min(what libvirt reports, the hosts file's `capacity_mib`); a
reserve (`reserve_mib`, default 512 MiB) stays with the host; the VMs that run there already
hold their memory plus QEMU's overhead. What is left, and never more than the memory the
kernel can hand out right now, is what a new VM may take. Pure arithmetic over HostFacts.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmigrate.facts import GuestUsage, HostFacts

MIB = 1 << 20
#: Memory a host keeps for itself (kernel, libvirtd, its own services) unless it declares one.
DEFAULT_RESERVE_BYTES = 512 * MIB
#: Guests in these states hold their memory on the host.
HOLDING_STATES = ("running", "paused", "blocked", "in shutdown", "pmsuspended")


def qemu_overhead_bytes(memory_bytes: int) -> int:
    """QEMU's own memory beside guest RAM: page tables, device state, TCG caches (generous)."""
    return max(256 * MIB, memory_bytes // 20)


def memory_need_bytes(memory_bytes: int) -> int:
    """What a VM with this much RAM takes from a host, QEMU's overhead included."""
    return memory_bytes + qemu_overhead_bytes(memory_bytes)


def holds_memory(guest: GuestUsage) -> bool:
    return guest.state in HOLDING_STATES


@dataclass(frozen=True)
class HostBudget:
    """A host's memory and vCPUs, and what of them is free for new VMs."""

    host: str
    reported_bytes: int  # what libvirt says the host has (0: unknown)
    declared_bytes: int | None  # the hosts file's capacity_mib
    reserve_bytes: int
    placed_bytes: int  # what the VMs running there take, QEMU's overhead included
    available_now_bytes: int  # what the kernel can hand out now (free + page cache)
    vcpus_declared: int | None
    vcpus_placed: int
    cpus: int

    @property
    def capacity_bytes(self) -> int:
        sizes = [b for b in (self.reported_bytes, self.declared_bytes) if b]
        return min(sizes) if sizes else self.available_now_bytes

    @property
    def free_bytes(self) -> int:
        by_capacity = self.capacity_bytes - self.reserve_bytes - self.placed_bytes
        by_kernel = self.available_now_bytes - self.reserve_bytes
        return max(0, min(by_capacity, by_kernel))

    @property
    def usable_bytes(self) -> int:
        """What VMs may use in all here (capacity less the reserve)."""
        return max(0, self.capacity_bytes - self.reserve_bytes)

    @property
    def vcpus_free(self) -> int | None:
        if self.vcpus_declared is None:
            return None
        return max(0, self.vcpus_declared - self.vcpus_placed)

    def describe(self) -> str:
        declared = ""
        if self.declared_bytes is not None:
            declared = f", declared {self.declared_bytes // MIB} MiB"
        return (
            f"{self.free_bytes // MIB} MiB free of {self.capacity_bytes // MIB} MiB{declared} "
            f"(reserve {self.reserve_bytes // MIB} MiB, VMs there {self.placed_bytes // MIB} MiB, "
            f"kernel can give {self.available_now_bytes // MIB} MiB now)"
        )


def host_budget(facts: HostFacts) -> HostBudget:
    ref = facts.ref
    holding = [g for g in facts.guests if holds_memory(g)]
    return HostBudget(
        host=ref.name,
        reported_bytes=facts.memory_total_bytes,
        declared_bytes=ref.capacity_mib * MIB if ref.capacity_mib is not None else None,
        reserve_bytes=ref.reserve_mib * MIB
        if ref.reserve_mib is not None
        else DEFAULT_RESERVE_BYTES,
        placed_bytes=sum(memory_need_bytes(g.memory_bytes) for g in holding),
        available_now_bytes=facts.memory_available_bytes,
        vcpus_declared=ref.vcpus,
        vcpus_placed=sum(g.vcpus for g in holding),
        cpus=facts.cpus,
    )
