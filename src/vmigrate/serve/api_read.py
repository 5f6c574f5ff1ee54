"""Read-only routes: the inventory (hosts, clusters, VMs, capacity, maintenance, leases) and
the jobs (a filtered list; one job with its samples, actions and, for a fleet job, its moves
predicted against actual). The same library calls as `vmigrate hosts` and `vmigrate jobs`."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from vmigrate.cli.host_names import HostNames
from vmigrate.live.history import latest_estimate
from vmigrate.serve.http import ApiError
from vmigrate.serve.http import Json as JSONResponse
from vmigrate.serve.inventory import Snapshot
from vmigrate.serve.state import ServeState, state_of
from vmigrate.store import JobRecord, JobStore

#: Job kinds that run moves as jobs of their own.
FLEET_KINDS = ("evacuate", "balance", "return")


def redact_params(params: dict[str, Any]) -> dict[str, Any]:
    """A job's parameters without its secrets (the lease token)."""
    return {k: ("(hidden)" if "token" in k.lower() else v) for k, v in params.items()}


def job_dict(record: JobRecord, names: HostNames | None = None) -> dict[str, Any]:
    """A job as `jobs --json` shows it, its secrets hidden, its ends also by host name."""
    data = record.to_dict()
    data["params"] = redact_params(record.params)
    if names is not None:
        data["source_host"] = names.name(record.source) if record.source else ""
        data["destination_host"] = ",".join(
            names.name(end) for end in record.destination.split(",") if end
        )
    return data


