"""Small helpers shared by the lab tests."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from vmigrate.lab.config import HOST_A, HOST_B
from vmigrate.lab.heartbeat import HeartbeatReport, heartbeat_report
from vmigrate.lab.hostfs import in_host as in_host  # lab tests import it from here


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


def read_events_until(process: subprocess.Popen[str], wanted: str) -> int:
    """Read `vmigrate --json` events until one of kind `wanted` (or an action event whose
    action is `wanted`, e.g. "postcopy"); return the job id announced on the way (0: none).

    The process keeps running; the rest of its output is left unread.
    """
    assert process.stdout is not None
    job_id = 0
    for line in process.stdout:
        event = json.loads(line)
        if event["event"] == "job":
            job_id = event["job_id"]
        if event["event"] == wanted or (
            event["event"] == "action" and event.get("action") == wanted
        ):
            break
    return job_id


@contextlib.contextmanager
def small_pool(size_mib: int) -> Iterator[str]:
    """A pool 'small' on both hosts at one path; on hostB it is a tmpfs of `size_mib`."""
    import libvirt

    path = "/var/lib/libvirt/small"
    in_host("hostB", "mkdir", "-p", path)
    mounted = in_host("hostB", "mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", path)
    assert mounted.returncode == 0, mounted.stderr
    pools = []
    try:
        for uri in (HOST_A.uri, HOST_B.uri):
            conn = libvirt.open(uri)
            with contextlib.suppress(libvirt.libvirtError):  # left by a test that crashed
                conn.storagePoolLookupByName("small").destroy()
            pools.append(
                conn.storagePoolCreateXML(
                    f"<pool type='dir'><name>small</name><target><path>{path}</path></target>"
                    "</pool>",
                    libvirt.VIR_STORAGE_POOL_CREATE_WITH_BUILD,
                )
            )
        yield path
    finally:
        for pool in pools:
            pool.destroy()
        in_host("hostB", "umount", path)


def pool_volumes(uri: str, pool: str) -> set[str]:
    """The paths of the volumes in a host's pool, freshly listed."""
    import libvirt

    conn = libvirt.open(uri)
    try:
        found = conn.storagePoolLookupByName(pool)
        found.refresh(0)
        return {v.path() for v in found.listAllVolumes(0)}
    finally:
        conn.close()


@contextlib.contextmanager
def busy_migration(vm: str, store: Path, *extra: str) -> Iterator[subprocess.Popen[str]]:
    """`vmigrate live --json` of a new guest dirtying 200 MiB/s over a 1 Gbit/s link
    (119 MiB/s carried: the policy goes post-copy); the link is reset afterwards."""
    from vmigrate.lab import link
    from vmigrate.lab.vms import LabVmRequest, create_vm

    create_vm(LabVmRequest(vm, memory_mib=384, working_set_mib=256, dirty_rate_mib=200))
    link.shape("1gbit")
    try:
        yield start_cli(
            "live", vm, "--from", "hostA", "--to", "hostB", "--store", str(store), "--json",
            *extra,
        )  # fmt: skip
    finally:
        link.reset()
