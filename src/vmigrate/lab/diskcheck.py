"""Host-side check of a lab guest's disk: does the image hold the pattern the guest wrote?"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vmigrate.errors import LabError
from vmigrate.lab.image import BLOCK_SIZE, first_bad_disk_block


@dataclass(frozen=True)
class DiskCheck:
    ok: bool
    blocks: int
    first_bad_block: int | None


def check_disk_image(path: Path, fmt: str, *, seed: int, disk_mib: int) -> DiskCheck:
    """Read the image (qcow2 or raw, even while a QEMU has it open) and compare every block."""
    with tempfile.TemporaryDirectory(prefix="vmigrate-diskcheck-") as scratch:
        raw = Path(scratch) / "disk.raw"
        result = subprocess.run(
            ["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", str(path), str(raw)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise LabError(f"cannot read disk image {path}: {result.stderr.strip()}")
        blocks = disk_mib * (1 << 20) // BLOCK_SIZE
        bad = first_bad_disk_block(raw, seed, disk_mib)
    return DiskCheck(bad is None, blocks, bad)
