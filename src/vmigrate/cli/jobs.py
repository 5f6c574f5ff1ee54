"""`vmigrate jobs`: past and running migrations from the job store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from vmigrate.plot import plot_job
from vmigrate.store import JobStore

console = Console(highlight=False)
store_option = click.option(
    "--store",
    "store_path",
    type=click.Path(path_type=Path),
    help="Job store [default: ~/.local/state/vmigrate/jobs.sqlite].",
)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


@click.group("jobs", invoke_without_command=True)
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def jobs(ctx: click.Context, store_path: Path | None, as_json: bool) -> None:
    """List migration jobs (running, finished, interrupted)."""
    ctx.obj = store_path
    if ctx.invoked_subcommand is not None:
        return
    store = JobStore(store_path)
    records = store.jobs()
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in records], indent=2, default=str))
        return
    table = Table(title=f"jobs in {store.path}")
    for column in ("id", "kind", "vm", "from", "to", "state", "started", "took", "outcome"):
        table.add_column(column)
    for r in records:
        took = f"{r.finished - r.started:.1f} s" if r.finished else "-"
        table.add_row(
            str(r.id),
            r.kind,
            r.vm,
            r.source,
            r.destination,
            r.state,
            _when(r.started),
            took,
            r.outcome or "",
        )
    console.print(table)


@jobs.command("show")
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path),
    help="Draw remaining memory and dirty rate over time into this PNG.",
)
@click.pass_obj
def show(store_path: Path | None, job_id: int, as_json: bool, plot_path: Path | None) -> None:
    """One job: parameters, samples, every action with its time and reason, outcome."""
    store = JobStore(store_path)
    record = store.job(job_id)
    samples = store.samples(job_id)
    actions = store.actions(job_id)
    if plot_path is not None:
        plot_job(record, samples, actions, plot_path)
    if as_json:
        click.echo(
            json.dumps(
                {**record.to_dict(), "samples": samples, "actions": [a.__dict__ for a in actions]},
                indent=2,
                default=str,
            )
        )
        return
    console.print(
        f"[bold]job {record.id}[/]: {record.kind} {record.vm} "
        f"{record.source} -> {record.destination}, [bold]{record.state}[/]"
        + (f" ({record.outcome})" if record.outcome else "")
    )
    console.print(
        f"  started {_when(record.started)}, finished {_when(record.finished)}, "
        f"{len(samples)} samples"
    )
    for action in actions:
        console.print(f"  {_when(action.t)} {action.actor:<6} {action.action}: {action.reason}")
    if record.report:
        placement = record.report.get("placement", {})
        if placement:
            console.print(f"  where: {placement.get('summary')}")
    if plot_path is not None:
        console.print(f"  plot written to {plot_path}")
