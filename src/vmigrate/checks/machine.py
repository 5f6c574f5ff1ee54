"""Can the destination's QEMU run this VM's machine type, devices and features?

Read from the destination's own capabilities (HostFacts.capabilities: getCapabilities()'s
machine types, its domain capabilities), never from version numbers. A running VM's live XML
holds the expanded machine type (pc-i440fx-10.0, not 'pc'); an alias in the XML is resolved
the way the source resolves it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

from vmigrate.checks.context import CheckInput
from vmigrate.facts import DomainOffer, HostCapabilities, HostFacts, machine_family
from vmigrate.model import Finding, Mode, Verdict
from vmigrate.versions import format_version

FAMILY = "machine"
AVAILABLE = "machine.available"
DEVICES = "machine.devices"


def check_machine(facts: CheckInput) -> list[Finding]:
    domain, dst = facts.domain, facts.destination
    if domain is None or dst is None:
        return [
            Finding(
                AVAILABLE,
                FAMILY,
                Verdict.SKIPPED,
                "machine type not checked: the VM or the destination is unknown",
            )
        ]
    summary = domain.summary
    evidence: dict[str, Any] = {
        "machine": summary.machine,
        "emulator": summary.emulator,
        "arch": summary.arch,
        "type": summary.virt_type,
    }
    caps = dst.capabilities
    # A host that lists no machine type for the arch leaves it to its domain capabilities.
    if caps is not None and caps.machines.get(summary.arch):
        wanted = _as_source_runs_it(summary.arch, summary.machine, facts.source)
        evidence["destination_qemu"] = format_version(caps.qemu_version)
        if caps.canonical_machine(summary.arch, wanted) is None:
            return [_unknown_machine(facts, wanted, caps, evidence)]
    if facts.destination_domcaps is None:
        return [
            Finding(
                AVAILABLE,
                FAMILY,
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
            AVAILABLE,
            FAMILY,
            Verdict.PASS,
            f"{dst.ref.name} offers machine {summary.machine} ({summary.virt_type}, "
            f"{summary.emulator})",
            evidence,
        )
    ]


def _as_source_runs_it(arch: str, machine: str, source: HostFacts | None) -> str:
    """The versioned machine type the VM has: an alias ('pc') means what it means on the
    source, not on the destination."""
    caps = source.capabilities if source is not None else None
    resolved = caps.canonical_machine(arch, machine) if caps is not None else None
    return resolved or machine


def _unknown_machine(
    facts: CheckInput, wanted: str, caps: HostCapabilities, evidence: dict[str, Any]
) -> Finding:
    assert facts.domain is not None and facts.destination is not None
    vm, dst = facts.domain.name, facts.destination.ref.name
    arch = facts.domain.summary.arch
    family = machine_family(wanted)[0]
    newest = caps.newest_machine(arch, family)
    evidence.update(machine=wanted, destination_newest_of_family=newest)
    adapt = (
        f"move it cold with `vmigrate cold {vm} --from {facts.source_name} --to {dst} --adapt`"
        + (f" (its machine type becomes {newest})" if newest else "")
    )
    alias = facts.domain.summary.machine
    named = wanted if alias == wanted else f"{wanted} ('{alias}' on {facts.source_name})"
    how = "a live move" if facts.mode is Mode.LIVE else "a move"
    return Finding(
        AVAILABLE,
        FAMILY,
        Verdict.FAIL,
        f"{named} is unknown to {dst}'s QEMU {format_version(caps.qemu_version)}: {how} "
        "needs the destination to know the VM's machine type",
        evidence,
        fix=f"{adapt}, or choose a destination whose QEMU knows {wanted}, or upgrade QEMU on {dst}",
    )


# --- devices and features ------------------------------------------------------------------

#: (device element, attribute path) -> the domcaps device and enum that list its values.
_DEVICE_ENUMS: tuple[tuple[str, str, str, str], ...] = (
    # element under <devices>, where its value is ("@attr" or "child@attr"), domcaps device, enum
    ("disk", "@device", "disk", "diskDevice"),
    ("disk", "target@bus", "disk", "bus"),
    ("disk", "@model", "disk", "model"),
    ("graphics", "@type", "graphics", "type"),
    ("video", "model@type", "video", "modelType"),
    ("hostdev", "@mode", "hostdev", "mode"),
    ("hostdev", "@type", "hostdev", "subsysType"),
    ("rng", "@model", "rng", "model"),
    ("rng", "backend@model", "rng", "backendModel"),
    ("filesystem", "driver@type", "filesystem", "driverType"),
    ("tpm", "@model", "tpm", "model"),
    ("tpm", "backend@type", "tpm", "backendModel"),
    ("redirdev", "@bus", "redirdev", "bus"),
    ("channel", "@type", "channel", "type"),
    ("interface", "backend@type", "interface", "backendType"),
    ("panic", "@model", "panic", "model"),
    ("crypto", "@model", "crypto", "model"),
    ("crypto", "@type", "crypto", "type"),
    ("crypto", "backend@model", "crypto", "backendModel"),
)


def _value(element: ET.Element, where: str) -> str | None:
    path, attribute = where.split("@")
    found = element.find(path) if path else element
    return found.get(attribute) if found is not None else None


def _used_devices(root: ET.Element) -> Iterator[tuple[str, str, str, str]]:
    """(what the VM uses, domcaps device, enum, value) for each device value it sets."""
    devices = root.find("devices")
    for tag, where, device, enum in _DEVICE_ENUMS:
        for element in devices.iterfind(tag) if devices is not None else ():
            value = _value(element, where)
            if value:
                yield f"{tag} {enum} '{value}'", device, enum, value


def _used_features(root: ET.Element) -> Iterator[str]:
    """Domain capabilities' feature names the VM uses."""
    features = root.find("features")
    for name in ("vmcoreinfo", "async-teardown", "ps2"):
        element = features.find(name) if features is not None else None
        if element is not None and element.get("state", "on") == "on":
            yield name
    if root.find("genid") is not None:
        yield "genid"
    security = root.find("launchSecurity")
    if security is not None and security.get("type"):
        yield security.get("type", "")
    if root.find("devices/memory[@model='sgx-epc']") is not None:
        yield "sgx"


