"""`vmigrate rolling --cluster C --run 'COMMAND {host}'`: a rolling upgrade, host by host."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import click

from vmigrate.cli.evacuate import console, print_plan, run_with_board
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
from vmigrate.events import Done, print_json
from vmigrate.fleet.plan import DEFAULT_MAX_PARALLEL, DEFAULT_MAX_PER_HOST
from vmigrate.fleet.rolling import resume_rolling, rolling
from vmigrate.fleet.rolling_plan import COMMAND_ESTIMATE_S, HEALTH_ESTIMATE_S, RollingRequest
from vmigrate.fleet.rolling_report import RollingReport
from vmigrate.fleet.rolling_return import RETURN_ALWAYS, RETURN_POLICIES
from vmigrate.store import StoreLocation


def _on_plan(plan: dict[str, Any]) -> None:
    """A roll's plan (the order, each step's moves, the prediction), or an evacuation's."""
    roll = plan.get("rolling")
    if roll is None:
        print_plan(plan)
        return
    order = roll["order"]
    console.print("[bold]order:[/] " + " -> ".join(" + ".join(step) for step in order["steps"]))
    for reason in order["reasons"]:
        console.print(f"  {reason}")
    for host, versions in roll["hosts"].items():
        before = versions["before"]
        console.print(f"  {host}: libvirt {before['libvirt']}, QEMU {before['qemu']}")
    predicted = roll["predicted"]
    console.print("[bold]steps[/] (predicted):")
    for step in predicted["steps"]:
        console.print(f"  {step['name']:<24} {step['predicted_s']:>7.0f} s")
        for move in step.get("moves", []):
            console.print(
                f"      {move['vm']}: {move['source']} -> {move['destination']} "
                f"({move['mode']}, {move['predicted_s']:.0f} s)"
            )
        for unplaced in step.get("unplaced", []):
            console.print(f"      [red]nowhere[/] {unplaced['vm']}: {unplaced['reason']}")
        for vm, why in step.get("stays", {}).items():
            console.print(f"      stays {vm}: {why}")
    assumed = predicted["assumed"]
    console.print(
        f"[bold]predicted total: {predicted['total_s']:.0f} s[/] (assumed: each command "
        f"{assumed['command_s']:g} s, each health check {assumed['health_s']:g} s, "
        f"{assumed['gather_s']:g} s of facts and checks before each evacuation and return; "
        f"{assumed['returns']})"
    )


def render_report(report: RollingReport) -> None:
    console.print("[bold]roll:[/]")
    for step in report.steps:
        colour = {"done": "green", "failed": "red"}.get(step["state"], "yellow")
        took = f"{step['seconds']:.0f} s" if step.get("seconds") is not None else ""
        predicted = step.get("predicted_s")
        vs = f" (predicted {predicted:.0f} s)" if predicted is not None else ""
        console.print(f"  [{colour}]{step['state']:<7}[/] {step['name']:<24} {took}{vs}")
        if step["detail"].get("error"):
            console.print(f"      {step['detail']['error']}")
    console.print("[bold]hosts:[/]")
    for host, entry in report.hosts.items():
        before, after = entry["before"], entry.get("after")
        versions = f"QEMU {before['qemu']}" + (f" -> {after['qemu']}" if after else "")
        versions += f", libvirt {before['libvirt']}" + (f" -> {after['libvirt']}" if after else "")
        state = (
            "done" if entry["done"] else "in maintenance" if entry["in_maintenance"] else "not done"
        )
        console.print(f"  {host}: {state}; {versions}")
    console.print("[bold]VMs:[/]")
    for vm, hosts in sorted(report.vms.items()):
        console.print(f"  {vm}: {', '.join(hosts)}")
    colour = "green" if report.ok else "red"
    console.print(f"[bold {colour}]{report.message}[/] (total {report.total_s:.0f} s)")
    if report.job_id is not None:
        console.print(f"  job {report.job_id} (vmigrate jobs show {report.job_id})")


def finish(report: RollingReport, as_json: bool) -> None:
    if as_json:
        if report.job_id is None:  # a dry run: the Done the job would have written
            print_json(Done(report.to_dict()))
    elif report.job_id is not None:
        render_report(report)
    if not report.ok:
        raise SystemExit(1)


