"""Every crash window of a cold move is recoverable (#28): `vmigrate cold` is SIGKILLed at
each named failpoint (vmigrate/failpoints.py), then `jobs rollback` finishes it in one run and
`jobs resume` in another. After each: the VM is defined on exactly one host (where the
outcome says), its disk's guest-visible content is unchanged, and no file is left on either
host that no job owns.

One VM per scenario goes back and forth across all its points (each half moves it from where
it is to the other host), so nothing is re-created between points. Scenarios:
- files: a shut-off VM, a qcow2 overlay on a qcow2 backing file, --no-start
  --delete-source-disks: every point a file move reaches;
- keep-state: a running VM (no OS: the firmware loops) with --keep-state: the points only
  a saved state reaches (the others are the files scenario's);
- rbd: a shut-off VM moved with --pool-map local:rbd and back with rbd:local
  (--delete-source-disks): the points only a pool change reaches.
VMIGRATE_CRASH_ALL=1 runs every point each scenario reaches (about three times as long);
VMIGRATE_CRASH_POINTS=NAME,... only those.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt
import pytest

from vmigrate.cold.pool_change import FILE_POOL_TYPES as FILE_POOLS
from vmigrate.domxml.domain import parse_domain
from vmigrate.failpoints import COLD, DELETE_SOURCE, ENV, FILES, KEEP_STATE, POOL_CHANGE, START
from vmigrate.lab.config import HOST_A, HOST_B, LOCAL_POOL_PATH
from vmigrate.lab.hostfs import file_sha256, in_host, on_host
from vmigrate.lab.lifecycle import HostStatus, connect, lab_up
from vmigrate.lab.storage import ceph
from vmigrate.lab.vms import locate_vm
from vmigrate.store import JobStore

from .helpers import pool_volumes, run_cli

pytestmark = pytest.mark.lab
FULL = os.environ.get("VMIGRATE_CRASH_ALL") == "1"
#: VMIGRATE_CRASH_POINTS=a,b: only these points (to look at one window again).
ONLY = frozenset(filter(None, os.environ.get("VMIGRATE_CRASH_POINTS", "").split(",")))
HOSTS = {"hostA": HOST_A, "hostB": HOST_B}
OTHER = {"hostA": "hostB", "hostB": "hostA"}
MIB = 1 << 20


@dataclass
class Scenario:
    vm: str
    store: Path
    flags: dict[str, tuple[str, ...]]  # source host -> the flags of a move from there
    features: frozenset[str]  # what its moves do (failpoints' `needs`)
    own: frozenset[str]  # the features only it covers (all its points when FULL)
    extra: tuple[str, ...] = ()  # points of other scenarios that act differently here
    rbd: bool = False
    baseline: dict[str, set[str]] = field(default_factory=dict)  # files no move touches
    content: str = ""  # sha256 of the guest-visible disk
    here: str = "hostA"
    log: list[str] = field(default_factory=list)

    def points(self) -> list[str]:
        if ONLY:
            return [p.name for p in COLD if p.name in ONLY and p.needs <= self.features]
        return [
            p.name
            for p in COLD
            if p.needs <= self.features
            and (FULL or p.needs & self.own or not self.own or p.name in self.extra)
        ]

    def irreversible(self, point: str) -> bool:
        """Killed here, the source's disks may be gone: the job can only be finished."""
        return DELETE_SOURCE in self.features and _order(point) >= _order(
            "cold.delete-source-disks.started"
        )


def _order(point: str) -> int:
    return [p.name for p in COLD].index(point)


# ---- what is on the hosts ---------------------------------------------------------------
def _rbd(*args: str) -> str:
    done = subprocess.run(
        ["rbd", "-c", str(ceph.CONF), *args], capture_output=True, check=True, timeout=120
    )
    return done.stdout.decode()


def _file_pools(host: str) -> list[str]:
    conn = connect(HOSTS[host])
    try:
        pools = conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)
        return [p.name() for p in pools if ET.fromstring(p.XMLDesc(0)).get("type") in FILE_POOLS]
    finally:
        conn.close()


