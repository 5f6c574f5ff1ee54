"""`vmigrate estimate`: know before you move. Takes `live`'s options and predicts what
`vmigrate live` with the same options will do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from vmigrate.cli.options import (
    json_option,
    policy_config,
    policy_options,
    store_option,
    stream_options,
    vm_and_hosts,
)
from vmigrate.forecast import Forecast, StreamChoice, forecast
from vmigrate.live.rehearsal import LINK_READING_SPREAD
from vmigrate.store import StoreLocation

console = Console(highlight=False)
MIB = 1 << 20


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def prediction_lines(prediction: dict[str, Any]) -> list[str]:
    """The prediction in words: route, when the policy acts, time, pause and gap."""
    route = prediction["route"]
    if prediction["outcome"] == "aborted":
        head = f"live will abort after {prediction['total_s']:.1f} s (the VM stays on the source)"
    elif prediction["outcome"] == "unfinished":
        head = "live would not finish: pre-copy never converges and the policy never stops it"
    else:
        head = (
            f"live will take {prediction['total_s']:.1f} s, {prediction['passes']} passes, "
            f"route {route}"
        )
    lines = [head, f"when it acts: {prediction['timeline']}"]
    if prediction["outcome"] == "completed":
        gap = f"guest's largest gap ~{_ms(prediction['guest_gap_ms'])}"
        if prediction["postcopy_s"]:
            gap += f" (page faults during {prediction['postcopy_s']:.1f} s of post-copy)"
        lines.append(f"libvirt's downtime ~{_ms(prediction['downtime_ms'])}, {gap}")
    return lines


def render(result: Forecast) -> None:
    console.print(
        f"[bold]{result.vm}[/]: {result.source} -> {result.destination}, "
        f"{result.memory_bytes / MIB:,.0f} MiB of memory, policy {result.policy['name']} "
        f"(max downtime {result.policy['max_downtime_ms']} ms, post-copy "
        f"{'allowed' if result.policy['postcopy_allowed'] else 'not allowed'}), "
        f"TLS {'on' if result.tls else 'off'}"
    )
    console.print(
        f"  link {result.link_bps / MIB:,.0f} MiB/s ({result.bandwidth_source}); the stream "
        f"gets {result.bandwidth_bps / MIB:,.0f} MiB/s"
    )
    curve = ", ".join(f"{b / MIB:,.0f} MiB in {s:g} s" for s, b in result.dirty_curve)
    ws = result.working_set_bytes
    console.print(
        f"  guest dirtied {curve}: {(result.dirty_rate_bps or 0) / MIB:,.0f} MiB/s"
        + (f" over a {ws / MIB:,.0f} MiB working set" if ws is not None else "")
    )
    if result.touched_bytes is not None:
        where = "learned from this host pair's moves" if result.overhead_learned else "default"
        console.print(
            f"  pass 1: its QEMU holds {result.touched_bytes / MIB:,.0f} MiB resident, less "
            f"{result.resident_overhead_bytes / MIB:,.0f} MiB QEMU keeps for itself ({where})"
        )
    console.print(f"  fixed costs: {result.costs}")
    for line in prediction_lines(result.prediction or {}):
        console.print(f"  [bold]{line}[/]" if line.startswith("live") else f"  {line}")
    if result.alternative is not None:
        console.print(
            "  [bold]on the policy's boundary[/]: with the link or the dirty rate read "
            f"{LINK_READING_SPREAD:.0%} off at the first sync, live takes the other route:"
        )
        for line in prediction_lines(result.alternative):
            console.print(f"    {line}")
    console.print(
        f"  cold move instead: {result.cold_bytes / MIB:,.0f} MiB of allocated disk data, "
        f"~{result.cold_seconds:.1f} s over this link"
    )
    if result.job_id is not None:
        console.print(
            f"  recorded as estimate job {result.job_id}: `vmigrate jobs show` of the move "
            "that follows shows it next to what happened"
        )
    if result.stream_note:
        console.print(f"  note: {result.stream_note}")


@click.command("estimate")
@vm_and_hosts
@policy_options
@stream_options
@click.option(
    "--link",
    type=float,
    default=None,
    help="The link's rate to the destination (MiB/s), e.g. 119 for 1 Gbit/s. "
    "[default: the hosts file's, else measured with a 2 s upload to the destination]",
)
@click.option(
    "--copy-storage",
    is_flag=True,
    help="Copy local disks along with memory, as live --copy-storage (their allocated bytes).",
)
@click.option(
    "--measure",
    type=click.IntRange(2, 60),
    default=4,
    show_default=True,
    help="Seconds of the longer dirty-rate window (the first is 1 s).",
)
@store_option
@json_option
def estimate(
    vm: str,
    source: str,
    destination: str,
    hosts_file: Path | None,
    policy: str,
    max_downtime: int | None,
    timeout: float | None,
    allow_postcopy: bool | None,
    bandwidth: int | None,
    parallel: int | None,
    compress: bool,
    tls: bool | None,
    link: float | None,
    copy_storage: bool,
    measure: int,
    store_path: StoreLocation | None,
    as_json: bool,
) -> None:
    """Predict what `vmigrate live` with the same options will do: route, passes, when its
    policy acts, time, downtime and the guest's largest gap."""
    result = forecast(
        vm,
        source,
        destination,
        policy_config(policy, max_downtime, timeout, allow_postcopy),
        stream=StreamChoice(bandwidth, parallel, compress, tls),
        link_mib=link,
        measure_seconds=measure,
        hosts_file=hosts_file,
        store_path=store_path,
        copy_storage=copy_storage,
    )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        render(result)
