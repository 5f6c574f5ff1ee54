"""Runs inside `unshare --mount --uts`: bind private dirs, set the hostname, exec the daemon.

Invoked as `python -m vmigrate.lab.nsinit --hostname H --bind SRC=DST ... -- CMD ARGS...`.
Everything is passed as argument lists; no shell ever sees a path or a name.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

#: Inside a host's private /var/lib/libvirt, so `lab down` removes it with the host.
HIDE_STAGING = Path("/var/lib/libvirt/.vmigrate-hidden")


def hide(file: Path) -> None:
    """Make `file` absent in this mount namespace, as if its package were not installed.

    Covering it is not enough (libvirtd refuses to start on a module it cannot load): its
    directory is replaced by a tmpfs that links back to every other entry."""
    directory = file.parent
    staging = HIDE_STAGING / directory.as_posix().strip("/").replace("/", "-")
    staging.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(directory), str(staging)], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(directory)], check=True)
    for entry in staging.iterdir():
        if entry.name != file.name:
            (directory / entry.name).symlink_to(entry)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="vmigrate.lab.nsinit")
    parser.add_argument("--hostname", required=True)
    parser.add_argument("--bind", action="append", default=[], metavar="SRC=DST")
    # Fault injection: a file absent for this host only (e.g. a libvirt driver module, to
    # show what a host without that package does).
    parser.add_argument("--hide", action="append", default=[], metavar="FILE")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")
    for spec in args.bind:
        source, _, target = spec.partition("=")
        Path(source).mkdir(parents=True, exist_ok=True)
        Path(target).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", source, target], check=True)
    for hidden in args.hide:
        hide(Path(hidden))
    socket.sethostname(args.hostname)
    os.execv(command[0], command)  # noqa: S606 - an argument list, no shell


if __name__ == "__main__":
    main(sys.argv[1:])
