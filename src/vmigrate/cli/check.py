"""`vmigrate check`: will the move work, and if not, why and how to fix it."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from vmigrate.cli.options import json_option, vm_and_hosts
from vmigrate.model import CheckReport, Mode, Verdict
from vmigrate.preflight import run_checks

console = Console(highlight=False)
_STYLE = {
    Verdict.PASS: "green",
    Verdict.WARN: "yellow",
    Verdict.FAIL: "bold red",
    Verdict.SKIPPED: "dim",
}


def render_report(report: CheckReport) -> Table:
    table = Table(
        title=f"{report.vm}: {report.source} -> {report.destination} "
        f"({report.mode}{', copy storage' if report.copy_storage else ''})",
        show_lines=False,
        expand=True,
    )
    table.add_column("", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("what was seen", ratio=3)
    table.add_column("what to do", ratio=2)
    for finding in report.findings:
        style = _STYLE[finding.verdict]
        table.add_row(
            f"[{style}]{finding.verdict.value}[/]",
            finding.check,
            finding.summary,
            finding.fix if finding.verdict in (Verdict.FAIL, Verdict.WARN) else "",
        )
    return table


@click.command("check")
@vm_and_hosts
@click.option(
    "--mode", type=click.Choice([m.value for m in Mode]), default="live", show_default=True
)
@click.option("--copy-storage", is_flag=True, help="Local disks will be copied (live).")
@click.option(
    "--tls/--no-tls",
    default=None,
    help="The move will (or will not) use QEMU TLS for the stream. [default: as `live` decides]",
)
@json_option
def check(
    vm: str,
    source: str,
    destination: str,
    mode: str,
    copy_storage: bool,
    tls: bool | None,
    hosts_file: Path | None,
    as_json: bool,
) -> None:
    """Say, before anything moves, whether VM can move from --from to --to, and why not.

    Exit status: 0 nothing failed, 1 something failed, 2 usage error.
    """
    report = run_checks(
        vm,
        source,
        destination,
        mode=Mode(mode),
        copy_storage=copy_storage,
        hosts_file=hosts_file,
        tls=tls,
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        console.print(render_report(report))
        counts = ", ".join(f"{report.count(v)} {v.value}" for v in Verdict if report.count(v))
        verdict = "[bold red]will not work[/]" if report.failed else "[green]can go ahead[/]"
        console.print(f"{verdict}: {counts} ({report.seconds:.1f} s)")
    if report.failed:
        raise SystemExit(1)
