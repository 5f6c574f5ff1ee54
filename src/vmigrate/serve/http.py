"""Errors as the API says them (the CLI's message and fix, a status, never a traceback), and
request bodies read with a size limit and a deadline."""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse

from vmigrate.errors import HostUnreachable, NotFound, UsageError, VmigrateError
from vmigrate.lifecycle import TransitionRefused

log = logging.getLogger(__name__)
#: Largest request body accepted (actions are a few fields).
MAX_BODY_BYTES = 64 * 1024
#: A client that has not sent its body by then is answered 408.
BODY_TIMEOUT_S = 10.0


class ApiError(VmigrateError):
    """A refusal with its HTTP status."""

    def __init__(self, status: int, message: str, *, fix: str = "", **extra: Any) -> None:
        super().__init__(message, fix=fix)
        self.status = status
        self.extra = extra


def error_response(
    status: int, message: str, fix: str = "", headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"error": message, "fix": fix, "status": status, **extra}
    return JSONResponse(body, status_code=status, headers=headers)


def status_of(err: VmigrateError) -> int:
    if isinstance(err, ApiError):
        return err.status
    if isinstance(err, NotFound):
        return 404
    if isinstance(err, UsageError):
        return 400
    if isinstance(err, HostUnreachable):
        return 503
    if isinstance(err, TransitionRefused):
        return 409
    return 409  # refused by the state of a VM, a host or the store (an open job, a lease)


def vmigrate_error_response(err: VmigrateError) -> JSONResponse:
    """The error as the CLI words it (host and VM named), its fix apart."""
    text = str(err).split("\n  what to do:", 1)[0]
    extra = err.extra if isinstance(err, ApiError) else {}
    return error_response(status_of(err), text, err.fix, **extra)


async def read_json(request: Request, limit: int = MAX_BODY_BYTES) -> Any:
    """The request's JSON body; too large (413), too slow (408) or malformed (400) refused."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body has {declared} bytes, more than {limit}",
                       fix="send only the action's fields")  # fmt: skip
    chunks: list[bytes] = []
    size = 0
    try:
        with anyio.fail_after(BODY_TIMEOUT_S):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"the body is over {limit} bytes",
                                   fix="send only the action's fields")  # fmt: skip
                chunks.append(chunk)
    except TimeoutError as err:
        raise ApiError(408, f"the body did not arrive within {BODY_TIMEOUT_S:.0f} s",
                       fix="send the whole body at once") from err  # fmt: skip
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the body is not valid JSON: {err}",
                       fix='send a JSON object, e.g. {"vm": "web1", "from": "hostA", '
                       '"to": "hostB"}') from err  # fmt: skip


class Json(JSONResponse):
    """JSON whatever the values (paths, times as text)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=str, separators=(",", ":")).encode()
