"""Real shared storage: VMs whose disks live on the lab's iSCSI target (tgt), Ceph cluster
(rbd) and NFS server (Ganesha), moved live and cold; a cephx secret missing on hostB; a
storage server hostB cannot reach."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from vmigrate.domxml.domain import parse_domain
from vmigrate.lab import link
from vmigrate.lab.config import HOST_A, HOST_B, LOCAL_POOL_PATH
from vmigrate.lab.heartbeat import heartbeat_report, wait_for_console
from vmigrate.lab.heartbeat_collector import send_to_guest
from vmigrate.lab.hostfs import file_sha256, in_host, on_host
from vmigrate.lab.lifecycle import HostStatus, connect, lab_down, lab_up
from vmigrate.lab.ports import port_open, wait_for
from vmigrate.lab.processes import is_alive
from vmigrate.lab.state import load_records
from vmigrate.lab.storage import ceph, iscsi, nfs
from vmigrate.lab.storage.common import load_servers
from vmigrate.lab.storage.hosts import prepare_host
from vmigrate.lab.storage.pools import RBD_SECRET_UUID
from vmigrate.lab.storage.servers import server_pids, storage_status
from vmigrate.lab.vms import LabVmRequest, add_network_disk, create_vm, locate_vm, remove_vm
from vmigrate.store import JobStore

from .firewall import dropped
from .helpers import run_cli, start_cli
from .test_lifecycle import _cmdlines, assert_nothing_left

pytestmark = pytest.mark.lab

BACKENDS = ["iscsi", "rbd", "nfs"]
LINK_RATE = "1gbit"
#: A well-formed cephx key that is not client.libvirt's (made by ceph-authtool --gen-key).
OTHER_KEY = "AQAmRw9rWpR7ABAAx8ZROWTSRZgwOB4d+LlAYQ=="
STORAGE_PORTS = {
    iscsi.ISCSI_ADDRESS: (iscsi.ISCSI_PORT,),
    ceph.CEPH_ADDRESS: (ceph.MON_PORT, ceph.MON_V2_PORT, 6800),
    nfs.NFS_ADDRESS: nfs.FORWARDED_PORTS,
}


def _guest(name: str, disk: str = "none") -> LabVmRequest:
    """The guest every live test here moves: its memory is what crosses the link."""
    return LabVmRequest(name, memory_mib=256, working_set_mib=128, dirty_rate_mib=50, disk=disk)


@pytest.fixture(scope="module")
def storage(lab: list[HostStatus]) -> list[HostStatus]:
    return lab_up(storage=BACKENDS)


@pytest.fixture(scope="module")
def diskless_bytes(storage: list[HostStatus]) -> int:
    """What a live move of the same guest without a disk sends over the link."""
    name = "t-storage-diskless"
    create_vm(_guest(name))
    try:
        return int(_shaped_live(name)["bytes_sent"])
    finally:
        remove_vm(name)


def _json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert "Traceback" not in result.stderr, result.stderr
    return dict(json.loads(result.stdout))


def _done(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert "Traceback" not in result.stderr, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    done = [event for event in events if event.get("event") == "done"]
    assert done, result.stdout[-2000:] + result.stderr
    return {**done[-1], "samples": [e for e in events if e.get("event") == "sample"]}


def _by_check(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for finding in report["findings"]:
        found.setdefault(finding["check"], []).append(finding)
    return found


def _shaped_live(vm: str, *extra: str) -> dict[str, Any]:
    link.shape(LINK_RATE)
    try:
        result = run_cli("live", vm, "--from", "hostA", "--to", "hostB", "--json", *extra)
    finally:
        link.reset()
    done = _done(result)
    assert result.returncode == 0 and done["outcome"] == "completed", done
    return done


def _verify_disk(vm: str, host: str) -> None:
    since = time.monotonic_ns()
    send_to_guest(vm, "verify")
    line = wait_for_console(vm, r"^DISK verify", timeout=60, since_ns=since)
    assert line.text.startswith("DISK verify ok") and line.host == host, line


def test_lab_status_shows_each_server_healthy(storage: list[HostStatus]) -> None:
    shown = {s.backend: s for s in storage_status()}
    assert set(shown) == set(BACKENDS)
    assert shown["rbd"].health == "HEALTH_OK"
    assert shown["iscsi"].health == shown["nfs"].health == "serving"
    addresses = {s.address for s in shown.values()}
    assert addresses == {"127.0.0.20", "127.0.0.21", "127.0.0.22"}
    status = _json(run_cli("lab", "status", "--json"))
    assert {s["backend"] for s in status["storage"]} == set(BACKENDS)
    # Root only: tgt admits any initiator and Ganesha trusts the uid a client claims.
    for address, ports in STORAGE_PORTS.items():
        assert port_open(address, ports[0])
        probe = f"import socket; socket.create_connection(({address!r}, {ports[0]}), 3)"
        other = subprocess.run(
            ["runuser", "-u", "nobody", "--", "python3", "-c", probe],
            capture_output=True,
            text=True,
            check=False,
        )
        assert other.returncode != 0 and "ConnectionRefusedError" in other.stderr, other


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_live_and_cold_move_no_disk_data(
    backend: str, storage: list[HostStatus], diskless_bytes: int, vm_name: str, tmp_path: Path
) -> None:
    store = str(tmp_path / "jobs.sqlite")
    create_vm(_guest(vm_name, backend))
    report = _json(run_cli("check", vm_name, "--from", "hostA", "--to", "hostB", "--json"))
    assert report["ok"], report
    found = _by_check(report)
    shared = found["storage.shared"][0]
    assert shared["verdict"] == "pass" and shared["evidence"]["protocol"] == backend
    volume = found["storage.volume"][0]
    assert volume["verdict"] == "pass", volume
    if backend == "nfs":  # no NFS pool without a kernel mount: read as hostB's QEMU will
        assert "no pool needed" in volume["summary"], volume
    else:
        assert volume["evidence"]["destination_pool"] == backend
    if backend != "rbd":  # rbd needs the cephx key to read; its pool proves the volume
        assert volume["evidence"]["read_size"] == 1 << 30, volume
    if backend == "rbd":
        secret = found["storage.secret"][0]
        assert secret["verdict"] == "pass" and "the key works there" in secret["summary"]
    assert found["storage.servers"][0]["verdict"] == "pass"

    there = _shaped_live(vm_name, "--store", store)
    assert there["placement_ok"], there
    assert not there["storage"], there  # nothing copied
    assert all(sample["disk_total"] == 0 for sample in there["samples"])
    ratio = there["bytes_sent"] / diskless_bytes
    assert 0.9 <= ratio <= 1.1, f"{there['bytes_sent']} bytes against {diskless_bytes} diskless"
    assert locate_vm(vm_name) == {"hostB": "running"}
    assert heartbeat_report(vm_name).contiguous
    _verify_disk(vm_name, "hostB")

    since = time.monotonic_ns()
    cold = run_cli("cold", vm_name, "--from", "hostB", "--to", "hostA", "--store", store, "--json")
    done = _done(cold)
    assert cold.returncode == 0 and done["outcome"] == "completed", done
    assert done["bytes_moved"] == 0, done
    assert locate_vm(vm_name) == {"hostA": "running"}
    line = wait_for_console(vm_name, r"^DISK ", timeout=90, since_ns=since)
    assert line.text.startswith("DISK verify ok") and line.host == "hostA", line


def test_copy_storage_copies_the_local_disk_and_leaves_the_rbd_one(
    storage: list[HostStatus], vm_name: str
) -> None:
    create_vm(LabVmRequest(vm_name, memory_mib=256, dirty_rate_mib=20, disk="local"))
    add_network_disk(vm_name, "rbd", "vdb", 256)
    result = run_cli(
        "live", vm_name, "--from", "hostA", "--to", "hostB", "--copy-storage", "--json"
    )
    done = _done(result)
    assert result.returncode == 0 and done["outcome"] == "completed", done
    assert done["storage"]["copied"] == ["vda"], done["storage"]
    assert "vdb" in done["storage"]["shared"], done["storage"]
    assert locate_vm(vm_name) == {"hostB": "running"}
    assert heartbeat_report(vm_name).contiguous
    _verify_disk(vm_name, "hostB")


def test_rbd_secret_missing_on_hostb_fails_the_check_and_live_refuses(
    storage: list[HostStatus], vm_name: str
) -> None:
    create_vm(LabVmRequest(vm_name, memory_mib=256, disk="rbd"))
    conn = connect(HOST_B)
    try:
        conn.secretLookupByUUIDString(RBD_SECRET_UUID).undefine()
        try:
            result = run_cli("check", vm_name, "--from", "hostA", "--to", "hostB", "--json")
            assert result.returncode == 1
            secret = _by_check(_json(result))["storage.secret"][0]
            assert secret["verdict"] == "fail", secret
            assert RBD_SECRET_UUID in secret["summary"] and "hostB" in secret["summary"]
            assert "secret-define" in secret["fix"] and "secret-set-value" in secret["fix"]
            live = run_cli("live", vm_name, "--from", "hostA", "--to", "hostB")
            assert live.returncode != 0 and "Traceback" not in live.stderr
            assert "storage.secret" in live.stdout + live.stderr
            assert locate_vm(vm_name) == {"hostA": "running"}
            assert heartbeat_report(vm_name).contiguous
        finally:
            prepare_host(conn, HOST_B, ["rbd"])  # the secret again, the pool still active
    finally:
        conn.close()


def _blocked_check(vm: str, address: str, port: int) -> None:
    result = run_cli("check", vm, "--from", "hostA", "--to", "hostB", "--json")
    assert result.returncode == 1, result.stdout[-2000:]
    servers = _by_check(_json(result))["storage.servers"][0]
    assert servers["verdict"] == "fail", servers
    assert f"{address}:{port}" in servers["summary"] and "hostB" in servers["summary"]


def test_iscsi_portal_refused_to_new_connections_fails_the_check_and_a_forced_move(
    storage: list[HostStatus], vm_name: str
) -> None:
    """hostA's QEMU keeps its session; hostB (and the check) can open none. Refused rather
    than dropped, so the forced move fails in seconds, not after TCP gives up (~2 min)."""
    create_vm(LabVmRequest(vm_name, memory_mib=256, disk="iscsi"))
    address, port = iscsi.ISCSI_ADDRESS, iscsi.ISCSI_PORT
    with dropped(address, str(port), new_only=True, reject=True):
        _blocked_check(vm_name, address, port)
        live = run_cli("live", vm_name, "--from", "hostA", "--to", "hostB", "--force")
        assert live.returncode != 0 and "Traceback" not in live.stderr, live.stderr
        assert locate_vm(vm_name) == {"hostA": "running"}
    _verify_disk(vm_name, "hostA")


def test_ceph_monitor_dropped_for_new_connections_fails_the_check_and_live_refuses(
    storage: list[HostStatus], vm_name: str
) -> None:
    create_vm(LabVmRequest(vm_name, memory_mib=256, disk="rbd"))
    address, port = ceph.CEPH_ADDRESS, ceph.MON_PORT
    with dropped(address, str(port), new_only=True):
        _blocked_check(vm_name, address, port)
        live = run_cli("live", vm_name, "--from", "hostA", "--to", "hostB")
        assert live.returncode != 0 and "storage.servers" in live.stdout + live.stderr
        assert locate_vm(vm_name) == {"hostA": "running"}
    _verify_disk(vm_name, "hostA")


def _content_sha256(host: str, path: str) -> str:
    """SHA-256 of a disk's guest-visible bytes, read apart from vmigrate: qemu-img writes
    them raw inside the host (where the backing file's path resolves), we hash the file."""
    raw = f"{LOCAL_POOL_PATH}/.t-content-{secrets.token_hex(3)}.raw"
    try:
        in_host(host, "qemu-img", "convert", "-O", "raw", path, raw, check=True)
        return file_sha256(on_host(host, raw))
    finally:
        on_host(host, raw).unlink(missing_ok=True)


def _rbd(*args: str) -> subprocess.CompletedProcess[bytes]:
    """The `rbd` tool as the lab's Ceph admin: what Ceph itself holds, not a pool's listing."""
    return subprocess.run(
        ["rbd", "-c", str(ceph.CONF), *args], capture_output=True, check=True, timeout=120
    )


def _rbd_sha256(image: str) -> str:
    return hashlib.sha256(_rbd("export", f"{ceph.RBD_POOL}/{image}", "-").stdout).hexdigest()


def _rbd_images() -> list[str]:
    return _rbd("ls", ceph.RBD_POOL).stdout.decode().split()


def _cold(vm: str, source: str, destination: str, *extra: str) -> dict[str, Any]:
    since = time.monotonic_ns()
    result = run_cli("cold", vm, "--from", source, "--to", destination, "--json", *extra)
    done = _done(result)
    assert result.returncode == 0 and done["outcome"] == "completed", done
    line = wait_for_console(vm, r"^DISK ", timeout=90, since_ns=since)  # checked on boot
    assert line.text.startswith("DISK verify ok") and line.host == destination, line
    return done


def test_cold_pool_map_imports_a_local_chain_into_ceph_and_exports_it_back(
    storage: list[HostStatus], vm_name: str
) -> None:
    """local:rbd and back: the same guest-visible bytes at every stage, by vmigrate's digests
    (each host reading the disk it knows) and by qemu-img and `rbd export` apart from it."""
    create_vm(LabVmRequest(vm_name, memory_mib=256, disk="local", disk_backing=True))
    qcow2 = f"{LOCAL_POOL_PATH}/{vm_name}-vda.qcow2"
    image = f"{vm_name}-vda"
    conn = connect(HOST_A)
    try:
        conn.lookupByName(vm_name).shutdown()
        wait_for(lambda: locate_vm(vm_name) == {"hostA": "shut off"}, timeout=60, what="shutdown")
        original = _content_sha256("hostA", qcow2)  # a qcow2 on a raw backing file
        conn.lookupByName(vm_name).create()
    finally:
        conn.close()
    wait_for_console(vm_name, r"^DISK verify ok", timeout=90)

    there = _cold(vm_name, "hostA", "hostB", "--pool-map", "local:rbd")
    [imported] = there["pool_changes"]
    assert imported["kind"] == "import" and imported["copied_by"] == "source", imported
    assert imported["destination"] == f"{ceph.RBD_POOL}/{image}" and imported["sha256"]
    assert there["bytes_moved"] == 0 and not there["disks"], there  # QEMU copied, not a stream
    assert locate_vm(vm_name) == {"hostB": "running"}
    conn = connect(HOST_B)
    try:
        [vda] = parse_domain(conn.lookupByName(vm_name).XMLDesc(0)).disks
    finally:
        conn.close()
    assert vda.network is not None and vda.network.name == f"{ceph.RBD_POOL}/{image}", vda
    assert vda.format == "raw" and not vda.backing_chain
    assert _rbd_sha256(image) == original
    used = json.loads(_rbd("du", "--format", "json", f"{ceph.RBD_POOL}/{image}").stdout)
    assert used["images"][0]["used_size"] < 64 << 20, used  # thin in Ceph too

    back = _cold(vm_name, "hostB", "hostA", "--pool-map", "rbd:local", "--delete-source-disks")
    [exported] = back["pool_changes"]
    assert exported["kind"] == "export" and exported["copied_by"] == "destination"
    assert exported["sha256"] == imported["sha256"], (exported, imported)
    assert locate_vm(vm_name) == {"hostA": "running"}
    exported_file = on_host("hostA", exported["destination"])
    assert file_sha256(exported_file) == original
    # Sparse: QEMU's zeros stay holes (the guest wrote 16 MiB, the backing file 1 MiB).
    assert exported_file.stat().st_blocks * 512 < 64 << 20, exported_file.stat()
    assert image not in _rbd_images()  # --delete-source-disks: the image went from Ceph
    assert on_host("hostA", qcow2).exists()  # the first move kept its source disk


def _cold_into_ceph_rolled_back(vm: str) -> dict[str, Any]:
    """`cold --pool-map local:rbd` that fails and is rolled back: its final report."""
    result = run_cli(
        "cold", vm, "--from", "hostA", "--to", "hostB", "--pool-map", "local:rbd", "--json"
    )
    done = _done(result)
    assert result.returncode != 0 and done["outcome"] == "rolled back", done
    return done


def test_cold_pool_map_refuses_an_existing_image_and_rolls_back_a_wrong_key(
    storage: list[HostStatus], vm_name: str
) -> None:
    create_vm(LabVmRequest(vm_name, memory_mib=256, disk="local"))
    image = f"{vm_name}-vda"
    # Made behind libvirt's back, as another tool would: no pool lists it.
    _rbd("create", "--size", "64", f"{ceph.RBD_POOL}/{image}")
    try:
        done = _cold_into_ceph_rolled_back(vm_name)
        # libvirt 11.3 words rbd's EEXIST as "No such file or directory": we say what it means.
        assert f"making {ceph.RBD_POOL}/{image}" in done["message"], done["message"]
        assert "never overwritten" in done["message"]
        assert image in _rbd_images()  # not this job's: never deleted
        assert locate_vm(vm_name) == {"hostA": "running"}  # refused before it stopped
        assert heartbeat_report(vm_name).contiguous
    finally:
        _rbd("rm", f"{ceph.RBD_POOL}/{image}")

    conn = connect(HOST_B)
    try:
        # hostB's secret holds some other key: its pool stays up, its QEMU cannot log in.
        conn.secretLookupByUUIDString(RBD_SECRET_UUID).setValue(base64.b64decode(OTHER_KEY))
        try:
            done = _cold_into_ceph_rolled_back(vm_name)
            assert "on hostB" in done["message"] and "Permission denied" in done["message"]
            assert image not in _rbd_images()  # the half-made image went with the rollback
            assert conn.storagePoolLookupByName("rbd").isActive()  # never refreshed to death
        finally:
            prepare_host(conn, HOST_B, ["rbd"])
    finally:
        conn.close()
    assert locate_vm(vm_name) == {"hostA": "running"}
    _verify_disk(vm_name, "hostA")


def test_cold_pool_map_with_keep_state_resumes_the_guest_on_its_new_image(
    storage: list[HostStatus], vm_name: str
) -> None:
    """The saved state comes back on hostB with the disk now an rbd image: the guest goes on
    where it stopped (its heartbeat contiguous), not rebooted, and reads its pattern there."""
    create_vm(LabVmRequest(vm_name, memory_mib=256, disk="local"))
    result = run_cli(
        "cold", vm_name, "--from", "hostA", "--to", "hostB", "--pool-map", "local:rbd",
        "--keep-state", "--json",
    )  # fmt: skip
    done = _done(result)
    assert result.returncode == 0 and done["outcome"] == "completed", done
    assert done["state"]["sha256"] and done["pool_changes"][0]["sha256"], done
    assert locate_vm(vm_name) == {"hostB": "running"}
    assert heartbeat_report(vm_name).contiguous  # resumed, not booted again
    _verify_disk(vm_name, "hostB")
    assert f"{vm_name}-vda" in _rbd_images()


def _random_disk_vm(vm: str, megabytes: int) -> str:
    """A shut-off VM on hostA whose 1 GiB raw disk starts with `megabytes` of random data
    (random: nothing to skip or compress, so copying it takes a while)."""
    conn = connect(HOST_A)
    try:
        volume = conn.storagePoolLookupByName("local").createXML(
            f"<volume><name>{vm}-vda.img</name><capacity unit='GiB'>1</capacity>"
            "<target><format type='raw'/></target></volume>",
            0,
        )
        stream = conn.newStream(0)
        volume.upload(stream, 0, megabytes << 20, 0)
        for _ in range(megabytes):
            stream.send(secrets.token_bytes(1 << 20))
        stream.finish()
        conn.defineXML(
            f"<domain type='qemu'><name>{vm}</name><memory unit='MiB'>128</memory>"
            "<os><type>hvm</type></os><devices>"
            "<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file='{volume.path()}'/><target dev='vda' bus='virtio'/></disk>"
            "</devices></domain>"
        )
        return str(volume.path())
    finally:
        conn.close()


def _helper_domains() -> list[str]:
    found = []
    for host in (HOST_A, HOST_B):
        conn = connect(host)
        try:
            found += [d.name() for d in conn.listAllDomains(0) if d.name().startswith("vmigrate-")]
        finally:
            conn.close()
    return found


@pytest.mark.parametrize("then", ["rollback", "resume"])
def test_cold_pool_map_killed_mid_copy_into_ceph_then_rolled_back_or_resumed(
    storage: list[HostStatus], vm_name: str, tmp_path: Path, then: str
) -> None:
    """vmigrate SIGKILLed while QEMU copies the disk into Ceph (or digests it): libvirt ends
    the helper domains with our connection; a rollback leaves the source as it was and
    nothing in Ceph, a resume finishes with the same bytes in Ceph."""
    path = _random_disk_vm(vm_name, 400)
    original = file_sha256(on_host("hostA", path))
    image, store = f"{vm_name}-vda", tmp_path / "jobs.sqlite"
    process = start_cli(
        "cold", vm_name, "--from", "hostA", "--to", "hostB", "--pool-map", "local:rbd",
        "--store", str(store), "--json",
    )  # fmt: skip
    try:
        wait_for(
            lambda: any(
                s.name == "pool change vda"
                for job in (JobStore(store).jobs() if store.exists() else [])
                for s in JobStore(store).steps(job.id)
            ),
            timeout=60,
            what="the copy into Ceph to start",
        )
        process.kill()
        process.wait(timeout=30)
    finally:
        process.kill()
    [job] = JobStore(store).jobs()
    assert job.state == "interrupted", job
    states = {s.name: s.state for s in JobStore(store).steps(job.id)}
    assert states["stop"] == "done" and states["pool change vda"] == "started", states
    wait_for(lambda: not _helper_domains(), timeout=30, what="libvirt to end the helpers")
    command = run_cli("jobs", "--store", str(store), then, str(job.id), "--json", timeout=300)
    assert command.returncode == 0, command.stdout + command.stderr
    done = _done(command)
    if then == "rollback":
        assert done["outcome"] == "rolled back", done
        assert locate_vm(vm_name) == {"hostA": "shut off"}
        assert image not in _rbd_images()
    else:
        assert done["outcome"] == "completed" and done["placement_ok"], done
        assert locate_vm(vm_name) == {"hostB": "shut off"}
        assert _rbd_sha256(image) == original
    assert file_sha256(on_host("hostA", path)) == original  # the source disk, untouched
    for host in ("hostA", "hostB"):  # no raw read for a digest left behind
        assert not list(on_host(host, LOCAL_POOL_PATH).glob(".vmigrate-*")), host
    assert not _helper_domains()


def test_cold_pool_map_catches_a_corrupted_image_and_copies_it_again(
    storage: list[HostStatus], vm_name: str, tmp_path: Path
) -> None:
    """The source is digested during the copy, the destination read once after it: an image
    damaged in Ceph between the copy and the check (vmigrate killed there) is caught by the
    destination's read, and the next resume copies it again."""
    path = _random_disk_vm(vm_name, 16)
    original = file_sha256(on_host("hostA", path))
    image, store = f"{vm_name}-vda", tmp_path / "jobs.sqlite"
    killed = run_cli(
        "cold", vm_name, "--from", "hostA", "--to", "hostB", "--pool-map", "local:rbd",
        "--no-rollback", "--store", str(store), "--json",
        env={"VMIGRATE_FAILPOINTS": "cold.verify-pool-change.started"},
    )  # fmt: skip
    assert killed.returncode != 0, killed.stdout + killed.stderr
    [job] = JobStore(store).jobs()
    states = {s.name: s.state for s in JobStore(store).steps(job.id)}
    assert states["pool change vda"] == "done", states
    assert states["verify pool change vda"] == "started", states
    wait_for(lambda: not _helper_domains(), timeout=30, what="libvirt to end the helpers")
    _rbd("bench", "--io-type", "write", "--io-size", "4K", "--io-threads", "1",
         "--io-total", "4K", "--io-pattern", "seq", f"{ceph.RBD_POOL}/{image}")  # fmt: skip
    assert _rbd_sha256(image) != original

    resume = ("jobs", "--store", str(store), "resume", str(job.id), "--json")
    caught = run_cli(*resume, timeout=300)
    done = _done(caught)
    assert caught.returncode == 1 and done["outcome"] == "failed", done
    assert "vda: digest mismatch" in done["message"], done["message"]
    assert {s.name: s.state for s in JobStore(store).steps(job.id)}["pool change vda"] == "failed"
    again = run_cli(*resume, timeout=300)
    done = _done(again)
    assert again.returncode == 0 and done["outcome"] == "completed", done
    assert _rbd_sha256(image) == original  # copied again, checked again
    assert locate_vm(vm_name) == {"hostB": "shut off"}
    assert file_sha256(on_host("hostA", path)) == original  # the source disk, untouched
    assert not _helper_domains()


def test_lab_down_leaves_no_storage_behind(storage: list[HostStatus]) -> None:
    """Last in this module: stop everything, check, and start the plain lab again."""
    records = load_records()
    servers = load_servers()
    pids = [pid for record in servers.values() for pid in server_pids(record)]
    assert len(pids) >= 8, pids  # tgtd; mon, mgr, osd; ganesha (the netns holder), rpcbind, 3 socat
    lab_down()
    assert_nothing_left(records, [])
    assert not [pid for pid in pids if is_alive(pid)]
    for address, ports in STORAGE_PORTS.items():
        for port in ports:
            assert not port_open(address, port), f"{address}:{port} still answers"
    assert not list(Path("/run/tgtd").glob(f"socket.{iscsi.CONTROL}*"))
    cmdlines = _cmdlines()
    assert not [c for c in cmdlines if "portal=127.0.0.20" in c or "bind=127.0.0.22" in c]
    rules = subprocess.run(["iptables", "-S", "OUTPUT"], capture_output=True, text=True).stdout
    assert "vmigrate-lab-storage" not in rules
    lab_up()
