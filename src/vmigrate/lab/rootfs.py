"""A release's root file system (Debian's own QEMU and libvirt), built once with mmdebstrap.

Cached under ROOTS_DIR/<release>-<hash of its package list>; built into a temporary
directory and renamed into place, so a root that exists is complete."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from vmigrate.errors import EnvironmentProblem
from vmigrate.lab.releases import Release

ROOTS_DIR = Path(os.environ.get("VMIGRATE_ROOT_CACHE", "/var/cache/vmigrate/roots"))
#: Where the packages come from; Debian's own mirror unless the machine needs another.
MIRROR = os.environ.get("VMIGRATE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
#: Written last into a finished root: what it holds and what building it cost.
MANIFEST = ".vmigrate-root.json"


def root_path(release: Release) -> Path:
    return ROOTS_DIR / release.key


def cached_root(release: Release) -> Path | None:
    root = root_path(release)
    return root if (root / MANIFEST).is_file() else None


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """Two `lab up` at once build a root once: the second waits, then finds it cached."""
    ROOTS_DIR.mkdir(parents=True, exist_ok=True)
    with (ROOTS_DIR / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _tail(path: Path, lines: int = 6) -> str:
    with contextlib.suppress(OSError):
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    return ""


def ensure_root(release: Release) -> Path:
    """The release's root file system, built now if it is not cached (minutes: see docs)."""
    found = cached_root(release)
    if found is not None:
        return found
    mmdebstrap = shutil.which("mmdebstrap", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if mmdebstrap is None:
        raise EnvironmentProblem(
            f"`mmdebstrap` is not installed: it builds the {release.name} root file system",
            fix="run scripts/setup.sh as root (or apt-get install mmdebstrap)",
        )
    with _build_lock():
        found = cached_root(release)
        if found is not None:
            return found
        return _build(mmdebstrap, release)


def _build(mmdebstrap: str, release: Release) -> Path:
    final = root_path(release)
    building = ROOTS_DIR / f".building-{release.key}"
    log = ROOTS_DIR / f"{release.key}.build.log"
    shutil.rmtree(building, ignore_errors=True)  # a build killed half-way
    command = [
        mmdebstrap,
        "--variant=apt",
        "--mode=root",
        f"--include={','.join(release.packages)}",
        *(f"--customize-hook={hook}" for hook in release.customize),
        release.suite,
        str(building),
        MIRROR,
    ]
    started = time.monotonic()
    with log.open("w") as output:
        result = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, check=False)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        shutil.rmtree(building, ignore_errors=True)
        raise EnvironmentProblem(
            f"building the {release.name} root file system failed (mmdebstrap exit "
            f"{result.returncode}):\n{_tail(log)}",
            fix=f"check that {MIRROR} answers (VMIGRATE_DEBIAN_MIRROR names another mirror); "
            f"the whole log is {log}",
        )
    manifest = {
        "release": release.name,
        "suite": release.suite,
        "packages": list(release.packages),
        "mirror": MIRROR,
        "build_seconds": round(seconds, 1),
    }
    (building / MANIFEST).write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(final, ignore_errors=True)  # a root without its manifest: incomplete
    building.rename(final)
    return final
