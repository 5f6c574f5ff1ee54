"""`cold --adapt`'s rewrite over the capabilities recorded from both lab versions (Debian 12's
libvirt 9.0 / QEMU 7.2 and backports' libvirt 11.3 / QEMU 10.0, tests/unit/data/versions),
and what the cold move keeps of it in the job store."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from vmigrate.cli.main import cli
from vmigrate.cold.adaptation import (
    KeptOriginal,
    _note,
    _refusal,
    _still_adapted,
    answered_by,
    kept_original,
    refuse_failed,
    refuse_state_across,
)
from vmigrate.cold.plan import ColdPlan
from vmigrate.cold.steps import ColdRequest
from vmigrate.domxml.adapt import (
    CPU,
    DEVICE,
    DROPPED,
    MACHINE,
    RESTORED,
    AdaptChange,
    Destination,
    adapt_domain,
    destination_from_xml,
    machine_family,
    restore_original,
)
from vmigrate.domxml.cpu import parse_domain_capabilities
from vmigrate.errors import MigrationRefused
from vmigrate.facts import HostFacts
from vmigrate.hosts import HostRef
from vmigrate.model import CheckReport, Finding, Mode, Verdict
from vmigrate.store import JobStore

DATA = Path(__file__).parent / "data"
OLD = "libvirt-9.0.0-qemu-7.2.22"
NEW = "libvirt-11.3.0-qemu-10.0.2"
#: A lab guest as libvirt 11.3 defined it on hostA (recorded in stores/lab-issue27.sqlite):
#: machine 'pc' expanded to pc-i440fx-10.0.
LAB_GUEST = (DATA / "domains" / "lab-guest-pc-i440fx-10.0.xml").read_text()
#: The same guest made a desktop on QEMU 7.2: q35, spice console, qxl, spicevmc channels.
DESKTOP = (DATA / "domains" / "desktop-spice-pc-q35-7.2.xml").read_text()


def recorded(prefix: str, kind: str) -> str:
    return (DATA / "versions" / f"{prefix}-{kind}.xml").read_text()


def destination(prefix: str, name: str, qemu: str, accel: str = "tcg") -> Destination:
    return destination_from_xml(
        name,
        recorded(prefix, "capabilities"),
        recorded(prefix, f"domcaps-{accel}"),
        arch="x86_64",
        virt_type="qemu" if accel == "tcg" else "kvm",
        qemu=qemu,
    )


HOST_C = destination(OLD, "hostC", "7.2.22")
HOST_A = destination(NEW, "hostA", "10.0.2")
NEW_CPU = parse_domain_capabilities(recorded(NEW, "domcaps-tcg"))


def machine_of(xml: str) -> str:
    element = ET.fromstring(xml).find("os/type")
    assert element is not None
    return element.get("machine", "")


def with_machine(xml: str, machine: str) -> str:
    return xml.replace("machine='pc-i440fx-10.0'", f"machine='{machine}'")


def with_cpu(xml: str, cpu: str) -> str:
    old = (
        "<cpu mode='custom' match='exact' check='none'>\n"
        "    <model fallback='forbid'>qemu64</model>\n  </cpu>"
    )
    assert old in xml
    return xml.replace(old, cpu)


def with_device(xml: str, device: str) -> str:
    return xml.replace("<memballoon model='none'/>", f"{device}\n    <memballoon model='none'/>")


@pytest.mark.parametrize(
    ("machine", "adapted"),
    [
        ("pc-i440fx-10.0", "pc-i440fx-7.2"),
        ("pc-q35-10.0", "pc-q35-7.2"),
        ("pc-q35-9.1", "pc-q35-7.2"),
    ],
)
def test_a_machine_type_older_qemu_lacks_becomes_its_newest_of_the_same_family(
    machine: str, adapted: str
) -> None:
    result = adapt_domain(with_machine(LAB_GUEST, machine), HOST_C)
    assert [c.part for c in result.changes] == [MACHINE]  # qemu64 runs there: kept
    change = result.changes[0]
    assert (change.before, change.after) == (machine, adapted)
    family = machine.rsplit("-", 1)[0]
    assert change.why == (
        f"{machine} is unknown to hostC's QEMU 7.2.22; {adapted} is its newest {family}"
    )
    assert machine_of(result.xml) == adapted
    assert not result.blockers
    # A KVM host's capabilities list the same machine types.
    kvm = adapt_domain(with_machine(LAB_GUEST, machine), destination(OLD, "hostC", "7.2", "kvm"))
    assert machine_of(kvm.xml) == adapted


def test_a_guest_the_destination_runs_is_left_exactly_as_it_is() -> None:
    for guest, host in ((LAB_GUEST, HOST_A), (with_machine(LAB_GUEST, "pc-i440fx-7.2"), HOST_C)):
        result = adapt_domain(guest, host)
        assert result.changes == () and result.blockers == ()
        assert result.xml == guest
    # Older to newer: the newer QEMU still knows pc-q35-7.2, and qemu64 runs on both.
    assert (
        machine_of(adapt_domain(with_machine(LAB_GUEST, "pc-q35-7.2"), HOST_A).xml) == "pc-q35-7.2"
    )


def test_machine_family_reads_versions_of_every_shape() -> None:
    assert machine_family("pc-i440fx-10.0") == ("pc-i440fx", (10, 0))
    assert machine_family("pc-q35-4.0.1") == ("pc-q35", (4, 0, 1))
    assert machine_family("pc-q35-rhel9.2.0") == ("pc-q35-rhel", (9, 2, 0))
    assert machine_family("pc") is None and machine_family("microvm") is None


def test_a_machine_family_the_destination_lacks_is_a_blocker() -> None:
    result = adapt_domain(with_machine(LAB_GUEST, "pc-virt-11.0"), HOST_C)
    assert result.changes == ()
    assert result.blockers == (
        "machine type pc-virt-11.0 is unknown to hostC's QEMU 7.2.22, which has no pc-virt-* "
        "machine type either",
    )


def test_a_cpu_model_the_older_qemu_does_not_know_becomes_one_both_hosts_run() -> None:
    guest = with_cpu(
        LAB_GUEST,
        "<cpu mode='custom' match='exact' check='partial'>\n"
        "    <model fallback='forbid'>Westmere-v1</model>\n"
        "    <topology sockets='1' dies='1' clusters='1' cores='1' threads='1'/>\n"
        "  </cpu>",
    )
    result = adapt_domain(guest, HOST_C, NEW_CPU)
    cpu = next(c for c in result.changes if c.part == CPU)
    assert (cpu.before, cpu.after) == ("custom Westmere-v1", "custom Westmere")
    assert "does not know CPU model Westmere-v1" in cpu.why and "both run" in cpu.why
    element = ET.fromstring(result.xml).find("cpu")
    assert element is not None and element.findtext("model") == "Westmere"
    assert element.find("topology") is not None  # the guest's shape is kept
    # Without the source's offer: the most capable Intel model the destination runs.
    alone = next(c for c in adapt_domain(guest, HOST_C).changes if c.part == CPU)
    assert alone.after == "custom Westmere" and "both" not in alone.why


def test_host_passthrough_on_a_host_without_kvm_becomes_a_named_model() -> None:
    guest = with_cpu(LAB_GUEST, "<cpu mode='host-passthrough' check='none'/>")
    cpu = next(c for c in adapt_domain(guest, HOST_C).changes if c.part == CPU)
    assert cpu.before == "host-passthrough" and cpu.after.startswith("custom ")
    assert "host-passthrough needs KVM" in cpu.why


def test_a_spice_desktop_moving_to_a_qemu_without_spice_gets_vnc_and_loses_its_channels() -> None:
    result = adapt_domain(DESKTOP, HOST_A, parse_domain_capabilities(recorded(OLD, "domcaps-tcg")))
    assert [(c.what, c.before, c.after) for c in result.changes] == [
        ("graphics", "graphics spice", "graphics vnc"),
        ("channel", "channel spicevmc", DROPPED),
        ("redirdev", "redirdev spicevmc", DROPPED),
        ("video", "video qxl", "video virtio"),
        ("audio", "audio spice", "audio none"),
    ]
    assert result.changes[0].why == "hostA's QEMU 10.0.2 offers no graphics type spice"
    root = ET.fromstring(result.xml)
    graphics = root.find("devices/graphics")
    assert graphics is not None and graphics.get("listen") == "127.0.0.1"
    assert graphics.find("image") is None  # spice's own settings go with it
    model = root.find("devices/video/model")
    assert model is not None and model.attrib == {"type": "virtio", "heads": "1", "primary": "yes"}
    assert machine_of(result.xml) == "pc-q35-7.2"  # QEMU 10.0 still runs it: untouched
    assert root.find("devices/rng") is not None and not result.blockers


def test_a_device_kind_older_libvirt_does_not_report_is_unknown_not_unsupported() -> None:
    # libvirt 9.0's domcaps have no <panic> section: nothing to adapt.
    guest = with_device(with_machine(LAB_GUEST, "pc-i440fx-7.2"), "<panic model='pvpanic'/>")
    assert adapt_domain(guest, HOST_C).changes == ()


@pytest.mark.parametrize(
    ("device", "words"),
    [
        (
            "<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>",
            "tpm tpm-crb: hostC's QEMU 7.2.22 offers no tpm type emulator",
        ),
        (
            "<disk type='file' device='disk'><source file='/x.img'/>"
            "<target dev='sdb' bus='xen'/></disk>",
            "offers no disk bus xen",
        ),
    ],
)
def test_a_device_that_holds_data_or_keys_is_never_dropped(device: str, words: str) -> None:
    result = adapt_domain(with_device(LAB_GUEST, device), HOST_C)
    assert len(result.blockers) == 1 and words in result.blockers[0]
    assert "holds the guest's data or keys" in result.blockers[0]


def test_moving_back_restores_every_part_the_destination_runs() -> None:
    there = adapt_domain(LAB_GUEST, HOST_C)
    back = restore_original(there.xml, LAB_GUEST, there.changes, HOST_A, job_id=7)
    assert [(c.what, c.before, c.after, c.kind, c.job_id) for c in back.changes] == [
        ("machine", "pc-i440fx-7.2", "pc-i440fx-10.0", RESTORED, 7)
    ]
    assert back.changes[0].why == "restored from job 7: hostA runs the original"
    assert machine_of(back.xml) == "pc-i440fx-10.0"
    # The desktop's devices too, each part as it was.
    desktop = adapt_domain(DESKTOP, HOST_A)
    home = restore_original(desktop.xml, DESKTOP, desktop.changes, HOST_C, job_id=8)
    assert {c.part for c in home.changes} == {
        DEVICE + tag for tag in ("graphics", "channel", "redirdev", "video", "audio")
    }
    assert adapt_domain(home.xml, HOST_C).changes == ()
    restored = ET.fromstring(home.xml)
    assert [e.get("type") for e in restored.findall("devices/graphics")] == ["spice"]
    assert restored.find("devices/graphics/image") is not None


def test_a_part_the_destination_cannot_run_or_that_was_changed_since_stays() -> None:
    there = adapt_domain(LAB_GUEST, HOST_C)
    # Another host on QEMU 7.2: the original machine type does not run there either.
    same = restore_original(there.xml, LAB_GUEST, there.changes, HOST_C, job_id=7)
    assert same.changes == () and same.xml == there.xml
    assert same.skipped == ("machine pc-i440fx-10.0: hostC cannot run it; kept pc-i440fx-7.2",)
    # Changed by hand since: the user's choice is kept.
    edited = with_machine(LAB_GUEST, "pc-i440fx-8.0")
    kept = restore_original(edited, LAB_GUEST, there.changes, HOST_A, job_id=7)
    assert kept.changes == ()
    assert kept.skipped == ("machine is pc-i440fx-8.0, not pc-i440fx-7.2 as job 7 left it",)
    other = LAB_GUEST.replace("d6526bde", "00000000")
    assert restore_original(other, LAB_GUEST, there.changes, HOST_A, 7).changes == ()


def test_changes_round_trip_through_the_plan_with_from_and_to() -> None:
    change = adapt_domain(LAB_GUEST, HOST_C).changes[0]
    assert (
        change.to_dict()["from"] == "pc-i440fx-10.0" and change.to_dict()["to"] == "pc-i440fx-7.2"
    )
    plan = ColdPlan(
        "vm1", "running", True, False, True, (), (), LAB_GUEST, "<domain/>", (),
        adapt_changes=(change,), original_xml=LAB_GUEST, still_adapted=(change,),
    )  # fmt: skip
    data = plan.to_dict()
    assert (
        data["adapt_changes"][0]["what"] == "machine" and "before" not in data["adapt_changes"][0]
    )
    assert ColdPlan.from_dict(data) == plan


def test_still_adapted_keeps_each_part_from_the_original() -> None:
    first = AdaptChange("machine", "pc-i440fx-10.0", "pc-i440fx-8.0", "a", MACHINE)
    kept_from = KeptOriginal(1, LAB_GUEST, (first,))
    second = AdaptChange("machine", "pc-i440fx-8.0", "pc-i440fx-7.2", "b", MACHINE)
    cpu = AdaptChange("cpu", "custom X", "custom Y", "c", CPU)
    merged = _still_adapted(kept_from, (), (second, cpu))
    assert [(c.part, c.before, c.after) for c in merged] == [
        (MACHINE, "pc-i440fx-10.0", "pc-i440fx-7.2"),
        (CPU, "custom X", "custom Y"),
    ]
    restored = AdaptChange("machine", "pc-i440fx-7.2", "pc-i440fx-10.0", "r", MACHINE, RESTORED, 3)
    assert _still_adapted(kept_from, (restored,), ()) == ()


def _cold_job(store: JobStore, vm: str, plan: ColdPlan, state: str = "completed") -> int:
    job = store.create_job("cold", vm, "hostA", "hostC", {"plan": plan.to_dict()})
    store.finish_job(job, state, "", {})
    return job


def test_the_store_keeps_the_original_until_a_move_puts_it_back(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    there = adapt_domain(LAB_GUEST, HOST_C)
    uuid = "d6526bde-c840-41f9-9054-23d84823252a"
    adapted = ColdPlan(
        "vm1", "running", True, False, True, (), (), LAB_GUEST, there.xml, (),
        adapt_changes=there.changes, original_xml=LAB_GUEST, still_adapted=there.changes,
    )  # fmt: skip
    plain = ColdPlan("vm1", "running", True, False, True, (), (), there.xml, there.xml, ())
    with JobStore(path) as store:
        assert kept_original(path, "vm1", uuid) is None
        job = _cold_job(store, "vm1", adapted)
        _cold_job(store, "vm1", plain)  # a plain move between old hosts: still adapted
        _cold_job(store, "vm1", adapted, state="rolled back")  # never took effect
        kept = kept_original(path, "vm1", uuid)
        assert kept is not None and kept.job_id == job and kept.original_xml == LAB_GUEST
        assert kept.adapted == there.changes
        assert kept_original(path, "vm1", "another-uuid") is None
        back = restore_original(there.xml, LAB_GUEST, kept.adapted, HOST_A, kept.job_id)
        restored = ColdPlan(
            "vm1", "running", True, False, True, (), (), there.xml, back.xml, (),
            adapt_changes=back.changes,
        )  # fmt: skip
        _cold_job(store, "vm1", restored)
        assert kept_original(path, "vm1", uuid) is None


def _finding(check: str, family: str) -> Finding:
    return Finding(check, family, Verdict.FAIL, f"{check} failed", {}, "fix it")


def _report(*findings: Finding) -> CheckReport:
    return CheckReport("vm1", "hostA", "hostC", Mode.COLD, False, findings, 0.1)


def test_failed_checks_adapt_answers_wait_for_the_plan_others_refuse() -> None:
    machine = _finding("machine.available", "machine")
    request = ColdRequest("vm1", "hostA", "hostC")
    with pytest.raises(MigrationRefused) as refused:
        refuse_failed(request, [machine], _report(machine))
    assert "machine.available" in refused.value.message
    assert refused.value.fix.startswith("add --adapt: the plan then rewrites what hostC")
    adapt = ColdRequest("vm1", "hostA", "hostC", adapt=True)
    assert refuse_failed(adapt, [machine], _report(machine)) == [machine]
    storage = _finding("storage.space", "storage")
    with pytest.raises(MigrationRefused) as other:
        refuse_failed(adapt, [machine, storage], _report(machine, storage))
    assert other.value.fix == "fix it"  # --adapt does not answer that one
    change = AdaptChange("machine", "pc-i440fx-10.0", "pc-i440fx-7.2", "why", MACHINE)
    notice = answered_by(machine, (change,), "vm1", _report(machine))
    assert "--adapt answers machine.available" in notice and "pc-i440fx-7.2" in notice
    with pytest.raises(MigrationRefused):
        answered_by(machine, (), "vm1", _report(machine))


def _facts(name: str, qemu: int) -> HostFacts:
    return HostFacts(
        ref=HostRef(name, f"qemu+tls://{name}/system"),
        hostname=name,
        host_uuid=name,
        libvirt_version=9_000_000,
        hypervisor_type="QEMU",
        hypervisor_version=qemu,
        arch="x86_64",
        cpus=2,
        memory_free_bytes=1 << 30,
        memory_available_bytes=1 << 30,
        rtt_ms=0.1,
        pools=(),
        networks=(),
        host_interfaces=(),
        domains={},
    )


def test_keep_state_is_refused_where_the_saved_state_would_not_load() -> None:
    new, old = _facts("hostA", 10_000_002), _facts("hostC", 7_002_022)
    with pytest.raises(MigrationRefused) as older:
        refuse_state_across("vm1", (new, old), ())
    assert "a state saved by a newer QEMU does not load into an older one" in older.value.message
    assert "QEMU 10.0.2" in older.value.message and "drop --keep-state" in older.value.fix
    change = AdaptChange("machine", "pc-i440fx-7.2", "pc-i440fx-10.0", "restored", MACHINE)
    with pytest.raises(MigrationRefused) as changed:
        refuse_state_across("vm1", (old, new), (change,))
    assert "machine: pc-i440fx-7.2 -> pc-i440fx-10.0" in changed.value.message
    refuse_state_across("vm1", (old, new), ())  # older to newer, unchanged: it loads


def test_adapt_is_no_option_of_a_live_move() -> None:
    result = CliRunner().invoke(cli, ["live", "vm1", "--from", "hostA", "--to", "hostC", "--adapt"])
    assert result.exit_code == 2
    assert "No such option" in result.output and "--adapt" in result.output


def test_the_plan_says_when_adapt_has_nothing_to_change_or_could_restore() -> None:
    assert _note("vm1", "hostB", True, (), None, None) == (
        "--adapt: hostB runs vm1 as it is; nothing to change"
    )
    assert _note("vm1", "hostB", False, (), None, None) == ""  # a plain move says nothing
    there = adapt_domain(LAB_GUEST, HOST_C)
    kept = KeptOriginal(4, LAB_GUEST, there.changes)
    restore = restore_original(there.xml, LAB_GUEST, there.changes, HOST_A, 4)
    assert _note("vm1", "hostA", False, (), kept, restore) == (
        "vm1 runs as job 4 adapted it; hostA runs its original definition: add --adapt to "
        "restore machine pc-i440fx-10.0"
    )
    stays = restore_original(there.xml, LAB_GUEST, there.changes, HOST_C, 4)
    assert _note("vm1", "hostC", True, (), kept, stays) == (
        "--adapt: nothing to change; kept as job 4 adapted it: machine pc-i440fx-10.0: hostC "
        "cannot run it; kept pc-i440fx-7.2"
    )


def test_without_adapt_the_refusal_names_the_machine_type_and_suggests_adapt() -> None:
    error = _refusal("vm1", HOST_C, adapt_domain(LAB_GUEST, HOST_C).changes)
    assert error.message == (
        "hostC cannot run vm1 as it is defined: pc-i440fx-10.0 is unknown to hostC's QEMU "
        "7.2.22; pc-i440fx-7.2 is its newest pc-i440fx; nothing was moved"
    )
    assert error.fix.startswith(
        "add --adapt: the plan then rewrites what hostC cannot run (machine -> pc-i440fx-7.2)"
    )


def test_a_device_the_destination_lacks_is_answered_by_a_device_change_only() -> None:
    # machine.devices (checks/machine.py) shares the family "machine" with machine.available,
    # but only a rewritten device answers it, not a new machine type.
    devices = _finding("machine.devices", "machine")
    graphics = AdaptChange("graphics", "graphics spice", "graphics vnc", "why", "device:graphics")
    machine = AdaptChange("machine", "pc-q35-10.0", "pc-q35-7.2", "why", MACHINE)
    notice = answered_by(devices, (machine, graphics), "vm1", _report(devices))
    assert "graphics vnc" in notice and "pc-q35-7.2" not in notice
    with pytest.raises(MigrationRefused):
        answered_by(devices, (machine,), "vm1", _report(devices))
