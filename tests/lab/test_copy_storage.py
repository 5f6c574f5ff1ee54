"""`vmigrate live --copy-storage`: local disks move with the memory, shared ones stay put,
and a failed or refused move leaves nothing on the destination."""

from __future__ import annotations

import json
from pathlib import Path

import libvirt
import pytest

from vmigrate.lab import link
from vmigrate.lab.config import HOST_A, HOST_B, LOCAL_POOL, SHARED_POOL
from vmigrate.lab.heartbeat import heartbeat_report
from vmigrate.lab.image import first_bad_disk_block
from vmigrate.lab.lifecycle import HostStatus
from vmigrate.lab.vms import (
    BACKING_DATA_OFFSET,
    DISK_PATTERN_MIB,
    LabVmRequest,
    add_disk,
    backing_data,
    create_vm,
    disk_seed,
    locate_vm,
)
from vmigrate.store import JobStore

from .helpers import in_host, pool_volumes, run_cli, small_pool

pytestmark = pytest.mark.lab
MIB = 1 << 20


def _reads(host: str, path: str, command: str) -> bool:
    """qemu-io inside the host's namespace, through the image's backing chain."""
    result = in_host(host, "qemu-io", "-r", "-U", "-f", "qcow2", "-c", command, path)
    return result.returncode == 0 and "Pattern verification failed" not in result.stdout


def _guest_view(host: str, path: str, scratch: str) -> bytes:
    """The disk as the guest sees it on `host` (the chain resolved there), as raw bytes."""
    converted = in_host(host, "qemu-img", "convert", "-U", "-O", "raw", path, scratch)
    assert converted.returncode == 0, converted.stderr
    lab_host = HOST_A if host == "hostA" else HOST_B
    raw = lab_host.private_dir("/var/lib/libvirt") / scratch.removeprefix("/var/lib/libvirt/")
    try:
        return raw.read_bytes()
    finally:
        raw.unlink()


def _pattern_intact_on_hostb(vm: str, path: str, tmp_path: Path) -> bytes:
    """The guest's disk as seen on hostB, after checking the pattern the guest wrote."""
    view = _guest_view("hostB", path, f"/var/lib/libvirt/images/{vm}.raw")
    scratch = tmp_path / "vda.raw"
    scratch.write_bytes(view)
    assert first_bad_disk_block(scratch, disk_seed(vm), DISK_PATTERN_MIB) is None
    return view


def _done(stdout: str) -> dict[str, object]:
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    done: dict[str, object] = next(e for e in events if e["event"] == "done")
    return done


