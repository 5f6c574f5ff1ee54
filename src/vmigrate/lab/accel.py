"""KVM when it truly runs a guest, TCG otherwise: probed once per machine and remembered.

/dev/kvm existing is not enough: a paravirtual KVM without hardware virtualisation opens fine
and then fails to run a stock kernel. So the probe boots the lab guest and waits for a beat.
Nothing outside `lab/` may depend on the answer.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess

from vmigrate.errors import EnvironmentProblem, GuestImageError
from vmigrate.lab.image import GuestImage, boot_guest, kernel_cmdline
from vmigrate.lab.paths import GUEST_CACHE_DIR

ACCEL_FILE = GUEST_CACHE_DIR / "accelerator.json"
QEMU = "/usr/bin/qemu-system-x86_64"
PROBE_TIMEOUT_SECONDS = 20.0


def _qemu_version() -> str:
    try:
        result = subprocess.run([QEMU, "--version"], capture_output=True, text=True, check=False)
    except OSError as err:
        raise EnvironmentProblem(
            f"cannot run {QEMU}: {err.strerror or err}",
            fix="install QEMU: `./scripts/setup.sh` (or `apt-get install -t bookworm-backports "
            "qemu-system-x86`)",
        ) from err
    return result.stdout.splitlines()[0] if result.stdout else ""


def cached_accelerator() -> str | None:
    try:
        return str(json.loads(ACCEL_FILE.read_text())["accelerator"])
    except (OSError, ValueError, KeyError):
        return None


def _boots_with_kvm(image: GuestImage) -> tuple[bool, str]:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "no usable /dev/kvm"
    cmdline = kernel_cmdline(working_set_mib=8, dirty_rate_mib=0, disk=False, seed=1)
    try:
        boot_guest(
            image,
            cmdline,
            until=lambda line: line.startswith("HB "),
            timeout=PROBE_TIMEOUT_SECONDS,
            accel="kvm",
        )
    except GuestImageError as err:
        return False, str(err).splitlines()[0]
    return True, "a guest booted under KVM"


def accelerator(image: GuestImage) -> str:
    """'kvm' or 'tcg' for this machine, probing on first use."""
    key = {"qemu": _qemu_version(), "kernel": image.kernel_version}
    try:
        cached = json.loads(ACCEL_FILE.read_text())
        if all(cached.get(k) == v for k, v in key.items()):
            return str(cached["accelerator"])
    except (OSError, ValueError, KeyError):
        pass
    works, reason = _boots_with_kvm(image)
    with contextlib.suppress(OSError):  # without the cache the next run probes again
        ACCEL_FILE.parent.mkdir(parents=True, exist_ok=True)
        ACCEL_FILE.write_text(
            json.dumps(
                {**key, "accelerator": "kvm" if works else "tcg", "reason": reason}, indent=2
            )
        )
    return "kvm" if works else "tcg"


if __name__ == "__main__":
    from vmigrate.lab.image import load_guest_image

    built = load_guest_image()
    if built is None:
        raise SystemExit("build the guest image first: python -m vmigrate.lab.image build")
    print(f"accelerator: {accelerator(built)}")
