"""Runs inside `unshare --mount --uts`: bind private dirs, set the hostname, exec the daemon.

Invoked as `python -m vmigrate.lab.nsinit --hostname H --bind SRC=DST ... -- CMD ARGS...`.
Everything is passed as argument lists; no shell ever sees a path or a name.
"""

from __future__ import annotations

import argparse
import ctypes
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


#: pivot_root(2) has no libc wrapper: its syscall number on x86_64 (the lab's only arch).
_SYS_PIVOT_ROOT = 155
_MNT_DETACH = 2
#: What a daemon needs of the machine inside its own root: kernel interfaces and devices.
_SYSTEM_MOUNTS = ("/proc", "/sys", "/dev")


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def overlay_root(lower: Path, directory: Path) -> Path:
    """A writable view of the cached root (which stays untouched): an overlay whose upper
    layer is the host's own, under `directory`. Returns where it is mounted."""
    upper, work, merged = directory / "upper", directory / "work", directory / "merged"
    for path in (upper, work, merged):
        path.mkdir(parents=True, exist_ok=True)
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    _mount("-t", "overlay", "overlay", "-o", options, str(merged))
    for system in _SYSTEM_MOUNTS:
        _mount("--rbind", system, f"{merged}{system}")
    _mount("-t", "tmpfs", "tmpfs", f"{merged}/tmp")
    (merged / "run" / "sshd").mkdir(parents=True, exist_ok=True)  # sshd's privsep directory
    return merged


def pivot_into(new_root: Path) -> None:
    """Make `new_root` this namespace's `/` (pivot_root, not chroot: whoever enters the
    namespace later with nsenter, such as the host's sshd, lands in it too)."""
    libc = ctypes.CDLL(None, use_errno=True)
    os.chdir(new_root)
    Path(".old-root").mkdir(exist_ok=True)
    if libc.syscall(_SYS_PIVOT_ROOT, b".", b".old-root") != 0:
        raise OSError(ctypes.get_errno(), "pivot_root failed", str(new_root))
    os.chdir("/")
    if libc.umount2(b"/.old-root", _MNT_DETACH) != 0:
        raise OSError(ctypes.get_errno(), "cannot detach the old root", "/.old-root")
    Path("/.old-root").rmdir()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="vmigrate.lab.nsinit")
    parser.add_argument("--hostname", required=True)
    parser.add_argument("--bind", action="append", default=[], metavar="SRC=DST")
    # Fault injection: a file absent for this host only (e.g. a libvirt driver module, to
    # show what a host without that package does).
    parser.add_argument("--hide", action="append", default=[], metavar="FILE")
    # Another release: its root (read-only, cached), the host's directory for the overlay
    # on it, and the paths of the machine the daemon must still see (lab files, guest image).
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--overlay-dir", type=Path, default=None)
    parser.add_argument("--share", action="append", default=[], metavar="PATH")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")
    if args.root is not None and (args.overlay_dir is None or args.hide):
        parser.error("--root needs --overlay-dir, and hides nothing")
    prefix = "" if args.root is None else str(overlay_root(args.root, args.overlay_dir))
    shares = [f"{path}={path}" for path in args.share]
    for spec in [*args.bind, *shares]:
        source, _, target = spec.partition("=")
        Path(source).mkdir(parents=True, exist_ok=True)
        Path(f"{prefix}{target}").mkdir(parents=True, exist_ok=True)
        _mount("--bind", source, f"{prefix}{target}")
    for hidden in args.hide:
        hide(Path(hidden))
    if prefix:
        pivot_into(Path(prefix))
    socket.sethostname(args.hostname)
    os.execv(command[0], command)  # noqa: S606 - an argument list, no shell


if __name__ == "__main__":
    main(sys.argv[1:])
