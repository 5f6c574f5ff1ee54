"""Runs inside `unshare --net --mount`: the lab's NFS server in a network namespace of its own.

rpcbind binds TCP port 111 on every address it sees, so it and NFS-Ganesha live where the
only address is the namespace's own loopback; `nfs.py` forwards the lab's NFS address into
it. /run is private here, so rpcbind's socket and lock never touch the machine's.

Invoked as `python -m vmigrate.lab.storage.nfs_netns RUN_DIR -- GANESHA ARGS...`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> None:
    run_dir, separator, *ganesha = argv
    if separator != "--" or not ganesha:
        sys.exit("usage: nfs_netns RUN_DIR -- GANESHA ARGS...")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["mount", "--bind", run_dir, "/run"], check=True)
    rpcbind = shutil.which("rpcbind", path="/usr/sbin:/sbin:/usr/bin:/bin") or "rpcbind"
    subprocess.Popen([rpcbind, "-f", "-w"], close_fds=True)
    deadline = time.monotonic() + 10
    while not Path("/run/rpcbind.sock").exists():
        if time.monotonic() > deadline:
            sys.exit("rpcbind did not start")
        time.sleep(0.05)
    os.execv(ganesha[0], ganesha)  # noqa: S606 - an argument list, no shell


if __name__ == "__main__":
    main(sys.argv[1:])
