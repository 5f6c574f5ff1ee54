"""`vmigrate cold`: checks, a plan, then the journalled steps (cold/steps.py); resume and
rollback of an interrupted job; the final report (downtime, bytes, throughput, checksums)."""

from __future__ import annotations

import secrets
import shlex
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vmigrate.cold.adaptation import (
    adapt_definition,
    answered_by,
    refuse_failed,
    refuse_state_across,
)
from vmigrate.cold.plan import (
    ColdPlan,
    StateFile,
    VolumeCopy,
    check_space,
    parse_state_pool,
    plan_copies,
    plan_state_file,
    state_file_name,
    state_file_size,
    validate_maps,
)
from vmigrate.cold.pool_change import (
    FILE_POOL_TYPES,
    PoolChange,
    pool_change_needs,
    refuse_clashes,
)
from vmigrate.cold.pool_change_facts import plan_pool_changes
from vmigrate.cold.pool_change_steps import verify_step, write_step
from vmigrate.cold.steps import (
    CONNECT_TIMEOUT_S,
    ColdMove,
    ColdMoveError,
    ColdRequest,
    Rollback,
    misplaced,
)
from vmigrate.journal import Journal

__all__ = [
    "ColdMoveError",
    "ColdReport",
    "ColdRequest",
    "migrate_cold",
    "plan_cold",
    "resume_cold",
    "rollback_cold",
]
from vmigrate.domxml.domain import parse_domain
from vmigrate.domxml.rewrite import Rewrite, rewrite_for_destination
from vmigrate.errors import UsageError, VmigrateError
from vmigrate.events import (
    ChecksDone,
    Done,
    EventSink,
    JobEvents,
    Notice,
    PlanMade,
    RollbackStep,
    ignore,
)
from vmigrate.facts import HostFacts, ShareProbe, VolumeInfo
from vmigrate.guard import (
    REFUSED,
    TOKEN_PARAM,
    HeldLease,
    check_free,
    end_lease,
    ensure_vm_free,
    hold_lease,
    new_token,
    refuse_maintenance,
)
from vmigrate.hosts import HostRef, resolve_host
from vmigrate.lease import LeaseError
from vmigrate.model import Mode, Placement
from vmigrate.preflight import Checked, check_move
from vmigrate.store import JobStore, StoreLocation, store_location
from vmigrate.trusted_checks import TrustedChecks
from vmigrate.virt import domains
from vmigrate.virt.connection import (
    Connection,
    domain_state,
    lookup_domain,
    open_with_timeout,
)
from vmigrate.virt.domains import volume_at
from vmigrate.virt.facts import gather_host_facts
from vmigrate.virt.placement import locate
from vmigrate.virt.storage import probe_shared_pool, volume_chain


@dataclass(frozen=True)
class ColdReport:
    job_id: int | None
    vm: str
    source: str
    destination: str
    outcome: str  # completed | failed | rolled back | planned
    message: str
    downtime_s: float | None
    bytes_moved: int
    disks: list[dict[str, Any]]
    placement: dict[str, Any]
    placement_ok: bool
    plan: dict[str, Any]
    state: dict[str, Any] | None = None  # --keep-state: where the state file went, bytes moved
    pool_changes: list[dict[str, Any]] = field(default_factory=list)  # QEMU's copies, digests

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _connect(ref: HostRef) -> Connection:
    return open_with_timeout(ref.uri, host=ref.name, timeout=CONNECT_TIMEOUT_S)


