"""`vmigrate cold`: checks, plan, then a journal of steps that can resume or roll back.

Order: stop (shut down, power off, or save the state) -> copy every local file (sparse,
resumable) -> verify checksums -> define on the destination -> start or restore -> verify it
runs -> only then undefine the source -> optionally delete the source's disk files.
Nothing is deleted that this job did not create, and never before the destination runs.
"""

from __future__ import annotations

import contextlib
import posixpath
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from vmigrate.cold.journal import Detail, Journal
from vmigrate.cold.plan import ColdPlan, VolumeCopy, check_space, plan_copies
from vmigrate.domxml.domain import parse_domain
from vmigrate.domxml.rewrite import Rewrite, rewrite_for_destination
from vmigrate.errors import MigrationRefused, UsageError, VmigrateError
from vmigrate.hosts import HostRef, resolve_host
from vmigrate.model import Mode
from vmigrate.preflight import run_checks
from vmigrate.store import JobStore
from vmigrate.virt import domains
from vmigrate.virt.connection import (
    MIGRATABLE_XML,
    UNDEFINE_KEEP_NVRAM,
    Connection,
    domain_state,
    find_domain,
    lookup_domain,
    open_with_timeout,
)
from vmigrate.virt.facts import gather_host_facts
from vmigrate.virt.placement import Placement, locate
from vmigrate.virt.storage import probe_shared_pool, volume_chain
from vmigrate.virt.streams import copy_volume, volume_digest

EventSink = Callable[[str, dict[str, Any]], None]
CHECKPOINT_BYTES = 64 << 20
CONNECT_TIMEOUT_S = 10.0
VERIFY_RUNNING_S = 3.0


class ColdMoveError(VmigrateError):
    """A step of a cold move failed; the job can be resumed or rolled back."""


@dataclass(frozen=True)
class ColdRequest:
    vm: str
    source: str
    destination: str
    force: bool = False
    keep_state: bool = False
    start: bool | None = None  # None: start if it was running
    pool_map: dict[str, str] = field(default_factory=dict)
    path_map: dict[str, str] = field(default_factory=dict)
    net_map: dict[str, str] = field(default_factory=dict)
    delete_source_disks: bool = False
    shutdown_timeout_s: float = 60.0
    hosts_file: Path | None = None
    store_path: Path | None = None


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _connect(ref: HostRef) -> Connection:
    return open_with_timeout(ref.uri, host=ref.name, timeout=CONNECT_TIMEOUT_S)


def build_plan(
    request: ColdRequest, src: Connection, dst: Connection, dst_ref: HostRef
) -> ColdPlan:
    domain = lookup_domain(src, request.vm, host=request.source)
    state = domain_state(domain)
    persistent = bool(domain.isPersistent())
    if state == "paused" and not (request.keep_state or request.force):
        raise UsageError(
            "the VM is paused: a paused guest cannot shut down",
            vm=request.vm,
            fix="add --keep-state to carry its state, or --force to power it off",
        )
    if request.keep_state and state not in ("running", "paused"):
        raise UsageError(f"--keep-state needs a running or paused VM; it is {state}", vm=request.vm)
    xml = domain.XMLDesc(2 if persistent else 0)  # 2 = VIR_DOMAIN_XML_INACTIVE
    summary = parse_domain(domain.XMLDesc(0))
    chains, shared, probes = {}, [], {}
    for disk in summary.disks:
        if disk.path is None or disk.source_type not in ("file", "block") or disk.readonly:
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
            probes[pool] = probe_shared_pool(src, dst, pool).shared
        if probes[pool]:
            shared.append(disk.target)
        else:
            chains[disk.target] = chain
    dst_facts = gather_host_facts(dst, dst_ref)
    copies = plan_copies(
        chains, dst_facts.pools, pool_map=request.pool_map, path_map=request.path_map
    )
    check_space(copies, dst_facts.pools)
    rewrite = Rewrite(
        disk_paths={c.source_path: c.destination_path for c in copies}, networks=request.net_map
    )
    result = rewrite_for_destination(xml, rewrite)
    # A saved state must come back with an ABI-identical definition: the running one.
    restore_xml = (
        rewrite_for_destination(domain.XMLDesc(MIGRATABLE_XML), rewrite).xml
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
    )


