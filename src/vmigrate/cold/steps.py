"""The steps of one cold move, each idempotent and recorded in the journal, and their undo.

Order: stop (shut down, power off, or save the state) -> copy every local file (sparse,
resumable) -> verify checksums -> copy the state file unless its pool is shared -> define on
the destination -> start or restore -> verify it runs -> only then undefine the source ->
remove the state file from both hosts -> optionally delete the source's disk files -> remove
the job's marker from the destination's domain.
Nothing is deleted that this job did not create, and never before the destination runs.
Before each step that cannot be undone, cold/invariants.py checks the hosts again.

Every thing a step makes on a host is known as the job's even if vmigrate dies while making
it (#28): the step journals its intent first (the exact path or pool and name, the size it
makes it with, the job's token: journal.intend), makes it, then journals it made. A run
killed in between finds a thing at that very place; it is the job's only if it is exactly
what the step makes and still empty (made_as_intended: same size, nothing allocated, since
the step writes nothing before journalling it made), else a stranger's, never touched.
File volumes and rbd images cannot carry a tag through libvirt (no xattrs, no rename, no
`rbd image-meta`): for a copied file, the intent plus "as made, still empty" is the proof
(and the planning refused a name that already existed); a pool change's new volume is made
at a size that carries the token (journal.marked_capacity), grown once journalled made,
since an rbd image's allocation proves nothing. Names the job chooses itself carry the token (state
file, flattened image, digest scratch files, helper domains). The destination's domain
carries the job's marker in its <metadata> (virt/domains.py) until the job is done.

Every delete, and what proves the file is the job's:
- destination copies (rollback, and a copy done again from offset 0): the copy step's
  `created`, or its intent with the file found as made and empty; and no VM there names it;
- the state file: its path, journalled by the stop step before the file exists, carries a
  token of this plan (refused at planning if it existed); its copy: as a destination copy;
- a flattened image: `created` in the flatten step, journalled before it is made, a name
  with the job's id and token;
- a pool change's new volume: the reserve step's `created`, or its intent with the volume
  found at the size that carries the token (cold/pool_change_steps.py); its digest scratch
  files and helper domains: by their names, which carry the job's id and token;
- the destination's domain: the job's marker (or, for a job journalled before markers, its
  define journalled done and no other job's marker);
- the source's disks (--delete-source-disks), not made by the job: only once the journal
  shows each one verified and the source undefined, and no VM on the source names it.
"""

from __future__ import annotations

import contextlib
import posixpath
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from vmigrate.cold.errors import ColdMoveError as ColdMoveError  # runner.py imports it here
from vmigrate.cold.errors import InvariantViolated
from vmigrate.cold.invariants import Invariants
from vmigrate.cold.plan import ColdPlan, VolumeCopy
from vmigrate.cold.pool_change_steps import (
    PoolChangeSteps,
    reserve_step,
    verify_step,
)
from vmigrate.domxml.domain import parse_domain
from vmigrate.domxml.secrets import graft_secrets
from vmigrate.events import CopyProgress, EventSink
from vmigrate.failpoints import failpoint
from vmigrate.journal import INTENT, Detail, Journal, made_as_intended
from vmigrate.model import Placement
from vmigrate.store import StoreLocation
from vmigrate.virt import domains
from vmigrate.virt.connection import (
    UNDEFINE_KEEP_NVRAM,
    Connection,
    Domain,
    find_domain,
    find_domain_by_uuid,
    lookup_domain,
)
from vmigrate.virt.copy_worker import copy_between
from vmigrate.virt.lifecycle_watch import (
    LifecycleWatch,
    StoppedRunning,
    shutdown_and_wait,
    watch_it_run,
)
from vmigrate.virt.placement import look_by_uuid
from vmigrate.virt.streams import digest_at, volume_digest

CHECKPOINT_BYTES = 64 << 20
SPACE_MARGIN_BYTES = 4 << 20  # kept free in a destination pool (file system metadata)
CONNECT_TIMEOUT_S = 10.0
#: The longest the destination is watched before the source goes (the watch ends as soon
#: as QEMU shows the guest's vCPUs executing; where it reports no vCPU time, this long).
VERIFY_RUNNING_S = 3.0