def build_plan(
    request: ColdRequest,
    src: Connection,
    dst: Connection,
    src_ref: HostRef,
    dst_ref: HostRef,
    checked: Checked | None = None,
) -> ColdPlan:
    """Everything the move will do, and every refusal it can know of, before a step runs.
    With `checked`, the hosts' facts are those its pre-flight checks just gathered."""
    domain = lookup_domain(src, request.vm, host=request.source)
    state = domain_state(domain)
    persistent = domains.is_persistent(domain, host=request.source)
    if state == "paused" and not (request.keep_state or request.force):
        raise UsageError(
            "the VM is paused: a paused guest cannot shut down",
            vm=request.vm,
            fix="add --keep-state to carry its state, or --force to power it off",
        )
    if request.keep_state and state not in ("running", "paused"):
        raise UsageError(f"--keep-state needs a running or paused VM; it is {state}", vm=request.vm)
    if request.state_pool is not None and not request.keep_state:
        raise UsageError("--state-pool names where a saved state goes", fix="add --keep-state")
    if request.keep_state and request.start is False:
        raise UsageError(
            "--keep-state resumes the guest where it stopped, so it runs on the destination; "
            "--no-start contradicts that",
            vm=request.vm,
            fix="drop --no-start, or drop --keep-state to leave it shut off there",
        )
    xml = domains.definition(domain, inactive=persistent, host=request.source)
    summary = parse_domain(domains.definition(domain, host=request.source))
    chains: dict[str, list[VolumeInfo]] = {}
    shared: list[str] = []
    probes: dict[str, ShareProbe] = {}
    shared_disk_pools: list[str] = []
    dst_facts = (
        checked.destination
        if checked is not None and checked.destination is not None
        else gather_host_facts(dst, dst_ref)
    )
    if request.vm in dst_facts.domains:  # the define step would fail after the VM stopped
        raise VmigrateError(
            f"a VM named {request.vm!r} is already defined on {dst_ref.name}",
            vm=request.vm,
            host=dst_ref.name,
            fix="remove or rename it there "
            f"({shlex.join(['virsh', '-c', dst_ref.uri, 'undefine', request.vm])})",
        )
    validate_maps(
        pool_map=request.pool_map,
        net_map=request.net_map,
        source_pools=domains.pool_names(src, host=src_ref.name),
        interfaces=summary.interfaces,
        destination=dst_facts,
    )
    src_facts: HostFacts | None = checked.source if checked is not None else None
    adapted = adapt_definition(
        vm=request.vm,
        xml=xml,
        adapt=request.adapt,
        conns=(src, dst),
        dst_facts=dst_facts,
        store_path=request.store_path,
    )
    if request.keep_state:  # refused before the VM stops, like every refusal here
        src_facts = src_facts or gather_host_facts(src, src_ref)
        refuse_state_across(request.vm, (src_facts, dst_facts), adapted.changes)
    pool_changes: tuple[PoolChange, ...] = ()
    if request.pool_map:
        src_facts = src_facts or gather_host_facts(src, src_ref)
        pool_changes = plan_pool_changes(
            request.pool_map, summary.disks, (src, dst), (src_facts, dst_facts)
        )
    _refuse_existing_files(pool_changes, dst, dst_ref, request.vm)
    changed = {c.target for c in pool_changes}
    for disk in summary.disks:
        if disk.path is None or disk.source_type not in ("file", "block") or disk.readonly:
            continue
        if disk.target in changed:
            continue
        chain = volume_chain(src, disk.path)
        if chain is None:
            raise UsageError(
                f"{disk.target}: {disk.path} (or a file of its backing chain) is "
                "in no storage pool on the source, so it cannot be copied",
                vm=request.vm,
                fix="define a pool for its directory",
            )
        pool = chain[0].pool
        if pool not in probes:
            probes[pool] = probe_shared_pool(src, dst, pool)
        if probes[pool].shared:
            shared.append(disk.target)
            shared_disk_pools.append(pool)
        else:
            chains[disk.target] = chain
    flatten = frozenset(t for t, c in chains.items() if request.flatten and len(c) > 1)
    copies = plan_copies(
        chains,
        dst_facts.pools,
        pool_map=request.pool_map,
        path_map=request.path_map,
        flatten_targets=flatten,
    )
    refuse_clashes(pool_changes, frozenset(c.destination_path for c in copies))
    for copy in copies:  # refused now, before the VM is stopped
        if volume_at(dst, copy.destination_path) is not None:
            raise VmigrateError(
                f"{copy.destination_path} already exists on {dst_ref.name}; vmigrate never "
                "overwrites a file it did not create (it may be the copy kept there when this "
                "VM last moved away: source disks stay unless --delete-source-disks)",
                vm=request.vm,
                host=dst_ref.name,
                fix="check it is not needed, then delete it "
                f"({shlex.join(['virsh', '-c', dst_ref.uri, 'vol-delete', copy.destination_path])}"
                "), or send the disk elsewhere with --pool-map",
            )
    if not request.force:  # --force: the copy itself finds out (and rolls back if it fails)
        check_space(copies, dst_facts.pools, pool_change_needs(pool_changes))
    state_file = None
    if request.keep_state:
        state_file = _plan_state(
            request,
            (src, dst),
            (src_facts or gather_host_facts(src, src_ref), dst_facts),
            copies,
            probes,
            tuple(shared_disk_pools),
            summary.memory_kib,
        )
    rewrite = Rewrite(
        disk_paths={c.source_path: c.destination_path for c in copies},
        networks=request.net_map,
        flattened=flatten,
        disk_sources={c.target: c.new_xml for c in pool_changes},
    )
    result = rewrite_for_destination(adapted.xml, rewrite)
    # A saved state must come back with an ABI-identical definition: the running one.
    restore_xml = (
        rewrite_for_destination(
            domains.definition(domain, migratable=True, host=request.source), rewrite
        ).xml
        if request.keep_state
        else None
    )
    start_after = request.start if request.start is not None else state in ("running", "paused")
    return ColdPlan(
        vm=request.vm,
        state=state,
        persistent=persistent,
        keep_state=request.keep_state,
        start_after=start_after,
        copies=copies,
        shared_disks=tuple(shared),
        source_xml=xml,
        destination_xml=result.xml,
        changes=result.changes,
        restore_xml=restore_xml,
        state_file=state_file,
        pool_changes=pool_changes,
        adapt_changes=adapted.changes,
        original_xml=adapted.original_xml,
        original_job=adapted.original_job,
        still_adapted=adapted.still_adapted,
        adapt_note=adapted.note,
    )


