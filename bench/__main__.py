"""One command for the whole benchmark suite, or one scenario, then docs/benchmarks.md.

    sudo .venv/bin/python -m bench              # L1-L4, C1-C3, S1-S3, check, E1, E2, P1, B1, report
    sudo .venv/bin/python -m bench --scenario L3  # one scenario (repeatable), report
    sudo .venv/bin/python -m bench --quick        # one small L1 round (what CI runs)

Needs root; brings the lab up if it is not. Each scenario's latest results are kept in
bench/results/, so re-running one scenario keeps the others in the report.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from bench.cold import SCENARIOS as COLD
from bench.live import SCENARIOS as LIVE
from vmigrate.lab.lifecycle import lab_up

CHOICES = sorted(LIVE) + sorted(COLD) + ["S1", "S2", "S3", "check", "E1", "E2", "P1", "B1"]


def _run(module: str, *args: str) -> None:
    subprocess.run([sys.executable, "-m", module, *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--scenario", action="append", choices=CHOICES)
    parser.add_argument("--pairs", type=int, default=None, help="rounds per scenario")
    parser.add_argument("--quick", action="store_true", help="one small L1 round only")
    args = parser.parse_args()
    lab_up()
    if args.quick:
        _run("bench.live", "--quick", "--out", "/tmp/vmigrate-bench-quick.json")
        return
    chosen = args.scenario or CHOICES
    live = [f"--scenario={s}" for s in chosen if s in LIVE]
    cold = [f"--scenario={s}" for s in chosen if s in COLD]
    if live:
        _run("bench.live", *live, f"--pairs={args.pairs or 3}")
    if cold:
        _run("bench.cold", *cold, f"--pairs={args.pairs or 1}")
    if "S1" in chosen:
        _run("bench.storage", f"--pairs={args.pairs or 2}")
    if {"S2", "S3"} & set(chosen):
        lab_up(storage=["rbd"])  # the lab's Ceph, beside the hosts
    if "S2" in chosen:
        _run("bench.network_storage", f"--pairs={args.pairs or 2}")
    if "S3" in chosen:
        _run("bench.ceph_import", f"--pairs={args.pairs or 2}")
    if "check" in chosen:
        _run("bench.check")
    fleet = [f"--scenario={s}" for s in chosen if s in ("E1", "E2", "P1", "B1")]
    if fleet:
        _run("bench.fleet", *fleet)
    _run("bench.report")


if __name__ == "__main__":
    main()
