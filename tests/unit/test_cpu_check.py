"""CPU compatibility over real domain capabilities (AMD EPYC-Rome, Intel GraniteRapids, TCG)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmigrate.checks.cpu import CpuFacts, check_cpu
from vmigrate.domxml.cpu import (
    AMD_FAMILIES,
    GENERIC_MODELS,
    INTEL_FAMILIES,
    DomainCpu,
    common_models,
    cpu_xml_element,
    missing_features,
    model_family,
    parse_cpu_element,
    parse_domain_capabilities,
    parse_domain_cpu,
)
from vmigrate.model import Finding, Verdict

DATA = Path(__file__).parent / "data" / "cpu"
AMD_XML = (DATA / "domcaps-amd-epyc-rome.xml").read_text()
INTEL_XML = (DATA / "domcaps-intel-graniterapids.xml").read_text()
TCG_XML = (DATA / "domcaps-tcg.xml").read_text()
ROME_GUEST = (DATA / "domain-epyc-rome-live.xml").read_text()
ICE_GUEST = (DATA / "domain-icelake.xml").read_text()
AMD = parse_domain_capabilities(AMD_XML)
INTEL = parse_domain_capabilities(INTEL_XML)
TCG = parse_domain_capabilities(TCG_XML)

# What the Intel host's domcaps list as blockers for EPYC-Rome, plus three features the
# guest's live XML requires (from the AMD host-model) that other models' blockers on the
# Intel host show to be absent there.
ROME_ON_INTEL = (
    "clzero",
    "cr8legacy",
    "fxsr_opt",
    "ibpb-brtype",
    "lfence-always-serializing",
    "misalignsse",
    "mmxext",
    "null-sel-clr-base",
    "osvw",
    "perfctr_core",
    "sse4a",
    "xsaveerptr",
)


def domain(cpu: str = "", arch: str = "x86_64") -> str:
    return (
        f"<domain type='kvm'><name>g</name><os><type arch='{arch}'>hvm</type></os>{cpu}"
        "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>"
    )


def facts(
    domain_xml: str,
    source: str | None = AMD_XML,
    destination: str | None = INTEL_XML,
    compare: str | None = None,
    **rest: str,
) -> CpuFacts:
    return CpuFacts(domain_xml, source, destination, compare, **rest)


def by_check(findings: list[Finding]) -> dict[str, Finding]:
    assert [f.family for f in findings] == ["cpu", "cpu"]
    return {f.check: f for f in findings}


# --- parsing -------------------------------------------------------------------------------


def test_parse_amd_domcaps() -> None:
    assert (AMD.arch, AMD.host_model, AMD.host_model_vendor) == ("x86_64", "EPYC-Rome", "AMD")
    assert AMD.host_model_features["xsaves"] == "disable"
    assert AMD.host_model_features["invtsc"] == "require"
    assert AMD.passthrough_supported
    assert AMD.usable["EPYC"] and AMD.usable["EPYC-v2"] and AMD.usable["SandyBridge"]
    assert not AMD.usable["Icelake-Server"] and not AMD.usable["EPYC-Milan"]
    # The host-model's own model is unusable as-is: host-model switches xsaves off.
    assert not AMD.usable["EPYC-Rome"]
    assert AMD.blockers["EPYC-Rome"] == ("xsaves",)
    assert AMD.blockers["EPYC-Rome-v2"] == ("ibrs", "xsaves")
    assert AMD.vendors["EPYC-Rome"] == "AMD" and AMD.vendors["qemu64"] == "unknown"
    assert AMD.canonical["EPYC-Rome"] == "EPYC-Rome-v1"
    assert "EPYC" not in AMD.blockers  # usable models carry no blockers
    assert len(AMD.usable) == 150


def test_parse_intel_domcaps() -> None:
    assert (INTEL.host_model, INTEL.host_model_vendor) == ("GraniteRapids", "Intel")
    assert INTEL.usable["Icelake-Server"] and INTEL.usable["SapphireRapids-v1"]
    assert not INTEL.usable["SapphireRapids-v2"] and not INTEL.usable["EPYC"]
    assert not INTEL.usable["GraniteRapids"]  # same pattern: host-model disables 5 "-no" bits
    assert INTEL.blockers["GraniteRapids"] == (
        "fbsdp-no",
        "mcdt-no",
        "pbrsb-no",
        "psdp-no",
        "sbdr-ssdp-no",
    )
    assert "sse4a" in INTEL.blockers["EPYC-Rome"]
    assert "sse4a" in INTEL.absent_features


def test_parse_tcg_domcaps_has_no_passthrough() -> None:
    assert not TCG.passthrough_supported
    assert TCG.host_model == "EPYC"


def test_parse_live_domain_cpu() -> None:
    cpu = parse_domain_cpu(ROME_GUEST)
    assert (cpu.mode, cpu.model, cpu.vendor, cpu.check) == ("custom", "EPYC-Rome", "AMD", "full")
    assert cpu.features == AMD.host_model_features


@pytest.mark.parametrize(
    ("cpu", "mode", "model"),
    [
        ("", "none", None),
        ("<cpu><topology sockets='1' dies='1' cores='2' threads='1'/></cpu>", "none", None),
        ("<cpu mode='host-model' check='partial'/>", "host-model", None),
        ("<cpu mode='host-passthrough' migratable='on'/>", "host-passthrough", None),
        ("<cpu mode='maximum'/>", "maximum", None),
        ("<cpu match='exact'><model>Haswell</model></cpu>", "custom", "Haswell"),
    ],
)
def test_parse_domain_cpu_modes(cpu: str, mode: str, model: str | None) -> None:
    parsed = parse_domain_cpu(domain(cpu))
    assert (parsed.mode, parsed.model) == (mode, model)


def test_cpu_xml_element_round_trips() -> None:
    cpu = parse_domain_cpu(ROME_GUEST)
    xml = cpu_xml_element(cpu)
    assert xml.startswith('<cpu mode="custom" match="exact" check="full">')
    assert "<arch>" not in xml  # a guest CPU, so libvirt honours the policies
    assert parse_cpu_element(xml) == cpu
    assert cpu_xml_element(parse_domain_cpu(domain("<cpu mode='host-passthrough'/>"))) == (
        '<cpu mode="host-passthrough" />'
    )
    with pytest.raises(ValueError, match="no <cpu>"):
        cpu_xml_element(parse_domain_cpu(domain()))


# --- missing features and common models ---------------------------------------------------


def test_missing_features_amd_guest() -> None:
    cpu = parse_domain_cpu(ROME_GUEST)
    assert missing_features(cpu, INTEL) == ROME_ON_INTEL
    assert missing_features(cpu, AMD) == ()  # xsaves is blocked, but the guest disables it
    plain = DomainCpu("custom", "EPYC-Rome", "AMD", {}, None)
    assert missing_features(plain, AMD) == ("xsaves",)


def test_missing_features_intel_guest() -> None:
    cpu = parse_domain_cpu(ICE_GUEST)
    missing = missing_features(cpu, AMD)
    assert "avx512f" in missing and "la57" in missing
    assert "hle" not in missing and "rtm" not in missing  # disabled by the guest
    assert set(missing) == set(AMD.blockers["Icelake-Server"]) - {"hle", "rtm"}
    assert missing_features(cpu, INTEL) == ()


def test_common_models_amd_intel() -> None:
    common = common_models(AMD, INTEL)
    assert all(AMD.usable[m] and INTEL.usable[m] for m in common)
    assert set(common) == {m for m, ok in AMD.usable.items() if ok and INTEL.usable.get(m)}
    assert common[:6] == [
        "SandyBridge-v1",
        "SandyBridge",
        "Westmere-v1",
        "Westmere",
        "Nehalem-v1",
        "Nehalem",
    ]
    assert "EPYC" not in common and "Icelake-Server" not in common
    assert common.index("Conroe") < common.index("Opteron_G1")  # 2006 before 2003
    generic = [m for m in common if model_family(m, AMD.canonical)[0] in GENERIC_MODELS]
    assert common[-len(generic) :] == generic  # generic models only at the end
    assert generic[:2] == ["qemu64-v1", "qemu64"] and generic[-1] == "486"


def test_common_models_ordering_within_vendor() -> None:
    intel = common_models(INTEL, INTEL)
    assert intel[:3] == ["SapphireRapids-v1", "SapphireRapids", "Icelake-Server-v7"]
    assert intel.index("Icelake-Server-noTSX") == intel.index("Icelake-Server-v2") + 1
    assert intel.index("Cascadelake-Server-v5") < intel.index("Skylake-Server-v5")
    assert intel.index("Skylake-Server") < intel.index("Skylake-Client-v4")
    assert intel.index("Haswell") < intel.index("Snowridge-v4")  # Atom-class after main line
    assert common_models(AMD, AMD)[:4] == ["EPYC-v2", "EPYC-IBPB", "EPYC-v1", "EPYC"]
    amd_only = common_models(AMD, INTEL, vendor="amd")
    assert amd_only[:4] == ["Opteron_G2-v1", "Opteron_G2", "Opteron_G1-v1", "Opteron_G1"]
    assert all(AMD.vendors[m] in ("AMD", "unknown") for m in amd_only)


@pytest.mark.parametrize("families", [INTEL_FAMILIES, AMD_FAMILIES])
def test_generation_lists_are_in_year_order(families: tuple[tuple[str, int], ...]) -> None:
    years = [year for _name, year in families]
    assert years == sorted(years) and len(set(years)) == len(years)


def test_model_family() -> None:
    assert model_family("Skylake-Server-noTSX-IBRS", INTEL.canonical) == ("Skylake-Server", 3)
    assert model_family("Skylake-Server-noTSX-IBRS") == ("Skylake-Server", 1)
    assert model_family("EPYC-Rome-v4") == ("EPYC-Rome", 4)
    assert model_family("EPYC-IBPB", AMD.canonical) == ("EPYC", 2)


# --- check_cpu -----------------------------------------------------------------------------


def test_amd_guest_to_intel_fails_naming_features() -> None:
    found = by_check(check_cpu(facts(ROME_GUEST, compare="incompatible")))
    compatible = found["cpu.compatible"]
    assert compatible.verdict is Verdict.FAIL
    assert compatible.summary.startswith(
        "destination cannot run CPU model EPYC-Rome: missing features clzero, cr8legacy"
    )
    assert compatible.summary.endswith("(12)")
    assert compatible.evidence["missing"] == list(ROME_ON_INTEL)
    assert compatible.evidence["mode"] == "custom"
    assert compatible.evidence["libvirt_compare"] == "incompatible"
    assert "<model>SandyBridge-v1</model> (runs on both hosts)" in compatible.fix
    baseline = found["cpu.baseline"]
    assert baseline.verdict is Verdict.PASS
    assert baseline.summary.startswith("SandyBridge-v1 runs on both hosts")
    assert baseline.evidence["common_models"][:2] == ["SandyBridge-v1", "SandyBridge"]


def test_amd_guest_to_amd_passes() -> None:
    found = by_check(check_cpu(facts(ROME_GUEST, destination=AMD_XML, compare="identical")))
    assert found["cpu.compatible"].verdict is Verdict.PASS
    assert found["cpu.compatible"].evidence["missing"] == []
    assert "identical" in found["cpu.compatible"].summary
    # Without libvirt's answer the domain capabilities alone still say yes.
    alone = by_check(check_cpu(facts(ROME_GUEST, destination=AMD_XML)))["cpu.compatible"]
    assert alone.verdict is Verdict.PASS
    assert "libvirt compare not run" in alone.summary


def test_intel_guest_to_amd_fails_with_model_usable_on_both() -> None:
    found = by_check(check_cpu(facts(ICE_GUEST, source=INTEL_XML, destination=AMD_XML)))
    compatible = found["cpu.compatible"]
    assert compatible.verdict is Verdict.FAIL
    assert "Icelake-Server" in compatible.summary and "avx512f" in compatible.summary
    suggested = compatible.evidence["suggested_model"]
    assert AMD.usable[suggested] and INTEL.usable[suggested]
    assert f"<model>{suggested}</model>" in compatible.fix
    assert by_check(check_cpu(facts(ICE_GUEST, source=AMD_XML)))["cpu.compatible"].verdict is (
        Verdict.PASS
    )


def test_libvirt_disagreeing_or_erroring_is_a_warning() -> None:
    found = by_check(check_cpu(facts(ROME_GUEST, compare="superset")))
    assert found["cpu.compatible"].verdict is Verdict.WARN
    errored = facts(ROME_GUEST, destination=AMD_XML, compare="error")
    assert by_check(check_cpu(errored))["cpu.compatible"].verdict is Verdict.WARN


def test_unknown_model_on_destination_fails() -> None:
    cpu = "<cpu mode='custom' match='exact'><model>Zen9000</model></cpu>"
    found = by_check(check_cpu(facts(domain(cpu))))["cpu.compatible"]
    assert found.verdict is Verdict.FAIL
    assert "does not know CPU model Zen9000" in found.summary


def test_host_passthrough_between_amd_and_intel_fails() -> None:
    passthrough = domain("<cpu mode='host-passthrough' check='none' migratable='on'/>")
    found = by_check(check_cpu(facts(passthrough)))["cpu.compatible"]
    assert found.verdict is Verdict.FAIL
    assert "AMD EPYC-Rome -> Intel GraniteRapids" in found.summary
    same = by_check(check_cpu(facts(passthrough, source=AMD_XML, destination=AMD_XML)))
    assert same["cpu.compatible"].verdict is Verdict.PASS
    tcg = by_check(check_cpu(facts(passthrough, destination=TCG_XML)))["cpu.compatible"]
    assert tcg.verdict is Verdict.FAIL and "cannot run host-passthrough" in tcg.summary


def test_host_passthrough_to_a_richer_same_model_host_warns() -> None:
    richer = AMD_XML.replace(
        "<feature policy='disable' name='xsaves'/>\n    </mode>",
        "<feature policy='require' name='xsaves'/>\n    </mode>",
    )
    assert parse_domain_capabilities(richer).host_model_features["xsaves"] == "require"
    passthrough = domain("<cpu mode='host-passthrough'/>")
    forward = by_check(check_cpu(facts(passthrough, source=AMD_XML, destination=richer)))
    assert forward["cpu.compatible"].verdict is Verdict.WARN
    back = by_check(check_cpu(facts(passthrough, source=richer, destination=AMD_XML)))
    assert back["cpu.compatible"].verdict is Verdict.FAIL
    assert back["cpu.compatible"].evidence["destination_lacks"] == ["xsaves"]


def test_domain_without_cpu_passes() -> None:
    found = by_check(check_cpu(facts(domain())))
    assert found["cpu.compatible"].verdict is Verdict.PASS
    assert "qemu64" in found["cpu.compatible"].summary
    assert found["cpu.compatible"].evidence["default_model"] == "qemu64"
    tcg = by_check(check_cpu(facts(domain(), source=TCG_XML, destination=TCG_XML)))
    assert tcg["cpu.compatible"].verdict is Verdict.PASS


def test_inactive_host_model_passes() -> None:
    found = by_check(check_cpu(facts(domain("<cpu mode='host-model'/>"))))
    assert found["cpu.compatible"].verdict is Verdict.PASS
    assert "GraniteRapids" in found["cpu.compatible"].summary


@pytest.mark.parametrize(
    ("source", "destination", "compatible", "baseline"),
    [
        (AMD_XML, None, Verdict.SKIPPED, Verdict.SKIPPED),
        (None, INTEL_XML, Verdict.FAIL, Verdict.SKIPPED),  # the destination alone suffices
        (None, None, Verdict.SKIPPED, Verdict.SKIPPED),
        (AMD_XML, "<domainCapabilities", Verdict.SKIPPED, Verdict.SKIPPED),
    ],
)
def test_missing_domcaps_are_skipped(
    source: str | None, destination: str | None, compatible: Verdict, baseline: Verdict
) -> None:
    found = by_check(check_cpu(facts(ROME_GUEST, source=source, destination=destination)))
    assert found["cpu.compatible"].verdict is compatible
    assert found["cpu.baseline"].verdict is baseline
    if baseline is Verdict.SKIPPED:
        assert "domain capabilities are" in found["cpu.baseline"].summary


def test_passthrough_without_source_domcaps_is_skipped() -> None:
    passthrough = domain("<cpu mode='host-passthrough'/>")
    found = by_check(check_cpu(facts(passthrough, source=None)))["cpu.compatible"]
    assert found.verdict is Verdict.SKIPPED
    assert "source's domain capabilities are unavailable" in found.summary


def test_libvirt_answer_without_domcaps() -> None:
    no_caps = facts(ROME_GUEST, source=None, destination=None, compare="incompatible")
    assert by_check(check_cpu(no_caps))["cpu.compatible"].verdict is Verdict.FAIL
    ok = facts(ROME_GUEST, source=None, destination=None, compare="superset")
    assert by_check(check_cpu(ok))["cpu.compatible"].verdict is Verdict.PASS


def test_unknown_domain_and_bad_xml_never_crash() -> None:
    unknown = CpuFacts("<domain/>", None, None, None)  # what the glue sends without a domain
    assert {f.verdict for f in check_cpu(unknown)} == {Verdict.SKIPPED}
    broken = facts("<domain><cpu>")
    assert {f.verdict for f in check_cpu(broken)} == {Verdict.SKIPPED}


def test_libvirt_baseline_is_preferred() -> None:
    answer = (
        "<cpu mode='custom' match='exact'><model fallback='forbid'>Westmere</model>"
        "<vendor>Intel</vendor><feature policy='require' name='pclmuldq'/>"
        "<feature policy='disable' name='x2apic'/></cpu>"
    )
    found = by_check(check_cpu(facts(ROME_GUEST, libvirt_baseline_xml=answer)))
    baseline = found["cpu.baseline"]
    assert baseline.verdict is Verdict.PASS
    assert "Westmere" in baseline.summary and "2 feature" in baseline.summary
    assert baseline.evidence["libvirt_baseline_features"] == {
        "pclmuldq": "require",
        "x2apic": "disable",
    }
    assert "libvirt's baseline" in found["cpu.compatible"].fix


def test_findings_serialise() -> None:
    for finding in check_cpu(facts(ROME_GUEST)):
        assert finding.to_dict()["verdict"] in {v.value for v in Verdict}
