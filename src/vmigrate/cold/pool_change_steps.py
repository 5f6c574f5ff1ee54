"""The journalled steps of a pool change (cold/pool_change.py): QEMU writes the new disk,
each host digests the disk it knows, and a rollback removes only what this job made."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

from vmigrate.cold.pool_change import PoolChange
from vmigrate.errors import VmigrateError
from vmigrate.events import CopyProgress, EventSink, Notice
from vmigrate.failpoints import failpoint
from vmigrate.journal import Detail, Journal, made_as_intended, marked_capacity
from vmigrate.virt import domains
from vmigrate.virt.connection import Connection, signals_to_main_thread
from vmigrate.virt.errors import libvirt_errors
from vmigrate.virt.mirror import content_digest, destroy_helper, mirror_disk
from vmigrate.virt.pool_volumes import (
    create_raw_volume,
    delete_pool_volume,
    find_pool_volume,
    grow_pool_volume,
    volume_exists_now,
    volume_sizes,
)


class PoolChangeError(VmigrateError):
    """A disk could not be moved into its new pool; the job can be resumed or rolled back."""


def reserve_step(change: PoolChange) -> str:
    return f"reserve {change.target}"


def write_step(change: PoolChange) -> str:
    return f"pool change {change.target}"


def verify_step(change: PoolChange) -> str:
    return f"verify pool change {change.target}"


class PoolChangeSteps:
    def __init__(
        self,
        conns: tuple[Connection, Connection],
        hosts: tuple[str, str],
        journal: Journal,
        vm: str,
        emit: EventSink,
    ) -> None:
        (self.src, self.dst), self.hosts = conns, hosts
        self.journal, self.vm, self.emit = journal, vm, emit

    def _writer(self, change: PoolChange) -> Connection:
        return self.src if change.writer == "source" else self.dst

    def _tag(self) -> str:
        """Part of the job's token, in the names of helpers and scratch files: a job id
        alone repeats across stores, so the name alone proves them this job's."""
        return self.journal.token[:12]

    def _helper(self, change: PoolChange, purpose: str) -> str:
        return f"vmigrate-{self.journal.job_id}-{self._tag()}-{change.target}-{purpose}"

    def _new_volume_name(self, change: PoolChange) -> str:
        return change.image if change.kind == "import" else change.destination.rsplit("/", 1)[1]

    def reserve(self, change: PoolChange, previous: Detail) -> Detail:
        """Make the new, empty volume while the VM still runs. Making it is the one test of
        its name that asks the storage itself (an rbd pool's list is only as new as its last
        refresh): if the name is taken, the move stops here and nothing has changed. Its
        name, size and the job's token are journalled before it is made, and it is
        journalled made once made: a run killed in between finds it exactly as made and
        empty, and knows it as its own (`made_by_us`); anything else there is a stranger's,
        never overwritten nor deleted."""
        conn, name = self._writer(change), self._new_volume_name(change)
        host = self._writer_name(change)
        made = {"created": True, "pool": change.create_pool, "volume": name}
        if previous.get("making") and self._made_before_crash(change, previous):
            previous = {**previous, **made}
        if previous.get("created"):  # made by this job: at its full size now
            grow_pool_volume(conn, change.create_pool, name, change.capacity)
            return previous
        self._forget_gone(conn, change.create_pool, name)
        # Made at a size that carries the job's token, grown once journalled made.
        size = marked_capacity(change.capacity, self.journal.token)
        intended = self.journal.intend(
            reserve_step(change), {"making": name}, host=host, pool=change.create_pool,
            volume=name, capacity=size, marked=size != change.capacity,
        )  # fmt: skip
        failpoint("cold.reserve.after-intent")
        try:
            with libvirt_errors(host=host, vm=self.vm, doing=f"making {change.destination}"):
                create_raw_volume(conn, change.create_pool, name, size)
        except VmigrateError as err:
            raise PoolChangeError(
                f"{err.message}; if that name is taken, it is not this job's "
                "and is never overwritten",
                host=host,
                vm=self.vm,
                fix=f"check whether pool {change.create_pool!r} on {host} holds "
                f"{name!r} and whether it is needed; remove it or move the VM under another "
                "name, then retry",
            ) from err
        failpoint("cold.reserve.after-create")
        self.journal.record(reserve_step(change), "started", {**intended, **made})
        grow_pool_volume(conn, change.create_pool, name, change.capacity)
        return {**intended, **made}

    def _made_before_crash(self, change: PoolChange, detail: Detail) -> bool:
        """The new volume is the one this job journalled (with its token) it was about to
        make, found exactly as made and empty: made just before an interruption."""
        intent = self.journal.intended(reserve_step(change), detail)
        name = self._new_volume_name(change)
        if intent is None or (intent.get("pool"), intent.get("volume")) != (
            change.create_pool,
            name,
        ):
            return False
        conn = self._writer(change)
        if not volume_exists_now(conn, change.create_pool, name):
            return False
        return made_as_intended(intent, volume_sizes(conn, change.create_pool, name))

    def _forget_gone(self, conn: Connection, pool: str, name: str) -> None:
        """An rbd pool still listing an image deleted through another host refuses to make
        one of that name; Ceph itself just said it is gone (through this pool's key, so a
        refresh cannot fail on the key and stop the pool): list the pool afresh."""
        if find_pool_volume(conn, pool, name) is not None and not volume_exists_now(
            conn, pool, name
        ):
            domains.refresh_pool(conn, pool)

    def made_by_us(self, change: PoolChange, detail: Detail) -> bool:
        """For a rollback: the new volume is this job's (journalled made, or made just
        before an interruption and found as made)."""
        return bool(detail.get("created")) or (
            bool(detail.get("making")) and self._made_before_crash(change, detail)
        )

    def write(self, change: PoolChange, _previous: Detail) -> Detail:
        """The writer's QEMU copies every guest-visible byte into the reserved volume."""
        conn = self._writer(change)
        reserved = self.journal.detail(reserve_step(change))
        if find_pool_volume(conn, change.create_pool, str(reserved.get("volume"))) is None:
            raise PoolChangeError(
                f"{change.destination}, made by this job, is gone from pool {change.create_pool!r}",
                vm=self.vm,
                fix="roll the job back and move the VM again",
            )

        def progress(done: int, total: int) -> None:
            self.emit(CopyProgress(change.source, done, total))
            if done > 0:
                failpoint("cold.pool-change.mid-copy")

        seconds = mirror_disk(
            conn,
            self._helper(change, "copy"),
            change.read_xml,
            change.write_xml,
            host=self._writer_name(change),
            progress=progress,
        )
        return {"seconds": round(seconds, 3)}

    def _writer_name(self, change: PoolChange) -> str:
        return self.hosts[0] if change.writer == "source" else self.hosts[1]

    def _scratch(self, change: PoolChange, side: str) -> str:
        """The raw read of a disk for its digest: hidden, named after this job and the side
        (both sides may write into one shared pool at once)."""
        return f".vmigrate-{self.journal.job_id}-{self._tag()}-{change.target}-{side}-digest.img"

    def verify(self, change: PoolChange, _previous: Detail) -> Detail:
        """The source reads the original, the destination the new disk, both at once (two
        hosts, two QEMUs): equal digests."""
        source_pool, destination_pool = change.source_scratch_pool, change.destination_scratch_pool
        source_helper = self._helper(change, "read")
        with ThreadPoolExecutor(max_workers=1, initializer=signals_to_main_thread) as pool:
            reading = pool.submit(
                content_digest,
                self.src,
                change.original_xml,
                file=change.original_file,
                scratch=(source_pool, self._scratch(change, "source")) if source_pool else None,
                capacity=change.capacity,
                helper=source_helper,
                host=self.hosts[0],
            )
            try:
                copied = content_digest(
                    self.dst,
                    change.new_xml,
                    file=change.new_file,
                    scratch=(destination_pool, self._scratch(change, "destination"))
                    if destination_pool
                    else None,
                    capacity=change.capacity,
                    helper=self._helper(change, "read"),
                    host=self.hosts[1],
                )
            except BaseException:  # Ctrl-C too: end the source's read now, not when it is done
                with contextlib.suppress(Exception):
                    destroy_helper(self.src, source_helper)
                raise
            source = reading.result()
        if source != copied:
            mismatch = (
                f"{change.target}: digest mismatch between {change.source} on the source "
                f"({source[:16]}) and {change.destination} on the destination ({copied[:16]})"
            )
            # The next run writes the reserved volume again (QEMU copies every byte of it);
            # the reservation stays this job's, so a rollback still removes it.
            self.journal.record(write_step(change), "failed", {"error": mismatch})
            raise PoolChangeError(
                mismatch,
                vm=self.vm,
                fix=f"`vmigrate jobs resume {self.journal.job_id}` copies it again; "
                f"`vmigrate jobs rollback {self.journal.job_id}` undoes the move",
            )
        refreshed = self._list_new_volume(change)
        return {"sha256": source, "destination_pool_refreshed": refreshed}

    def _list_new_volume(self, change: PoolChange) -> bool | str:
        """Have the destination's pool list the new volume. Only now: a pool whose refresh
        fails (a wrong key) is stopped by libvirt, and the digest just proved the key."""
        if change.kind != "import":
            return True  # made through that very pool, which lists it already
        try:
            domains.refresh_pool(self.dst, change.destination_pool)
        except Exception as err:  # the image is there and verified; the listing is cosmetic
            self.emit(Notice(f"pool {change.destination_pool!r}: {err}", level="warning"))
            return str(err)
        return True

    def undo_verify(self, change: PoolChange) -> None:
        """An interrupted digest may have left its raw read on either host."""
        for conn, pool, side in (
            (self.src, change.source_scratch_pool, "source"),
            (self.dst, change.destination_scratch_pool, "destination"),
        ):
            if pool is not None:
                with contextlib.suppress(Exception):  # one host's leftover harms nobody
                    destroy_helper(conn, self._helper(change, "read"))
                    delete_pool_volume(conn, pool, self._scratch(change, side))

    def undo(self, change: PoolChange, detail: Detail) -> None:
        """Remove the new volume this job made (and any helper an interrupted run left)."""
        conn = self._writer(change)
        for purpose in ("copy", "read"):
            with contextlib.suppress(Exception):
                destroy_helper(conn, self._helper(change, purpose))
        # The destination's pool is not refreshed: a refresh that fails stops the pool.
        pool = detail.get("pool") or change.create_pool
        delete_pool_volume(conn, str(pool), str(detail.get("volume") or detail["making"]))

    def delete_original(self, change: PoolChange) -> str | None:
        """--delete-source-disks: the original disk goes from the source (only the VM's own
        top image or rbd image: backing files may serve other VMs)."""
        if change.kind == "import":
            return change.source if domains.delete_volume(self.src, change.source) else None
        if delete_pool_volume(self.src, change.source_pool, change.image):
            return change.source
        return None
