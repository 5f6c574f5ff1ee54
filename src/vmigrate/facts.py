"""What vmigrate knows about hosts, domains, pools and volumes: plain values read once.

`virt/` fills these in from libvirt; checks, plans and reports read them without libvirt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from vmigrate.domxml.domain import DomainSummary
from vmigrate.hosts import HostRef


@dataclass(frozen=True)
class PoolFacts:
    name: str
    type: str
    target_path: str | None
    active: bool
    capacity: int
    allocation: int
    available: int


@dataclass(frozen=True)
class NetworkFacts:
    name: str
    active: bool
    bridge: str | None
    portgroups: tuple[str, ...]


@dataclass(frozen=True)
class MissingDriver:
    """A libvirt driver the host's daemon lacks: what cannot be done there, and the package."""

    driver: str  # "storage", "network", ...
    package: str
    detail: str  # libvirt's words


@dataclass(frozen=True)
class SecretFacts:
    """A libvirt secret of a host (the cephx key of an rbd disk, an iSCSI CHAP password):
    never its value; at most a digest of it, where one was taken (none is, yet)."""

    uuid: str
    usage_type: str  # ceph | iscsi | volume | tls | vtpm | none
    usage_id: str  # the usage name (e.g. "client.libvirt secret"), or "" for none
    value_sha256: str | None  # None: private, or no value set


@dataclass(frozen=True)
class GuestUsage:
    """One domain of a host and what it holds there."""

    name: str
    uuid: str
    state: str  # running | paused | shut off | ...
    persistent: bool
    memory_bytes: int  # its current maximum memory
    vcpus: int


_VERSIONED_MACHINE = re.compile(r"^(?P<family>.+)-(?P<version>\d+(?:\.\d+)+)$")


def machine_family(machine: str) -> tuple[str, tuple[int, ...]]:
    """'pc-i440fx-10.0' -> ('pc-i440fx', (10, 0)); a name without a version: (name, ())."""
    match = _VERSIONED_MACHINE.match(machine)
    if match is None:
        return machine, ()
    return match["family"], tuple(int(part) for part in match["version"].split("."))


@dataclass(frozen=True)
class DomainOffer:
    """What a host's domain capabilities offer a guest of one architecture and virt type
    (getDomainCapabilities without a machine: the QEMU's default machine)."""

    arch: str
    virt_type: str  # kvm | qemu
    default_machine: str
    cpu_models: dict[str, bool]  # custom-mode CPU model -> usable here as it is
    #: device -> enum -> values, for each device the domcaps list as supported. A device or
    #: an enum the domcaps do not list is unknown (an older libvirt reports less), not absent.
    devices: dict[str, dict[str, tuple[str, ...]]]
    unsupported_devices: tuple[str, ...]  # listed with supported='no'
    features: dict[str, bool]  # <features> child -> supported
    xml: str  # libvirt's answer itself, for the CPU check's finer reading


@dataclass(frozen=True)
class HostCapabilities:
    """What a host's QEMU can run, read once with its facts: versions, the machine types of
    getCapabilities() per architecture with their aliases, and its domain capabilities."""

    libvirt_version: int
    qemu_version: int
    machines: dict[str, tuple[str, ...]]  # arch -> every machine type name, aliases included
    machine_aliases: dict[str, dict[str, str]]  # arch -> alias ('pc') -> 'pc-i440fx-10.0'
    offers: tuple[DomainOffer, ...] = ()
    offer_errors: dict[str, str] = field(default_factory=dict)  # virt type -> libvirt's words

    def canonical_machine(self, arch: str, machine: str) -> str | None:
        """The machine type `machine` stands for here (an alias resolved); None: unknown."""
        if machine in self.machine_aliases.get(arch, {}):
            return self.machine_aliases[arch][machine]
        return machine if machine in self.machines.get(arch, ()) else None

    def newest_machine(self, arch: str, family: str) -> str | None:
        """The newest versioned machine type of `family` ('pc-q35') this QEMU runs."""
        versioned = [
            (version, name)
            for name in self.machines.get(arch, ())
            for found, version in [machine_family(name)]
            if found == family and version and name not in self.machine_aliases.get(arch, {})
        ]
        return max(versioned)[1] if versioned else None

    def offer(self, arch: str, virt_type: str) -> DomainOffer | None:
        return next((o for o in self.offers if o.arch == arch and o.virt_type == virt_type), None)


