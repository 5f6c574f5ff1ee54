"""`vmigrate lab status` laid out for a terminal: one line per host, its VMs wrapped whole,
problems in full below."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from vmigrate.cli.layout import NO_BREAK, Cell, Column, Grid, paragraph


def vm_list(vms: list[dict[str, Any]]) -> str:
    """`name (state), ...`, each entry unbreakable."""
    return ", ".join(f"{vm['name']}{NO_BREAK}({vm['state']})" for vm in vms) or "-"


def _with_release(version: str, release: str) -> str:
    """A host on another release's packages says which (`9.0.0 (bookworm)`)."""
    if not version:
        return "-"
    return version if release in ("", "system") else f"{version}{NO_BREAK}({release})"


def lab_status_lines(hosts: list[dict[str, Any]], width: int) -> list[Text]:
    """Each host as `lab status --json` gives it: address, transports, declared capacity,
    daemon, versions, accelerator, then its VMs."""
    grid = Grid(
        [
            Column("HOST"),
            Column("ADDRESS"),
            Column("SERVES", drop_order=3),
            Column("CAPACITY", drop_order=4),
            Column("DAEMON"),
            Column("LIBVIRT", drop_order=2),
            Column("QEMU", drop_order=1),
            Column("ACCEL"),
        ],
        free=Column("VMS"),
        free_wraps=True,
    )
    for host in hosts:
        daemon = Cell(f"pid {host['pid']}") if host["running"] else Cell("stopped", "red")
        grid.add(
            host["name"],
            host["address"],
            ", ".join(host["uris"]) or "-",
            f"{host['capacity_mib']} MiB, {host['vcpus']} vCPUs",
            daemon,
            _with_release(host["libvirt_version"], host.get("release", "")),
            host["qemu_version"] or "-",
            host["accelerator"] or "-",
            free=vm_list(host["vms"]),
        )
    lines = [Text("vmigrate lab", style="bold"), *grid.lines(width)]
    for host in hosts:
        if host.get("problem"):
            lines += paragraph(f"{host['name']}: {host['problem']}", width, "  ", style="red")
    return lines
