"""After the migrate call returns: see post-copy through, decide the outcome, clean up what
a failed job left, settle the definitions, and account for --copy-storage's images."""

from __future__ import annotations

import contextlib
import shlex
import time
from typing import Any

from vmigrate.errors import VmigrateError
from vmigrate.events import EventSink, Notice
from vmigrate.hosts import HostRef
from vmigrate.journal import Journal
from vmigrate.live.postcopy_link import TIMED_OUT, LinkWatch, wait_for_postcopy
from vmigrate.live.recovery_plan import RecoveryPlan, plan_recovery
from vmigrate.live.request import LiveRequest
from vmigrate.live.storage_copy import (
    created_paths,
    disk_data_sent,
    remove_created,
    remove_source_images,
)
from vmigrate.live.storage_plan import StorageCopyPlan
from vmigrate.model import Placement
from vmigrate.virt.connection import UNDEFINE_KEEP_NVRAM
from vmigrate.virt.reachability import HostLinks
from vmigrate.virt.recovery import apply, observe

#: After the job, how long a host that does not answer gets to show where the VM is not.
VERIFY_WAIT_S = 60.0
TIDY_GRACE_S = 3.0


def job_outcome(
    *, call_error: str | None, abort: dict[str, Any] | None, running_on: list[str], destination: str
) -> tuple[str, str]:
    """How a job ended: completed, aborted (policy), cancelled (a user) or failed.

    Success is what libvirt said *and* where the VM runs: a call that returned without an
    error while the VM is not running on the destination is not a completed migration.
    """
    if call_error is None and running_on == [destination]:
        return "completed", "migration completed"
    if abort is not None and running_on != [destination]:
        return ("cancelled" if abort["by"] == "user" else "aborted"), str(abort["reason"])
    if call_error is None:
        return "failed", f"libvirt reported success, but the VM runs on {running_on or 'no host'}"
    return "failed", call_error


def storage_after(
    request: LiveRequest,
    plan: StorageCopyPlan | None,
    journal: Journal,
    links: HostLinks,
    src_name: str,
    dst_name: str,
    placement: Placement,
    outcome: str,
) -> dict[str, Any]:
    """What --copy-storage moved and made; undo it when the VM is not on the destination."""
    if plan is None:
        return {}
    result: dict[str, Any] = {
        "copied": list(plan.copied),
        "shared": list(plan.shared),
        "created_on_destination": created_paths(journal),
    }
    src, dst = links.conn(src_name), links.conn(dst_name)
    if outcome == "completed":
        kept = [image.path for image in plan.images]
        verified = placement.exactly_on(dst_name, defined=not request.transient)
        if request.delete_source_disks and src is not None and verified:
            result["source_images_removed"] = remove_source_images(plan, src)
            kept = [p for p in kept if p not in result["source_images_removed"]]
        result["source_images_kept"] = kept
        result["disk_bytes_sent"] = disk_data_sent(plan, journal)
    elif dst is None or dst_name in placement.unknown_on:
        result["left_on_destination"] = [
            f"{path}: the destination did not answer" for path in created_paths(journal)
        ]
    elif dst_name not in placement.running_on and dst_name not in placement.defined_on:
        # The VM stays on the source: what this job made on the destination goes again.
        result["removed_from_destination"], result["left_on_destination"] = remove_created(
            journal, dst
        )
    else:
        result["left_on_destination"] = [
            f"{path}: kept, the VM is on the destination" for path in created_paths(journal)
        ]
    return result


def tidy_after_failure(
    vm: str, links: HostLinks, src_ref: HostRef, dst_ref: HostRef, transient: bool
) -> list[str]:
    """A pre-copy that failed may leave the half-received guest paused on the destination
    (libvirt removes it, but not when its daemon restarted meanwhile): remove it, and resume
    a source paused for a switch-over that never came. Only what `vmigrate recover` would do."""
    src, dst = links.conn(src_ref.name), links.conn(dst_ref.name)
    if src is None or dst is None:
        return []

    def plan() -> RecoveryPlan | None:
        views = (
            observe(src, src_ref.name, src_ref.uri, vm),
            observe(dst, dst_ref.name, dst_ref.uri, vm),
        )
        if any(view.job for view in views):  # libvirt is still at it: never interfere
            return None
        return plan_recovery(vm, *views, transient=transient)

    first = plan()
    if first is None or not first.steps:
        return []
    time.sleep(TIDY_GRACE_S)  # let libvirt clean up first: it usually does
    plan_now = plan()
    if plan_now is None:
        return [
            f"a libvirt job still runs on {vm}: left as it is; "
            f"run `vmigrate recover {shlex.quote(vm)}`"
        ]
    if plan_now.outcome != "aborted" or not plan_now.steps:
        return []
    for step in plan_now.steps:
        with contextlib.suppress(VmigrateError):  # it may have gone by itself meanwhile
            apply(step, vm, src, dst, source_name=src_ref.name, destination_name=dst_ref.name)
    return [f"cleaned up after the failed migration: {plan_now.message}"]


def see_postcopy_through(
    request: LiveRequest, links: HostLinks, source: str, watch: LinkWatch, emit: EventSink
) -> str:
    """In post-copy there is no way back: wait (within --postcopy-wait) until it finishes."""
    try:
        return wait_for_postcopy(
            request.vm,
            links,
            source,
            watch.destination,
            watch,
            wait_s=request.postcopy_wait_s,
        )
    except KeyboardInterrupt:
        emit(Notice("stopped waiting for post-copy (Ctrl-C); nothing destroyed"))
        return TIMED_OUT


def settle(
    request: LiveRequest, src_name: str, dst_name: str, links: HostLinks, outcome: str
) -> Placement:
    """After success, undefine the source only once the destination is verified running."""
    placement = links.locate(request.vm)
    src = links.conn(src_name)
    if (
        outcome == "completed"
        and not request.transient
        and src is not None
        and placement.running_on == [dst_name]
        and dst_name in placement.defined_on
        and src_name in placement.defined_on
    ):
        with contextlib.suppress(Exception):
            src.lookupByName(request.vm).undefineFlags(UNDEFINE_KEEP_NVRAM)
        placement = links.locate(request.vm)
    return placement
