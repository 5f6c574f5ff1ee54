"""Live migration of local disks (S1, docs/benchmarks.md): vmigrate --copy-storage against
virsh migrate --copy-storage-all, side by side.

Each round migrates a fresh lab guest (256 MiB, dirtying 20 MiB/s) with two local qcow2
disks from hostA to hostB over a 1 Gbit/s lab link: vda sits on a raw backing file and holds
the guest's 16 MiB pattern, vdb holds 256 MiB the host wrote. virsh users without a way to
pre-create images use --copy-storage-all (libvirt creates a standalone image per disk and
mirrors the whole chain); vmigrate creates the images on the backing chain and mirrors the
top only. Measured per run: outcome, wall time, guest-observed gap, contiguous heartbeat,
bytes through the link (tc counter), and what the destination's images allocate.

With --sparse, vdb is a sparse raw disk instead (2 GiB virtual; 1 GiB of data and 256 MiB of
allocated zeroes written by the host): what crosses the link should be its data, not its
virtual size, and vmigrate's reported `bytes_sent` should say so.

    python -m bench.storage [--pairs 2] [--sparse] [--tool vmigrate] [--out FILE]

Needs root and `vmigrate lab up`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import libvirt

from bench.live import STORE, environment
from vmigrate.forecast import forecast
from vmigrate.lab import link
from vmigrate.lab.config import HOST_A, HOST_B, LOCAL_POOL
from vmigrate.lab.heartbeat import heartbeat_report
from vmigrate.lab.vms import (
    LabVmRequest,
    add_disk,
    create_vm,
    disk_device_xml,
    remove_vm,
    volume_xml,
)
from vmigrate.live.policy import DEFAULT_POLICY, PRESETS
from vmigrate.live.runner import LiveRequest, migrate_live
from vmigrate.virt.connection import AFFECT_LIVE_AND_CONFIG

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    Run = TypeVar("Run", bound=DataclassInstance)
else:
    Run = TypeVar("Run")

LINK = "1gbit"
VDB_DATA_MIB = 256
TOOLS = ("vmigrate", "virsh copy-storage-all")
MIB = 1 << 20
#: --sparse: vdb's virtual size, the random data and the allocated zeroes the host writes.
SPARSE_VIRTUAL_MIB, SPARSE_DATA_MIB, SPARSE_ZERO_MIB = 2048, 1024, 256
SPARSE_DATA_AT_MIB = 256  # where the data starts; the zeroes follow it


@dataclass
class StorageRun:
    scenario: str
    tool: str
    round: int
    outcome: str
    total_s: float
    guest_gap_ms: float
    contiguous: bool
    link_bytes: int
    destination_allocated: int  # S1: the disks' images on hostB; S2: what its pool gained
    # S1, vmigrate: `vmigrate estimate --copy-storage` just before the move, and the move's
    # own figures (passes, libvirt downtime, policy actions) to set beside it
    predicted: dict[str, Any] | None = None
    measured: dict[str, Any] | None = None
    reported_bytes: int = 0  # vmigrate's report: bytes_sent (0 for virsh)


def _guest_with_two_local_disks(vm: str) -> list[str]:
    created = create_vm(
        LabVmRequest(vm, memory_mib=256, dirty_rate_mib=20, disk="local", disk_backing=True)
    )
    assert created.disk_path is not None
    vdb = add_disk(vm, LOCAL_POOL, "vdb", 1024, f"write -P 0xa5 0 {VDB_DATA_MIB}M")
    return [created.disk_path, vdb]


def host_path(host: str, path: str) -> Path:
    """A lab host's /var/lib/libvirt path as seen from outside its namespace."""
    lab_host = HOST_A if host == "hostA" else HOST_B
    return lab_host.private_dir("/var/lib/libvirt") / path.removeprefix("/var/lib/libvirt/")


def add_sparse_raw_disk(vm: str, target: str = "vdb") -> tuple[str, str]:
    """A raw disk of SPARSE_VIRTUAL_MIB on hostA holding SPARSE_DATA_MIB of random data and
    SPARSE_ZERO_MIB of allocated zeroes (written from outside, never through the guest),
    attached to the running VM; its path and the sha256 of the whole disk's content."""
    conn = libvirt.open(HOST_A.uri)
    try:
        xml = volume_xml(f"{vm}-{target}.img", "raw", SPARSE_VIRTUAL_MIB / 1024, sparse=True)
        path = str(conn.storagePoolLookupByName(LOCAL_POOL).createXML(xml, 0).path())
        with host_path("hostA", path).open("r+b") as disk:
            disk.seek(SPARSE_DATA_AT_MIB * MIB)
            for _ in range(SPARSE_DATA_MIB):
                disk.write(os.urandom(MIB))
            for _ in range(SPARSE_ZERO_MIB):
                disk.write(bytes(MIB))
            disk.flush()
            os.fsync(disk.fileno())
        conn.lookupByName(vm).attachDeviceFlags(
            disk_device_xml(path, target, "raw"), AFFECT_LIVE_AND_CONFIG
        )
        return path, content_digest("hostA", path)
    finally:
        conn.close()


def content_digest(host: str, path: str) -> str:
    """sha256 of the file's bytes as read on `host` (holes read as zeroes)."""
    digest = hashlib.sha256()
    with host_path(host, path).open("rb") as disk:
        while chunk := disk.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def _allocated_on_hostb(paths: list[str]) -> int:
    conn = libvirt.open(HOST_B.uri)
    try:
        pool = conn.storagePoolLookupByName(LOCAL_POOL)
        pool.refresh(0)
        return sum(v.info()[2] for v in pool.listAllVolumes(0) if v.path() in paths)
    finally:
        conn.close()


