"""Where a fleet move's child spends its set-up (#26): three 256 MiB guests evacuated from
hostA onto hostB and hostC over the 1 Gbit/s link, and for each child, from the job store:
its start (the fleet's move-start event) -> its job created (Python, imports, connections,
the re-checks) -> its lease held (with the settle it waited) -> its first sample that sent
bytes (libvirt and QEMU's set-up). Run it with the code to compare on PYTHONPATH:

    sudo PYTHONPATH=src .venv/bin/python -m bench.fleet_child
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

GUESTS = ("fc-0", "fc-1", "fc-2")


def _child_setups(store_path: Path) -> list[dict[str, Any]]:
    from vmigrate.store import JobStore

    with JobStore(store_path) as store:
        fleet = next(j for j in store.jobs() if j.kind == "evacuate")
        starts = {
            e.body["vm"]: e.t
            for e in store.events_after(0, job_id=fleet.id, limit=10000)
            if e.kind == "move-start"
        }
        rows = []
        for job in store.jobs():
            if job.kind != "live" or job.vm not in starts:
                continue
            events = store.events_after(0, job_id=job.id, limit=10000)
            first = next(
                (e.t for e in events if e.kind == "sample" and e.body["memory_processed"] > 0),
                None,
            )
            lease = next((e for e in store.lease_events(job.id) if e["event"] != "none"), None)
            start = starts[job.vm]
            rows.append(
                {
                    "vm": job.vm,
                    "to_job_s": round(job.started - start, 2),
                    "to_lease_s": round(lease["t"] - start, 2) if lease else None,
                    "lease": lease["event"] if lease else None,
                    "settle_s": lease.get("settle_s") if lease else None,
                    "to_first_byte_s": round(first - start, 2) if first else None,
                }
            )
    return rows


def main() -> None:
    from vmigrate.lab import link
    from vmigrate.lab.lifecycle import lab_up
    from vmigrate.lab.vms import LabVmRequest, create_vm, remove_vm

    lab_up(3)
    link.shape("1gbit")
    try:
        for name in GUESTS:
            create_vm(LabVmRequest(name, memory_mib=256))
        with tempfile.TemporaryDirectory() as scratch:
            store = Path(scratch) / "jobs.sqlite"
            load = os.getloadavg()[0]
            argv = ["evacuate", "hostA", "--to", "hostB,hostC", "--store", str(store), "--json"]
            result = subprocess.run(
                [sys.executable, "-m", "vmigrate.cli.main", *argv],
                capture_output=True,
                text=True,
                check=False,
                timeout=600,
            )
            rows = _child_setups(store)
        summary = {
            "exit_code": result.returncode,
            "load_avg": [round(load, 1), round(os.getloadavg()[0], 1)],
            "children": rows,
            "median_to_first_byte_s": statistics.median(
                r["to_first_byte_s"] for r in rows if r["to_first_byte_s"] is not None
            )
            if rows
            else None,
        }
        print(json.dumps(summary, indent=1))
        if result.returncode != 0:
            print(result.stderr[-2000:], file=sys.stderr)
    finally:
        for name in GUESTS:
            remove_vm(name)
        link.reset()


if __name__ == "__main__":
    main()
