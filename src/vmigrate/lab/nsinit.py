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


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="vmigrate.lab.nsinit")
    parser.add_argument("--hostname", required=True)
    parser.add_argument("--bind", action="append", default=[], metavar="SRC=DST")
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
    socket.sethostname(args.hostname)
    os.execv(command[0], command)  # noqa: S606 - an argument list, no shell


if __name__ == "__main__":
    main(sys.argv[1:])
