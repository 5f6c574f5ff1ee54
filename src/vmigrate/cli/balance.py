"""`vmigrate balance`: even out a cluster's load, weighing each move's cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console

from vmigrate.cli.evacuate import run_with_board
from vmigrate.cli.options import (
    STOP_SIGNALS,
    bandwidth_option,
    dry_run_option,
    hosts_file_option,
    interrupt_on,
    json_option,
    store_option,
)
from vmigrate.cli.render_plan import PlanView
from vmigrate.events import Done, print_json
from vmigrate.fleet.balance import DEFAULT_MAX_MOVES, DEFAULT_MIN_GAIN, DEFAULT_THRESHOLD
from vmigrate.fleet.execute import MOVED
from vmigrate.fleet.rebalance import (
    DEFAULT_COOL_DOWN_S,
    DEFAULT_WINDOW_S,
    BalanceReport,
    BalanceRequest,
    balance_round,
    watch,
)
from vmigrate.store import StoreLocation

console = Console(highlight=False)
MIB = 1 << 20


def _print_plan(plan: dict[str, Any]) -> None:
    console.print(PlanView(plan, balance=True))


def _render(report: BalanceReport) -> None:
    for result in report.moves:
        colour = "green" if result.state == MOVED else "yellow"
        console.print(f"  [{colour}]{result.state}[/] {result.vm}: {result.reason}")
    if report.imbalance_measured_after is not None:
        console.print(
            f"imbalance measured after the moves: {report.imbalance_measured_after:.3f} "
            f"(predicted {report.plan['imbalance_after']:.3f})"
        )
    console.print(report.message)
    if report.job_id is not None:
        console.print(
            f"  job {report.job_id} (vmigrate jobs show {report.job_id} --plot loads.png)"
        )


@click.command("balance")
@click.option("--cluster", help="The cluster to balance [default: the only one, or the lab].")
@click.option(
    "--threshold",
    type=float,
    default=DEFAULT_THRESHOLD,
    show_default=True,
    help="Act only above this imbalance (coefficient of variation of the hosts' loads).",
)
@click.option(
    "--min-gain",
    type=float,
    default=DEFAULT_MIN_GAIN,
    show_default=True,
    help="A move must lower the imbalance by this share of it.",
)
@click.option("--max-moves", type=int, default=DEFAULT_MAX_MOVES, show_default=True)
@click.option(
    "--window",
    type=float,
    default=DEFAULT_WINDOW_S,
    show_default=True,
    help="Seconds over which each VM's CPU use is measured.",
)
@click.option(
    "--cool-down",
    type=float,
    default=DEFAULT_COOL_DOWN_S,
    show_default=True,
    help="Seconds a VM balance moved is left alone.",
)
@click.option("--max-parallel", type=int, default=1, show_default=True, help="Moves at once.")
@bandwidth_option
@click.option("--watch", "watch_s", type=float, help="Repeat a round every SECONDS until Ctrl-C.")
@dry_run_option("Print loads before and after, and the moves")
@hosts_file_option
@store_option
@json_option
def balance(
    cluster: str | None,
    threshold: float,
    min_gain: float,
    max_moves: int,
    window: float,
    cool_down: float,
    max_parallel: int,
    bandwidth: float | None,
    watch_s: float | None,
    dry_run: bool,
    hosts_file: Path | None,
    store_path: StoreLocation | None,
    as_json: bool,
) -> None:
    """Even out the load of a cluster's hosts (CPU and memory): each candidate move is
    simulated and scored by the imbalance it removes against its predicted cost (time, bytes,
    downtime); nothing moves under --threshold, a move must gain --min-gain, a VM balance
    moved is left alone for --cool-down. Exit 0 when every planned move was done."""
    if watch_s is not None and watch_s <= 0:
        raise click.BadParameter("--watch needs a positive number of seconds")
    request = BalanceRequest(
        cluster=cluster,
        threshold=threshold,
        min_gain=min_gain,
        max_moves=max_moves,
        window_s=window,
        cool_down_s=cool_down,
        max_parallel=max_parallel,
        bandwidth_mib=bandwidth,
        dry_run=dry_run,
        hosts_file=hosts_file,
        store_path=store_path,
    )
    interrupt_on(*STOP_SIGNALS)

    def one_round(emit: Any) -> list[BalanceReport]:
        if watch_s is not None:
            return watch(request, watch_s, emit)
        return [balance_round(request, emit)]

    reports: list[BalanceReport] = run_with_board(one_round, as_json, on_plan=_print_plan)
    for report in reports:
        if as_json:
            if report.job_id is None:  # nothing moved: no job, no Done event yet
                print_json(Done(report.to_dict()))
        else:
            _render(report)
    if any(r.state != MOVED for report in reports for r in report.moves):
        raise SystemExit(1)
