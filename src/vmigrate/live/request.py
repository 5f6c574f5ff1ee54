"""What `vmigrate live` is asked to do, and what it reports (plain data)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vmigrate.events import EventSink, Notice
from vmigrate.facts import HostFacts
from vmigrate.live.policy import PolicyConfig
from vmigrate.migration_features import BY_NAME, FeatureUse, features_used, lacking
from vmigrate.model import LiveOptions
from vmigrate.store import StoreLocation


@dataclass(frozen=True)
class LiveRequest:
    vm: str
    source: str
    destination: str
    policy: PolicyConfig
    peer_to_peer: bool = True
    transient: bool = False  # leave definitions as they are
    bandwidth_mib: int | None = None
    parallel_connections: int | None = None
    compressed: bool = False
    tls: bool | None = None  # QEMU TLS for the stream; None: when both hosts declare it
    migration_address: str | None = None
    force: bool = False  # go ahead despite failed checks
    hosts_file: Path | None = None
    store_path: StoreLocation | None = None
    copy_storage: bool = False  # mirror local disks along with memory
    disks: tuple[str, ...] | None = None  # --disks: the local disks to copy (default: all)
    delete_source_disks: bool = False  # after a verified move, remove the source's top images
    postcopy_wait_s: float = 600.0  # how long a broken link in post-copy may take to return


@dataclass(frozen=True)
class LiveReport:
    job_id: int
    vm: str
    source: str
    destination: str
    outcome: str  # completed | aborted (by the policy) | cancelled (by a user) | failed
    message: str
    total_s: float
    downtime_ms: float | None
    #: What crossed the link: the memory QEMU put on the migration stream, plus, with
    #: --copy-storage, the copied disks' data (storage["disk_bytes_sent"]: what the images
    #: hold allocated, which counts allocated zeroes that cross as write-zero requests);
    #: never the disks' virtual size (holes do not cross).
    bytes_sent: int
    passes: int
    postcopy: bool
    actions: list[dict[str, Any]] = field(default_factory=list)
    placement: dict[str, Any] = field(default_factory=dict)
    placement_ok: bool = False
    storage: dict[str, Any] = field(default_factory=dict)  # --copy-storage: what moved, made
    fix: str = ""  # what the operator should do when the outcome needs a hand
    gap_ms: float | None = None  # the largest gap the guest saw, where a probe measures it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def live_options(request: LiveRequest, migration_address: str | None, *, tls: bool) -> LiveOptions:
    return LiveOptions(
        peer_to_peer=request.peer_to_peer,
        persist_destination=not request.transient,
        postcopy=request.policy.postcopy_allowed,
        autoconverge=request.policy.autoconverge_at_start,
        autoconverge_initial=request.policy.autoconverge_initial_pct,
        autoconverge_increment=request.policy.autoconverge_increment_pct,
        bandwidth_mib=request.bandwidth_mib,
        parallel_connections=request.parallel_connections,
        compressed=request.compressed,
        tls=tls,
        migration_uri=f"tcp://{migration_address}" if migration_address else None,
    )


def features_of(request: LiveRequest, *, tls: bool) -> FeatureUse:
    """The migration features this move would use: the checks make sure both sides have them."""
    return features_used(
        postcopy=request.policy.postcopy_allowed,
        autoconverge=request.policy.autoconverge_at_start,
        parallel=bool(request.parallel_connections),
        compressed=request.compressed,
        tls=tls,
    )


def within_shared_features(
    request: LiveRequest,
    source: HostFacts | None,
    destination: HostFacts | None,
    emit: EventSink,
) -> LiveRequest:
    """The request with the policy's optional features (post-copy, auto-converge) limited to
    what both hosts offer (migration_features.py), each one taken away said in a Notice. The
    features the user asked for are the checks' business: a side without one fails them."""
    if source is None or destination is None:
        return request
    optional = FeatureUse(optional=features_of(request, tls=False).optional)
    missing = lacking(
        optional,
        (source.hypervisor_version, source.libvirt_version),
        (destination.hypervisor_version, destination.libvirt_version),
    )
    policy = request.policy
    if "postcopy-ram" in missing:
        policy = policy.with_limits(postcopy=False)
    if "auto-converge" in missing:
        policy = replace(policy, autoconverge_allowed=False)
    for feature in missing:
        emit(Notice(f"{BY_NAME[feature].what} is not used: one host's QEMU lacks {feature}"))
    return replace(request, policy=policy) if policy != request.policy else request
