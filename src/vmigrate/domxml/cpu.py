"""Guest CPU definitions and what a host offers for them, read from libvirt XML (pure functions).

Two inputs matter: the guest's `<cpu>` (from the domain XML; for a running domain libvirt has
already expanded `host-model` into `custom` with a concrete model and feature list) and a
host's *domain capabilities* (`virConnectGetDomainCapabilities`), whose `<cpu>` section lists
every named model the hypervisor knows, whether this host can run it (`usable`), and for the
models it cannot run, the `<blockers>`: features of that model the host lacks.

What domain capabilities can and cannot tell (the limits of `missing_features`):

* a feature named in *any* `<blockers>` list, or disabled in `host-model`, is known to be
  absent on that host;
* a feature required in `host-model` is known to be present; so are the features of every
  usable model, but domain capabilities do not list a model's features, so a feature the
  guest requires that is neither blocked nor in `host-model` is simply *unknown* here;
* nothing about stepping, microcode, cache layout or TSC frequency is visible.

libvirt's own `compareHypervisorCPU` (run by the glue, passed in separately) is the authority;
this module explains *why*, names the features and suggests a model both hosts can run.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

CPU_MODES = ("custom", "host-model", "host-passthrough", "maximum", "none")
REQUIRED_POLICIES = frozenset({"require", "force"})
REMOVED_POLICIES = frozenset({"disable", "forbid"})

# Main-line server/desktop families per vendor, oldest first, with the year the hardware
# shipped. `common_models` ranks families by year (so Intel and AMD interleave sensibly);
# within one vendor the years increase strictly, so the per-vendor order is exactly this list.
INTEL_FAMILIES: tuple[tuple[str, int], ...] = (
    ("Conroe", 2006),
    ("Penryn", 2007),
    ("Nehalem", 2008),
    ("Westmere", 2010),
    ("SandyBridge", 2011),
    ("IvyBridge", 2012),
    ("Haswell", 2013),
    ("Broadwell", 2014),
    ("Skylake-Client", 2015),
    ("Skylake-Server", 2017),
    ("Cascadelake-Server", 2019),
    ("Cooperlake", 2020),
    ("Icelake-Server", 2021),
    ("SapphireRapids", 2023),
    ("GraniteRapids", 2024),
)
AMD_FAMILIES: tuple[tuple[str, int], ...] = (
    ("Opteron_G1", 2003),
    ("Opteron_G2", 2006),
    ("Opteron_G3", 2007),
    ("Opteron_G4", 2011),
    ("Opteron_G5", 2012),
    ("EPYC", 2017),
    ("EPYC-Rome", 2019),
    ("EPYC-Milan", 2021),
    ("EPYC-Genoa", 2022),
    ("EPYC-Turin", 2024),
)
# Legacy/generic models: they run almost anywhere and are the last resort, best first.
GENERIC_MODELS = (
    "qemu64",
    "kvm64",
    "core2duo",
    "phenom",
    "athlon",
    "coreduo",
    "n270",
    "qemu32",
    "kvm32",
    "pentium3",
    "pentium2",
    "pentium",
    "486",
)
_FAMILY_YEAR = dict(INTEL_FAMILIES + AMD_FAMILIES)
_VERSIONED = re.compile(r"^(?P<base>.+)-v(?P<n>\d+)$")


@dataclass(frozen=True)
class DomainCpu:
    """A guest's `<cpu>`: mode, named model and the policy of each explicitly listed feature."""

    mode: str  # custom | host-model | host-passthrough | maximum | none (no <cpu> / no model)
    model: str | None
    vendor: str | None
    features: dict[str, str]  # feature name -> policy (require|force|optional|disable|forbid)
    check: str | None  # none | partial | full


@dataclass(frozen=True)
class HostCpuOffer:
    """The `<cpu>` section of one host's domain capabilities."""

    arch: str
    host_model: str | None  # the model `host-model` expands to on this host
    host_model_vendor: str | None
    host_model_features: dict[str, str]  # feature -> require|disable, relative to host_model
    usable: dict[str, bool]  # every named model, in domcaps order -> runnable here as-is
    blockers: dict[str, tuple[str, ...]]  # unusable model -> features this host lacks
    vendors: dict[str, str]  # model -> Intel | AMD | Hygon | unknown | ...
    passthrough_supported: bool
    canonical: dict[str, str] = field(default_factory=dict)  # alias -> versioned name

    @property
    def absent_features(self) -> frozenset[str]:
        """Features known to be missing here: blocked for some model or disabled in host-model."""
        absent = {f for names in self.blockers.values() for f in names}
        absent |= {f for f, p in self.host_model_features.items() if p in REMOVED_POLICIES}
        return frozenset(absent)


