"""`vmigrate hosts` laid out for a terminal: one line per host, its VMs wrapped whole, what
needs attention (a host that does not answer, a maintenance mark) in full below."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from vmigrate.cli.layout import Cell, Column, Grid, paragraph
from vmigrate.cli.leases import describe_found
from vmigrate.cli.render_lab import vm_list


def _state(row: dict[str, Any]) -> Cell:
    if not row["reachable"]:
        return Cell("unreachable", "red")
    if row["maintenance"]:
        return Cell("maintenance", "yellow")
    return Cell("ok", "green")


def _memory(row: dict[str, Any]) -> str:
    if not row["reachable"]:
        return "-"
    return f"{row['used_mib']:,} / {row['free_mib']:,} / {row['capacity_mib']:,}"


def hosts_lines(rows: list[dict[str, Any]], width: int) -> list[Text]:
    """Each host as `vmigrate hosts --json` gives it."""
    grid = Grid(
        [
            Column("HOST"),
            Column("CLUSTER", drop_order=3),
            Column("STATE"),
            Column("LIBVIRT/QEMU", drop_order=1),
            Column("CPU", drop_order=2),
            Column("MiB USED / FREE / OF", right=True),
        ],
        free=Column("VMS"),
        free_wraps=True,
    )
    for row in rows:
        reachable = row["reachable"]
        grid.add(
            row["name"],
            row["cluster"] or "-",
            _state(row),
            f"{row['libvirt']}/{row['qemu']}" if reachable else "-",
            f"{row['cpu_model']} x{row['cpus']}" if reachable else "-",
            _memory(row),
            free=vm_list(row.get("vms", [])) if reachable else "",
        )
    lines = grid.lines(width)
    for row in rows:
        if not row["reachable"]:
            lines += paragraph(f"{row['name']} does not answer: {row['problem']}", width, "  ")
        elif row["maintenance"]:
            lines += paragraph(
                f"{row['name']} is in maintenance: {row['maintenance']}", width, "  "
            )
    for row in rows:  # the leases vmigrate jobs hold on the host's VMs, one line each
        leases = row.get("leases") if row["reachable"] else None
        if isinstance(leases, str):
            lines += paragraph(f"{row['name']}: leases unreadable ({leases})", width, "  ")
        for found in leases if isinstance(leases, list) else []:
            lines += paragraph(f"{row['name']} lease: {describe_found(found)}", width, "  ")
    return lines
