"""The migration features table against what QEMU 7.2.22 and 10.0.2 answered in the lab, the
features a move needs from both sides, and the known incompatibilities matched as data."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from vmigrate.checks.versions import check_known_incompatibilities, check_migration_features
from vmigrate.cli.check import _features as check_cli_features
from vmigrate.events import Event, Notice
from vmigrate.live.policy import PRESETS
from vmigrate.live.request import LiveRequest, features_of, within_shared_features
from vmigrate.migration_features import FEATURES, features_used, offered
from vmigrate.model import Verdict
from vmigrate.preflight import default_features

from .test_checks import only
from .test_versions_capabilities import DATA, HOST_A, HOST_C, NEW, OLD, VERSIONS, guest_xml, move


def recorded_capabilities(prefix: str) -> set[str]:
    answer = json.loads((DATA / f"{prefix}-migrate-capabilities.json").read_text())
    return {entry["capability"] for entry in answer["return"]}


@pytest.mark.parametrize("prefix", [OLD, NEW])
def test_the_table_says_what_each_qemu_answered(prefix: str) -> None:
    libvirt, qemu = VERSIONS[prefix]
    table = {f.name for f in FEATURES} - {"tls"}  # tls is a parameter, not a capability
    assert offered(qemu, libvirt) - {"tls"} == recorded_capabilities(prefix) & table
    parameters = json.loads((DATA / f"{prefix}-migrate-parameters.json").read_text())["return"]
    assert ("tls" in offered(qemu, libvirt)) == ("tls-creds" in parameters)


def test_compress_and_block_are_gone_in_10_0() -> None:
    old, new = offered(7_002_022, 9_000_000), offered(10_000_002, 11_003_000)
    assert {"compress", "block"} <= old and not {"compress", "block"} & new
    assert {"postcopy-ram", "multifd", "xbzrle", "tls", "auto-converge"} <= old & new


def test_the_options_of_a_move_name_the_features_it_uses() -> None:
    use = features_used(postcopy=True, autoconverge=False, parallel=True, compressed=True, tls=True)
    assert use.required == ("multifd", "xbzrle", "tls")
    assert use.optional == ("postcopy-ram",)
    safe = features_of(
        LiveRequest("rv", "hostC", "hostA", PRESETS["safe"], parallel_connections=4), tls=False
    )
    assert safe.required == ("multifd",) and safe.optional == ("auto-converge",)
    # What `check` and the fleet assume: live's defaults (policy fast: post-copy allowed).
    default = default_features(tls=True)
    assert (default.required, default.optional) == (("tls",), ("postcopy-ram",))


def test_lab_hosts_share_every_feature_a_move_may_use() -> None:
    use = features_used(postcopy=True, autoconverge=True, parallel=True, compressed=True, tls=True)
    for source, destination in ((HOST_C, HOST_A), (HOST_A, HOST_C)):
        found = check_migration_features(
            move(source, destination, guest_xml("pc-i440fx-7.2"), features=use)
        )
        assert found == []  # nothing to say: `check` stays short


def test_an_option_one_side_lacks_fails_with_a_fix() -> None:
    old_qemu = replace(HOST_C, hypervisor_version=3_001_000, ref=replace(HOST_C.ref, name="old"))
    use = features_used(
        postcopy=True, autoconverge=False, parallel=True, compressed=False, tls=False
    )
    found = check_migration_features(
        move(HOST_A, old_qemu, guest_xml("pc-i440fx-7.2"), features=use)
    )
    multifd = only(found, "versions.migration-features", "multifd")
    assert multifd.verdict is Verdict.FAIL
    assert multifd.summary.startswith("--parallel needs multifd")
    assert "old" in multifd.summary and multifd.fix.startswith("move it without --parallel")
    # Post-copy is there since 2.6: no restriction for it.
    assert not [f for f in found if f.subject == "postcopy-ram"]


def test_an_optional_feature_one_side_lacks_restricts_the_policy() -> None:
    # QEMU 2.5 had no postcopy-ram (2.6 named it): the policy must not plan on it.
    ancient = replace(HOST_C, hypervisor_version=2_005_000)
    use = features_used(
        postcopy=True, autoconverge=False, parallel=False, compressed=False, tls=False
    )
    found = check_migration_features(move(HOST_A, ancient, guest_xml("pc"), features=use))
    postcopy = only(found, "versions.migration-features", "postcopy-ram")
    assert postcopy.verdict is Verdict.WARN and "will not use post-copy" in postcopy.summary
    notices: list[Event] = []
    request = LiveRequest("rv", "hostA", "hostC", PRESETS["fast"])
    limited = within_shared_features(request, HOST_A, ancient, notices.append)
    assert not limited.policy.postcopy_allowed
    assert limited.policy.autoconverge_at_start  # it throttles instead, as --policy safe
    assert notices == [Notice("post-copy is not used: one host's QEMU lacks postcopy-ram")]
    # Both sides have it: the request is left as it is, and nothing is said.
    assert within_shared_features(request, HOST_A, HOST_C, notices.append) is request
    assert len(notices) == 1


SMT = "<cpu><topology sockets='1' dies='1' cores='2' threads='2'/></cpu>"


def test_known_incompatibilities_match_versions_features_and_guest() -> None:
    # libvirt 11.3 with QEMU 10.0 on the destination, a guest with 2 threads per core.
    smt = only(
        check_known_incompatibilities(move(HOST_C, HOST_A, guest_xml("pc-i440fx-7.2", cpu=SMT))),
        "versions.known-incompatibility",
        "libvirt-ht-qemu-10",
    )
    assert smt.verdict is Verdict.FAIL and "extra features: ht" in smt.summary
    assert smt.fix.startswith("upgrade libvirt on hostA to 11.10")
    assert any("RHEL-104216" in r for r in smt.evidence["references"])
    fixed = replace(HOST_A, libvirt_version=11_010_000)
    found = check_known_incompatibilities(move(HOST_C, fixed, guest_xml("pc-i440fx-7.2", cpu=SMT)))
    assert "libvirt-ht-qemu-10" not in {f.subject for f in found}
    # QEMU gitlab #2720: multifd from QEMU < 9.0 into 9.2.0, only when the move uses multifd.
    qemu_9_2 = replace(HOST_A, hypervisor_version=9_002_000)
    multifd = features_used(
        postcopy=False, autoconverge=False, parallel=True, compressed=False, tls=False
    )
    with_multifd = check_known_incompatibilities(
        move(HOST_C, qemu_9_2, guest_xml("pc-i440fx-7.2"), features=multifd)
    )
    assert only(with_multifd, "versions.known-incompatibility", "qemu-2720-multifd").verdict is (
        Verdict.FAIL
    )
    without = check_known_incompatibilities(move(HOST_C, qemu_9_2, guest_xml("pc-i440fx-7.2")))
    assert "qemu-2720-multifd" not in {f.subject for f in without}


def test_a_move_between_equal_new_hosts_matches_none() -> None:
    host_b = replace(HOST_A, ref=replace(HOST_A.ref, name="hostB"))
    found = check_known_incompatibilities(move(HOST_A, host_b, guest_xml("pc-i440fx-10.0")))
    assert found == []


def test_check_asks_about_the_options_live_would_use() -> None:
    src, dst = "qemu+tls://127.0.0.2/system", "qemu+tls://127.0.0.3/system"
    parallel = check_cli_features(src, dst, None, None, "fast", 4, True)
    # As `live` resolves it: multifd takes post-copy off the policy, which throttles instead.
    assert parallel.required == ("multifd", "xbzrle")
    assert parallel.optional == ("auto-converge",)
    default = check_cli_features(src, dst, None, True, "fast", None, False)
    assert (default.required, default.optional) == (("tls",), ("postcopy-ram",))
