"""The roll's gate around the operator's command (fleet/rolling_guard.py), over libvirt's
test:/// driver as the host: a domain there (running or only defined) refuses the command,
naming it and the host; one that appears while the command runs is seen by the watch; the
host is put back in maintenance when someone ended it during the roll. And the lab
upgrade's frozen check (lab/host_freeze.py) over real QEMU command lines."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from vmigrate.fleet.rolling_guard import (
    FOUND_AFTER_COMMAND,
    appeared_during_command,
    found_on_emptied_host,
    host_kept_empty,
)
from vmigrate.fleet.rolling_host import RollStepFailed
from vmigrate.hosts import HostRef
from vmigrate.lab.host_freeze import vm_of, vms_of
from vmigrate.store import JobStore
from vmigrate.virt.connection import open_connection
from vmigrate.virt.host_domains import AppearingWatch, HostDomain, domains_on

DOMAIN = """<domain type='test'>
  <name>{name}</name><memory>131072</memory><vcpu>1</vcpu><os><type>hvm</type></os>
</domain>"""


def _node(tmp_path: Path, *domains: str) -> str:
    node = tmp_path / "node.xml"
    node.write_text("<node>" + "".join(DOMAIN.format(name=d) for d in domains) + "</node>")
    return f"test://{node}"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    with JobStore(tmp_path / "jobs.sqlite") as opened:
        yield opened


def test_a_domain_on_the_emptied_host_refuses_the_command(tmp_path: Path, store: JobStore) -> None:
    ref = HostRef("hostB", _node(tmp_path, "late-vm"))
    store.set_maintenance(ref.name, ref.uri, 7, "rolling upgrade job 3")
    ran: list[str] = []
    with (
        pytest.raises(RollStepFailed) as refused,
        host_kept_empty(store, 3, ref, ran.append),
    ):
        ran.append("the command")
    assert ran == []  # neither the command nor a word about maintenance
    err = refused.value
    assert (err.host, err.vm) == ("hostB", "late-vm")
    assert "late-vm (running, defined)" in err.message
    assert "the command was not run" in err.message
    assert "vmigrate live late-vm --from hostB" in err.fix
    assert "vmigrate jobs resume 3" in err.fix
    assert store.maintenance()[ref.uri].job_id == 7  # the evacuation's mark, kept as it was


def test_an_empty_host_goes_ahead_and_is_put_back_in_maintenance(
    tmp_path: Path, store: JobStore
) -> None:
    ref = HostRef("hostB", _node(tmp_path))
    said: list[str] = []
    with host_kept_empty(store, 3, ref, said.append) as watch:
        assert store.in_maintenance(ref.uri)  # before the command starts
        assert watch.appeared() == []
    assert len(said) == 1 and "no longer in maintenance" in said[0]
    assert store.maintenance()[ref.uri].reason == "rolling upgrade job 3"


def _wait_for(watch: AppearingWatch, count: int) -> None:
    deadline = time.monotonic() + 5.0  # events come through libvirt's event loop thread
    while len(watch.appeared()) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def test_the_watch_sees_a_domain_defined_and_started_after_the_listing(tmp_path: Path) -> None:
    conn = open_connection(_node(tmp_path))  # the event loop runs from here on
    try:
        watch = AppearingWatch(conn, host="hostB")
        assert domains_on(conn, host="hostB") == ()
        conn.defineXML(DOMAIN.format(name="by-hand")).create()
        _wait_for(watch, 2)
        watch.close()
        assert [(a.vm, a.event) for a in watch.appeared()] == [
            ("by-hand", "defined"),
            ("by-hand", "started"),
        ]
        assert domains_on(conn, host="hostB") == (HostDomain("by-hand", "running", True),)
        with pytest.raises(RollStepFailed) as refused:
            appeared_during_command("hostB", watch.appeared(), "it exited 0 after 2 s", 3)
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
    err = refused.value
    assert (err.host, err.vm) == ("hostB", "by-hand")
    assert "by-hand defined at" in err.message and "it exited 0" in err.message
    assert "vmigrate recover by-hand" in err.fix and "jobs resume 3" in err.fix


def test_domains_found_after_the_command_stop_the_health_step() -> None:
    found = (HostDomain("stray", "shut off", True),)
    with pytest.raises(RollStepFailed) as refused:
        found_on_emptied_host("hostB", found, 3, FOUND_AFTER_COMMAND)
    assert "stray (shut off, defined)" in refused.value.message
    assert "its VMs do not come back yet" in refused.value.message
    found_on_emptied_host("hostB", (), 3)  # an empty host goes on


#: A lab host's QEMU as libvirt starts it (the start of a real command line), QEMU probing
#: its capabilities (no -name), the host's sshd, and a libvirtd child that has not exec'ed.
QEMU_VM = [
    "/usr/bin/qemu-system-x86_64",
    "-name",
    "guest=t-roll-1a2b,debug-threads=on",
    "-S",
    "-object",
    '{"qom-type":"secret","id":"masterKey0","format":"raw"}',
    "-machine",
    "pc-q35-10.0,usb=off,dump-guest-core=off",
]
QEMU_PROBE = ["/usr/bin/qemu-system-x86_64", "-S", "-no-user-config", "-machine", "none"]
SSHD = ["sshd: /usr/sbin/sshd -D -f /var/lib/vmigrate-lab/hostB/sshd_config [listener]"]
LIBVIRTD = ["/usr/sbin/libvirtd", "--listen", "--config", "/etc/libvirt/libvirtd.conf"]


def test_the_frozen_check_counts_vms_and_vms_being_started() -> None:
    processes = [(100, LIBVIRTD), (101, QEMU_VM), (102, QEMU_PROBE), (103, SSHD), (104, [])]
    assert vms_of(processes, daemon_pid=100) == ["t-roll-1a2b"]
    assert vm_of(105, LIBVIRTD, daemon_pid=100) == "a VM being started (libvirtd child, pid 105)"
    assert vm_of(100, LIBVIRTD, daemon_pid=100) is None
