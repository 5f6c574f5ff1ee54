"""The `vmigrate lab` commands as a user runs them: clear errors, exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from vmigrate.cli.main import cli
from vmigrate.lab.config import SHARED_POOL_PATH
from vmigrate.lab.lifecycle import HostStatus
from vmigrate.lab.vms import locate_vm

from .helpers import run_cli

pytestmark = pytest.mark.lab


def assert_clean_failure(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for word in words:
        assert word in result.stderr, result.stderr


def test_status_json_describes_both_hosts(lab: list[HostStatus]) -> None:
    result = run_cli("lab", "status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    hosts = {h["name"]: h for h in status["hosts"]}
    assert hosts["hostA"]["uri"] == hosts["hostA"]["uris"]["tls"]  # TLS by default
    assert set(hosts["hostA"]["uris"]) == {"tls", "ssh"}  # no plain TCP unless asked
    for transport, uri in hosts["hostB"]["uris"].items():  # each works as it is with virsh
        answer = subprocess.run(
            ["virsh", "-c", uri, "hostname"], capture_output=True, text=True, timeout=30
        )
        assert answer.stdout.strip() == "hostB", (transport, answer.stderr)
    assert hosts["hostB"]["running"] is True
    assert hosts["hostB"]["libvirt_version"].split(".")[0] >= "1"
    assert status["link"]["shaped"] is False


def test_create_heartbeat_and_remove_from_the_command_line(
    lab: list[HostStatus], vm_name: str
) -> None:
    created = run_cli("lab", "vm", "create", vm_name, "--memory", "256", "--host", "B")
    assert created.returncode == 0, created.stderr
    assert "runs on hostB" in created.stdout
    report = json.loads(run_cli("lab", "heartbeat", vm_name, "--json").stdout)
    assert report["vm"] == vm_name
    assert report["contiguous"] is True
    assert report["beats"] > 0
    assert report["last_seq_by_host"].keys() == {"hostB"}
    assert run_cli("lab", "vm", "set-rate", vm_name, "20").returncode == 0
    removed = run_cli("lab", "vm", "rm", vm_name)
    assert removed.returncode == 0 and "hostB" in removed.stdout
    assert locate_vm(vm_name) == {}


@pytest.mark.parametrize(
    "command",
    [
        ("lab", "vm", "rm", "no-such-vm"),
        ("lab", "vm", "set-rate", "no-such-vm", "10"),
        ("lab", "heartbeat", "no-such-vm"),
    ],
)
def test_unknown_vm(lab: list[HostStatus], command: tuple[str, ...]) -> None:
    assert_clean_failure(run_cli(*command), 1, "no-such-vm", "what to do")


def test_existing_vm_is_not_created_twice(lab: list[HostStatus], vm_name: str) -> None:
    assert run_cli("lab", "vm", "create", vm_name, "--memory", "256").returncode == 0
    assert_clean_failure(
        run_cli("lab", "vm", "create", vm_name, "--memory", "256", "--host", "B"),
        1,
        "already exists",
        "vmigrate lab vm rm",
    )
    assert locate_vm(vm_name) == {"hostA": "running"}


def test_memory_larger_than_the_machine(lab: list[HostStatus], vm_name: str) -> None:
    result = run_cli(
        "lab", "vm", "create", vm_name, "--memory", str(64 * 1024 * 1024), "--disk", "shared"
    )
    assert_clean_failure(result, 2, "does not fit", "MiB available")
    assert locate_vm(vm_name) == {}
    assert not list(SHARED_POOL_PATH.glob(f"{vm_name}*"))


def test_bad_link_rate(lab: list[HostStatus]) -> None:
    assert_clean_failure(run_cli("lab", "link", "--rate", "fast"), 2, "is not a rate")


def test_missing_guest_image_says_to_run_setup(
    lab: list[HostStatus], vm_name: str, tmp_path: Path
) -> None:
    result = run_cli(
        "lab",
        "vm",
        "create",
        vm_name,
        "--memory",
        "256",
        env={"VMIGRATE_GUEST_CACHE": str(tmp_path)},
    )
    assert_clean_failure(result, 1, "guest image is not built", "scripts/setup.sh")
    assert locate_vm(vm_name) == {}


@pytest.mark.parametrize(
    "command", [("lab", "up"), ("lab", "down"), ("lab", "link", "--rate", "1gbit")]
)
def test_lab_commands_refuse_to_run_without_root(
    monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    result = CliRunner().invoke(cli, list(command))
    assert result.exit_code == 1
    assert "needs root" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
