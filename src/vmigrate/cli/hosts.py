"""`vmigrate hosts`: the inventory, every host's facts gathered at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from vmigrate.capacity import MIB, host_budget
from vmigrate.cli.layout import print_lines
from vmigrate.cli.options import json_option, store_option
from vmigrate.cli.render_hosts import hosts_lines
from vmigrate.errors import VmigrateError
from vmigrate.fleet.gather import close_sessions, open_sessions
from vmigrate.hosts import cluster_of, known_hosts, resolve_cluster
from vmigrate.preflight import HostSession
from vmigrate.store import JobStore, StoreLocation
from vmigrate.versions import format_version
from vmigrate.virt.lease import leases_on

console = Console(highlight=False)


def host_row(session: HostSession, cluster: str | None, maintenance: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": session.ref.name,
        "uri": session.ref.uri,
        "cluster": cluster,
        "reachable": session.facts is not None,
        "problem": session.error,
        "maintenance": maintenance,
    }
    facts = session.facts
    if facts is None:
        return row
    budget = host_budget(facts)
    row.update(
        {
            "libvirt": format_version(facts.libvirt_version),
            "qemu": format_version(facts.hypervisor_version),
            "cpu_model": facts.cpu_model,
            "cpus": facts.cpus,
            "capacity_mib": budget.capacity_bytes // MIB,
            "declared_mib": budget.declared_bytes // MIB if budget.declared_bytes else None,
            "reserve_mib": budget.reserve_bytes // MIB,
            "used_mib": budget.placed_bytes // MIB,
            "free_mib": budget.free_bytes // MIB,
            "vcpus": budget.vcpus_declared,
            "vcpus_used": budget.vcpus_placed,
            "vms": [{"name": g.name, "state": g.state} for g in facts.guests],
            "leases": _leases(session),
        }
    )
    return row


def _leases(session: HostSession) -> list[dict[str, Any]] | str:
    """The leases on the host's VMs, or why they could not be read."""
    if session.conn is None:
        return []
    try:
        return [found.to_dict() for found in leases_on(session.conn, session.ref.name)]
    except VmigrateError as err:
        return f"not read: {err.message}"


@click.command("hosts")
@click.option("--cluster", help="Only this cluster's hosts.")
@click.option(
    "--hosts",
    "hosts_file",
    type=click.Path(path_type=Path),
    help="Hosts file [default: ~/.config/vmigrate/hosts.toml].",
)
@store_option
@json_option
def hosts(
    cluster: str | None, hosts_file: Path | None, store_path: StoreLocation | None, as_json: bool
) -> None:
    """Every host: reachable or why not, versions, CPU, capacity, used, free, its VMs, the
    leases vmigrate jobs hold on them, and whether it is in maintenance. Exit 1 when a host
    does not answer."""
    refs = resolve_cluster(cluster, hosts_file) if cluster else known_hosts(hosts_file)
    with JobStore(store_path) as store:
        maintenance = store.maintenance()
    sessions = open_sessions(refs)
    try:
        rows = [
            host_row(
                sessions[ref.name],
                cluster or cluster_of(ref, hosts_file),
                maintenance[ref.uri].reason if ref.uri in maintenance else None,
            )
            for ref in refs
        ]
    finally:
        close_sessions(sessions)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        print_lines(console, hosts_lines(rows, console.width))
    if not all(row["reachable"] for row in rows):
        raise SystemExit(1)