def _refuse_existing_files(
    changes: tuple[PoolChange, ...], dst: Connection, dst_ref: HostRef, vm: str
) -> None:
    """An exported image's new file must not exist there: it is never overwritten."""
    for change in changes:
        if change.new_file is not None and volume_at(dst, change.new_file) is not None:
            raise VmigrateError(
                f"{change.new_file} already exists on {dst_ref.name}; vmigrate never "
                "overwrites a file it did not create",
                vm=vm,
                host=dst_ref.name,
                fix="check it is not needed, then delete it "
                f"({shlex.join(['virsh', '-c', dst_ref.uri, 'vol-delete', change.new_file])})",
            )


def _plan_state(
    request: ColdRequest,
    conns: tuple[Connection, Connection],
    facts: tuple[HostFacts, HostFacts],
    copies: tuple[VolumeCopy, ...],
    probes: dict[str, ShareProbe],
    shared_disk_pools: tuple[str, ...],
    memory_kib: int,
) -> StateFile:
    """--keep-state: which pools carry the state file (each one it may use probed for
    sharing, so a shared pool is never copied onto itself), refused now if none can."""
    src_facts, dst_facts = facts
    wanted = (
        {parse_state_pool(request.state_pool)[0]}
        if request.state_pool
        else {p.name for p in src_facts.pools if p.active and p.type in FILE_POOL_TYPES}
    )
    for pool in sorted(wanted - set(probes)):
        if any(p.name == pool and p.active for p in src_facts.pools):
            probes[pool] = probe_shared_pool(conns[0], conns[1], pool)
    state = plan_state_file(
        state_file_name(request.vm, secrets.token_hex(4)),
        state_file_size(memory_kib),
        copies=copies,
        shared_pools={
            pool: probe.destination_pool
            for pool, probe in probes.items()
            if probe.shared and probe.destination_pool
        },
        source=src_facts,
        destination=dst_facts,
        shared_disk_pools=shared_disk_pools,
        state_pool=request.state_pool,
        check_room=not request.force,
    )
    for conn, path, host in (
        (conns[0], state.source_path, src_facts.ref.name),
        (conns[1], state.destination_path, dst_facts.ref.name),
    ):
        if volume_at(conn, path) is not None:
            raise VmigrateError(
                f"{path} already exists on {host}; vmigrate never overwrites a file it did not "
                "create",
                vm=request.vm,
                host=host,
                fix="check it is not needed and delete it, then retry",
            )
    return state


def plan_cold(request: ColdRequest, checked: Checked | None = None) -> ColdPlan:
    """What a cold move would do (for --dry-run): nothing is changed anywhere."""
    src_ref = resolve_host(request.source, request.hosts_file)
    dst_ref = resolve_host(request.destination, request.hosts_file)
    src, dst = _connect(src_ref), _connect(dst_ref)
    try:
        return build_plan(request, src, dst, src_ref, dst_ref, checked)
    finally:
        src.close()
        dst.close()


