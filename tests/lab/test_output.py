"""What an operator reads in an 80-column terminal, from the real lab (issue 27): `check` of
a passing VM, `lab status`, `hosts`, and `jobs` after a real move."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from vmigrate.lab.lifecycle import HostStatus
from vmigrate.lab.vms import LabVmRequest, create_vm

from .helpers import run_cli

pytestmark = pytest.mark.lab

NARROW = {"COLUMNS": "80"}


@pytest.fixture
def running_vm(lab: list[HostStatus], vm_name: str) -> str:
    create_vm(LabVmRequest(vm_name, host="A", memory_mib=256, disk="shared"))
    return vm_name


def assert_fits(text: str, width: int = 80) -> None:
    """No line wider than the terminal, but a single word longer than it (a URI)."""
    for line in text.splitlines():
        assert len(line) <= width or len(line.split()) == 1, f"too wide: {line!r}"


def assert_whole(name: str, text: str) -> None:
    assert re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w-]|…)", text), f"{name!r} cut"


def test_check_of_a_passing_vm_fits_in_40_lines_at_80_columns_with_the_warning_visible(
    running_vm: str,
) -> None:
    args = ("check", running_vm, "--from", "hostA", "--to", "hostB")
    report: dict[str, Any] = json.loads(run_cli(*args, "--json").stdout)
    warnings = [f for f in report["findings"] if f["verdict"] == "warn"]
    assert report["ok"] and warnings, report["counts"]  # libvirt 11.3: post-copy resume
    result = run_cli(*args, env=NARROW)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) <= 40, result.stdout
    assert lines[0].startswith("can go ahead, with warnings:"), lines[0]
    assert_fits(result.stdout)
    assert_whole(running_vm, result.stdout)
    flat = " ".join(result.stdout.split())
    for finding in report["findings"]:
        row = [line for line in lines if line.split()[:2] == [finding["verdict"], finding["check"]]]
        assert row, f"no line for {finding['check']}"
    for warning in warnings:
        assert " ".join(warning["summary"].split()) in flat
        assert " ".join(f"fix: {warning['fix']}".split()) in flat


def test_lab_status_fits_80_columns(running_vm: str) -> None:
    result = run_cli("lab", "status", env=NARROW)
    assert result.returncode == 0, result.stderr
    assert_fits(result.stdout)
    for name in ("hostA", "hostB", running_vm):
        assert_whole(name, result.stdout)
    assert re.search(rf"{re.escape(running_vm)}\s\(running\)", result.stdout)


def test_hosts_fits_80_columns(running_vm: str) -> None:
    result = run_cli("hosts", env=NARROW)
    assert_fits(result.stdout)
    for name in ("hostA", "hostB", running_vm):
        assert_whole(name, result.stdout)
    assert "unreachable" not in result.stdout, result.stdout


def test_jobs_after_a_real_move_name_the_hosts_at_80_columns(
    running_vm: str, tmp_path: Path
) -> None:
    store = str(tmp_path / "jobs.sqlite")
    moved = run_cli("live", running_vm, "--from", "hostA", "--to", "hostB", "--store", store)
    assert moved.returncode == 0, moved.stdout[-2000:] + moved.stderr
    listed = run_cli("jobs", "--store", store, env=NARROW)
    assert listed.returncode == 0, listed.stderr
    assert_fits(listed.stdout)
    for name in (running_vm, "hostA", "hostB", "completed"):
        assert_whole(name, listed.stdout)
    assert "qemu+" not in listed.stdout
    shown = run_cli("jobs", "--store", store, "show", "1", env=NARROW)
    assert shown.returncode == 0, shown.stderr
    assert_fits(shown.stdout)
    assert shown.stdout.splitlines()[0].startswith(f"job 1 live {running_vm} hostA -> hostB")
    assert "qemu+tls://127.0.0.2/system" in shown.stdout  # the URI stays in `jobs show`
