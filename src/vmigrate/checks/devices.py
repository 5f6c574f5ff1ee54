"""Devices and domain state that libvirt refuses to live-migrate."""

from __future__ import annotations

import shlex

from vmigrate.checks.context import CheckInput
from vmigrate.model import Finding, Mode, Verdict

FAMILY = "devices"
_SAFE_CACHE = {None, "none", "directsync"}


def check_devices(facts: CheckInput) -> list[Finding]:
    domain = facts.domain
    if domain is None:
        return [
            Finding(
                "devices.passthrough",
                FAMILY,
                Verdict.SKIPPED,
                "devices not checked: the VM is unknown",
            )
        ]
    live = facts.mode is Mode.LIVE
    findings = []
    for device in domain.summary.host_devices:
        findings.append(
            Finding(
                "devices.passthrough",
                FAMILY,
                Verdict.FAIL if live else Verdict.WARN,
                f"{device.description}: "
                + (
                    "a passed-through device cannot move live"
                    if live
                    else "the same device must exist on the destination"
                ),
                {"kind": device.kind},
                subject=device.kind,
                fix="detach it (virsh detach-device) before a live move, or move the VM cold and "
                "re-attach the destination's device",
            )
        )
    if live:
        for disk in domain.summary.disks:
            if disk.readonly or disk.cache in _SAFE_CACHE or disk.source_type == "network":
                continue
            findings.append(
                Finding(
                    "devices.disk-cache",
                    FAMILY,
                    Verdict.WARN,
                    f"{disk.target}: cache='{disk.cache}' — on shared storage libvirt refuses live "
                    "migration unless QEMU can drop its page cache",
                    {"cache": disk.cache},
                    fix=f"use cache='none' for {disk.target}",
                    subject=disk.target,
                )
            )
        if domain.snapshots:
            findings.append(
                Finding(
                    "devices.snapshots",
                    FAMILY,
                    Verdict.WARN,
                    f"the VM has {domain.snapshots} snapshot(s) whose metadata stays on the source",
                    {"snapshots": domain.snapshots},
                    fix="delete or re-create them on the destination (virsh snapshot-list)",
                )
            )
        if domain.block_jobs:
            findings.append(
                Finding(
                    "devices.block-jobs",
                    FAMILY,
                    Verdict.FAIL,
                    f"block job running on {', '.join(domain.block_jobs)}",
                    {"disks": list(domain.block_jobs)},
                    fix="wait for it to finish or abort it (virsh blockjob VM DISK --abort)",
                )
            )
        if domain.migratable_error:
            findings.append(
                Finding(
                    "devices.migratable",
                    FAMILY,
                    Verdict.FAIL,
                    f"libvirt cannot produce a migratable definition: {domain.migratable_error}",
                    fix="remove the device libvirt names, then check again",
                )
            )
    if not findings:
        findings.append(
            Finding("devices.passthrough", FAMILY, Verdict.PASS, "no device blocks the move")
        )
    return findings


def check_networks(facts: CheckInput) -> list[Finding]:
    domain, dst = facts.domain, facts.destination
    if domain is None or dst is None:
        return [
            Finding(
                "networks.present",
                "networks",
                Verdict.SKIPPED,
                "networks not checked: the VM or the destination is unknown",
            )
        ]
    networks = {n.name: n for n in dst.networks}
    bridges = {n.bridge for n in dst.networks if n.bridge} | set(dst.host_interfaces or ())
    findings = []
    for nic in domain.summary.interfaces:
        subject = nic.mac or nic.source or nic.kind
        evidence = {"type": nic.kind, "source": nic.source, "portgroup": nic.portgroup}
        if nic.kind == "network":
            network = networks.get(nic.source or "")
            if network is None:
                findings.append(
                    Finding(
                        "networks.present",
                        "networks",
                        Verdict.FAIL,
                        f"network {nic.source!r} does not exist on {dst.ref.name}",
                        evidence,
                        fix=f"define and start network {nic.source!r} on {dst.ref.name}, or map it "
                        "to another network",
                        subject=subject,
                    )
                )
            elif not network.active:
                findings.append(
                    Finding(
                        "networks.present",
                        "networks",
                        Verdict.FAIL,
                        f"network {nic.source!r} exists on {dst.ref.name} but is not active",
                        evidence,
                        fix=shlex.join(["virsh", "-c", dst.ref.uri, "net-start", network.name]),
                        subject=subject,
                    )
                )
            elif nic.portgroup and nic.portgroup not in network.portgroups:
                findings.append(
                    Finding(
                        "networks.present",
                        "networks",
                        Verdict.FAIL,
                        f"network {nic.source!r} on {dst.ref.name} has no portgroup "
                        f"{nic.portgroup!r}",
                        evidence,
                        fix="add the portgroup to the network",
                        subject=subject,
                    )
                )
            else:
                findings.append(
                    Finding(
                        "networks.present",
                        "networks",
                        Verdict.PASS,
                        f"network {nic.source!r} is active on {dst.ref.name}",
                        evidence,
                        subject=subject,
                    )
                )
        elif nic.kind in ("bridge", "direct"):
            if dst.host_interfaces is None and nic.source not in bridges:
                findings.append(
                    Finding(
                        "networks.present",
                        "networks",
                        Verdict.SKIPPED,
                        f"{nic.kind} {nic.source!r}: not verifiable from here ({dst.ref.name}'s "
                        "libvirt does not list host interfaces)",
                        evidence,
                        subject=subject,
                    )
                )
            elif nic.source in bridges:
                findings.append(
                    Finding(
                        "networks.present",
                        "networks",
                        Verdict.PASS,
                        f"{nic.kind} {nic.source!r} exists on {dst.ref.name}",
                        evidence,
                        subject=subject,
                    )
                )
            else:
                findings.append(
                    Finding(
                        "networks.present",
                        "networks",
                        Verdict.FAIL,
                        f"{nic.kind} {nic.source!r} does not exist on {dst.ref.name}",
                        evidence,
                        fix=f"create {nic.source!r} on {dst.ref.name}",
                        subject=subject,
                    )
                )
    if not findings:
        findings.append(
            Finding(
                "networks.present",
                "networks",
                Verdict.PASS,
                "the VM has no network interfaces to map",
            )
        )
    return findings