@click.command("rolling")
@click.option("--cluster", required=True, help="The cluster to upgrade, host by host.")
@click.option(
    "--run",
    "run",
    required=True,
    help="The command run for each emptied host, e.g. 'ssh root@{host} apt-get -y upgrade'; "
    "split into arguments like a shell would, {host} replaced, never run through a shell.",
)
@click.option(
    "--hosts-at-once",
    type=int,
    default=1,
    show_default=True,
    help="Hosts emptied and upgraded in one step (fewer than the cluster's hosts).",
)
@click.option(
    "--command-timeout",
    "command_timeout_s",
    type=float,
    default=1800.0,
    show_default=True,
    help="Seconds the command may take before it is stopped (a failed step).",
)
@click.option(
    "--wait",
    "wait_s",
    type=float,
    default=600.0,
    show_default=True,
    help="Seconds the host may take to answer again after the command.",
)
@click.option(
    "--test-domain",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A domain XML started (transient) and destroyed on each host in its health check.",
)
@click.option(
    "--command-estimate",
    "command_estimate_s",
    type=float,
    default=COMMAND_ESTIMATE_S,
    show_default=True,
    help="Seconds the prediction assumes for each command.",
)
@click.option(
    "--health-estimate",
    "health_estimate_s",
    type=float,
    default=HEALTH_ESTIMATE_S,
    show_default=True,
    help="Seconds the prediction assumes for each health check.",
)
@click.option(
    "--return",
    "return_policy",
    type=click.Choice(RETURN_POLICIES),
    default=RETURN_ALWAYS,
    show_default=True,
    help="always: every VM an evacuation moved comes back to its upgraded host (the cluster "
    "ends placed as it began); better: the balance planner brings back only the VMs whose "
    "return improves the balance, the others stay where they run.",
)
@fleet_limits_options(DEFAULT_MAX_PARALLEL, DEFAULT_MAX_PER_HOST)
@bandwidth_option
@dry_run_option(
    "Print the order, moves (and with --return better, the VMs that stay) and prediction"
)
@hosts_file_option
@store_option
@json_option
def rolling_command(
    cluster: str,
    run: str,
    hosts_at_once: int,
    command_timeout_s: float,
    wait_s: float,
    test_domain: Path | None,
    command_estimate_s: float,
    health_estimate_s: float,
    return_policy: str,
    max_parallel: int,
    max_per_host: int,
    bandwidth: float | None,
    dry_run: bool,
    hosts_file: Path | None,
    store_path: StoreLocation | None,
    as_json: bool,
) -> None:
    """Upgrade a cluster without downtime: for each host in turn (oldest QEMU first), put it
    in maintenance and empty it (no VM ever goes to an older QEMU), run the command, wait
    until the host answers and passes a health check (versions read again, pools active,
    optionally a test domain), bring its VMs back (or, with --return better, those whose
    return improves the balance), go on. Right before each command, the host's own libvirt
    must show no domain there (else the roll stops, naming it). Stops at the first failure
    with every VM running; `vmigrate jobs resume JOB` goes on from there."""
    request = RollingRequest(
        cluster=cluster,
        run=run,
        hosts_at_once=hosts_at_once,
        dry_run=dry_run,
        command_timeout_s=command_timeout_s,
        wait_s=wait_s,
        test_domain=test_domain,
        command_estimate_s=command_estimate_s,
        health_estimate_s=health_estimate_s,
        max_parallel=max_parallel,
        max_per_host=max_per_host,
        bandwidth_mib=bandwidth,
        hosts_file=hosts_file,
        store_path=store_path,
        return_policy=return_policy,
    )
    interrupt_on(*STOP_SIGNALS)
    report: RollingReport = run_with_board(
        lambda emit: rolling(request, emit), as_json, on_plan=_on_plan
    )
    finish(report, as_json)


def resume_command(job_id: int, store_path: StoreLocation | None, as_json: bool) -> None:
    interrupt_on(signal.SIGINT)
    report: RollingReport = run_with_board(
        lambda emit: resume_rolling(job_id, store_path, emit), as_json, on_plan=_on_plan
    )
    finish(report, as_json)
