"""Which lab hosts run, which ones `lab up` starts and `lab status` lists, and the error for a
host that is not running. No lab here: the daemon records are stand-ins."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from vmigrate.cli.main import cli
from vmigrate.errors import LabError
from vmigrate.lab import lifecycle, state, vms
from vmigrate.lab.config import HOST_A, HOST_B, HOST_C, HOST_D
from vmigrate.lab.daemons import DaemonRecord
from vmigrate.lab.image import GuestImage
from vmigrate.lab.lifecycle import HostStatus, hosts_beyond, status_hosts

from .test_boundary import PROBE

#: Stand-in records: each "runs" when its PID is in ALIVE.
ALIVE = {101, 103}


@pytest.fixture
def records(monkeypatch: pytest.MonkeyPatch) -> dict[str, DaemonRecord]:
    recorded = {
        "hostC": DaemonRecord(103, "mnt:[3]"),
        "hostA": DaemonRecord(101, "mnt:[1]"),
        "hostB": DaemonRecord(102, "mnt:[2]"),  # died
    }
    monkeypatch.setattr(state, "load_records", lambda: dict(recorded))
    monkeypatch.setattr(DaemonRecord, "is_running", lambda self: self.pid in ALIVE)
    return recorded


def test_lab_modules_that_hosts_py_uses_import_without_libvirt() -> None:
    modules = ["vmigrate.lab.config", "vmigrate.lab.state", "vmigrate.lab.hostfs"]
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *modules], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ok {len(modules)}"


def test_running_lab_hosts_are_the_running_records_in_host_order(
    records: dict[str, DaemonRecord],
) -> None:
    assert state.running_lab_hosts() == (HOST_A, HOST_C)


def test_running_lab_hosts_of_no_lab_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state, "STATE_FILE", Path("/nonexistent/state.json"))
    assert state.running_lab_hosts() == ()


def test_lab_up_without_a_count_keeps_the_lab_as_large_as_it_runs() -> None:
    wanted = lifecycle._wanted_hosts
    assert wanted(None, ()) == (HOST_A, HOST_B)
    assert wanted(None, (HOST_A, HOST_B)) == (HOST_A, HOST_B)
    assert wanted(None, (HOST_A, HOST_B, HOST_C)) == (HOST_A, HOST_B, HOST_C)
    # hostB died in a lab of three: a plain `lab up` brings it back, and stops nothing.
    assert wanted(None, (HOST_A, HOST_C)) == (HOST_A, HOST_B, HOST_C)
    assert wanted(3, (HOST_A, HOST_B)) == (HOST_A, HOST_B, HOST_C)
    assert wanted(2, (HOST_A, HOST_B, HOST_C, HOST_D)) == (HOST_A, HOST_B)


def test_hosts_beyond_the_count_are_named_not_stopped() -> None:
    hosts = [
        HostStatus("hostA", HOST_A.uri, running=True),
        HostStatus("hostB", HOST_B.uri, running=True),
        HostStatus("hostC", HOST_C.uri, running=True),
        HostStatus("hostD", HOST_D.uri, running=False),
    ]
    assert hosts_beyond(2, hosts) == ["hostC"]
    assert hosts_beyond(3, hosts) == []
    assert hosts_beyond(None, hosts) == []


def test_status_lists_the_default_hosts_and_every_recorded_one() -> None:
    assert status_hosts({}) == (HOST_A, HOST_B)
    assert status_hosts({"hostA": 1, "hostB": 2}) == (HOST_A, HOST_B)
    assert status_hosts({"hostD": 1, "hostA": 2, "hostB": 3}) == (HOST_A, HOST_B, HOST_D)


def test_a_host_that_is_not_running_says_how_to_start_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "running_lab_hosts", lambda: (HOST_A, HOST_B))
    with pytest.raises(LabError) as caught:
        lifecycle.connect(HOST_C)
    assert caught.value.host == "hostC"
    assert "not running (the lab runs hostA, hostB)" in str(caught.value)
    assert "vmigrate lab up --hosts 3" in caught.value.fix
    monkeypatch.setattr(lifecycle, "running_lab_hosts", tuple)
    with pytest.raises(LabError) as caught:
        lifecycle.connect(HOST_B)
    assert "the lab is not running" in str(caught.value)
    assert caught.value.fix == "start it with `vmigrate lab up`"


def test_vm_create_on_a_host_not_running_is_a_lab_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    image = GuestImage(tmp_path / "vmlinux", tmp_path / "initrd", "6.1", "elf")
    monkeypatch.setattr(vms, "load_guest_image", lambda: image)
    monkeypatch.setattr(vms, "available_memory_mib", lambda: 1 << 20)
    monkeypatch.setattr(lifecycle, "running_lab_hosts", lambda: (HOST_A, HOST_B))
    result = CliRunner().invoke(cli, ["lab", "vm", "create", "vm1", "--host", "D"])
    assert result.exit_code == 1, result.output
    assert "hostD" in result.output
    assert "vmigrate lab up --hosts 4" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("count", ["1", "5", "two"])
def test_lab_up_refuses_a_host_count_outside_2_to_4(count: str) -> None:
    result = CliRunner().invoke(cli, ["lab", "up", "--hosts", count])
    assert result.exit_code == 2, result.output
    assert "--hosts" in result.output