def plan_cold(request: ColdRequest) -> ColdPlan:
    """What a cold move would do (for --dry-run): nothing is changed anywhere."""
    src_ref = resolve_host(request.source, request.hosts_file)
    dst_ref = resolve_host(request.destination, request.hosts_file)
    src, dst = _connect(src_ref), _connect(dst_ref)
    try:
        return build_plan(request, src, dst, dst_ref)
    finally:
        src.close()
        dst.close()


class _Move:
    """The steps of one cold move, over open connections, recorded in the journal."""

    def __init__(
        self,
        plan: ColdPlan,
        request: ColdRequest,
        src: Connection,
        dst: Connection,
        journal: Journal,
        emit: EventSink,
    ) -> None:
        self.plan, self.request, self.src, self.dst = plan, request, src, dst
        self.journal, self.emit = journal, emit

    # ---- forward ---------------------------------------------------------------------
    def save_path(self) -> str | None:
        if not self.plan.keep_state:
            return None
        pools = [c for c in self.plan.copies]
        folder = posixpath.dirname(pools[0].source_path) if pools else "/var/lib/libvirt/images"
        return posixpath.join(folder, f".vmigrate-{self.plan.vm}-{self.journal.job_id}.save")

    def stop(self, _previous: Detail) -> Detail:
        domain = find_domain(self.src, self.plan.vm)
        if domain is None or not domain.isActive():
            return {"how": "already stopped", "at": time.time()}
        stopped_at = time.time()
        if self.plan.keep_state:
            path = self.save_path()
            assert path is not None
            domains.save_state(domain, path)
            return {"how": "saved", "save_path": path, "at": stopped_at}
        if self.plan.state == "running" and domains.shutdown(
            domain, timeout=self.request.shutdown_timeout_s
        ):
            return {"how": "shut down (ACPI)", "at": stopped_at}
        if not self.request.force:
            raise ColdMoveError(
                f"the guest did not shut down within {self.request.shutdown_timeout_s:g} s",
                vm=self.plan.vm,
                fix="retry with --force to power it off after the timeout, "
                "or shut it down from inside the guest",
            )
        domains.power_off(domain)
        return {"how": "powered off (--force)", "at": stopped_at}

    def copy(self, copy: VolumeCopy, previous: Detail) -> Detail:
        existing = domains.volume_at(self.dst, copy.destination_path)
        if existing is not None and not previous.get("created"):
            raise ColdMoveError(
                f"{copy.destination_path} already exists on the destination "
                "and was not created by this job: it is never overwritten",
                vm=self.plan.vm,
                fix="remove it there, or use --pool-map",
            )
        offset = int(previous.get("offset", 0)) if existing is not None else 0
        if existing is None:
            existing = domains.create_file_volume(
                self.dst,
                copy.destination_pool,
                posixpath.basename(copy.destination_path),
                copy.physical,
            )
        detail: Detail = {"created": True, "offset": offset}
        self.journal.record(f"copy {copy.destination_path}", "started", detail)
        source = self.src.storageVolLookupByPath(copy.source_path)
        last = [offset]

        def progress(position: int) -> None:
            self.emit("copy", {"path": copy.source_path, "done": position, "total": copy.physical})
            if position - last[0] >= CHECKPOINT_BYTES:
                last[0] = position
                self.journal.record(
                    f"copy {copy.destination_path}",
                    "started",
                    {"created": True, "offset": position},
                )

        result = copy_volume(self.src, source, self.dst, existing, offset=offset, progress=progress)
        domains.refresh_pool(self.dst, copy.destination_pool)
        return {
            "created": True,
            "offset": result.end_offset,
            "data_bytes": result.data_bytes,
            "hole_bytes": result.hole_bytes,
            "seconds": round(result.seconds, 3),
        }

    def verify(self, copy: VolumeCopy, _previous: Detail) -> Detail:
        source = volume_digest(self.src, self.src.storageVolLookupByPath(copy.source_path))
        target = domains.volume_at(self.dst, copy.destination_path)
        if target is None:
            raise ColdMoveError(
                f"{copy.destination_path} vanished from the destination", vm=self.plan.vm
            )
        copied = volume_digest(self.dst, target)
        if source != copied:
            raise ColdMoveError(
                f"checksum mismatch for {copy.destination_path}: source "
                f"{source[:16]}, destination {copied[:16]}",
                vm=self.plan.vm,
                fix="resume the job to copy again, or roll it back",
            )
        return {"sha256": source}

    def copy_state(self, previous: Detail) -> Detail:
        path = self.journal.detail("stop").get("save_path")
        if not path:
            return {"skipped": True}
        folder = posixpath.dirname(path)
        pool = next(
            (c.source_pool for c in self.plan.copies if posixpath.dirname(c.source_path) == folder),
            None,
        )
        if pool is not None:
            domains.refresh_pool(self.src, pool)
        state_copy = next((c for c in self.plan.copies), None)
        if state_copy is None:
            raise ColdMoveError(
                "--keep-state needs a local disk pool to carry the state file", vm=self.plan.vm
            )
        volume = self.src.storageVolLookupByPath(path)
        _type, _capacity, _allocation = volume.info()
        carrier = VolumeCopy(
            path,
            state_copy.source_pool,
            state_copy.destination_pool,
            posixpath.join(
                posixpath.dirname(state_copy.destination_path), posixpath.basename(path)
            ),
            "raw",
            _capacity,
            _allocation,
            _capacity,
            None,
        )
        detail = self.copy(carrier, previous)
        self.verify(carrier, {})
        return {**detail, "destination_path": carrier.destination_path}

    def define(self, _previous: Detail) -> Detail:
        if find_domain(self.dst, self.plan.vm) is not None and not self.journal.detail(
            "define"
        ).get("defined"):
            raise ColdMoveError(
                f"a VM named {self.plan.vm!r} already exists on the destination", vm=self.plan.vm
            )
        self.dst.defineXML(self.plan.destination_xml)
        return {"defined": True}

    def start(self, _previous: Detail) -> Detail:
        state_path = self.journal.detail("copy state").get("destination_path")
        if state_path:
            domains.restore_state(self.dst, state_path, self.plan.restore_xml)
            return {"started": "restored"}
        if not self.plan.start_after:
            return {"started": False}
        lookup_domain(self.dst, self.plan.vm, host=self.request.destination).create()
        return {"started": True}

    def verify_running(self, _previous: Detail) -> Detail:
        if not self.journal.detail("start").get("started"):
            return {"running": False}
        deadline = time.time() + VERIFY_RUNNING_S
        while time.time() < deadline:
            if not domains.is_running(self.dst, self.plan.vm):
                raise ColdMoveError(
                    "the VM stopped right after starting on the destination",
                    vm=self.plan.vm,
                    fix="see its log on the destination; "
                    "roll the job back to restart it on the source",
                )
            time.sleep(0.5)
        return {"running": True, "at": time.time()}

    def undefine_source(self, _previous: Detail) -> Detail:
        domain = find_domain(self.src, self.plan.vm)
        if domain is not None and domain.isActive():
            raise ColdMoveError(
                "the VM runs on the source again: not undefining it", vm=self.plan.vm
            )
        if domain is not None and domain.isPersistent():
            domain.undefineFlags(UNDEFINE_KEEP_NVRAM)
            return {"undefined": True}
        return {"undefined": False}

    def cleanup_state(self, _previous: Detail) -> Detail:
        removed = []
        for conn, path in (
            (self.src, self.journal.detail("stop").get("save_path")),
            (self.dst, self.journal.detail("copy state").get("destination_path")),
        ):
            if path and domains.delete_volume(conn, path):
                removed.append(path)
        return {"removed": removed}

    def delete_source_disks(self, _previous: Detail) -> Detail:
        tops = {d.path for d in parse_domain(self.plan.source_xml).disks}
        removed = []
        for copy in self.plan.copies:
            # Only the VM's own top images: backing files may serve other VMs.
            if copy.source_path in tops and domains.delete_volume(self.src, copy.source_path):
                removed.append(copy.source_path)
        return {"removed": removed}

    def forward(self) -> None:
        j = self.journal
        j.run("stop", self.stop)
        for copy in self.plan.copies:
            j.run(f"copy {copy.destination_path}", partial(self.copy, copy))
        for copy in self.plan.copies:
            j.run(f"verify {copy.destination_path}", partial(self.verify, copy))
        j.run("copy state", self.copy_state)
        j.run("define", self.define)
        j.run("start", self.start)
        j.run("verify running", self.verify_running)
        j.run("undefine source", self.undefine_source)
        j.run("cleanup state", self.cleanup_state)
        if self.request.delete_source_disks:
            j.run("delete source disks", self.delete_source_disks)

    # ---- backward --------------------------------------------------------------------
    def rollback(self) -> list[str]:
        undone = []
        for record in self.journal.done_in_reverse():
            name, detail = record.name, record.detail
            if name == "delete source disks":
                raise ColdMoveError(
                    "the source's disk files were already deleted: this job cannot be rolled back",
                    vm=self.plan.vm,
                )
            if name == "undefine source" and detail.get("undefined"):
                self.src.defineXML(self.plan.source_xml)
            elif name == "start" and detail.get("started"):
                domain = find_domain(self.dst, self.plan.vm)
                if domain is not None and domain.isActive():
                    domain.destroy()
            elif name == "define" and detail.get("defined"):
                domain = find_domain(self.dst, self.plan.vm)
                if domain is not None:
                    domains.undefine(domain, UNDEFINE_KEEP_NVRAM)
            elif name.startswith("copy ") and detail.get("created"):
                path = detail.get("destination_path") or name.removeprefix("copy ")
                with contextlib.suppress(Exception):
                    domains.delete_volume(self.dst, path)
            elif name == "stop":
                self._restart_source(detail)
            else:
                continue
            self.journal.record(name, "undone", detail)
            undone.append(name)
        return undone

    def _restart_source(self, detail: Detail) -> None:
        if detail.get("how") == "saved":
            path = detail["save_path"]
            domains.restore_state(self.src, path, None)
            with contextlib.suppress(Exception):
                domains.delete_volume(self.src, path)
        elif self.plan.state in ("running", "paused") and detail.get("how") != "already stopped":
            domain = find_domain(self.src, self.plan.vm)
            if domain is None:
                self.src.createXML(self.plan.source_xml, 0)
            elif not domain.isActive():
                domain.create()


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
    disks, moved = [], 0
    for copy in plan.copies:
        done = journal.detail(f"copy {copy.destination_path}") if journal else {}
        check = journal.detail(f"verify {copy.destination_path}") if journal else {}
        seconds = float(done.get("seconds") or 0)
        data = int(done.get("data_bytes") or 0)
        moved += data
        disks.append(
            {
                "source": copy.source_path,
                "destination": copy.destination_path,
                "format": copy.format,
                "bytes": data,
                "seconds": seconds,
                "mib_per_s": round(data / seconds / (1 << 20), 1) if seconds else None,
                "sha256": check.get("sha256"),
            }
        )
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
        },
    )


