"""A domain rewritten for a host whose QEMU cannot run it as it is, and put back (pure).

`adapt_domain` reads what the destination offers (its capabilities' machine types per arch,
with their aliases; its domain capabilities' CPU models and device enums) and rewrites only
what the destination cannot run:
- the machine type becomes the destination's newest of the same family (pc-i440fx-10.0 ->
  pc-i440fx-7.2), never a machine of another chipset;
- a CPU model the destination cannot run becomes the most capable one it runs, one that
  runs on the source as well where the source's offer is known (checks/cpu's ranking);
- a device whose kind, model or backend the destination's enums do not list is replaced by
  one they list, or dropped where nothing takes its place (a spice console, its channels).
Each change says what, from, to and why. What cannot be adapted without touching the
guest's data (a disk bus, a filesystem driver) is a blocker: the move is refused.

`restore_original` puts back, from the definition kept in an earlier job, each adapted part
that the destination runs, and leaves the others adapted.
"""

from __future__ import annotations

import copy
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from vmigrate.domxml.cpu import (
    REQUIRED_POLICIES,
    DomainCpu,
    HostCpuOffer,
    common_models,
    missing_features,
    parse_domain_capabilities,
    parse_domain_cpu,
)

ADAPTED = "adapted"
RESTORED = "restored"
MACHINE = "machine"
EMULATOR = "emulator"
CPU = "cpu"
DEVICE = "device:"  # + the element's tag: every <graphics>, <video>, ... is one part
DROPPED = "(dropped)"
#: QEMU's CPU model when a domain names none (checks/cpu.py's DEFAULT_MODELS).
DEFAULT_CPU = {"x86_64": "qemu64", "i686": "qemu32"}
#: 'pc-q35-10.0', 'pc-i440fx-4.0.1', 'pc-q35-rhel9.2.0': the shortest family before a version.
_MACHINE_VERSION = re.compile(r"^(?P<family>.+?)(?:-|(?<=[A-Za-z_]))(?P<version>\d+(?:\.\d+)*)$")


@dataclass(frozen=True)
class AdaptChange:
    """One rewritten part of the definition: what, from, to and why."""

    what: str  # "machine", "cpu", "graphics", "video", "channel spicevmc", ...
    before: str
    after: str
    why: str
    part: str  # MACHINE | EMULATOR | CPU | DEVICE + tag: what a restore puts back
    kind: str = ADAPTED  # ADAPTED | RESTORED
    job_id: int | None = None  # RESTORED: the job that kept the original definition

    def describe(self) -> str:
        return f"{self.what}: {self.before} -> {self.after} ({self.why})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "from": self.before,
            "to": self.after,
            "why": self.why,
            "part": self.part,
            "kind": self.kind,
            "job_id": self.job_id,
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> AdaptChange:
        return AdaptChange(
            what=str(data["what"]),
            before=str(data["from"]),
            after=str(data["to"]),
            why=str(data["why"]),
            part=str(data["part"]),
            kind=str(data.get("kind", ADAPTED)),
            job_id=data.get("job_id"),
        )


@dataclass(frozen=True)
class MachineTypes:
    """The machine types one arch of a host's QEMU offers, from getCapabilities()."""

    names: frozenset[str]  # canonical names and aliases
    canonical: dict[str, str]  # alias -> canonical name ('pc' -> 'pc-i440fx-7.2')
    emulator: str | None


@dataclass(frozen=True)
class DeviceOffer:
    """The <devices> of domain capabilities: which kinds are supported, and their enums.
    A kind or an enum libvirt does not report (older libvirt lists fewer) is unknown, and
    unknown is never read as unsupported."""

    supported: dict[str, bool] = field(default_factory=dict)  # kind -> supported
    enums: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)

    def allows(self, kind: str, enum: str, value: str) -> bool | None:
        """True/False when the domcaps say; None when they do not tell."""
        if self.supported.get(kind) is False:
            return False
        values = self.enums.get((kind, enum))
        if not values:
            return None
        return value in values


@dataclass(frozen=True)
class Destination:
    """What a destination runs, as adapt reads it (later: from facts.HostCapabilities)."""

    name: str
    qemu: str  # its QEMU's version, for the reasons ("" if unknown)
    machines: MachineTypes
    cpu: HostCpuOffer | None
    devices: DeviceOffer

    @property
    def qemu_name(self) -> str:
        return f"{self.name}'s QEMU {self.qemu}".rstrip()


@dataclass(frozen=True)
class Adaptation:
    xml: str
    changes: tuple[AdaptChange, ...]
    blockers: tuple[str, ...] = ()  # what cannot be adapted: the move is refused
    skipped: tuple[str, ...] = ()  # restore: adapted parts left as they are, and why


