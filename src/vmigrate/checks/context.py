"""Everything the checks look at, gathered before any check runs (so checks stay pure)."""

from __future__ import annotations

from dataclasses import dataclass

from vmigrate.facts import DomainFacts, HostFacts, NetworkVolume, ShareProbe, VolumeLocation
from vmigrate.hosts import HostRef
from vmigrate.migration_features import FeatureUse
from vmigrate.model import Mode
from vmigrate.volume_probe import VolumeRead


@dataclass(frozen=True)
class DiskStorage:
    """Where one disk lives on the source, and what the destination has for it."""

    target: str
    source_location: VolumeLocation | None  # None: no libvirt pool on the source holds it
    share_probe: ShareProbe | None  # None: not probed (network disk, empty, no pool)
    exists_on_destination: bool  # the same path is a volume on the destination
    destination_pool_for_copy: str | None  # where a copy would be created
    destination_available: int | None  # free bytes in that pool


@dataclass(frozen=True)
class NetworkDiskView:
    """A network disk's volume as each host's own pools see it."""

    target: str
    source: NetworkVolume | None  # None: not looked up (that host's storage driver is missing)
    destination: NetworkVolume | None
    #: Read from here as QEMU opens it, when here is the destination (iscsi, nfs).
    read_here: VolumeRead | None = None


@dataclass(frozen=True)
class PortProbe:
    address: str
    port: int
    result: str  # open | refused | filtered | unreachable | error: ...
    seconds: float


@dataclass(frozen=True)
class CheckInput:
    mode: Mode
    copy_storage: bool
    source_name: str
    destination_name: str
    source: HostFacts | None
    destination: HostFacts | None
    source_error: str | None
    destination_error: str | None
    domain: DomainFacts | None
    destination_domcaps: str | None
    destination_domcaps_error: str | None
    disks: tuple[DiskStorage, ...]
    libvirt_port: PortProbe | None
    migration_ports: tuple[PortProbe, ...]
    probes_representative: bool  # this machine is the source: our probes see what it sees
    destination_error_fix: str = ""  # what to do, when the cause of the error is known
    source_ref: HostRef | None = None
    destination_ref: HostRef | None = None
    migration_tls_requested: bool | None = None  # --tls / --no-tls; None: by declaration
    peer_to_peer: bool = True
    #: Network disks' servers (rbd monitors, iSCSI portals, NFS servers) probed from here;
    #: they show what the destination reaches only when it runs here too (the lab).
    storage_servers: tuple[PortProbe, ...] = ()
    destination_probes_representative: bool = False
    network_disks: tuple[NetworkDiskView, ...] = ()
    #: The migration features the live move would use; None: not said (a cold move, or a
    #: caller that does not know the options), then the defaults of `live` are assumed.
    features: FeatureUse | None = None
