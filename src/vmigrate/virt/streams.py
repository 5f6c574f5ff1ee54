"""Copying a volume host to host through libvirt storage streams: sparse, chunked, resumable.

The file is copied verbatim (a qcow2 stays a qcow2 with its header and backing reference);
holes travel as holes, so only allocated data crosses the link. The copy can start at an
offset, which is how an interrupted copy resumes. Digests treat holes as zeros, so a source
and a destination that hold the same bytes digest the same whatever their hole layout.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import libvirt

from vmigrate.errors import OutOfSpace
from vmigrate.virt.errors import libvirt_errors

CHUNK = 4 << 20  # large chunks: small ones make streams many times slower
_HOLE = -3
_ZEROS = bytes(CHUNK)

Progress = Callable[[int], None]  # called with the offset reached (bytes, data and holes)


@dataclass(frozen=True)
class StreamCopy:
    data_bytes: int  # bytes that crossed the link
    hole_bytes: int  # bytes sent as holes
    seconds: float
    end_offset: int
    sha256: str | None = None  # of the whole source as read, when copied from offset 0


_END = ("end", 0, b"")


def copy_volume(
    source: libvirt.virConnect,
    source_volume: libvirt.virStorageVol,
    destination: libvirt.virConnect,
    destination_volume: libvirt.virStorageVol,
    *,
    offset: int = 0,
    progress: Progress | None = None,
    budget: int | None = None,
    stopping: Callable[[], bool] | None = None,
) -> StreamCopy:
    """Copy the volume; never send more than `budget` bytes of data.

    When `stopping()` turns true the copy ends at the next chunk with CopyStopped: the
    upload is finished, not aborted, so every byte reported to `progress` is on the
    destination and a resume from the last reported offset leaves no gap (an aborted upload
    drops what the daemon had received but not yet written: a resume then failed its
    checksum in our lab).

    Reading the source and writing the destination overlap (a reader thread a few chunks
    ahead), and the source's digest is computed from the bytes as they pass, so verifying
    needs only the destination's side read again.

    The budget exists because libvirtd 11.3 crashed (double free) in our lab when an upload
    ran out of space on the destination: stopping before the pool is full is the safe way.
    """
    started = time.monotonic()
    down = source.newStream(0)
    up = destination.newStream(0)
    source_volume.download(down, offset, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
    destination_volume.upload(up, offset, 0, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
    reader = _Reader(down)
    digest = BlockDigest() if offset == 0 else None
    position, data_bytes, hole_bytes = offset, 0, 0
    stopped = False
    try:
        while True:
            if stopping is not None and stopping():
                stopped = True
                break
            kind, length, data = reader.next()
            if kind == "end":
                break
            if kind == "hole":
                up.sendHole(length, 0)
                hole_bytes += length
                if digest is not None:
                    digest.update_zeros(length)
            else:
                if budget is not None and data_bytes + length > budget:
                    raise OutOfSpace(
                        f"the destination has room for {budget >> 20} MiB more; "
                        f"stopped at {(data_bytes + offset) >> 20} MiB"
                    )
                _send_all(up, data)
                data_bytes += length
                if digest is not None:
                    digest.update(data)
            position += length
            if progress is not None:
                progress(position)
        if stopped:
            reader.stop()
        else:
            reader.finish()
        up.finish()
    except BaseException:
        with contextlib.suppress(libvirt.libvirtError):
            up.abort()
        reader.stop()
        raise
    if stopped:
        raise CopyStopped(position)
    return StreamCopy(
        data_bytes,
        hole_bytes,
        time.monotonic() - started,
        position,
        digest.hexdigest() if digest is not None else None,
    )


class CopyStopped(Exception):
    """The copy was asked to stop; everything before `position` is on the destination."""

    def __init__(self, position: int) -> None:
        super().__init__(f"stopped at byte {position}")
        self.position = position


class _Reader:
    """Reads a download stream a few chunks ahead in its own thread (the only user of it)."""

    def __init__(self, stream: libvirt.virStream) -> None:
        self.stream = stream
        self.chunks: queue.Queue[tuple[str, int, bytes] | BaseException] = queue.Queue(4)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="stream-reader", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        failed = False
        try:
            while not self.stopping.is_set():
                chunk = self.stream.recvFlags(CHUNK, libvirt.VIR_STREAM_RECV_STOP_AT_HOLE)
                if chunk == _HOLE:
                    item = ("hole", self.stream.recvHole(0), b"")
                elif isinstance(chunk, bytes) and chunk:
                    item = ("data", len(chunk), chunk)
                elif isinstance(chunk, bytes):
                    item = _END
                else:
                    continue  # -2: nothing yet (non-blocking streams only)
                self._put(item)
                if item is _END:
                    return
        except BaseException as err:  # handed to the copying thread
            self._put(err)
            failed = True
        # A failed read leaves the download half-read too, and stop() cannot abort it once
        # this thread has ended: abort here, or the daemon is left holding the stream.
        if failed or self.stopping.is_set():
            with contextlib.suppress(libvirt.libvirtError):
                self.stream.abort()

    def _put(self, item: tuple[str, int, bytes] | BaseException) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(queue.Full):
                self.chunks.put(item, timeout=0.2)
                return

    def next(self) -> tuple[str, int, bytes]:
        item = self.chunks.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def finish(self) -> None:
        self.thread.join()
        self.stream.finish()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)


class BlockDigest:
    """SHA-256 over the SHA-256 of every 4 MiB block, holes read as zeros.

    Independent of where each side keeps holes, like a digest of the plain bytes, but a
    block that is all hole costs nothing to digest: a 4 GiB image with 1 GiB of data is
    verified at the speed of its data, not of its size.
    """

    _ZERO_BLOCK = hashlib.sha256(bytes(CHUNK)).digest()

    def __init__(self) -> None:
        self._blocks = hashlib.sha256()
        self._partial = hashlib.sha256()
        self._filled = 0  # bytes of the current block seen so far
        self.length = 0

    def update(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), CHUNK - self._filled)
            self._partial.update(view[:take])
            self._advance(take)
            view = view[take:]

    def update_zeros(self, length: int) -> None:
        while length > 0:
            if self._filled == 0 and length >= CHUNK:
                whole = length // CHUNK
                for _ in range(whole):
                    self._blocks.update(self._ZERO_BLOCK)
                self.length += whole * CHUNK
                length -= whole * CHUNK
                continue
            take = min(length, CHUNK - self._filled)
            self._partial.update(_ZEROS[:take])
            self._advance(take)
            length -= take

    def _advance(self, count: int) -> None:
        self._filled += count
        self.length += count
        if self._filled == CHUNK:
            self._blocks.update(self._partial.digest())
            self._partial, self._filled = hashlib.sha256(), 0

    def hexdigest(self) -> str:
        final = self._blocks.copy()
        if self._filled:
            final.update(self._partial.digest())
        final.update(self.length.to_bytes(8, "big"))
        return final.hexdigest()


def _send_all(stream: libvirt.virStream, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = stream.send(view.tobytes())
        if sent < 0:
            raise libvirt.libvirtError("stream send failed")
        view = view[sent:]


def volume_digest(conn: libvirt.virConnect, volume: libvirt.virStorageVol) -> str:
    """BlockDigest of the volume's bytes as a file (holes read as zeros)."""
    digest = BlockDigest()
    stream = conn.newStream(0)
    volume.download(stream, 0, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
    while True:
        chunk = stream.recvFlags(CHUNK, libvirt.VIR_STREAM_RECV_STOP_AT_HOLE)
        if chunk == _HOLE:
            digest.update_zeros(stream.recvHole(0))
        elif isinstance(chunk, bytes) and chunk:
            digest.update(chunk)
        elif isinstance(chunk, bytes):
            break
    stream.finish()
    return digest.hexdigest()


def digest_at(conn: libvirt.virConnect, path: str, *, host: str | None = None) -> str:
    """volume_digest of the volume at `path`."""
    with libvirt_errors(host=host, doing=f"read {path} for its digest"):
        return volume_digest(conn, conn.storageVolLookupByPath(path))