def _run(
    job_id: int,
    request: ColdRequest,
    plan: ColdPlan,
    store: JobStore,
    emit: EventSink,
    *,
    rollback: bool = False,
) -> ColdReport:
    src_ref = resolve_host(request.source, request.hosts_file)
    dst_ref = resolve_host(request.destination, request.hosts_file)
    src, dst = _connect(src_ref), _connect(dst_ref)
    journal = Journal(store, job_id)
    move = _Move(plan, request, src, dst, journal, emit)
    try:
        if rollback:
            undone = move.rollback()
            outcome, message = "rolled back", f"undid: {', '.join(undone) or 'nothing'}"
        else:
            move.forward()
            outcome, message = "completed", "cold migration completed"
    except VmigrateError as err:
        outcome, message = (
            "failed",
            f"{err.message} (resume: vmigrate jobs resume {job_id}; "
            f"undo: vmigrate jobs rollback {job_id})",
        )
    except Exception as err:  # libvirt errors mid-step: the journal says where it stopped
        outcome, message = (
            "failed",
            f"{err} (resume: vmigrate jobs resume {job_id}; undo: vmigrate jobs rollback {job_id})",
        )
    placement = locate(request.vm, {src_ref.name: src, dst_ref.name: dst})
    expected = dst_ref.name if outcome == "completed" else src_ref.name
    report = _report(job_id, request, outcome, message, plan, journal, placement, expected)
    store.finish_job(job_id, outcome, message, report.to_dict())
    src.close()
    dst.close()
    emit("done", report.to_dict())
    return report


