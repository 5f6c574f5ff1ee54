"""A lab host on another release: hostC on Debian 12's own libvirt 9.0 and QEMU 7.2.

Its root file system is cached (/var/cache/vmigrate/roots); on a machine without it the
first test builds it with mmdebstrap (measured 25-80 s, docs/lab.md). The guests here are
idle: QEMU 7.2 under TCG corrupts a guest that writes memory during a live migration
(docs/lab.md, "A host on another version"), so a busy guest would test that bug, not us."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from vmigrate.errors import LabError
from vmigrate.lab.config import HOST_C
from vmigrate.lab.heartbeat import heartbeat_report
from vmigrate.lab.host_upgrade import restart_on_release, upgrade_host
from vmigrate.lab.lifecycle import HostStatus, lab_status, lab_up
from vmigrate.lab.releases import BOOKWORM
from vmigrate.lab.state import load_records, running_lab_hosts
from vmigrate.lab.vms import LabVmRequest, create_vm, locate_vm

from .helpers import run_cli

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def old_host_c(lab: list[HostStatus]) -> Iterator[HostStatus]:
    """hostC on bookworm for this module; back on the machine's packages afterwards, so
    the tests after these find the lab as usual."""
    started = time.monotonic()
    if HOST_C in running_lab_hosts():
        restart_on_release(HOST_C.name, BOOKWORM)
    else:
        lab_up(3, versions=[f"{HOST_C.name}={BOOKWORM.name}"])
    print(f"hostC up on bookworm in {time.monotonic() - started:.1f} s")
    yield next(h for h in lab_status() if h.name == HOST_C.name)
    upgrade_host(HOST_C.name)


def finding(report_json: str, check: str) -> dict[str, Any]:
    """One finding of `vmigrate check --json`'s report."""
    found: list[dict[str, Any]] = [
        f for f in json.loads(report_json)["findings"] if f["check"] == check
    ]
    assert len(found) == 1, found
    return found[0]


