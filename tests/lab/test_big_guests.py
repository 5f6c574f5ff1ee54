"""Guests of real sizes: 1 and 2 GiB lab guests boot with their default working set, and
`vmigrate evacuate` empties their host onto the others while their heartbeat keeps going."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vmigrate.errors import VmigrateError
from vmigrate.lab.config import HOST_A, HOST_B, HOST_C
from vmigrate.lab.heartbeat import heartbeat_report
from vmigrate.lab.lifecycle import HostStatus, lab_up
from vmigrate.lab.vms import (
    LabVm,
    LabVmRequest,
    create_vm,
    default_working_set_mib,
    locate_vm,
    remove_vm,
)

from .helpers import run_cli

pytestmark = pytest.mark.lab

SIZES_MIB = (1024, 2048)


@pytest.fixture
def big_guests(vm_name: str, lab: list[HostStatus]) -> Iterator[dict[int, LabVm]]:
    """A 1 GiB and a 2 GiB guest on hostA, dirtying a little, removed afterwards."""
    lab_up(3)
    made: dict[int, LabVm] = {}
    try:
        for size in SIZES_MIB:
            name = f"{vm_name[:40]}-{size}"
            made[size] = create_vm(LabVmRequest(name, memory_mib=size, dirty_rate_mib=20))
        yield made
    finally:
        for vm in made.values():
            with contextlib.suppress(VmigrateError):
                remove_vm(vm.name)


def _trio(tmp_path: Path) -> Path:
    """The lab's three hosts with their declared capacities, as cluster `trio`."""
    lines = []
    for host in (HOST_A, HOST_B, HOST_C):
        lines += [f"[hosts.{host.name}]", f'uri = "{host.uri}"']
        lines.append(f"capacity_mib = {host.capacity_mib}")
    lines += ["[clusters.trio]", 'hosts = ["hostA", "hostB", "hostC"]']
    path = tmp_path / "hosts.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _done(stdout: str) -> dict[str, Any]:
    found = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    done = [event for event in found if event["event"] == "done"]
    assert done, [event["event"] for event in found]
    last: dict[str, Any] = done[-1]
    return last


def test_1_and_2_gib_guests_boot_and_are_evacuated(
    big_guests: dict[int, LabVm], tmp_path: Path
) -> None:
    for size, vm in big_guests.items():
        assert vm.memory_mib == size
        # the whole default working set, written before the first beat: memory less 128 MiB
        # where the guest's kernel leaves that much, less where it keeps more
        assert vm.working_set_mib == default_working_set_mib(size) >= size - 160
        assert locate_vm(vm.name) == {"hostA": "running"}
    names = [vm.name for vm in big_guests.values()]

    started = time.monotonic()
    result = run_cli(
        "evacuate", "hostA", "--cluster", "trio", "--hosts", str(_trio(tmp_path)),
        "--store", str(tmp_path / "jobs.sqlite"), "--json", timeout=300,
    )  # fmt: skip
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    report = _done(result.stdout)
    assert report["empty"], report
    moves = {move["vm"]: move for move in report["moves"]}
    assert {moves[name]["state"] for name in names} == {"moved"}, moves
    # hostB (2048 MiB declared, 512 kept) holds the 1 GiB guest; only hostC the 2 GiB one
    placed = {name: moves[name]["destination"] for name in names}
    assert placed == {big_guests[1024].name: "hostB", big_guests[2048].name: "hostC"}, placed
    for name in names:
        where = locate_vm(name)
        assert where == {placed[name]: "running"}, (name, where)
        # the guest kept running: every beat once, in order, across the move
        time.sleep(0.3)
        beats = heartbeat_report(name)
        assert beats.contiguous, (name, beats.problems)
        assert beats.last_seq_by_host.get(placed[name], 0) > 0
        # the lab's heartbeat still reaches the move's report
        assert moves[name]["gap_ms"] is not None and moves[name]["gap_ms"] < 5000
    print(
        "boot s:",
        {size: round(vm.boot_seconds, 1) for size, vm in big_guests.items()},
        f"evacuate {seconds:.1f} s;",
        {name: (moves[name]["seconds"], moves[name]["gap_ms"]) for name in names},
    )
