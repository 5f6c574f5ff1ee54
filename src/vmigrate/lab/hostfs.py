"""A lab host's files from outside it: run a command where its paths resolve, find a file of
its private /var/lib/libvirt, hash a file (for the lab tests and the benchmarks)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from vmigrate.errors import LabError
from vmigrate.lab.config import LabHost, lab_host, up_command
from vmigrate.lab.state import load_records

_BLOCK = 8 << 20


def _host(host_name: str) -> LabHost:
    host = lab_host(host_name)
    if host is None:
        raise LabError(f"{host_name!r} is not a lab host", fix="use hostA, hostB, hostC or hostD")
    return host


def in_host(
    host_name: str, *command: str, check: bool = False, capture: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command inside a lab host's mount namespace (where its paths resolve).

    By default the output is captured and a failure is the caller's to look at; with
    `check=True, capture=False` a failure raises and the output goes to ours.
    """
    host = _host(host_name)
    record = load_records().get(host.name)
    if record is None:
        raise LabError(
            "this lab host was not started", host=host.name, fix=f"start it: {up_command(host)}"
        )
    pid = record.pid
    return subprocess.run(
        ["nsenter", f"--mount=/proc/{pid}/ns/mnt", "--", *command],
        capture_output=capture,
        text=True,
        check=check,
    )


def on_host(host_name: str, path: str) -> Path:
    """Where a path inside a lab host's private /var/lib/libvirt is, seen from outside."""
    return _host(host_name).private_dir("/var/lib/libvirt") / path.removeprefix("/var/lib/libvirt/")


def file_sha256(path: Path) -> str:
    """SHA-256 of the file's bytes (holes read as zeros)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
