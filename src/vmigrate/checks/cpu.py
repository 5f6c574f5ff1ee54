"""Can the destination run the guest's CPU, and which CPU model would run on both hosts.

Pure: the glue gathers the domain XML, both hosts' domain capabilities and libvirt's own
compareHypervisorCPU / baselineHypervisorCPU answers; this module only reads them.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from vmigrate.domxml.cpu import (
    DomainCpu,
    HostCpuOffer,
    common_models,
    missing_features,
    parse_cpu_element,
    parse_domain_capabilities,
    parse_domain_cpu,
    unconfirmed_features,
)
from vmigrate.model import Finding, Verdict

FAMILY = "cpu"
COMPATIBLE = "cpu.compatible"
BASELINE = "cpu.baseline"
TOP_MODELS = 5
SHOWN_FEATURES = 8
DEFAULT_MODELS = {"x86_64": "qemu64", "i686": "qemu32"}  # QEMU's model when there is no <cpu>
LIBVIRT_OK = ("identical", "superset")


@dataclass(frozen=True)
class CpuFacts:
    domain_xml: str
    source_domcaps_xml: str | None
    destination_domcaps_xml: str | None
    libvirt_compare: str | None  # identical | superset | incompatible | error | None: not run
    libvirt_compare_message: str = ""
    libvirt_baseline_xml: str | None = None  # baselineHypervisorCPU over both hosts' host-model


def _offer(xml: str | None, which: str) -> tuple[HostCpuOffer | None, str]:
    if xml is None:
        return None, f"the {which}'s domain capabilities are unavailable"
    try:
        return parse_domain_capabilities(xml), ""
    except ET.ParseError as err:
        return None, f"the {which}'s domain capabilities are unreadable ({err})"


def _arch(domain_xml: str) -> str:
    os_type = ET.fromstring(domain_xml).find("os/type")
    return os_type.get("arch", "") if os_type is not None else ""


def _names(features: tuple[str, ...]) -> str:
    shown = ", ".join(features[:SHOWN_FEATURES])
    more = ", ..." if len(features) > SHOWN_FEATURES else ""
    return f"{shown}{more} ({len(features)})"


def _suggestion(src: HostCpuOffer | None, dst: HostCpuOffer) -> tuple[str | None, bool]:
    """A model to define the guest with, and whether it is known to run on both hosts."""
    if src is not None:
        both = common_models(src, dst)
        return (both[0], True) if both else (None, False)
    alone = common_models(dst, dst)
    return (alone[0], False) if alone else (None, False)


def _fix(src: HostCpuOffer | None, dst: HostCpuOffer, facts: CpuFacts) -> str:
    model, both = _suggestion(src, dst)
    where = "runs on both hosts" if both else "runs on the destination"
    parts = []
    if model is not None:
        parts.append(f"define the guest CPU as <model>{model}</model> ({where}) and restart it")
    if _baseline_cpu(facts) is not None:
        parts.append("use libvirt's baseline CPU for both hosts (see cpu.baseline)")
    parts.append("move the VM cold with <cpu mode='host-model'/> so the destination picks its CPU")
    return ", or ".join(parts)


def _baseline_cpu(facts: CpuFacts) -> DomainCpu | None:
    if not facts.libvirt_baseline_xml:
        return None
    try:
        cpu = parse_cpu_element(facts.libvirt_baseline_xml)
    except ET.ParseError:
        return None
    return cpu if cpu.model is not None else None


def _finding(verdict: Verdict, summary: str, evidence: dict[str, Any], fix: str = "") -> Finding:
    return Finding(COMPATIBLE, FAMILY, verdict, summary, evidence, fix)


def _lacking(src: HostCpuOffer, dst: HostCpuOffer) -> tuple[str, ...]:
    """Features the source's host-model has that the destination's (same model) lacks."""

    def policy(offer: HostCpuOffer, wanted: str) -> set[str]:
        return {f for f, p in offer.host_model_features.items() if p == wanted}

    lacking = (policy(src, "require") - policy(dst, "require")) | (
        policy(dst, "disable") - policy(src, "disable")
    )
    return tuple(sorted(lacking))


def _passthrough(
    cpu: DomainCpu, src: HostCpuOffer | None, dst: HostCpuOffer, why: str, facts: CpuFacts
) -> Finding:
    evidence: dict[str, Any] = {"mode": cpu.mode, "destination_host_model": dst.host_model}
    if cpu.mode == "host-passthrough" and not dst.passthrough_supported:
        return _finding(
            Verdict.FAIL,
            "the destination cannot run host-passthrough CPUs (no KVM there?)",
            evidence,
            _fix(src, dst, facts),
        )
    if src is None:
        return _finding(
            Verdict.SKIPPED,
            f"{cpu.mode} CPU not compared: {why}; it is only safe between identical host CPUs",
            evidence,
        )
    evidence["source_host_model"] = src.host_model
    same_cpu = (src.host_model, src.host_model_vendor) == (dst.host_model, dst.host_model_vendor)
    lacking = _lacking(src, dst) if same_cpu else ()
    evidence["destination_lacks"] = list(lacking)
    if same_cpu and src.host_model_features == dst.host_model_features:
        return _finding(
            Verdict.PASS,
            f"{cpu.mode}: both hosts offer the same CPU ({dst.host_model} with "
            f"{len(dst.host_model_features)} feature settings; stepping/microcode not compared)",
            evidence,
        )
    if not same_cpu or lacking:
        what = (
            f"the hosts' CPUs differ ({src.host_model_vendor} {src.host_model} -> "
            f"{dst.host_model_vendor} {dst.host_model})"
            if not same_cpu
            else f"the destination lacks {_names(lacking)}"
        )
        return _finding(
            Verdict.FAIL,
            f"{cpu.mode} CPU cannot move safely: {what}",
            evidence,
            _fix(src, dst, facts),
        )
    return _finding(
        Verdict.WARN,
        f"{cpu.mode}: the destination's {dst.host_model} has more features than the source's; "
        "the guest keeps the CPU it booted with, which usually works but is not guaranteed",
        evidence,
        _fix(src, dst, facts),
    )


def _named(cpu: DomainCpu, src: HostCpuOffer | None, dst: HostCpuOffer, facts: CpuFacts) -> Finding:
    model = cpu.model or ""
    missing = missing_features(cpu, dst)
    known = model in dst.usable
    unexplained = known and not dst.usable[model] and model not in dst.blockers
    verdict = facts.libvirt_compare
    evidence: dict[str, Any] = {
        "mode": cpu.mode,
        "model": model,
        "vendor": cpu.vendor,
        "missing": list(missing),
        "model_known_on_destination": known,
        "model_usable_on_destination": dst.usable.get(model),
        "unconfirmed_features": list(unconfirmed_features(cpu, dst)),
        "libvirt_compare": verdict,
        "libvirt_message": facts.libvirt_compare_message,
        "destination_host_model": dst.host_model,
        "suggested_model": _suggestion(src, dst)[0],
    }
    if missing:
        problem = f"destination cannot run CPU model {model}: missing features {_names(missing)}"
    elif not known:
        problem = f"the destination's QEMU does not know CPU model {model}"
    elif unexplained:
        problem = f"CPU model {model} is not usable on the destination (no blockers listed)"
    else:
        problem = ""
    if verdict == "incompatible" or (problem and verdict not in LIBVIRT_OK):
        summary = problem or (
            f"libvirt says the destination cannot run CPU model {model}: "
            f"{facts.libvirt_compare_message or 'incompatible'}"
        )
        return _finding(Verdict.FAIL, summary, evidence, _fix(src, dst, facts))
    if problem:
        return _finding(
            Verdict.WARN,
            f"libvirt accepts CPU model {model} ({verdict}), but the domain capabilities "
            f"disagree: {problem}",
            evidence,
        )
    if verdict == "error":
        return _finding(
            Verdict.WARN,
            f"libvirt could not compare CPU model {model} ({facts.libvirt_compare_message}); "
            "the destination's domain capabilities show nothing missing",
            evidence,
        )
    how = f"libvirt: {verdict}" if verdict else "domain capabilities; libvirt compare not run"
    return _finding(Verdict.PASS, f"the destination can run CPU model {model} ({how})", evidence)


def _libvirt_only(cpu: DomainCpu, why: str, facts: CpuFacts) -> Finding:
    """No destination domcaps: only libvirt's own comparison (if the glue got one) can answer."""
    evidence = {"mode": cpu.mode, "model": cpu.model, "libvirt_compare": facts.libvirt_compare}
    if facts.libvirt_compare == "incompatible":
        return _finding(
            Verdict.FAIL,
            "libvirt says the destination cannot run the guest CPU: "
            f"{facts.libvirt_compare_message or 'incompatible'}",
            evidence,
            "define a guest CPU model both hosts list as usable in their domain capabilities",
        )
    if facts.libvirt_compare in LIBVIRT_OK:
        return _finding(
            Verdict.PASS,
            f"the destination can run the guest CPU (libvirt: {facts.libvirt_compare})",
            evidence,
        )
    return _finding(Verdict.SKIPPED, f"CPU compatibility not checked: {why}", evidence)


