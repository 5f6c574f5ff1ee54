"""SSE routes: one job's events, or every job's of a cluster (or of the whole store)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from vmigrate.errors import NotFound
from vmigrate.serve.events import StoredEvent, last_event_id, stream_response
from vmigrate.serve.state import ServeState, state_of
from vmigrate.store import JobStore

#: Streams open at once; more are answered 503 (retry later).
MAX_STREAMS = 500
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class EventStream(Response):
    """An SSE response: events written as they come, the client's disconnect noticed."""

    def __init__(self, events: AsyncIterator[StoredEvent | None], serve: ServeState,
                 job_id: int | None) -> None:  # fmt: skip
        super().__init__(status_code=200)
        self.events = events
        self.serve = serve
        self.job_id = job_id

    async def _job_done(self) -> bool:
        job_id = self.job_id
        if job_id is None:
            return False
        record = await self.serve.access.run(lambda s: s.job(job_id))
        return record.state != "running"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        try:
            async with anyio.create_task_group() as group:
                # a client that goes away ends its stream at once (sends after it would
                # vanish silently, and the stream would hold its place forever)
                group.start_soon(_until_disconnect, receive, group.cancel_scope)
                with contextlib.suppress(TimeoutError, OSError):  # a client that stopped reading
                    await stream_response(send, self.events, self._job_done)
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.events.aclose()  # type: ignore[attr-defined]


async def _until_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        continue
    scope.cancel()


def _hosts_of(store: JobStore, *, job_id: int) -> tuple[str, ...]:
    try:
        record = store.job(job_id)
    except NotFound:
        return ()
    ends = [record.source, *record.destination.split(","), record.vm]
    return tuple(e for e in ends if e)


async def _in_cluster(
    serve: ServeState, events: AsyncIterator[StoredEvent | None], members: set[str]
) -> AsyncIterator[StoredEvent | None]:
    async for event in events:
        if event is None or event.job_id is None:
            yield event
            continue
        job_id = event.job_id
        if job_id not in serve.job_hosts:
            serve.job_hosts[job_id] = await serve.access.run(
                functools.partial(_hosts_of, job_id=job_id)
            )
        if members & set(serve.job_hosts[job_id]):
            yield event


def _busy() -> Response:
    from vmigrate.serve.http import error_response

    return error_response(503, f"{MAX_STREAMS} event streams are open",
                          "retry in a few seconds", headers={"Retry-After": "5"})  # fmt: skip


async def job_events(request: Request) -> Response:
    serve = state_of(request)
    job_id: int = request.path_params["job_id"]
    record = await serve.access.run(lambda s: s.job(job_id))  # 404 for an unknown job
    after = last_event_id(request.headers.get("last-event-id"), request.query_params.get("after"))
    if serve.hub.listeners >= MAX_STREAMS:
        return _busy()
    if record.state != "running":
        newer = await serve.access.run(lambda s: s.events_after(after, job_id=job_id, limit=1))
        if not newer:
            return Response(status_code=204)  # finished and nothing new: EventSource stops
    return EventStream(serve.hub.follow(after, job_id), serve, job_id)


async def all_events(request: Request) -> Response:
    serve = state_of(request)
    after = last_event_id(request.headers.get("last-event-id"), request.query_params.get("after"))
    if serve.hub.listeners >= MAX_STREAMS:
        return _busy()
    events = serve.hub.follow(after, None)
    cluster = request.query_params.get("cluster")
    if cluster:
        snap = await serve.inventory.snapshot()
        names = snap.cluster(cluster)
        members = set(names) | {snap.host(n)["uri"] for n in names}
        events = _in_cluster(serve, events, members)
    return EventStream(events, serve, None)