def _hyperv(root: ET.Element) -> list[str]:
    hyperv = root.find("features/hyperv")
    if hyperv is None:
        return []
    return [child.tag for child in hyperv if child.get("state", "on") == "on"]


def unsupported_by(offer: DomainOffer, domain_xml: str) -> tuple[list[str], int]:
    """What the VM uses that the offer rules out, and how many values were compared. A device
    or enum the offer does not list is not compared: an older libvirt reports less."""
    root = ET.fromstring(domain_xml)
    missing: list[str] = []
    compared = 0
    for what, device, enum, value in _used_devices(root):
        if device in offer.unsupported_devices:
            missing.append(f"{what} (no {device} devices at all)")
            compared += 1
        elif enum in offer.devices.get(device, {}):
            compared += 1
            if value not in offer.devices[device][enum]:
                missing.append(what)
    for feature in _used_features(root):
        if feature in offer.features:
            compared += 1
            if not offer.features[feature]:
                missing.append(f"feature '{feature}'")
    hyperv = _hyperv(root)
    if hyperv and "hyperv" in offer.features:
        compared += 1
        if not offer.features["hyperv"]:
            missing.append("Hyper-V enlightenments")
    return missing, compared


def check_devices_offered(facts: CheckInput) -> list[Finding]:
    """`machine.devices`: every device model and feature the VM uses is one the destination's
    domain capabilities offer (for the VM's architecture and virt type)."""
    domain, dst = facts.domain, facts.destination
    caps = dst.capabilities if dst is not None else None
    if domain is None or dst is None or caps is None:
        return [
            Finding(
                DEVICES,
                FAMILY,
                Verdict.SKIPPED,
                "devices not compared: the destination's capabilities were not read",
            )
        ]
    summary = domain.summary
    offer = caps.offer(summary.arch, summary.virt_type)
    if offer is None:
        why = caps.offer_errors.get(summary.virt_type, "not offered there")
        return [
            Finding(
                DEVICES,
                FAMILY,
                Verdict.SKIPPED,
                f"devices not compared: {dst.ref.name} gave no domain capabilities for "
                f"{summary.arch}/{summary.virt_type} ({why})",
            )
        ]
    missing, compared = unsupported_by(offer, domain.live_xml)
    evidence: dict[str, Any] = {
        "unsupported": missing,
        "compared": compared,
        "destination_qemu": format_version(caps.qemu_version),
    }
    if missing:
        return [
            Finding(
                DEVICES,
                FAMILY,
                Verdict.FAIL,
                f"{dst.ref.name}'s QEMU {format_version(caps.qemu_version)} does not offer "
                + ", ".join(missing),
                evidence,
                fix=f"replace or remove them in the VM's definition before the move, or move it "
                f"cold with `vmigrate cold {domain.name} --from {facts.source_name} --to "
                f"{dst.ref.name} --adapt`",
            )
        ]
    return [
        Finding(
            DEVICES,
            FAMILY,
            Verdict.PASS,
            f"{dst.ref.name} offers every device model and feature the VM uses that its "
            f"domain capabilities list ({compared} compared)",
            evidence,
        )
    ]