def test_host_c_runs_debians_own_libvirt_and_qemu(old_host_c: HostStatus) -> None:
    # Read from hostC's libvirt (getLibVersion/getVersion), not from package names.
    assert old_host_c.release == "bookworm"
    assert old_host_c.libvirt_version.startswith("9.0."), old_host_c.libvirt_version
    assert old_host_c.qemu_version.startswith("7.2."), old_host_c.qemu_version
    host_a = next(h for h in lab_status() if h.name == "hostA")
    assert host_a.release == "system"
    assert not host_a.qemu_version.startswith("7.2.")
    # What a user reads (JSON: a narrow terminal drops the version columns).
    result = run_cli("lab", "status", "--json")
    assert result.returncode == 0, result.stderr
    shown = {host["name"]: host for host in json.loads(result.stdout)["hosts"]}
    # Still a real lab host over SSH too: bookworm's sshd and libvirt 9.0's virt-ssh-helper.
    over_ssh = subprocess.run(
        ["virsh", "-c", HOST_C.ssh_uri, "version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert over_ssh.returncode == 0, over_ssh.stderr
    assert "QEMU 7.2." in over_ssh.stdout
    assert shown["hostC"]["release"] == "bookworm"
    assert shown["hostC"]["libvirt_version"] == old_host_c.libvirt_version
    assert shown["hostA"]["qemu_version"] == host_a.qemu_version


def test_idle_guest_moves_live_from_older_to_newer(old_host_c: HostStatus, vm_name: str) -> None:
    create_vm(LabVmRequest(vm_name, host=HOST_C.name, memory_mib=256))

    # The lab's upgrade is refused while the VM runs there; nothing changes.
    pid = load_records()[HOST_C.name].pid
    with pytest.raises(LabError) as refused:
        upgrade_host(HOST_C.name)
    assert vm_name in refused.value.message
    assert refused.value.host == HOST_C.name
    assert load_records()[HOST_C.name].pid == pid
    assert locate_vm(vm_name) == {HOST_C.name: "running"}

    # `check` reads both hosts' capabilities: hostA's QEMU runs hostC's pc-i440fx-7.2.
    checked = run_cli("check", vm_name, "--from", HOST_C.name, "--to", "hostA", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    machine = finding(checked.stdout, "machine.available")
    assert machine["verdict"] == "pass" and "pc-i440fx-7.2" in machine["summary"]
    assert finding(checked.stdout, "versions.qemu")["verdict"] == "pass"

    result = run_cli("live", vm_name, "--from", HOST_C.name, "--to", "hostA")
    assert result.returncode == 0, result.stdout + result.stderr
    time.sleep(1.0)
    report = heartbeat_report(vm_name)
    assert report.contiguous, report.problems
    assert report.last_seq_by_host["hostA"] > report.last_seq_by_host[HOST_C.name]
    assert locate_vm(vm_name) == {"hostA": "running"}


def test_newer_to_older_is_refused_by_check_naming_the_machine_type(
    old_host_c: HostStatus, vm_name: str
) -> None:
    # A guest defined with machine='pc' on hostA runs libvirt's expansion: pc-i440fx-10.0.
    create_vm(LabVmRequest(vm_name, host="hostA", memory_mib=128))
    checked = run_cli("check", vm_name, "--from", "hostA", "--to", HOST_C.name, "--json")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    machine = finding(checked.stdout, "machine.available")
    assert machine["verdict"] == "fail"
    assert machine["summary"].startswith(
        f"pc-i440fx-10.0 is unknown to hostC's QEMU {old_host_c.qemu_version}"
    ), machine["summary"]
    assert f"vmigrate cold {vm_name} --from hostA --to hostC --adapt" in machine["fix"]
    assert "pc-i440fx-7.2" in machine["fix"]  # hostC's newest i440fx, what --adapt would pick
    # The QEMU versions alone only warn: the machine type is the reason.
    assert finding(checked.stdout, "versions.qemu")["verdict"] == "warn"
    assert locate_vm(vm_name) == {"hostA": "running"}


# ---- cold --adapt between incompatible hosts (#25 item 3) --------------------------------
# hostA's QEMU 10.0 gives a guest defined with machine 'pc' pc-i440fx-10.0, which hostC's
# QEMU 7.2 does not know: the VM cannot go there as it is, only adapted, and comes back as
# it was. One idle guest with a local disk; the guest reads its disk back at each boot.


def test_cold_adapt_boots_on_the_older_host_and_moving_back_restores_it(
    old_host_c: HostStatus, vm_name: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from vmigrate.lab.config import HOST_A
    from vmigrate.lab.heartbeat import wait_for_console
    from vmigrate.store import JobStore

    store = str(tmp_path_factory.mktemp("adapt") / "jobs.sqlite")
    create_vm(LabVmRequest(vm_name, memory_mib=256, disk="local"))

    def machine_on(host: str) -> str:
        uri = {"hostA": HOST_A.uri, HOST_C.name: HOST_C.uri}[host]
        shown = subprocess.run(
            ["virsh", "-c", uri, "dumpxml", "--inactive", vm_name],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        return shown.split("machine='", 1)[1].split("'", 1)[0]

    assert machine_on("hostA") == "pc-i440fx-10.0"
    move = ("cold", vm_name, "--store", store, "--json")

    # Without --adapt: refused before anything stops, naming the machine type.
    refused = run_cli(*move, "--from", "hostA", "--to", HOST_C.name)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "pc-i440fx-10.0" in refused.stderr and "add --adapt" in refused.stderr
    print(refused.stderr)
    # --keep-state would resume QEMU 10.0's saved state in QEMU 7.2: refused, VM untouched.
    state = run_cli(*move, "--from", "hostA", "--to", HOST_C.name, "--adapt", "--keep-state")
    assert state.returncode == 1, state.stdout + state.stderr
    assert "a state saved by a newer QEMU does not load into an older one" in state.stderr
    assert locate_vm(vm_name) == {"hostA": "running"}

    # --adapt: the plan lists the change before any step; the guest boots on QEMU 7.2.
    since = time.monotonic_ns()
    there = run_cli(
        *move, "--from", "hostA", "--to", HOST_C.name, "--adapt", "--delete-source-disks"
    )
    assert there.returncode == 0, there.stdout + there.stderr
    events = [json.loads(line) for line in there.stdout.splitlines() if line.startswith("{")]
    kinds = [e["event"] for e in events]
    plan = events[kinds.index("plan")]  # the plan's fields spread beside "event"
    assert kinds.index("plan") < kinds.index("job")  # listed before the job did anything
    assert [(c["what"], c["from"], c["to"]) for c in plan["adapt_changes"]] == [
        ("machine", "pc-i440fx-10.0", "pc-i440fx-7.2")
    ]
    line = wait_for_console(vm_name, r"^DISK ", timeout=90, since_ns=since)
    assert line.host == HOST_C.name and line.text.startswith("DISK verify ok"), line
    assert heartbeat_report(vm_name, since_ns=since).last_seq_by_host.get(HOST_C.name)
    assert locate_vm(vm_name) == {HOST_C.name: "running"}
    assert machine_on(HOST_C.name) == "pc-i440fx-7.2"
    job = events[kinds.index("job")]["job_id"]
    with JobStore(store) as jobs:  # the original kept in the job, to move it back as it was
        assert "pc-i440fx-10.0" in jobs.job(job).params["plan"]["original_xml"]

    # Back to hostA with --adapt: the original machine type restored, and said so.
    since = time.monotonic_ns()
    back = run_cli(*move, "--from", HOST_C.name, "--to", "hostA", "--adapt")
    assert back.returncode == 0, back.stdout + back.stderr
    events = [json.loads(line) for line in back.stdout.splitlines() if line.startswith("{")]
    plan = next(e for e in events if e["event"] == "plan")
    assert [(c["what"], c["to"], c["kind"]) for c in plan["adapt_changes"]] == [
        ("machine", "pc-i440fx-10.0", "restored")
    ]
    assert plan["adapt_changes"][0]["why"] == f"restored from job {job}: hostA runs the original"
    line = wait_for_console(vm_name, r"^DISK ", timeout=90, since_ns=since)
    assert line.host == "hostA" and line.text.startswith("DISK verify ok"), line
    assert locate_vm(vm_name) == {"hostA": "running"}
    assert machine_on("hostA") == "pc-i440fx-10.0"
    # Where nothing needs changing, --adapt says so (a dry run: nothing moves).
    plain = run_cli(*move, "--from", "hostA", "--to", "hostB", "--adapt", "--dry-run")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    planned = json.loads(plain.stdout)
    assert planned["adapt_changes"] == []
    assert planned["adapt_note"] == f"--adapt: hostB runs {vm_name} as it is; nothing to change"
