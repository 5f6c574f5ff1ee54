"""A lab host's files from outside it: run a command where its paths resolve, find a file of
its private /var/lib/libvirt, hash a file (for the lab tests and the benchmarks)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from vmigrate.lab.config import HOST_A, HOST_B
from vmigrate.lab.state import load_records

_BLOCK = 8 << 20


def in_host(
    host_name: str, *command: str, check: bool = False, capture: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command inside a lab host's mount namespace (where its paths resolve).

    By default the output is captured and a failure is the caller's to look at; with
    `check=True, capture=False` a failure raises and the output goes to ours.
    """
    pid = load_records()[host_name].pid
    return subprocess.run(
        ["nsenter", f"--mount=/proc/{pid}/ns/mnt", "--", *command],
        capture_output=capture,
        text=True,
        check=check,
    )


def on_host(host_name: str, path: str) -> Path:
    """Where a path inside a lab host's private /var/lib/libvirt is, seen from outside."""
    host = HOST_A if host_name == "hostA" else HOST_B
    return host.private_dir("/var/lib/libvirt") / path.removeprefix("/var/lib/libvirt/")


def file_sha256(path: Path) -> str:
    """SHA-256 of the file's bytes (holes read as zeros)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
