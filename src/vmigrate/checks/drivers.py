"""libvirt drivers on both hosts: a daemon without its storage or network driver cannot
list, probe or create what a move needs, and says only "not supported"."""

from __future__ import annotations

from vmigrate.checks.context import CheckInput
from vmigrate.errors import install_fix
from vmigrate.facts import HostFacts
from vmigrate.model import Finding, Verdict

FAMILY = "versions"
#: What each driver's absence stops vmigrate from doing.
CONSEQUENCE = {
    "storage": "its pools and volumes cannot be listed, so the disks cannot be placed, "
    "probed for sharing or copied",
    "network": "its networks cannot be listed, so the VM's interfaces cannot be matched",
}


def check_drivers(facts: CheckInput) -> list[Finding]:
    findings: list[Finding] = []
    for role, host in (("source", facts.source), ("destination", facts.destination)):
        findings += _host_drivers(role, host)
    return findings


def _host_drivers(role: str, host: HostFacts | None) -> list[Finding]:
    if host is None:
        return []
    if not host.missing_drivers:
        return [
            Finding(
                f"drivers.{role}",
                FAMILY,
                Verdict.PASS,
                f"{host.ref.name}'s libvirt daemon answers storage and network calls",
            )
        ]
    return [
        Finding(
            f"drivers.{role}",
            FAMILY,
            Verdict.FAIL,
            f"{host.ref.name}'s libvirt daemon has no {missing.driver} driver: "
            + CONSEQUENCE.get(missing.driver, "what it serves cannot be checked"),
            {"driver": missing.driver, "package": missing.package, "libvirt": missing.detail},
            fix=install_fix(missing.package, host.ref.name),
            subject=missing.driver,
        )
        for missing in host.missing_drivers
    ]