def _default_model(src: HostCpuOffer | None, dst: HostCpuOffer, facts: CpuFacts) -> Finding:
    """No <cpu> (or no model in it): QEMU's default model for the architecture."""
    default = DEFAULT_MODELS.get(_arch(facts.domain_xml))
    evidence = {"mode": "none", "default_model": default}
    if default is None:
        summary = "no guest CPU model: QEMU's default for this architecture is used"
        return _finding(Verdict.PASS, summary, evidence)
    default_cpu = DomainCpu("custom", default, None, {}, None)
    if dst.usable.get(default, True) and not missing_features(default_cpu, dst):
        summary = f"no guest CPU model: QEMU's default {default} runs on the destination"
        return _finding(Verdict.PASS, summary, evidence)
    return _named(default_cpu, src, dst, facts)


def _compatible(
    cpu: DomainCpu,
    src: HostCpuOffer | None,
    dst: HostCpuOffer | None,
    why: str,
    facts: CpuFacts,
) -> Finding:
    if dst is None:
        return _libvirt_only(cpu, why, facts)
    if cpu.mode in ("host-passthrough", "maximum"):
        return _passthrough(cpu, src, dst, why, facts)
    if cpu.mode == "none":
        return _default_model(src, dst, facts)
    if cpu.model is None:  # inactive host-model: expanded again on the destination at start
        return _finding(
            Verdict.PASS,
            f"host-model: the destination will give the guest its own CPU ({dst.host_model})",
            {"mode": cpu.mode, "destination_host_model": dst.host_model},
        )
    return _named(cpu, src, dst, facts)


