"""The plans of `evacuate` and `balance` as an operator reads them: the verdict first, one
line per move, and in full only what needs attention (VMs with nowhere to go, VMs left
alone, and why)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rich.console import Console, ConsoleOptions
from rich.segment import Segment
from rich.text import Text

from vmigrate.cli.layout import INDENT, Cell, Column, Grid, paragraph
from vmigrate.cli.render_findings import rendered

MIB = 1 << 20


def _seconds(value: float) -> str:
    return f"{value:.0f} s"


def _downtime(value: float | None, off: str) -> str:
    return f"{value:.0f} ms" if value is not None else off


def _refusal(vm: str, reason: str, hosts: list[str], width: int) -> list[Text]:
    """Why a VM has nowhere to go: each target's reason on lines of its own."""
    lines = [Text.assemble(("nowhere", "bold red"), "  ", (vm, "bold"))]
    prefix = "no host can take it: "
    if not reason.startswith(prefix) or not hosts:
        return lines + paragraph(reason, width, INDENT)
    lines += paragraph(prefix.rstrip(": "), width, INDENT)
    each_host = re.compile("; (?=(?:" + "|".join(map(re.escape, hosts)) + "): )")
    for part in each_host.split(reason[len(prefix) :]):
        lines += paragraph(part, width, INDENT + "  ")
    return lines


def evacuation_plan_lines(plan: dict[str, Any], width: int) -> list[Text]:
    """The verdict (every VM placed, or which have nowhere to go), one line per move with
    why it goes there, the total, each target's memory, then each refusal in full."""
    placed, unplaced = plan["moves"], plan["unplaced"]
    what = f"empty {plan['source']}" if plan["source"] else "moves"
    verdict = (
        Text(f"plan to {what}: every VM has a place", style="green")
        if not unplaced
        else Text(f"plan to {what}: {len(unplaced)} VM(s) with nowhere to go", style="bold red")
    )
    limits = plan["limits"]
    lines = [verdict]
    lines += paragraph(
        f"{len(placed)} move(s), predicted total {_seconds(plan['predicted_total_s'])} with at "
        f"most {limits['max_parallel']} at once, {limits['max_per_host']} per host, sharing "
        f"{plan['bandwidth_bps'] / MIB:,.0f} MiB/s ({plan['bandwidth_source']})",
        width,
    )
    link = plan.get("link")
    if link:  # how the moves use the link (fleet/plan.py's LinkPlan)
        lines += paragraph(
            f"link: {link['sending_at_once']} move(s) sending at once; {link['overlap']}; "
            f"multifd {link['multifd']}; compression {link['compression']}",
            width,
        )
    grid = Grid(
        [
            Column("VM", line_break_after=True),
            Column("FROM", drop_order=1),
            Column("TO"),
            Column("MODE"),
            Column("STARTS", right=True, drop_order=2),
            Column("TAKES", right=True),
            Column("DOWNTIME", right=True),
        ],
        free=Column("WHY"),
        free_wraps=True,
        min_free=30,
    )
    for move in placed:
        grid.add(
            move["vm"],
            move["source"],
            move["destination"],
            move["mode"] + (" +disks" if move["copy_storage"] else ""),
            _seconds(move["predicted_start_s"]),
            _seconds(move["predicted_s"]),
            _downtime(move["predicted_downtime_ms"], "(off)"),
            free=move["reason"],
        )
    for left in unplaced:
        grid.add(
            left["vm"],
            plan["source"] or "-",
            Cell("nowhere", "bold red"),
            "",
            "",
            "",
            "",
            free="see below",
        )
    lines.append(Text(""))
    lines += grid.lines(width)
    if plan["hosts"]:
        lines.append(Text(""))
        for host in plan["hosts"]:
            lines += paragraph(
                f"{host['name']}: {host['free_before_bytes'] // MIB:,} MiB free before, "
                f"{host['free_after_bytes'] // MIB:,} MiB after {host['incoming']} move(s) "
                f"(usable {host['usable_bytes'] // MIB:,} MiB)",
                width,
                "  ",
            )
    for left in unplaced:
        lines.append(Text(""))
        lines += _refusal(left["vm"], left["reason"], [h["name"] for h in plan["hosts"]], width)
    return lines


def balance_plan_lines(plan: dict[str, Any], width: int) -> list[Text]:
    """The verdict (the imbalance before and after), each host's load, one line per move,
    then the VMs left alone and why."""
    lines = paragraph(
        f"imbalance {plan['imbalance_before']:.3f} -> {plan['imbalance_after']:.3f} "
        f"(threshold {plan['threshold']:g}): "
        + (f"{len(plan['moves'])} move(s)" if plan["moves"] else f"no move: {plan['reason']}"),
        width,
    )
    loads = Grid(
        [
            Column("HOST"),
            Column("LOAD", right=True),
            Column("AFTER", right=True),
            Column("CPU SHARE", right=True),
            Column("MEMORY SHARE", right=True),
        ]
    )
    after = {h["name"]: h for h in plan["hosts_after"]}
    for host in plan["hosts_before"]:
        later = after.get(host["name"], host)
        loads.add(
            host["name"],
            f"{host['load']:.2f}",
            f"{later['load']:.2f}",
            f"{host['cpu_share']:.2f} -> {later['cpu_share']:.2f}",
            f"{host['memory_share']:.2f} -> {later['memory_share']:.2f}",
        )
    lines.append(Text(""))
    lines += loads.lines(width)
    if plan["moves"]:
        moves = Grid(
            [
                Column("VM", line_break_after=True),
                Column("FROM"),
                Column("TO"),
                Column("GAIN", right=True, drop_order=3),
                Column("SCORE", right=True, drop_order=2),
                Column("TAKES", right=True),
                Column("SENDS", right=True, drop_order=1),
                Column("DOWNTIME", right=True),
            ],
            free=Column("WHY"),
            free_wraps=True,
            min_free=30,
        )
        for move in plan["moves"]:
            moves.add(
                move["vm"],
                move["source"],
                move["destination"],
                f"{move['gain']:.3f}",
                f"{move['score']:.3f}",
                _seconds(move["predicted_s"]),
                f"{move['predicted_bytes'] / MIB:,.0f} MiB",
                _downtime(move["predicted_downtime_ms"], "-"),
                free=move["reason"],
            )
        lines.append(Text(""))
        lines += moves.lines(width)
        lines += paragraph(f"then: {plan['reason']}", width, "  ")
    skipped = plan.get("skipped", [])
    if skipped:
        lines.append(Text(""))
        lines.append(Text("left alone", style="bold"))
        for vm in skipped:
            lines += paragraph(f"{vm['name']}: {vm['reason']}", width, "  ")
    return lines


@dataclass(frozen=True)
class PlanView:
    """A fleet plan laid out at the width of the console that prints it."""

    plan: dict[str, Any]
    balance: bool = False

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Segment]:
        width = options.max_width
        lines = (
            balance_plan_lines(self.plan, width)
            if self.balance
            else evacuation_plan_lines(self.plan, width)
        )
        yield from rendered(console, lines)
