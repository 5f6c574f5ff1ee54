"""`vmigrate evacuate HOST` and `vmigrate maintenance end HOST [--return]`."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from vmigrate.cli.options import (
    STOP_SIGNALS,
    bandwidth_option,
    dry_run_option,
    fleet_limits_options,
    hosts_file_option,
    interrupt_on,
    json_option,
    store_option,
)
from vmigrate.cli.render_plan import PlanView
from vmigrate.events import (
    Done,
    Event,
    JobStarted,
    MoveEnded,
    MoveProgress,
    MoveStarted,
    Notice,
    PlanMade,
    encode,
    print_json,
)
from vmigrate.fleet.evacuate import (
    EvacuateRequest,
    EvacuationReport,
    evacuate,
    resume_evacuation,
)
from vmigrate.fleet.execute import MOVED, UNKNOWN, MoveResult
from vmigrate.fleet.plan import DEFAULT_MAX_PARALLEL, DEFAULT_MAX_PER_HOST, MODES
from vmigrate.fleet.returning import end_maintenance
from vmigrate.store import StoreLocation

console = Console(highlight=False)


def print_plan(plan: dict[str, Any]) -> None:
    console.print(PlanView(plan))


class MoveBoard:
    """One row per move while the moves run."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def update(self, kind: str, payload: dict[str, Any]) -> None:
        row = self.rows.setdefault(payload["vm"], {"vm": payload["vm"]})
        if kind == "move-start":
            row.update(
                destination=payload["destination"],
                state=f"starting (attempt {payload['attempt']})",
                percent=0.0,
                predicted=payload["predicted_s"],
                elapsed=0.0,
            )
        elif kind == "move-progress":
            row.update(
                state=payload["phase"], percent=payload["percent"], elapsed=payload["elapsed_s"]
            )
        elif kind == "move-end":
            row.update(state=payload["state"], destination=payload["destination"])

    def table(self) -> Table:
        table = Table(title="moves")
        for column in ("VM", "to", "state", "progress", "elapsed / predicted"):
            table.add_column(column)
        for row in self.rows.values():
            table.add_row(
                row["vm"],
                row.get("destination", ""),
                row.get("state", ""),
                f"{row.get('percent', 0):5.1f} %",
                f"{row.get('elapsed', 0):.0f} s / {row.get('predicted', 0):.0f} s",
            )
        return table


def run_with_board(
    action: Any, as_json: bool, on_plan: Callable[[dict[str, Any]], None] | None = None
) -> Any:
    if as_json:
        return action(print_json)
    board = MoveBoard()
    with Live(console=console, refresh_per_second=2, transient=True) as display:

        def emit(event: Event) -> None:
            if isinstance(event, PlanMade):
                (on_plan or print_plan)(event.plan)
            elif isinstance(event, JobStarted):
                console.print(f"job {event.job_id} started")
            elif isinstance(event, MoveStarted | MoveProgress | MoveEnded):
                board.update(event.KIND, encode(event))
                display.update(board.table())
                if isinstance(event, MoveEnded):
                    console.print(_result_line(encode(event)))
            elif isinstance(event, Notice):
                console.print(f"[yellow]{event.message}[/]")

        return action(emit)


def _result_line(result: dict[str, Any]) -> str:
    colour = {MOVED: "green", UNKNOWN: "red"}.get(result["state"], "yellow")
    took = f" in {result['seconds']:.1f} s" if result.get("seconds") is not None else ""
    gap = f", guest gap {result['gap_ms']:.0f} ms" if result.get("gap_ms") is not None else ""
    return f"[{colour}]{result['state']}[/] {result['vm']}{took}{gap}: {result['reason']}"


def render_report(report: EvacuationReport) -> None:
    console.print("final report:")
    for result in report.moves:
        console.print("  " + _result_line(result.to_dict()))
    colour = "green" if report.empty else "red"
    console.print(f"[bold {colour}]{report.message}[/] (total {report.total_s:.0f} s)")
    if report.job_id is not None:
        console.print(
            f"  job {report.job_id} (vmigrate jobs show {report.job_id}); {report.host} stays "
            f"in maintenance until `vmigrate maintenance end {report.host}`"
        )


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(n.strip() for n in (value or "").split(",") if n.strip())