def copy_again(journal: Journal, destination_path: str, reason: str) -> None:
    """After a checksum mismatch: the next run copies the file again from offset 0, into
    the same file, which the journal keeps as this job's (so a rollback still removes it)."""
    step = f"copy {destination_path}"
    created = bool(journal.detail(step).get("created"))
    journal.record(step, "failed", {"created": created, "offset": 0, "error": reason})


def misplaced(vm: str, placement: Placement, expected: str, job_id: int) -> str:
    """The outcome's message when every step finished but the final look does not find the
    VM where the plan puts it: what was found, and what to do."""
    defined = ", ".join(placement.defined_on) or "no host"
    running = ", ".join(placement.running_on) or "no host"
    unknown = f"; {', '.join(placement.unknown_on)} did not answer" if placement.unknown_on else ""
    return (
        f"every step finished, but {vm} is not where the plan puts it: defined on {defined}, "
        f"running on {running}{unknown} (expected: defined on {expected}). Find out who "
        f"changed it (vmigrate jobs show {job_id}; virsh list --all on each host); "
        f"`vmigrate jobs resume {job_id}` looks again once it is back, "
        f"`vmigrate jobs rollback {job_id}` brings it back to the source"
    )


@dataclass
class Rollback:
    undone: list[str] = field(default_factory=list)  # steps undone, latest first
    leftovers: list[str] = field(default_factory=list)  # destination files still there


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
    rollback_on_failure: bool = True  # False: leave a failed job for `jobs resume`
    flatten: bool = False  # copy each backing chain as one standalone image
    state_pool: str | None = None  # --state-pool NAME or SRC:DST: carries the state file
    shutdown_timeout_s: float = 60.0
    adapt: bool = False  # --adapt: rewrite what the destination cannot run (cold/adaptation.py)
    hosts_file: Path | None = None
    store_path: StoreLocation | None = None


