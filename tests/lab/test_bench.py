"""The benchmark suite cannot rot silently: its quick mode runs end to end in CI.

Nothing here asserts a time: benchmarks measure, tests only check that they still run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vmigrate.lab.lifecycle import HostStatus

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]


def test_quick_benchmark_runs_and_renders_the_report(lab: list[HostStatus], tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.live", "--quick", "--out", str(tmp_path / "live.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads((tmp_path / "live.json").read_text())
    assert results["quick"] and {r["tool"] for r in results["runs"]} == {
        "vmigrate",
        "virsh common",
    }
    for measured in results["runs"]:
        assert measured["outcome"] == "completed", measured
        assert measured["contiguous"] and measured["bytes_sent"] > 0, measured
    doc = tmp_path / "benchmarks.md"
    report = subprocess.run(
        [sys.executable, "-m", "bench.report", "--results", str(tmp_path), "--doc", str(doc)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert report.returncode == 0, report.stderr
    text = doc.read_text()
    assert "### L1" in text and "| vmigrate | 1/1 |" in text and "| virsh common | 1/1 |" in text
