"""Action routes: the body is checked, the names it holds are looked up (an unknown VM, host,
cluster or job is refused with the CLI's message), then the `vmigrate` command runs as a child
process. A move answers 202 with its job once the child names it; a dry run, a check or an
estimate answers with the command's own JSON output."""

from __future__ import annotations

import logging
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response

from vmigrate import lifecycle
from vmigrate.errors import NotFound
from vmigrate.serve.actions import ACTIONS, Action, command_line, jobs_command, validate
from vmigrate.serve.children import Child
from vmigrate.serve.http import ApiError, read_json
from vmigrate.serve.http import Json as JSONResponse
from vmigrate.serve.inventory import Snapshot
from vmigrate.serve.state import ServeState, caller_name, state_of

log = logging.getLogger(__name__)
#: How long a move's child may take to name its job (checks, a plan, dirty rates measured).
JOB_START_TIMEOUT_S = 180.0
#: How long a dry run, a check or an estimate may take.
RESULT_TIMEOUT_S = 600.0
#: `jobs cancel` waits up to 15 s for the running process to answer.
CANCEL_TIMEOUT_S = 30.0


def _on_host(snap: Snapshot, vm: str, host: str) -> None:
    source = snap.host(host)["name"]
    where = snap.where_is(vm)
    if not where:
        snap.vm(vm)  # raises: no VM of that name anywhere
    if source not in where:
        raise NotFound(
            f"no VM named {vm!r} (it is on {', '.join(where)})",
            host=source,
            vm=vm,
            fix=f"name the host it is on: --from {where[0]}",
        )


def check_names(snap: Snapshot, action: Action, values: dict[str, Any]) -> None:
    """Every name the body holds exists (NotFound otherwise, as the CLI words it)."""
    if "vm" in values:
        _on_host(snap, values["vm"], values["from"])
    for key in ("to", "host"):
        value = values.get(key)
        for name in value if isinstance(value, list) else [value] if value else []:
            snap.host(name)
    if values.get("cluster"):
        snap.cluster(values["cluster"])
    if action.name in ("live", "cold", "check", "estimate") and snap.host(values["from"]) is \
            snap.host(values["to"]):  # fmt: skip
        raise ApiError(400, f"{values['vm']}: --from and --to name the same host",
                       fix="pick another destination")  # fmt: skip


async def checked_snapshot(serve: ServeState, action: Action, values: dict[str, Any]) -> None:
    """Names checked against the inventory; a miss is checked again against a fresh one
    (a VM made a second ago is not refused for a stale cache)."""
    snap = await serve.inventory.snapshot()
    try:
        check_names(snap, action, values)
    except NotFound:
        serve.inventory.invalidate()
        check_names(await serve.inventory.snapshot(), action, values)


def _starts_job(action: Action, values: dict[str, Any]) -> bool:
    if action.name == "maintenance-end":
        return bool(values.get("return"))
    return action.starts_job and not values.get("dry_run")


def _refusal(child: Child) -> ApiError:
    """A child that ended without a job: its own error, as the CLI printed it."""
    said = child.error()
    status = 400 if child.returncode == 2 else 409
    return ApiError(status, said.message, fix=said.fix, exit_code=child.returncode,
                    output=child.events[-20:])  # fmt: skip


async def run_action(request: Request) -> Response:
    serve = state_of(request)
    name = request.path_params["name"]
    action = ACTIONS.get(name)
    if action is None:
        raise ApiError(404, f"no action {name!r}", fix=f"actions: {', '.join(ACTIONS)}")
    values = validate(action, await read_json(request))
    await checked_snapshot(serve, action, values)
    starts = _starts_job(action, values)
    if starts and "vm" in values:  # the store's early word; the command checks again
        vm = values["vm"]
        await serve.access.run(lambda s: s.ensure_no_open_job(vm))
    args = command_line(action, values, serve.store_arg(), serve.hosts_arg())
    log.info("%s runs %s %s", caller_name(request), action.name,
             {k: v for k, v in values.items()})  # fmt: skip
    child = serve.children.start(action.name, args)
    serve.inventory.invalidate()
    if starts:
        named = await anyio.to_thread.run_sync(child.wait_for_job, JOB_START_TIMEOUT_S)
        if not named and child.returncode not in (None, 0):
            raise _refusal(child)
        events_url = f"/api/jobs/{child.job_id}/events" if child.job_id is not None else None
        body = {**child.summary(), "events_url": events_url, "output": child.events[-5:]}
        return JSONResponse(body, status_code=202)
    ended = await anyio.to_thread.run_sync(child.wait_for_end, RESULT_TIMEOUT_S)
    if not ended:
        raise ApiError(
            504,
            f"{action.name} did not finish within {RESULT_TIMEOUT_S:.0f} s",
            fix="see `vmigrate jobs`; it may still be running",
            pid=child.pid,
        )
    if child.returncode != 0 and not child.events:
        raise _refusal(child)
    said = child.error() if child.returncode else None
    return JSONResponse(
        {
            **child.summary(),
            "output": child.events,
            "error": said.message if said else None,
            "fix": said.fix if said else None,
        }
    )


async def cancel(request: Request) -> Response:
    serve = state_of(request)
    job_id: int = request.path_params["job_id"]
    await read_json(request)  # a body, if any, is still bounded
    await serve.access.run(lambda s: s.check_action(job_id, lifecycle.CANCEL))
    log.info("%s cancels job %d", caller_name(request), job_id)
    child = serve.children.start("cancel", jobs_command(job_id, "cancel", serve.store_arg()))
    await anyio.to_thread.run_sync(child.wait_for_end, CANCEL_TIMEOUT_S)
    if child.returncode != 0:
        raise _refusal(child)
    return JSONResponse({"job_id": job_id, "cancelled": True})


async def actions_list(_request: Request) -> Response:
    return JSONResponse(
        [
            {
                "name": a.name,
                "help": a.help,
                "starts_job": a.starts_job,
                "fields": [
                    {
                        "name": f.name,
                        "type": f.kind.__name__,
                        "required": f.required,
                        "choices": list(f.choices),
                        "help": f.help,
                    }
                    for f in a.fields
                ],
            }
            for a in ACTIONS.values()
        ]
    )


async def children(request: Request) -> Response:
    return JSONResponse([c.summary() for c in state_of(request).children.running()])
