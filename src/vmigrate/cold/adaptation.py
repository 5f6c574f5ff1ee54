"""`cold --adapt`: the definition a cold move defines on its destination, rewritten where the
destination cannot run it (domxml/adapt.py), and put back as it was where an earlier job
kept the original and this destination runs it. Everything here is decided before the job
exists: a move that needs --adapt without it, a part nothing can replace, and --keep-state
across QEMUs whose saved state would not load are refused with nothing changed."""

from __future__ import annotations

import shlex
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from vmigrate.cold.steps import ColdRequest
from vmigrate.domxml.adapt import (
    ADAPTED,
    CPU,
    DEVICE,
    EMULATOR,
    MACHINE,
    Adaptation,
    AdaptChange,
    Destination,
    adapt_domain,
    destination_from_xml,
    restore_original,
)
from vmigrate.domxml.cpu import HostCpuOffer, parse_domain_capabilities
from vmigrate.domxml.domain import parse_domain
from vmigrate.errors import MigrationRefused
from vmigrate.facts import HostFacts
from vmigrate.model import CheckReport, Finding
from vmigrate.store import JobStore, StoreLocation
from vmigrate.versions import format_version
from vmigrate.virt.adapt_caps import destination_capabilities
from vmigrate.virt.connection import Connection
from vmigrate.virt.facts import domain_capabilities


@dataclass(frozen=True)
class KeptOriginal:
    """The definition a VM had before a cold move adapted it, kept in that job's record."""

    job_id: int  # the job that kept it
    original_xml: str
    adapted: tuple[AdaptChange, ...]  # the parts still adapted, each from the original


@dataclass(frozen=True)
class Adapted:
    """What --adapt makes of a cold move's definition (all empty for a plain move)."""

    xml: str
    changes: tuple[AdaptChange, ...]  # restored first, then adapted, in the plan's order
    original_xml: str | None  # kept in this job while a part stays adapted
    original_job: int | None  # the earlier job that kept it first (None: this one)
    still_adapted: tuple[AdaptChange, ...]  # after this move, each part from the original
    note: str  # said in the plan: nothing to change, a restore --adapt would make, ...


def _uuid(xml: str) -> str:
    return (ET.fromstring(xml).findtext("uuid") or "").strip()


def kept_original(records_store: StoreLocation | None, vm: str, uuid: str) -> KeptOriginal | None:
    """The newest completed cold move of this VM that changed its definition says what is
    adapted now; older ones are history."""
    with JobStore(records_store) as store:
        records = store.jobs_of_kind("cold")
    for record in records:  # newest first
        plan = record.params.get("plan") or {}
        if record.vm != vm or record.state != "completed" or not plan.get("adapt_changes"):
            continue
        if _uuid(str(plan.get("source_xml") or "<domain/>")) != uuid:
            continue
        if not plan.get("original_xml") or not plan.get("still_adapted"):
            return None  # that move put everything back
        return KeptOriginal(
            plan.get("original_job") or record.id,
            str(plan["original_xml"]),
            tuple(AdaptChange.from_dict(c) for c in plan["still_adapted"]),
        )
    return None


def _still_adapted(
    kept: KeptOriginal | None, restored: tuple[AdaptChange, ...], adapted: tuple[AdaptChange, ...]
) -> tuple[AdaptChange, ...]:
    """Each part still adapted after this move, from the original to what it is now."""
    parts = {c.part: c for c in (kept.adapted if kept else ())}
    for change in restored:
        parts.pop(change.part, None)
    for change in adapted:
        earlier = parts.get(change.part)
        parts[change.part] = (
            AdaptChange(change.what, earlier.before, change.after, change.why, change.part)
            if earlier
            else change
        )
    return tuple(parts.values())


def _refusal(vm: str, dst: Destination, changes: tuple[AdaptChange, ...]) -> MigrationRefused:
    needed = "; ".join(c.why for c in changes if c.kind == ADAPTED)
    return MigrationRefused(
        f"{dst.name} cannot run {vm} as it is defined: {needed}; nothing was moved",
        vm=vm,
        fix="add --adapt: the plan then rewrites what "
        f"{dst.name} cannot run ({', '.join(f'{c.what} -> {c.after}' for c in changes)}) and "
        "lists each change before anything moves (see them with --adapt --dry-run); the job "
        "keeps the original definition, restored when the VM moves back with --adapt",
    )


def refuse_state_across(
    vm: str, facts: tuple[HostFacts, HostFacts], changes: tuple[AdaptChange, ...]
) -> None:
    """--keep-state resumes the saved device state in the destination's QEMU: refused where it
    would not load, before the VM stops."""
    src, dst = facts
    if dst.hypervisor_version < src.hypervisor_version:
        raise MigrationRefused(
            f"--keep-state: {src.ref.name} runs QEMU {format_version(src.hypervisor_version)} "
            f"and {dst.ref.name} QEMU {format_version(dst.hypervisor_version)}: a state saved "
            "by a newer QEMU does not load into an older one; nothing was changed",
            vm=vm,
            fix="drop --keep-state: the guest shuts down here and boots there",
        )
    if changes:
        raise MigrationRefused(
            "--keep-state: the saved state holds the devices of the definition it ran with, "
            f"and this move changes it ({'; '.join(c.describe() for c in changes)}); it would "
            "not load; nothing was changed",
            vm=vm,
            fix="drop --keep-state: the guest shuts down here and boots there with the new "
            "definition",
        )


def _source_cpu(src: Connection, xml: str) -> HostCpuOffer | None:
    domcaps, _why = domain_capabilities(src, parse_domain(xml))
    return parse_domain_capabilities(domcaps) if domcaps else None


