"""A cold move the plan already knows cannot work is refused before its first step: the VM is
not stopped, no job is recorded. Here for --keep-state, with libvirt replaced by fakes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from vmigrate.cold import runner
from vmigrate.cold.plan import ColdPlan
from vmigrate.cold.runner import ColdRequest, migrate_cold, plan_cold
from vmigrate.errors import OutOfSpace, UsageError, VmigrateError
from vmigrate.facts import HostFacts, PoolFacts, ShareProbe, VolumeInfo
from vmigrate.hosts import HostRef
from vmigrate.model import CheckReport, Mode
from vmigrate.store import JobStore

GIB, MIB = 1 << 30, 1 << 20
IMAGES, SHARED = "/var/lib/libvirt/images", "/srv/shared"
DISK = (
    "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
    f"<source file='{SHARED}/vm.qcow2'/><target dev='vda' bus='virtio'/></disk>"
)


def domain_xml(disks: str = "") -> str:
    return (
        "<domain type='kvm'><name>vm</name><uuid>00000000-0000-0000-0000-000000000001</uuid>"
        "<memory unit='MiB'>1024</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc-q35-9.2'>hvm</type></os>"
        f"<devices>{disks}</devices></domain>"
    )


class FakeDomain:
    def __init__(self, xml: str) -> None:
        self.xml = xml

    def isPersistent(self) -> int:  # libvirt's names
        return 1

    def XMLDesc(self, _flags: int = 0) -> str:
        return self.xml


class FakePool:
    def __init__(self, name: str) -> None:
        self._name = name

    def name(self) -> str:
        return self._name


class FakeConnection:
    def listAllStoragePools(self, _flags: int) -> list[FakePool]:
        return [FakePool("local"), FakePool("shared")]

    def close(self) -> None:
        pass


def pools(local_free: int, shared_free: int = 50 * GIB) -> tuple[PoolFacts, ...]:
    return (
        PoolFacts("local", "dir", IMAGES, True, 100 * GIB, 0, local_free),
        PoolFacts("shared", "dir", SHARED, True, 100 * GIB, 0, shared_free),
    )


def host(name: str, pool_facts: tuple[PoolFacts, ...]) -> HostFacts:
    return HostFacts(
        ref=HostRef(name, f"qemu+tls://{name}/system"),
        hostname=name,
        host_uuid=name,
        libvirt_version=11_003_000,
        hypervisor_type="QEMU",
        hypervisor_version=10_000_000,
        arch="x86_64",
        cpus=4,
        memory_free_bytes=8 * GIB,
        memory_available_bytes=8 * GIB,
        rtt_ms=0.2,
        pools=pool_facts,
        networks=(),
        host_interfaces=(),
        domains={},
    )


class Lab:
    """The two fake hosts: what each knows, and every probe the plan made."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, xml: str) -> None:
        self.facts = {"kvm1": host("kvm1", pools(50 * GIB)), "kvm2": host("kvm2", pools(50 * GIB))}
        self.shared: set[str] = set()  # source pools both hosts see
        self.probed: list[str] = []
        self.moves = 0
        connections = {"kvm1": FakeConnection(), "kvm2": FakeConnection()}

        def probe(_src: Any, _dst: Any, pool: str) -> ShareProbe:
            self.probed.append(pool)
            shared = pool in self.shared
            return ShareProbe(shared, pool if shared else None, "probe")

        def chain(_conn: Any, path: str) -> list[VolumeInfo]:
            return [VolumeInfo(path, "vm.qcow2", "shared", SHARED, "qcow2", GIB, MIB, MIB, None)]

        def refuse_to_move(*_args: Any) -> None:
            self.moves += 1
            raise AssertionError("a step ran")

        passing = CheckReport("vm", "kvm1", "kvm2", Mode.COLD, False, (), 0.1)
        patches: dict[str, Any] = {
            "run_checks": lambda *_a, **_k: passing,
            "resolve_host": lambda spec, _file=None: HostRef(spec, f"qemu+tls://{spec}/system"),
            "_connect": lambda ref: connections[ref.name],
            "lookup_domain": lambda _conn, _vm, host: FakeDomain(xml),
            "domain_state": lambda _domain: "running",
            "gather_host_facts": lambda _conn, ref: self.facts[ref.name],
            "probe_shared_pool": probe,
            "volume_chain": chain,
            "volume_at": lambda _conn, _path: None,
            "ColdMove": refuse_to_move,
        }
        for name, value in patches.items():
            monkeypatch.setattr(runner, name, value)


def request(tmp_path: Path, **extra: Any) -> ColdRequest:
    return ColdRequest(
        "vm", "kvm1", "kvm2", keep_state=True, store_path=tmp_path / "jobs.sqlite", **extra
    )


def test_diskless_vm_state_goes_through_the_destinations_local_pool(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    lab = Lab(monkeypatch, domain_xml())
    plan = plan_cold(request(tmp_path))
    state = plan.state_file
    assert state is not None and not state.shared
    assert (state.source_pool, state.destination_pool) == ("local", "local")
    assert state.source_path.startswith(f"{IMAGES}/.vmigrate-vm-")
    assert state.source_path.endswith(".save") and state.size == 1088 * MIB
    assert sorted(lab.probed) == ["local", "shared"]  # a shared pool is never copied onto itself
    assert ColdPlan.from_dict(plan.to_dict()) == plan  # as the job store keeps it


def test_shared_disk_vm_state_stays_on_the_shared_pool(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    lab = Lab(monkeypatch, domain_xml(DISK))
    lab.shared = {"shared"}
    plan = plan_cold(request(tmp_path))
    assert plan.shared_disks == ("vda",) and plan.copies == ()
    state = plan.state_file
    assert state is not None and state.shared and state.destination_pool == "shared"
    assert state.destination_path == state.source_path
    # Named by the user, the local pool carries it instead: saved, then copied.
    named = plan_cold(request(tmp_path, state_pool="local")).state_file
    assert named is not None and not named.shared and named.destination_pool == "local"


@pytest.mark.parametrize(
    ("destination", "error", "words"),
    [
        (pools(512 * MIB, 512 * MIB), OutOfSpace, "'local' on kvm2 has 512 MiB free"),
        ((PoolFacts("lvm", "logical", "/dev/vg", True, GIB, 0, GIB),), VmigrateError, "no dir"),
    ],
    ids=["no-room-for-the-state-file", "no-pool-for-the-state-file"],
)
def test_impossible_state_file_is_refused_before_the_vm_is_touched(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    destination: tuple[PoolFacts, ...],
    error: type[VmigrateError],
    words: str,
) -> None:
    lab = Lab(monkeypatch, domain_xml())
    lab.facts["kvm2"] = replace(lab.facts["kvm2"], pools=destination)
    with pytest.raises(error, match=words) as caught:
        migrate_cold(request(tmp_path))
    assert "--state-pool" in caught.value.fix
    assert lab.moves == 0  # no step ran: the VM was never stopped
    assert JobStore(tmp_path / "jobs.sqlite").jobs() == []  # and no job was recorded


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"start": False}, "--no-start contradicts"),
        ({"state_pool": "nope"}, "kvm1 has no active pool 'nope'"),
    ],
)
def test_contradictory_or_mistyped_state_options_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, extra: dict[str, Any], words: str
) -> None:
    lab = Lab(monkeypatch, domain_xml())
    with pytest.raises(UsageError, match=words):
        migrate_cold(request(tmp_path, **extra))
    assert lab.moves == 0
    with pytest.raises(UsageError, match="add --keep-state"):
        plan_cold(replace(request(tmp_path), keep_state=False, state_pool="local"))
