"""`vmigrate recover VM`: after vmigrate died mid-migration, find where the VM really is,
finish or clean up what the job left, and record the outcome in the job store."""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, replace
from typing import Any

from vmigrate.errors import NotFound, VmigrateError
from vmigrate.journal import Journal
from vmigrate.live.recovery_plan import RecoveryPlan, plan_recovery
from vmigrate.live.storage_copy import remove_created
from vmigrate.model import Placement
from vmigrate.store import JobRecord, JobStore, StoreLocation
from vmigrate.virt.connection import open_with_timeout
from vmigrate.virt.placement import locate
from vmigrate.virt.recovery import apply, observe, wait_for_jobs

CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RecoverReport:
    job_id: int
    vm: str
    outcome: str
    message: str
    fix: str
    steps: list[str]
    still_running_jobs: dict[str, str]
    placement: dict[str, Any]
    placement_ok: bool  # False: `vmigrate recover` may be run again for this job

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _interrupted_job(store: JobStore, vm: str) -> JobRecord:
    """The VM's latest live job, if vmigrate died in it or could not verify its end."""
    for record in store.jobs(limit=500):
        if record.vm != vm or record.kind != "live":
            continue
        unverified = record.report is not None and not record.report.get("placement_ok", True)
        if record.state == "interrupted" or unverified:
            return record
        break
    raise NotFound(
        f"no interrupted or unverified live migration of {vm!r} in {store.path}",
        vm=vm,
        fix="`vmigrate jobs` lists the jobs; an interrupted cold move is finished with "
        "`vmigrate jobs resume ID` or undone with `vmigrate jobs rollback ID`",
    )


def _with_removed(plan: RecoveryPlan, removed: list[str], left: list[str]) -> RecoveryPlan:
    if not removed and not left:
        return plan
    message = plan.message + (
        f"; removed from the destination: {', '.join(removed)}" if removed else ""
    )
    fix = f"remove by hand on the destination: {'; '.join(left)}" if left else plan.fix
    return replace(plan, message=message, fix=fix)


def _where_it_should_be(
    plan: RecoveryPlan, placement: Placement, job: JobRecord, *, transient: bool
) -> bool:
    if plan.outcome == "completed":
        return placement.exactly_on(job.destination, defined=not transient)
    if plan.outcome == "aborted":
        return placement.running_on == [job.source] and not placement.unknown_on
    return False


def _apply_steps(
    plan: RecoveryPlan, vm: str, source: Any, destination: Any, job: JobRecord
) -> tuple[RecoveryPlan, bool]:
    """Carry out the plan's steps in order; a step a host refuses stops there and says so
    (the job stays open, so `vmigrate recover` can be run again)."""
    for done, step in enumerate(plan.steps):
        try:
            apply(
                step,
                vm,
                source,
                destination,
                source_name=job.source,
                destination_name=job.destination,
            )
        except VmigrateError as err:
            failed = RecoveryPlan(
                "failed",
                plan.steps[:done],
                f"{step} failed: {err}",
                fix=f"fix what it names, then run `vmigrate recover {shlex.quote(vm)}` again",
            )
            return failed, True
    return plan, False


def recover(
    vm: str, *, store_path: StoreLocation | None = None, wait_s: float = 300.0
) -> RecoverReport:
    with JobStore(store_path) as store:
        job = _interrupted_job(store, vm)
        source = open_with_timeout(job.source, host=job.source, timeout=CONNECT_TIMEOUT_S)
        destination = open_with_timeout(
            job.destination, host=job.destination, timeout=CONNECT_TIMEOUT_S
        )
        try:
            conns = {job.source: source, job.destination: destination}
            # A peer-to-peer migration can outlive its client: let libvirt finish it first.
            busy = wait_for_jobs(conns, vm, timeout_s=wait_s)
            step_failed = False
            transient = not job.params.get("options", {}).get("persist_destination", True)
            if busy:
                plan = RecoveryPlan(
                    "failed",
                    (),
                    f"a libvirt job still runs on {vm} after {wait_s:.0f} s: "
                    + ", ".join(f"{h}: {j}" for h, j in busy.items()),
                    fix="run `vmigrate recover` again when it ends, or abort it "
                    f"({shlex.join(['virsh', '-c', job.source, 'domjobabort', vm])})",
                )
            else:
                plan = plan_recovery(
                    vm,
                    observe(source, "source", job.source, vm),
                    observe(destination, "destination", job.destination, vm),
                    transient=transient,
                )
                plan, step_failed = _apply_steps(plan, vm, source, destination, job)
                if plan.outcome == "aborted":
                    # --copy-storage: the images this job created on the destination go too.
                    removed, left = remove_created(Journal(store, job.id), destination)
                    plan = _with_removed(plan, removed, left)
            placement = locate(vm, conns)
        finally:
            source.close()
            destination.close()
        report = RecoverReport(
            job.id,
            vm,
            plan.outcome,
            plan.message,
            plan.fix,
            list(plan.steps),
            busy,
            placement.to_dict(),
            _where_it_should_be(plan, placement, job, transient=transient),
        )
        store.add_action(job.id, "recover", plan.message, actor="vmigrate recover")
        # Still migrating, or a step failed: the job stays interrupted for the next recover.
        if not busy and not step_failed:
            store.finish_job(job.id, plan.outcome, f"recovered: {plan.message}", report.to_dict())
        return report