def _report(
    job_id: int | None,
    request: ColdRequest,
    outcome: str,
    message: str,
    plan: ColdPlan,
    journal: Journal | None,
    placement: Placement,
    expected: str,
) -> ColdReport:
    disks = [_copied(copy, journal) for copy in plan.copies]
    state = None
    if plan.state_file is not None:
        state = {
            **_copied(plan.state_file.as_copy(), journal),
            "shared": plan.state_file.shared,
            "source_pool": plan.state_file.source_pool,
            "destination_pool": plan.state_file.destination_pool,
        }
    moved = sum(d["bytes"] for d in disks) + (state["bytes"] if state else 0)
    downtime = None
    if journal and plan.state in ("running", "paused"):
        stopped, running = (
            journal.detail("stop").get("at"),
            journal.detail("verify running").get("at"),
        )
        if stopped and running:
            downtime = round(float(running) - float(stopped), 2)
    if outcome == "completed":
        placement_ok = placement.defined_on == [expected] and placement.running_on == (
            [expected] if plan.start_after else []
        )
    else:
        was_running = plan.state in ("running", "paused")
        placement_ok = placement.running_on == ([expected] if was_running else []) and (
            placement.defined_on == ([expected] if plan.persistent else [])
        )
    return ColdReport(
        job_id,
        request.vm,
        request.source,
        request.destination,
        outcome,
        message,
        downtime,
        moved,
        disks,
        placement.to_dict(),
        placement_ok,
        {
            "copies": [asdict(c) for c in plan.copies],
            "shared_disks": list(plan.shared_disks),
            "changes": list(plan.changes),
            "state_file": asdict(plan.state_file) if plan.state_file else None,
            "pool_changes": [c.describe() for c in plan.pool_changes],
            "adapt_changes": [c.to_dict() for c in plan.adapt_changes],
        },
        state,
        [_changed(change, journal) for change in plan.pool_changes],
    )


def _changed(change: PoolChange, journal: Journal | None) -> dict[str, Any]:
    """One pool change as the journal recorded it: QEMU's time, the digest both sides read."""
    done = journal.detail(write_step(change)) if journal else {}
    check = journal.detail(verify_step(change)) if journal else {}
    return {
        "target": change.target,
        "kind": change.kind,
        "source": change.source,
        "destination": change.destination,
        "destination_pool": change.destination_pool,
        "copied_by": change.writer,
        "capacity": change.capacity,
        "seconds": done.get("seconds"),
        "sha256": check.get("sha256"),
    }


def _copied(copy: VolumeCopy, journal: Journal | None) -> dict[str, Any]:
    """One file's copy as the journal recorded it: bytes, time, throughput, checksum."""
    done = journal.detail(f"copy {copy.destination_path}") if journal else {}
    check = journal.detail(f"verify {copy.destination_path}") if journal else {}
    seconds = float(done.get("seconds") or 0)
    data = int(done.get("data_bytes") or 0)
    return {
        "source": copy.source_path,
        "destination": copy.destination_path,
        "format": copy.format,
        "bytes": data,
        "seconds": seconds,
        "mib_per_s": round(data / seconds / (1 << 20), 1) if seconds else None,
        "sha256": check.get("sha256"),
    }


def _run(
    job_id: int,
    request: ColdRequest,
    plan: ColdPlan,
    store: JobStore,
    emit: EventSink,
    *,
    rollback: bool = False,
    take_over: bool = False,
    conns: tuple[Connection, Connection] | None = None,
) -> ColdReport:
    """Hold the VM's lease, run the steps, release the lease where the VM ends. `conns`:
    the sessions the checks and the plan used (closed here), else new ones."""
    src_ref = resolve_host(request.source, request.hosts_file)
    dst_ref = resolve_host(request.destination, request.hosts_file)
    src, dst = conns if conns is not None else (_connect(src_ref), _connect(dst_ref))
    held = _hold_lease(job_id, request, store, (src_ref, dst_ref), (src, dst), take_over, emit)
    try:
        report = _steps(
            job_id, request, plan, store, emit, (src_ref, dst_ref), (src, dst), rollback
        )
    finally:  # a job left to resume or roll back keeps its lease (it goes stale unrenewed)
        outcome = store.job(job_id).state
        end_lease(store, job_id, held, release=outcome in ("completed", "rolled back"), emit=emit)
        src.close()
        dst.close()
    emit(Done(report.to_dict()))
    return report


def _job_events(store: JobStore, job_id: int, on_event: EventSink | None) -> JobEvents:
    """The job's sink: its events go to the store, then to `on_event`."""
    sink = JobEvents(on_event or ignore)
    sink.attach(store, job_id)
    return sink


