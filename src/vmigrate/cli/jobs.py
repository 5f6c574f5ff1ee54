"""`vmigrate jobs`: past and running migrations from the job store."""

from __future__ import annotations

import getpass
import json
import os
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from vmigrate import lifecycle
from vmigrate.cli.host_names import HostNames
from vmigrate.cli.layout import paragraph, print_lines
from vmigrate.cli.leases import take_over_lease_option
from vmigrate.cli.options import json_option, store_option
from vmigrate.cli.render_jobs import JobFilter, jobs_lines, show_lines
from vmigrate.errors import NotFound, UsageError, VmigrateError
from vmigrate.live.history import ESTIMATE_KIND, latest_estimate
from vmigrate.store import JobRecord, JobStore, StoreLocation

console = Console(highlight=False)


@click.group("jobs", invoke_without_command=True)
@store_option
@json_option
@click.option("--vm", help="Only this VM's jobs.")
@click.option("--host", help="Only jobs from or to this host (a name or a URI).")
@click.option("--state", help="Only jobs in this state, e.g. running, failed, completed.")
@click.option(
    "--last", type=click.IntRange(min=1), default=50, show_default=True, help="The N newest."
)
@click.option(
    "--leases",
    "with_leases",
    is_flag=True,
    help="Also read the leases vmigrate jobs hold on every known host's VMs (any store).",
)
@click.pass_context
def jobs(
    ctx: click.Context,
    store_path: StoreLocation | None,
    as_json: bool,
    vm: str | None,
    host: str | None,
    state: str | None,
    last: int,
    with_leases: bool,
) -> None:
    """List migration jobs (running, finished, interrupted), newest first."""
    ctx.obj = store_path
    if ctx.invoked_subcommand is not None:
        return
    store = JobStore(store_path)
    if with_leases:
        _print_leases(store, as_json)
        return
    names = HostNames.from_hosts_file()
    wanted = JobFilter(vm=vm, host=host, state=state, last=last)
    filtered = vm is not None or host is not None or state is not None
    records = wanted.apply(store.jobs(limit=FILTER_SCAN if filtered else last), names)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in records], indent=2, default=str))
        return
    print_lines(console, paragraph(f"jobs in {store.path}", console.width))
    print_lines(console, jobs_lines(records, console.width, names))


#: How many of the newest jobs a filtered listing looks through.
FILTER_SCAN = 100_000


@jobs.command("show")
@click.argument("job_id", type=int)
@json_option
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path),
    help="Draw the job into this PNG: remaining memory and dirty rate over time, the "
    "policy's actions; a fleet job's moves, predicted against actual.",
)
@click.pass_obj
def show(
    store_path: StoreLocation | None, job_id: int, as_json: bool, plot_path: Path | None
) -> None:
    """One job, top-down: what moved where, the outcome, the time, the downtime, the
    policy's actions with their reasons, then the samples."""
    store = JobStore(store_path)
    record = store.job(job_id)
    samples = store.samples(job_id)
    actions = store.actions(job_id)
    names = HostNames.from_hosts_file()
    fleet_move = move_of_a_fleet_job(store, record)
    if plot_path is not None:
        # matplotlib costs a third of a second to import: only a plot pays it, not every
        # vmigrate command (a fleet job starts one per move).
        from vmigrate.plot import plot_job

        plot_job(
            record,
            samples,
            actions,
            plot_path,
            moves=fleet_moves(store, record),
            names=names.name,
            predicted_s=(fleet_move or {}).get("predicted_s"),
        )
    if as_json:
        click.echo(
            json.dumps(
                {**record.to_dict(), "samples": samples, "actions": [a.__dict__ for a in actions]},
                indent=2,
                default=str,
            )
        )
        return
    lines = show_lines(
        record, samples, actions, console.width, names, fleet_move, _prediction(store, record)
    )
    print_lines(console, lines)
    history = store.lease_events(job_id)
    if history:
        print_lines(console, paragraph("lease:", console.width))
    for event in history:
        when = time.strftime("%H:%M:%S", time.localtime(float(event["t"])))
        said = event.get("message") or event.get("why") or ""
        print_lines(
            console,
            paragraph(
                f"{when} {event['event']} on {event['host']} {said}".rstrip(), console.width, "  "
            ),
        )
    if plot_path is not None:
        console.print(f"plot written to {plot_path}", soft_wrap=True)


