"""`vmigrate estimate`: how long a move will take and how long the guest will pause, before
it starts. Live: QEMU measures the guest's dirty rate, the pre-copy model in estimate.py
predicts passes, time and downtime, and says which options finish it. Cold: the disks'
allocated bytes over the link."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vmigrate.domxml.domain import parse_domain
from vmigrate.errors import UsageError, VmigrateError
from vmigrate.estimate import (
    Advice,
    PrecopyEstimate,
    PrecopyInput,
    advise,
    estimate_postcopy,
    estimate_precopy,
    estimate_with_autoconverge,
)
from vmigrate.hosts import HostRef, resolve_host
from vmigrate.virt.connection import domain_state, lookup_domain, open_with_timeout
from vmigrate.virt.errors import libvirt_errors
from vmigrate.virt.facts import measure_dirty_rate
from vmigrate.virt.linkprobe import measure_upload
from vmigrate.virt.storage import volume_info

MIB = 1 << 20
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Forecast:
    vm: str
    source: str
    destination: str
    memory_bytes: int
    dirty_rate_bps: float | None
    bandwidth_bps: float
    bandwidth_source: str  # given | measured ...
    max_downtime_ms: float
    precopy: dict[str, Any] | None
    autoconverge: dict[str, Any] | None
    autoconverge_throttle_pct: int | None
    postcopy: dict[str, Any] | None
    advice: dict[str, Any] | None
    cold_bytes: int
    cold_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def forecast(
    vm: str,
    source: str,
    destination: str,
    *,
    bandwidth_mib: float | None = None,
    max_downtime_ms: float = 300.0,
    postcopy_allowed: bool = True,
    measure_seconds: int = 2,
    hosts_file: Path | None = None,
) -> Forecast:
    if bandwidth_mib is not None and not 0 < bandwidth_mib <= 1_000_000:
        raise UsageError(
            f"a bandwidth of {bandwidth_mib:g} MiB/s is impossible",
            fix="give the link's real rate, e.g. --bandwidth 119 for 1 Gbit/s",
        )
    if not 0 < max_downtime_ms < math.inf:
        raise UsageError(
            f"a maximum downtime of {max_downtime_ms:g} ms is impossible",
            fix="give a positive number of milliseconds",
        )
    src_ref = resolve_host(source, hosts_file)
    dst_ref = resolve_host(destination, hosts_file)
    if bandwidth_mib is None and dst_ref.bandwidth_mib is not None:
        bandwidth, bandwidth_source = dst_ref.bandwidth_mib * MIB, "hosts file"
    elif bandwidth_mib is None:
        bandwidth, bandwidth_source = _measured_bandwidth(dst_ref)
    else:
        bandwidth, bandwidth_source = bandwidth_mib * MIB, "given"
    conn = open_with_timeout(src_ref.uri, host=src_ref.name, timeout=CONNECT_TIMEOUT_S)
    try:
        domain = lookup_domain(conn, vm, host=src_ref.name)
        with libvirt_errors(host=src_ref.name, vm=vm, doing="read the VM"):
            _state, _max_kib, memory_kib, *_ = domain.info()
            memory = memory_kib * 1024
            cold = _allocated_bytes(conn, domain.XMLDesc(0))
            state = domain_state(domain)
        if state not in ("running", "paused"):
            raise VmigrateError(
                f"the VM is {state}: there is nothing to estimate for a live move",
                vm=vm,
                host=src_ref.name,
                fix=f"a cold move of its {cold / MIB:,.0f} MiB of disk "
                f"data would take ~{cold / bandwidth:.0f} s at this bandwidth (vmigrate cold)",
            )
        dirty = measure_dirty_rate(domain, measure_seconds, host=src_ref.name, vm=vm)
    finally:
        conn.close()
    model = PrecopyInput(
        memory_bytes=memory,
        dirty_rate_bps=dirty,
        bandwidth_bps=bandwidth,
        max_downtime_ms=max_downtime_ms,
    )
    precopy: PrecopyEstimate = estimate_precopy(model)
    throttled, pct = estimate_with_autoconverge(model)
    advice: Advice = advise(
        model, allowed_max_downtime_ms=max_downtime_ms, postcopy_allowed=postcopy_allowed
    )
    return Forecast(
        vm,
        src_ref.name,
        destination,
        memory,
        dirty,
        bandwidth,
        bandwidth_source,
        max_downtime_ms,
        asdict(precopy),
        asdict(throttled),
        pct,
        asdict(estimate_postcopy(model)) if postcopy_allowed else None,
        asdict(advice),
        cold,
        round(cold / bandwidth, 2),
    )


def _measured_bandwidth(dst_ref: HostRef) -> tuple[float, str]:
    conn = open_with_timeout(dst_ref.uri, host=dst_ref.name, timeout=CONNECT_TIMEOUT_S)
    try:
        rate = measure_upload(conn, host=dst_ref.name)
    finally:
        conn.close()
    if rate is None:
        raise UsageError(
            f"cannot measure the bandwidth to {dst_ref.name}: no storage pool there has "
            "1 GiB free for the probe",
            host=dst_ref.name,
            fix="give it with --bandwidth MiB/s (e.g. 119 for 1 Gbit/s)",
        )
    return rate, f"measured from this machine to {dst_ref.name} (2 s upload through libvirt)"


def _allocated_bytes(conn: Any, domain_xml: str) -> int:
    total = 0
    for disk in parse_domain(domain_xml).disks:
        if disk.path and not disk.readonly:
            info = volume_info(conn, disk.path)
            total += info.allocation if info else 0
    return total
