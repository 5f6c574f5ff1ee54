"""`vmigrate evacuate` in a three-host lab: a predicted plan, limits, a VM that can go
nowhere, a destination that dies, vmigrate killed and resumed, Ctrl-C and the way back."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vmigrate.errors import VmigrateError
from vmigrate.events import (
    ChecksDone,
    CopyProgress,
    Done,
    JobStarted,
    MoveProgress,
    Notice,
    PlanMade,
    decode,
)
from vmigrate.lab import link
from vmigrate.lab.config import HOST_A, HOST_B, HOST_C, LOCAL_POOL
from vmigrate.lab.heartbeat import heartbeat_report
from vmigrate.lab.hostfs import on_host
from vmigrate.lab.lifecycle import HostStatus, lab_up
from vmigrate.lab.state import load_records
from vmigrate.lab.vms import LabVmRequest, add_disk, create_vm, locate_vm, remove_vm
from vmigrate.store import JobStore
from vmigrate.trusted_checks import TRUSTED_PREFIX
from vmigrate.virt.connection import open_connection

from . import helpers
from .helpers import read_events_until, read_rest, run_cli, start_cli

pytestmark = pytest.mark.lab


@pytest.fixture
def three_hosts(lab: list[HostStatus]) -> list[HostStatus]:
    return lab_up(3)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "jobs.sqlite"


def hosts_file(tmp_path: Path, capacities: dict[str, int]) -> Path:
    """The lab's hosts with the declared memory a test wants, in cluster `trio`."""
    lines = []
    for host in (HOST_A, HOST_B, HOST_C):
        lines += [f"[hosts.{host.name}]", f'uri = "{host.uri}"']
        if host.name in capacities:
            lines.append(f"capacity_mib = {capacities[host.name]}")
    lines += ["[clusters.trio]", 'hosts = ["hostA", "hostB", "hostC"]']
    path = tmp_path / "hosts.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def guests(vm_name: str, three_hosts: list[HostStatus]) -> Iterator[Callable[..., str]]:
    """Make lab guests on hostA named after the test; all are removed afterwards."""
    made: list[str] = []
    assert not _vms_on(HOST_A.uri), "hostA must start empty"

    def make(suffix: str, **fields: Any) -> str:
        name = f"{vm_name[:40]}-{suffix}"
        create_vm(LabVmRequest(name, **fields))
        made.append(name)
        return name

    yield make
    for name in made:
        with contextlib.suppress(VmigrateError):
            remove_vm(name)


