"""`vmigrate live`: a live migration with progress, the policy's actions, and a final report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from vmigrate.cli.check import render_report
from vmigrate.cli.leases import lease_line, take_over_lease_option
from vmigrate.cli.options import (
    STOP_SIGNALS,
    interrupt_on,
    json_option,
    policy_config,
    policy_options,
    store_option,
    stream_options,
    trust_checks_option,
    vm_and_hosts,
)
from vmigrate.cli.render_findings import FindingsView, report_from_dict
from vmigrate.errors import MigrationRefused
from vmigrate.events import (
    ChecksDone,
    Event,
    JobStarted,
    LeaseEvent,
    Notice,
    PolicyAction,
    Sample,
    encode,
    print_json,
)
from vmigrate.live.runner import LiveReport, LiveRequest, migrate_live
from vmigrate.model import CheckReport
from vmigrate.store import StoreLocation
from vmigrate.trusted_checks import TrustedChecks, read_trusted

console = Console(highlight=False)
MIB = 1 << 20


def _mib(value: float) -> str:
    return f"{value / MIB:,.0f} MiB"


def progress_table(sample: dict[str, Any]) -> Table:
    table = Table.grid(padding=(0, 2))
    phase = sample["phase"]
    label = f"pre-copy pass {sample['iteration']}" if phase == "precopy" else phase
    if phase == "setup" and sample["disk_total"]:
        label = "copying disks"  # QEMU mirrors the disks before memory's first pass
    bar_width = 30
    filled = int(bar_width * sample["percent"] / 100)
    bandwidth = sample["bandwidth_bps"]
    link_rate = bandwidth + sample.get("disk_bandwidth_bps", 0.0)
    eta = sample["memory_remaining"] / bandwidth if bandwidth > 0 else None
    expected = sample.get("expected_downtime_ms")
    table.add_row(
        f"[bold]{label}[/]",
        f"[green]{'█' * filled}[/]{'░' * (bar_width - filled)} {sample['percent']:5.1f} %",
    )
    if sample["disk_total"]:
        table.add_row(
            "disks copied",
            f"{_mib(sample['disk_processed'])} / {_mib(sample['disk_total'])}"
            f" ({100 * sample['disk_processed'] / sample['disk_total']:.0f} %)",
        )
        table.add_row(
            "memory copied",
            f"{_mib(min(sample['memory_processed'], sample['memory_total']))} / "
            f"{_mib(sample['memory_total'])}"
            if sample["memory_total"]
            else "starts once the disks are in sync",
        )
    table.add_row(
        "sent / remaining",
        f"{_mib(sample['memory_processed'] + sample['disk_processed'])} / "
        f"{_mib(sample['memory_remaining'] + sample['disk_remaining'])}",
    )
    table.add_row(
        "bandwidth / dirty rate",
        f"{_mib(link_rate)}/s / {_mib(sample['dirty_rate_bps'])}/s",
    )
    table.add_row(
        "expected downtime / limit",
        f"{expected:.0f} ms / {sample['downtime_limit_ms']:.0f} ms"
        if expected is not None
        else f"- / {sample['downtime_limit_ms']:.0f} ms",
    )
    table.add_row(
        "elapsed / ETA this pass",
        f"{sample['elapsed_s']:.1f} s / " + (f"{eta:.1f} s" if eta else "-"),
    )
    if sample.get("throttle_pct"):
        table.add_row("guest throttled", f"{sample['throttle_pct']} %")
    return table


def render_final(report: LiveReport) -> None:
    colour = {"completed": "green", "aborted": "yellow", "cancelled": "yellow"}.get(
        report.outcome, "red"
    )
    console.print(
        f"[bold {colour}]{report.outcome}[/]: {report.vm} "
        f"{report.source} -> {report.destination}: {report.message}"
    )
    downtime = f"{report.downtime_ms:.0f} ms" if report.downtime_ms is not None else "n/a"
    console.print(
        f"  total {report.total_s:.1f} s, downtime {downtime}, "
        f"sent {_mib(report.bytes_sent)}, passes {report.passes}"
        + (", finished in post-copy" if report.postcopy else "")
    )
    for action in report.actions:
        value = f" {action['value']:g}" if action["value"] is not None else ""
        console.print(
            f"  {action['at_s']:6.1f} s  {action['by']:<6} {action['action']}{value}: "
            f"{action['reason']}"
        )
    _render_storage(report.storage)
    where = report.placement.get("summary", "")
    if report.placement_ok:
        console.print(f"  verified: {where}")
    else:
        console.print(
            f"[bold red]  ATTENTION: {where} — not where it should be; "
            f"run `vmigrate jobs show {report.job_id}`[/]"
        )
    if report.fix:
        console.print(f"[bold]  what to do:[/] {report.fix}")
    console.print(f"  job {report.job_id} (vmigrate jobs show {report.job_id})")


def _render_storage(storage: dict[str, Any]) -> None:
    if not storage:
        return
    console.print(
        f"  disks copied: {', '.join(storage['copied']) or 'none'}; "
        f"left in place (shared): {', '.join(storage['shared']) or 'none'}"
    )
    if storage.get("removed_from_destination"):
        console.print(
            "  removed from the destination again: "
            + ", ".join(storage["removed_from_destination"])
        )
    for left in storage.get("left_on_destination", []):
        console.print(f"[bold red]  left on the destination, remove by hand: {left}[/]")
    if storage.get("source_images_kept"):
        console.print(
            "  the source still holds its copies: "
            + ", ".join(storage["source_images_kept"])
            + " (--delete-source-disks removes them)"
        )


@click.command("live")
@vm_and_hosts
@policy_options
@click.option(
    "--postcopy-wait",
    type=float,
    default=600.0,
    show_default=True,
    help="If the link breaks in post-copy, wait this long for it to return (s).",
)
@click.option("--direct", is_flag=True, help="Client-managed migration instead of peer-to-peer.")
@click.option("--transient", is_flag=True, help="Leave definitions as they are.")
@stream_options
@click.option("--migration-address", help="Destination address for the data stream.")
@click.option(
    "--copy-storage", is_flag=True, help="Copy local disks along with memory (shared never)."
)
@click.option("--disks", help="With --copy-storage: the local disks to copy, e.g. vda,vdb.")
@click.option(
    "--delete-source-disks",
    is_flag=True,
    help="With --copy-storage: remove the source's copied images once the VM runs there.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Go ahead even if pre-flight checks fail or the destination is in maintenance.",
)
@take_over_lease_option
@trust_checks_option
@store_option
@json_option
def live(
    vm: str,
    source: str,
    destination: str,
    policy: str,
    max_downtime: int | None,
    timeout: float | None,
    allow_postcopy: bool | None,
    postcopy_wait: float,
    direct: bool,
    transient: bool,
    bandwidth: int | None,
    parallel: int | None,
    compress: bool,
    tls: bool | None,
    migration_address: str | None,
    copy_storage: bool,
    disks: str | None,
    delete_source_disks: bool,
    force: bool,
    take_over_lease: bool,
    trust_checks: Path | None,
    hosts_file: Path | None,
    store_path: StoreLocation | None,
    as_json: bool,
) -> None:
    """Move a running VM to another host without stopping it. Ctrl-C aborts (VM stays).

    The job holds a lease on the VM (in its libvirt metadata) while it runs: a VM leased by
    another job, from any machine or store, is refused."""
    for name, value in (
        ("--bandwidth", bandwidth),
        ("--parallel", parallel),
        ("--postcopy-wait", postcopy_wait),
    ):
        if value is not None and value <= 0:
            raise click.BadParameter(f"{name} must be positive")
    if delete_source_disks and not copy_storage:
        raise click.BadParameter("--delete-source-disks only applies with --copy-storage")
    config = policy_config(policy, max_downtime, timeout, allow_postcopy)
    request = LiveRequest(
        vm=vm,
        source=source,
        destination=destination,
        policy=config,
        peer_to_peer=not direct,
        transient=transient,
        bandwidth_mib=bandwidth,
        parallel_connections=parallel,
        compressed=compress,
        tls=tls,
        migration_address=migration_address,
        force=force,
        hosts_file=hosts_file,
        store_path=store_path,
        copy_storage=copy_storage,
        disks=_disk_list(disks),
        delete_source_disks=delete_source_disks,
        postcopy_wait_s=postcopy_wait,
    )
    # Ctrl-C and SIGTERM abort the migration cleanly, even where a parent shell started us
    # with SIGINT ignored; the runner turns the interrupt into an abort of the job.
    interrupt_on(*STOP_SIGNALS)
    trusted = read_trusted(trust_checks) if trust_checks is not None else None
    report = (
        _run_json(request, take_over_lease, trusted)
        if as_json
        else _run_interactive(request, take_over_lease, trusted)
    )
    if report.outcome != "completed" or not report.placement_ok:
        raise SystemExit(1)


def _disk_list(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    if not names:
        raise click.BadParameter("name at least one disk target, e.g. --disks vda,vdb")
    return names


def _run_json(
    request: LiveRequest, take_over_lease: bool, trusted: TrustedChecks | None = None
) -> LiveReport:
    try:
        return migrate_live(request, print_json, take_over_lease=take_over_lease, trusted=trusted)
    except MigrationRefused as err:
        if isinstance(err.report, CheckReport):
            print_json(ChecksDone(err.report.to_dict()))
        raise


def _run_interactive(
    request: LiveRequest, take_over_lease: bool, trusted: TrustedChecks | None = None
) -> LiveReport:
    with Live(console=console, refresh_per_second=4, transient=True) as display:

        def emit(event: Event) -> None:
            if isinstance(event, ChecksDone):
                console.print(FindingsView(report_from_dict(event.report), brief=True))
            elif isinstance(event, JobStarted):
                console.print(f"job {event.job_id} started")
            elif isinstance(event, Sample):
                display.update(progress_table(encode(event)))
            elif isinstance(event, PolicyAction):
                value = f" {event.value:g}" if event.value is not None else ""
                console.print(
                    f"[cyan]{event.at_s:6.1f} s {event.by}: "
                    f"{event.action}{value}[/] — {event.reason}"
                )
            elif isinstance(event, Notice):
                console.print(f"[yellow]{event.message}[/]")
            elif isinstance(event, LeaseEvent):
                console.print(lease_line(encode(event)))

        try:
            report = migrate_live(request, emit, take_over_lease=take_over_lease, trusted=trusted)
        except MigrationRefused as err:
            if isinstance(err.report, CheckReport):
                console.print(render_report(err.report))
            raise
    render_final(report)
    return report