def _request_params(request: ColdRequest, plan: ColdPlan) -> dict[str, Any]:
    params = asdict(request)
    params["hosts_file"] = str(request.hosts_file) if request.hosts_file else None
    params["store_path"] = str(request.store_path) if request.store_path else None
    return {"request": params, "plan": plan.to_dict()}


def migrate_cold(request: ColdRequest, on_event: EventSink | None = None) -> ColdReport:
    emit: EventSink = on_event or (lambda _kind, _payload: None)
    checks = run_checks(
        request.vm,
        request.source,
        request.destination,
        mode=Mode.COLD,
        hosts_file=request.hosts_file,
    )
    emit("checks", checks.to_dict())
    if checks.failed and not request.force:
        failed = [f for f in checks.findings if f.verdict.value == "fail"]
        raise MigrationRefused(
            "pre-flight checks failed, nothing was moved: "
            + "; ".join(f"{f.check}: {f.summary}" for f in failed),
            vm=request.vm,
            fix=failed[0].fix or "run `vmigrate check --mode cold`; --force overrides",
            report=checks,
        )
    plan = plan_cold(request)
    emit("plan", plan.to_dict())
    store = JobStore(request.store_path)
    job_id = store.create_job(
        "cold", request.vm, request.source, request.destination, _request_params(request, plan)
    )
    emit("job", {"job_id": job_id, "store": str(store.path)})
    try:
        return _run(job_id, request, plan, store, emit)
    finally:
        store.close()


