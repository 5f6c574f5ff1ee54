"""Copying a volume host to host through libvirt storage streams: sparse, chunked, resumable.

The file is copied verbatim (a qcow2 stays a qcow2 with its header and backing reference);
holes travel as holes, so only allocated data crosses the link. The copy can start at an
offset, which is how an interrupted copy resumes. Digests treat holes as zeros, so a source
and a destination that hold the same bytes digest the same whatever their hole layout.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import libvirt

CHUNK = 4 << 20  # large chunks: small ones make streams many times slower
_HOLE = -3
_ZEROS = bytes(CHUNK)

Progress = Callable[[int], None]  # called with the offset reached (bytes, data and holes)


class OutOfSpace(Exception):
    """The destination would run out of space: the copy stops before it does."""


@dataclass(frozen=True)
class StreamCopy:
    data_bytes: int  # bytes that crossed the link
    hole_bytes: int  # bytes sent as holes
    seconds: float
    end_offset: int


def copy_volume(
    source: libvirt.virConnect,
    source_volume: libvirt.virStorageVol,
    destination: libvirt.virConnect,
    destination_volume: libvirt.virStorageVol,
    *,
    offset: int = 0,
    progress: Progress | None = None,
    budget: int | None = None,
) -> StreamCopy:
    """Copy the volume; never send more than `budget` bytes of data.

    The budget exists because libvirtd 11.3 crashed (double free) in our lab when an upload
    ran out of space on the destination: stopping before the pool is full is the safe way.
    """
    started = time.monotonic()
    down = source.newStream(0)
    up = destination.newStream(0)
    source_volume.download(down, offset, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
    destination_volume.upload(up, offset, 0, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
    position, data_bytes, hole_bytes = offset, 0, 0
    try:
        while True:
            chunk = down.recvFlags(CHUNK, libvirt.VIR_STREAM_RECV_STOP_AT_HOLE)
            if chunk == _HOLE:
                length = down.recvHole(0)
                up.sendHole(length, 0)
                position += length
                hole_bytes += length
            elif isinstance(chunk, bytes) and chunk:
                if budget is not None and data_bytes + len(chunk) > budget:
                    raise OutOfSpace(
                        f"the destination has room for {budget >> 20} MiB more; "
                        f"stopped at {(data_bytes + offset) >> 20} MiB"
                    )
                _send_all(up, chunk)
                position += len(chunk)
                data_bytes += len(chunk)
            elif isinstance(chunk, bytes):
                break  # end of the volume
            if progress is not None:
                progress(position)
        down.finish()
        up.finish()
    except BaseException:
        for stream in (down, up):
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
        raise
    return StreamCopy(data_bytes, hole_bytes, time.monotonic() - started, position)


def _send_all(stream: libvirt.virStream, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = stream.send(view.tobytes())
        if sent < 0:
            raise libvirt.libvirtError("stream send failed")
        view = view[sent:]


def volume_digest(conn: libvirt.virConnect, volume: libvirt.virStorageVol) -> str:
    """SHA-256 of the volume's bytes as a file (holes read as zeros)."""
    digest = hashlib.sha256()
    stream = conn.newStream(0)
    volume.download(stream, 0, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
    while True:
        chunk = stream.recvFlags(CHUNK, libvirt.VIR_STREAM_RECV_STOP_AT_HOLE)
        if chunk == _HOLE:
            length = stream.recvHole(0)
            while length > 0:
                step = min(length, CHUNK)
                digest.update(_ZEROS[:step])
                length -= step
        elif isinstance(chunk, bytes) and chunk:
            digest.update(chunk)
        elif isinstance(chunk, bytes):
            break
    stream.finish()
    return digest.hexdigest()
