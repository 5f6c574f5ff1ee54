"""`vmigrate rolling` over the three-host lab, hostC started on Debian 12's own QEMU 7.2 and
libvirt 9.0, the lab's own upgrade as the command: every host ends on the newer version,
every VM running on exactly one host with a contiguous heartbeat, and no move ever to an
older QEMU. Then a command that fails on the second host stops the roll with every VM
running, and `jobs resume` finishes it once the cause is gone. Last, a second actor: a VM
started by hand on a host the roll emptied stops the roll before that host's command.

The guests are idle: QEMU 7.2 under TCG corrupts a guest that writes memory during a live
migration (docs/lab.md), which would test that bug, not the roll."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vmigrate.events import Done, decode
from vmigrate.lab.config import HOST_A, HOST_B, HOST_C
from vmigrate.lab.heartbeat import heartbeat_report
from vmigrate.lab.host_freeze import frozen, vms_while_frozen
from vmigrate.lab.host_upgrade import restart_on_release, upgrade_host
from vmigrate.lab.lifecycle import HostStatus, lab_status, lab_up
from vmigrate.lab.processes import pids_in_mount_namespace
from vmigrate.lab.releases import BOOKWORM
from vmigrate.lab.state import load_records, running_lab_hosts
from vmigrate.lab.vms import LabVmRequest, create_vm, locate_vm, remove_vm
from vmigrate.store import JobStore
from vmigrate.versions import parse_version

from .helpers import VMIGRATE, run_cli

pytestmark = pytest.mark.lab
VMIGRATE_BIN = str(Path(sys.executable).parent / "vmigrate")
#: What the tests give instead of a 2 s link probe per evacuation (1 Gbit/s).
BANDWIDTH = ("--bandwidth", "119")


@pytest.fixture(scope="module")
def three_hosts(lab: list[HostStatus]) -> Iterator[None]:
    """The lab with hostC on bookworm; hostC back on the machine's packages afterwards,
    whatever the tests did."""
    if HOST_C not in running_lab_hosts():
        # Started on the machine's packages first: a lab whose storage servers run (an rbd
        # pool) cannot set them up on bookworm's libvirt, which has no rbd back-end; the
        # restart below sets up the lab's own pools only.
        lab_up(3)
    restart_on_release(HOST_C.name, BOOKWORM)
    yield
    upgrade_host(HOST_C.name)


@pytest.fixture
def guests(vm_name: str) -> Iterator[Callable[[str, str], str]]:
    """Idle 128 MiB guests named after the test; removed afterwards."""
    made: list[str] = []

    def make(suffix: str, host: str) -> str:
        name = f"{vm_name[:40]}-{suffix}"
        create_vm(LabVmRequest(name, host=host, memory_mib=128))
        made.append(name)
        return name

    yield make
    for name in made:
        remove_vm(name)


def _done(stdout: str) -> dict[str, Any]:
    """The roll's report: its last event (the sub-jobs' own ends are not passed on)."""
    events = [decode(json.loads(line)) for line in stdout.splitlines() if line.startswith("{")]
    done = [event for event in events if isinstance(event, Done)]
    assert len(done) == 1, stdout[-2000:]
    assert events[-1] is done[0]
    return done[0].report


def _assert_every_vm_on_one_host(names: list[str], report: dict[str, Any]) -> None:
    for name in names:
        where = locate_vm(name)
        assert list(where.values()) == ["running"], (name, where)
        assert report["vms"][name] == list(where), (name, report["vms"])
        beats = heartbeat_report(name)
        assert beats.contiguous, (name, beats.problems)


def _assert_never_to_an_older_qemu(store: Path, job_id: int) -> int:
    """Replay the roll's steps: each move's destination ran a QEMU at least as new as its
    source's when it moved (the versions as the roll read them: before, then each host's
    health check). The number of moves."""
    with JobStore(store) as opened:
        record = opened.job(job_id)
        steps = opened.steps(job_id)
    versions = {h: int(v["qemu_encoded"]) for h, v in record.params["before"].items()}
    moves = 0
    for step in steps:
        action, host = step.name.split(" ", 1)
        if action == "health":
            versions[host] = int(step.detail["qemu_encoded"])
        for move in step.detail.get("moved", []):
            assert move["state"] == "moved", move
            assert versions[move["destination"]] >= versions[move["source"]], (step.name, move)
            moves += 1
    return moves


def test_roll_upgrades_the_older_host_and_strands_no_vm(
    three_hosts: None, guests: Callable[[str, str], str], tmp_path: Path
) -> None:
    names = [guests("a", HOST_A.name), guests("c", HOST_C.name)]
    store = tmp_path / "jobs.sqlite"
    newest = next(h.qemu_version for h in lab_status() if h.name == HOST_A.name)

    started = time.monotonic()
    result = run_cli(
        "rolling",
        "--cluster",
        "lab",
        "--run",
        f"{VMIGRATE_BIN} lab host upgrade {{host}}",
        "--store",
        str(store),
        "--json",
        *BANDWIDTH,
        timeout=900,
    )
    print(f"roll of {len(running_lab_hosts())} hosts: {time.monotonic() - started:.1f} s")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = _done(result.stdout)
    assert report["ok"], report["message"]
    # The oldest host first: its VMs never need to go to an older QEMU.
    assert report["order"]["steps"][0] == [HOST_C.name]
    assert report["hosts"][HOST_C.name]["before"]["qemu"].startswith("7.2.")
    for host, entry in report["hosts"].items():
        assert entry["done"] and not entry["in_maintenance"], (host, entry)
        assert entry["after"]["qemu"] == newest, (host, entry)
    assert {h.name: h.qemu_version for h in lab_status()}[HOST_C.name] == newest
    _assert_every_vm_on_one_host(names, report)
    # hostC's guest left it live (7.2 -> newer) and came back; hostA's went and came back.
    assert _assert_never_to_an_older_qemu(store, int(report["job_id"])) == 4
    assert parse_version(newest) > parse_version(report["hosts"][HOST_C.name]["before"]["qemu"])


FAILS_ON_SECOND_CALL = """#!/bin/sh
# The lab's stand-in for an upgrade: it fails from its second call on while MARKER exists.
echo "$1" >> {calls}
if [ -e {marker} ] && [ "$(wc -l < {calls})" -ge 2 ]; then
    echo "upgrade of $1 failed: the mirror is down" >&2
    exit 3
