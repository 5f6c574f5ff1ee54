"""`vmigrate estimate`: what `vmigrate live` with the same options will do, before it starts.

Measured: the guest's dirty rate over two windows (a working-set curve: a guest that rewrites
16 MiB reads the same over 1 s and 4 s, one that keeps dirtying new memory does not), the
link into the destination (a probe upload, unless given), the host pair's fixed costs
(learned from its finished jobs in the store). Then `live.rehearsal` runs live's own policy
over the modelled migration: route, passes, when the policy acts, total time, libvirt's
downtime and the guest's largest gap. The prediction is recorded in the store (an
`estimate` job) so that `jobs show` can put it next to the move that follows. Cold: the
disks' allocated bytes over the link."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from vmigrate.domxml.domain import parse_domain
from vmigrate.encryption import migration_tls
from vmigrate.errors import UsageError, VmigrateError
from vmigrate.hosts import HostRef, resolve_host
from vmigrate.live.history import (
    ESTIMATE_KIND,
    finished_moves,
    learned_costs,
    link_history,
)
from vmigrate.live.policy import PolicyConfig
from vmigrate.live.rehearsal import FixedCosts, Workload, boundary_alternative, rehearse
from vmigrate.store import JobStore, StoreLocation
from vmigrate.virt.connection import domain_state, lookup_domain, open_with_timeout
from vmigrate.virt.errors import libvirt_errors
from vmigrate.virt.facts import measure_dirty_rate, resident_bytes
from vmigrate.virt.linkprobe import measure_upload
from vmigrate.virt.storage import volume_info

MIB = 1 << 20
CONNECT_TIMEOUT_S = 10.0
SHORT_WINDOW_S = 1
#: The long window saw at most this share of what the short window's rate predicts: the
#: guest re-dirties a working set smaller than the long window's reach.
SATURATED_SHARE = 0.8
#: QEMU's TLS on the migration stream costs CPU on both ends: throughput measured in the
#: lab with and without it (L2: 8.8 s in clear, 9.5 s with TLS for the same bytes).
TLS_THROUGHPUT = 0.92
#: QEMU's resident memory beyond what pass 1 sends (its own memory, TCG's code buffer,
#: resident zero pages), until the pair's moves teach better: the lab's guests of 256 MiB
#: to 1 GiB measured 173-181 MiB (bench/results: 618 MiB resident, 445 MiB sent, ...).
DEFAULT_RESIDENT_OVERHEAD_BYTES = 170 * MIB


@dataclass(frozen=True)
class StreamChoice:
    """The stream options `live` takes, as given (None: live's default)."""

    bandwidth_mib: int | None = None
    parallel_connections: int | None = None
    compressed: bool = False
    tls: bool | None = None


@dataclass(frozen=True)
class Forecast:
    vm: str
    source: str
    destination: str
    memory_bytes: int
    dirty_curve: list[list[float]]  # [[window s, distinct bytes dirtied], ...]
    dirty_rate_bps: float | None
    working_set_bytes: int | None
    touched_bytes: int | None  # the VM's QEMU resident memory: what pass 1 sends in full
    link_bps: float
    bandwidth_bps: float  # what the stream gets: the link, a --bandwidth limit, TLS, history
    bandwidth_source: str
    tls: bool
    policy: dict[str, Any]
    costs: str
    prediction: dict[str, Any] | None
    cold_bytes: int
    cold_seconds: float
    job_id: int | None = None
    stream_note: str = ""  # options the model does not weigh
    # Taken off touched_bytes for pass 1: QEMU's own memory and the zero pages it skips,
    # learned from the pair's moves (overhead_learned) or the lab's default.
    resident_overhead_bytes: int = 0
    overhead_learned: bool = False
    # The other route live takes with the link or the dirty rate read a little off
    # (rehearsal.boundary_alternative): the guest sits on the policy's boundary.
    alternative: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def workload_from_curve(
    memory_bytes: int, curve: list[tuple[float, float]], touched_bytes: int | None = None
) -> Workload:
    """Rate and working set from distinct bytes dirtied over a short and a long window."""
    (short_s, short_b), (long_s, long_b) = curve[0], curve[-1]
    short_rate = short_b / short_s
    if long_b < SATURATED_SHARE * short_rate * long_s:
        # The long window re-dirtied what the short one had: the working set is what it saw.
        # (page sampling is noisy: the longer window cannot have seen less than the shorter)
        ws = max(round(long_b), round(short_b), 1)
        return Workload(memory_bytes, short_rate, ws, touched_bytes)
    # Still dirtying new memory after the long window: its rate is the steadier figure.
    return Workload(memory_bytes, long_b / long_s, None, touched_bytes)


def stream_bandwidth(link_bps: float, stream: StreamChoice, tls: bool) -> float:
    limited = (
        link_bps if stream.bandwidth_mib is None else min(link_bps, stream.bandwidth_mib * MIB)
    )
    return limited * (TLS_THROUGHPUT if tls else 1.0)


def forecast(
    vm: str,
    source: str,
    destination: str,
    config: PolicyConfig,
    *,
    stream: StreamChoice | None = None,
    link_mib: float | None = None,
    measure_seconds: int = 4,
    hosts_file: Path | None = None,
    store_path: StoreLocation | None = None,
    record: bool = True,
    copy_storage: bool = False,
) -> Forecast:
    stream = stream or StreamChoice()
    if link_mib is not None and not 0 < link_mib <= 1_000_000:
        raise UsageError(
            f"a link of {link_mib:g} MiB/s is impossible",
            fix="give the link's real rate, e.g. --link 119 for 1 Gbit/s",
        )
    if measure_seconds <= SHORT_WINDOW_S:
        raise UsageError(
            f"--measure {measure_seconds} s is too short: it must be longer than the "
            f"{SHORT_WINDOW_S} s first window",
            fix="use --measure 4 (the default)",
        )
    src_ref = resolve_host(source, hosts_file)
    dst_ref = resolve_host(destination, hosts_file)
    tls = migration_tls(stream.tls, src_ref, dst_ref)
    memory, cold, curve, touched, tcg = _measure_guest(vm, src_ref, measure_seconds)
    if link_mib is not None:
        link, link_source = link_mib * MIB, "given"
    elif dst_ref.bandwidth_mib is not None:
        link, link_source = dst_ref.bandwidth_mib * MIB, "hosts file"
    else:
        link, link_source = _measured_bandwidth(dst_ref)
    bandwidth = stream_bandwidth(link, stream, tls)
    with JobStore(store_path) as store:
        costs = _pair_costs(store, src_ref.uri, dst_ref.uri, memory)
        history = link_history(store, src_ref.uri, dst_ref.uri, link, tls=tls)
        if history.rate_bps is not None and link_source != "given":
            bandwidth = stream_bandwidth(history.rate_bps, replace(stream, tls=False), tls=False)
            link_source += (
                f"; the stream gets what {history.moves} earlier move(s) of this pair got "
                "over the same link"
            )
        overhead = (
            history.resident_overhead_bytes
            if history.resident_overhead_bytes is not None
            else DEFAULT_RESIDENT_OVERHEAD_BYTES
        )
        load = workload_from_curve(
            memory, curve, None if touched is None else max(round(touched - overhead), 0)
        )
        disks = cold if copy_storage else 0
        prediction = rehearse(load, bandwidth, config, costs, disk_bytes=disks, tcg=tcg)
        other = boundary_alternative(
            load, bandwidth, config, costs, prediction, disk_bytes=disks, tcg=tcg
        )
        result = Forecast(
            vm,
            src_ref.name,
            dst_ref.name,
            memory,
            [[s, b] for s, b in curve],
            load.dirty_rate_bps,
            load.working_set_bytes,
            touched,
            link,
            bandwidth,
            link_source,
            tls,
            asdict(config),
            costs.describe(),
            prediction.to_dict(),
            cold,
            round(cold / link, 2),
        )
        result = replace(
            result,
            stream_note=_unweighed(stream),
            resident_overhead_bytes=round(overhead),
            overhead_learned=history.resident_overhead_bytes is not None,
            alternative=None if other is None else other.to_dict(),
        )
        if record:
            result = replace(result, job_id=_record(store, result, src_ref, dst_ref))
    return result


def _measure_guest(
    vm: str, src_ref: HostRef, measure_seconds: int
) -> tuple[int, int, list[tuple[float, float]], int | None, bool]:
    """Its memory, disk data, dirty curve, resident memory, and whether it runs under
    QEMU's TCG (type "qemu"), where the throttle slows auto-converge's syncs."""
    conn = open_with_timeout(src_ref.uri, host=src_ref.name, timeout=CONNECT_TIMEOUT_S)
    try:
        domain = lookup_domain(conn, vm, host=src_ref.name)
        with libvirt_errors(host=src_ref.name, vm=vm, doing="read the VM"):
            _state, _max_kib, memory_kib, *_ = domain.info()
            domain_xml = domain.XMLDesc(0)
            cold = _allocated_bytes(conn, domain_xml)
            tcg = parse_domain(domain_xml).virt_type == "qemu"
            state = domain_state(domain)
        if state not in ("running", "paused"):
            raise VmigrateError(
                f"the VM is {state}: there is nothing to estimate for a live move",
                vm=vm,
                host=src_ref.name,
                fix=f"a cold move (vmigrate cold) sends its {cold / MIB:,.0f} MiB of disk data",
            )
        curve = [
            (float(s), measure_dirty_rate(domain, s, host=src_ref.name, vm=vm) * s)
            for s in (SHORT_WINDOW_S, measure_seconds)
        ]
        touched = resident_bytes(domain, host=src_ref.name, vm=vm)
    finally:
        conn.close()
    return memory_kib * 1024, cold, curve, touched, tcg


def _unweighed(stream: StreamChoice) -> str:
    given = [
        name
        for name, value in (
            ("--parallel", stream.parallel_connections),
            ("--compress", stream.compressed),
        )
        if value
    ]
    if not given:
        return ""
    return (
        f"{' and '.join(given)} change how QEMU sends, not the link: the prediction assumes "
        "the stream still runs at the link's rate"
    )


def _pair_costs(
    store: JobStore, source_uri: str, destination_uri: str, memory_bytes: int
) -> FixedCosts:
    return learned_costs(finished_moves(store, source_uri, destination_uri), memory_bytes)


def _record(store: JobStore, result: Forecast, src_ref: HostRef, dst_ref: HostRef) -> int:
    """The prediction as a finished `estimate` job, for `jobs show` of the move after it."""
    job_id = store.create_job(
        ESTIMATE_KIND, result.vm, src_ref.uri, dst_ref.uri, {"policy": result.policy}
    )
    route = (result.prediction or {}).get("route", "unknown")
    store.finish_job(job_id, "completed", f"predicted: {route}", result.to_dict())
    return job_id


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
            fix="give the link's rate with --link MiB/s (e.g. 119 for 1 Gbit/s)",
        )
    return rate, (
        f"measured into {dst_ref.name}, the way the move's data flows "
        "(2 s probe upload from this machine)"
    )


def _allocated_bytes(conn: Any, domain_xml: str) -> int:
    total = 0
    for disk in parse_domain(domain_xml).disks:
        if disk.path and not disk.readonly:
            info = volume_info(conn, disk.path)
            total += info.allocation if info else 0
    return total
