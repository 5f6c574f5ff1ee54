"""The order in which a rolling upgrade takes a cluster's hosts (pure).

A VM started on a newer QEMU may not run on an older one, and the roll never sends a VM to
a host whose QEMU is older than the one it runs on. So the oldest hosts go first: when a
host is emptied, every other host is at least as new (the ones already done are assumed on
the newest version the cluster runs: an upgrade does not go backwards), and its VMs may go
anywhere. Among hosts of one version the least loaded goes first (its step is the shortest,
so a command that fails shows early, with the fewest VMs away from home).

Each step empties `hosts_at_once` hosts together; their VMs must fit, by memory, on the
hosts at least as new as theirs and not in the step. When the preferred order strands a VM,
every other order is tried (small clusters); when none works the roll is refused, saying
which VM fits nowhere and why."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from vmigrate.capacity import MIB
from vmigrate.errors import UsageError, VmigrateError
from vmigrate.versions import format_version

#: Clusters up to this size have every order tried when the preferred one strands a VM.
SEARCH_ALL_UP_TO = 7


@dataclass(frozen=True)
class RollVm:
    name: str
    need_bytes: int  # memory the VM takes from a host, QEMU's overhead included


@dataclass(frozen=True)
class RollHost:
    """A host of the cluster as the roll starts."""

    name: str
    qemu_version: int  # libvirt's encoding: 7002000 is 7.2.0
    free_bytes: int  # memory it can still give VMs, its own already counted
    vms: tuple[RollVm, ...] = ()

    @property
    def load_bytes(self) -> int:
        return sum(vm.need_bytes for vm in self.vms)


@dataclass(frozen=True)
class RollOrder:
    """Steps of hosts emptied together, in order, and why the order is this one."""

    steps: tuple[tuple[str, ...], ...]
    reasons: tuple[str, ...]

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(host for step in self.steps for host in step)

    def to_dict(self) -> dict[str, object]:
        return {"steps": [list(s) for s in self.steps], "reasons": list(self.reasons)}


@dataclass(frozen=True)
class Stranding:
    """A VM that an order leaves nowhere to go."""

    host: str  # the host being emptied
    vm: str
    reason: str


class NoSafeOrder(VmigrateError):
    """Every order of the cluster's hosts strands a VM: nothing was changed."""


def validate_roll(count: int, hosts_at_once: int, cluster: str) -> None:
    """A cluster of `count` hosts and --hosts-at-once make a roll at all (else a usage
    error)."""
    if count < 2:
        raise UsageError(
            f"cluster {cluster!r} has {count} host(s): a rolling upgrade needs at least "
            "two, so that one host's VMs have somewhere to run while it is upgraded",
            fix=f"add hosts to cluster {cluster!r}, or upgrade the host by hand",
        )
    if hosts_at_once < 1:
        raise UsageError(
            f"--hosts-at-once {hosts_at_once}: at least one host per step",
            fix="give --hosts-at-once 1 or more",
        )
    if hosts_at_once >= count:
        raise UsageError(
            f"--hosts-at-once {hosts_at_once} with {count} hosts in cluster {cluster!r}: "
            "no host would be left to run the VMs",
            fix=f"give --hosts-at-once {count - 1} or less",
        )


def _preferred(hosts: Sequence[RollHost]) -> list[RollHost]:
    return sorted(hosts, key=lambda h: (h.qemu_version, h.load_bytes, h.name))


def stranded(
    order: Sequence[RollHost], hosts_at_once: int, newest: int | None = None
) -> Stranding | None:
    """The first VM this order strands, or None when it strands none."""
    if newest is None:
        newest = max(h.qemu_version for h in order)
    version = {h.name: h.qemu_version for h in order}
    for start in range(0, len(order), hosts_at_once):
        step = order[start : start + hosts_at_once]
        names = {h.name for h in step}
        free = {h.name: h.free_bytes for h in order if h.name not in names}
        for host in step:
            vms = sorted(host.vms, key=lambda vm: (-vm.need_bytes, vm.name))
            for vm in vms:
                fitting = [
                    n for n in free if version[n] >= host.qemu_version and free[n] >= vm.need_bytes
                ]
                if not fitting:
                    return _why_nowhere(vm, host, free, version)
                best = max(fitting, key=lambda n: (free[n], n))
                free[best] -= vm.need_bytes
        for host in step:
            version[host.name] = max(newest, host.qemu_version)  # upgraded
    return None


def _why_nowhere(
    vm: RollVm, host: RollHost, free: dict[str, int], version: dict[str, int]
) -> Stranding:
    others = []
    for name, left in sorted(free.items()):
        if version[name] < host.qemu_version:
            others.append(
                f"{name}: its QEMU {format_version(version[name])} is older than "
                f"{format_version(host.qemu_version)}"
            )
        else:
            others.append(f"{name}: {left // MIB} MiB free")
    return Stranding(
        host.name,
        vm.name,
        f"when {host.name} is emptied, {vm.name} ({vm.need_bytes // MIB} MiB) fits on no "
        f"host at least as new: {'; '.join(others) or 'no other host'}",
    )


def roll_order(hosts: Sequence[RollHost], hosts_at_once: int = 1) -> RollOrder:
    """The order of the roll (see the module's docstring); NoSafeOrder when none exists."""
    preferred = _preferred(hosts)
    newest = max(h.qemu_version for h in hosts)
    why = stranded(preferred, hosts_at_once, newest)
    order = preferred
    if why is not None:
        found = None
        if len(hosts) <= SEARCH_ALL_UP_TO:
            found = next(
                (
                    list(candidate)
                    for candidate in itertools.permutations(preferred)
                    if stranded(candidate, hosts_at_once, newest) is None
                ),
                None,
            )
        if found is None:
            raise NoSafeOrder(
                f"no order of the cluster's hosts avoids stranding a VM; {why.reason}",
                host=why.host,
                vm=why.vm,
                fix="free memory on the newer hosts, give --hosts-at-once 1, or move that VM "
                "by hand first; nothing was changed",
            )
        order = found
    steps = tuple(
        tuple(h.name for h in order[i : i + hosts_at_once])
        for i in range(0, len(order), hosts_at_once)
    )
    return RollOrder(steps, _reasons(order, preferred, why))


def _reasons(
    order: Sequence[RollHost], preferred: Sequence[RollHost], why: Stranding | None
) -> tuple[str, ...]:
    versions = sorted({h.qemu_version for h in order})
    lines = []
    if len(versions) > 1:
        lines.append(
            f"oldest QEMU first ({', '.join(format_version(v) for v in versions)}): a VM "
            "never has to move to an older QEMU"
        )
    else:
        lines.append(f"every host runs QEMU {format_version(versions[0])}")
    lines.append("among hosts of one version, the least loaded first")
    if why is not None and list(order) != list(preferred):
        lines.append(f"the preferred order would strand a VM ({why.reason})")
    return tuple(lines)
