"""The journalled steps of a pool change (cold/pool_change.py): QEMU writes the new disk,
each host digests the disk it knows, and a rollback removes only what this job made."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from vmigrate.cold.pool_change import PoolChange
from vmigrate.errors import VmigrateError
from vmigrate.journal import Detail, Journal
from vmigrate.virt import domains
from vmigrate.virt.connection import Connection
from vmigrate.virt.mirror import content_digest, destroy_helper, mirror_disk
from vmigrate.virt.pool_volumes import create_raw_volume, delete_pool_volume, find_pool_volume

EventSink = Callable[[str, dict[str, Any]], None]


class PoolChangeError(VmigrateError):
    """A disk could not be moved into its new pool; the job can be resumed or rolled back."""


def write_step(change: PoolChange) -> str:
    return f"pool change {change.target}"


def verify_step(change: PoolChange) -> str:
    return f"verify pool change {change.target}"


class PoolChangeSteps:
    def __init__(
        self, src: Connection, dst: Connection, journal: Journal, vm: str, emit: EventSink
    ) -> None:
        self.src, self.dst, self.journal, self.vm, self.emit = src, dst, journal, vm, emit

    def _writer(self, change: PoolChange) -> Connection:
        return self.src if change.writer == "source" else self.dst

    def _helper(self, change: PoolChange, purpose: str) -> str:
        return f"vmigrate-{self.journal.job_id}-{change.target}-{purpose}"

    def _new_volume_name(self, change: PoolChange) -> str:
        return change.image if change.kind == "import" else change.destination.rsplit("/", 1)[1]

    def write(self, change: PoolChange, previous: Detail) -> Detail:
        """Make the new volume (recorded first, so a crash leaves nothing unaccounted for)
        and have the writer's QEMU copy every guest-visible byte into it."""
        conn, name = self._writer(change), self._new_volume_name(change)
        existing = find_pool_volume(conn, change.create_pool, name)
        if existing is not None and not previous.get("created"):
            raise PoolChangeError(
                f"{change.destination} already exists and was not created by this job: it is "
                "never overwritten",
                vm=self.vm,
                fix=f"check it is not needed and remove it from pool {change.create_pool!r}, "
                "then resume the job",
            )
        detail: Detail = {"created": True, "pool": change.create_pool, "volume": name}
        self.journal.record(write_step(change), "started", detail)
        if existing is None:
            create_raw_volume(conn, change.create_pool, name, change.capacity)

        def progress(done: int, total: int) -> None:
            self.emit("copy", {"path": change.source, "done": done, "total": total})

        seconds = mirror_disk(
            conn,
            self._helper(change, "copy"),
            change.read_xml,
            change.write_xml,
            progress=progress,
        )
        domains.refresh_pool(self.dst, change.destination_pool)  # it lists the new volume
        return {**detail, "seconds": round(seconds, 3)}

    def verify(self, change: PoolChange, _previous: Detail) -> Detail:
        """The source reads the original, the destination the new disk: equal digests."""
        scratch = f".vmigrate-{self.journal.job_id}-{change.target}-digest.img"
        source = content_digest(
            self.src,
            change.original_xml,
            file=change.original_file,
            scratch=(change.source_scratch_pool, scratch) if change.source_scratch_pool else None,
            capacity=change.capacity,
            helper=self._helper(change, "read"),
        )
        copied = content_digest(
            self.dst,
            change.new_xml,
            file=change.new_file,
            scratch=(change.destination_scratch_pool, scratch)
            if change.destination_scratch_pool
            else None,
            capacity=change.capacity,
            helper=self._helper(change, "read"),
        )
        if source != copied:
            raise PoolChangeError(
                f"{change.target}: digest mismatch between {change.source} on the source "
                f"({source[:16]}) and {change.destination} on the destination ({copied[:16]})",
                vm=self.vm,
                fix="resume the job to copy again, or roll it back",
            )
        return {"sha256": source}

    def undo(self, change: PoolChange, detail: Detail) -> None:
        """Remove the new volume this job made (and any helper an interrupted run left)."""
        conn = self._writer(change)
        for purpose in ("copy", "read"):
            with contextlib.suppress(Exception):
                destroy_helper(conn, self._helper(change, purpose))
        delete_pool_volume(conn, str(detail.get("pool")), str(detail.get("volume")))
        if change.writer == "source":
            with contextlib.suppress(Exception):  # the destination's listing catches up later
                domains.refresh_pool(self.dst, change.destination_pool)

    def delete_original(self, change: PoolChange) -> str | None:
        """--delete-source-disks: the original disk goes from the source (only the VM's own
        top image or rbd image: backing files may serve other VMs)."""
        if change.kind == "import":
            return change.source if domains.delete_volume(self.src, change.source) else None
        if delete_pool_volume(self.src, change.source_pool, change.image):
            return change.source
        return None