def test_copy_storage_moves_local_disks_and_backing_file_leaves_shared(
    lab: list[HostStatus], vm_name: str, tmp_path: Path
) -> None:
    store = tmp_path / "jobs.sqlite"
    created = create_vm(
        LabVmRequest(vm_name, memory_mib=256, dirty_rate_mib=20, disk="local", disk_backing=True)
    )
    assert created.disk_path is not None
    vdb = add_disk(vm_name, LOCAL_POOL, "vdb", 64, "write -P 0xa5 0 8M")
    vdc = add_disk(vm_name, SHARED_POOL, "vdc", 256, "write -P 0x3c 0 4M")
    base = created.disk_path.replace("-vda.qcow2", "-base.img")
    shared_before = pool_volumes(HOST_B.uri, SHARED_POOL)
    assert base not in pool_volumes(HOST_B.uri, LOCAL_POOL)

    result = run_cli(
        "live", vm_name, "--from", "hostA", "--to", "hostB", "--copy-storage",
        "--delete-source-disks", "--store", str(store), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    done = _done(result.stdout)
    assert done["outcome"] == "completed" and done["placement_ok"], done
    storage = done["storage"]
    assert isinstance(storage, dict)
    assert storage["copied"] == ["vda", "vdb"] and storage["shared"] == ["vdc"], storage
    assert sorted(storage["created_on_destination"]) == sorted([base, created.disk_path, vdb])
    assert locate_vm(vm_name) == {"hostB": "running"}
    assert heartbeat_report(vm_name).contiguous

    # The guest's pattern (in the overlay) and the backing file's own data, read on hostB.
    view = _pattern_intact_on_hostb(vm_name, created.disk_path, tmp_path)
    assert view[BACKING_DATA_OFFSET : BACKING_DATA_OFFSET + MIB] == backing_data(vm_name)
    assert _reads("hostB", vdb, "read -P 0xa5 0 8M")
    # The shared disk was not copied: only vda and vdb were mirrored, and the shared pool
    # holds the same files, with vdc's data, as before.
    with JobStore(store) as jobs:
        job = jobs.job(int(str(done["job_id"])))
        mirrored = max(s["disk_total"] for s in jobs.samples(job.id))
    assert job.params["options"]["copy_disks"] == ["vda", "vdb"]
    assert 0 < mirrored <= (1024 + 64) * MIB, mirrored
    assert pool_volumes(HOST_B.uri, SHARED_POOL) == shared_before
    assert _reads("hostB", vdc, "read -P 0x3c 0 4M")
    # --delete-source-disks removed the VM's own images on hostA, never the backing file.
    assert sorted(storage["source_images_removed"]) == sorted([created.disk_path, vdb])
    left_on_a = pool_volumes(HOST_A.uri, LOCAL_POOL)
    assert base in left_on_a and created.disk_path not in left_on_a and vdb not in left_on_a


def test_copy_storage_bad_input_changes_nothing(lab: list[HostStatus], vm_name: str) -> None:
    create_vm(LabVmRequest(vm_name, memory_mib=256, disk="local"))
    add_disk(vm_name, LOCAL_POOL, "vdb", 64, "write -P 0xa5 0 1M")
    before = pool_volumes(HOST_B.uri, LOCAL_POOL)
    cases = {
        ("--disks", "vda,vdz"): "does not have",
        ("--disks", "vda"): "vdb",  # a local disk left out would be lost
        ("--disks", ","): "at least one disk",
    }
    for extra, expected in cases.items():
        result = run_cli(
            "live", vm_name, "--from", "hostA", "--to", "hostB", "--copy-storage", *extra
        )
        assert result.returncode != 0, (extra, result.stdout)
        assert expected in result.stdout + result.stderr, (extra, result.stderr)
        assert "Traceback" not in result.stderr
    result = run_cli("live", vm_name, "--from", "hostA", "--to", "hostB", "--disks", "vda")
    assert result.returncode != 0 and "--copy-storage" in result.stderr
    assert locate_vm(vm_name) == {"hostA": "running"}
    assert pool_volumes(HOST_B.uri, LOCAL_POOL) == before


def test_copy_storage_refused_when_the_destination_pool_is_too_small(
    lab: list[HostStatus], vm_name: str
) -> None:
    create_vm(LabVmRequest(vm_name, memory_mib=256))
    with small_pool(16):
        vdb = add_disk(vm_name, "small", "vdb", 64, "write -P 0xa5 0 32M")
        try:
            result = run_cli(
                "live", vm_name, "--from", "hostA", "--to", "hostB", "--copy-storage"
            )  # fmt: skip
            assert result.returncode != 0
            assert "storage.space" in result.stdout + result.stderr, result.stderr
            assert "vdb" in result.stderr, result.stderr
            assert pool_volumes(HOST_B.uri, "small") == set()
            assert locate_vm(vm_name) == {"hostA": "running"}
        finally:
            conn = libvirt.open(HOST_A.uri)
            conn.lookupByName(vm_name).destroy()
            conn.storageVolLookupByPath(vdb).delete(0)
            conn.close()


def test_copy_storage_of_a_busy_guest_finishes_in_postcopy_with_its_disk_intact(
    lab: list[HostStatus], vm_name: str, tmp_path: Path
) -> None:
    created = create_vm(
        LabVmRequest(vm_name, memory_mib=384, working_set_mib=256, dirty_rate_mib=200, disk="local")
    )
    assert created.disk_path is not None
    link.shape("1gbit")  # 200 MiB/s dirtied, 119 MiB/s carried: the policy goes post-copy
    try:
        result = run_cli(
            "live", vm_name, "--from", "hostA", "--to", "hostB", "--copy-storage",
            "--store", str(tmp_path / "jobs.sqlite"), "--json",
        )  # fmt: skip
    finally:
        link.reset()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    done = _done(result.stdout)
    assert done["outcome"] == "completed" and done["postcopy"] and done["placement_ok"], done
    assert locate_vm(vm_name) == {"hostB": "running"}
    assert heartbeat_report(vm_name).contiguous
    _pattern_intact_on_hostb(vm_name, created.disk_path, tmp_path)


def test_copy_storage_of_a_sparse_raw_disk_sends_its_data_not_its_size(
    lab: list[HostStatus], vm_name: str
) -> None:
    """A raw disk of 2 GiB holding 1 GiB of data and 256 MiB of allocated zeroes: its data
    crosses the link, its holes and zeroes do not, and the report's bytes_sent says what
    crossed (issue #26, item 5)."""
    from bench.storage import (
        SPARSE_DATA_MIB,
        SPARSE_VIRTUAL_MIB,
        SPARSE_ZERO_MIB,
        add_sparse_raw_disk,
        content_digest,
    )

    create_vm(LabVmRequest(vm_name, memory_mib=256))
    vdb, digest = add_sparse_raw_disk(vm_name)
    link.shape("1gbit")  # the counter counts shaped traffic only
    try:
        before = link.status().bytes_shaped
        result = run_cli(
            "live", vm_name, "--from", "hostA", "--to", "hostB", "--copy-storage", "--json"
        )
        on_link = link.status().bytes_shaped - before
    finally:
        link.reset()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    done = _done(result.stdout)
    assert done["outcome"] == "completed" and done["placement_ok"], done
    assert locate_vm(vm_name) == {"hostB": "running"}
    assert content_digest("hostB", vdb) == digest  # every byte, holes read as zeroes

    data, zeroes = SPARSE_DATA_MIB * MIB, SPARSE_ZERO_MIB * MIB
    sent, storage = done["bytes_sent"], done["storage"]
    assert isinstance(sent, int) and isinstance(storage, dict), done
    disk_sent = int(storage["disk_bytes_sent"])  # what vdb holds allocated, zeroes too
    memory_sent = sent - disk_sent
    assert 0 < memory_sent < 256 * MIB and data + zeroes <= disk_sent < data + zeroes + 16 * MIB
    # The data and the memory crossed; the zeroes and the holes (1 GiB) did not.
    assert data + memory_sent <= on_link < data + memory_sent + zeroes // 2, on_link / MIB
    # The report says what crossed, counting the allocated zeroes it cannot tell from data:
    # never less than the link carried, never more than those zeroes above it.
    assert on_link <= sent * 1.02 and sent <= on_link + zeroes, (sent / MIB, on_link / MIB)
    assert sent < SPARSE_VIRTUAL_MIB * MIB
