"""Lab VMs boot, beat, change rate, carry a disk, and move live between the hosts."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmigrate.errors import AlreadyExists, LabError, NotFound, UsageError
from vmigrate.lab.config import SHARED_POOL_PATH
from vmigrate.lab.diskcheck import check_disk_image
from vmigrate.lab.heartbeat import read_console, wait_for_console
from vmigrate.lab.heartbeat_collector import log_path, send_to_guest
from vmigrate.lab.lifecycle import HostStatus
from vmigrate.lab.vms import (
    DISK_PATTERN_MIB,
    LabVmRequest,
    available_memory_mib,
    create_vm,
    disk_seed,
    locate_vm,
    remove_vm,
    set_rate,
)

from .helpers import beats_after, virsh_migrate_live

pytestmark = pytest.mark.lab


def test_vm_boots_on_hosta_and_beats(lab: list[HostStatus], vm_name: str) -> None:
    created = create_vm(LabVmRequest(vm_name, host="A", memory_mib=256))
    assert created.host == "hostA"
    assert locate_vm(vm_name) == {"hostA": "running"}
    report = beats_after(vm_name, 1.0)
    assert report.contiguous
    assert report.beats >= 50  # one beat every 10 ms
    assert report.largest_gap_ms < 500
    assert set(report.last_seq_by_host) == {"hostA"}


def test_busy_vm_moves_live_to_hostb_with_contiguous_heartbeat(
    lab: list[HostStatus], vm_name: str
) -> None:
    create_vm(
        LabVmRequest(vm_name, host="A", memory_mib=256, working_set_mib=128, dirty_rate_mib=100)
    )
    virsh_migrate_live(vm_name)
    assert locate_vm(vm_name).get("hostB") == "running"
    assert locate_vm(vm_name).get("hostA") != "running"
    report = beats_after(vm_name, 1.0)
    assert report.contiguous, report.problems
    assert report.largest_gap_ms < 1000
    # The guest kept beating on hostB after the last beat hostA delivered.
    assert report.last_seq_by_host["hostB"] > report.last_seq_by_host["hostA"]


def test_rate_changes_while_the_guest_runs(lab: list[HostStatus], vm_name: str) -> None:
    create_vm(LabVmRequest(vm_name, host="B", memory_mib=256, working_set_mib=64))
    set_rate(vm_name, 150)  # returns only once the guest printed "RATE 150"
    assert any(line.text == "RATE 150" for line in read_console(vm_name))


@pytest.mark.parametrize("disk_format", ["qcow2", "raw"])
def test_disk_on_shared_pool_holds_what_the_guest_wrote_after_a_live_move(
    lab: list[HostStatus], vm_name: str, disk_format: str
) -> None:
    created = create_vm(
        LabVmRequest(vm_name, host="A", memory_mib=256, disk="shared", disk_format=disk_format)
    )
    assert created.disk_path is not None
    assert created.disk_path.startswith(str(SHARED_POOL_PATH))
    check = check_disk_image(
        Path(created.disk_path), disk_format, seed=disk_seed(vm_name), disk_mib=DISK_PATTERN_MIB
    )
    assert check.ok, f"first bad block {check.first_bad_block}"
    virsh_migrate_live(vm_name)
    # The guest, now on hostB, reads its disk back through the same shared image.
    send_to_guest(vm_name, "verify")
    line = wait_for_console(vm_name, r"^DISK verify", timeout=60)
    assert line.text.startswith("DISK verify ok"), line.text
    assert line.host == "hostB"


def test_local_disk_lives_in_the_hosts_private_pool(lab: list[HostStatus], vm_name: str) -> None:
    created = create_vm(
        LabVmRequest(vm_name, host="B", memory_mib=256, disk="local", disk_format="qcow2")
    )
    assert created.disk_path == f"/var/lib/libvirt/images/{vm_name}-vda.qcow2"
    assert remove_vm(vm_name) == ["hostB"]
    assert locate_vm(vm_name) == {}


def test_creating_a_vm_that_exists_is_refused_and_changes_nothing(
    lab: list[HostStatus], vm_name: str
) -> None:
    create_vm(LabVmRequest(vm_name, host="A", memory_mib=256))
    with pytest.raises(AlreadyExists) as caught:
        create_vm(LabVmRequest(vm_name, host="B", memory_mib=256))
    assert vm_name in str(caught.value) and "vmigrate lab vm rm" in str(caught.value)
    assert locate_vm(vm_name) == {"hostA": "running"}
    assert beats_after(vm_name, 0.5).contiguous


def test_memory_beyond_the_machine_is_refused_before_anything_is_made(
    lab: list[HostStatus], vm_name: str
) -> None:
    too_much = available_memory_mib() + 1024
    with pytest.raises(UsageError) as caught:
        create_vm(LabVmRequest(vm_name, memory_mib=too_much, disk="shared"))
    assert "available" in str(caught.value)
    assert locate_vm(vm_name) == {}
    assert not log_path(vm_name).exists()
    assert not list(SHARED_POOL_PATH.glob(f"{vm_name}*"))


def test_a_guest_that_fails_to_boot_leaves_nothing_half_made(
    lab: list[HostStatus], vm_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A working set the guest cannot hold makes it give up during boot.
    from vmigrate.lab import vms

    monkeypatch.setattr(vms, "max_working_set_mib", lambda memory_mib: memory_mib)
    monkeypatch.setattr(vms, "BOOT_TIMEOUT_SECONDS", 15.0)
    with pytest.raises(LabError, match="did not print"):
        create_vm(LabVmRequest(vm_name, memory_mib=256, working_set_mib=250, disk="shared"))
    assert locate_vm(vm_name) == {}
    assert not log_path(vm_name).exists()
    assert not list(SHARED_POOL_PATH.glob(f"{vm_name}*"))


@pytest.mark.parametrize("action", ["rm", "set-rate"])
def test_unknown_vm_is_a_clear_error(lab: list[HostStatus], action: str) -> None:
    with pytest.raises(NotFound) as caught:
        if action == "rm":
            remove_vm("no-such-vm")
        else:
            set_rate("no-such-vm", 10)
    assert "no-such-vm" in str(caught.value)
    assert "vmigrate lab status" in str(caught.value)


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ".hidden"])
def test_names_that_could_leave_the_lab_directory_are_refused(
    lab: list[HostStatus], name: str
) -> None:
    for action in (
        lambda: create_vm(LabVmRequest(name, memory_mib=256)),
        lambda: remove_vm(name),
        lambda: set_rate(name, 10),
    ):
        with pytest.raises(UsageError) as caught:
            action()
        assert "is not a valid lab VM name" in str(caught.value)
        assert "letters, digits" in caught.value.fix
    assert locate_vm(name) == {}