def machine_types(capabilities_xml: str, arch: str, virt_type: str) -> MachineTypes:
    """The machine types of `arch` for domain type `virt_type`, from <capabilities>."""
    root = ET.fromstring(capabilities_xml)
    names: set[str] = set()
    canonical: dict[str, str] = {}
    emulator = None
    for guest in root.findall("guest"):
        arch_element = guest.find("arch")
        if arch_element is None or arch_element.get("name") != arch:
            continue
        emulator = emulator or (arch_element.findtext("emulator") or "").strip() or None
        elements = list(arch_element.findall("machine"))
        for domain in arch_element.findall("domain"):
            if domain.get("type") == virt_type:
                elements += domain.findall("machine")
        for machine in elements:
            name = (machine.text or "").strip()
            if name:
                names.add(name)
                if machine.get("canonical"):
                    canonical[name] = machine.get("canonical", "")
    return MachineTypes(frozenset(names), canonical, emulator)


def device_offer(domcaps_xml: str) -> DeviceOffer:
    root = ET.fromstring(domcaps_xml)
    supported: dict[str, bool] = {}
    enums: dict[tuple[str, str], frozenset[str]] = {}
    for kind in root.findall("devices/*"):
        supported[kind.tag] = kind.get("supported") == "yes"
        for enum in kind.findall("enum"):
            values = frozenset((v.text or "").strip() for v in enum.findall("value"))
            enums[(kind.tag, enum.get("name", ""))] = values
    return DeviceOffer(supported, enums)


def destination_from_xml(
    name: str,
    capabilities_xml: str,
    domcaps_xml: str | None,
    *,
    arch: str,
    virt_type: str,
    qemu: str = "",
) -> Destination:
    """A destination from its capabilities and its domain capabilities for this arch/type."""
    return Destination(
        name=name,
        qemu=qemu,
        machines=machine_types(capabilities_xml, arch, virt_type),
        cpu=parse_domain_capabilities(domcaps_xml) if domcaps_xml else None,
        devices=device_offer(domcaps_xml) if domcaps_xml else DeviceOffer(),
    )


def machine_family(name: str) -> tuple[str, tuple[int, ...]] | None:
    """('pc-i440fx', (10, 0)) for 'pc-i440fx-10.0'; None for an unversioned name ('pc')."""
    match = _MACHINE_VERSION.match(name)
    if match is None:
        return None
    return match["family"], tuple(int(n) for n in match["version"].split("."))


def newest_of_family(family: str, machines: MachineTypes) -> str | None:
    versions = [
        (parsed[1], name)
        for name in machines.names
        if name not in machines.canonical and (parsed := machine_family(name)) is not None
        if parsed[0] == family
    ]
    return max(versions)[1] if versions else None


# ---- the parts of a definition ----------------------------------------------------------


def _os_type(root: ET.Element) -> ET.Element:
    element = root.find("os/type")
    if element is None:
        raise ValueError("the domain has no <os><type>")
    return element


def _cpu_text(element: ET.Element | None, arch: str) -> str:
    if element is None:
        return f"QEMU's default {DEFAULT_CPU.get(arch, 'model')} (no <cpu>)"
    cpu = parse_domain_cpu(ET.tostring(element, encoding="unicode"))
    if cpu.mode == "none":
        return f"QEMU's default {DEFAULT_CPU.get(arch, 'model')}"
    extra = sum(1 for p in cpu.features.values() if p in REQUIRED_POLICIES)
    more = f" +{extra} feature(s)" if extra else ""
    return f"{cpu.mode} {cpu.model}{more}" if cpu.model else cpu.mode


def _device_text(element: ET.Element) -> str:
    model = element.find("model")
    detail = element.get("type") or element.get("model") or element.get("bus")
    if element.tag == "video" and model is not None:
        detail = model.get("type")
    return f"{element.tag} {detail}" if detail else element.tag


# ---- machine, emulator, CPU -------------------------------------------------------------


def _adapt_machine(root: ET.Element, dst: Destination) -> tuple[list[AdaptChange], list[str]]:
    os_type = _os_type(root)
    machine = os_type.get("machine")
    if machine is None or machine in dst.machines.names or not dst.machines.names:
        return [], []
    parsed = machine_family(dst.machines.canonical.get(machine, machine))
    newest = newest_of_family(parsed[0], dst.machines) if parsed else None
    if newest is None:
        family = parsed[0] if parsed else machine
        return [], [
            f"machine type {machine} is unknown to {dst.qemu_name}, which has no {family}-* "
            "machine type either"
        ]
    os_type.set("machine", newest)
    family = parsed[0] if parsed else machine
    why = f"{machine} is unknown to {dst.qemu_name}; {newest} is its newest {family}"
    return [AdaptChange(MACHINE, machine, newest, why, MACHINE)], []


