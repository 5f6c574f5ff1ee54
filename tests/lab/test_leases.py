"""Leases in the lab: two vmigrates with different stores move one VM at once, a stale lease,
the lease seen from another connection during a move, a destination in maintenance."""

from __future__ import annotations

import json
import re
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from vmigrate.lab.config import HOST_A, HOST_B
from vmigrate.lab.heartbeat import heartbeat_report
from vmigrate.lab.lifecycle import HostStatus
from vmigrate.lab.vms import LabVmRequest, create_vm, locate_vm
from vmigrate.lease import NAMESPACE, Holder, Lease, current_owner
from vmigrate.store import JobStore
from vmigrate.virt.connection import open_connection
from vmigrate.virt.lease import read_lease

from .helpers import read_events_until, read_rest, run_cli, start_cli, virsh_migrate_live

pytestmark = pytest.mark.lab
URIS = {"hostA": HOST_A.uri, "hostB": HOST_B.uri}


def lease_on(host: str, vm: str) -> Lease | None:
    """The lease a VM carries on a host, read over a connection of our own."""
    conn = open_connection(URIS[host])
    try:
        return read_lease(conn.lookupByName(vm)).lease
    finally:
        conn.close()


def metadata_element(host: str, vm: str, where: str) -> str:
    """The raw lease element of one definition (--live or --config), '' when absent."""
    result = subprocess.run(
        ["virsh", "-c", URIS[host], "metadata", vm, NAMESPACE, f"--{where}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def write_by_hand(host: str, vm: str, lease: Lease) -> None:
    """A lease as another vmigrate (another machine, another store) would have left it."""
    result = subprocess.run(
        ["virsh", "-c", URIS[host], "metadata", vm, NAMESPACE, "--key", "vmigrate",
         "--set", lease.to_xml(), "--live", "--config"],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def foreign_lease(renewed_ago_s: float, job: int = 977) -> Lease:
    now = datetime.now(UTC)
    store = "5d1e0c3a-0000-4000-8000-00000000e15e"
    holder = Holder(job, "live", "alice@ops-elsewhere", store, "ab" * 16)
    return Lease.new(holder, now - timedelta(seconds=renewed_ago_s + 60)).renewed_at(
        now - timedelta(seconds=renewed_ago_s)
    )


def done_event(out: str) -> dict[str, Any] | None:
    for line in out.splitlines():
        if line.startswith("{") and '"event": "done"' in line:
            found: dict[str, Any] = json.loads(line)
            return found
    return None


def race(command: str, vm: str, tmp_path: Path, *extra: str) -> list[tuple[int, str, str, Path]]:
    """Two vmigrates with different stores move `vm` from hostA to hostB, 0.2 s apart;
    (exit code, stdout, stderr, store) of each, in the order they were started."""
    stores = [tmp_path / "first.sqlite", tmp_path / "second.sqlite"]
    processes = []
    for store in stores:
        processes.append(
            start_cli(command, vm, "--from", "hostA", "--to", "hostB", "--store", str(store),
                      "--json", *extra)
        )  # fmt: skip
        time.sleep(0.2)
    results = []
    for process, store in zip(processes, stores, strict=True):
        out, err = read_rest(process, timeout=300)
        results.append((process.returncode, out, err, store))
    return results


def only_one_went(results: list[tuple[int, str, str, Path]], vm: str) -> tuple[Path, str]:
    """Exactly one of them moved the VM; the other exited 1 naming the lease's owner and
    job and changed nothing. (the winner's store, the loser's stderr)."""
    codes = sorted(code for code, *_ in results)
    assert codes == [0, 1], [(code, err[-2000:]) for code, _out, err, _store in results]
    winner = next(r for r in results if r[0] == 0)
    loser = next(r for r in results if r[0] == 1)
    done = done_event(winner[1])
    assert done is not None and done["outcome"] == "completed" and done["placement_ok"]
    winner_job = done["job_id"]
    stderr = loser[2]
    assert "Traceback" not in stderr
    assert f"job {winner_job} of {current_owner()}" in stderr, stderr
    assert JobStore(winner[3]).identity in stderr  # the winner's store, by its identity
    assert done_event(loser[1]) is None  # the loser never reported a move
    return winner[3], stderr


def test_two_stores_move_one_vm_live_at_once(
    lab: list[HostStatus], vm_name: str, tmp_path: Path
) -> None:
    # About 10 s of migration, so the second vmigrate meets the first one's lease.
    create_vm(LabVmRequest(vm_name, memory_mib=384, working_set_mib=256, dirty_rate_mib=5))
    results = race("live", vm_name, tmp_path, "--bandwidth", "30")
    winner_store, _ = only_one_went(results, vm_name)
    assert locate_vm(vm_name) == {"hostB": "running"}
    beats = heartbeat_report(vm_name)
    assert beats.contiguous, beats.problems
    assert beats.last_seq_by_host["hostB"] > beats.last_seq_by_host["hostA"]
    assert lease_on("hostB", vm_name) is None  # released where the VM ended
    with JobStore(winner_store) as store:
        job = store.jobs()[0]
        events = store.lease_events(job.id)
    assert events[0]["event"] == "taken" and events[0]["host"] == "hostA"
    assert events[-1]["event"] == "released" and events[-1]["removed_from"] == ["hostB"]


def test_a_live_move_shows_its_lease_on_the_source_and_removes_it_after(
    lab: list[HostStatus], vm_name: str, tmp_path: Path
) -> None:
    store = tmp_path / "jobs.sqlite"
    create_vm(LabVmRequest(vm_name, memory_mib=384, working_set_mib=256, dirty_rate_mib=5))
    process = start_cli(
        "live", vm_name, "--from", "hostA", "--to", "hostB", "--bandwidth", "30",
        "--store", str(store), "--json",
    )  # fmt: skip
    job_id = read_events_until(process, "sample")
    seen = lease_on("hostA", vm_name)  # another connection, while the migration runs
    out, err = read_rest(process)
    assert process.returncode == 0, err
    assert seen is not None
    with JobStore(store) as jobs:
        identity = jobs.identity
        token = jobs.job(job_id).params["lease_token"]
    assert (seen.job, seen.kind, seen.owner, seen.store) == (
        job_id,
        "live",
        current_owner(),
        identity,
    )
    assert seen.token == token and len(token) == 32
    assert locate_vm(vm_name) == {"hostB": "running"}
    assert metadata_element("hostB", vm_name, "live") == ""
    assert metadata_element("hostB", vm_name, "config") == ""
    leases = [json.loads(line) for line in out.splitlines() if '"event": "lease"' in line]
    assert [(lease["action"], lease["removed_from"]) for lease in leases] == [
        ("released", ["hostB"])  # "taken" came before the first sample
    ]


def test_a_live_migration_carries_the_lease_into_both_definitions(
    lab: list[HostStatus], vm_name: str
) -> None:
    create_vm(LabVmRequest(vm_name, memory_mib=256))
    held = foreign_lease(renewed_ago_s=5)
    write_by_hand("hostA", vm_name, held)
    virsh_migrate_live(vm_name, "--persistent", "--undefinesource")
    for where in ("live", "config"):
        element = metadata_element("hostB", vm_name, where)
        assert f'token="{held.token}"' in element, (where, element)
    assert lease_on("hostB", vm_name) == held


def test_a_stale_lease_is_taken_over_only_with_the_flag(
    lab: list[HostStatus], vm_name: str, tmp_path: Path
) -> None:
    store = tmp_path / "jobs.sqlite"
    create_vm(LabVmRequest(vm_name, memory_mib=256))
    stale = foreign_lease(renewed_ago_s=600)
    write_by_hand("hostA", vm_name, stale)
    refused = run_cli("live", vm_name, "--from", "hostA", "--to", "hostB", "--store", str(store))
    assert refused.returncode == 1, refused.stderr
    assert "stale lease of live job 977 of alice@ops-elsewhere" in refused.stderr
    assert "not renewed for 10 min" in refused.stderr
    assert "--take-over-lease" in refused.stderr and "two jobs act on one VM" in refused.stderr
    assert locate_vm(vm_name) == {"hostA": "running"}
    assert lease_on("hostA", vm_name) == stale  # untouched
    with JobStore(store) as jobs:
        assert jobs.jobs() == []  # refused before a job was made

    taken = run_cli(
        "live", vm_name, "--from", "hostA", "--to", "hostB", "--store", str(store),
        "--take-over-lease", "--json",
    )  # fmt: skip
    assert taken.returncode == 0, taken.stderr
    assert locate_vm(vm_name) == {"hostB": "running"}
    assert lease_on("hostB", vm_name) is None
    with JobStore(store) as jobs:
        job = jobs.jobs()[0]
        events = jobs.lease_events(job.id)
    assert events[0]["event"] == "taken over"
    assert events[0]["previous"]["job"] == 977
    assert events[-1]["event"] == "released"


def test_a_live_lease_of_another_store_is_refused(
    lab: list[HostStatus], vm_name: str, tmp_path: Path
) -> None:
    create_vm(LabVmRequest(vm_name, memory_mib=256))
    write_by_hand("hostA", vm_name, foreign_lease(renewed_ago_s=3))
    refused = run_cli(
        "live", vm_name, "--from", "hostA", "--to", "hostB", "--take-over-lease",
        "--store", str(tmp_path / "jobs.sqlite"),
    )  # fmt: skip
    assert refused.returncode == 1, refused.stderr
    assert "leased by live job 977 of alice@ops-elsewhere" in refused.stderr
    assert re.search(r"renewed \d+ s ago", refused.stderr), refused.stderr
    assert locate_vm(vm_name) == {"hostA": "running"}


def test_a_destination_in_maintenance_is_refused_unless_forced(
    lab: list[HostStatus], vm_name: str, tmp_path: Path
) -> None:
    store = str(tmp_path / "jobs.sqlite")
    create_vm(LabVmRequest(vm_name, memory_mib=256))
    marked = run_cli("maintenance", "start", "hostB", "--store", store)
    assert marked.returncode == 0, marked.stderr
    refused = run_cli("live", vm_name, "--from", "hostA", "--to", "hostB", "--store", store)
    assert refused.returncode == 1, refused.stderr
    assert "hostB is in maintenance since" in refused.stderr
    assert "vmigrate maintenance end hostB" in refused.stderr
    assert locate_vm(vm_name) == {"hostA": "running"}
    assert lease_on("hostA", vm_name) is None
    cold = run_cli("cold", vm_name, "--from", "hostA", "--to", "hostB", "--store", store)
    assert cold.returncode == 1 and "hostB is in maintenance since" in cold.stderr
    assert locate_vm(vm_name) == {"hostA": "running"}
    forced = run_cli(
        "live", vm_name, "--from", "hostA", "--to", "hostB", "--store", store, "--force"
    )
    assert forced.returncode == 0, forced.stderr
    assert locate_vm(vm_name) == {"hostB": "running"}


def test_two_stores_move_one_vm_cold_at_once(
    lab: list[HostStatus], vm_name: str, tmp_path: Path
) -> None:
    create_vm(LabVmRequest(vm_name, memory_mib=256, disk="local"))
    results = race("cold", vm_name, tmp_path)
    winner_store, _ = only_one_went(results, vm_name)
    assert locate_vm(vm_name) == {"hostB": "running"}
    for where in ("live", "config"):  # released where the VM ended
        assert metadata_element("hostB", vm_name, where) == ""
    with JobStore(winner_store) as store:
        job = store.jobs()[0]
        assert job.state == "completed" and job.params["lease_token"]
        events = [e["event"] for e in store.lease_events(job.id)]
    assert events[0] == "taken" and events[-1] == "released"
    assert locate_vm(vm_name) == {"hostB": "running"}
    loser_store = next(r[3] for r in results if r[0] == 1)
    with JobStore(loser_store) as store:  # refused before its job, or its job was refused
        assert all(job.state == "refused" for job in store.jobs())


def test_the_keeper_renews_a_shut_off_vm_and_releases_only_its_own(
    lab: list[HostStatus], vm_name: str
) -> None:
    from vmigrate.virt.lease import LeaseKeeper, take_lease

    create_vm(LabVmRequest(vm_name, memory_mib=256))
    conn = open_connection(HOST_A.uri)
    try:
        conn.lookupByName(vm_name).destroy()  # a cold move's source during its copy
        ours = Holder(5, "cold", current_owner(), "store-of-this-test", "cd" * 16)
        taken = take_lease(
            conn.lookupByName(vm_name), ours, vm=vm_name, host="hostA", take_over=False
        )
        assert taken.action == "take" and 0.5 <= taken.settle_s < 1.0
        assert metadata_element("hostA", vm_name, "config")  # shut off: the definition has it
        keeper = LeaseKeeper(ours, vm_name, {"hostA": conn}, taken.lease, interval_s=0.5)
        keeper.start()
        time.sleep(2.5)
        with keeper.paused():
            renewed = lease_on("hostA", vm_name)
            assert renewed is not None and renewed.held_by(ours)
            assert renewed.renewed > taken.lease.renewed and renewed.taken == taken.lease.taken
            time.sleep(1.5)
            assert lease_on("hostA", vm_name) == renewed  # paused: not renewed meanwhile
        keeper.stop()
        # Removed behind its back (a rival taker that backed out, a hand): put back.
        removed = subprocess.run(
            ["virsh", "-c", HOST_A.uri, "metadata", vm_name, NAMESPACE, "--remove", "--config"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert removed.returncode == 0, removed.stderr
        assert keeper.renew() == ["hostA"]
        restored = lease_on("hostA", vm_name)
        assert restored is not None and restored.held_by(ours)
        assert restored.taken == taken.lease.taken
        # Someone else took it over meanwhile: our release leaves theirs in place.
        theirs = foreign_lease(renewed_ago_s=0)
        write_by_hand_config("hostA", vm_name, theirs)
        assert keeper.renew() == [] and keeper.release() == []
        assert lease_on("hostA", vm_name) == theirs
        assert [event for _host, event, _detail in keeper.events] == ["restored", "lost"]
    finally:
        conn.close()


def write_by_hand_config(host: str, vm: str, lease: Lease) -> None:
    result = subprocess.run(
        ["virsh", "-c", URIS[host], "metadata", vm, NAMESPACE, "--key", "vmigrate",
         "--set", lease.to_xml(), "--config"],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_hosts_shows_the_leases_it_finds(
    lab: list[HostStatus], vm_name: str, tmp_path: Path
) -> None:
    create_vm(LabVmRequest(vm_name, memory_mib=256))
    write_by_hand("hostA", vm_name, foreign_lease(renewed_ago_s=600, job=31))
    store = str(tmp_path / "jobs.sqlite")
    result = run_cli("hosts", "--cluster", "lab", "--store", store, "--json")
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    found = [lease for lease in rows["hostA"]["leases"] if lease["vm"] == vm_name]
    assert len(found) == 1, rows["hostA"]["leases"]
    assert found[0]["job"] == 31 and found[0]["owner"] == "alice@ops-elsewhere"
    assert found[0]["state"] == "stale" and 590 < found[0]["age_s"] < 700
    assert "token" not in found[0]
    table = run_cli("hosts", "--cluster", "lab", "--store", store, env={"COLUMNS": "300"})
    assert f"{vm_name}: stale live job 31 of alice@ops-elsewhere, renewed" in table.stdout
    # `vmigrate jobs --leases` finds it too, and says it is not this store's job.
    listed = run_cli("jobs", "--store", store, "--leases", "--json")
    assert listed.returncode == 0, listed.stderr
    ours = [x for x in json.loads(listed.stdout)["leases"] if x["vm"] == vm_name]
    assert [(x["host"], x["job"], x["state"], x["this_store"]) for x in ours] == [
        ("hostA", 31, "stale", False)
    ]
    assert "token" not in ours[0]
