"""A running guest's local disks moved into Ceph on a cold move (S3, docs/benchmarks.md):
vmigrate cold --pool-map local:rbd against what operators script today, side by side.

Each round makes a fresh lab guest (256 MiB) with two local qcow2 disks on hostA: vda on a
raw backing file, holding the guest's 16 MiB pattern; vdb (1 GiB) holding 256 MiB the host
wrote. Each tool brings it to hostB running from rbd images of the lab's Ceph pool:
- vmigrate: `cold --pool-map local:rbd` (one paused helper domain per host for both disks:
  hostA's QEMU copies them into Ceph side by side, digesting what it copies, hostB's reads
  them back once for its digests; then define, start, watch it run until hostB's libvirt
  and QEMU say the guest runs, undefine);
- the same with the disks copied one at a time (PARALLEL_COPIES = 1): what copying them
  side by side gains on the lab's path to Ceph;
- the script: shut the guest down, `qemu-img convert -O raw FILE rbd:POOL/IMAGE` on hostA with
  the Ceph admin keyring in a file there (what Nova, Proxmox and most runbooks do), define the
  guest on hostB with its disks rewritten to the images, start it, undefine it on hostA. It
  verifies nothing.
Measured per run: outcome, wall time (the command, from the running guest to it running on
hostB), guest downtime (its last beat on hostA to its first on hostB), what Ceph holds for
the images (`rbd du`), whether the digests of both sides were compared, and whether the guest
found its own pattern on boot; for vmigrate, where its time went, from its journal; the
machine's 1-minute load average at each run's start and end.

    python -m bench.ceph_import [--pairs 2] [--out bench/results/ceph-import.json]

Needs root and `vmigrate lab up --storage rbd`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.storage import run_alternating
from vmigrate.cold import pool_change_steps
from vmigrate.cold.pool_change import image_name_for
from vmigrate.cold.runner import ColdRequest, migrate_cold
from vmigrate.domxml.disks import rbd_disk_xml
from vmigrate.domxml.domain import parse_domain
from vmigrate.domxml.rewrite import Rewrite, rewrite_for_destination
from vmigrate.lab.config import HOST_A, HOST_B, LOCAL_POOL
from vmigrate.lab.heartbeat import heartbeat_report, wait_for_console
from vmigrate.lab.hostfs import in_host
from vmigrate.lab.lifecycle import connect
from vmigrate.lab.storage import ceph
from vmigrate.lab.vms import LabVmRequest, add_disk, create_vm, remove_vm
from vmigrate.store import JobStore

TOOLS = (
    "vmigrate --pool-map",
    "vmigrate --pool-map, one disk at a time",
    "shutdown + qemu-img convert + define",
)
#: Where vmigrate's time goes: each phase ends with the last of these journal steps.
PHASES = (
    ("checks, reserve", ("reserve ",)),
    ("shutdown", ("stop",)),
    ("copy", ("pool change ",)),
    ("destination read", ("verify pool change ",)),
    ("define, start", ("define", "start")),
    ("watch it run", ("verify running",)),
    ("undefine, end", ("undefine source", "cleanup state", "unmark destination")),
)
VDB_DATA_MIB = 256


@dataclass
class ImportRun:
    scenario: str
    tool: str
    round: int
    outcome: str
    total_s: float
    downtime_s: float  # the guest's last beat on hostA to its first on hostB
    ceph_used: int  # bytes Ceph holds for the new images
    verified: bool  # the two sides' digests were compared
    guest_found_data: bool  # the guest read its own pattern back on boot
    phases: dict[str, float] | None = None  # vmigrate: seconds per phase (PHASES)
    load_avg: list[float] | None = None  # 1-minute load average at the run's start and end


def _phases(job_id: int | None, started: float) -> dict[str, float] | None:
    """Seconds per phase from the journal: a step's record is rewritten when it ends."""
    if job_id is None:
        return None
    steps = JobStore().steps(job_id)
    phases, last = {}, started
    for phase, prefixes in PHASES:
        ends = [s.t for s in steps if s.name.startswith(prefixes) and s.state == "done"]
        if ends:
            phases[phase], last = round(max(ends) - last, 2), max(ends)
    return phases