def _baseline(
    src: HostCpuOffer | None, dst: HostCpuOffer | None, why: str, facts: CpuFacts
) -> Finding:
    evidence: dict[str, Any] = {}
    common: list[str] = []
    if src is not None and dst is not None:
        common = common_models(src, dst)
        evidence["common_models"] = common[:TOP_MODELS]
        evidence["source_host_model"] = src.host_model
        evidence["destination_host_model"] = dst.host_model
    libvirt = _baseline_cpu(facts)
    if libvirt is not None:
        evidence["libvirt_baseline_model"] = libvirt.model
        evidence["libvirt_baseline_features"] = dict(libvirt.features)
        return Finding(
            BASELINE,
            FAMILY,
            Verdict.PASS,
            f"libvirt's baseline CPU for both hosts: {libvirt.model} with "
            f"{len(libvirt.features)} feature setting(s)",
            evidence,
        )
    if src is None or dst is None:
        return Finding(BASELINE, FAMILY, Verdict.SKIPPED, f"no common CPU model: {why}", evidence)
    if not common:
        return Finding(
            BASELINE,
            FAMILY,
            Verdict.WARN,
            "no named CPU model is usable on both hosts",
            evidence,
            "check that both hosts run the same architecture and a KVM-capable QEMU",
        )
    return Finding(
        BASELINE,
        FAMILY,
        Verdict.PASS,
        f"{common[0]} runs on both hosts (the most capable of {len(common)} common models)",
        evidence,
    )


def check_cpu(facts: CpuFacts) -> list[Finding]:
    """`cpu.compatible` and `cpu.baseline`; SKIPPED (never an exception) when data is missing."""
    try:
        cpu = parse_domain_cpu(facts.domain_xml)
    except ET.ParseError as err:
        why = f"the domain XML is unreadable ({err})"
        return [
            Finding(COMPATIBLE, FAMILY, Verdict.SKIPPED, f"CPU not checked: {why}"),
            Finding(BASELINE, FAMILY, Verdict.SKIPPED, f"no common CPU model: {why}"),
        ]
    src, src_why = _offer(facts.source_domcaps_xml, "source")
    dst, dst_why = _offer(facts.destination_domcaps_xml, "destination")
    why = "; ".join(w for w in (dst_why, src_why) if w)
    return [
        _compatible(cpu, src, dst, dst_why or src_why, facts),
        _baseline(src, dst, why, facts),
    ]
