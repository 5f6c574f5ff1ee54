"""Per disk: shared or local, what a copy needs, and read-only media present on the destination."""

from __future__ import annotations

from vmigrate.checks.context import CheckInput, DiskStorage
from vmigrate.checks.network_disks import network_disk_findings
from vmigrate.domxml.domain import DiskInfo
from vmigrate.model import Finding, Mode, Verdict

FAMILY = "storage"
GIB = 1 << 30


def _size(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / (1 << 20):.1f} MiB"


def _evidence(disk: DiskInfo, where: DiskStorage | None) -> dict[str, object]:
    evidence: dict[str, object] = {
        "target": disk.target,
        "device": disk.device,
        "source": disk.path or disk.protocol or disk.volume,
        "format": disk.format,
        "backing_chain": list(disk.backing_chain),
    }
    if where is not None and where.source_location is not None:
        evidence["pool"] = where.source_location.pool
        evidence["allocation"] = where.source_location.allocation
        evidence["capacity"] = where.source_location.capacity
    if where is not None and where.share_probe is not None:
        evidence["probe"] = where.share_probe.detail
    return evidence


def _media(disk: DiskInfo, where: DiskStorage | None, dst: str) -> Finding:
    evidence = _evidence(disk, where)
    if disk.is_empty:
        return Finding(
            "storage.media",
            FAMILY,
            Verdict.PASS,
            f"{disk.target}: empty {disk.device}",
            evidence,
            subject=disk.target,
        )
    shared = where is not None and where.share_probe is not None and where.share_probe.shared
    if disk.source_type == "network" or shared or (where and where.exists_on_destination):
        return Finding(
            "storage.media",
            FAMILY,
            Verdict.PASS,
            f"{disk.target}: read-only {disk.path or disk.protocol} exists on {dst}",
            evidence,
            subject=disk.target,
        )
    return Finding(
        "storage.media",
        FAMILY,
        Verdict.FAIL,
        f"{disk.target}: read-only {disk.device} {disk.path} is missing on {dst}",
        evidence,
        fix=f"copy {disk.path} to the same path on {dst} (in a storage "
        f"pool), or eject it: virsh change-media VM {disk.target} --eject",
        subject=disk.target,
    )


def _space(
    disk: DiskInfo, where: DiskStorage, dst: str, evidence: dict[str, object], why: str
) -> Finding:
    need = where.source_location.allocation if where.source_location else 0
    if where.destination_pool_for_copy is None:
        folder = where.source_location.pool_path if where.source_location else None
        return Finding(
            "storage.space",
            FAMILY,
            Verdict.FAIL,
            f"{disk.target}: {why}, but {dst} has no storage pool for {folder}",
            evidence,
            fix=f"define and start a pool on {dst} with target {folder}",
            subject=disk.target,
        )
    have = where.destination_available or 0
    evidence = {
        **evidence,
        "destination_pool": where.destination_pool_for_copy,
        "needed": need,
        "available": have,
    }
    if have < need:
        return Finding(
            "storage.space",
            FAMILY,
            Verdict.FAIL,
            f"{disk.target}: {why}: needs {_size(need)} in pool "
            f"{where.destination_pool_for_copy!r} on {dst}, which has {_size(have)}",
            evidence,
            fix=f"free {_size(need - have)} in that pool, or pick another destination",
            subject=disk.target,
        )
    return Finding(
        "storage.space",
        FAMILY,
        Verdict.PASS,
        f"{disk.target}: {_size(need)} to copy fits in pool "
        f"{where.destination_pool_for_copy!r} on {dst} ({_size(have)} free)",
        evidence,
        subject=disk.target,
    )


def _disk(disk: DiskInfo, where: DiskStorage | None, facts: CheckInput) -> list[Finding]:
    dst = facts.destination_name
    if disk.readonly or disk.device in ("cdrom", "floppy"):
        return [_media(disk, where, dst)]
    evidence = _evidence(disk, where)
    chain = f" (backing chain: {' <- '.join(disk.backing_chain)})" if disk.backing_chain else ""
    if disk.source_type == "network":
        return network_disk_findings(disk, facts) or [
            Finding(
                "storage.shared",
                FAMILY,
                Verdict.PASS,
                f"{disk.target}: network storage ({disk.protocol}), reachable from both hosts",
                {**evidence, "placement": "network"},
                subject=disk.target,
            )
        ]
    if where is not None and where.share_probe is not None and where.share_probe.shared:
        return [
            Finding(
                "storage.shared",
                FAMILY,
                Verdict.PASS,
                f"{disk.target}: shared — {where.share_probe.detail}{chain}",
                {**evidence, "placement": "shared"},
                subject=disk.target,
            )
        ]
    if where is None or where.source_location is None:
        verdict = Verdict.WARN if disk.source_type == "block" else Verdict.FAIL
        return [
            Finding(
                "storage.shared",
                FAMILY,
                verdict,
                f"{disk.target}: {disk.path} is in no libvirt storage pool on "
                f"{facts.source_name}, so it cannot be proven shared or copied",
                evidence,
                fix=f"define a pool on {facts.source_name} for its directory "
                "(virsh pool-define-as NAME dir --target DIR)",
                subject=disk.target,
            )
        ]
    evidence = {**evidence, "placement": "local"}
    local = (
        f"{disk.target}: local to {facts.source_name}{chain} — {where.share_probe.detail}"
        if where.share_probe
        else f"{disk.target}: local to {facts.source_name}{chain}"
    )
    if facts.mode is Mode.LIVE and not facts.copy_storage:
        return [
            Finding(
                "storage.shared",
                FAMILY,
                Verdict.FAIL,
                local,
                evidence,
                fix="add --copy-storage to copy it during the live migration, or move the VM cold",
                subject=disk.target,
            )
        ]
    findings = [
        Finding(
            "storage.shared",
            FAMILY,
            Verdict.PASS,
            f"{local}; it will be copied",
            evidence,
            subject=disk.target,
        )
    ]
    findings.append(_space(disk, where, dst, evidence, "it will be copied"))
    return findings


def check_storage(facts: CheckInput) -> list[Finding]:
    if facts.domain is None or facts.destination is None:
        return [
            Finding(
                "storage.shared",
                FAMILY,
                Verdict.SKIPPED,
                "storage not checked: the VM or the destination is unknown",
            )
        ]
    by_target = {d.target: d for d in facts.disks}
    findings: list[Finding] = []
    for disk in facts.domain.summary.disks:
        findings += _disk(disk, by_target.get(disk.target), facts)
    if not findings:
        findings.append(Finding("storage.shared", FAMILY, Verdict.PASS, "the VM has no disks"))
    return findings