def _features(element: ET.Element) -> dict[str, str]:
    return {
        f.get("name", ""): f.get("policy", "require")
        for f in element.findall("feature")
        if f.get("name")
    }


def _text(element: ET.Element | None) -> str | None:
    if element is None or not (element.text or "").strip():
        return None
    return (element.text or "").strip()


def parse_cpu_element(cpu_xml: str) -> DomainCpu:
    """Read a bare `<cpu>` element (e.g. libvirt's baselineHypervisorCPU answer)."""
    return _cpu(ET.fromstring(cpu_xml))


def _cpu(element: ET.Element | None) -> DomainCpu:
    if element is None:
        return DomainCpu("none", None, None, {}, None)
    model = _text(element.find("model"))
    mode = element.get("mode", "custom")
    if mode == "custom" and model is None:
        # <cpu> carrying only topology/NUMA/cache: QEMU's default model, as with no <cpu>.
        mode = "none"
    return DomainCpu(
        mode=mode,
        model=model,
        vendor=_text(element.find("vendor")),
        features=_features(element),
        check=element.get("check"),
    )


def parse_domain_cpu(domain_xml: str) -> DomainCpu:
    """The guest CPU of a `<domain>` (inactive or live XML); a bare `<cpu>` is accepted too."""
    root = ET.fromstring(domain_xml)
    return _cpu(root if root.tag == "cpu" else root.find("cpu"))


def parse_domain_capabilities(domcaps_xml: str) -> HostCpuOffer:
    """The `<cpu>` section of `<domainCapabilities>`; dict orders follow the document."""
    root = ET.fromstring(domcaps_xml)
    modes = {m.get("name", ""): m for m in root.findall("cpu/mode")}
    passthrough = modes.get("host-passthrough")
    host_model = modes.get("host-model")
    if host_model is not None and host_model.get("supported") != "yes":
        host_model = None
    usable: dict[str, bool] = {}
    blockers: dict[str, tuple[str, ...]] = {}
    vendors: dict[str, str] = {}
    canonical: dict[str, str] = {}
    custom = modes.get("custom")
    for child in custom if custom is not None else ():
        if child.tag == "model" and (name := _text(child)):
            usable[name] = child.get("usable") == "yes"
            if child.get("vendor"):
                vendors[name] = child.get("vendor", "")
            if child.get("canonical"):
                canonical[name] = child.get("canonical", "")
        elif child.tag == "blockers" and child.get("model"):
            names = tuple(f.get("name", "") for f in child.findall("feature") if f.get("name"))
            blockers[child.get("model", "")] = names
    return HostCpuOffer(
        arch=root.findtext("arch", "").strip(),
        host_model=_text(host_model.find("model")) if host_model is not None else None,
        host_model_vendor=_text(host_model.find("vendor")) if host_model is not None else None,
        host_model_features=_features(host_model) if host_model is not None else {},
        usable=usable,
        blockers=blockers,
        vendors=vendors,
        passthrough_supported=passthrough is not None and passthrough.get("supported") == "yes",
        canonical=canonical,
    )


def cpu_xml_element(cpu: DomainCpu) -> str:
    """A guest-style `<cpu>` for compareHypervisorCPU / baselineHypervisorCPU.

    No `<arch>`, so libvirt reads it as a guest CPU and honours the feature policies
    (a disabled feature is subtracted from the model). `match` is always 'exact' for custom.
    Raises ValueError for mode "none": there is no CPU definition to compare.
    """
    if cpu.mode == "none":
        raise ValueError("a domain without a CPU model has no <cpu> definition to compare")
    element = ET.Element("cpu", {"mode": cpu.mode})
    if cpu.mode == "custom":
        element.set("match", "exact")
    if cpu.check is not None:
        element.set("check", cpu.check)
    if cpu.mode in ("custom", "host-model"):
        if cpu.model is not None:
            ET.SubElement(element, "model", {"fallback": "forbid"}).text = cpu.model
        if cpu.vendor is not None and cpu.model is not None:
            ET.SubElement(element, "vendor").text = cpu.vendor
        for name, policy in cpu.features.items():
            ET.SubElement(element, "feature", {"policy": policy, "name": name})
    return ET.tostring(element, encoding="unicode")


