"""`vmigrate cold`: move a stopped (or stoppable) VM with its disks, losing nothing."""

from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from vmigrate.cli.check import render_report
from vmigrate.cli.leases import lease_line, take_over_lease_option
from vmigrate.cli.options import (
    STOP_SIGNALS,
    interrupt_on,
    json_option,
    store_option,
    trust_checks_option,
    vm_and_hosts,
)
from vmigrate.cli.render_findings import FindingsView, report_from_dict
from vmigrate.cold.plan import ColdPlan
from vmigrate.cold.runner import ColdReport, ColdRequest, migrate_cold, plan_cold
from vmigrate.domxml.rewrite import parse_maps
from vmigrate.errors import MigrationRefused, UsageError
from vmigrate.events import (
    ChecksDone,
    CopyProgress,
    Event,
    JobStarted,
    LeaseEvent,
    Notice,
    PlanMade,
    RollbackStep,
    encode,
    print_json,
)
from vmigrate.model import CheckReport
from vmigrate.store import StoreLocation
from vmigrate.trusted_checks import read_trusted

console = Console(highlight=False)
MIB = 1 << 20


def render_plan(plan: ColdPlan) -> None:
    console.print(
        f"[bold]plan[/] for {plan.vm} ({plan.state}"
        + (", state carried" if plan.keep_state else "")
        + "):"
    )
    for copy in plan.copies:
        console.print(
            f"  copy {copy.source_path} -> {copy.destination_path} "
            f"({copy.format}, {copy.allocation / MIB:,.0f} MiB allocated)"
        )
    for pool_change in plan.pool_changes:
        console.print(f"  {pool_change.describe()}; digests read on both hosts")
    for target in plan.shared_disks:
        console.print(f"  {target}: on shared storage, left in place")
    state = plan.state_file
    if state is not None:
        route = (
            "restored in place (shared, not copied)"
            if state.shared
            else f"copied to pool {state.destination_pool!r} there"
        )
        console.print(
            f"  state: up to {state.size / MIB:,.0f} MiB saved in pool {state.source_pool!r} "
            f"({posixpath.basename(state.source_path)}), {route}; removed from both hosts after"
        )
    for change in plan.changes:
        console.print(f"  xml: {change}")
    for adapted in plan.adapt_changes:
        console.print(f"  {adapted.kind}: {adapted.describe()}")
    if plan.adapt_changes and plan.original_xml is not None:
        kept = f"job {plan.original_job}" if plan.original_job else "this job"
        console.print(
            f"  the original definition stays in {kept}: a later cold --adapt to a host "
            "that runs it restores it"
        )
    if plan.adapt_note:
        console.print(f"  {plan.adapt_note}")
    console.print(
        "  then: define on the destination"
        + (", start it" if plan.start_after else "")
        + ", verify, undefine on the source"
    )


def render_final(report: ColdReport) -> None:
    colour = "green" if report.outcome == "completed" else "red"
    console.print(
        f"[bold {colour}]{report.outcome}[/]: {report.vm} {report.source} -> "
        f"{report.destination}: {report.message}"
    )
    if report.downtime_s is not None:
        console.print(f"  service downtime {report.downtime_s:.1f} s (stopped -> running)")
    console.print(f"  moved {report.bytes_moved / MIB:,.0f} MiB")
    if report.state is not None and report.state["shared"]:
        console.print(f"  state file: on shared pool {report.state['destination_pool']!r}")
    elif report.state is not None and report.state["bytes"]:
        console.print(
            f"  state file: {report.state['bytes'] / MIB:,.0f} MiB in "
            f"{report.state['seconds']:.1f} s, sha256 {str(report.state['sha256'])[:16]}"
        )
    for disk in report.disks:
        speed = f"{disk['mib_per_s']} MiB/s" if disk["mib_per_s"] else "-"
        console.print(
            f"  {disk['destination']}: {disk['bytes'] / MIB:,.0f} MiB in "
            f"{disk['seconds']:.1f} s ({speed}), sha256 {str(disk['sha256'])[:16]}"
        )
    for change in report.pool_changes:
        line = f"  {change['target']}: {change['source']} -> {change['destination']}: "
        if change["seconds"] is None:
            line += "not copied"
        else:
            line += (
                f"{change['capacity'] / MIB:,.0f} MiB copied by the {change['copied_by']}'s "
                f"QEMU in {change['seconds']:.1f} s, "
            )
            line += (
                f"sha256 {str(change['sha256'])[:16]} read on both hosts"
                if change["sha256"]
                else "not verified"
            )
        console.print(line)
    where = report.placement.get("summary", "")
    style = "" if report.placement_ok else "[bold red]ATTENTION: "
    console.print(f"  {style}where: {where}" + ("[/]" if style else ""))
    if report.job_id is not None:
        console.print(f"  job {report.job_id} (vmigrate jobs show {report.job_id})")


