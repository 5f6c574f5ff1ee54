"""`vmigrate recover VM`: put things straight after vmigrate was killed mid-migration."""

from __future__ import annotations

import json

import click
from rich.console import Console

from vmigrate.cli.options import json_option, store_option
from vmigrate.store import StoreLocation

console = Console(highlight=False)


@click.command("recover")
@click.argument("vm")
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="Seconds to let a migration libvirt still runs finish first.",
)
@store_option
@json_option
def recover(vm: str, wait: float, store_path: StoreLocation | None, as_json: bool) -> None:
    """Find where VM really is after an interrupted live migration, and finish or undo it."""
    from vmigrate.live.recover import recover as recover_vm

    report = recover_vm(vm, store_path=store_path, wait_s=wait)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        colour = "green" if report.outcome in ("completed", "aborted") else "red"
        console.print(f"[{colour}]{report.outcome}[/]: {report.message}")
        for step in report.steps:
            console.print(f"  did: {step}")
        console.print(f"  where: {report.placement['summary']}")
        if report.fix:
            console.print(f"  what to do: {report.fix}")
        console.print(f"  job {report.job_id} (vmigrate jobs show {report.job_id})")
    if report.outcome not in ("completed", "aborted") or report.still_running_jobs:
        raise SystemExit(1)
