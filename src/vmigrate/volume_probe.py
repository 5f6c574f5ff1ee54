"""Read a network disk from this machine the way QEMU opens it (`qemu-img info` over
libiscsi or libnfs). Made only when vmigrate runs on the destination: then it is close to
what the destination's QEMU will see, though not the same (QEMU logs in with its own
initiator name and runs as its own user). Not for rbd, nor for a disk that authenticates
(CHAP): QEMU there uses a key that a private libvirt secret never gives back."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass

from vmigrate.domxml.domain import NetworkSource

#: The protocols qemu-img can read here without a key.
READABLE = ("iscsi", "nfs")
TIMEOUT_SECONDS = 15.0


@dataclass(frozen=True)
class VolumeRead:
    url: str
    size: int | None  # the image's virtual size; None when it could not be read
    error: str | None
    seconds: float


def volume_url(source: NetworkSource) -> str | None:
    """QEMU's URL of the disk (iscsi://HOST[:PORT]/IQN/LUN, nfs://HOST/PATH), if readable."""
    if source.protocol not in READABLE or not source.name or not source.hosts:
        return None
    if source.secret_uuid or source.secret_usage:
        return None
    host, port = source.hosts[0]
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    where = f"{host}:{port}" if port else host
    return f"{source.protocol}://{where}/{source.name.lstrip('/')}"


def read_volume(
    source: NetworkSource, fmt: str | None, *, timeout: float = TIMEOUT_SECONDS
) -> VolumeRead | None:
    """Open the disk as the format the domain names (never probed: a raw disk whose guest
    wrote a qcow2 header must not be read as qcow2)."""
    url = volume_url(source)
    qemu_img = shutil.which("qemu-img", path="/usr/bin:/usr/local/bin:/bin")
    if url is None or fmt not in ("raw", "qcow2"):
        return None
    if qemu_img is None:
        return VolumeRead(url, None, "qemu-img is not installed here", 0.0)
    started = time.monotonic()
    try:
        # -U: read while the source's QEMU has the image open (it does, in a live move).
        result = subprocess.run(
            [qemu_img, "info", "-U", "-f", fmt, "--output=json", url],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return VolumeRead(url, None, f"no answer in {timeout:.0f} s", time.monotonic() - started)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        said = result.stderr.strip().splitlines()
        return VolumeRead(url, None, said[-1] if said else f"exit {result.returncode}", seconds)
    try:
        size = int(json.loads(result.stdout)["virtual-size"])
    except (ValueError, KeyError, TypeError):
        return VolumeRead(url, None, "qemu-img printed no size", seconds)
    return VolumeRead(url, size, None, seconds)