def _vms_on(uri: str) -> list[str]:
    conn = open_connection(uri)
    try:
        return sorted(d.name() for d in conn.listAllDomains(0))
    finally:
        conn.close()


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def one_of(found: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matching = [e for e in found if e["event"] == kind]
    assert matching, f"no {kind!r} event in {[e['event'] for e in found]}"
    return matching[-1]


def on_exactly_one_host(vm: str) -> str:
    where = locate_vm(vm)
    running = [host for host, state in where.items() if state == "running"]
    assert len(running) == 1 and len(where) == 1, f"{vm}: {where}"
    return running[0]


def contiguous(vm: str) -> None:
    time.sleep(0.3)
    report = heartbeat_report(vm)
    assert report.contiguous, (vm, report.problems)


def test_hostA_emptied_onto_hosts_whose_memory_admits_only_some_placements(
    tmp_path: Path, store: Path, guests: Callable[..., str]
) -> None:
    # usable after the 512 MiB reserve: hostB 1536 MiB, hostC 2048 MiB; the five guests need
    # 768 + 768 + 640 + 512 + 512 = 3200 MiB with QEMU's overhead: no host takes them all
    path = hosts_file(tmp_path, {"hostB": 2048, "hostC": 2560})
    names = [
        guests("big1", memory_mib=512, dirty_rate_mib=100, working_set_mib=256),
        guests("big2", memory_mib=512, dirty_rate_mib=20, working_set_mib=256),
        guests("mid", memory_mib=384),
        guests("idle", memory_mib=256),
        guests("disk", memory_mib=256, disk="local"),
    ]
    common = ["--cluster", "trio", "--hosts", str(path), "--store", str(store), "--json"]
    dry = run_cli("evacuate", "hostA", "--dry-run", *common)
    assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr
    plan = one_of(events(dry.stdout), "plan")
    assert sorted(m["vm"] for m in plan["moves"]) == sorted(names) and not plan["unplaced"]
    assert {m["destination"] for m in plan["moves"]} == {"hostB", "hostC"}
    disk_move = next(m for m in plan["moves"] if m["vm"].endswith("-disk"))
    assert disk_move["mode"] == "live" and disk_move["copy_storage"]
    for move in plan["moves"]:
        assert move["predicted_s"] > 0 and move["predicted_downtime_ms"] is not None
    assert plan["predicted_total_s"] > 0
    assert _vms_on(HOST_B.uri) == [] and _vms_on(HOST_C.uri) == []  # dry run: nothing moved

    result = run_cli("evacuate", "hostA", *common, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    report = one_of(events(result.stdout), "done")
    assert report["empty"] and _vms_on(HOST_A.uri) == []
    assert {m["state"] for m in report["moves"]} == {"moved"}
    for name in names:
        assert on_exactly_one_host(name) in ("hostB", "hostC")
        contiguous(name)
    hosts = json.loads(
        run_cli(
            "hosts", "--cluster", "trio", "--hosts", str(path), "--store", str(store), "--json"
        ).stdout
    )
    for host in hosts:
        assert (
            host["free_mib"] >= 0 and host["used_mib"] <= host["capacity_mib"] - host["reserve_mib"]
        ), host
    assert next(h for h in hosts if h["name"] == "hostA")["maintenance"]


@pytest.fixture
def shut_off_vm_with_network(vm_name: str, three_hosts: list[HostStatus]) -> Iterator[str]:
    """A defined, shut-off VM on hostA whose NIC uses a network no other host has."""
    name = f"{vm_name[:40]}-nonet"
    conn = open_connection(HOST_A.uri)
    domain = conn.defineXML(
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
        "<interface type='network'><source network='lab-only-on-a'/></interface>"
        "</devices></domain>"
    )
    yield name
    with contextlib.suppress(Exception):
        domain.undefine()
    conn.close()


def test_a_vm_that_can_go_nowhere_is_listed_first_and_the_others_move(
    tmp_path: Path, store: Path, guests: Callable[..., str], shut_off_vm_with_network: str
) -> None:
    moving = guests("go", memory_mib=256)
    result = run_cli(
        "evacuate", "hostA", "--to", "hostB,hostC", "--store", str(store), "--json", timeout=300
    )
    assert result.returncode == 1, result.stderr
    found = events(result.stdout)
    plan = one_of(found, "plan")
    # the moves start while the plan is made (#26): the complete plan comes before the end
    assert [e["event"] for e in found].index("plan") < [e["event"] for e in found].index("done")
    (unplaced,) = plan["unplaced"]
    assert unplaced["vm"] == shut_off_vm_with_network
    assert "'lab-only-on-a' does not exist on hostB" in unplaced["reason"]
    assert "hostC" in unplaced["reason"]
    report = one_of(found, "done")
    assert report["left_on_host"] == [shut_off_vm_with_network] and not report["empty"]
    assert locate_vm(shut_off_vm_with_network) == {"hostA": "shut off"}
    assert on_exactly_one_host(moving) in ("hostB", "hostC")
    assert "still on hostA" in report["message"]
    assert "Traceback" not in result.stderr


def test_a_destination_that_dies_gets_no_more_moves(
    tmp_path: Path, store: Path, guests: Callable[..., str]
) -> None:
    # hostB has the most room, so the plan sends most guests there, one at a time
    path = hosts_file(tmp_path, {"hostB": 8192, "hostC": 4096})
    names = [guests(f"g{i}", memory_mib=256, dirty_rate_mib=10) for i in range(3)]
    process = start_cli(
        "evacuate",
        "hostA",
        "--cluster",
        "trio",
        "--hosts",
        str(path),
        "--store",
        str(store),
        "--max-parallel",
        "1",
        "--json",
    )
    try:
        read_events_until(process, "move-start", timeout=120)
        os.kill(load_records()["hostB"].pid, signal.SIGKILL)
        stdout, stderr = read_rest(process, timeout=400)
    finally:
        lab_up(3)  # hostB comes back, and removes any half-received guest
    assert process.returncode == 0, stdout[-3000:] + stderr
    found = events(stdout)
    assert any(
        e["event"] == "notice" and "hostB stopped answering" in e["message"] for e in found
    ), [e for e in found if e["event"] == "notice"]
    report = one_of(found, "done")
    assert report["empty"]
    for name in names:
        assert on_exactly_one_host(name) in ("hostB", "hostC")
    # after the death, every move went to hostC
    moved_to_b = [m for m in report["moves"] if m["destination"] == "hostB"]
    assert len(moved_to_b) <= 1


def _timed_events_until(
    process: subprocess.Popen[str], wanted: Callable[[dict[str, Any]], bool], timeout: float
) -> list[tuple[float, dict[str, Any]]]:
    """The events (with the time each was read) up to the first that `wanted` accepts."""
    output = helpers._output(process)
    deadline = time.monotonic() + timeout
    seen: list[tuple[float, dict[str, Any]]] = []
    while True:
        try:
            line = output.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            process.kill()
            raise AssertionError(
                f"no awaited event within {timeout:g} s (killed vmigrate); seen: "
                f"{[e['event'] for _, e in seen][-20:]}; stderr: {output.stderr_tail()}"
            ) from None
        if line is None:
            raise AssertionError(
                f"vmigrate ended first; seen: {[e for _, e in seen][-10:]}; "
                f"stderr: {output.stderr_tail()}"
            )
        if line.startswith("{"):
            event = json.loads(line)
            seen.append((time.monotonic(), event))
            if wanted(event):
                return seen


def _one_line_per_vm_matching_where_it_runs(report: dict[str, Any], names: list[str]) -> None:
    assert sorted(m["vm"] for m in report["moves"]) == sorted(names), report["moves"]
    for move in report["moves"]:
        where = locate_vm(move["vm"])
        running = [host for host, state in where.items() if state == "running"]
        assert running == [move["runs_on"]] and len(where) == 1, (move, where)


def test_libvirtd_killed_under_a_move_into_it_fails_over_once_within_seconds(
    tmp_path: Path, store: Path, guests: Callable[..., str]
) -> None:
    # issue #23: the move into the dead hostB took 63.5 s to end, was retried on hostC twice,
    # and the report listed the VM twice (moved, and stays on hostA), exit 0
    path = hosts_file(tmp_path, {"hostB": 8192, "hostC": 4096})  # hostB first
    names = [guests(f"f{i}", memory_mib=256, dirty_rate_mib=10) for i in range(2)]
    checked = run_cli("check", names[0], "--from", "hostA", "--to", "hostB", "--hosts", str(path))
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr  # hostB can take it
    link.shape("200mbit")  # each move takes seconds: one is in flight when hostB dies
    process = start_cli(
        "evacuate", "hostA", "--cluster", "trio", "--hosts", str(path), "--store", str(store),
        "--max-parallel", "1", "--json",
    )  # fmt: skip
    try:
        before = _timed_events_until(
            process,
            lambda e: (
                e["event"] == "move-progress"
                and e["destination"] == "hostB"
                and e["phase"] == "precopy"
            ),
            timeout=180,
        )
        victim = before[-1][1]["vm"]
        killed_at = time.monotonic()
        os.kill(load_records()["hostB"].pid, signal.SIGKILL)
        after = _timed_events_until(
            process,
            lambda e: e["event"] == "move-start" and e["vm"] == victim,
            timeout=120,
        )
        stdout, stderr = read_rest(process, timeout=400)
    finally:
        link.reset()
        lab_up(3)  # hostB comes back (and removes its half-received guest)
    failover_at, restart = after[-1]
    assert restart["destination"] == "hostC"
    assert failover_at - killed_at <= 15.0, f"failed over {failover_at - killed_at:.1f} s late"
    found = [e for _, e in before + after] + events(stdout)
    assert any(
        e["event"] == "notice" and e["message"] == "hostB stopped answering: it gets no more moves"
        for e in found
    )
    starts = [(e["vm"], e["destination"]) for e in found if e["event"] == "move-start"]
    assert len(starts) == len(set(starts)), starts  # each target tried once per VM
    assert starts.count((victim, "hostB")) == 1 and starts.count((victim, "hostC")) == 1
    ends = [e["vm"] for e in found if e["event"] == "move-end"]
    assert sorted(ends) == sorted(names), ends  # one result per VM
    report = one_of(found, "done")
    _one_line_per_vm_matching_where_it_runs(report, names)
    moved = all(m["state"] == "moved" for m in report["moves"])
    assert report["empty"] and moved, report["message"]
    assert process.returncode == 0, stderr
    victim_result = next(m for m in report["moves"] if m["vm"] == victim)
    assert [a["destination"] for a in victim_result["attempts"]] == ["hostB", "hostC"]
    for name in names:
        contiguous(name)


def test_ctrl_c_in_a_cold_evacuation_brings_the_stopped_vms_back_on_hostA(
    tmp_path: Path, store: Path, guests: Callable[..., str]
) -> None:
    names = [guests(f"c{i}", memory_mib=256, disk="local") for i in range(2)]
    disks = [add_disk(n, LOCAL_POOL, "vdb", 160, "write -P 0xa5 0 160M") for n in names]
    link.shape("100mbit")  # ~12 MiB/s: the copies take long enough to press Ctrl-C
    process = start_cli(
        "evacuate", "hostA", "--to", "hostB", "--mode", "cold", "--store", str(store),
        "--max-parallel", "2", "--json",
    )  # fmt: skip
    try:
        read_events_until(process, "move-progress", timeout=180)
        # The scheduler follows the shaped link: one copy fills it, so the second VM may
        # still be waiting to start. Ctrl-C once at least one VM is stopped mid-copy.
        deadline = time.monotonic() + 120
        while not any(locate_vm(n) == {"hostA": "shut off"} for n in names):
            assert time.monotonic() < deadline, {n: locate_vm(n) for n in names}
            assert process.poll() is None, read_rest(process, timeout=10)
            time.sleep(0.5)
        stopped = [n for n in names if locate_vm(n) == {"hostA": "shut off"}]
        time.sleep(2)  # its copy is under way
        process.send_signal(signal.SIGINT)
        stdout, stderr = read_rest(process, timeout=300)
    finally:
        link.reset()
    assert process.returncode == 1, stderr
    found = events(stdout)
    report = one_of(found, "done")
    assert report["cancelled"] and not report["empty"]
    assert {m["state"] for m in report["moves"]} == {"cancelled"}, report["moves"]
    _one_line_per_vm_matching_where_it_runs(report, names)
    for name in names:
        assert locate_vm(name) == {"hostA": "running"}
    rolled = [e["message"] for e in found if e["event"] == "notice" and "rolling" in e["message"]]
    rolled_back = [m.split(":")[0] for m in rolled]
    assert len(rolled_back) == len(set(rolled_back)), rolled  # once each
    assert set(stopped) <= set(rolled_back), rolled  # each stopped VM brought back
    assert _vms_on(HOST_B.uri) == []
    for disk in disks:  # the copies made on hostB are gone; hostA's disks stay
        assert not on_host("hostB", disk).exists()
        assert on_host("hostA", disk).exists()
    assert "Traceback" not in stderr


def test_a_cold_move_in_an_evacuation_shows_its_copy_progress_and_is_stored(
    tmp_path: Path, store: Path, guests: Callable[..., str]
) -> None:
    # issue #24: the evacuation read its cold child's events for "step" events nothing sent
    # and the child's --json left out its copy progress: 0 % "moving" until the move ended.
    name = guests("copyprog", memory_mib=256, disk="local")
    add_disk(name, LOCAL_POOL, "vdb", 160, "write -P 0x5a 0 160M")
    link.shape("100mbit")  # ~12 MiB/s: the copies last long enough for several reports
    try:
        result = run_cli(
            "evacuate", "hostA", "--to", "hostB", "--mode", "cold", "--store", str(store),
            "--json", timeout=600,
        )  # fmt: skip
    finally:
        link.reset()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    found = events(result.stdout)
    assert one_of(found, "done")["empty"] and on_exactly_one_host(name) == "hostB"
    copying = [
        e["percent"]
        for e in found
        if e["event"] == "move-progress" and e["vm"] == name and e["phase"] == "copy"
    ]
    assert copying == sorted(copying), copying  # it never goes back
    assert len(set(copying)) >= 3 and 0 < copying[-1] <= 100, copying
    assert all(e.get("schema") == 1 for e in found)

    # Both jobs' events are in the store, readable by another process (the server).
    evacuation = one_of(found, "job")["job_id"]
    with JobStore(store) as jobs:
        stored = [decode(e.body) for e in jobs.events_after(0, job_id=evacuation)]
        # the job exists before its plan is complete (its first move may start meanwhile)
        assert isinstance(stored[0], JobStarted)
        assert sum(isinstance(e, PlanMade) for e in stored) == 1
        assert isinstance(stored[-1], Done) and stored[-1].report["empty"]
        progress = [e for e in stored if isinstance(e, MoveProgress) and e.phase == "copy"]
        assert [e.percent for e in progress] == copying
        child = progress[-1].job_id
        assert child is not None and child != evacuation
        own = [decode(e.body) for e in jobs.events_after(0, job_id=child)]
        # the child trusted the evacuation's checks and checked again only what can change
        notices = [e.message for e in own if isinstance(e, Notice)]
        assert any(n.startswith(TRUSTED_PREFIX) for n in notices), notices
        own = [e for e in own if not isinstance(e, Notice)]
        assert [type(e) for e in own[:3]] == [ChecksDone, PlanMade, JobStarted]
        copies = [e for e in own if isinstance(e, CopyProgress)]
        assert len(copies) >= 3 and copies[-1].done == copies[-1].total
        assert isinstance(own[-1], Done) and own[-1].report["outcome"] == "completed"
        everything = jobs.events_after(0, limit=100_000)
        assert [e.seq for e in everything] == sorted(e.seq for e in everything)
        assert {e.job_id for e in everything} == {evacuation, child}


def test_vmigrate_killed_mid_evacuation_then_resumed(
    tmp_path: Path, store: Path, guests: Callable[..., str]
) -> None:
    names = [guests(f"k{i}", memory_mib=256, dirty_rate_mib=20) for i in range(3)]
    process = start_cli(
        "evacuate",
        "hostA",
        "--to",
        "hostB,hostC",
        "--store",
        str(store),
        "--max-parallel",
        "1",
        "--json",
    )
    job_id = read_events_until(process, "move-progress", timeout=120)
    assert job_id
    process.kill()  # SIGKILL: the move in flight carries on in its own process
    process.wait(timeout=30)
    with contextlib.suppress(AssertionError):
        read_rest(process, timeout=30)
    resumed = run_cli("jobs", "--store", str(store), "resume", str(job_id), "--json", timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr
    report = one_of(events(resumed.stdout), "done")
    assert report["empty"] and report["job_id"] == job_id
    for name in names:
        assert on_exactly_one_host(name) in ("hostB", "hostC")
        contiguous(name)
    shown = json.loads(run_cli("jobs", "--store", str(store), "show", str(job_id), "--json").stdout)
    assert shown["state"] == "completed"


def test_ctrl_c_then_the_way_back_and_maintenance_is_never_a_target(
    tmp_path: Path, store: Path, guests: Callable[..., str]
) -> None:
    first = guests("first", memory_mib=512)  # the larger goes first; idle, it moves at once
    second = guests("second", memory_mib=256, dirty_rate_mib=50, working_set_mib=144)
    link.shape("200mbit")  # the busy one takes seconds to send: time to press Ctrl-C
    try:
        process = start_cli(
            "evacuate",
            "hostA",
            "--to",
            "hostB",
            "--store",
            str(store),
            "--max-parallel",
            "1",
            "--json",
        )
        read_events_until(process, "move-end", timeout=180)
        read_events_until(process, "move-progress", timeout=120)  # the second is under way
        process.send_signal(signal.SIGINT)
        stdout, stderr = read_rest(process, timeout=300)
    finally:
        link.reset()
    assert process.returncode == 1, stderr
    report = one_of(events(stdout), "done")
    assert report["cancelled"]
    states = {m["vm"]: m["state"] for m in report["moves"]}
    assert "moved" in states.values() and "cancelled" in states.values(), states
    for name in (first, second):
        on_exactly_one_host(name)
        contiguous(name)

    # hostA is in maintenance: no plan may target it
    refused = run_cli("evacuate", "hostB", "--to", "hostA", "--store", str(store), "--dry-run")
    assert refused.returncode == 2
    assert "every target is in maintenance (hostA)" in refused.stderr
    assert "Traceback" not in refused.stderr
    elsewhere = run_cli(
        "evacuate", "hostB", "--to", "hostA,hostC", "--store", str(store), "--dry-run", "--json"
    )
    plan = one_of(events(elsewhere.stdout), "plan")
    assert plan["moves"] and {m["destination"] for m in plan["moves"]} == {"hostC"}, plan

    back = run_cli("maintenance", "end", "hostA", "--return", "--store", str(store), "--json")
    assert back.returncode == 0, back.stdout[-2000:] + back.stderr
    done = one_of(events(back.stdout), "done")
    assert done["was_in_maintenance"] and [m["state"] for m in done["moves"]] == ["moved"]
    for name in (first, second):
        assert on_exactly_one_host(name) == "hostA"
        contiguous(name)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["evacuate", "hostQ"], "unknown host 'hostQ'"),
        (["evacuate", "hostA", "--cluster", "nope"], "unknown cluster 'nope'"),
        (["evacuate", "hostA", "--to", "hostA"], "cannot be evacuated onto itself"),
        (["evacuate", "hostA", "--to", "hostB", "--max-parallel", "0"], "--max-parallel 0"),
    ],
)
def test_bad_input_is_a_clear_error_and_nothing_moves(
    three_hosts: list[HostStatus], store: Path, args: list[str], words: str
) -> None:
    before = {uri: _vms_on(uri) for uri in (HOST_A.uri, HOST_B.uri, HOST_C.uri)}
    result = run_cli(*args, "--store", str(store))
    assert result.returncode != 0
    assert words in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert {uri: _vms_on(uri) for uri in before} == before


def test_a_cluster_of_one_host_is_refused(
    tmp_path: Path, store: Path, three_hosts: list[HostStatus]
) -> None:
    path = tmp_path / "hosts.toml"
    path.write_text('[clusters.solo]\nhosts = ["hostA"]\n')
    result = run_cli(
        "evacuate", "hostA", "--cluster", "solo", "--hosts", str(path), "--store", str(store)
    )
    assert result.returncode == 2  # a usage error
    assert "cluster 'solo' has one host" in result.stderr


def test_hosts_shows_every_host_with_capacity(three_hosts: list[HostStatus], store: Path) -> None:
    result = run_cli("hosts", "--cluster", "lab", "--store", str(store), "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"hostA", "hostB", "hostC"} <= set(rows)
    assert rows["hostB"]["declared_mib"] == HOST_B.capacity_mib
    assert rows["hostB"]["libvirt"] and rows["hostB"]["cpu_model"]
    assert rows["hostA"]["maintenance"] is None