def _hold_lease(
    job_id: int,
    request: ColdRequest,
    store: JobStore,
    refs: tuple[HostRef, HostRef],
    conns: tuple[Connection, Connection],
    take_over: bool,
    emit: EventSink,
) -> HeldLease | None:
    """The VM's lease, before the first step: taken on the source (or wherever the VM is
    defined when a resumed job finds it elsewhere), with the token kept in the job."""
    params = store.job(job_id).params
    token = params.get(TOKEN_PARAM)
    if not token:  # a job journalled before leases existed
        token = new_token()
        store.set_job_params(job_id, {**params, TOKEN_PARAM: token})
    places = {refs[0].name: conns[0], refs[1].name: conns[1]}
    try:
        return hold_lease(
            store, job_id, "cold", str(token), request.vm, places, take_over=take_over, emit=emit
        )
    except VmigrateError as err:
        first_run = not store.steps(job_id)
        state = REFUSED if first_run and isinstance(err, LeaseError) else "failed"
        store.finish_job(job_id, state, f"nothing was changed: {err.message}", {})
        conns[0].close()
        conns[1].close()
        raise
    except KeyboardInterrupt:  # before the first step: nothing to resume
        if not store.steps(job_id):
            store.finish_job(
                job_id, "cancelled", "interrupted by the user (Ctrl-C): nothing was changed", {}
            )
        raise


def _steps(
    job_id: int,
    request: ColdRequest,
    plan: ColdPlan,
    store: JobStore,
    emit: EventSink,
    refs: tuple[HostRef, HostRef],
    conns: tuple[Connection, Connection],
    rollback: bool,
) -> ColdReport:
    """The journal's steps forward (or back), then where the VM is, into the job's record."""
    (src_ref, dst_ref), (src, dst) = refs, conns
    journal = Journal(store, job_id)
    move = ColdMove(plan, request, src, dst, journal, emit)
    try:
        if rollback:
            outcome, message = _rolled_back(move.rollback(), job_id)
        else:
            move.forward()
            outcome, message = "completed", "cold migration completed"
    except Exception as err:  # libvirt errors mid-step too
        failure = err.message if isinstance(err, VmigrateError) else str(err)
        if rollback or not request.rollback_on_failure or move.runs_on_destination():
            outcome, message = (
                "failed",
                f"{failure} (resume: vmigrate jobs resume {job_id}; "
                f"undo: vmigrate jobs rollback {job_id})",
            )
        else:
            outcome, message = _roll_back_after(move, failure, job_id, emit)
    placement = locate(request.vm, {src_ref.name: src, dst_ref.name: dst})
    expected = dst_ref.name if outcome == "completed" else src_ref.name
    report = _report(job_id, request, outcome, message, plan, journal, placement, expected)
    if outcome == "completed" and not report.placement_ok:  # #28: never completed if misplaced
        message = misplaced(request.vm, placement, expected, job_id)
        report = replace(report, outcome="failed", message=message)
    store.finish_job(job_id, report.outcome, report.message, report.to_dict())
    return report


def _rolled_back(result: Rollback, job_id: int) -> tuple[str, str]:
    undid = f"undid: {', '.join(result.undone) or 'nothing'}"
    if result.leftovers:
        return (
            "failed",
            f"{undid}; could not remove on the destination: {'; '.join(result.leftovers)} "
            f"(when it answers again: vmigrate jobs rollback {job_id})",
        )
    return "rolled back", undid


def _roll_back_after(move: ColdMove, failure: str, job_id: int, emit: EventSink) -> tuple[str, str]:
    """A step failed while vmigrate was there to see it: put the VM back as it was."""
    emit(RollbackStep(failure))
    try:
        outcome, undid = _rolled_back(move.rollback(), job_id)
    except Exception as err:  # report both failures
        reason = err.message if isinstance(err, VmigrateError) else str(err)
        return (
            "failed",
            f"{failure}; the automatic rollback stopped too: {reason} "
            f"(retry: vmigrate jobs rollback {job_id}; or resume: vmigrate jobs resume {job_id})",
        )
    return outcome, f"{failure}; rolled back automatically ({undid})"


def _request_params(request: ColdRequest, plan: ColdPlan) -> dict[str, Any]:
    params = asdict(request)
    params["hosts_file"] = str(request.hosts_file) if request.hosts_file else None
    params["store_path"] = str(request.store_path) if request.store_path else None
    return {"request": params, "plan": plan.to_dict()}


