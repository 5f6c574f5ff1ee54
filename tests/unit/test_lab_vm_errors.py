"""`lab vm create` and `lab vm rm` turn libvirt's errors, and the lab's own file errors, into
clear vmigrate errors naming the host and VM, and a failed create undoes what it made.

No lab here: the connection is a stand-in whose calls fail like libvirt's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from vmigrate.cli.main import cli
from vmigrate.errors import HostError, LabError
from vmigrate.lab import vms
from vmigrate.lab.image import GuestImage
from vmigrate.virt.connection import LibvirtError


def refuse(words: str) -> Callable[..., Any]:
    def call(*_args: object) -> Any:
        raise LibvirtError(words)

    return call


class FakeDomain:
    def isPersistent(self) -> int:
        return 1

    def isActive(self) -> int:
        return 1

    destroy = staticmethod(refuse("Requested operation is not valid: cannot destroy"))


class FakeConnection:
    """A host that knows the VM (libvirt's method names) and refuses to define one."""

    def __init__(self) -> None:
        self.closed = False

    def lookupByName(self, _name: str) -> FakeDomain:
        return FakeDomain()

    def defineXML(self, _xml: str) -> Any:
        raise LibvirtError("unsupported configuration: no such machine type")

    def close(self) -> int:
        self.closed = True
        return 0


@pytest.fixture
def lab_stand_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """hostA "runs" with a stand-in connection; console files go to tmp_path."""
    seen: dict[str, Any] = {"removed_console": [], "conns": []}

    def connect(_host: object) -> FakeConnection:
        conn = FakeConnection()
        seen["conns"].append(conn)
        return conn

    image = GuestImage(tmp_path / "vmlinux", tmp_path / "initrd", "6.1", "elf")
    monkeypatch.setattr(vms, "connect", connect)
    monkeypatch.setattr(vms, "running_hosts", lambda: {"hostA": object()})
    monkeypatch.setattr(vms, "available_memory_mib", lambda: 1 << 20)
    monkeypatch.setattr(vms, "load_guest_image", lambda: image)
    monkeypatch.setattr(vms, "accelerator", lambda _image: "tcg")
    monkeypatch.setattr(vms, "log_path", lambda vm: tmp_path / f"{vm}.log")
    monkeypatch.setattr(vms, "socket_path", lambda vm: tmp_path / f"{vm}.sock")
    monkeypatch.setattr(vms, "start_collector", lambda _vm: 1)
    monkeypatch.setattr(vms, "_remove_console", seen["removed_console"].append)
    monkeypatch.setattr(vms, "find_domain", lambda _conn, _name: None)
    return seen


def test_create_refused_by_libvirt_is_a_host_error_and_undoes_the_console(
    lab_stand_in: dict[str, Any],
) -> None:
    with pytest.raises(HostError) as caught:
        vms.create_vm(vms.LabVmRequest("vm1", memory_mib=256))
    err = caught.value
    assert err.host == "hostA" and err.vm == "vm1"
    assert "defining it" in str(err) and "unsupported configuration" in str(err)
    assert err.fix
    assert lab_stand_in["removed_console"] == ["vm1"]  # all or nothing
    assert all(conn.closed for conn in lab_stand_in["conns"])


def test_create_that_cannot_start_its_collector_is_a_lab_error(
    lab_stand_in: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(_vm: str) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(vms, "start_collector", no_space)
    with pytest.raises(LabError) as caught:
        vms.create_vm(vms.LabVmRequest("vm1", memory_mib=256))
    assert caught.value.host == "hostA" and caught.value.vm == "vm1"
    assert "No space left on device" in str(caught.value)
    assert "writable and has space" in caught.value.fix


def test_rm_refused_by_libvirt_is_a_host_error_without_traceback(
    lab_stand_in: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vms, "find_domain", lambda _conn, _name: FakeDomain())
    with pytest.raises(HostError) as caught:
        vms.remove_vm("vm1")
    assert caught.value.host == "hostA" and caught.value.vm == "vm1"
    assert "removing it" in str(caught.value) and "cannot destroy" in str(caught.value)
    result = CliRunner().invoke(cli, ["lab", "vm", "rm", "vm1"])
    assert result.exit_code == 1, result.output
    assert "host hostA, VM vm1: removing it" in result.output
    assert "Traceback" not in result.output
    assert all(conn.closed for conn in lab_stand_in["conns"])


def test_rm_that_cannot_remove_the_console_is_a_lab_error(
    lab_stand_in: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(_vm: str) -> None:
        raise PermissionError(13, "Permission denied", "/var/lib/vmigrate-lab/heartbeat/vm1.pid")

    monkeypatch.setattr(vms, "running_hosts", dict)
    monkeypatch.setattr(vms, "_remove_console", denied)
    with pytest.raises(LabError) as caught:
        vms.remove_vm("vm1")
    assert "removing its console" in str(caught.value)
    assert "vm1.pid" in str(caught.value)


def test_rm_names_the_host_of_an_error_translated_without_one(
    lab_stand_in: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from vmigrate.virt.errors import translate

    def lookup_fails(_conn: object, name: str) -> None:
        raise translate(LibvirtError("internal error: lookup failed"), host=None, vm=name)

    monkeypatch.setattr(vms, "find_domain", lookup_fails)
    with pytest.raises(HostError) as caught:
        vms.remove_vm("vm1")
    assert caught.value.host == "hostA"