def _files(scenario: Scenario) -> dict[str, set[str]]:
    """Every volume of the hosts' file pools (where disks, state files and scratch files
    go), and every image in Ceph."""
    found = {
        host: set().union(*(pool_volumes(ref.uri, pool) for pool in _file_pools(host)))
        for host, ref in HOSTS.items()
    }
    if scenario.rbd:
        found["ceph"] = {f"{ceph.RBD_POOL}/{i}" for i in _rbd("ls", ceph.RBD_POOL).split()}
    return found


def _disk(vm: str, host: str) -> tuple[str, str]:
    """('file', path) or ('rbd', pool/image): the VM's disk as defined on `host`."""
    conn = connect(HOSTS[host])
    try:
        (disk,) = parse_domain(conn.lookupByName(vm).XMLDesc(0)).disks
    finally:
        conn.close()
    if disk.network is not None:
        assert disk.network.name is not None
        return "rbd", disk.network.name
    assert disk.path is not None
    return "file", disk.path


def _chain(host: str, path: str) -> set[str]:
    info = in_host(host, "qemu-img", "info", "-U", "--output=json", "--backing-chain", path)
    return {layer["filename"] for layer in json.loads(info.stdout)}


def _content(vm: str, host: str) -> str:
    """SHA-256 of the disk's guest-visible bytes, read apart from vmigrate."""
    kind, where = _disk(vm, host)
    if kind == "rbd":
        done = subprocess.run(
            ["rbd", "-c", str(ceph.CONF), "export", where, "-"],
            capture_output=True,
            check=True,
            timeout=120,
        )
        return hashlib.sha256(done.stdout).hexdigest()
    raw = f"{LOCAL_POOL_PATH}/.t-content-{secrets.token_hex(3)}.raw"
    try:
        in_host(host, "qemu-img", "convert", "-U", "-O", "raw", where, raw, check=True)
        return file_sha256(on_host(host, raw))
    finally:
        on_host(host, raw).unlink(missing_ok=True)


def _vm_files(vm: str, host: str) -> tuple[str, set[str], set[str]]:
    """Where the VM's disk lives (a host, or ceph), its top and its backing files."""
    kind, where = _disk(vm, host)
    if kind == "rbd":
        return "ceph", {where}, set()
    chain = _chain(host, where)
    return host, chain, chain - {where}


def _check(scenario: Scenario, point: str, outcome: str, expected: str) -> None:
    """The VM on `expected` only, its content unchanged, no file no job owns."""
    vm = scenario.vm
    where = locate_vm(vm)
    assert set(where) == {expected}, (
        f"{point} ({outcome}): {vm} is defined on {where}, expected on {expected} only; "
        f"log: {scenario.log[-4:]}"
    )
    assert _content(vm, expected) == scenario.content, (
        f"{point} ({outcome}): the disk's content changed on {expected}"
    )
    place, mine, backing = _vm_files(vm, expected)
    for host, files in _files(scenario).items():
        allowed = set(scenario.baseline[host])
        if host == place:
            allowed |= mine
        if outcome == "resume" and host == OTHER[expected]:
            allowed |= backing  # the original backing file, never deleted (dropped next)
        strays = files - allowed
        assert not strays, (
            f"{point} ({outcome}): left on {host} and owned by no job: {sorted(strays)}; "
            f"log: {scenario.log[-4:]}"
        )


def _drop_left_behind(scenario: Scenario, now_on: str) -> None:
    """A completed file move leaves the VM's backing file on the host it left (vmigrate
    never deletes a backing file: other VMs may need it); remove it so the VM can come back."""
    conn = connect(HOSTS[OTHER[now_on]])
    try:
        pool = conn.storagePoolLookupByName("local")
        pool.refresh(0)
        for volume in pool.listAllVolumes(0):
            if volume.path() not in scenario.baseline[OTHER[now_on]] and volume.name().startswith(
                scenario.vm
            ):
                volume.delete(0)
    finally:
        conn.close()


# ---- one crash, one recovery ------------------------------------------------------------
def _copy_workers() -> list[str]:
    found = subprocess.run(
        ["pgrep", "-f", "vmigrate.virt.copy_worker"], capture_output=True, text=True, check=False
    )
    return found.stdout.split()


