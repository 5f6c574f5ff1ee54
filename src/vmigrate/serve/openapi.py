"""The OpenAPI document, made from the route table and the actions' fields (pure), so it
cannot drift from what the server does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vmigrate import __version__
from vmigrate.serve.actions import ACTIONS, Action


@dataclass(frozen=True)
class RouteDoc:
    path: str
    method: str
    summary: str
    role: str  # public | read | operate


_TYPES = {"bool": "boolean", "int": "integer", "float": "number", "str": "string"}


def _schema(action: Action) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for spec in action.fields:
        if spec.kind is list:
            prop: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
        else:
            prop = {"type": _TYPES[spec.kind.__name__]}
        if spec.choices:
            prop["enum"] = list(spec.choices)
        if spec.minimum is not None:
            prop["minimum"] = spec.minimum
        if spec.help:
            prop["description"] = spec.help
        properties[spec.name] = prop
    return {
        "type": "object",
        "additionalProperties": False,
        "required": [f.name for f in action.fields if f.required],
        "properties": properties,
    }


ERROR = {
    "type": "object",
    "properties": {
        "error": {"type": "string"},
        "fix": {"type": "string", "description": "what to do"},
        "status": {"type": "integer"},
    },
}


def _responses(role: str) -> dict[str, Any]:
    found: dict[str, Any] = {"200": {"description": "OK"}}
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if role != "public":
        found["401"] = {"description": "no valid token", **error}
    if role == "operate":
        found["403"] = {"description": "a read token may not act", **error}
    found["4XX"] = {"description": "refused: the CLI's message and fix", **error}
    return found


def document(routes: list[RouteDoc]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for route in routes:
        if route.path == "/api/actions/{name}":
            continue
        operation: dict[str, Any] = {
            "summary": route.summary,
            "responses": _responses(route.role),
        }
        if route.role == "public":
            operation["security"] = []
        params = [p.strip("{}") for p in route.path.split("/") if p.startswith("{")]
        if params:
            operation["parameters"] = [
                {"name": p, "in": "path", "required": True,
                 "schema": {"type": "integer" if p == "job_id" else "string"}}
                for p in params
            ]  # fmt: skip
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    for action in ACTIONS.values():
        paths[f"/api/actions/{action.name}"] = {
            "post": {
                "summary": action.help,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _schema(action)}},
                },
                "responses": {
                    **_responses("operate"),
                    "202": {"description": "the job started (its id, its events' URL)"},
                    "409": {"description": "refused: an open job or a lease holds the VM"},
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "vmigrate",
            "version": __version__,
            "description": "Watch and steer vmigrate's migrations. Every call but the "
            "public ones needs `Authorization: Bearer TOKEN`; actions need role operate.",
        },
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": ERROR},
        },
        "security": [{"token": []}],
        "paths": paths,
    }
