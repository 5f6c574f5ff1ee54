"""`vmigrate estimate`: know before you move."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console

from vmigrate.cli.options import json_option, vm_and_hosts
from vmigrate.forecast import Forecast, forecast

console = Console(highlight=False)
MIB = 1 << 20


def render(result: Forecast) -> None:
    console.print(
        f"[bold]{result.vm}[/]: {result.source} -> {result.destination}, "
        f"{result.memory_bytes / MIB:,.0f} MiB of memory, link "
        f"{result.bandwidth_bps / MIB:,.0f} MiB/s ({result.bandwidth_source})"
    )
    if result.dirty_rate_bps is not None:
        console.print(f"  measured dirty rate: {result.dirty_rate_bps / MIB:,.0f} MiB/s")
        pre = result.precopy or {}
        verdict = (
            f"converges in {pre['passes']} passes, {pre['total_seconds']:.1f} s, "
            f"pause ~{pre['downtime_ms']:.0f} ms"
            if pre.get("converges")
            else f"does not converge under {result.max_downtime_ms:g} ms (would need "
            f"{pre.get('needed_downtime_ms', 0):.0f} ms)"
        )
        console.print(f"  pre-copy: {verdict}")
        auto = result.autoconverge or {}
        if auto:
            console.print(
                f"  with auto-converge: {'converges' if auto['converges'] else 'no'}"
                f" in {auto['total_seconds']:.1f} s (throttle up to "
                f"{result.autoconverge_throttle_pct} %)"
            )
        if result.postcopy:
            console.print(
                f"  post-copy after the first pass: {result.postcopy['total_seconds']:.1f} s"
            )
        if result.advice:
            console.print(
                f"  [bold]advice: {result.advice['action']}[/] — {result.advice['reason']}"
            )
    console.print(
        f"  cold move: {result.cold_bytes / MIB:,.0f} MiB of allocated disk data, "
        f"~{result.cold_seconds:.1f} s over this link"
    )


@click.command("estimate")
@vm_and_hosts
@click.option(
    "--bandwidth",
    type=float,
    default=None,
    help="Link bandwidth to the destination (MiB/s), e.g. 119 for 1 Gbit/s. "
    "[default: measured with a 2 s upload to the destination]",
)
@click.option(
    "--max-downtime",
    type=float,
    default=300.0,
    show_default=True,
    help="The pause you accept (ms).",
)
@click.option("--no-postcopy", is_flag=True, help="Post-copy is not an option.")
@click.option(
    "--measure",
    type=click.IntRange(1, 60),
    default=2,
    show_default=True,
    help="Seconds to measure the dirty rate.",
)
@json_option
def estimate(
    vm: str,
    source: str,
    destination: str,
    hosts_file: Path | None,
    bandwidth: float | None,
    max_downtime: float,
    no_postcopy: bool,
    measure: int,
    as_json: bool,
) -> None:
    """Predict time, downtime and convergence of moving VM, and what options to use."""
    result = forecast(
        vm,
        source,
        destination,
        bandwidth_mib=bandwidth,
        max_downtime_ms=max_downtime,
        postcopy_allowed=not no_postcopy,
        measure_seconds=measure,
        hosts_file=hosts_file,
    )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        render(result)