def _killed(scenario: Scenario, point: str) -> int:
    """`vmigrate cold` from where the VM is, SIGKILLed at `point`: its job's id."""
    src, dst = scenario.here, OTHER[scenario.here]
    result = run_cli(
        "cold", scenario.vm, "--from", src, "--to", dst, "--store", str(scenario.store),
        "--json", *scenario.flags[src],
        env={ENV: f"{point}=kill"}, timeout=300,
    )  # fmt: skip
    assert result.returncode == -9, (
        f"{point}: vmigrate cold {src}->{dst} was not killed there (exit {result.returncode}):"
        f" {result.stdout[-1500:]} {result.stderr[-1500:]}"
    )
    deadline = time.monotonic() + 40  # its copy helper aborts its streams and goes
    while _copy_workers() and time.monotonic() < deadline:
        time.sleep(0.1)
    with JobStore(scenario.store) as store:
        job = store.jobs(1)[0]
    assert job.state == "interrupted", f"{point}: job {job.id} is {job.state}"
    return job.id


def _jobs(scenario: Scenario, action: str, job_id: int) -> tuple[int, dict[str, Any]]:
    result = run_cli(
        "jobs", "--store", str(scenario.store), action, str(job_id), "--json", timeout=300
    )
    assert "Traceback" not in result.stderr, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    done: dict[str, Any] = next((e for e in events if e.get("event") == "done"), {})
    scenario.log.append(f"{action} {job_id}: exit {result.returncode} {done.get('outcome')} "
                        f"{done.get('message') or result.stderr[-400:]}")  # fmt: skip
    return result.returncode, done


def _rolled_back(scenario: Scenario, point: str) -> None:
    job_id = _killed(scenario, point)
    code, done = _jobs(scenario, "rollback", job_id)
    if scenario.irreversible(point):
        # The source's disks may be gone: the move can only be finished, never undone.
        assert code != 0 and "cannot be rolled back" in scenario.log[-1], scenario.log[-1]
        code, done = _jobs(scenario, "resume", job_id)
        assert code == 0 and done.get("outcome") == "completed", f"{point}: {scenario.log[-1]}"
        scenario.here = OTHER[scenario.here]
        _check(scenario, point, "resume", scenario.here)
        _drop_left_behind(scenario, scenario.here)
        return
    assert code == 0 and done.get("outcome") == "rolled back", (
        f"{point} (rollback): {scenario.log[-1]}"
    )
    _check(scenario, point, "rollback", scenario.here)


def _resumed(scenario: Scenario, point: str) -> None:
    job_id = _killed(scenario, point)
    code, done = _jobs(scenario, "resume", job_id)
    assert code == 0 and done.get("outcome") == "completed" and done.get("placement_ok"), (
        f"{point} (resume): {scenario.log[-1]}"
    )
    scenario.here = OTHER[scenario.here]
    _check(scenario, point, "resume", scenario.here)
    _drop_left_behind(scenario, scenario.here)


def _run_all(scenario: Scenario) -> None:
    scenario.baseline = _files(scenario)
    _place, mine, _backing = _vm_files(scenario.vm, "hostA")
    scenario.baseline["hostA"] -= mine
    scenario.baseline.setdefault("ceph", set())
    scenario.content = _content(scenario.vm, "hostA")
    points = scenario.points()
    assert points, "no failpoint for this scenario"
    started = time.monotonic()
    for point in points:
        _rolled_back(scenario, point)
        _resumed(scenario, point)
    print(f"{scenario.vm}: {len(points)} points in {time.monotonic() - started:.0f} s")


# ---- the VMs ----------------------------------------------------------------------------
def _volume(conn: Any, name: str, backing: str | None = None) -> str:
    backing_xml = (
        f"<backingStore><path>{backing}</path><format type='qcow2'/></backingStore>"
        if backing
        else ""
    )
    volume = conn.storagePoolLookupByName("local").createXML(
        f"<volume><name>{name}</name><capacity unit='MiB'>32</capacity>"
        f"<target><format type='qcow2'/></target>{backing_xml}</volume>",
        0,
    )
    return str(volume.path())


