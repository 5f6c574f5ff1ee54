"""A guest on Ceph RBD moved live (memory only) against the same guest on local qcow2 disks
moved with vmigrate --copy-storage and with virsh migrate --copy-storage-all (S2,
docs/benchmarks.md), side by side in one run.

Each round makes a fresh lab guest (256 MiB, dirtying 20 MiB/s) with two disks: vda (1 GiB)
holds the guest's 16 MiB pattern, vdb (1 GiB) holds 256 MiB the host wrote. On rbd both are
images of the lab's Ceph pool; locally both are qcow2 files in hostA's private pool. Each is
moved from hostA to hostB over a 1 Gbit/s lab link. Measured per run: outcome, wall time,
guest-observed gap, contiguous heartbeat, bytes through the link (tc counter; the storage
servers' own addresses are not on it), and what hostB's local pool gained.

    python -m bench.network_storage [--pairs 2] [--out bench/results/network-storage.json]

Needs root and `vmigrate lab up --storage rbd`.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import libvirt

from bench.storage import LINK, VDB_DATA_MIB, StorageRun, move, run_alternating
from vmigrate.errors import NotFound
from vmigrate.lab import link
from vmigrate.lab.config import HOST_B, LOCAL_POOL
from vmigrate.lab.heartbeat import heartbeat_report
from vmigrate.lab.vms import LabVmRequest, add_disk, add_network_disk, create_vm, remove_vm

TOOLS = ("vmigrate on rbd", "vmigrate copy-storage", "virsh copy-storage-all")
FILL = f"write -P 0xa5 0 {VDB_DATA_MIB}M"


def _local_allocated_on_hostb() -> int:
    conn = libvirt.open(HOST_B.uri)
    try:
        pool = conn.storagePoolLookupByName(LOCAL_POOL)
        pool.refresh(0)
        return int(pool.info()[2])
    finally:
        conn.close()


def _make_guest(vm: str, on_rbd: bool) -> None:
    create_vm(
        LabVmRequest(vm, memory_mib=256, dirty_rate_mib=20, disk="rbd" if on_rbd else "local")
    )
    if on_rbd:
        add_network_disk(vm, "rbd", "vdb", 1024, FILL)
    else:
        add_disk(vm, LOCAL_POOL, "vdb", 1024, FILL)


def run_once(tool: str, round_no: int) -> StorageRun:
    vm = f"bench-s2-{round_no}-{tool.split()[-1]}"
    try:
        _make_guest(vm, tool == "vmigrate on rbd")
        time.sleep(2)
        allocated_before = _local_allocated_on_hostb()
        link.shape(LINK)
        before = link.status().bytes_shaped
        started = time.monotonic()
        outcome = move(tool, vm, copy_storage=tool == "vmigrate copy-storage")
        total = time.monotonic() - started
        sent = link.status().bytes_shaped - before
        link.reset()
        time.sleep(1)
        beats = heartbeat_report(vm)
        return StorageRun(
            "S2",
            tool,
            round_no,
            outcome,
            round(total, 2),
            round(beats.largest_gap_ms, 1),
            beats.contiguous,
            sent,
            _local_allocated_on_hostb() - allocated_before,
        )
    finally:
        link.reset()
        with contextlib.suppress(NotFound):  # its creation failed: nothing of it is left
            remove_vm(vm)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.network_storage")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/network-storage.json"))
    args = parser.parse_args()
    run_alternating(TOOLS, run_once, pairs=args.pairs, out=args.out)


if __name__ == "__main__":
    main()