@dataclass(frozen=True)
class HostFacts:
    ref: HostRef
    hostname: str
    host_uuid: str
    libvirt_version: int
    hypervisor_type: str
    hypervisor_version: int
    arch: str
    cpus: int
    memory_free_bytes: int  # the kernel's MemFree: far below what the host can give
    memory_available_bytes: int  # free + buffers + cached: what the host can hand a VM
    rtt_ms: float
    pools: tuple[PoolFacts, ...]
    networks: tuple[NetworkFacts, ...]
    host_interfaces: tuple[str, ...] | None  # None: the host's interface driver cannot tell
    domains: dict[str, str]  # name -> UUID of every domain the host knows
    missing_drivers: tuple[MissingDriver, ...] = ()  # pools/networks then read as empty
    memory_total_bytes: int = 0  # what libvirt reports the host has (0: not read)
    guests: tuple[GuestUsage, ...] = ()  # every domain the host knows, with its size
    cpu_model: str = ""  # the host CPU's model as libvirt names it
    secrets: tuple[SecretFacts, ...] | None = None  # None: the host would not list them
    capabilities: HostCapabilities | None = None  # None: not read (a test's hand-made facts)

    def secret(self, uuid: str | None, usage: str | None) -> SecretFacts | None:
        """The secret a disk names, by UUID or by usage name."""
        for secret in self.secrets or ():
            if (uuid and secret.uuid == uuid) or (usage and secret.usage_id == usage):
                return secret
        return None

    def lacks(self, driver: str) -> bool:
        return any(missing.driver == driver for missing in self.missing_drivers)


@dataclass(frozen=True)
class DomainFacts:
    name: str
    state: str
    persistent: bool
    live_xml: str
    summary: DomainSummary
    snapshots: int
    managed_save: bool
    block_jobs: tuple[str, ...]  # disks with an active block job
    migratable_error: str | None  # libvirt's refusal to produce migratable XML, if any
    active_job: str | None = None  # a libvirt job in progress (a migration, a save, ...)


@dataclass(frozen=True)
class VolumeLocation:
    pool: str
    pool_type: str
    pool_path: str | None
    capacity: int
    allocation: int


@dataclass(frozen=True)
class NetworkVolume:
    """A network disk's volume as one host's own libvirt pools see it."""

    pool: str | None  # the pool that reaches the disk's server and holds it; None: none does
    volume: str | None  # the volume's name in that pool; None: the pool has no such volume
    capacity: int | None
    pool_secret_uuid: str | None  # the secret the pool authenticates with (rbd, iSCSI CHAP)
    pools_looked_at: tuple[str, ...] = ()  # this host's pools on the same server and volume set
    error: str | None = None  # such a pool could not be listed (its server did not answer)
    pool_secret_usage: str | None = None  # ... when the pool names it by usage


@dataclass(frozen=True)
class ShareProbe:
    shared: bool
    destination_pool: str | None  # the destination pool the probe appeared in
    detail: str


@dataclass(frozen=True)
class VolumeInfo:
    path: str
    name: str
    pool: str
    pool_path: str | None
    format: str
    capacity: int
    allocation: int
    physical: int  # the file's size: what a verbatim copy writes
    backing_path: str | None


def available_memory_bytes(node_memory_stats_kib: dict[str, int]) -> int:
    """What a host can hand a new guest: free memory plus the page cache and buffers the
    kernel gives back on demand (libvirt's getMemoryStats, in KiB). getFreeMemory() is
    MemFree alone, which a warm page cache keeps far below this."""
    stats = node_memory_stats_kib
    return (stats.get("free", 0) + stats.get("buffers", 0) + stats.get("cached", 0)) * 1024
