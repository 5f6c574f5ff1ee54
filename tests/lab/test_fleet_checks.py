"""A fleet move's child does not repeat the checks its parent made: it trusts them (a
private file the evacuation hands it) and checks again only what can have changed since.
Counted through the child's stored events; its start-up timed against a full re-check."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmigrate.errors import VmigrateError
from vmigrate.events import ChecksDone, Notice, decode
from vmigrate.lab.config import HOST_A, HOST_B
from vmigrate.lab.lifecycle import HostStatus, lab_up
from vmigrate.lab.vms import LabVmRequest, create_vm, locate_vm, remove_vm
from vmigrate.model import Mode
from vmigrate.preflight import check_move
from vmigrate.store import JobStore
from vmigrate.trusted_checks import RECHECKED, TRUSTED_PREFIX, TrustedChecks

from .helpers import read_events_until, read_rest, run_cli, start_cli

pytestmark = pytest.mark.lab


@pytest.fixture
def two_guests(vm_name: str, lab: list[HostStatus]) -> Iterator[list[str]]:
    lab_up(3)
    names = [f"{vm_name[:40]}-{i}" for i in range(2)]
    for name in names:
        create_vm(LabVmRequest(name, memory_mib=256, disk="shared"))
    yield names
    for name in names:
        with contextlib.suppress(VmigrateError):
            remove_vm(name)


def test_each_move_of_an_evacuation_trusts_its_parents_checks(
    two_guests: list[str], tmp_path: Path
) -> None:
    store = tmp_path / "jobs.sqlite"
    done = run_cli("evacuate", "hostA", "--to", "hostB,hostC", "--store", str(store), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["event"] == "done" and report["empty"], report
    parent = report["job_id"]
    with JobStore(store) as jobs:
        for move in report["moves"]:
            assert move["state"] == "moved", move
            stored = [decode(e.body) for e in jobs.events_after(0, job_id=move["job_id"])]
            checks = [e for e in stored if isinstance(e, ChecksDone)]
            trusted = [
                e for e in stored if isinstance(e, Notice) and e.message.startswith(TRUSTED_PREFIX)
            ]
            # One pre-flight, the parent's: the child says so, and names what it checked again.
            assert len(checks) == 1 and len(trusted) == 1, stored
            assert trusted[0].message.startswith(f"{TRUSTED_PREFIX} {parent};"), trusted
            again = trusted[0].message.split("checked again: ")[1].split(", ")
            assert again and all(name.startswith(RECHECKED) for name in again), again
            families = {f["family"] for f in checks[0].report["findings"]}
            assert {"storage", "cpu", "versions", "connectivity"} <= families  # the parent's
            assert checks[0].report["seconds"] < 2.0, checks[0].report["seconds"]
    for name in two_guests:
        assert set(locate_vm(name)) != {"hostA"}


def _until_checks(args: list[str], store: Path) -> tuple[float, float]:
    """(seconds from the child's start to its checks event, the checks' own seconds)."""
    started = time.monotonic()
    process = start_cli(*args)
    read_events_until(process, "checks", timeout=120)
    to_checks = time.monotonic() - started
    _stdout, stderr = read_rest(process)
    assert process.returncode == 0, stderr
    with JobStore(store) as jobs:  # the run's checks: the newest in the store
        stored = [e for e in jobs.events_after(0) if e.kind == ChecksDone.KIND]
    return to_checks, float(stored[-1].body["seconds"])


def test_a_childs_start_up_with_trusted_checks_against_a_full_recheck(
    two_guests: list[str], tmp_path: Path
) -> None:
    """The same VM moved back and forth between hostA and hostB, six times: alternately as a
    fleet child is started (with the checks made just before) and checking everything."""
    store = tmp_path / "jobs.sqlite"
    vm = two_guests[0]
    figures: dict[str, list[tuple[float, float]]] = {"trusted": [], "full": []}
    here, there = HOST_A.name, HOST_B.name
    for round_ in range(6):
        base = ["live", vm, "--from", here, "--to", there, "--store", str(store), "--json"]
        if round_ % 2 == 0:
            checked = check_move(vm, here, there, mode=Mode.LIVE)
            path = tmp_path / f"checks-{round_}.json"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(TrustedChecks(0, time.time(), checked.report).to_json())
            figures["trusted"].append(_until_checks([*base, "--trust-checks", str(path)], store))
        else:
            figures["full"].append(_until_checks(base, store))
        here, there = there, here
    print(f"\nchild start-up to its checks (s, checks' own s): {figures}")
    trusted = min(s for _t, s in figures["trusted"])
    full = min(s for _t, s in figures["full"])
    assert trusted < full, figures
