"""Waiting for the lab's servers (sshd, the storage servers): a TCP port that answers, and
a check polled until it is true, failing with the server's own log."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

from vmigrate.errors import LabError


def port_open(address: str, port: int, timeout: float = 1.0) -> bool:
    try:
        socket.create_connection((address, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def wait_for(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    log: Path | None = None,
    fix: str = "see the log, then `vmigrate lab down` and `vmigrate lab up --storage ...`",
) -> None:
    """Poll `check()` until it is true; a LabError quoting the server's log when it never is."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-800:] if log and log.exists() else ""
            raise LabError(
                f"{what} after {timeout:.0f} s" + (f"; its log says:\n{tail}" if tail else ""),
                fix=fix,
            )
        time.sleep(0.2)