def _write(path: str, pattern: str, offset: str, length: str) -> None:
    written = in_host(
        "hostA", "qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset} {length}", path
    )
    assert written.returncode == 0, written.stderr


def _domain_xml(vm: str, disk: str) -> str:
    return (
        f"<domain type='qemu'><name>{vm}</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>"
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk>"
        "</devices></domain>"
    )


@contextlib.contextmanager
def _vm(vm: str, *, backing: bool, running: bool) -> Iterator[None]:
    conn = connect(HOST_A)
    try:
        base = _volume(conn, f"{vm}-base.qcow2") if backing else None
        if base:
            _write(base, "0x5a", "0", "4M")
        top = _volume(conn, f"{vm}-vda.qcow2", base)
        _write(top, "0xa5", "2M", "1M")
        conn.storagePoolLookupByName("local").refresh(0)
        domain = conn.defineXML(_domain_xml(vm, top))
        if running:
            domain.create()
    finally:
        conn.close()
    try:
        yield
    finally:
        _remove(vm)


def _remove(vm: str) -> None:
    for ref in HOSTS.values():
        conn = connect(ref)
        try:
            with contextlib.suppress(Exception):
                domain = conn.lookupByName(vm)
                with contextlib.suppress(Exception):
                    domain.destroy()
                domain.undefine()
            pool = conn.storagePoolLookupByName("local")
            pool.refresh(0)
            for volume in pool.listAllVolumes(0):
                if volume.name().startswith(vm) or volume.name().startswith(".vmigrate-"):
                    volume.delete(0)
        finally:
            conn.close()


def _scenario(vm: str, tmp_path: Path, **kwargs: Any) -> Scenario:
    return Scenario(vm=vm, store=tmp_path / "jobs.sqlite", **kwargs)


# ---- the tests --------------------------------------------------------------------------
def test_a_file_move_killed_anywhere_is_rolled_back_or_resumed(
    lab: list[HostStatus], vm_name: str, tmp_path: Path
) -> None:
    flags = ("--no-start", "--delete-source-disks")
    scenario = _scenario(
        vm_name,
        tmp_path,
        flags={"hostA": flags, "hostB": flags},
        features=frozenset({FILES, DELETE_SOURCE}),
        own=frozenset(),
    )
    with _vm(vm_name, backing=True, running=False):
        _run_all(scenario)


def test_a_keep_state_move_killed_anywhere_is_rolled_back_or_resumed(
    lab: list[HostStatus], vm_name: str, tmp_path: Path
) -> None:
    flags = ("--keep-state", "--delete-source-disks")
    scenario = _scenario(
        vm_name,
        tmp_path,
        flags={"hostA": flags, "hostB": flags},
        features=frozenset({FILES, KEEP_STATE, START, DELETE_SOURCE}),
        own=frozenset({KEEP_STATE, START}),
        extra=(  # a running guest restored there: started by this job, or not
            "cold.start.before-done",
            "cold.verify-running.before-done",
            "cold.undefine-source.before-done",
            "cold.cleanup-state.before-done",
        ),
    )
    with _vm(vm_name, backing=False, running=True):
        _run_all(scenario)


@pytest.fixture(scope="module")
def rbd(lab: list[HostStatus]) -> list[HostStatus]:
    return lab_up(storage=["rbd"])


def test_a_pool_change_killed_anywhere_is_rolled_back_or_resumed(
    rbd: list[HostStatus], vm_name: str, tmp_path: Path
) -> None:
    scenario = _scenario(
        vm_name,
        tmp_path,
        flags={
            "hostA": ("--no-start", "--delete-source-disks", "--pool-map", "local:rbd"),
            "hostB": ("--no-start", "--delete-source-disks", "--pool-map", "rbd:local"),
        },
        features=frozenset({POOL_CHANGE, DELETE_SOURCE}),
        own=frozenset({POOL_CHANGE}),
        rbd=True,
    )
    with _vm(vm_name, backing=False, running=False):
        try:
            _run_all(scenario)
        finally:
            for image in _rbd("ls", ceph.RBD_POOL).split():
                if image.startswith(vm_name):
                    _rbd("rm", f"{ceph.RBD_POOL}/{image}")