def _rbd_used(images: list[str]) -> int:
    found = subprocess.run(
        ["rbd", "-c", str(ceph.CONF), "du", "--format", "json", "-p", ceph.RBD_POOL],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return sum(
        int(i["used_size"]) for i in json.loads(found.stdout)["images"] if i["name"] in images
    )


def _by_script(vm: str) -> str:
    """The runbook: shut down, qemu-img convert each disk into Ceph, define, start."""
    source, destination = connect(HOST_A), connect(HOST_B)
    try:
        domain = source.lookupByName(vm)
        domain.shutdown()
        deadline = time.monotonic() + 60
        while domain.isActive():
            if time.monotonic() > deadline:
                return "the guest did not shut down in 60 s"
            time.sleep(0.2)
        xml = domain.XMLDesc(2)
        pool_xml = destination.storagePoolLookupByName("rbd").XMLDesc(0)
        sources = {}
        for disk in parse_domain(xml).disks:
            assert disk.path is not None
            image = image_name_for(disk.path)
            target = f"rbd:{ceph.RBD_POOL}/{image}:conf={ceph.CONF}"
            in_host("hostA", "qemu-img", "convert", "-O", "raw", disk.path, target, check=True)
            sources[disk.target] = rbd_disk_xml(pool_xml, image)
        destination.defineXML(rewrite_for_destination(xml, Rewrite(disk_sources=sources)).xml)
        destination.lookupByName(vm).create()
        domain.undefine()
    finally:
        source.close()
        destination.close()
    return "completed"


def run_once(tool: str, round_no: int) -> ImportRun:
    vm = f"bench-s3-{round_no}-{TOOLS.index(tool)}"
    parallel = pool_change_steps.PARALLEL_COPIES
    create_vm(LabVmRequest(vm, memory_mib=256, disk="local", disk_backing=True))
    vdb = add_disk(vm, LOCAL_POOL, "vdb", 1024, f"write -P 0xa5 0 {VDB_DATA_MIB}M")
    images = [f"{vm}-vda", image_name_for(vdb)]
    try:
        time.sleep(2)
        load_before = os.getloadavg()[0]
        since = time.monotonic_ns()
        started, wall = time.monotonic(), time.time()
        phases = None
        if tool.startswith("vmigrate"):
            pool_change_steps.PARALLEL_COPIES = 1 if "one disk at a time" in tool else parallel
            try:
                request = ColdRequest(vm, "hostA", "hostB", pool_map={LOCAL_POOL: "rbd"})
                report = migrate_cold(request)
            finally:
                pool_change_steps.PARALLEL_COPIES = parallel
            outcome, phases = report.outcome, _phases(report.job_id, wall)
            verified = bool(report.pool_changes) and all(c["sha256"] for c in report.pool_changes)
        else:
            outcome, verified = _by_script(vm), False
        total = time.monotonic() - started
        line = wait_for_console(vm, r"^DISK ", timeout=90, since_ns=since)
        beats = heartbeat_report(vm)
        return ImportRun(
            "S3",
            tool,
            round_no,
            outcome,
            round(total, 2),
            round(beats.largest_gap_ms / 1000, 2),
            _rbd_used(images),
            verified,
            line.text.startswith("DISK verify ok") and line.host == "hostB",
            phases,
            [round(load_before, 1), round(os.getloadavg()[0], 1)],
        )
    finally:
        remove_vm(vm)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ceph_import")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--tool", action="append", choices=TOOLS, help="default: all")
    parser.add_argument("--out", type=Path, default=Path("bench/results/ceph-import.json"))
    args = parser.parse_args()
    setting: dict[str, object] = {"vdb_data_mib": VDB_DATA_MIB}  # no shaped link: Ceph's path
    tools = tuple(args.tool or TOOLS)
    run_alternating(tools, run_once, pairs=args.pairs, out=args.out, setting=setting)


if __name__ == "__main__":
    main()
