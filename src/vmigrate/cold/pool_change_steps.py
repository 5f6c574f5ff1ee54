"""The journalled steps of a pool change (cold/pool_change.py): QEMU writes the new disks,
each host digests the disk it knows, and a rollback removes only what this job made.

All the disks of a move go at once (`forward`): one paused helper domain per host holds
every disk that host reads (virt/pool_copy.py), and QEMU's copies run side by side (at most
`PARALLEL_COPIES`). Each disk keeps its own journalled steps: reserve, pool change (the
copy), verify pool change.

What the digests prove, and how often each byte is read: the source's digest is taken of
the very bytes QEMU copies, while it copies them: an original that is one raw file is
digested as it is, while QEMU reads it for the copy; anything else (a qcow2 chain, an rbd
image) is first read by the source's QEMU into a raw scratch file (its guest-visible bytes,
the chain flattened), which is digested while it is copied on into Ceph (import), or while
the destination's QEMU copies the image (export). That digest is journalled with the copy.
After the copy only the destination is read, once, through its own pool and key (an rbd
image into a raw scratch file there; a new file as it is), and its digest must equal the
source's. Equal digests prove that the destination now opens exactly the bytes the source
holds, as before, where the source was read a second time after the copy: any byte QEMU
wrote wrong, lost or that Ceph or the file holds otherwise changes the destination's
digest (the verify step then fails and marks the copy to be done again). The source is
never written (QEMU only reads it, the VM is stopped), so its digest taken during the copy
is its digest when the destination is checked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial

from vmigrate.cold.pool_change import PoolChange
from vmigrate.domxml.disks import file_disk_xml, uncached_disk_xml
from vmigrate.errors import VmigrateError
from vmigrate.events import CopyProgress, EventSink, Notice
from vmigrate.failpoints import failpoint
from vmigrate.journal import Detail, Journal, made_as_intended, marked_capacity
from vmigrate.virt import domains
from vmigrate.virt.connection import Connection, signals_to_main_thread
from vmigrate.virt.errors import libvirt_errors
from vmigrate.virt.mirror import destroy_helper, qemu_errors
from vmigrate.virt.pool_copy import DiskCopy, Helper, run_copies
from vmigrate.virt.pool_volumes import (
    create_raw_volume,
    create_scratch_file,
    delete_pool_volume,
    find_pool_volume,
    grow_pool_volume,
    volume_exists_now,
    volume_sizes,
)
from vmigrate.virt.streams import digest_at

#: Disks QEMU copies at once. Each block copy keeps a few requests in flight; side by side
#: they fill the path to Ceph (or the disk) that one alone leaves idle (docs/benchmarks.md,
#: S3: parallel against serial on the lab's link).
PARALLEL_COPIES = 8
SIDES = ("source", "destination")


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
        self.parallel = PARALLEL_COPIES
        self.changes: tuple[PoolChange, ...] = ()
        self._helpers: dict[str, Helper] = {}  # this move's one helper per side
        self._lingering: list[Helper] = []  # destroyed in a thread nobody waits for yet
        self._holders: list[Helper] = []  # the same, holding new images: gone before the start
        self._ready_reads: dict[str, str | None] = {}  # the destination's raw reads, made early

    def _writer(self, change: PoolChange) -> Connection:
        return self.src if change.writer == "source" else self.dst

    def _tag(self) -> str:
        """Part of the job's token, in the names of helpers and scratch files: a job id
        alone repeats across stores, so the name alone proves them this job's."""
        return self.journal.token[:12]

    def _helper_name(self, side: str) -> str:
        return f"vmigrate-{self.journal.job_id}-{self._tag()}-{side}"

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

    # ---- every disk at once: the copies, then the checks ----------------------------------
    def forward(self, changes: tuple[PoolChange, ...]) -> None:
        """Copy every disk, then check every disk: each journalled as its own step
        (write_step, verify_step), the work of all the pending ones done at once, with one
        helper domain per host for the whole move."""
        self.changes = changes
        try:
            self._all_at_once(changes, write_step, "cold.pool-change", self._write_all)
            self._all_at_once(changes, verify_step, "cold.verify-pool-change", self._verify_all)
        except BaseException:
            self._end_helpers()
            raise
        # Every helper is torn down while the VM is defined. The source's held the new images
        # (an import pivots onto them; so does the destination's for an export): gone before
        # the VM opens them (`release_images`, before the start). The destination's holds
        # only its raw reads once every disk was imported (each pivoted from the image onto
        # its raw read): its teardown goes on while the VM starts, until `finish`.
        imports_only = all(c.kind == "import" for c in changes)
        for side, helper in self._helpers.items():
            helper.release()
            holds_images = side == "source" or not imports_only
            (self._holders if holds_images else self._lingering).append(helper)
        self._helpers.clear()

    def release_images(self) -> None:
        """Wait until no helper holds a new image: before the VM opens them."""
        for helper in self._holders:
            helper.join()
        self._holders.clear()

    def finish(self) -> None:
        """Wait for every helper's teardown still going on."""
        self.release_images()
        self._end_helpers()

    def _all_at_once(
        self,
        changes: tuple[PoolChange, ...],
        name_of: Callable[[PoolChange], str],
        point: str,
        work: Callable[[list[PoolChange]], dict[str, Detail]],
    ) -> None:
        """Run the step of every pending disk nested in the one before it: all are
        journalled started before the work begins, done (or failed) once it ends."""
        pending = [c for c in changes if not self.journal.done(name_of(c))]
        results: dict[str, Detail] = {}

        def step(index: int) -> Callable[[Detail], Detail]:
            def run(_previous: Detail) -> Detail:
                if index + 1 < len(pending):
                    self.journal.run(name_of(pending[index + 1]), step(index + 1), point)
                else:
                    results.update(work(pending))
                return results[pending[index].target]

            return run

        if pending:
            self.journal.run(name_of(pending[0]), step(0), point)

    def _helper_on(self, side: str, disks: dict[str, str]) -> Helper:
        """This move's one helper on `side` (started now, holding `disks`), or the one
        already started there when it holds them all."""
        helper = self._helpers.get(side)
        if helper is not None and set(disks) <= set(helper.devices):
            return helper
        if helper is not None:
            helper.join()
        conn, host = (self.src, self.hosts[0]) if side == "source" else (self.dst, self.hosts[1])
        helper = Helper(conn, self._helper_name(side), host, disks)
        self._helpers[side] = helper
        with qemu_errors(host, "starting the helper that holds the disks"):
            helper.start()
        return helper

    def _end_helpers(self) -> None:
        for helper in (*self._helpers.values(), *self._holders, *self._lingering):
            helper.join()
        self._helpers.clear()
        self._holders.clear()
        self._lingering.clear()

    def _write_all(self, pending: list[PoolChange]) -> dict[str, Detail]:
        """QEMU writes every new disk, side by side. The source digest is taken from the
        very bytes the copy reads, as it reads them: an original that is one raw file is
        digested while QEMU copies it; anything else (a qcow2 chain, an rbd image) is first
        read by the source's QEMU into a raw scratch file, which is then digested while
        QEMU copies it on (import), or while the destination's QEMU copies the image
        (export). After the copy, only the destination is read (`_verify_all`)."""
        for change in pending:
            self._require_reserved(change)
        exports = [c for c in pending if c.kind == "export"]
        imports = [c for c in self.changes if c.kind == "import"]
        source = self._helper_on("source", {c.target: c.original_xml for c in pending})
        destination = None
        if exports:  # the destination's QEMU reads each image; it holds the imports' too
            held = {c.target: c.read_xml for c in exports}
            held |= {c.target: uncached_disk_xml(c.new_xml) for c in imports}
            destination = self._helper_on("destination", held)
        scratches = {c.target: self._make_scratch(c, "source") for c in pending}
        with ThreadPoolExecutor(max_workers=1, initializer=signals_to_main_thread) as early:
            if imports and not exports:  # the destination gets ready to read while QEMU copies
                early.submit(self._prepare_destination_reads, imports)
            return self._copy_all(pending, source, destination, scratches)

    def _prepare_destination_reads(self, imports: list[PoolChange]) -> None:
        """The destination's helper and raw reads, made while the source copies: its helper
        holds the new images uncached (nothing it could read before the copy ends is kept)
        and reads nothing until the copy has pivoted. Any failure is left for the verify
        step to meet again, and report, when it makes them itself."""
        try:
            self._helper_on(
                "destination", {c.target: uncached_disk_xml(c.new_xml) for c in imports}
            )
            for change in imports:
                self._ready_reads[change.target] = self._make_scratch(change, "destination")
        except Exception:
            self._ready_reads.clear()
            helper = self._helpers.pop("destination", None)
            if helper is not None:
                helper.join()

    def _copy_all(
        self,
        pending: list[PoolChange],
        source: Helper,
        destination: Helper | None,
        scratches: dict[str, str | None],
    ) -> dict[str, Detail]:
        imports = [c for c in self.changes if c.kind == "import"]
        copies: list[DiskCopy] = []
        writes: dict[DiskCopy, PoolChange] = {}
        digest_after: dict[DiskCopy, tuple[Connection, str]] = {}
        with ThreadPoolExecutor(
            max_workers=max(1, len(pending)), initializer=signals_to_main_thread
        ) as readers:
            digests: dict[str, Future[str]] = {}
            for change in pending:
                scratch = scratches[change.target]
                if scratch is None:  # one raw file: digested while the copy reads it
                    assert change.original_file is not None
                    digests[change.target] = readers.submit(
                        digest_at, self.src, change.original_file, host=self.hosts[0]
                    )
                    legs: tuple[str, ...] = (change.write_xml,)
                else:
                    legs = (file_disk_xml(scratch, "raw"),)
                    if change.kind == "import":
                        legs += (change.write_xml,)
                read = DiskCopy(source, change.target, legs)
                copies.append(read)
                if scratch is not None:
                    digest_after[read] = (self.src, scratch)
                if change.kind == "import":
                    writes[read] = change
                else:
                    assert destination is not None
                    write = DiskCopy(destination, change.target, (change.write_xml,))
                    copies.append(write)
                    writes[write] = change

            def leg_done(copy: DiskCopy, leg: int) -> None:
                if leg == 0 and copy in digest_after:  # the raw read is whole: digest it
                    conn, path = digest_after[copy]
                    digests[copy.key] = readers.submit(digest_at, conn, path, host=self.hosts[0])

            seconds = run_copies(
                copies,
                parallel=self.parallel,
                progress=partial(self._copy_progress, writes),
                on_leg=leg_done,
            )
            found = {target: future.result() for target, future in digests.items()}
        source.release()  # its teardown overlaps the destination's read
        if destination is not None and not imports:
            destination.release()
        for change in pending:
            self._delete_scratch(change, "source")
        took = {change.target: seconds[copy] for copy, change in writes.items()}
        return {
            c.target: {"seconds": round(took[c.target], 3), "source_sha256": found[c.target]}
            for c in pending
        }

    def _copy_progress(
        self, writes: dict[DiskCopy, PoolChange], copy: DiskCopy, leg: int, done: int, total: int
    ) -> None:
        """Progress of the legs that write the new disks (a raw read for a digest is not)."""
        change = writes.get(copy)
        if change is None or leg != len(copy.legs) - 1:
            return
        self.emit(CopyProgress(change.source, done, total))
        if done > 0:
            failpoint("cold.pool-change.mid-copy")

    def _verify_all(self, pending: list[PoolChange]) -> dict[str, Detail]:
        """The destination reads every new disk once, through its own pools and keys, and
        each digest must equal the one the source took of the bytes it copied."""
        expected = {c.target: self._source_digest(c) for c in pending}
        imports = [c for c in pending if c.kind == "import"]
        scratches = {
            c.target: self._ready_reads.pop(c.target, None) or self._make_scratch(c, "destination")
            for c in imports
        }
        failpoint("cold.verify-pool-change.mid-read")
        with ThreadPoolExecutor(
            max_workers=max(1, len(pending)), initializer=signals_to_main_thread
        ) as readers:
            digests: dict[str, Future[str]] = {
                c.target: readers.submit(digest_at, self.dst, c.new_file, host=self.hosts[1])
                for c in pending
                if c.new_file is not None
            }
            if imports:
                helper = self._helper_on("destination", {c.target: c.new_xml for c in imports})
                reads = [
                    DiskCopy(helper, target, (file_disk_xml(path, "raw"),))
                    for target, path in scratches.items()
                    if path is not None
                ]

                def leg_done(copy: DiskCopy, _leg: int) -> None:
                    path = scratches[copy.key]
                    assert path is not None
                    digests[copy.key] = readers.submit(
                        digest_at, self.dst, path, host=self.hosts[1]
                    )

                run_copies(reads, parallel=self.parallel, on_leg=leg_done)
            if "destination" in self._helpers:  # its reads are whole: torn down while hashed
                self._helpers["destination"].release()
            # QEMU just opened every new image through the pool's key: the refresh (which
            # stops a pool whose key fails) goes on while the reads are hashed.
            refreshing = {
                pool: readers.submit(self._list_new_volumes, pool)
                for pool in {c.destination_pool for c in imports}
            }
            found = {target: future.result() for target, future in digests.items()}
            refreshed = {pool: future.result() for pool, future in refreshing.items()}
        for pool, outcome in refreshed.items():
            if outcome is not True:
                self.emit(Notice(f"pool {pool!r}: {outcome}", level="warning"))
        for change in imports:
            self._delete_scratch(change, "destination")
        self._refuse_mismatches(pending, expected, found)
        return {
            c.target: {
                "sha256": found[c.target],
                "destination_pool_refreshed": refreshed.get(c.destination_pool, True),
            }
            for c in pending
        }

    def _source_digest(self, change: PoolChange) -> str:
        """The digest the copy journalled; a copy journalled without one (by an older
        vmigrate) is made again, since nothing else says what it read."""
        digest = self.journal.detail(write_step(change)).get("source_sha256")
        if not digest:
            why = f"{change.target}: the copy was journalled without the source's digest"
            self.journal.record(write_step(change), "failed", {"error": why})
            raise PoolChangeError(
                why,
                vm=self.vm,
                fix=f"`vmigrate jobs resume {self.journal.job_id}` copies it again",
            )
        return str(digest)

    def _refuse_mismatches(
        self, pending: list[PoolChange], expected: dict[str, str], found: dict[str, str]
    ) -> None:
        wrong = [c for c in pending if expected[c.target] != found[c.target]]
        for change in wrong:
            # The next run writes the reserved volume again (QEMU copies every byte of it);
            # the reservation stays this job's, so a rollback still removes it.
            self.journal.record(write_step(change), "failed", {"error": "digest mismatch"})
        if wrong:
            raise PoolChangeError(
                "; ".join(
                    f"{c.target}: digest mismatch between {c.source} on the source "
                    f"({expected[c.target][:16]}) and {c.destination} on the destination "
                    f"({found[c.target][:16]})"
                    for c in wrong
                ),
                vm=self.vm,
                fix=f"`vmigrate jobs resume {self.journal.job_id}` copies "
                f"{'it' if len(wrong) == 1 else 'them'} again; "
                f"`vmigrate jobs rollback {self.journal.job_id}` undoes the move",
            )

    def _require_reserved(self, change: PoolChange) -> None:
        conn = self._writer(change)
        reserved = self.journal.detail(reserve_step(change))
        if find_pool_volume(conn, change.create_pool, str(reserved.get("volume"))) is None:
            raise PoolChangeError(
                f"{change.destination}, made by this job, is gone from pool {change.create_pool!r}",
                vm=self.vm,
                fix="roll the job back and move the VM again",
            )

    def _writer_name(self, change: PoolChange) -> str:
        return self.hosts[0] if change.writer == "source" else self.hosts[1]

    def _scratch(self, change: PoolChange, side: str) -> str:
        """The raw read of a disk for its digest: hidden, named after this job and the side
        (both sides may write into one shared pool at once)."""
        return f".vmigrate-{self.journal.job_id}-{self._tag()}-{change.target}-{side}-digest.img"

    def _scratch_pool(self, change: PoolChange, side: str) -> str | None:
        return change.source_scratch_pool if side == "source" else change.destination_scratch_pool

    def _make_scratch(self, change: PoolChange, side: str) -> str | None:
        """A fresh raw scratch file for a digest read (one left by an interrupted run goes
        first); its path, or None where the side's disk is digested as it is."""
        pool = self._scratch_pool(change, side)
        if pool is None:
            return None
        conn, host = (self.src, self.hosts[0]) if side == "source" else (self.dst, self.hosts[1])
        with qemu_errors(host, f"making a raw file to read {change.target} into"):
            return create_scratch_file(conn, pool, self._scratch(change, side), change.capacity)

    def _delete_scratch(self, change: PoolChange, side: str) -> None:
        pool = self._scratch_pool(change, side)
        if pool is not None:
            conn = self.src if side == "source" else self.dst
            with contextlib.suppress(Exception):  # a leftover harms nobody; rollback retries
                delete_pool_volume(conn, pool, self._scratch(change, side))

    def _list_new_volumes(self, pool: str) -> bool | str:
        """Have the destination's rbd pool list the new images (once for all of them). Only
        now: a pool whose refresh fails (a wrong key) is stopped by libvirt, and QEMU's reads
        just proved the key. An export's file was made through its very pool: listed."""
        try:
            domains.refresh_pool(self.dst, pool)
        except Exception as err:  # the image is there and verified; the listing is cosmetic
            return str(err)  # said by the caller's thread (events go to the store)
        return True

    def undo_verify(self, change: PoolChange) -> None:
        """An interrupted digest may have left its raw read on either host."""
        self._end_leftovers(change)

    def undo(self, change: PoolChange, detail: Detail) -> None:
        """Remove the new volume this job made (and any helper or raw read an interrupted
        run left: a helper still holding the image would keep Ceph from removing it)."""
        self._end_leftovers(change)
        conn = self._writer(change)
        # The destination's pool is not refreshed: a refresh that fails stops the pool.
        pool = detail.get("pool") or change.create_pool
        delete_pool_volume(conn, str(pool), str(detail.get("volume") or detail["making"]))

    def _end_leftovers(self, change: PoolChange) -> None:
        self._end_helpers()
        for side, conn in zip(SIDES, (self.src, self.dst), strict=True):
            with contextlib.suppress(Exception):  # one host's leftover harms nobody
                destroy_helper(conn, self._helper_name(side))
            self._delete_scratch(change, side)

    def delete_original(self, change: PoolChange) -> str | None:
        """--delete-source-disks: the original disk goes from the source (only the VM's own
        top image or rbd image: backing files may serve other VMs)."""
        if change.kind == "import":
            return change.source if domains.delete_volume(self.src, change.source) else None
        if delete_pool_volume(self.src, change.source_pool, change.image):
            return change.source
        return None
