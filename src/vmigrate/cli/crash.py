"""The CLI's last resort: an exception nobody expected still gets one clear line, a crash
report for the bug, the job it interrupted recorded, and a non-zero exit; never a traceback
on the terminal."""

from __future__ import annotations

import datetime
import os
import traceback
from pathlib import Path

from vmigrate.store import default_store_path

#: Exit status of a failure vmigrate did not expect (1 is an expected failure, 2 bad usage).
UNEXPECTED_EXIT = 3


def _words(err: BaseException) -> str:
    """libvirt's own message when it is a libvirt error (without importing libvirt here)."""
    get_message = getattr(err, "get_error_message", None)
    if callable(get_message):
        return f"libvirt said: {get_message()}"
    return f"{type(err).__name__}: {err}"


def write_crash_report(err: BaseException, command: str) -> Path | None:
    """The traceback, for a bug report, in a file only this user can read."""
    directory = default_store_path().parent
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    path = directory / f"crash-{stamp}-{os.getpid()}.txt"
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(f"vmigrate {command}\n")
            handle.writelines(traceback.format_exception(err))
    except OSError:
        return None
    return path


def describe_unexpected(err: BaseException, command: str) -> str:
    """One line for the terminal (the command names the hosts and VM), and where the
    details are."""
    report = write_crash_report(err, command)
    where = f"; details in {report}" if report else ""
    return (
        f"unexpected failure in `vmigrate {command}`: {_words(err)}{where}\n"
        "  what to do: check where the VM runs (`vmigrate jobs`, `virsh list --all` on both "
        "hosts; `vmigrate recover VM` for an interrupted live move), then report this"
    )
