"""How long `vmigrate check` takes on a lab VM with a shared disk.

python -m bench.check [--runs 10]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vmigrate.lab.vms import LabVmRequest, create_vm, remove_vm
from vmigrate.preflight import run_checks


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.check")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    create_vm(LabVmRequest("bench-check", memory_mib=256, disk="shared"))
    seconds = []
    try:
        for _ in range(args.runs):
            started = time.monotonic()
            report = run_checks("bench-check", "hostA", "hostB")
            seconds.append(time.monotonic() - started)
            assert not report.failed
    finally:
        remove_vm("bench-check")
    out = Path("bench/results/check.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seconds": seconds}, indent=1))
    print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    main()
