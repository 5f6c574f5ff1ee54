"""Run a volume copy in a helper process that outlives a killed vmigrate long enough to stop
the copy cleanly.

Why: in our lab, a client killed (SIGKILL) in the middle of a storage-volume upload wedged the
destination libvirtd 11.3 for good; a client that aborts its streams first never did. vmigrate
cannot catch SIGKILL, so the streams live in a child process instead. The kernel sends the child
SIGTERM when vmigrate dies (PR_SET_PDEATHSIG); the child then aborts both streams and exits.
The child has its own session, so a Ctrl-C in the terminal reaches only vmigrate, which stops
the child the same way.

Protocol: one JSON request on the child's stdin; JSON lines on its stdout:
{"at": offset} while copying, then {"done": {...StreamCopy}} or {"error": "message"}.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict
from types import FrameType
from typing import IO

import libvirt

from vmigrate.errors import OutOfSpace, VmigrateError
from vmigrate.virt.streams import CopyStopped, Progress, StreamCopy, copy_volume

_PR_SET_PDEATHSIG = 1
_STOP_GRACE_S = 30.0  # how long a stopping child may take to abort its streams
_FIX = (
    "check both hosts, then resume the job (`vmigrate jobs resume ID`) "
    "or roll it back (`vmigrate jobs rollback ID`)"
)


class CopyFailed(VmigrateError):
    """The copy process reported an error (a host went away, a disk filled up, ...)."""


def copy_between(
    source: libvirt.virConnect,
    source_path: str,
    destination: libvirt.virConnect,
    destination_path: str,
    *,
    offset: int = 0,
    progress: Progress | None = None,
    budget: int | None = None,
) -> StreamCopy:
    """copy_in_worker between the hosts of two open connections."""
    return copy_in_worker(
        source.getURI(),
        source_path,
        destination.getURI(),
        destination_path,
        offset=offset,
        progress=progress,
        budget=budget,
    )


def copy_in_worker(
    source_uri: str,
    source_path: str,
    destination_uri: str,
    destination_path: str,
    *,
    offset: int = 0,
    progress: Progress | None = None,
    budget: int | None = None,
) -> StreamCopy:
    """Copy source_path on one host to destination_path on another in a helper process
    (the hosts named by their URIs: see copy_between for connections)."""
    request = {
        "parent": os.getpid(),
        "source_uri": source_uri,
        "source_path": source_path,
        "destination_uri": destination_uri,
        "destination_path": destination_path,
        "offset": offset,
        "budget": budget,
    }
    with tempfile.TemporaryFile("w+") as errors, _worker(errors) as child:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(json.dumps(request) + "\n")
        child.stdin.close()  # the URIs travel on a pipe, never on a command line
        try:
            return _follow(child.stdout, progress)
        except CopyFailed as err:
            child.wait()  # it reported the failure and is ending by itself
            errors.seek(0)
            tail = errors.read()[-2000:].strip()
            raise CopyFailed(err.message + (f"\n{tail}" if tail else ""), fix=err.fix) from err


@contextlib.contextmanager
def _worker(errors: IO[str]) -> Iterator[subprocess.Popen[str]]:
    child = subprocess.Popen(
        [sys.executable, "-m", "vmigrate.virt.copy_worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
        start_new_session=True,
    )
    try:
        yield child
    except CopyFailed:
        raise
    except BaseException:  # Ctrl-C, SIGTERM, a bug here: the child must abort its streams
        _stop(child)
        raise
    finally:
        child.wait()


def _stop(child: subprocess.Popen[str]) -> None:
    """Ask the child to abort its streams; kill it only if it cannot within the grace time."""
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        child.kill()


def _follow(lines: IO[str], progress: Progress | None) -> StreamCopy:
    for line in lines:
        message = json.loads(line)
        if "at" in message:
            if progress is not None:
                progress(int(message["at"]))
        elif "done" in message:
            return StreamCopy(**message["done"])
        elif "error" in message:
            raise CopyFailed(f"the copy stopped: {message['error']}", fix=_FIX)
    raise CopyFailed("the copy process ended without a result", fix=_FIX)


# ---- the child ---------------------------------------------------------------------------
#: Set on SIGTERM (vmigrate stopping or gone): the copy ends cleanly at its next chunk, its
#: upload finished so that every offset already reported is on the destination.
_stop_requested = threading.Event()


def _on_stop(_signum: int, _frame: FrameType | None) -> None:
    # If libvirt does not return (a dead daemon), do not linger forever.
    if not _stop_requested.is_set():
        deadline = threading.Timer(_STOP_GRACE_S - 5, os._exit, args=(3,))
        deadline.daemon = True
        deadline.start()
    _stop_requested.set()


def _die_with(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _emit(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _report_progress(at: int) -> None:
    """Tell vmigrate how far the copy is; if vmigrate is gone, stop cleanly (a broken pipe
    raised inside the copy would abort the upload and lose what the daemon still holds)."""
    try:
        _emit({"at": at})
    except OSError:
        _stop_requested.set()


def main() -> int:
    signal.signal(signal.SIGTERM, _on_stop)
    request = json.loads(sys.stdin.readline())
    _die_with(int(request["parent"]))
    try:
        source = libvirt.open(request["source_uri"])
        destination = libvirt.open(request["destination_uri"])
        result = copy_volume(
            source,
            source.storageVolLookupByPath(request["source_path"]),
            destination,
            destination.storageVolLookupByPath(request["destination_path"]),
            offset=int(request["offset"]),
            progress=_report_progress,
            budget=request["budget"],
            stopping=_stop_requested.is_set,
        )
    except CopyStopped as stopped:  # its upload finished: the offset is a safe checkpoint
        with contextlib.suppress(OSError):  # vmigrate may be gone
            _emit({"at": stopped.position})
        return 3
    except libvirt.libvirtError as err:
        _emit({"error": err.get_error_message()})
        return 1
    except OutOfSpace as err:
        _emit({"error": str(err)})
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the streams are closed: just go
    _emit({"done": asdict(result)})
    return 0


if __name__ == "__main__":
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    sys.exit(main())