def _adapt_emulator(root: ET.Element, dst: Destination) -> list[AdaptChange]:
    element = root.find("devices/emulator")
    wanted = dst.machines.emulator
    if element is None or wanted is None or (element.text or "").strip() == wanted:
        return []
    before = (element.text or "").strip()
    element.text = wanted
    why = f"{dst.name}'s QEMU for this architecture is {wanted}"
    return [AdaptChange(EMULATOR, before, wanted, why, EMULATOR)]


def _cpu_problem(cpu: DomainCpu, offer: HostCpuOffer, arch: str) -> str | None:
    """Why the destination cannot run this guest CPU, or None when it can (or cannot tell)."""
    if cpu.mode in ("host-passthrough", "maximum"):
        supported = offer.passthrough_supported or cpu.mode == "maximum"
        return None if supported else f"{cpu.mode} needs KVM, which it does not offer"
    model = cpu.model if cpu.mode != "none" else DEFAULT_CPU.get(arch)
    if model is None:  # an inactive host-model: the destination expands it at start
        return None
    if model not in offer.usable:
        return f"its QEMU does not know CPU model {model}"
    missing = missing_features(replace(cpu, model=model), offer)
    if missing:
        return f"it lacks {', '.join(missing[:6])} for CPU model {model}"
    if not offer.usable[model] and model not in offer.blockers:
        return f"CPU model {model} is not usable there"
    return None


def _adapt_cpu(
    root: ET.Element, dst: Destination, source_cpu: HostCpuOffer | None
) -> tuple[list[AdaptChange], list[str]]:
    offer = dst.cpu
    if offer is None:
        return [], []
    arch = _os_type(root).get("arch", "")
    element = root.find("cpu")
    cpu = (
        parse_domain_cpu(ET.tostring(element, encoding="unicode"))
        if element is not None
        else DomainCpu("none", None, None, {}, None)
    )
    problem = _cpu_problem(cpu, offer, arch)
    if problem is None:
        return [], []
    vendor = (
        cpu.vendor
        or offer.vendors.get(cpu.model or "")
        or (source_cpu.vendors.get(cpu.model or "") if source_cpu else None)
    )
    both = common_models(source_cpu, offer, vendor) if source_cpu is not None else []
    choices = both or common_models(offer, offer, vendor) or common_models(offer, offer)
    if not choices:
        return [], [f"{dst.name} runs no named CPU model the guest could use ({problem})"]
    before = _cpu_text(element, arch)
    new = ET.Element("cpu", {"mode": "custom", "match": "exact", "check": "partial"})
    ET.SubElement(new, "model", {"fallback": "forbid"}).text = choices[0]
    if element is not None:  # topology, NUMA and cache are the guest's shape: kept
        for child in element:
            if child.tag in ("topology", "numa", "cache", "maxphysaddr"):
                new.append(copy.deepcopy(child))
        _swap(root, element, new)
    else:
        _insert_after(root, new, ("vcpu", "iothreads", "cputune", "features"))
    where = "it and the source both run" if both else "it runs"
    why = f"{dst.name}: {problem}; {choices[0]} is the most capable model {where}"
    return [AdaptChange(CPU, before, _cpu_text(new, arch), why, CPU)], []


def _swap(parent: ET.Element, old: ET.Element, new: ET.Element) -> None:
    index = list(parent).index(old)
    new.tail = old.tail
    parent.remove(old)
    parent.insert(index, new)


def _insert_after(root: ET.Element, new: ET.Element, after: Iterable[str]) -> None:
    children = list(root)
    wanted = set(after)
    index = max((i + 1 for i, c in enumerate(children) if c.tag in wanted), default=len(children))
    root.insert(index, new)


# ---- devices ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceRule:
    """One device attribute checked against one enum of the destination's domcaps."""

    tag: str  # the element under <devices>
    kind: str  # its section in domcaps <devices>
    enum: str
    child: str | None  # the element that holds the attribute (None: the device itself)
    attribute: str
    instead: tuple[str, ...] = ()  # replacements, best first; none: the device is dropped
    #: dropping it would lose the guest's data or keys (a disk, a filesystem, a TPM):
    #: refused, never dropped
    blocker: bool = False