def with_maintenance(snap: Snapshot, maintenance: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for row in snap.hosts:
        mark = maintenance.get(row["uri"])
        rows.append({**row, "maintenance": mark.reason if mark is not None else None,
                     "maintenance_since": mark.since if mark is not None else None})  # fmt: skip
    return rows


async def inventory(request: Request) -> JSONResponse:
    serve = state_of(request)
    snap = await serve.inventory.snapshot()
    maintenance = await serve.access.run(lambda s: s.maintenance())
    rows = with_maintenance(snap, maintenance)
    cluster = request.query_params.get("cluster")
    if cluster:
        members = set(snap.cluster(cluster))
        rows = [r for r in rows if r["name"] in members]
    return JSONResponse(
        {
            "hosts": rows,
            "clusters": snap.clusters,
            "taken": snap.taken,
            "took_s": round(snap.took_s, 3),
            "maintenance": [m.to_dict() for m in maintenance.values()],
        }
    )


async def hosts(request: Request) -> JSONResponse:
    serve = state_of(request)
    snap = await serve.inventory.snapshot()
    maintenance = await serve.access.run(lambda s: s.maintenance())
    return JSONResponse(with_maintenance(snap, maintenance))


async def host(request: Request) -> JSONResponse:
    serve = state_of(request)
    snap = await serve.inventory.snapshot()
    row = snap.host(request.path_params["name"])
    maintenance = await serve.access.run(lambda s: s.maintenance())
    return JSONResponse(with_maintenance(Snapshot([row], {}, snap.taken, 0.0), maintenance)[0])


async def clusters(request: Request) -> JSONResponse:
    snap = await state_of(request).inventory.snapshot()
    return JSONResponse(snap.clusters)


async def vms(request: Request) -> JSONResponse:
    snap = await state_of(request).inventory.snapshot()
    rows = [
        {**vm, "host": row["name"], "cluster": row.get("cluster")}
        for row in snap.hosts
        for vm in row.get("vms", [])
    ]
    return JSONResponse(rows)


async def maintenance(request: Request) -> JSONResponse:
    marks = await state_of(request).access.run(lambda s: s.maintenance())
    return JSONResponse([m.to_dict() for m in marks.values()])


async def leases(request: Request) -> JSONResponse:
    snap = await state_of(request).inventory.snapshot()
    found: list[dict[str, Any]] = []
    unread: list[dict[str, str]] = []
    for row in snap.hosts:
        held = row.get("leases", [])
        if isinstance(held, str):
            unread.append({"host": row["name"], "why": held})
        else:
            found += held
    return JSONResponse({"leases": found, "unread": unread})


#: How many of the newest jobs a filtered listing looks through (as `vmigrate jobs`).
FILTER_SCAN = 100_000


def _int_param(request: Request, name: str, default: int, highest: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= highest:
        raise ApiError(400, f"?{name}= must be a whole number from 1 to {highest}, not {raw!r}",
                       fix=f"e.g. ?{name}={default}")  # fmt: skip
    return int(raw)


def list_jobs(serve: ServeState, store: JobStore, request_query: dict[str, str]) -> list[Any]:
    from vmigrate.cli.render_jobs import JobFilter

    last = int(request_query.get("last", "50"))
    kind = request_query.get("kind")
    wanted = JobFilter(
        vm=request_query.get("vm"), host=request_query.get("host"),
        state=request_query.get("state"), last=None,
    )  # fmt: skip
    filtered = any(request_query.get(k) for k in ("vm", "host", "state", "kind"))
    records = store.jobs(limit=FILTER_SCAN if filtered else last)
    names = HostNames.from_hosts_file(serve.hosts_file)
    kept = [r for r in wanted.apply(records, names) if kind is None or r.kind == kind]
    return [job_dict(r, names) for r in kept[:last]]


async def jobs(request: Request) -> JSONResponse:
    serve = state_of(request)
    query = dict(request.query_params)
    query["last"] = str(_int_param(request, "last", 50, 10_000))
    rows = await serve.access.run(lambda s: list_jobs(serve, s, query))
    return JSONResponse(rows)


def fleet_moves(store: JobStore, record: JobRecord) -> list[dict[str, Any]]:
    """A fleet job's planned moves, each with the job that carried it out (its real start
    and end), matched by VM among the moves started since the fleet job."""
    plan = record.params.get("plan") or (record.report or {}).get("plan") or {}
    reported = {m.get("vm"): m for m in (record.report or {}).get("moves", [])}
    later = [
        r
        for r in store.jobs(limit=2000)
        if r.kind in ("live", "cold") and r.started >= record.started - 1
    ]
    moves = []
    for planned in plan.get("moves", []):
        vm = planned.get("vm")
        done = reported.get(vm, {})
        job_id = done.get("job_id")
        actual = next((r for r in later if r.id == job_id), None) if job_id else None
        if actual is None:
            candidates = sorted((r for r in later if r.vm == vm), key=lambda r: r.started)
            actual = candidates[0] if candidates else None
        moves.append(
            {
                "vm": vm,
                "source": planned.get("source"),
                "destination": planned.get("destination"),
                "mode": planned.get("mode"),
                "predicted_start_s": planned.get("predicted_start_s", 0.0),
                "predicted_s": planned.get("predicted_s"),
                "job_id": actual.id if actual else job_id,
                "state": actual.state if actual else None,
                "started_s": actual.started - record.started if actual else None,
                "finished_s": actual.finished - record.started
                if actual and actual.finished
                else None,
            }
        )
    return moves


def job_detail(store: JobStore, job_id: int, names: HostNames | None = None) -> dict[str, Any]:
    from vmigrate.cli.jobs import move_of_a_fleet_job

    record = store.job(job_id)
    detail = job_dict(record, names)
    detail["samples"] = store.samples(job_id)
    detail["actions"] = [a.__dict__ for a in store.actions(job_id)]
    detail["lease_events"] = store.lease_events(job_id)
    detail["steps"] = [s.__dict__ for s in store.steps(job_id)]
    if record.kind in FLEET_KINDS:
        detail["moves"] = fleet_moves(store, record)
    else:
        fleet = move_of_a_fleet_job(store, record)
        detail["predicted_s"] = (fleet or {}).get("predicted_s")
        if detail["predicted_s"] is None and record.kind == "live":
            # A single move: the `vmigrate estimate` made just before it, as `jobs show` says.
            estimate = latest_estimate(
                store, record.vm, record.source, record.destination, record.started
            )
            prediction = (estimate or {}).get("prediction") or {}
            if estimate is not None and prediction.get("outcome") == "completed":
                detail["predicted_s"] = prediction.get("total_s")
                detail["estimate_job"] = estimate["job_id"]
    return detail


async def job(request: Request) -> JSONResponse:
    job_id: int = request.path_params["job_id"]
    serve = state_of(request)
    names = HostNames.from_hosts_file(serve.hosts_file)
    detail = await serve.access.run(lambda s: job_detail(s, job_id, names))
    return JSONResponse(detail)
