"""The Starlette application: routes, authentication, errors without tracebacks."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vmigrate.errors import VmigrateError
from vmigrate.serve import api_actions, api_events, api_read
from vmigrate.serve.auth import AuthMiddleware, CachedTokens
from vmigrate.serve.children import Children
from vmigrate.serve.events import EventHub
from vmigrate.serve.http import Json, error_response, vmigrate_error_response
from vmigrate.serve.inventory import DEFAULT_TTL_S, Gatherer, Inventory, gather_hosts
from vmigrate.serve.metrics import exposition, read_store
from vmigrate.serve.openapi import RouteDoc, document
from vmigrate.serve.state import ServeState, state_of
from vmigrate.serve.storeaccess import StoreAccess
from vmigrate.serve.tokens import TokenFile
from vmigrate.store import StoreLocation

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass
class ServeConfig:
    store: StoreLocation | None
    hosts_file: Path | None
    tokens: TokenFile
    gather: Gatherer | None = None  # default: every known host, read with libvirt
    inventory_ttl_s: float = DEFAULT_TTL_S
    child_env: dict[str, str] | None = field(default=None)


async def health(_request: Request) -> Response:
    return Json({"ok": True})


async def metrics(request: Request) -> Response:
    serve = state_of(request)
    facts = await serve.access.run(read_store)
    body = exposition(facts, serve.inventory.cached())
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


async def dashboard(_request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


#: (path, method, endpoint, summary, role): the routes and their documentation, together.
ROUTE_TABLE: list[tuple[str, str, Endpoint, str, str]] = [
    ("/api/health", "GET", health, "the server answers", "public"),
    ("/api/inventory", "GET", api_read.inventory,
     "hosts (capacity, VMs, leases, maintenance) and clusters; ?cluster=", "read"),
    ("/api/hosts", "GET", api_read.hosts, "every known host", "read"),
    ("/api/hosts/{name}", "GET", api_read.host, "one host", "read"),
    ("/api/clusters", "GET", api_read.clusters, "clusters and their hosts", "read"),
    ("/api/vms", "GET", api_read.vms, "every VM with its host", "read"),
    ("/api/maintenance", "GET", api_read.maintenance, "hosts in maintenance", "read"),
    ("/api/leases", "GET", api_read.leases, "leases vmigrate jobs hold on VMs", "read"),
    ("/api/jobs", "GET", api_read.jobs, "jobs, newest first; ?vm= ?host= ?state= ?kind= ?last=",
     "read"),
    ("/api/jobs/{job_id:int}", "GET", api_read.job,
     "one job: samples, actions, lease history; a fleet job's moves", "read"),
    ("/api/jobs/{job_id:int}/events", "GET", api_events.job_events,
     "the job's events (SSE; Last-Event-ID resumes)", "read"),
    ("/api/events", "GET", api_events.all_events,
     "every job's events, or a cluster's (?cluster=) (SSE; Last-Event-ID resumes)", "read"),
    ("/api/actions", "GET", api_actions.actions_list, "the actions and their fields", "read"),
    ("/api/actions/{name}", "POST", api_actions.run_action, "run an action", "operate"),
    ("/api/jobs/{job_id:int}/cancel", "POST", api_actions.cancel,
     "cancel a running live move", "operate"),
    ("/api/children", "GET", api_actions.children, "commands this server runs now", "read"),
    ("/metrics", "GET", metrics, "Prometheus metrics", "read"),
]  # fmt: skip


def route_docs() -> list[RouteDoc]:
    return [
        RouteDoc(path.replace(":int", ""), method, summary, role)
        for path, method, _endpoint, summary, role in ROUTE_TABLE
    ]


async def openapi(_request: Request) -> Response:
    return Json(document(route_docs()))


class ErrorsAsJson:
    """Anything a route did not expect is logged here with its traceback and answered 500
    with one line: no traceback in any response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except VmigrateError as err:
            if not started:
                await vmigrate_error_response(err)(scope, receive, send)
        except Exception:
            log.exception("unexpected failure serving %s %s", scope.get("method"),
                          scope.get("path"))  # fmt: skip
            if not started:
                response = error_response(
                    500, "the server failed unexpectedly (the reason is in its log)",
                    "retry; if it fails again, report it with the server's log",
                )  # fmt: skip
                await response(scope, receive, send)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, exc.detail, "see /api/openapi.json")


async def _vmigrate_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, VmigrateError)
    return vmigrate_error_response(exc)


def create_app(config: ServeConfig) -> Starlette:
    access = StoreAccess(config.store)
    inventory = Inventory(config.gather or (lambda: gather_hosts(config.hosts_file)),
                          config.inventory_ttl_s)  # fmt: skip
    serve = ServeState(
        config.store,
        config.hosts_file,
        access,
        inventory,
        Children(config.child_env if config.child_env is not None else dict(os.environ)),
        EventHub(access),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        inventory.close()
        access.close()

    routes: list[Route | Mount] = [
        Route(path, endpoint, methods=[method]) for path, method, endpoint, _s, _r in ROUTE_TABLE
    ]
    routes += [
        Route("/api/openapi.json", openapi, methods=["GET"]),
        Route("/", dashboard, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(ErrorsAsJson),
            Middleware(AuthMiddleware, tokens=CachedTokens(config.tokens)),
        ],
        exception_handlers={HTTPException: _http_error, VmigrateError: _vmigrate_error},
        lifespan=lifespan,
    )
    app.state.serve = serve
    return app