DEVICE_RULES = (
    DeviceRule("graphics", "graphics", "type", None, "type", ("vnc", "spice")),
    DeviceRule(
        "video", "video", "modelType", "model", "type", ("virtio", "vga", "bochs", "cirrus")
    ),
    DeviceRule("channel", "channel", "type", None, "type"),
    DeviceRule("redirdev", "redirdev", "bus", None, "bus"),
    DeviceRule("redirdev", "channel", "type", None, "type"),  # its character device (spicevmc)
    DeviceRule("rng", "rng", "model", None, "model", ("virtio",)),
    DeviceRule("rng", "rng", "backendModel", "backend", "model", ("builtin", "random")),
    DeviceRule("panic", "panic", "model", None, "model", ("pvpanic", "isa")),
    DeviceRule("crypto", "crypto", "model", None, "model"),
    DeviceRule("tpm", "tpm", "model", None, "model", ("tpm-crb", "tpm-tis")),
    DeviceRule("tpm", "tpm", "backendModel", "backend", "type", blocker=True),
    DeviceRule("disk", "disk", "diskDevice", None, "device", blocker=True),
    DeviceRule("disk", "disk", "bus", "target", "bus", blocker=True),
    DeviceRule("filesystem", "filesystem", "driverType", "driver", "type", blocker=True),
    DeviceRule("hostdev", "hostdev", "subsysType", None, "type", blocker=True),
)
#: Children of <graphics> that every type understands; the rest (spice's channels, image
#: compression, gl, ...) belong to the type that is replaced.
_GRAPHICS_KEPT = ("listen",)
_VIDEO_MODEL_KEPT = ("type", "heads", "primary")


def _replaced(element: ET.Element, rule: DeviceRule, value: str) -> ET.Element:
    """The device with `value` in place of what the destination lacks."""
    new = copy.deepcopy(element)
    if rule.tag == "graphics":
        new = ET.Element("graphics", {"type": value, "autoport": "yes"})
        if element.get("listen"):
            new.set("listen", element.get("listen", ""))
        for child in element:
            if child.tag in _GRAPHICS_KEPT and child.get("type") != "socket":
                new.append(copy.deepcopy(child))
        return new
    holder = new if rule.child is None else new.find(rule.child)
    assert holder is not None  # the rule only matched an element that has it
    holder.set(rule.attribute, value)
    if rule.tag == "video":
        for name in list(holder.attrib):
            if name not in _VIDEO_MODEL_KEPT:
                del holder.attrib[name]
        for child in list(holder):
            holder.remove(child)
    if rule.child == "backend":  # a backend's text is its source (/dev/urandom): not builtin's
        holder.text = "/dev/urandom" if value == "random" else None
    return new


def _adapt_device(
    devices: ET.Element, element: ET.Element, dst: Destination
) -> tuple[list[AdaptChange], list[str]]:
    changes: list[AdaptChange] = []
    for rule in (r for r in DEVICE_RULES if r.tag == element.tag):
        holder = element if rule.child is None else element.find(rule.child)
        value = holder.get(rule.attribute) if holder is not None else None
        if value is None or dst.devices.allows(rule.kind, rule.enum, value) is not False:
            continue
        lacks = f"{dst.qemu_name} offers no {rule.tag} {rule.attribute} {value}"
        if rule.blocker:
            return [], [f"{_device_text(element)}: {lacks}, and it holds the guest's data or keys"]
        before = _device_text(element)
        instead = next(
            (v for v in rule.instead if dst.devices.allows(rule.kind, rule.enum, v) is not False),
            None,
        )
        if instead is None:
            devices.remove(element)
            changes.append(AdaptChange(element.tag, before, DROPPED, lacks, DEVICE + element.tag))
            return changes, []
        new = _replaced(element, rule, instead)
        _swap(devices, element, new)
        element = new
        changes.append(
            AdaptChange(element.tag, before, _device_text(new), lacks, DEVICE + element.tag)
        )
    return changes, []


def _adapt_devices(root: ET.Element, dst: Destination) -> tuple[list[AdaptChange], list[str]]:
    devices = root.find("devices")
    if devices is None:
        return [], []
    changes: list[AdaptChange] = []
    blockers: list[str] = []
    for element in list(devices):
        done, blocked = _adapt_device(devices, element, dst)
        changes += done
        blockers += blocked
    spice_gone = any(c.before == "graphics spice" for c in changes)
    if spice_gone and devices.find("graphics[@type='spice']") is None:
        for audio in devices.findall("audio[@type='spice']"):  # it played through that console
            audio.set("type", "none")
            why = "the spice console it played through was replaced"
            changes.append(AdaptChange("audio", "audio spice", "audio none", why, DEVICE + "audio"))
    return changes, blockers


