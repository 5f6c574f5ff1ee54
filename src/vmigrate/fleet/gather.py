"""Facts for a fleet operation, gathered once: every host in parallel, then each VM to move
and the checks of each VM against each target, ready for the pure planner (plan.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from vmigrate.capacity import MIB, host_budget, memory_need_bytes
from vmigrate.errors import VmigrateError
from vmigrate.facts import DomainFacts, GuestUsage
from vmigrate.fleet.plan import (
    LIVE,
    FleetInput,
    Limits,
    PairVerdict,
    Purpose,
    TargetHost,
    VmLoad,
    move_mode,
)
from vmigrate.hosts import HostRef
from vmigrate.model import CheckReport, Finding, Mode, Verdict
from vmigrate.preflight import HostSession, PairChecks, open_session
from vmigrate.virt.connection import Connection, lookup_domain, open_with_timeout
from vmigrate.virt.facts import gather_domain_facts, measure_dirty_rate
from vmigrate.virt.linkprobe import measure_upload

log = logging.getLogger(__name__)
DIRTY_RATE_SECONDS = 1
#: Checks the planner makes itself, against the capacity left after the moves it planned.
PLANNER_CHECKS = ("resources.",)


def open_sessions(refs: Iterable[HostRef]) -> dict[str, HostSession]:
    """Connect to every host at once and read its facts; a host that does not answer is a
    session with an error, never an exception."""
    unique = {ref.name: ref for ref in refs}
    if not unique:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(unique))) as pool:
        sessions = list(pool.map(open_session, unique.values()))
    return {session.ref.name: session for session in sessions}


def close_sessions(sessions: dict[str, HostSession]) -> None:
    for session in sessions.values():
        session.close()


def target_host(session: HostSession, maintenance: bool) -> TargetHost:
    if session.facts is None:
        return TargetHost(session.ref.name, None, maintenance, session.error)
    return TargetHost(session.ref.name, host_budget(session.facts), maintenance)


@dataclass
class GatheredVm:
    load: VmLoad
    domain: DomainFacts
    verdicts: list[PairVerdict] = field(default_factory=list)
    reports: list[CheckReport] = field(default_factory=list)  # the checks behind them


def _dirty_rates(session: HostSession, names: Sequence[str]) -> dict[str, float | None]:
    """QEMU's dirty-rate measurement of every running VM at once (1 s each, in parallel)."""
    conn = session.conn
    assert conn is not None

    def measure(name: str) -> float | None:
        try:
            domain = lookup_domain(conn, name, host=session.ref.name)
            return measure_dirty_rate(domain, DIRTY_RATE_SECONDS, host=session.ref.name, vm=name)
        except VmigrateError as err:
            log.info("dirty rate of %s not measured: %s", name, err)
            return None

    if not names:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(names))) as pool:
        return dict(zip(names, pool.map(measure, names), strict=True))


def gather_vms(
    source: HostSession,
    targets: Sequence[HostSession],
    mode: str,
    names: Sequence[str] | None = None,
    on_vm: Callable[[GatheredVm], None] | None = None,
) -> list[GatheredVm]:
    """Each VM of `source` (or only `names`) with its size, dirty rate, local disks and the
    verdict of every check against every target that answers. The dirty rates (1 s of
    QEMU's measurement) are measured while the checks run. The VMs are checked in the
    planner's order (largest first), and each goes to `on_vm` as soon as its checks are
    made (its dirty rate still None): a streaming plan places it then."""
    checks = PairChecks(source)
    assert source.conn is not None and source.facts is not None
    guests = sorted(
        (g for g in source.facts.guests if names is None or g.name in names),
        key=lambda g: (-memory_need_bytes(g.memory_bytes), g.name),
    )
    answering = [t for t in targets if t.facts is not None and t.ref.name != source.ref.name]
    running = [g.name for g in guests if g.state in ("running", "paused")]
    with ThreadPoolExecutor(max_workers=1) as background:
        measuring = background.submit(_dirty_rates, source, running)
        gathered = []
        for guest in guests:
            item = _gather_one(checks, guest, answering, mode)
            if item is None:
                continue
            gathered.append(item)
            if on_vm is not None:
                on_vm(item)
        rates = measuring.result()
    for item in gathered:
        item.load = replace(item.load, dirty_rate_bps=rates.get(item.load.name))
    return gathered


def _gather_one(
    checks: PairChecks, guest: GuestUsage, answering: Sequence[HostSession], mode: str
) -> GatheredVm | None:
    """One VM (its dirty rate still to come) and its checks against every target; None
    when it vanished while we looked."""
    source = checks.source
    assert source.conn is not None
    try:
        handle = lookup_domain(source.conn, guest.name, host=source.ref.name)
        domain = gather_domain_facts(handle, host=source.ref.name)
    except VmigrateError as err:  # gone while we looked: nothing to move
        log.info("%s vanished from %s: %s", guest.name, source.ref.name, err)
        return None
    disks = checks.disk_storage(domain, answering[0]) if answering else ()
    local = [d for d in disks if d.share_probe is None or not d.share_probe.shared]
    load = VmLoad(
        name=guest.name,
        host=source.ref.name,
        state=guest.state,
        persistent=guest.persistent,
        memory_bytes=guest.memory_bytes,
        vcpus=guest.vcpus,
        dirty_rate_bps=None,
        local_disks=tuple(d.target for d in local),
        local_disk_bytes=sum(
            d.source_location.allocation for d in local if d.source_location is not None
        ),
    )
    item = GatheredVm(load, domain)
    how, _why = move_mode(load, mode)
    if how is None:
        return item
    check_mode = Mode.LIVE if how == LIVE else Mode.COLD
    copy_storage = how == LIVE and bool(load.local_disks)
    for target in answering:
        checking = time.monotonic()
        found = checks.findings(domain, target, mode=check_mode, copy_storage=copy_storage)
        item.verdicts.append(_verdict(guest.name, target.ref.name, found))
        item.reports.append(
            CheckReport(
                guest.name,
                source.ref.name,
                target.ref.name,
                check_mode,
                copy_storage,
                found,
                time.monotonic() - checking,
            )
        )
    return item


