"""A host's capabilities and domain capabilities read into HostCapabilities (pure).

`getCapabilities()` lists, per guest architecture, every machine type the host's QEMU runs,
aliases ('pc', 'q35') with the versioned name they stand for (`canonical`).
`getDomainCapabilities(None, arch, None, virttype)` says what a guest may use there: CPU
models of the custom mode, device models, features.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable

from vmigrate.facts import DomainOffer, HostCapabilities


def parse_machines(
    capabilities_xml: str,
) -> tuple[dict[str, tuple[str, ...]], dict[str, dict[str, str]]]:
    """(arch -> machine type names, arch -> alias -> canonical name) of hvm guests."""
    root = ET.fromstring(capabilities_xml)
    machines: dict[str, list[str]] = {}
    aliases: dict[str, dict[str, str]] = {}
    for guest in root.iterfind("guest"):
        if (guest.findtext("os_type") or "").strip() != "hvm":
            continue
        for arch in guest.iterfind("arch"):
            name = arch.get("name", "")
            names = machines.setdefault(name, [])
            # libvirt lists them under <arch>, and per <domain> where a type adds its own.
            for machine in [*arch.iterfind("machine"), *arch.iterfind("domain/machine")]:
                machine_name = (machine.text or "").strip()
                if not machine_name or machine_name in names:
                    continue
                names.append(machine_name)
                if machine.get("canonical"):
                    aliases.setdefault(name, {})[machine_name] = machine.get("canonical", "")
    return {arch: tuple(names) for arch, names in machines.items()}, aliases


def guest_virt_types(capabilities_xml: str, arch: str) -> tuple[str, ...]:
    """The domain types ('qemu', 'kvm') the host offers guests of `arch`."""
    root = ET.fromstring(capabilities_xml)
    found: list[str] = []
    for element in root.iterfind(f"guest/arch[@name='{arch}']/domain"):
        virt_type = element.get("type", "")
        if virt_type and virt_type not in found:
            found.append(virt_type)
    return tuple(found)


def _children(root: ET.Element, tag: str) -> list[ET.Element]:
    element = root.find(tag)
    return list(element) if element is not None else []


def parse_domain_offer(domcaps_xml: str) -> DomainOffer:
    root = ET.fromstring(domcaps_xml)
    models: dict[str, bool] = {}
    for model in root.iterfind("cpu/mode[@name='custom']/model"):
        if (model.text or "").strip():
            models[(model.text or "").strip()] = model.get("usable") == "yes"
    devices: dict[str, dict[str, tuple[str, ...]]] = {}
    unsupported: list[str] = []
    for device in _children(root, "devices"):
        if device.get("supported") != "yes":
            unsupported.append(device.tag)
            continue
        devices[device.tag] = {
            enum.get("name", ""): tuple((v.text or "").strip() for v in enum.iterfind("value"))
            for enum in device.iterfind("enum")
        }
    return DomainOffer(
        arch=(root.findtext("arch") or "").strip(),
        virt_type=(root.findtext("domain") or "").strip(),
        default_machine=(root.findtext("machine") or "").strip(),
        cpu_models=models,
        devices=devices,
        unsupported_devices=tuple(unsupported),
        features={
            feature.tag: feature.get("supported") == "yes"
            for feature in _children(root, "features")
        },
        xml=domcaps_xml,
    )


def host_capabilities(
    capabilities_xml: str,
    domcaps_xmls: Iterable[str],
    *,
    libvirt_version: int,
    qemu_version: int,
    offer_errors: dict[str, str] | None = None,
) -> HostCapabilities:
    machines, aliases = parse_machines(capabilities_xml)
    return HostCapabilities(
        libvirt_version=libvirt_version,
        qemu_version=qemu_version,
        machines=machines,
        machine_aliases=aliases,
        offers=tuple(parse_domain_offer(xml) for xml in domcaps_xmls),
        offer_errors=dict(offer_errors or {}),
    )
