"""--copy-storage on the hosts: plan from what the hosts hold, prepare the destination's images
before the migration starts, and remove them again if the VM does not end up there.

Every image created on the destination is journalled before it is created, so that a failure,
a Ctrl-C or `vmigrate recover` after a crash can remove exactly what this job made.
"""

from __future__ import annotations

import contextlib
import posixpath
from functools import partial

from vmigrate.domxml.domain import parse_domain
from vmigrate.errors import VmigrateError
from vmigrate.events import CopyProgress, EventSink, Notice
from vmigrate.facts import PoolFacts, VolumeInfo
from vmigrate.journal import Detail, Journal
from vmigrate.live.storage_plan import (
    LOCAL,
    BackingCopy,
    ImageToCreate,
    StorageCopyPlan,
    check_room,
    plan_storage_copy,
)
from vmigrate.model import CheckReport
from vmigrate.virt import domains
from vmigrate.virt.connection import Connection, Domain
from vmigrate.virt.copy_worker import copy_between
from vmigrate.virt.errors import libvirt_errors
from vmigrate.virt.storage import volume_chain, volume_exists
from vmigrate.virt.streams import digest_at

SPACE_MARGIN_BYTES = 64 << 20  # an upload that hits ENOSPC crashed libvirtd 11.3


class StorageCopyError(VmigrateError):
    """Preparing the destination's images failed; what was made is removed again."""


def placement_from_checks(report: CheckReport) -> dict[str, str]:
    """Per disk target, where the pre-flight storage check found it: shared, local, ..."""
    placement: dict[str, str] = {}
    for finding in report.findings:
        where = finding.evidence.get("placement") if finding.evidence else None
        if finding.check == "storage.shared" and finding.subject and isinstance(where, str):
            placement[finding.subject] = where
    return placement


def plan_for(
    vm: str,
    domain: Domain,
    src: Connection,
    dst: Connection,
    destination_pools: tuple[PoolFacts, ...],
    report: CheckReport,
    selection: tuple[str, ...] | None,
    *,
    check_space: bool = True,
) -> StorageCopyPlan:
    disks = list(parse_domain(domains.definition(domain)).disks)
    placement = placement_from_checks(report)
    chains: dict[str, list[VolumeInfo]] = {}
    for disk in disks:
        if placement.get(disk.target) == LOCAL and disk.path is not None:
            chains[disk.target] = volume_chain(src, disk.path) or []
    paths = {v.path for chain in chains.values() for v in chain}
    plan = plan_storage_copy(
        vm,
        disks,
        placement,
        chains,
        destination_pools,
        frozenset(p for p in paths if volume_exists(dst, p)),
        selection,
    )
    if check_space:
        check_room(
            plan,
            {p.name: max(0, p.available - SPACE_MARGIN_BYTES) for p in destination_pools},
            vm,
        )
    return plan


