"""Versions of libvirt and QEMU on both hosts: hypervisor type and architecture, the
direction of the move, the migration features both sides must share, and the known
incompatibilities between versions (data in known_incompatibilities.py).

Whether the destination can run the VM is read from its capabilities (checks/machine.py),
never decided here from version numbers alone: an older destination is a warning.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from vmigrate.checks.context import CheckInput
from vmigrate.checks.machine import check_machine
from vmigrate.facts import DomainFacts, HostFacts
from vmigrate.known_incompatibilities import GUEST_SMT, GUEST_TCG, KNOWN, KnownIncompatibility
from vmigrate.migration_features import BY_NAME, FeatureUse, lacking
from vmigrate.model import Finding, Mode, Verdict
from vmigrate.versions import format_version, parse_version

__all__ = [
    "check_known_incompatibilities",
    "check_machine",
    "check_migration_features",
    "check_versions",
]

MIN_LIBVIRT = parse_version("4.0.0")  # the project's floor (the seed's requirement)
POSTCOPY_RECOVERY_LIBVIRT = parse_version("8.5.0")
#: libvirt 11.2.0-11.3.x crash the destination's daemon when resuming a failed post-copy
#: migration (a NULL fd in qemuMigrationDstPrepareResume; fixed in 11.4.0, docs/lab.md).
POSTCOPY_RESUME_CRASH = (parse_version("11.2.0"), parse_version("11.4.0"))
FAMILY = "versions"


def check_versions(facts: CheckInput) -> list[Finding]:
    src, dst = facts.source, facts.destination
    if src is None or dst is None:
        return [
            Finding(
                "versions.libvirt",
                FAMILY,
                Verdict.SKIPPED,
                "versions not compared: a host did not answer",
            )
        ]
    findings = []
    versions = {
        "source": format_version(src.libvirt_version),
        "destination": format_version(dst.libvirt_version),
    }
    old = [h for h in (src, dst) if h.libvirt_version < MIN_LIBVIRT]
    if old:
        findings.append(
            Finding(
                "versions.libvirt",
                FAMILY,
                Verdict.FAIL,
                f"libvirt {format_version(old[0].libvirt_version)} on {old[0].ref.name} is older "
                "than 4.0",
                versions,
                fix=f"upgrade libvirt on {old[0].ref.name} to 4.0 or newer",
            )
        )
    elif min(src.libvirt_version, dst.libvirt_version) < POSTCOPY_RECOVERY_LIBVIRT:
        findings.append(
            Finding(
                "versions.libvirt",
                FAMILY,
                Verdict.WARN,
                "libvirt older than 8.5 on one host: a broken post-copy migration cannot be "
                "recovered",
                versions,
                fix="upgrade libvirt to 8.5+ on both hosts before relying on post-copy",
            )
        )
    else:
        findings.append(
            Finding(
                "versions.libvirt",
                FAMILY,
                Verdict.PASS,
                f"libvirt {versions['source']} -> {versions['destination']}",
                versions,
            )
        )
    low, high = POSTCOPY_RESUME_CRASH
    if facts.mode is Mode.LIVE and low <= dst.libvirt_version < high:
        findings.append(
            Finding(
                "versions.postcopy-resume",
                FAMILY,
                Verdict.WARN,
                f"libvirt {versions['destination']} on {dst.ref.name} crashes when it resumes "
                "a post-copy migration that QEMU itself paused (fixed in 11.4); vmigrate waits "
                "out link breaks without that call, but a break longer than TCP's retries "
                "(about 15 min) would need it",
                versions,
                fix=f"upgrade libvirt on {dst.ref.name} to 11.4+, or use --policy safe (no "
                "post-copy) where the link may break for long",
            )
        )
    findings.append(_direction(facts, src, dst))
    same = src.hypervisor_type == dst.hypervisor_type and src.arch == dst.arch
    evidence = {
        "source": f"{src.hypervisor_type}/{src.arch}",
        "destination": f"{dst.hypervisor_type}/{dst.arch}",
    }
    findings.append(
        Finding(
            "versions.hypervisor",
            FAMILY,
            Verdict.PASS if same else Verdict.FAIL,
            f"{evidence['source']} on both hosts"
            if same
            else f"hypervisor/architecture differ: {evidence['source']} vs "
            f"{evidence['destination']}",
            evidence,
            fix="" if same else "pick a destination with the same hypervisor and architecture",
        )
    )
    return findings


def _direction(facts: CheckInput, src: HostFacts, dst: HostFacts) -> Finding:
    """`versions.qemu`: older to newer is what QEMU promises; newer to older is best effort,
    possible for a machine type both QEMUs know (machine.available says whether it is)."""
    qemu = {
        "source": format_version(src.hypervisor_version),
        "destination": format_version(dst.hypervisor_version),
    }
    # Only a release apart counts: stable updates (10.0.2 -> 10.0.1) keep the machine types.
    if facts.mode is Mode.LIVE and dst.hypervisor_version // 1000 < src.hypervisor_version // 1000:
        return Finding(
            "versions.qemu",
            FAMILY,
            Verdict.WARN,
            f"newer to older: QEMU {qemu['destination']} on {dst.ref.name} is older than "
            f"{qemu['source']} on {src.ref.name}; QEMU supports a backward live migration only "
            "on a best-effort basis, for a machine type both know (see machine.available)",
            qemu,
            fix=f"prefer a destination with QEMU {qemu['source']} or newer; or move the VM cold",
        )
    return Finding(
        "versions.qemu",
        FAMILY,
        Verdict.PASS,
        f"QEMU {qemu['source']} -> {qemu['destination']}",
        qemu,
    )


def _sides(facts: CheckInput) -> tuple[tuple[int, int], tuple[int, int]] | None:
    src, dst = facts.source, facts.destination
    if src is None or dst is None:
        return None
    return (src.hypervisor_version, src.libvirt_version), (
        dst.hypervisor_version,
        dst.libvirt_version,
    )


def _side_evidence(sides: tuple[tuple[int, int], tuple[int, int]]) -> dict[str, str]:
    return {
        side: f"QEMU {format_version(qemu)}, libvirt {format_version(libvirt)}"
        for side, (qemu, libvirt) in zip(("source", "destination"), sides, strict=True)
    }


def check_migration_features(facts: CheckInput) -> list[Finding]:
    """`versions.migration-features`: each feature the live move would use is one both QEMUs
    (and libvirts) offer (migration_features.py). One the user asked for (--parallel,
    --compress, TLS) that a side lacks is a failure; one the policy might use (post-copy,
    auto-converge) is a restriction the move honours (a warning). Nothing when both sides
    have them all: `check` stays short."""
    sides = _sides(facts)
    if facts.mode is not Mode.LIVE or sides is None:
        return []
    use = facts.features or FeatureUse()
    names = {"source": facts.source_name, "destination": facts.destination_name}
    missing = lacking(use, *sides)
    evidence = {
        "required": list(use.required),
        "optional": list(use.optional),
        "lacking": {feature: [names[side] for side in on] for feature, on in missing.items()},
        **_side_evidence(sides),
    }
    findings = []
    for feature, on in missing.items():
        hosts = " and ".join(names[side] for side in on)
        what = BY_NAME[feature].what
        if feature in use.required:
            option = (use.why or {}).get(feature, feature)
            findings.append(
                Finding(
                    "versions.migration-features",
                    FAMILY,
                    Verdict.FAIL,
                    f"{option} needs {feature} ({what}), which the QEMU or libvirt of {hosts} "
                    "lacks",
                    evidence,
                    fix=f"move it without {option}, or upgrade QEMU/libvirt on {hosts}",
                    subject=feature,
                )
            )
        else:
            findings.append(
                Finding(
                    "versions.migration-features",
                    FAMILY,
                    Verdict.WARN,
                    f"{hosts} lacks {feature}: this move will not use {what}",
                    evidence,
                    subject=feature,
                )
            )
    return findings


def _guest_has(condition: str | None, domain: DomainFacts | None) -> bool:
    if condition is None:
        return True
    if domain is None:
        return False
    if condition == GUEST_TCG:
        return domain.summary.virt_type == "qemu"
    if condition == GUEST_SMT:
        topology = ET.fromstring(domain.live_xml).find("cpu/topology")
        threads = topology.get("threads", "1") if topology is not None else "1"
        return threads.isdigit() and int(threads) > 1
    return False


def _incompatibility(facts: CheckInput, known: KnownIncompatibility) -> Finding:
    sides = _sides(facts)
    assert sides is not None
    evidence: dict[str, object] = {
        **_side_evidence(sides),
        "references": list(known.references),
    }
    if known.guest:
        evidence["guest"] = known.guest
    if known.feature:
        evidence["feature"] = known.feature
    return Finding(
        "versions.known-incompatibility",
        FAMILY,
        known.verdict,
        known.problem,
        evidence,
        fix=known.fix.format(source=facts.source_name, destination=facts.destination_name),
        subject=known.key,
    )


def check_known_incompatibilities(facts: CheckInput) -> list[Finding]:
    """`versions.known-incompatibility`: the entries of known_incompatibilities.py that this
    live move matches (versions, the features it uses, the guest); nothing when none does."""
    sides = _sides(facts)
    if facts.mode is not Mode.LIVE or sides is None:
        return []
    use = facts.features or FeatureUse()
    features = {*use.required, *use.optional}
    return [
        _incompatibility(facts, known)
        for known in KNOWN
        if known.applies(*sides, features) and _guest_has(known.guest, facts.domain)
    ]