def _job(job_id: int, store: JobStore) -> tuple[ColdRequest, ColdPlan]:
    record = store.job(job_id)
    if record.kind != "cold":
        raise UsageError(
            f"job {job_id} is a {record.kind} migration; only cold jobs resume or roll back",
            fix="for a live job use `vmigrate recover VM`",
        )
    if record.state in ("running",):
        raise UsageError(
            f"job {job_id} is still running (pid {record.pid})",
            fix="wait for it, or stop that process first",
        )
    params = dict(record.params["request"])
    for key in ("hosts_file", "store_path"):
        params[key] = Path(params[key]) if params.get(key) else None
    return ColdRequest(**params), ColdPlan.from_dict(record.params["plan"])


def resume_cold(
    job_id: int, store_path: Path | None = None, on_event: EventSink | None = None
) -> ColdReport:
    store = JobStore(store_path)
    request, plan = _job(job_id, store)
    if store.job(job_id).state in ("completed", "rolled back"):
        raise UsageError(f"job {job_id} already {store.job(job_id).state}: nothing to resume")
    store.reopen_job(job_id)
    try:
        return _run(job_id, request, plan, store, on_event or (lambda _k, _p: None))
    finally:
        store.close()


def rollback_cold(
    job_id: int, store_path: Path | None = None, on_event: EventSink | None = None
) -> ColdReport:
    store = JobStore(store_path)
    request, plan = _job(job_id, store)
    if store.job(job_id).state == "rolled back":
        raise UsageError(f"job {job_id} was already rolled back")
    store.reopen_job(job_id)
    try:
        return _run(job_id, request, plan, store, on_event or (lambda _k, _p: None), rollback=True)
    finally:
        store.close()
