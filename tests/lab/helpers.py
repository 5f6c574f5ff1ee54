"""Small helpers shared by the lab tests."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from vmigrate.lab.config import HOST_A, HOST_B, render_dir_pool_xml
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
    """Start `vmigrate ARGS` in the background (to interrupt or steer it meanwhile).

    Read its output either with read_events_until() and read_rest() or with communicate(),
    never both: they read the pipes through different buffers."""
    process: subprocess.Popen[str] = subprocess.Popen(
        [*VMIGRATE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    return process


class _Output:
    """One process's output, read by two threads that alone read its pipes: stdout line by
    line with readline() (so no buffered line is ever lost to another reader) and stderr.

    Both pipes are read all along, so vmigrate never blocks on a full pipe while a test
    does something else between reading its events."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None and process.stderr is not None
        self.lines: queue.Queue[str | None] = queue.Queue()  # None: stdout ended
        self.stderr: list[str] = []
        self.threads = [
            threading.Thread(target=self._pump_stdout, args=(process.stdout,), daemon=True),
            threading.Thread(target=self._pump_stderr, args=(process.stderr,), daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _pump_stdout(self, stream: IO[str]) -> None:
        try:
            while line := stream.readline():
                self.lines.put(line)
        finally:
            self.lines.put(None)

    def _pump_stderr(self, stream: IO[str]) -> None:
        while line := stream.readline():
            self.stderr.append(line)

    def stderr_tail(self) -> str:
        return "".join(self.stderr)[-3000:]


_outputs: weakref.WeakKeyDictionary[subprocess.Popen[str], _Output] = weakref.WeakKeyDictionary()


def _output(process: subprocess.Popen[str]) -> _Output:
    """The readers of a process started by start_cli (started on first use)."""
    found = _outputs.get(process)
    if found is None:
        found = _outputs[process] = _Output(process)
    return found


def read_events_until(process: subprocess.Popen[str], wanted: str, timeout: float = 300) -> int:
    """Read `vmigrate --json` events until one of kind `wanted` (or an action event whose
    action is `wanted`, e.g. "postcopy"); return the job id announced on the way (0: none).

    The process keeps running; read the rest of its output with read_rest(), never with
    communicate() (which reads the pipes underneath and would miss lines read ahead here).
    Fails, killing vmigrate, if no such event comes within `timeout` seconds.
    """
    output = _output(process)
    deadline = time.monotonic() + timeout
    job_id = 0
    seen: list[str] = []
    last = ""  # the last event as vmigrate printed it: a 'done' says why the job ended
    while True:
        try:
            line = output.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            process.kill()
            raise AssertionError(
                f"no {wanted!r} event from vmigrate within {timeout:g} s (killed it); "
                f"events seen: {seen[-20:]}; stderr: {output.stderr_tail()}"
            ) from None
        if line is None:
            returncode = process.wait(timeout=30)
            for thread in output.threads:
                thread.join(timeout=10)
            raise AssertionError(
                f"vmigrate ended (exit {returncode}) before a {wanted!r} event; "
                f"events seen: {seen[-20:]}; last: {last[:3000]}; stderr: {output.stderr_tail()}"
            )
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        seen.append(event["event"])
        last = line.strip()
        if event["event"] == "job":
            job_id = event["job_id"]
        if event["event"] == wanted or (
            event["event"] == "action" and event.get("action") == wanted
        ):
            return job_id


def read_rest(process: subprocess.Popen[str], timeout: float = 300) -> tuple[str, str]:
    """Wait for vmigrate to end; (the rest of its stdout, all of its stderr).

    The stdout lines are those read_events_until() has not consumed, from the same reader,
    so none is lost. Fails, killing vmigrate, if it does not end within `timeout` seconds.
    """
    output = _output(process)
    try:
        process.wait(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)
        timed_out = True
    for thread in output.threads:
        # Both pipes end with the process (unless a child of it still holds them).
        thread.join(timeout=30)
    lines = []
    while True:
        try:
            line = output.lines.get_nowait()
        except queue.Empty:
            break
        if line is not None:
            lines.append(line)
    if timed_out:
        raise AssertionError(
            f"vmigrate did not end within {timeout:g} s (killed it); "
            f"last output: {''.join(lines)[-2000:]}; stderr: {output.stderr_tail()}"
        )
    return "".join(lines), "".join(output.stderr)


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
                    render_dir_pool_xml("small", path), libvirt.VIR_STORAGE_POOL_CREATE_WITH_BUILD
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