@click.command("cold")
@vm_and_hosts
@click.option(
    "--force",
    is_flag=True,
    help="Power off after the shutdown timeout; go ahead despite failed checks or a "
    "destination in maintenance.",
)
@click.option("--keep-state", is_flag=True, help="Save memory state and resume it there.")
@click.option(
    "--state-pool",
    metavar="NAME|SRC:DST",
    help="With --keep-state: the pool that carries the state file (NAME on both hosts, or a "
    "shared pool; SRC:DST names each side). [default: where the disks go, a shared pool "
    "the VM is on, or a pool of the same name on both hosts]",
)
@click.option("--start/--no-start", default=None, help="[default: start it if it was running]")
@click.option("--pool-map", multiple=True, metavar="SRC:DST", help="Source pool -> pool.")
@click.option("--path-map", multiple=True, metavar="SRC:DST", help="Source dir -> dir.")
@click.option("--net-map", multiple=True, metavar="SRC:DST", help="Network/bridge -> new.")
@click.option(
    "--flatten",
    is_flag=True,
    help="Copy each backing chain as one standalone image (the source's chain is untouched).",
)
@click.option(
    "--adapt",
    is_flag=True,
    help="Rewrite what the destination's QEMU cannot run (machine type, CPU model, devices), "
    "each change listed in the plan; the job keeps the original definition, and a later "
    "--adapt move to a host that runs it restores it.",
)
@click.option("--dry-run", is_flag=True, help="Print the plan and the XML changes only.")
@click.option(
    "--delete-source-disks",
    is_flag=True,
    help="Delete the source's disk files once the destination runs.",
)
@click.option(
    "--no-rollback",
    is_flag=True,
    help="On a failure, leave the job where it stopped for `jobs resume` "
    "instead of putting the VM back on the source.",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds to wait for an ACPI shutdown.",
)
@take_over_lease_option
@trust_checks_option
@store_option
@json_option
def cold(
    vm: str,
    source: str,
    destination: str,
    force: bool,
    keep_state: bool,
    state_pool: str | None,
    start: bool | None,
    pool_map: tuple[str, ...],
    path_map: tuple[str, ...],
    net_map: tuple[str, ...],
    flatten: bool,
    adapt: bool,
    dry_run: bool,
    delete_source_disks: bool,
    no_rollback: bool,
    shutdown_timeout: float,
    take_over_lease: bool,
    trust_checks: Path | None,
    hosts_file: Path | None,
    store_path: StoreLocation | None,
    as_json: bool,
) -> None:
    """Move VM with its disks: stop (or save) it, copy, verify, define, start there.

    The job holds a lease on the VM (in its libvirt metadata) until it ends: a VM leased by
    another job, from any machine or store, is refused."""
    try:
        maps = [
            parse_maps(pool_map, "--pool-map"),
            parse_maps(path_map, "--path-map"),
            parse_maps(net_map, "--net-map"),
        ]
    except ValueError as err:
        raise UsageError(str(err), fix="write each map as SRC:DST") from err
    request = ColdRequest(
        vm,
        source,
        destination,
        force=force,
        keep_state=keep_state,
        state_pool=state_pool,
        start=start,
        pool_map=maps[0],
        path_map=maps[1],
        net_map=maps[2],
        delete_source_disks=delete_source_disks,
        rollback_on_failure=not no_rollback,
        flatten=flatten,
        shutdown_timeout_s=shutdown_timeout,
        adapt=adapt,
        hosts_file=hosts_file,
        store_path=store_path,
    )
    # Ctrl-C and SIGTERM stop at a clean point: streams aborted, the job left to resume.
    interrupt_on(*STOP_SIGNALS)
    if dry_run:
        plan = plan_cold(request)
        if as_json:
            click.echo(json.dumps(plan.to_dict(), indent=2))
        else:
            render_plan(plan)
            console.print("dry run: nothing was changed")
        return
    trusted = read_trusted(trust_checks) if trust_checks is not None else None
    report = run_with_progress(
        lambda emit: migrate_cold(request, emit, take_over_lease=take_over_lease, trusted=trusted),
        as_json,
        forced=force,
    )
    if report.outcome != "completed" or not report.placement_ok:
        raise SystemExit(1)


def run_with_progress(action: Any, as_json: bool, *, forced: bool = False) -> ColdReport:
    if as_json:
        report: ColdReport = action(print_json)
        return report
    with Progress(
        "{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=True,
    ) as progress:
        tasks: dict[str, Any] = {}
        done: dict[str, int] = {}
        disks: set[str] = set()

        def emit(event: Event) -> None:
            if isinstance(event, CopyProgress):
                path = event.path
                if path not in tasks:
                    tasks[path] = progress.add_task(path, total=event.total)
                progress.update(tasks[path], completed=event.done)
                if path in disks:  # the state file has a row of its own, not in the total
                    done[path] = event.done
                if "total" in tasks:
                    progress.update(tasks["total"], completed=sum(done.values()))
            elif isinstance(event, RollbackStep):
                console.print(f"[red]failed:[/] {event.reason}\nrolling back")
            elif isinstance(event, PlanMade):
                plan = ColdPlan.from_dict(event.plan)
                render_plan(plan)
                disks.update(c.source_path for c in plan.copies)
                if len(plan.copies) > 1:
                    total = sum(c.physical for c in plan.copies)
                    tasks["total"] = progress.add_task("all disks", total=total)
            elif isinstance(event, JobStarted):
                console.print(f"job {event.job_id} started")
            elif isinstance(event, ChecksDone) and event.report["ok"]:
                # a refusal prints the whole report
                console.print(FindingsView(report_from_dict(event.report), brief=True))
            elif isinstance(event, ChecksDone) and forced:
                # --force past failed checks: what was overridden stays on the screen
                console.print(FindingsView(report_from_dict(event.report)))
                console.print("[yellow]warning:[/] --force: moving despite the failed checks")
            elif isinstance(event, Notice):
                console.print(f"[yellow]{event.level}:[/] {event.message}")
            elif isinstance(event, LeaseEvent):
                console.print(lease_line(encode(event)))

        try:
            report = action(emit)
        except MigrationRefused as err:
            if isinstance(err.report, CheckReport):
                console.print(render_report(err.report))
            raise
    render_final(report)
    return report