def migrate_cold(
    request: ColdRequest,
    on_event: EventSink | None = None,
    *,
    take_over_lease: bool = False,
    trusted: TrustedChecks | None = None,
) -> ColdReport:
    """Move a VM cold. Before the first step the job takes the VM's lease (refused when
    another job holds it; a stale one only with `take_over_lease`). With `trusted` (a fleet
    job's checks of this move), only what can have changed since is checked again."""
    emit = JobEvents(on_event or ignore)  # stored once the job exists
    src_ref = resolve_host(request.source, request.hosts_file)
    dst_ref = resolve_host(request.destination, request.hosts_file)
    with JobStore(request.store_path) as jobs:
        ensure_vm_free(jobs, request.vm, {src_ref.name: src_ref.uri, dst_ref.name: dst_ref.uri})
        refuse_maintenance(jobs, dst_ref, force=request.force, vm=request.vm)
    checked = check_move(
        request.vm,
        request.source,
        request.destination,
        mode=Mode.COLD,
        hosts_file=request.hosts_file,
        trusted=trusted,
        emit=emit,
    )
    checks = checked.report
    emit(ChecksDone(checks.to_dict()))
    failed = [f for f in checks.findings if f.verdict.value == "fail"] if not request.force else []
    left_to_adapt = refuse_failed(request, failed, checks)
    # One session per host from here to the end of the move: the lease check, the plan and
    # the steps share it.
    src, dst = _connect(src_ref), _connect(dst_ref)
    store: JobStore | None = None
    try:
        _check_lease_free(request, take_over_lease, src, src_ref)
        plan = build_plan(request, src, dst, src_ref, dst_ref, checked)
        for finding in left_to_adapt:  # each must be answered by a change of the plan
            emit(Notice(answered_by(finding, plan.adapt_changes, request.vm, checks)))
        emit(PlanMade(plan.to_dict()))
        store = JobStore(request.store_path)
        params = {**_request_params(request, plan), TOKEN_PARAM: new_token()}
        job_id = store.create_job("cold", request.vm, request.source, request.destination, params)
        emit.start(store, job_id, str(store.path))
    except BaseException:
        src.close()
        dst.close()
        if store is not None:
            store.close()
        raise
    try:
        return _run(job_id, request, plan, store, emit, take_over=take_over_lease, conns=(src, dst))
    finally:
        store.close()


def _check_lease_free(
    request: ColdRequest, take_over: bool, src: Connection, src_ref: HostRef
) -> None:
    """Before the job exists: a VM leased by another job is refused with nothing made."""
    domain = lookup_domain(src, request.vm, host=src_ref.name)
    with JobStore(request.store_path) as store:
        check_free(store, domain, "cold", vm=request.vm, host=src_ref.name, take_over=take_over)


def _job(job_id: int, store: JobStore) -> tuple[ColdRequest, ColdPlan]:
    record = store.job(job_id)
    params = dict(record.params["request"])
    params["hosts_file"] = Path(params["hosts_file"]) if params.get("hosts_file") else None
    params["store_path"] = store_location(params.get("store_path"))
    return ColdRequest(**params), ColdPlan.from_dict(record.params["plan"])


def _reopened(job_id: int, store: JobStore, action: str) -> tuple[ColdRequest, ColdPlan]:
    """Take the job over for `action`: refused (TransitionRefused, nothing changed) unless the
    lifecycle allows it now and no other vmigrate took it first."""
    try:
        store.reopen_job(job_id, action)
        return _job(job_id, store)
    except BaseException:
        store.close()
        raise


def resume_cold(
    job_id: int,
    store_path: StoreLocation | None = None,
    on_event: EventSink | None = None,
    *,
    take_over_lease: bool = False,
) -> ColdReport:
    store = JobStore(store_path)
    request, plan = _reopened(job_id, store, "resume")
    try:
        emit = _job_events(store, job_id, on_event)
        return _run(job_id, request, plan, store, emit, take_over=take_over_lease)
    finally:
        store.close()


def rollback_cold(
    job_id: int,
    store_path: StoreLocation | None = None,
    on_event: EventSink | None = None,
    *,
    take_over_lease: bool = False,
) -> ColdReport:
    store = JobStore(store_path)
    request, plan = _reopened(job_id, store, "rollback")
    try:
        emit = _job_events(store, job_id, on_event)
        return _run(job_id, request, plan, store, emit, rollback=True, take_over=take_over_lease)
    finally:
        store.close()