def adapt_domain(
    domain_xml: str, destination: Destination, source_cpu: HostCpuOffer | None = None
) -> Adaptation:
    """The definition rewritten so that `destination` runs it: every change listed; an
    empty list when it runs as it is. `source_cpu` (the source's domcaps CPU offer) lets
    the CPU chosen be one both hosts run."""
    root = ET.fromstring(domain_xml)
    machine, machine_blockers = _adapt_machine(root, destination)
    cpu, cpu_blockers = _adapt_cpu(root, destination, source_cpu)
    devices, device_blockers = _adapt_devices(root, destination)
    changes = (*machine, *_adapt_emulator(root, destination), *cpu, *devices)
    blockers = (*machine_blockers, *cpu_blockers, *device_blockers)
    xml = ET.tostring(root, encoding="unicode") if changes else domain_xml
    return Adaptation(xml, changes, blockers)


# ---- restore ----------------------------------------------------------------------------


def _part_text(root: ET.Element, part: str) -> str:
    if part == MACHINE:
        return _os_type(root).get("machine", "")
    if part == EMULATOR:
        return (root.findtext("devices/emulator") or "").strip()
    if part == CPU:
        return _cpu_text(root.find("cpu"), _os_type(root).get("arch", ""))
    found = root.findall(f"devices/{part.removeprefix(DEVICE)}")
    return ", ".join(_device_text(e) for e in found) or "(none)"


def _put_part(target: ET.Element, part: str, source: ET.Element) -> None:
    """`part` of `source` copied into `target`, in place of what `target` has."""
    if part == MACHINE:
        _os_type(target).set("machine", _os_type(source).get("machine", ""))
    elif part == EMULATOR:
        element, wanted = target.find("devices/emulator"), source.find("devices/emulator")
        if element is not None and wanted is not None:
            element.text = wanted.text
    elif part == CPU:
        old, new = target.find("cpu"), source.find("cpu")
        if old is not None and new is not None:
            _swap(target, old, copy.deepcopy(new))
        elif old is not None:
            target.remove(old)
        elif new is not None:
            _insert_after(target, copy.deepcopy(new), ("vcpu", "iothreads", "cputune", "features"))
    else:
        tag = part.removeprefix(DEVICE)
        devices, wanted = target.find("devices"), source.find("devices")
        if devices is None or wanted is None:
            return
        present = devices.findall(tag)
        index = list(devices).index(present[0]) if present else len(devices)
        for element in present:
            devices.remove(element)
        for offset, element in enumerate(wanted.findall(tag)):
            devices.insert(index + offset, copy.deepcopy(element))


def restore_original(
    current_xml: str,
    original_xml: str,
    adapted: Iterable[AdaptChange],
    destination: Destination,
    job_id: int,
    source_cpu: HostCpuOffer | None = None,
) -> Adaptation:
    """Each part that job `job_id` adapted (`adapted`, from its record) put back as the
    original definition had it, where `destination` runs it and the part is still as that
    job left it (a part changed by hand since is the user's: kept, and said so)."""
    current, original = ET.fromstring(current_xml), ET.fromstring(original_xml)
    if (current.findtext("uuid") or "").strip() != (original.findtext("uuid") or "").strip():
        return Adaptation(current_xml, (), skipped=(f"job {job_id} kept another VM's definition",))
    last: dict[str, AdaptChange] = {}
    for change in adapted:
        last[change.part] = change
    candidate = copy.deepcopy(current)
    restored: list[AdaptChange] = []
    skipped: list[str] = []
    for part, change in last.items():
        now, was = _part_text(current, part), _part_text(original, part)
        if part in (MACHINE, EMULATOR, CPU) and now != change.after:
            skipped.append(f"{change.what} is {now}, not {change.after} as job {job_id} left it")
            continue
        trial = copy.deepcopy(candidate)
        _put_part(trial, part, original)
        again = adapt_domain(ET.tostring(trial, encoding="unicode"), destination, source_cpu)
        if any(c.part == part for c in again.changes):
            skipped.append(f"{change.what} {was}: {destination.name} cannot run it; kept {now}")
            continue
        candidate = trial
        why = f"restored from job {job_id}: {destination.name} runs the original"
        restored.append(AdaptChange(change.what, now, was, why, part, RESTORED, job_id))
    xml = ET.tostring(candidate, encoding="unicode") if restored else current_xml
    return Adaptation(xml, tuple(restored), (), tuple(skipped))