class ColdMove:
    """The steps of one cold move, over open connections, recorded in the journal."""

    def __init__(
        self,
        plan: ColdPlan,
        request: ColdRequest,
        src: Connection,
        dst: Connection,
        journal: Journal,
        emit: EventSink,
        others: dict[str, Connection] | None = None,
    ) -> None:
        """`others`: hosts besides these two that may run the VM, checked before it starts."""
        self.plan, self.request, self.src, self.dst = plan, request, src, dst
        self.journal, self.emit = journal, emit
        self.pool_changes = PoolChangeSteps(
            (src, dst), (request.source, request.destination), journal, plan.vm, emit
        )
        self.uuid = parse_domain(plan.source_xml).uuid
        self._watch: LifecycleWatch | None = None  # the destination's, from its start on
        self.invariants = Invariants(
            plan.vm,
            self.uuid,
            journal.job_id,
            (request.source, src),
            {request.destination: dst, **(others or {})},
        )

    # ---- forward ---------------------------------------------------------------------
    def stop(self, previous: Detail) -> Detail:
        domain = find_domain(self.src, self.plan.vm)
        if domain is None or not domains.is_active(domain, host=self.request.source):
            if self._saved_file(previous):  # vmigrate stopped mid-save; libvirt finished it
                return {**previous, "how": "saved"}
            return {"how": "already stopped", "at": time.time()}
        stopped_at = time.time()
        if self.plan.keep_state:
            return self._save(domain, previous, stopped_at)
        if self.plan.state == "running" and shutdown_and_wait(
            self.src, domain, timeout=self.request.shutdown_timeout_s
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

    def flatten(self, copy: VolumeCopy, previous: Detail) -> Detail:
        """A standalone image of the chain, next to its top on the source (qemu-img convert)."""
        folder, name = posixpath.split(copy.source_path)
        temp = posixpath.join(folder, f".vmigrate-{self.journal.job_id}-{self._tag()}-flat-{name}")
        if previous.get("created"):  # half-made by an interrupted run: its name says so
            domains.delete_volume(self.src, str(previous.get("temp_path") or temp))
        self.journal.record(f"flatten {copy.source_path}", "started", {"created": True})
        domains.flatten_volume(
            self.src, copy.source_pool, copy.source_path, posixpath.basename(temp)
        )
        return {"created": True, "temp_path": temp}

    def remove_flat(self, copy: VolumeCopy, _previous: Detail) -> Detail:
        domains.delete_volume(self.src, self.read_path(copy))
        return {"removed": self.read_path(copy)}

    def read_path(self, copy: VolumeCopy) -> str:
        """Where the bytes to copy are on the source: the file, or its flattened image."""
        if not copy.flatten:
            return copy.source_path
        return str(self.journal.detail(f"flatten {copy.source_path}")["temp_path"])

    def copy(self, copy: VolumeCopy, previous: Detail, point: str = "cold.copy") -> Detail:
        step = f"copy {copy.destination_path}"
        domains.refresh_pool(self.dst, copy.destination_pool)  # a file made behind our back
        existing = domains.volume_at(self.dst, copy.destination_path)
        if existing is not None and not previous.get("created"):
            if not self._made_before_crash(step, previous, self.dst, copy.destination_path):
                raise ColdMoveError(
                    f"{copy.destination_path} already exists on the destination and was not "
                    "created by this job (it is not the empty file this job journalled it "
                    "would make): it is never overwritten",
                    vm=self.plan.vm,
                    host=self.request.destination,
                    fix="find out whose it is and remove it there, or roll the job back and "
                    "move the disk elsewhere with --pool-map",
                )
            previous = {**previous, "created": True, "offset": 0}  # ours, nothing in it yet
        offset = int(previous.get("offset", 0)) if existing is not None else 0
        size = domains.physical_size(self.src, self.read_path(copy))
        if existing is not None and offset == 0:
            # Ours, with nothing to keep (a copy to do again after a checksum mismatch):
            # start from an empty file, as a sparse copy skips the source's holes.
            domains.delete_volume(self.dst, copy.destination_path)
            existing = None
        target_path = copy.destination_path
        if existing is None:
            # The exact file and the job's token go into the journal before the file exists:
            # killed before `created` is journalled, the next run still knows the file.
            self.journal.intend(
                step, {"offset": 0}, host=self.request.destination,
                path=copy.destination_path, capacity=size,
            )  # fmt: skip
            failpoint(f"{point}.after-intent")
            target_path = domains.create_file_volume(
                self.dst,
                copy.destination_pool,
                posixpath.basename(copy.destination_path),
                size,
            )
            failpoint(f"{point}.after-create")
        intent = self.journal.detail(step).get(INTENT)
        detail: Detail = {"created": True, "offset": offset, INTENT: intent}
        self.journal.record(step, "started", detail)
        last = [offset]

        def progress(position: int) -> None:
            self.emit(CopyProgress(copy.source_path, position, size))
            if position > offset:
                failpoint(f"{point}.mid-copy")
            if position - last[0] >= CHECKPOINT_BYTES:
                last[0] = position
                self.journal.record(step, "started", {**detail, "offset": position})

        # Stop short of a full pool: an upload that hits ENOSPC crashed libvirtd 11.3.
        room = domains.pool_available(self.dst, copy.destination_pool)
        result = copy_between(  # a helper process: see copy_worker.py for why
            self.src,
            self.read_path(copy),
            self.dst,
            target_path,
            offset=offset,
            progress=progress,
            budget=max(0, room - SPACE_MARGIN_BYTES - room // 200),
        )
        domains.refresh_pool(self.dst, copy.destination_pool)
        return {
            "created": True,
            "offset": result.end_offset,
            "data_bytes": result.data_bytes,
            "hole_bytes": result.hole_bytes,
            "seconds": round(result.seconds, 3),
            "source_sha256": result.sha256,  # read as it passed; None after a resume
            INTENT: intent,
        }

    def _made_before_crash(self, step: str, detail: Detail, conn: Connection, path: str) -> bool:
        """The file at `path` is the one this job journalled (with its token) it was about to
        make, found exactly as made and still empty: made just before a crash, so ours."""
        intent = self.journal.intended(step, detail)
        if intent is None or intent.get("path") != path:
            return False
        return made_as_intended(intent, domains.volume_sizes_at(conn, path))

    def verify(self, copy: VolumeCopy, _previous: Detail) -> Detail:
        source = self.journal.detail(f"copy {copy.destination_path}").get(
            "source_sha256"
        ) or digest_at(self.src, self.read_path(copy), host=self.request.source)
        target = domains.volume_at(self.dst, copy.destination_path)
        if target is None:
            raise ColdMoveError(
                f"{copy.destination_path} vanished from the destination", vm=self.plan.vm
            )
        copied = volume_digest(self.dst, target)
        if source != copied:
            mismatch = (
                f"checksum mismatch for {copy.destination_path}: source "
                f"{source[:16]}, destination {copied[:16]}"
            )
            copy_again(self.journal, copy.destination_path, mismatch)
            raise ColdMoveError(
                mismatch,
                vm=self.plan.vm,
                fix=f"`vmigrate jobs resume {self.journal.job_id}` copies it again from its "
                f"start; `vmigrate jobs rollback {self.journal.job_id}` undoes the move",
            )
        return {"sha256": source}

    def _save(self, domain: Domain, previous: Detail, stopped_at: float) -> Detail:
        """Save the guest's memory into the planned pool; journalled before the file exists."""
        state = self.plan.state_file
        if state is None:
            raise ColdMoveError(
                "this job was planned without a place for the state file",
                vm=self.plan.vm,
                fix=f"roll it back (vmigrate jobs rollback {self.journal.job_id}) and move again",
            )
        if previous.get("save_path"):  # an earlier try failed half-way: its file goes first
            self._delete_saved(str(previous["save_path"]))
        detail: Detail = {"how": "saving", "save_path": state.source_path, "at": stopped_at}
        self.journal.record("stop", "started", detail)
        failpoint("cold.stop.after-intent")
        domains.save_state(domain, state.source_path)
        domains.refresh_pool(self.src, state.source_pool)  # the file becomes a volume
        return {**detail, "how": "saved"}

    def _saved_file(self, detail: Detail) -> bool:
        """The state file the stop step made (or was making) is on the source."""
        path = detail.get("save_path")
        if not path:
            return False
        if self.plan.state_file is not None:
            domains.refresh_pool(self.src, self.plan.state_file.source_pool)
        return domains.volume_at(self.src, str(path)) is not None

    def _delete_saved(self, path: str) -> bool:
        """Remove the state file from the source (and so from a shared pool)."""
        state = self.plan.state_file
        if state is not None:
            domains.refresh_pool(self.src, state.source_pool)
        removed = domains.delete_volume(self.src, path)
        if state is not None and state.shared:
            with contextlib.suppress(Exception):  # the destination's listing catches up later
                domains.refresh_pool(self.dst, state.destination_pool)
        return removed

    def saved(self) -> bool:
        return self.journal.detail("stop").get("how") == "saved"

    def _source_still_stopped(self) -> None:
        stop = self.journal.detail("stop")
        saved = self.saved()
        self.invariants.source_as_stopped(
            stopped_at=stop.get("at"),
            saved=saved,
            state_file=saved and self._saved_file(stop),
        )

    def define(self, previous: Detail) -> Detail:
        existing = look_by_uuid(self.dst, self.uuid, host=self.request.destination)
        ours = existing is not None and self._defined_by_us(previous)
        if (existing is not None or find_domain(self.dst, self.plan.vm) is not None) and not (
            ours and existing is not None and not existing.active
        ):
            raise InvariantViolated(
                f"a VM named {self.plan.vm!r} (or with its UUID {self.uuid}) already exists "
                f"on {self.request.destination}, not defined by this job",
                vm=self.plan.vm,
                host=self.request.destination,
                fix=f"find out what it is; roll this job back (vmigrate jobs rollback "
                f"{self.journal.job_id}) to keep the VM on {self.request.source}",
            )
        xml, secrets = self._with_secrets(self.plan.destination_xml)
        self._source_still_stopped()
        self.invariants.runs_nowhere_else()
        # Recorded first, and the domain carries the job's token: a run interrupted after the
        # define knows the domain is this job's (and a stranger's with the UUID is not).
        self.journal.record("define", "started", {"defining": True, "marker": True})
        failpoint("cold.define.after-intent")
        domains.define(self.dst, self._marked(xml), host=self.request.destination)
        return {"defined": True, "marker": True, "secrets": secrets}

    def _marked(self, xml: str) -> str:
        return domains.with_job_marker(xml, self.journal.job_id, self.journal.token)

    def _tag(self) -> str:
        """A short part of the job's token for the names of temporary files and helpers: a
        job id alone repeats across stores."""
        return self.journal.token[:12]

    def _defined_by_us(self, detail: Detail) -> bool:
        """The destination's domain with the VM's UUID is the one this job defined: it
        carries the job's marker; or (a job journalled before markers, or past the step
        that removes the marker) the define was journalled done and it carries no other
        job's marker."""
        domain = self._ours_on_destination()
        if domain is None:
            return False
        marker = domains.job_marker(domain)
        if marker is not None:
            return marker == self.journal.token
        return bool(detail.get("defined"))

    def _with_secrets(self, planned_xml: str) -> tuple[str, str]:
        """The planned XML with the source's console passwords and current <metadata>
        (domxml/secrets.py), and a note of what was grafted (names only, for the journal).
        The XML returned goes to libvirt only: never into the journal, a log or an event."""
        current = domains.secure_definition(self.src, self.uuid, host=self.request.source)
        if current is None:  # a transient VM is gone once stopped: its passwords with it
            return planned_xml, "the source's definition is gone: defined as planned"
        grafted = graft_secrets(planned_xml, current)
        return grafted.xml, ", ".join(grafted.grafted) or "nothing to graft"

    def start(self, previous: Detail) -> Detail:
        if self.saved():
            if self.plan.state_file is None:
                raise ColdMoveError(
                    "this job was planned without a place for the state file",
                    vm=self.plan.vm,
                    fix=f"roll it back: vmigrate jobs rollback {self.journal.job_id}",
                )
            path = self.plan.state_file.destination_path
            if self._started_by_earlier_try(previous):
                return {"started": "restored", "from": path}
            xml, secrets = (
                self._with_secrets(self.plan.restore_xml) if self.plan.restore_xml else (None, "")
            )
            self._before_start()
            domains.restore_state(self.dst, path, self._marked(xml) if xml else None)
            return {"started": "restored", "from": path, "secrets": secrets}
        if not self.plan.start_after:
            return {"started": False}
        if self._started_by_earlier_try(previous):
            return {"started": True}
        self._before_start()
        domains.start(
            lookup_domain(self.dst, self.plan.vm, host=self.request.destination),
            host=self.request.destination,
        )
        return {"started": True}

    def _started_by_us(self, detail: Detail) -> bool:
        """The destination's domain runs because this job started it (or was starting it
        when interrupted, and the domain is the one this job defined)."""
        return bool(detail.get("started")) or (
            bool(detail.get("starting")) and self._defined_by_us(self.journal.detail("define"))
        )

    def _started_by_earlier_try(self, previous: Detail) -> bool:
        """An interrupted earlier try of this step started the VM on the destination."""
        if not previous.get("starting"):
            return False
        seen = look_by_uuid(self.dst, self.uuid, host=self.request.destination)
        return seen is not None and seen.active

    def _before_start(self) -> None:
        self.pool_changes.release_images()  # no helper holds the VM's new images any more
        self._source_still_stopped()
        self.invariants.runs_nowhere_else()
        self._watch_destination()  # registered before the start: no stop goes unseen
        # Recorded first: a run interrupted after the start knows it was this job's.
        self.journal.record("start", "started", {"starting": True})
        failpoint("cold.start.after-intent")

    def _watch_destination(self) -> LifecycleWatch:
        """The destination's lifecycle events of the VM, from before it starts there."""
        if self._watch is None:
            self._watch = LifecycleWatch(self.dst, self.uuid)
        return self._watch

    def verify_running(self, _previous: Detail) -> Detail:
        """The guest runs on the destination, as its libvirt and QEMU say: the domain
        running with no stop or pause among its events, QEMU answering for every disk with
        none in error, its vCPUs executing guest code (VERIFY_RUNNING_S at most). A stop, a
        pause or a disk error on the way fails it at once; right before the source is
        undefined, the destination is asked again (invariants.destination_has_it)."""
        if not self.journal.detail("start").get("started"):
            return {"running": False}
        domain = find_domain_by_uuid(self.dst, self.uuid, host=self.request.destination)
        disks = tuple(
            d.target
            for d in parse_domain(self.plan.destination_xml).disks
            if d.device == "disk" and not d.is_empty
        )
        try:
            if domain is None:
                raise StoppedRunning("it is not there any more")
            seen = watch_it_run(domain, self._watch_destination(), disks, at_most=VERIFY_RUNNING_S)
        except StoppedRunning as err:
            raise ColdMoveError(
                f"the VM stopped right after starting on the destination: {err.message}",
                vm=self.plan.vm,
                host=self.request.destination,
                fix="see its log on the destination; roll the job back to restart it on the source",
            ) from err
        return {
            "running": True,
            "at": time.time(),
            "watched_s": seen.seconds,
            "disks_read": seen.disks_read,
            "vcpu_ms": seen.vcpu_ms,
            "why": seen.why,
        }

    def undefine_source(self, _previous: Detail) -> Detail:
        self.invariants.destination_has_it(
            self.request.destination,
            running=bool(self.journal.detail("start").get("started")),
        )
        domain = find_domain(self.src, self.plan.vm)
        if domain is not None and domains.uuid_of(domain) != self.uuid:
            return {"undefined": False, "other_domain": domains.uuid_of(domain)}
        if domain is not None and domains.is_persistent(domain, host=self.request.source):
            domains.undefine(domain, UNDEFINE_KEEP_NVRAM)
            return {"undefined": True}
        return {"undefined": False}

    def cleanup_state(self, _previous: Detail) -> Detail:
        """Our state file goes from both hosts; the journal says what this job made."""
        removed = []
        saved = self.journal.detail("stop").get("save_path")
        if saved and self._delete_saved(str(saved)):
            removed.append(str(saved))
        state = self.plan.state_file
        if state is not None:
            copied = self.journal.detail(f"copy {state.destination_path}")
            if copied.get("created") and domains.delete_volume(self.dst, state.destination_path):
                removed.append(state.destination_path)
        return {"removed": removed}

    def delete_source_disks(self, _previous: Detail) -> Detail:
        """The source's own disks go, once the journal shows each one copied and verified
        and the source undefined, and while no VM on the source names it."""
        tops = {d.path for d in parse_domain(self.plan.source_xml).disks}
        self._journal_shows(
            "undefine source",
            *(f"verify {c.destination_path}" for c in self.plan.copies if c.source_path in tops),
            *(verify_step(change) for change in self.plan.pool_changes),
        )
        source = (self.request.source, self.src)
        removed = []
        for copy in self.plan.copies:
            # Only the VM's own top images: backing files may serve other VMs.
            if copy.source_path not in tops:
                continue
            self._refuse_in_use(copy.source_path, source)
            if domains.delete_volume(self.src, copy.source_path):
                removed.append(copy.source_path)
                failpoint("cold.delete-source-disks.after-first")
        for change in self.plan.pool_changes:
            self._refuse_in_use(change.source, source)
            deleted = self.pool_changes.delete_original(change)
            if deleted is not None:
                removed.append(deleted)
                failpoint("cold.delete-source-disks.after-first")
        return {"removed": removed}

    def unmark(self, _previous: Detail) -> Detail:
        """The job is done with the VM: its marker goes from the destination's domain."""
        domain = self._ours_on_destination()
        if domain is not None and domains.job_marker(domain) == self.journal.token:
            domains.remove_job_marker(domain)
            return {"unmarked": True}
        return {"unmarked": False}

    def _journal_shows(self, *steps: str) -> None:
        missing = [step for step in steps if not self.journal.done(step)]
        if missing:
            raise InvariantViolated(
                f"the journal does not show {', '.join(missing)} done: "
                "not deleting the source's disks",
                vm=self.plan.vm,
                host=self.request.source,
                fix=f"`vmigrate jobs resume {self.journal.job_id}` to finish those steps first",
            )

    def forward(self) -> None:
        try:
            self._forward()
        finally:  # the teardowns left running beside define and start, and the watch
            self.pool_changes.finish()
            if self._watch is not None:
                self._watch.close()
                self._watch = None

    def _forward(self) -> None:
        j = self.journal
        for change in self.plan.pool_changes:  # while the VM runs: a taken name stops us here
            j.run(reserve_step(change), partial(self.pool_changes.reserve, change), "cold.reserve")
        j.run("stop", self.stop, "cold.stop")
        for copy in self.plan.copies:
            if copy.flatten:
                j.run(f"flatten {copy.source_path}", partial(self.flatten, copy))
            j.run(f"copy {copy.destination_path}", partial(self.copy, copy), "cold.copy")
        for copy in self.plan.copies:
            j.run(f"verify {copy.destination_path}", partial(self.verify, copy), "cold.verify")
        for copy in self.plan.copies:
            if copy.flatten:
                j.run(f"remove flattened {copy.source_path}", partial(self.remove_flat, copy))
        self.pool_changes.forward(self.plan.pool_changes)  # every disk at once, journalled each
        state = self.plan.state_file
        if state is not None and not state.shared and self.saved():
            carrier = state.as_copy()  # like a disk: sparse, resumable, digest-verified
            j.run(
                f"copy {state.destination_path}",
                partial(self.copy, carrier, point="cold.copy-state"),
                "cold.copy-state",
            )
            j.run(
                f"verify {state.destination_path}",
                partial(self.verify, carrier),
                "cold.verify-state",
            )
        j.run("define", self.define, "cold.define")
        j.run("start", self.start, "cold.start")
        j.run("verify running", self.verify_running, "cold.verify-running")
        j.run("undefine source", self.undefine_source, "cold.undefine-source")
        j.run("cleanup state", self.cleanup_state, "cold.cleanup-state")
        if self.request.delete_source_disks:
            j.run("delete source disks", self.delete_source_disks, "cold.delete-source-disks")
        j.run("unmark destination", self.unmark, "cold.unmark")

    # ---- backward --------------------------------------------------------------------
    def runs_on_destination(self) -> bool:
        """Past this point a failure is not undone automatically: the VM already runs there."""
        return self.journal.done("verify running")

    def rollback(self) -> Rollback:
        """Undo the job's steps, latest first.

        Files the destination cannot delete now (it does not answer) are left, listed and
        not marked undone, so a later rollback removes them. Anything about the VM itself
        that cannot be undone on the destination stops the rollback before the source is
        restarted: two running copies of one VM are worse than one stopped VM.
        """
        result = Rollback()
        changes = {reserve_step(c): c for c in self.plan.pool_changes}
        verified = {verify_step(c): c for c in self.plan.pool_changes}
        for record in self.journal.done_in_reverse():
            name, detail = record.name, record.detail
            if name == "delete source disks":
                raise ColdMoveError(
                    "the source's disk files were already deleted: this job cannot be rolled back",
                    vm=self.plan.vm,
                )
            if name == "undefine source" and (
                detail.get("undefined")  # or interrupted before it journalled it:
                or (
                    self.plan.persistent
                    and find_domain_by_uuid(self.src, self.uuid, host=self.request.source) is None
                )
            ):
                domains.define(self.src, self.plan.source_xml, host=self.request.source)
            elif name == "start" and (detail.get("started") or detail.get("starting")):
                domain = self._ours_on_destination()
                if (
                    domain is not None
                    and domains.is_active(domain, host=self.request.destination)
                    and self._started_by_us(detail)
                ):
                    domains.power_off(domain)
            elif name == "define" and (detail.get("defined") or detail.get("defining")):
                domain = self._ours_on_destination()
                if domain is not None and not self._defined_by_us(detail):
                    domain = None  # someone else's with the VM's UUID: never undefined
                # Running, yet not started by this job:
                if domain is not None and domains.is_active(domain, host=self.request.destination):
                    raise InvariantViolated(
                        f"{self.plan.vm} runs on {self.request.destination}, started there "
                        "by someone else after this job defined it: not undefining it, not "
                        f"restarting it on {self.request.source}",
                        vm=self.plan.vm,
                        host=self.request.destination,
                        fix="it stays where it runs; to keep it there, `vmigrate jobs resume "
                        f"{self.journal.job_id}`; to bring it back, shut it down there and "
                        f"`vmigrate jobs rollback {self.journal.job_id}` again",
                    )
                if domain is not None:
                    domains.undefine(domain, UNDEFINE_KEEP_NVRAM)
            elif name.startswith("copy ") and (
                detail.get("created")  # journalled made by this job
                or self._made_before_crash(name, detail, self.dst, name.removeprefix("copy "))
            ):
                path = detail.get("destination_path") or name.removeprefix("copy ")
                try:
                    self._refuse_in_use(path, (self.request.destination, self.dst))
                    domains.delete_volume(self.dst, path)
                except Exception as err:  # it answers no more, or a VM uses it: leave it
                    result.leftovers.append(f"{path} ({err})")
                    continue
            elif name in verified:
                self.pool_changes.undo_verify(verified[name])
            elif name in changes and self.pool_changes.made_by_us(changes[name], detail):
                try:
                    self._refuse_in_use(
                        changes[name].destination,
                        (self.request.destination, self.dst),
                        (self.request.source, self.src),
                    )
                    self.pool_changes.undo(changes[name], detail)
                except Exception as err:  # it answers no more, or a VM uses it: leave it
                    result.leftovers.append(f"{changes[name].destination} ({err})")
                    continue
            elif name.startswith("flatten ") and detail.get("created"):
                with contextlib.suppress(Exception):  # a leftover temp file harms nobody
                    domains.delete_volume(self.src, str(detail.get("temp_path", "")))
            elif name == "stop":
                self._restart_source(detail)
            else:
                continue
            self.journal.record(name, "undone", detail)
            result.undone.append(name)
        return result

    def _ours_on_destination(self) -> Domain | None:
        """The destination's domain with the VM's UUID (the one this job defined), if any."""
        return find_domain_by_uuid(self.dst, self.uuid, host=self.request.destination)

    def _refuse_in_use(self, path: str, *hosts: tuple[str, Connection]) -> None:
        """A file this job made is deleted only while no VM names it (one started by hand)."""
        for host, conn in hosts:
            user = domains.domain_using(conn, path, host=host)
            if user is not None:
                raise InvariantViolated(
                    f"VM {user!r} on {host} uses {path}: not deleting it",
                    vm=self.plan.vm,
                    host=host,
                    fix="find out why; remove it by hand once nothing needs it",
                )

    def _restart_source(self, detail: Detail) -> None:
        """Bring the VM back as it was on the source: a no-op if it runs there already; never
        while another host runs it (two QEMUs on one VM's disks are worse than none)."""
        seen = look_by_uuid(self.src, self.uuid, host=self.request.source)
        if seen is not None and seen.active:  # restarted by someone meanwhile: leave it be
            path = detail.get("save_path")
            if path and self._saved_file(detail):
                with contextlib.suppress(Exception):  # its state is stale now: ours to remove
                    self._delete_saved(str(path))
            return
        path = detail.get("save_path")
        if path and self._saved_file(detail):  # saved, or being saved when the job stopped
            self.invariants.may_restart_source()
            self.invariants.source_as_stopped(
                stopped_at=detail.get("at"), saved=True, state_file=True
            )
            domains.restore_state(self.src, str(path), None)
            with contextlib.suppress(Exception):  # a leftover state file harms nobody
                self._delete_saved(str(path))
        elif self.plan.state in ("running", "paused") and detail.get("how") != "already stopped":
            self.invariants.may_restart_source()
            if seen is None:
                domains.start_transient(self.src, self.plan.source_xml, host=self.request.source)
            else:
                domains.start(
                    lookup_domain(self.src, seen.name, host=self.request.source),
                    host=self.request.source,
                )