def _verdict(vm: str, destination: str, findings: Iterable[Finding]) -> PairVerdict:
    blockers, warnings = [], []
    for finding in findings:
        if finding.check.startswith(PLANNER_CHECKS):
            continue
        text = f"{finding.check}: {finding.summary}"
        if finding.verdict is Verdict.FAIL:
            blockers.append(text)
        elif finding.verdict is Verdict.WARN:
            warnings.append(text)
    return PairVerdict(vm, destination, tuple(blockers), tuple(warnings))


def link_bandwidth(given_mib: float | None, targets: Sequence[HostSession]) -> tuple[float, str]:
    """The bandwidth moves share: given, from the hosts file, or measured to a target."""
    known = known_bandwidth(given_mib, [t.ref for t in targets])
    if known is not None:
        return known
    for target in targets:
        measured = _measured(target.conn, target.ref.name) if target.conn is not None else None
        if measured is not None:
            return measured
    return ASSUMED


ASSUMED = (119 * MIB, "assumed 1 Gbit/s (nothing measured; give --bandwidth)")
PROBE_CONNECT_S = 8.0
#: The fleet's probe upload: 1 s, as long as the dirty-rate measurement it runs beside, so
#: that it is not the longest step before the plan (a shaped or real link reaches its rate
#: in milliseconds; `vmigrate estimate` keeps its 2 s).
PROBE_S = 1.0


def probe_link(given_mib: float | None, targets: Sequence[HostRef]) -> tuple[float, str]:
    """link_bandwidth on connections of its own, so that the probe need not wait for the
    hosts' sessions (and their facts): started first, it runs while they are gathered."""
    known = known_bandwidth(given_mib, targets)
    if known is not None:
        return known
    for target in targets:
        try:
            conn = open_with_timeout(target.uri, host=target.name, timeout=PROBE_CONNECT_S)
        except VmigrateError as err:
            log.info("bandwidth to %s not measured: %s", target.name, err)
            continue
        try:
            measured = _measured(conn, target.name)
        finally:
            conn.close()
        if measured is not None:
            return measured
    return ASSUMED


def known_bandwidth(
    given_mib: float | None, targets: Sequence[HostRef]
) -> tuple[float, str] | None:
    if given_mib is not None:
        return given_mib * MIB, "given (--bandwidth)"
    declared = [t.bandwidth_mib for t in targets if t.bandwidth_mib]
    return (min(declared) * MIB, "hosts file") if declared else None


def _measured(conn: Connection, host: str) -> tuple[float, str] | None:
    try:
        rate = measure_upload(conn, host=host, seconds=PROBE_S)
    except VmigrateError as err:
        log.info("bandwidth to %s not measured: %s", host, err)
        return None
    return (rate, f"measured from this machine to {host} ({PROBE_S:g} s upload)") if rate else None


def gather_input(
    purpose: Purpose,
    sources: Sequence[tuple[HostSession, Sequence[str] | None]],
    targets: Sequence[HostSession],
    *,
    mode: str,
    limits: Limits,
    bandwidth_mib: float | None = None,
    maintenance: Iterable[str] = (),
    probing: Future[tuple[float, str]] | None = None,
    on_vm: Callable[[GatheredVm], None] | None = None,
    checked_at: float | None = None,
) -> FleetInput:
    """The planner's input: the VMs of each source (all, or the names given), checked
    against every target that answers, and the link they share (`probing`: a probe_link
    the caller started before the sessions were open; else probed here, meanwhile).
    `on_vm` gets each VM as soon as it is checked (gather_vms); `checked_at`: when the
    checks began, if the caller stamped it first."""
    answering = [t for t in targets if t.facts is not None]
    checked_at = time.time() if checked_at is None else checked_at
    with ThreadPoolExecutor(max_workers=1) as background:  # the link probed meanwhile
        if probing is None:
            probing = background.submit(link_bandwidth, bandwidth_mib, targets)
        gathered = [
            g
            for session, names in sources
            for g in gather_vms(session, answering, mode, names=names, on_vm=on_vm)
        ]
        bandwidth, bandwidth_source = probing.result()
    in_maintenance = set(maintenance)
    return FleetInput(
        purpose,
        vms=tuple(g.load for g in gathered),
        targets=tuple(target_host(t, t.ref.uri in in_maintenance) for t in targets),
        verdicts=tuple(v for g in gathered for v in g.verdicts),
        mode=mode,
        limits=limits,
        bandwidth_bps=bandwidth,
        bandwidth_source=bandwidth_source,
        checks=tuple(r for g in gathered for r in g.reports),
        checked_at=checked_at,
    )
