"""Versions of libvirt and QEMU on both hosts, hypervisor type, architecture, machine type."""

from __future__ import annotations

from vmigrate.checks.context import CheckInput
from vmigrate.model import Finding, Mode, Verdict
from vmigrate.versions import format_version, parse_version

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
    qemu = {
        "source": format_version(src.hypervisor_version),
        "destination": format_version(dst.hypervisor_version),
    }
    if facts.mode is Mode.LIVE and dst.hypervisor_version < src.hypervisor_version:
        findings.append(
            Finding(
                "versions.qemu",
                FAMILY,
                Verdict.FAIL,
                f"QEMU on the destination ({qemu['destination']}) is older than on the source "
                f"({qemu['source']}): a running guest cannot move to an older QEMU",
                qemu,
                fix=f"upgrade QEMU on {dst.ref.name}, or move the VM cold",
            )
        )
    else:
        findings.append(
            Finding(
                "versions.qemu",
                FAMILY,
                Verdict.PASS,
                f"QEMU {qemu['source']} -> {qemu['destination']}",
                qemu,
            )
        )
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


def check_machine(facts: CheckInput) -> list[Finding]:
    domain, dst = facts.domain, facts.destination
    if domain is None or dst is None:
        return [
            Finding(
                "machine.available",
                "machine",
                Verdict.SKIPPED,
                "machine type not checked: the VM or the destination is unknown",
            )
        ]
    summary = domain.summary
    evidence = {
        "machine": summary.machine,
        "emulator": summary.emulator,
        "arch": summary.arch,
        "type": summary.virt_type,
    }
    if facts.destination_domcaps is None:
        return [
            Finding(
                "machine.available",
                "machine",
                Verdict.FAIL,
                f"{dst.ref.name} cannot run machine type {summary.machine} with "
                f"{summary.emulator}: {facts.destination_domcaps_error}",
                evidence,
                fix=f"install the same QEMU emulator on {dst.ref.name}, or change the VM's machine "
                "type to one the destination offers (virsh domcapabilities)",
            )
        ]
    return [
        Finding(
            "machine.available",
            "machine",
            Verdict.PASS,
            f"{dst.ref.name} offers machine {summary.machine} ({summary.virt_type}, "
            f"{summary.emulator})",
            evidence,
        )
    ]
