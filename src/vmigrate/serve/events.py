"""Server-Sent Events from the store's `events` table: the `seq` of each row is the SSE id,
so a client that reconnects with `Last-Event-ID` gets every event after it, none twice.

One poller per server reads new rows for everyone and keeps the latest in memory; a client
first catches up from the store, then follows the poller. A client that stops reading is
dropped after a send times out, so it holds nothing for long."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from vmigrate.serve.storeaccess import StoreAccess
from vmigrate.store import JobStore

#: Rows read from the store at once.
PAGE = 500
#: New rows are looked for this often while anyone listens.
POLL_S = 0.25
#: Events kept in memory for clients that follow.
KEPT = 5000
#: A comment line this often keeps proxies from closing an idle stream.
KEEPALIVE_S = 15.0
#: A client that takes longer than this to take one event is dropped.
SEND_TIMEOUT_S = 10.0
#: Kinds after which a job's own stream ends.
FINAL_KINDS = frozenset({"done", "Done"})


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    job_id: int | None
    kind: str
    t: float
    body: dict[str, Any]

    def frame(self) -> bytes:
        data = json.dumps(
            {"seq": self.seq, "job_id": self.job_id, "kind": self.kind, "t": self.t,
             "event": self.body},
            default=str,
        )  # fmt: skip
        return f"id: {self.seq}\nevent: {self.kind}\ndata: {data}\n\n".encode()


def _field(row: Any, *names: str) -> Any:
    for name in names:
        if isinstance(row, dict) and name in row:
            return row[name]
        if hasattr(row, name):
            return getattr(row, name)
    return None


def as_event(row: Any) -> StoredEvent:
    """A row of `store.events_after` as the stream sends it."""
    body = _field(row, "body", "data", "event", "payload")
    if isinstance(body, str):
        body = json.loads(body)
    if not isinstance(body, dict):
        body = {"value": body}
    kind = _field(row, "kind", "type") or body.get("kind") or body.get("event") or "event"
    job = _field(row, "job_id", "job")
    return StoredEvent(
        int(_field(row, "seq")),
        int(job) if job is not None else None,
        str(kind),
        float(_field(row, "t", "time") or 0.0),
        body,
    )


def read_after(store: JobStore, seq: int, job_id: int | None, limit: int) -> list[StoredEvent]:
    return [as_event(row) for row in store.events_after(seq, job_id=job_id, limit=limit)]


def last_event_id(header: str | None, query: str | None) -> int:
    """Where a client resumes: the Last-Event-ID header, else ?after=, else the start."""
    for value in (header, query):
        if value is not None and value.strip().isdigit():
            return int(value.strip())
    return 0


class EventHub:
    """The one poller and the events it read last."""

    def __init__(self, access: StoreAccess) -> None:
        self.access = access
        self.recent: deque[StoredEvent] = deque(maxlen=KEPT)
        self.last_seq: int | None = None
        self.listeners = 0
        self._changed: asyncio.Condition | None = None
        self._task: asyncio.Task[None] | None = None

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _poll(self) -> None:
        while self.listeners > 0:
            try:
                after = self.last_seq or 0
                if self.last_seq is None:
                    # start from the newest event: history is read from the store by each client
                    newest = await self.access.run(lambda s: _newest(s))
                    self.last_seq = after = newest
                rows = await self.access.run(
                    functools.partial(read_after, seq=after, job_id=None, limit=PAGE)
                )
            except Exception:  # a store that hiccups: try again at the next tick
                rows = []
            if rows:
                self.recent.extend(rows)
                self.last_seq = rows[-1].seq
                async with self._condition():
                    self._condition().notify_all()
            if len(rows) < PAGE:
                await asyncio.sleep(POLL_S)
        self._task = None

    def _ensure_polling(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll())

    async def follow(self, after: int, job_id: int | None) -> AsyncIterator[StoredEvent | None]:
        """Every event after `after` (of one job, or all), in order, while the caller reads;
        None now and then when nothing happened (time for a keep-alive)."""
        self.listeners += 1
        self._ensure_polling()
        try:
            last = after
            while True:  # catch up from the store, a page at a time
                rows = await self.access.run(
                    functools.partial(read_after, seq=last, job_id=job_id, limit=PAGE)
                )
                for row in rows:
                    last = row.seq
                    if job_id is None or row.job_id == job_id:
                        yield row
                if len(rows) < PAGE:
                    break
            while True:
                oldest = self.recent[0].seq if self.recent else None
                if oldest is not None and oldest > last + 1 and (self.last_seq or 0) > last:
                    # fell behind what is kept in memory: read the gap from the store
                    rows = await self.access.run(
                        functools.partial(read_after, seq=last, job_id=job_id, limit=PAGE)
                    )
                else:
                    rows = [e for e in list(self.recent) if e.seq > last]
                for row in rows:
                    last = row.seq
                    if job_id is None or row.job_id == job_id:
                        yield row
                if rows:
                    continue
                changed = self._condition()
                async with changed:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), KEEPALIVE_S)
                        continue
                yield None
        finally:
            self.listeners -= 1


def _newest(store: JobStore) -> int:
    """The seq of the newest event (0 for none): probed by doubling, then halving, so a
    store with millions of events costs a few dozen one-row reads."""

    def beyond(seq: int) -> bool:
        return bool(store.events_after(seq, limit=1))

    if not beyond(0):
        return 0
    low, high = 0, 1
    while beyond(high):
        low, high = high, high * 2
    while high - low > 1:  # beyond(low) and not beyond(high)
        middle = (low + high) // 2
        low, high = (middle, high) if beyond(middle) else (low, middle)
    return high


#: After a job's final event, how long its record may take to say it ended.
SETTLE_S = 30.0


async def _settles(job_done: Callable[[], Any]) -> bool:
    """Whether the job's record says it ended, within SETTLE_S of its final event (the
    event is written just before the job's outcome)."""
    deadline = time.monotonic() + SETTLE_S
    while not await job_done():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.25)
    return True


async def stream_response(
    send: Callable[[dict[str, Any]], Any],
    events: AsyncIterator[StoredEvent | None],
    job_done: Callable[[], Any] | None,
) -> None:
    """Write the SSE body; a client that does not take an event within SEND_TIMEOUT_S is
    dropped. A job's stream ends after its final event."""
    await send({"type": "http.response.body", "body": b"retry: 2000\n\n", "more_body": True})
    async for event in events:
        frame = (
            event.frame() if event is not None else f": keep-alive {time.time():.0f}\n\n".encode()
        )
        with anyio.fail_after(SEND_TIMEOUT_S):
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        final = event is not None and event.kind in FINAL_KINDS
        if final and job_done is not None and await _settles(job_done):
            end = b"event: end\ndata: {}\n\n"
            with anyio.fail_after(SEND_TIMEOUT_S):
                await send({"type": "http.response.body", "body": end, "more_body": True})
            break
    await send({"type": "http.response.body", "body": b"", "more_body": False})