fi
"""


def test_a_failing_command_stops_the_roll_and_resume_finishes_it(
    three_hosts: None, guests: Callable[[str, str], str], tmp_path: Path
) -> None:
    upgrade_host(HOST_C.name)  # all on one version (already so after the test above)
    # hostA empty goes first, then hostB (whose VM is away when its command fails).
    names = [guests("b", HOST_B.name), guests("c", HOST_C.name)]
    marker, calls = tmp_path / "mirror-down", tmp_path / "calls"
    marker.touch()
    script = tmp_path / "upgrade"
    script.write_text(FAILS_ON_SECOND_CALL.format(calls=calls, marker=marker))
    script.chmod(0o755)
    store = tmp_path / "jobs.sqlite"

    started = time.monotonic()
    result = run_cli(
        "rolling", "--cluster", "lab", "--run", f"{script} {{host}}",
        "--store", str(store), "--json", *BANDWIDTH, timeout=600,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    report = _done(result.stdout)
    assert not report["ok"]
    assert report["order"]["steps"][:2] == [[HOST_A.name], [HOST_B.name]]
    assert "command hostB" in report["message"] and "exited 3" in report["message"]
    assert "the mirror is down" in report["message"]
    assert report["hosts"][HOST_A.name]["done"]
    assert report["hosts"][HOST_B.name]["in_maintenance"]
    assert not report["hosts"][HOST_B.name]["done"]
    failed = [s for s in report["steps"] if s["state"] == "failed"]
    assert [s["name"] for s in failed] == ["command hostB"]
    _assert_every_vm_on_one_host(names, report)
    assert "hostB" not in report["vms"][names[0]]  # away while hostB is in maintenance
    job_id = int(report["job_id"])
    print(f"roll stopped after {time.monotonic() - started:.1f} s")

    marker.unlink()  # the operator fixes the cause
    resumed_at = time.monotonic()
    resumed = run_cli("jobs", "--store", str(store), "resume", str(job_id), "--json", timeout=600)
    print(f"resume finished the roll in {time.monotonic() - resumed_at:.1f} s")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    final = _done(resumed.stdout)
    assert final["ok"], final["message"]
    assert all(e["done"] and not e["in_maintenance"] for e in final["hosts"].values())
    assert calls.read_text().split() == ["hostA", "hostB", "hostB", "hostC"]
    _assert_every_vm_on_one_host(names, final)
    assert locate_vm(names[0]) == {HOST_B.name: "running"}  # back home
    assert _assert_never_to_an_older_qemu(store, job_id) == 4


HELD_ON_FIRST_CALL = """#!/bin/sh
# The operator's command: it records its host; its first call waits until {release} exists.
echo "$1" >> {calls}
if [ "$(wc -l < {calls})" -eq 1 ]; then
    while [ ! -e {release} ]; do sleep 0.05; done