def _prediction(store: JobStore, record: JobRecord) -> dict[str, Any] | None:
    """The estimate made before a live move; an estimate job's own prediction."""
    if record.kind == ESTIMATE_KIND:
        return {**(record.report or {}), "job_id": record.id}
    if record.kind != "live":
        return None
    return latest_estimate(store, record.vm, record.source, record.destination, record.started)


def move_of_a_fleet_job(store: JobStore, record: JobRecord) -> dict[str, Any] | None:
    """The result an evacuation or balance round recorded for this move (its predicted
    time, the guest's largest heartbeat gap); None for a move run on its own."""
    for kind in FLEET_KINDS:
        for fleet in store.jobs_of_kind(kind):
            for move in (fleet.report or {}).get("moves", []):
                if move.get("job_id") == record.id:
                    found: dict[str, Any] = move
                    return found
    return None


#: Jobs that run moves as jobs of their own.
FLEET_KINDS = ("evacuate", "balance")


def fleet_moves(store: JobStore, record: JobRecord) -> list[JobRecord]:
    """The jobs of a fleet job's moves (their real start and end)."""
    ids = [m.get("job_id") for m in (record.report or {}).get("moves", [])]
    found = []
    for job_id in ids:
        if job_id is not None:
            try:
                found.append(store.job(job_id))
            except NotFound:  # a store cleaned by hand: the move is drawn as planned only
                continue
    return found


CONTROL_WAIT_S = 15.0


def _send(store_path: StoreLocation | None, job_id: int, command: str, value: float | None) -> None:
    """Ask the process running a job to act, and wait for its answer."""
    store = JobStore(store_path)
    # Every control steers a running live job, as cancel does.
    record = store.check_action(job_id, lifecycle.CANCEL)
    by = f"{getpass.getuser()} (pid {os.getpid()})"
    control_id = store.request_control(job_id, command, value, by)
    deadline = time.monotonic() + CONTROL_WAIT_S
    while (answer := store.control(control_id)).handled_at is None:
        if time.monotonic() > deadline:
            raise VmigrateError(
                f"the vmigrate process running job {job_id} (pid {record.pid}) did not answer "
                f"within {CONTROL_WAIT_S:.0f} s; the request stays queued",
                vm=record.vm,
                fix="check that the job is still running: vmigrate jobs",
            )
        time.sleep(0.1)
    if answer.result != "applied":
        raise VmigrateError(f"job {job_id}: {answer.result}", vm=record.vm)
    console.print(
        f"job {job_id}: {command}"
        + (f" {value:g}" if value is not None else "")
        + " applied by the running vmigrate"
    )


@jobs.command("cancel")
@click.argument("job_id", type=int)
@click.pass_obj
def cancel(store_path: StoreLocation | None, job_id: int) -> None:
    """Abort a running live migration; the VM stays on the source."""
    _send(store_path, job_id, "cancel", None)


@jobs.command("postcopy")
@click.argument("job_id", type=int)
@click.pass_obj
def postcopy(store_path: StoreLocation | None, job_id: int) -> None:
    """Switch a running live migration to post-copy now."""
    _send(store_path, job_id, "postcopy", None)


@jobs.command("set")
@click.argument("job_id", type=int)
@click.option("--max-downtime", type=click.IntRange(min=1), help="New maximum downtime (ms).")
@click.option("--bandwidth", type=click.IntRange(min=1), help="New bandwidth limit (MiB/s).")
@click.pass_obj
def set_limits(
    store_path: StoreLocation | None, job_id: int, max_downtime: int | None, bandwidth: int | None
) -> None:
    """Change a running live migration's maximum downtime or bandwidth."""
    if max_downtime is None and bandwidth is None:
        raise click.UsageError("give --max-downtime MS and/or --bandwidth MiB/s")
    if max_downtime is not None:
        _send(store_path, job_id, "max-downtime", float(max_downtime))
    if bandwidth is not None:
        _send(store_path, job_id, "bandwidth", float(bandwidth))