def _guest_with_a_sparse_raw_disk(vm: str) -> list[str]:
    created = create_vm(
        LabVmRequest(vm, memory_mib=256, dirty_rate_mib=20, disk="local", disk_backing=True)
    )
    assert created.disk_path is not None
    vdb, _digest = add_sparse_raw_disk(vm)
    return [created.disk_path, vdb]


def run_once(tool: str, round_no: int, *, sparse: bool = False) -> StorageRun:
    vm = f"bench-s1{'s' if sparse else ''}-{round_no}-{tool.split()[0]}"
    disks = (_guest_with_a_sparse_raw_disk if sparse else _guest_with_two_local_disks)(vm)
    base = disks[0].replace("-vda.qcow2", "-base.img")
    time.sleep(2)
    try:
        link.shape(LINK)
        predicted = _predict(vm) if tool.startswith("vmigrate") else None
        before = link.status().bytes_to_hostb
        started = time.monotonic()
        outcome, measured, reported = move_measured(tool, vm, copy_storage=True)
        total = time.monotonic() - started
        sent = link.status().bytes_to_hostb - before
        link.reset()
        time.sleep(1)
        beats = heartbeat_report(vm)
        return StorageRun(
            "S1",
            tool,
            round_no,
            outcome,
            round(total, 2),
            round(beats.largest_gap_ms, 1),
            beats.contiguous,
            sent,
            _allocated_on_hostb([*disks, base]),
            predicted,
            measured,
            reported,
        )
    finally:
        link.reset()
        remove_vm(vm)


def _predict(vm: str) -> dict[str, Any]:
    """`vmigrate estimate --copy-storage` with live's defaults, as the move will run."""
    result = forecast(
        vm, "hostA", "hostB", PRESETS[DEFAULT_POLICY], store_path=STORE, copy_storage=True
    )
    return {
        **(result.prediction or {}),
        "bandwidth_mib_s": round(result.bandwidth_bps / (1 << 20), 1),
    }


def move(tool: str, vm: str, *, copy_storage: bool) -> str:
    """One live move from hostA to hostB by vmigrate or by virsh; its outcome."""
    return move_measured(tool, vm, copy_storage=copy_storage)[0]


def move_measured(
    tool: str, vm: str, *, copy_storage: bool
) -> tuple[str, dict[str, Any] | None, int]:
    """One live move from hostA to hostB by vmigrate or by virsh; its outcome, (vmigrate) its
    report's figures, and the bytes the tool says it sent (vmigrate's bytes_sent; 0 for
    virsh, which says nothing)."""
    if tool.startswith("vmigrate"):
        request = LiveRequest(
            vm,
            "hostA",
            "hostB",
            PRESETS[DEFAULT_POLICY],
            copy_storage=copy_storage,
            store_path=STORE,
        )
        report = migrate_live(request)
        return (
            report.outcome,
            {
                "total_s": report.total_s,
                "passes": report.passes,
                "downtime_ms": report.downtime_ms,
                "actions": [f"{a['at_s']}s {a['action']}" for a in report.actions],
            },
            report.bytes_sent,
        )
    result = subprocess.run(
        ["virsh", "-c", HOST_A.uri, "migrate", "--live", "--p2p", "--persistent",
         "--copy-storage-all", vm, HOST_B.uri],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return ("completed" if result.returncode == 0 else result.stderr.strip()), None, 0


def run_alternating(
    tools: tuple[str, ...],
    run_once: Callable[[str, int], Run],
    *,
    pairs: int,
    out: Path,
    setting: dict[str, object] | None = None,
) -> None:
    """Every tool once per round, in turn order reversed every other round; the results
    file is rewritten after each run, so an interrupted run keeps what it measured.
    `setting` is what the scenario fixed (by default: this module's link and vdb data)."""
    runs: list[Run] = []
    for round_no in range(pairs):
        for tool in tools if round_no % 2 == 0 else tuple(reversed(tools)):
            run = run_once(tool, round_no)
            print(json.dumps(asdict(run)), flush=True)
            runs.append(run)
            out.parent.mkdir(parents=True, exist_ok=True)
            payload = {
                "environment": environment(),
                **(setting or {"link": LINK, "vdb_data_mib": VDB_DATA_MIB}),
                "pairs": pairs,
                "runs": [asdict(r) for r in runs],
            }
            out.write_text(json.dumps(payload, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.storage")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--sparse", action="store_true", help="vdb: a sparse raw disk")
    parser.add_argument("--tool", action="append", choices=TOOLS, help="default: both")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    default = "storage-sparse.json" if args.sparse else "storage.json"
    setting: dict[str, object] = {"link": LINK, "vdb_data_mib": VDB_DATA_MIB}
    if args.sparse:
        setting = {
            "link": LINK,
            "sparse_virtual_mib": SPARSE_VIRTUAL_MIB,
            "sparse_data_mib": SPARSE_DATA_MIB,
            "sparse_zero_mib": SPARSE_ZERO_MIB,
        }
    run_alternating(
        tuple(args.tool or TOOLS),
        lambda tool, round_no: run_once(tool, round_no, sparse=args.sparse),
        pairs=args.pairs,
        out=args.out or Path("bench/results") / default,
        setting=setting,
    )


if __name__ == "__main__":
    main()
