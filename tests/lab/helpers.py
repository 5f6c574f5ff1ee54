"""Small helpers shared by the lab tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from vmigrate.lab.config import HOST_A, HOST_B
from vmigrate.lab.heartbeat import HeartbeatReport, heartbeat_report


def virsh_migrate_live(name: str, *extra: str, timeout: float = 300) -> None:
    """What users do today: `virsh migrate --live --p2p` from hostA to hostB."""
    result = subprocess.run(
        ["virsh", "-c", HOST_A.uri, "migrate", "--live", "--p2p", *extra, name, HOST_B.uri],
        check=False,
        timeout=timeout,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"virsh migrate failed: {result.stderr.strip()}"


def beats_after(name: str, seconds: float) -> HeartbeatReport:
    """Let the guest run a little longer, then report its whole heartbeat history."""
    time.sleep(seconds)
    return heartbeat_report(name)


VMIGRATE = [sys.executable, "-m", "vmigrate.cli.main"]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run `vmigrate ARGS` as a user would, capturing its output."""
    return subprocess.run(
        [*VMIGRATE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def start_cli(*args: str) -> subprocess.Popen[str]:
    """Start `vmigrate ARGS` in the background (to interrupt or steer it meanwhile)."""
    process: subprocess.Popen[str] = subprocess.Popen(
        [*VMIGRATE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    return process
