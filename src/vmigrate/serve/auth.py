"""Who may do what: every API call carries `Authorization: Bearer TOKEN`; a read token may
look, an operate token may also act. The token itself is never logged, stored or echoed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from vmigrate.serve.http import error_response
from vmigrate.serve.tokens import OPERATE, TokenEntry, TokenFile, verify

log = logging.getLogger(__name__)
#: Paths anyone may read: the dashboard's files, the API's description, a health probe.
PUBLIC_PREFIXES = ("/static/", "/api/openapi.json", "/api/health")
PUBLIC_PATHS = frozenset({"/", "/favicon.ico"})
#: Methods that change something: operators only.
ACTING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class Caller:
    name: str
    role: str


class CachedTokens:
    """The tokens file, read again when it changes (a token added while the server runs
    works at once; a removed one stops working at once)."""

    def __init__(self, tokens: TokenFile) -> None:
        self.tokens = tokens
        self._seen: tuple[float, int] | None = None
        self._entries: list[TokenEntry] = []

    def entries(self) -> list[TokenEntry]:
        try:
            stat = self.tokens.path.stat()
            stamp = (stat.st_mtime, stat.st_size)
        except FileNotFoundError:
            return []
        if stamp != self._seen:
            self._entries = self.tokens.entries()
            self._seen = stamp
        return self._entries


def bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    for key, value in headers:
        if key.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class AuthMiddleware:
    def __init__(self, app: ASGIApp, tokens: CachedTokens) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        token = bearer(scope["headers"])
        entry = verify(token, self.tokens.entries()) if token else None
        if entry is None:
            response = error_response(
                401,
                "no valid API token" if token else "this API needs a token",
                "send `Authorization: Bearer TOKEN`; an administrator makes one with "
                "`vmigrate serve token add NAME --role read|operate`",
                headers={"WWW-Authenticate": 'Bearer realm="vmigrate"'},
            )
            await response(scope, receive, send)
            return
        if scope["method"] in ACTING_METHODS and entry.role != OPERATE:
            log.info("token %s (read) refused: %s %s", entry.name, scope["method"], scope["path"])
            response = error_response(
                403,
                f"token {entry.name!r} may only read",
                "act with a token of role operate (`vmigrate serve token add NAME --role operate`)",
            )
            await response(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        state["caller"] = Caller(entry.name, entry.role)
        await self.app(scope, receive, send)
