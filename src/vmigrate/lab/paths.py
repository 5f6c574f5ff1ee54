"""Where the lab keeps its files. One place, so that `lab down` knows exactly what it owns."""

from __future__ import annotations

import os
from pathlib import Path

#: Built guest kernel and initramfs; survives `lab down` (building it takes a while).
GUEST_CACHE_DIR = Path(os.environ.get("VMIGRATE_GUEST_CACHE", "/var/cache/vmigrate/guest"))

#: Everything a running lab owns: per-host daemon state, the shared pool, heartbeat logs.
LAB_DIR = Path(os.environ.get("VMIGRATE_LAB_DIR", "/var/lib/vmigrate-lab"))
#: Written by `lab up`: `lab down` deletes LAB_DIR only where it finds this file.
LAB_MARKER = LAB_DIR / ".vmigrate-lab"

#: Per-host caches that are safe to keep across labs (libvirt's QEMU capabilities).
HOST_CACHE_DIR = Path(os.environ.get("VMIGRATE_HOST_CACHE", "/var/cache/vmigrate/hosts"))

#: vmigrate's own credentials for the lab hosts (root only): libvirt's `pkipath` directory
#: for TLS, the ssh key and pinned host keys for SSH.
CLIENT_DIR = LAB_DIR / "client"
CLIENT_PKI_DIR = CLIENT_DIR / "pki"
CLIENT_SSH_DIR = CLIENT_DIR / "ssh"
#: The lab's certificate authority (its key never leaves this directory).
CA_DIR = LAB_DIR / "ca"