class DestinationImages:
    """Creates (and can remove) the images a copy-storage migration needs on the destination."""

    def __init__(
        self,
        vm: str,
        plan: StorageCopyPlan,
        src: Connection,
        dst: Connection,
        journal: Journal,
        emit: EventSink,
    ) -> None:
        self.vm, self.plan, self.src, self.dst = vm, plan, src, dst
        self.journal, self.emit = journal, emit

    def prepare(self) -> None:
        with libvirt_errors(host=None, vm=self.vm, doing="prepare the destination's disks"):
            self._prepare()

    def _prepare(self) -> None:
        for path in self.plan.backing_present:
            self._same_on_both(path)
        for copy in self.plan.backing:
            self.journal.run(_step_name(copy.path), partial(self._copy_backing, copy))
        for image in self.plan.images:
            self.journal.run(_step_name(image.path), partial(self._create, image))

    def _same_on_both(self, path: str) -> None:
        """A backing file already on the destination must hold the very same bytes."""
        ours = digest_at(self.src, path)
        theirs = digest_at(self.dst, path)
        if ours != theirs:
            raise StorageCopyError(
                f"the backing file {path} exists on the destination with other content "
                f"(digest {theirs[:16]} there, {ours[:16]} here)",
                vm=self.vm,
                fix="remove or rename the destination's file, then run again to copy it",
            )

    def _claim(self, path: str) -> None:
        """Record that this job is about to create `path`, after making sure it is not there:
        a file another job (or a person) made meanwhile is never ours to remove."""
        if domains.volume_at(self.dst, path) is not None:
            raise StorageCopyError(
                f"{path} appeared on the destination after the plan was made "
                "(another migration of a VM that shares it?); it is left alone",
                vm=self.vm,
                fix="wait for the other job to end, then run the migration again",
            )
        self.journal.record(_step_name(path), "started", {"creating": path})

    def _copy_backing(self, copy: BackingCopy, _previous: Detail) -> Detail:
        self._claim(copy.path)
        made = domains.create_file_volume(
            self.dst, copy.destination_pool, posixpath.basename(copy.path), copy.physical
        )

        def progress(position: int) -> None:
            self.emit(CopyProgress(copy.path, position, copy.physical))

        result = copy_between(  # a helper process: see copy_worker.py for why
            self.src, copy.path, self.dst, made, progress=progress
        )
        domains.refresh_pool(self.dst, copy.destination_pool)
        copied = digest_at(self.dst, copy.path)
        if result.sha256 is not None and copied != result.sha256:
            raise StorageCopyError(
                f"checksum mismatch for the backing file {copy.path} on the destination",
                vm=self.vm,
                fix="run the migration again; the copy is removed",
            )
        return {
            "created": copy.path,
            "kind": "backing",
            "sha256": copied,
            "data_bytes": result.data_bytes,
        }

    def _create(self, image: ImageToCreate, _previous: Detail) -> Detail:
        self._claim(image.path)
        backing = (
            (image.backing_path, image.backing_format or "raw") if image.backing_path else None
        )
        domains.create_image(
            self.dst,
            image.pool,
            posixpath.basename(image.path),
            fmt=image.format,
            capacity=image.capacity,
            backing=backing,
        )
        self.emit(Notice(f"created {image.path} on the destination"))
        return {"created": image.path, "kind": "image", "target": image.target}


STEP_PREFIX = "destination image "


def _step_name(path: str) -> str:
    return STEP_PREFIX + path


def created_paths(journal: Journal) -> list[str]:
    """Destination files this job made, or was making when it stopped, latest first."""
    return [
        step.name.removeprefix(STEP_PREFIX)
        for step in journal.done_in_reverse()
        if step.name.startswith(STEP_PREFIX)
        and ("creating" in step.detail or "created" in step.detail)
    ]


def disk_data_sent(plan: StorageCopyPlan, journal: Journal) -> int:
    """The copied disks' bytes that crossed the link as data, as far as libvirt lets us know
    without reading the disks: the backing copies' data (they stream data only), and what
    each mirrored top image holds on the source (allocated, from the plan). Holes never
    cross; allocated blocks of zeroes are counted, though with zero detection on
    (migration.py) they cross as write-zero requests of a few bytes: an upper bound by
    those. A block the guest rewrote during the mirror crossed twice and is counted once."""
    backing = 0
    for copy in plan.backing:
        sent = journal.detail(_step_name(copy.path)).get("data_bytes")
        backing += int(sent) if isinstance(sent, int) else copy.physical
    return backing + sum(image.allocation for image in plan.images)


def remove_created(journal: Journal, dst: Connection) -> tuple[list[str], list[str]]:
    """Delete what the job created on the destination: (removed, left behind with why).

    A file some domain there uses (a backing file another migration shares) is left."""
    removed: list[str] = []
    left: list[str] = []
    for path in created_paths(journal):
        name = _step_name(path)
        try:
            user = domains.domain_using(dst, path)
            if user is not None:
                left.append(f"{path}: kept, {user} on the destination uses it")
                continue
            if domains.delete_volume(dst, path):
                removed.append(path)
            journal.record(name, "undone", journal.detail(name))
        except VmigrateError as err:
            left.append(f"{path}: {err.message}")
    return removed, left


def remove_source_images(plan: StorageCopyPlan, src: Connection) -> list[str]:
    """--delete-source-disks after a verified move: only the VM's own top images; backing
    files may serve other VMs."""
    removed = []
    for image in plan.images:
        with contextlib.suppress(VmigrateError):
            if domains.delete_volume(src, image.path):
                removed.append(image.path)
    return removed
