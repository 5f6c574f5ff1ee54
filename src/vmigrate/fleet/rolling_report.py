"""The report a rolling upgrade ends with, whatever happened: each step predicted against
measured, each host done or in maintenance with its versions before and after, and where
each VM runs (read from every host at the end: a running VM on exactly one host is the
promise)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from vmigrate.fleet.gather import close_sessions, open_sessions
from vmigrate.fleet.rolling_order import RollOrder
from vmigrate.hosts import HostRef
from vmigrate.store import JobStore

EVACUATE_STEP, COMMAND_STEP, HEALTH_STEP, RETURN_STEP = "evacuate", "command", "health", "return"
DONE, FAILED, STARTED = "done", "failed", "started"


@dataclass
class RollingReport:
    job_id: int | None
    cluster: str
    order: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)
    predicted: dict[str, Any] = field(default_factory=dict)
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    vms: dict[str, list[str]] = field(default_factory=dict)  # VM -> hosts it runs on
    ok: bool = False
    message: str = ""
    total_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_s": round(self.total_s, 1)}


def versions_of(values: dict[str, Any]) -> dict[str, str]:
    return {"libvirt": str(values["libvirt"]), "qemu": str(values["qemu"])}


def _where_vms_run(refs: dict[str, HostRef]) -> tuple[dict[str, list[str]], list[str]]:
    """VM -> the hosts it runs on (a running VM on exactly one is the promise); the hosts
    that did not answer."""
    sessions = open_sessions(refs.values())
    try:
        where: dict[str, list[str]] = {}
        silent = []
        for name, session in sessions.items():
            if session.facts is None:
                silent.append(name)
                continue
            for guest in session.facts.guests:
                if guest.state in ("running", "paused", "blocked"):
                    where.setdefault(guest.name, []).append(name)
        return where, silent
    finally:
        close_sessions(sessions)


def final_report(
    store: JobStore,
    job_id: int,
    cluster: str,
    refs: dict[str, HostRef],
    order: RollOrder,
    before: dict[str, Any],
    predicted: dict[str, Any],
    failure: str | None,
    started: float,
) -> RollingReport:
    """The cluster's state at the roll's end: each step predicted and measured, each host
    done or in maintenance with its versions before and after, where each VM runs."""
    steps = store.steps(job_id)
    predicted_by_name = {s["name"]: s.get("predicted_s") for s in predicted.get("steps", [])}
    maintenance = {m.host for m in store.maintenance().values()}
    report = RollingReport(job_id, cluster, order.to_dict(), predicted=predicted)
    for record in steps:
        report.steps.append(
            {
                "name": record.name,
                "state": record.state,
                "seconds": record.detail.get("seconds"),
                "predicted_s": predicted_by_name.get(record.name),
                "detail": record.detail,
            }
        )
    done_health = {
        s.name.split(" ", 1)[1]: s.detail
        for s in steps
        if s.state == DONE and s.name.startswith(HEALTH_STEP)
    }
    for host in order.hosts:
        returned = any(s.state == DONE and s.name == f"{RETURN_STEP} {host}" for s in steps)
        entry: dict[str, Any] = {
            "before": versions_of(before[host]),
            "done": returned,
            "in_maintenance": host in maintenance,
        }
        if host in done_health:
            entry["after"] = {
                "libvirt": done_health[host]["libvirt_version"],
                "qemu": done_health[host]["qemu_version"],
            }
        report.hosts[host] = entry
    report.vms, silent = _where_vms_run(refs)
    twice = [vm for vm, hosts in report.vms.items() if len(hosts) > 1]
    done = [h for h, e in report.hosts.items() if e["done"]]
    report.total_s = time.monotonic() - started
    if failure is None and not twice and not silent:
        report.ok = True
        report.message = f"cluster {cluster} rolled: {len(done)} host(s) done"
    else:
        parts = [f"stopped at {failure}"] if failure else []
        parts.append(f"hosts done: {', '.join(done) or 'none'}")
        away = [h for h, e in report.hosts.items() if e["in_maintenance"]]
        if away:
            parts.append(f"in maintenance: {', '.join(away)}")
        if twice:
            parts.append(
                f"running on more than one host: {', '.join(twice)} (`vmigrate recover VM`)"
            )
        if silent:
            parts.append(f"not answering: {', '.join(silent)}")
        parts.append(f"`vmigrate jobs resume {job_id}` goes on once the cause is fixed")
        report.message = "; ".join(parts)
    return report