def _lease_of_a_move(kind: str, job_id: int, take_over_lease: bool) -> None:
    """--take-over-lease is for a job that holds a VM's lease itself (a cold move); a fleet
    job's moves are jobs of their own, started anew, and it is not passed on to them."""
    if take_over_lease and kind in FLEET_JOB_KINDS:
        raise UsageError(
            f"--take-over-lease: job {job_id} is a {kind} job, which holds no VM's lease "
            "itself (its moves are jobs of their own)",
            fix="resume or roll back the move whose VM carries the stale lease "
            "(`vmigrate jobs --vm VM`), or move that VM with `vmigrate live|cold VM "
            "--take-over-lease`",
        )


#: Jobs whose resume goes on through moves started as jobs of their own.
FLEET_JOB_KINDS = ("evacuate", "rolling")


@jobs.command("resume")
@click.argument("job_id", type=int)
@take_over_lease_option
@json_option
@click.pass_obj
def resume(
    store_path: StoreLocation | None, job_id: int, take_over_lease: bool, as_json: bool
) -> None:
    """Finish an interrupted or failed cold migration from where it stopped, or an
    interrupted evacuation (its moves in flight are waited for or recovered first), or a
    rolling upgrade from its first step not done."""
    from vmigrate.cli.cold import run_with_progress
    from vmigrate.cold.runner import resume_cold

    with JobStore(store_path) as store:
        kind = store.job(job_id).kind
        _lease_of_a_move(kind, job_id, take_over_lease)
        if kind != "evacuate":  # an evacuation checks more before it goes on
            store.check_action(job_id, lifecycle.RESUME)
    if kind == "evacuate":
        from vmigrate.cli.evacuate import resume_command

        resume_command(job_id, store_path, as_json)
        return
    if kind == "rolling":
        from vmigrate.cli.rolling import resume_command as resume_roll

        resume_roll(job_id, store_path, as_json)
        return
    report = run_with_progress(
        lambda emit: resume_cold(job_id, store_path, emit, take_over_lease=take_over_lease),
        as_json,
    )
    if report.outcome != "completed":
        raise SystemExit(1)


@jobs.command("rollback")
@click.argument("job_id", type=int)
@take_over_lease_option
@json_option
@click.pass_obj
def rollback(
    store_path: StoreLocation | None, job_id: int, take_over_lease: bool, as_json: bool
) -> None:
    """Undo an interrupted or failed cold migration: remove only what it created, restore
    the source as it was. A completed job is never rolled back (move the VM back instead)."""
    from vmigrate.cli.cold import run_with_progress
    from vmigrate.cold.runner import rollback_cold

    with JobStore(store_path) as store:
        _lease_of_a_move(store.job(job_id).kind, job_id, take_over_lease)
        store.check_action(job_id, lifecycle.ROLLBACK)  # the early word; reopening decides
    report = run_with_progress(
        lambda emit: rollback_cold(job_id, store_path, emit, take_over_lease=take_over_lease),
        as_json,
    )
    if report.outcome != "rolled back" or not report.placement_ok:
        raise SystemExit(1)


def _print_leases(store: JobStore, as_json: bool) -> None:
    """The leases found on every known host (hosts file and the running lab), each said to be
    of this store's job or another's: a lease names the store its job is recorded in."""
    from vmigrate.cli.leases import describe_found
    from vmigrate.hosts import known_hosts
    from vmigrate.virt.lease import leases_on_hosts

    unreachable: list[str] = []
    found = leases_on_hosts(
        known_hosts(), on_error=lambda host, err: unreachable.append(f"{host} ({err})")
    )
    rows = []
    for lease in found:
        row = lease.to_dict()
        row["this_store"] = lease.lease is not None and lease.lease.store == store.identity
        rows.append(row)
    if as_json:
        click.echo(json.dumps({"leases": rows, "unreachable": unreachable}, indent=2))
    else:
        if not rows:
            print_lines(console, paragraph("no lease on any known host's VMs", console.width))
        for row in rows:
            where = "this store" if row["this_store"] else "another store"
            text = f"{row['host']}: {describe_found(row)} ({where})"
            print_lines(console, paragraph(text, console.width, "  "))
        for host in unreachable:
            print_lines(console, paragraph(f"{host}: not read", console.width, "  "))
    if unreachable:
        raise SystemExit(1)