fi
"""


def _wait_for_line(path: Path, roll: subprocess.Popen[bytes], timeout: float) -> list[str]:
    """The lines of `path` once it has one (the command started), while the roll runs."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        assert roll.poll() is None, f"the roll ended ({roll.returncode}) before its command"
        assert time.monotonic() < deadline, "the roll's first command did not start"
        time.sleep(0.1)
    return path.read_text().split()


def test_a_vm_started_on_an_emptied_host_stops_the_roll_before_its_command(
    three_hosts: None, guests: Callable[[str, str], str], tmp_path: Path
) -> None:
    """hostA and hostB are emptied together; while hostA's command is held, an operator
    starts a VM on hostB by hand. No other vmigrate of the store may send anything to the
    hosts in maintenance meanwhile, the lab's upgrade check (libvirtd frozen) sees the VM,
    and the roll does not run hostB's command: it stops naming the VM and the host. Once
    the VM is moved off, `jobs resume` finishes the roll."""
    upgrade_host(HOST_C.name)  # all on one version: hostA + hostB first, by name
    calls, release = tmp_path / "calls", tmp_path / "release"
    script = tmp_path / "upgrade"
    script.write_text(HELD_ON_FIRST_CALL.format(calls=calls, release=release))
    script.chmod(0o755)
    store = tmp_path / "jobs.sqlite"
    started = time.monotonic()
    with (tmp_path / "roll.out").open("wb") as out, (tmp_path / "roll.err").open("wb") as err:
        roll = subprocess.Popen(
            [*VMIGRATE, "rolling", "--cluster", "lab", "--run", f"{script} {{host}}",
             "--hosts-at-once", "2", "--store", str(store), "--json", *BANDWIDTH],
            stdout=out, stderr=err,
        )  # fmt: skip
    try:
        assert _wait_for_line(calls, roll, 120) == [HOST_A.name]
        # The second actor: a VM started by hand on hostB, emptied and in maintenance.
        stranger = guests("x", HOST_B.name)
        # Another vmigrate of the same store sends nothing to a host in maintenance.
        refused = run_cli("live", stranger, "--from", HOST_B.name, "--to", HOST_A.name,
                          "--store", str(store))  # fmt: skip
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "in maintenance" in refused.stderr, refused.stderr
        planned = run_cli("evacuate", HOST_C.name, "--dry-run", "--store", str(store), "--json")
        assert planned.returncode == 2, planned.stdout + planned.stderr
        assert "every target is in maintenance" in planned.stderr, planned.stderr
        # The lab upgrade's last check (libvirtd frozen) finds it, and lets libvirtd go on.
        record = load_records()[HOST_B.name]
        with frozen(record.pid, HOST_B.name):
            found = vms_while_frozen(pids_in_mount_namespace(record.mount_namespace), record.pid)
        assert found == [stranger]
        assert locate_vm(stranger) == {HOST_B.name: "running"}
        release.touch()
        roll.wait(timeout=300)
    finally:
        release.touch()
        if roll.poll() is None:
            roll.kill()
    print(f"roll stopped after {time.monotonic() - started:.1f} s")
    result = (tmp_path / "roll.out").read_text()
    assert roll.returncode == 1, result[-3000:] + (tmp_path / "roll.err").read_text()[-3000:]
    report = _done(result)
    assert report["order"]["steps"][0] == [HOST_A.name, HOST_B.name]
    failed = [s for s in report["steps"] if s["state"] == "failed"]
    assert [s["name"] for s in failed] == ["command hostB"]
    assert stranger in report["message"] and "the command was not run" in report["message"]
    assert calls.read_text().split() == [HOST_A.name]  # hostB's command never ran
    assert report["hosts"][HOST_A.name]["done"]
    assert report["hosts"][HOST_B.name]["in_maintenance"]
    assert locate_vm(stranger) == {HOST_B.name: "running"}

    # The operator does what the report says: moves it to a host not in maintenance.
    moved = run_cli("live", stranger, "--from", HOST_B.name, "--to", HOST_C.name,
                    "--store", str(store))  # fmt: skip
    assert moved.returncode == 0, moved.stdout + moved.stderr
    resumed = run_cli("jobs", "--store", str(store), "resume", str(report["job_id"]), "--json")
    print(f"roll finished {time.monotonic() - started:.1f} s after it started")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    final = _done(resumed.stdout)
    assert final["ok"], final["message"]
    assert calls.read_text().split() == [h for step in final["order"]["steps"] for h in step]
    assert all(e["done"] and not e["in_maintenance"] for e in final["hosts"].values())
    _assert_every_vm_on_one_host([stranger], final)
    assert locate_vm(stranger) == {HOST_C.name: "running"}  # back where the operator put it