def check_conflicts(facts: CheckInput) -> list[Finding]:
    domain, dst = facts.domain, facts.destination
    findings = []
    if domain is not None:
        wanted = ("running", "paused") if facts.mode is Mode.LIVE else None
        if wanted and domain.state not in wanted:
            findings.append(
                Finding(
                    "state.mode",
                    "state",
                    Verdict.FAIL,
                    f"the VM is {domain.state}; a live migration needs it running or paused",
                    {"state": domain.state},
                    fix="start it, or move it switched off with `vmigrate cold`",
                )
            )
        else:
            findings.append(
                Finding(
                    "state.mode",
                    "state",
                    Verdict.PASS,
                    f"the VM is {domain.state}, fit for a {facts.mode} move",
                    {"state": domain.state},
                )
            )
    if domain is not None and domain.active_job is not None:
        findings.append(
            Finding(
                "state.job",
                "state",
                Verdict.FAIL,
                f"the VM is busy with {domain.active_job} on {facts.source_name}",
                {"job": domain.active_job},
                fix="wait for it to finish, or stop it (`vmigrate jobs cancel ID`, "
                "or `virsh domjobabort VM`)",
            )
        )
    if domain is None or dst is None:
        return [
            *findings,
            Finding(
                "conflicts.name",
                "conflicts",
                Verdict.SKIPPED,
                "name clash not checked: the VM or the destination is unknown",
            ),
        ]
    uuid = domain.summary.uuid
    src = facts.source
    if src is not None and src.host_uuid and src.host_uuid == dst.host_uuid:
        findings.append(
            Finding(
                "conflicts.same-host",
                "conflicts",
                Verdict.FAIL,
                f"{facts.source_name} and {dst.ref.name} are the same host (host UUID "
                f"{dst.host_uuid})",
                {"host_uuid": dst.host_uuid},
                fix="pick another destination; if they really are two machines, give them "
                "distinct host_uuid values in libvirtd.conf",
            )
        )
    if domain.name in dst.domains:
        findings.append(
            Finding(
                "conflicts.name",
                "conflicts",
                Verdict.FAIL,
                f"a VM named {domain.name!r} is already defined on {dst.ref.name}",
                {"destination_uuid": dst.domains[domain.name], "uuid": uuid},
                fix=f"remove or rename it on {dst.ref.name} first "
                f"({shlex.join(['virsh', '-c', dst.ref.uri, 'undefine', domain.name])}) "
                "after making sure it is not needed",
            )
        )
    elif uuid in dst.domains.values():
        other = next(n for n, u in dst.domains.items() if u == uuid)
        findings.append(
            Finding(
                "conflicts.name",
                "conflicts",
                Verdict.FAIL,
                f"{dst.ref.name} already has a VM with this UUID, named {other!r}",
                {"uuid": uuid},
                fix="remove the stale copy on the destination after checking it is not needed",
            )
        )
    else:
        findings.append(
            Finding(
                "conflicts.name",
                "conflicts",
                Verdict.PASS,
                f"no VM named {domain.name!r} or with its UUID on {dst.ref.name}",
                {"uuid": uuid},
            )
        )
    return findings