def missing_features(cpu: DomainCpu, destination: HostCpuOffer) -> tuple[str, ...]:
    """Features the destination lacks for this guest CPU, sorted, as far as domcaps show.

    That is: the destination's blockers for the guest's model, minus the features the guest
    itself disables or forbids; plus the features the guest requires (require/force) that
    the destination is known to lack (named in any of its blockers lists, or disabled in its
    host-model). A required feature the destination's domcaps say nothing about is not
    reported (see `unconfirmed_features`). Empty for modes without a named model
    (host-passthrough, maximum, none, unexpanded host-model) and for a model the destination
    does not know at all (check `destination.usable` for that).
    """
    if cpu.model is None or cpu.mode not in ("custom", "host-model"):
        return ()
    removed = {f for f, p in cpu.features.items() if p in REMOVED_POLICIES}
    missing = {f for f in destination.blockers.get(cpu.model, ()) if f not in removed}
    absent = destination.absent_features
    missing |= {f for f, p in cpu.features.items() if p in REQUIRED_POLICIES and f in absent}
    return tuple(sorted(missing))


def unconfirmed_features(cpu: DomainCpu, destination: HostCpuOffer) -> tuple[str, ...]:
    """Required features the destination's domcaps neither rule out nor confirm (host-model)."""
    if cpu.model is None or cpu.mode not in ("custom", "host-model"):
        return ()
    present = {f for f, p in destination.host_model_features.items() if p in REQUIRED_POLICIES}
    known = present | destination.absent_features
    required = (f for f, p in cpu.features.items() if p in REQUIRED_POLICIES)
    return tuple(sorted(f for f in required if f not in known))


def model_family(name: str, canonical: dict[str, str] | None = None) -> tuple[str, int]:
    """(family, version) of a model name: 'Skylake-Server-noTSX-IBRS' -> ('Skylake-Server', 3).

    Uses the domcaps `canonical` alias map when given; otherwise a trailing '-vN' gives the
    version (1 if none) and trailing '-suffix' parts are stripped until a known family is left.
    """
    versioned = (canonical or {}).get(name, name)
    match = _VERSIONED.match(versioned)
    base, version = (match["base"], int(match["n"])) if match else (versioned, 1)
    probe = base
    while probe not in _FAMILY_YEAR and probe not in GENERIC_MODELS and "-" in probe:
        probe = probe.rsplit("-", 1)[0]
    if probe in _FAMILY_YEAR or probe in GENERIC_MODELS:
        base = probe
    return base, version


def common_models(a: HostCpuOffer, b: HostCpuOffer, vendor: str | None = None) -> list[str]:
    """Named models usable as-is on both hosts, most capable first.

    Ordering: (1) main-line families from INTEL_FAMILIES / AMD_FAMILIES, newest hardware year
    first (so per vendor: GraniteRapids > SapphireRapids > ... > Conroe and EPYC-Turin > ... >
    Opteron_G1); within a family the highest `-vN` first, the versioned name before its alias
    (aliases like 'EPYC-Rome' may be re-pointed by a newer QEMU; 'EPYC-Rome-v4' may not);
    (2) other named families (Atom-class Denverton/Snowridge, Hygon, Zhaoxin, unknown), in
    domcaps order; (3) generic models in GENERIC_MODELS order (qemu64, kvm64, ...). Ties keep
    the order of `a`'s domcaps. With `vendor`, only models of that vendor (case-insensitive)
    are kept, plus vendor-neutral generic models ('unknown' vendor) at the end.
    """
    names = [n for n, ok in a.usable.items() if ok and b.usable.get(n, False)]
    vendors = {**b.vendors, **a.vendors}
    canonical = {**b.canonical, **a.canonical}
    if vendor is not None:
        wanted = vendor.lower()
        names = [n for n in names if vendors.get(n, "unknown").lower() in (wanted, "unknown")]
    order = {name: i for i, name in enumerate(a.usable)}
    first_of_family: dict[str, int] = {}
    for name in names:
        first_of_family.setdefault(model_family(name, canonical)[0], order[name])

    def key(name: str) -> tuple[int, int, int, int, int, int]:
        family, version = model_family(name, canonical)
        alias = int(canonical.get(name, name) != name)
        if family in _FAMILY_YEAR:
            rank = (0, -_FAMILY_YEAR[family], first_of_family[family])
        elif family in GENERIC_MODELS:
            rank = (2, GENERIC_MODELS.index(family), 0)
        else:
            rank = (1, first_of_family[family], 0)
        return (*rank, -version, alias, order[name])

    return sorted(names, key=key)
