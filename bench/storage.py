"""Live migration of local disks (S1, docs/benchmarks.md): vmigrate --copy-storage against
virsh migrate --copy-storage-all, side by side.

Each round migrates a fresh lab guest (256 MiB, dirtying 20 MiB/s) with two local qcow2
disks from hostA to hostB over a 1 Gbit/s lab link: vda sits on a raw backing file and holds
the guest's 16 MiB pattern, vdb holds 256 MiB the host wrote. virsh users without a way to
pre-create images use --copy-storage-all (libvirt creates a standalone image per disk and
mirrors the whole chain); vmigrate creates the images on the backing chain and mirrors the
top only. Measured per run: outcome, wall time, guest-observed gap, contiguous heartbeat,
bytes through the link (tc counter), and what the destination's images allocate.

    python -m bench.storage [--pairs 2] [--out bench/results/storage.json]

Needs root and `vmigrate lab up`.
"""

from __future__ import annotations

import argparse
import json
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
from vmigrate.lab.vms import LabVmRequest, add_disk, create_vm, remove_vm
from vmigrate.live.policy import DEFAULT_POLICY, PRESETS
from vmigrate.live.runner import LiveRequest, migrate_live

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    Run = TypeVar("Run", bound=DataclassInstance)
else:
    Run = TypeVar("Run")

LINK = "1gbit"
VDB_DATA_MIB = 256
TOOLS = ("vmigrate", "virsh copy-storage-all")


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


def _guest_with_two_local_disks(vm: str) -> list[str]:
    created = create_vm(
        LabVmRequest(vm, memory_mib=256, dirty_rate_mib=20, disk="local", disk_backing=True)
    )
    assert created.disk_path is not None
    vdb = add_disk(vm, LOCAL_POOL, "vdb", 1024, f"write -P 0xa5 0 {VDB_DATA_MIB}M")
    return [created.disk_path, vdb]


def _allocated_on_hostb(paths: list[str]) -> int:
    conn = libvirt.open(HOST_B.uri)
    try:
        pool = conn.storagePoolLookupByName(LOCAL_POOL)
        pool.refresh(0)
        return sum(v.info()[2] for v in pool.listAllVolumes(0) if v.path() in paths)
    finally:
        conn.close()


def run_once(tool: str, round_no: int) -> StorageRun:
    vm = f"bench-s1-{round_no}-{tool.split()[0]}"
    disks = _guest_with_two_local_disks(vm)
    base = disks[0].replace("-vda.qcow2", "-base.img")
    time.sleep(2)
    try:
        link.shape(LINK)
        predicted = _predict(vm) if tool.startswith("vmigrate") else None
        before = link.status().bytes_to_hostb
        started = time.monotonic()
        outcome, measured = move_measured(tool, vm, copy_storage=True)
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


def move_measured(tool: str, vm: str, *, copy_storage: bool) -> tuple[str, dict[str, Any] | None]:
    """One live move from hostA to hostB; its outcome and (vmigrate) its report's figures."""
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
        return report.outcome, {
            "total_s": report.total_s,
            "passes": report.passes,
            "downtime_ms": report.downtime_ms,
            "actions": [f"{a['at_s']}s {a['action']}" for a in report.actions],
        }
    result = subprocess.run(
        ["virsh", "-c", HOST_A.uri, "migrate", "--live", "--p2p", "--persistent",
         "--copy-storage-all", vm, HOST_B.uri],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return ("completed" if result.returncode == 0 else result.stderr.strip()), None


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
    parser.add_argument("--out", type=Path, default=Path("bench/results/storage.json"))
    parser.add_argument("--tool", action="append", choices=TOOLS, help="run only these tools")
    args = parser.parse_args()
    run_alternating(tuple(args.tool or TOOLS), run_once, pairs=args.pairs, out=args.out)


if __name__ == "__main__":
    main()
