"""Small helpers shared by the lab tests."""

from __future__ import annotations

import subprocess
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