def adapt_definition(
    *,
    vm: str,
    xml: str,
    adapt: bool,
    conns: tuple[Connection, Connection],
    dst_facts: HostFacts,
    store_path: StoreLocation | None,
) -> Adapted:
    """The definition the destination gets, or a refusal (MigrationRefused) that names what
    it cannot run and suggests --adapt."""
    summary = parse_domain(xml)
    name = dst_facts.ref.name
    capabilities, domcaps = destination_capabilities(
        conns[1], host=name, arch=summary.arch, virt_type=summary.virt_type
    )
    destination = destination_from_xml(
        name,
        capabilities,
        domcaps,
        arch=summary.arch,
        virt_type=summary.virt_type,
        qemu=format_version(dst_facts.hypervisor_version),
    )
    source_cpu = _source_cpu(conns[0], xml)
    kept = kept_original(store_path, vm, summary.uuid)
    restore = (
        restore_original(xml, kept.original_xml, kept.adapted, destination, kept.job_id, source_cpu)
        if kept
        else None
    )
    restored = restore.changes if restore is not None and adapt else ()
    adaptation = adapt_domain(
        restore.xml if restore is not None and restored else xml, destination, source_cpu
    )
    if adaptation.blockers:
        raise MigrationRefused(
            f"{name} cannot run {vm}, and --adapt cannot change that: "
            + "; ".join(adaptation.blockers),
            vm=vm,
            fix="move it to a host that offers it, or change the VM's definition yourself "
            f"({shlex.join(['virsh', 'edit', vm])}) and try again",
        )
    if adaptation.changes and not adapt:
        raise _refusal(vm, destination, adaptation.changes)
    changes = (*restored, *adaptation.changes)
    still = _still_adapted(kept, restored, adaptation.changes)
    original = (kept.original_xml if kept else xml) if still else None
    return Adapted(
        xml=adaptation.xml,
        changes=changes,
        original_xml=original,
        original_job=kept.job_id if kept and still else None,
        still_adapted=still,
        note=_note(vm, name, adapt, changes, kept, restore),
    )


def _note(
    vm: str,
    host: str,
    adapt: bool,
    changes: tuple[AdaptChange, ...],
    kept: KeptOriginal | None,
    restore: Adaptation | None,
) -> str:
    skipped = restore.skipped if restore is not None else ()
    restorable = restore.changes if restore is not None else ()
    if not adapt and kept and restorable:
        parts = ", ".join(f"{c.what} {c.after}" for c in restorable)
        return (
            f"{vm} runs as job {kept.job_id} adapted it; {host} runs its original "
            f"definition: add --adapt to restore {parts}"
        )
    if not adapt:
        return ""
    if kept and skipped:
        kept_note = f"kept as job {kept.job_id} adapted it: {'; '.join(skipped)}"
        return kept_note if changes else f"--adapt: nothing to change; {kept_note}"
    if not changes:
        return f"--adapt: {host} runs {vm} as it is; nothing to change"
    return ""


#: Failed checks that --adapt answers with a change of the plan: the machine type (and the
#: emulator it needs), the guest CPU.
#: The parts of the definition whose change answers a failed check (a part, or for devices
#: the prefix every device part starts with), by check id, else by family.
_ANSWERED_BY_PART = {
    "machine.devices": (DEVICE,),
    "machine": (MACHINE, EMULATOR),
    "cpu.compatible": (CPU,),
}


def _parts_answering(finding: Finding) -> tuple[str, ...]:
    return _ANSWERED_BY_PART.get(finding.check) or _ANSWERED_BY_PART.get(finding.family) or ()


def _refused(vm: str, failed: list[Finding], checks: CheckReport, fix: str) -> MigrationRefused:
    return MigrationRefused(
        "pre-flight checks failed, nothing was moved: "
        + "; ".join(f"{f.check}: {f.summary}" for f in failed),
        vm=vm,
        fix=fix,
        report=checks,
    )


def refuse_failed(
    request: ColdRequest, failed: list[Finding], checks: CheckReport
) -> list[Finding]:
    """Refuse a move whose checks failed, unless --adapt answers every failure (then those
    are returned: the plan must show the change that answers each)."""
    if not failed:
        return []
    adaptable = [f for f in failed if _parts_answering(f)]
    if request.adapt and len(adaptable) == len(failed):
        return failed
    fix = failed[0].fix or "run `vmigrate check --mode cold`; --force overrides"
    if adaptable and not request.adapt and len(adaptable) == len(failed):
        fix = (
            f"add --adapt: the plan then rewrites what {request.destination} cannot run "
            "(the machine type becomes its newest of the same family, the CPU one it runs) and "
            "lists each change before anything moves (see them with --adapt --dry-run); the "
            "job keeps the original definition, restored when the VM moves back with --adapt"
        )
    raise _refused(request.vm, failed, checks, fix)


def answered_by(
    finding: Finding, changes: tuple[AdaptChange, ...], vm: str, checks: CheckReport
) -> str:
    """How the plan answers a failed check (a Notice), or the refusal when it does not."""
    parts = _parts_answering(finding)
    answers = [c for c in changes if c.part.startswith(parts)]
    if not answers:
        raise _refused(
            vm,
            [finding],
            checks,
            "--adapt found nothing to change for it: "
            + (finding.fix or "run `vmigrate check --mode cold`"),
        )
    return f"--adapt answers {finding.check} ({finding.summary}): " + "; ".join(
        c.describe() for c in answers
    )