@click.command("evacuate")
@click.argument("host")
@click.option("--to", "to", help="Target hosts, e.g. hostB,hostC [default: the host's cluster].")
@click.option("--cluster", help="Move the VMs to the other hosts of this cluster.")
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default="auto",
    show_default=True,
    help="auto: running VMs live (local disks copied along), shut-off ones cold; "
    "live: running VMs only; cold: every VM (running ones are shut down).",
)
@fleet_limits_options(DEFAULT_MAX_PARALLEL, DEFAULT_MAX_PER_HOST)
@bandwidth_option
@dry_run_option("Print the plan")
@hosts_file_option
@store_option
@json_option
def evacuate_command(
    host: str,
    to: str | None,
    cluster: str | None,
    mode: str,
    max_parallel: int,
    max_per_host: int,
    bandwidth: float | None,
    dry_run: bool,
    hosts_file: Path | None,
    store_path: StoreLocation | None,
    as_json: bool,
) -> None:
    """Empty HOST for maintenance: plan every move first (the same checks as `vmigrate check`,
    capacity after the moves already planned, a predicted time), then move, retry failures on
    the next host, and report where every VM went (one line per VM). Ctrl-C cancels the moves
    in flight: live moves abort, cold moves are rolled back so their VMs run on HOST again (or
    finish, once a VM already runs on its destination). Exit 0 only when HOST is empty and
    every move is proven (or, with --dry-run, when every VM has a place)."""
    if to is not None and not _split(to):
        raise click.BadParameter("name at least one host, e.g. --to hostB,hostC")
    request = EvacuateRequest(
        host=host,
        to=_split(to),
        cluster=cluster,
        mode=mode,
        max_parallel=max_parallel,
        max_per_host=max_per_host,
        bandwidth_mib=bandwidth,
        dry_run=dry_run,
        hosts_file=hosts_file,
        store_path=store_path,
    )
    interrupt_on(*STOP_SIGNALS)
    report: EvacuationReport = run_with_board(lambda emit: evacuate(request, emit), as_json)
    finish(report, as_json)


def finish(report: EvacuationReport, as_json: bool) -> None:
    if as_json:
        if report.job_id is None:  # a dry run: the plan was the output
            print_json(Done(report.to_dict()))
    elif report.job_id is not None:
        render_report(report)
    ok = report.empty if report.job_id is not None else not report.plan["unplaced"]
    if not ok:
        raise SystemExit(1)


def resume_command(job_id: int, store_path: StoreLocation | None, as_json: bool) -> None:
    interrupt_on(signal.SIGINT)
    report: EvacuationReport = run_with_board(
        lambda emit: resume_evacuation(job_id, store_path, emit), as_json
    )
    finish(report, as_json)


@click.group("maintenance")
def maintenance() -> None:
    """Hosts in maintenance: no plan sends VMs to them."""


@maintenance.command("start")
@click.argument("host")
@click.option("--reason", default="marked by hand", show_default=True)
@hosts_file_option
@store_option
def maintenance_start(
    host: str, reason: str, hosts_file: Path | None, store_path: StoreLocation | None
) -> None:
    """Mark HOST in maintenance without moving anything: no plan targets it from now on."""
    from vmigrate.hosts import resolve_host
    from vmigrate.store import JobStore

    ref = resolve_host(host, hosts_file)
    with JobStore(store_path) as store:
        store.set_maintenance(ref.name, ref.uri, None, reason)
    console.print(f"{ref.name} is in maintenance: no plan sends VMs there")


@maintenance.command("end")
@click.argument("host")
@click.option(
    "--return",
    "bring_back",
    is_flag=True,
    help="Move back the VMs the last evacuation took off HOST (same planner).",
)
@hosts_file_option
@store_option
@json_option
def maintenance_end(
    host: str,
    bring_back: bool,
    hosts_file: Path | None,
    store_path: StoreLocation | None,
    as_json: bool,
) -> None:
    """Take HOST out of maintenance, and with --return move its VMs back."""
    interrupt_on(signal.SIGINT)
    was, results, _plan = run_with_board(
        lambda emit: end_maintenance(
            host,
            bring_back=bring_back,
            hosts_file=hosts_file,
            store_path=store_path,
            on_event=emit,
        ),
        as_json,
    )
    results_list: list[MoveResult] = results
    if not as_json:  # with --json, the Done event was the last line
        console.print(f"{host} is out of maintenance" if was else f"{host} was not in maintenance")
        for result in results_list:
            console.print("  " + _result_line(result.to_dict()))
    if any(r.state != MOVED for r in results_list):
        raise SystemExit(1)
