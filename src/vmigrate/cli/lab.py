"""`vmigrate lab ...`: the local lab of two to four libvirt hosts."""

from __future__ import annotations

import json
import time

import click
from rich.console import Console
from rich.table import Table

from vmigrate.cli.layout import print_lines
from vmigrate.cli.render_lab import lab_status_lines
from vmigrate.lab import link as lab_link
from vmigrate.lab.config import LAB_HOSTS, MAX_HOST_COUNT, MIN_HOST_COUNT
from vmigrate.lab.heartbeat import HeartbeatReport, heartbeat_report
from vmigrate.lab.host_upgrade import upgrade_host
from vmigrate.lab.lifecycle import (
    HostStatus,
    hosts_beyond,
    lab_down,
    lab_status,
    lab_up,
    require_root,
)
from vmigrate.lab.releases import RELEASES
from vmigrate.lab.storage.servers import StorageStatus, parse_backends, storage_status
from vmigrate.lab.vms import DISK_KINDS, LabVmRequest, check_vm_name, create_vm, remove_vm, set_rate

console = Console(highlight=False)


def _vm_name(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """Every lab command taking a VM name refuses an invalid one before doing anything."""
    return check_vm_name(value)


#: The NAME argument of every lab command that takes a VM.
vm_name_argument = click.argument("name", callback=_vm_name)


def _print_json(value: object) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def _host_dict(host: HostStatus) -> dict[str, object]:
    return {
        "name": host.name,
        "uri": host.uri,
        "uris": host.uris,
        "address": host.address,
        "capacity_mib": host.capacity_mib,
        "vcpus": host.vcpus,
        "running": host.running,
        "pid": host.pid,
        "hostname": host.hostname,
        "release": host.release,
        "libvirt_version": host.libvirt_version,
        "qemu_version": host.qemu_version,
        "accelerator": host.accelerator,
        "vms": [
            {"name": vm.name, "state": vm.state, "persistent": vm.persistent} for vm in host.vms
        ],
        "problem": host.problem or None,
    }


def _print_uris(hosts: list[HostStatus]) -> None:
    """The full URIs, each usable as is (`virsh -c URI`); tls is the lab's default."""
    for host in hosts:
        if host.running:
            for transport, uri in host.uris.items():
                label = f"  {host.name} {transport}:"
                # A URI is copied whole: on a line of its own when it does not fit beside.
                fits = len(label) + 1 + len(uri) <= console.width
                console.print(f"{label} {uri}" if fits else f"{label}\n    {uri}", soft_wrap=True)
    if any(h.running and "tcp" in h.uris for h in hosts):
        console.print(
            "[bold red]UNENCRYPTED:[/] plain TCP is open (--insecure-tcp): any local user "
            "controls these hosts as root through it"
        )


def _storage_table(servers: list[StorageStatus]) -> Table:
    table = Table(title="lab storage")
    for column in ("backend", "server", "address", "health", "started in", "memory"):
        # An address is copied from here: never cut it (the server's name wraps instead).
        table.add_column(column, no_wrap=column in ("address", "health"))
    for server in servers:
        health = (
            server.health
            if server.health in ("HEALTH_OK", "serving")
            else (f"[red]{server.health}[/]")
        )
        table.add_row(
            server.backend,
            server.server,
            f"{server.address}:{server.port}",
            health,
            f"{server.start_seconds:.1f} s",
            f"{server.rss_mib} MiB",
        )
    return table


def _storage_dict(server: StorageStatus) -> dict[str, object]:
    return {
        "backend": server.backend,
        "server": server.server,
        "address": server.address,
        "port": server.port,
        "running": server.running,
        "health": server.health,
        "start_seconds": server.start_seconds,
        "rss_mib": server.rss_mib,
    }


def _print_storage() -> None:
    servers = storage_status()
    if servers:
        console.print(_storage_table(servers))


def _shaped_hosts(current: lab_link.LinkStatus) -> str:
    return ", ".join(current.hosts) or "no host"


@click.group()
def lab() -> None:
    """The local lab: two to four libvirt hosts (hostA..hostD) on this machine."""


@lab.command()
@click.option(
    "--hosts",
    "count",
    type=click.IntRange(MIN_HOST_COUNT, MAX_HOST_COUNT),
    default=None,
    help=f"Run the first N hosts ({MIN_HOST_COUNT}-{MAX_HOST_COUNT}: "
    + ", ".join(f"{h.name} on {h.address}" for h in LAB_HOSTS)
    + "), starting those not running; hosts beyond N keep running. "
    "[default: the hosts running now, or 2]",
)
@click.option(
    "--insecure-tcp",
    is_flag=True,
    default=None,
    help="Also serve plain, unauthenticated qemu+tcp on port 16509 (any local user then "
    "controls the hosts). Chosen when the lab starts. [default: TLS and SSH only]",
)
@click.option(
    "--storage",
    "storage",
    default="",
    metavar="BACKENDS",
    help="Also run shared storage servers: a comma-separated subset of iscsi,rbd,nfs "
    "(tgt, a one-node Ceph, NFS-Ganesha) with pools for them on every host.",
)
@click.option(
    "--version",
    "versions",
    multiple=True,
    metavar="HOST=RELEASE",
    help="Run a host's libvirt and QEMU from another release's packages, in a root file "
    f"system of its own (built once, cached): {', '.join(sorted(RELEASES))}, e.g. "
    "--version hostC=bookworm (Debian 12: libvirt 9.0, QEMU 7.2). Repeatable.",
)
def up(
    count: int | None, insecure_tcp: bool | None, storage: str, versions: tuple[str, ...]
) -> None:
    """Start the lab hosts (idempotent); returns when they answer.

    Each host serves qemu+tls (the default: a lab CA, client certificates required) and
    qemu+ssh (its own sshd, keys only, host keys pinned)."""
    started = time.monotonic()
    backends = parse_backends(storage)
    hosts = lab_up(count, insecure_tcp=insecure_tcp, storage=backends, versions=versions)
    print_lines(console, lab_status_lines([_host_dict(h) for h in hosts], console.width))
    _print_uris(hosts)
    _print_storage()
    beyond = hosts_beyond(count, hosts)
    if beyond:
        console.print(
            f"{', '.join(beyond)} keep{'s' if len(beyond) == 1 else ''} running "
            f"(beyond --hosts {count}); `vmigrate lab down` stops every host"
        )
    console.print(f"lab is up ({time.monotonic() - started:.1f} s)")


@lab.command()
def down() -> None:
    """Stop everything the lab started: VMs, daemons, collectors, link shaping."""
    report = lab_down()
    console.print(
        f"lab is down: stopped {', '.join(report.stopped_hosts) or 'no hosts'}, "
        f"{report.stopped_collectors} heartbeat collector(s)"
        + (", removed link shaping" if report.link_reset else "")
        + (f"; had to kill {len(report.killed_pids)} process(es)" if report.killed_pids else "")
    )


@lab.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(as_json: bool) -> None:
    """Each host: declared capacity, daemon, versions, accelerator and VMs."""
    hosts = lab_status()
    if as_json:
        _print_json(
            {
                "hosts": [_host_dict(h) for h in hosts],
                "link": lab_link.status().to_dict(),
                "storage": [_storage_dict(s) for s in storage_status()],
            }
        )
        return
    print_lines(console, lab_status_lines([_host_dict(h) for h in hosts], console.width))
    _print_uris(hosts)
    _print_storage()
    shaped = lab_link.status()
    if shaped.shaped:
        console.print(
            f"hostA's uplink shaped: {shaped.rate} to {_shaped_hosts(shaped)}"
            + (f", delay {shaped.delay}" if shaped.delay else "")
        )


@lab.group("host")
def host_group() -> None:
    """One lab host: its packages."""


@host_group.command("upgrade")
@click.argument("name")
def host_upgrade(name: str) -> None:
    """Restart a host on the machine's own (newer) libvirt and QEMU, as a package upgrade
    would; refused while VMs still run there."""
    report = upgrade_host(name)
    if not report.upgraded:
        console.print(
            f"{report.host} already runs the machine's own packages (libvirt "
            f"{report.libvirt_version}, QEMU {report.qemu_version}): nothing to upgrade"
        )
        return
    console.print(
        f"{report.host} upgraded from {report.from_release} to the machine's packages: "
        f"libvirt {report.libvirt_version}, QEMU {report.qemu_version} ({report.seconds:.1f} s)"
    )


@lab.group()
def vm() -> None:
    """Lab guests: a Debian kernel with a workload that dirties memory and beats every 10 ms."""


@vm.command("create")
@vm_name_argument
@click.option(
    "--host",
    default="A",
    show_default=True,
    help="A, B, C or D (C and D need `vmigrate lab up --hosts 3` or `--hosts 4`).",
)
@click.option(
    "--memory",
    "memory_mib",
    type=int,
    default=512,
    show_default=True,
    help="Guest memory in MiB (128 up to what the machine holds).",
)
@click.option(
    "--working-set",
    "working_set_mib",
    type=int,
    default=None,
    help="MiB the workload keeps and dirties [default: memory - 128, at most what the guest's "
    "kernel leaves: 3808 of 4096].",
)
@click.option(
    "--dirty-rate",
    "dirty_rate_mib",
    type=int,
    default=0,
    show_default=True,
    help="MiB/s the workload dirties.",
)
@click.option(
    "--disk",
    type=click.Choice(list(DISK_KINDS)),
    default="none",
    show_default=True,
    help="A disk in the shared pool or the host's local pool, or on one of the lab's storage "
    "servers (iscsi, rbd, nfs: `vmigrate lab up --storage ...` first).",
)
@click.option(
    "--disk-format",
    type=click.Choice(["qcow2", "raw"]),
    default=None,
    help="[default: qcow2; raw on iscsi and rbd]",
)
@click.option(
    "--disk-size", "disk_size_gib", type=float, default=1.0, show_default=True, help="GiB."
)
@click.option(
    "--disk-backing",
    is_flag=True,
    help="Put the qcow2 disk on a raw backing file (which holds data of its own).",
)
@click.option(
    "--ignore-acpi",
    is_flag=True,
    help="The guest ignores the ACPI power button (to test forced power-off).",
)
def vm_create(
    name: str,
    host: str,
    memory_mib: int,
    working_set_mib: int | None,
    dirty_rate_mib: int,
    disk: str,
    disk_format: str | None,
    disk_size_gib: float,
    disk_backing: bool,
    ignore_acpi: bool,
) -> None:
    """Create and start a lab VM; returns once it beats."""
    created = create_vm(
        LabVmRequest(
            name,
            host,
            memory_mib,
            working_set_mib,
            dirty_rate_mib,
            disk,
            disk_format,
            disk_size_gib,
            disk_backing=disk_backing,
            acpi=not ignore_acpi,
        )
    )
    console.print(
        f"{created.name} runs on {created.host}: {created.memory_mib} MiB, working set "
        f"{created.working_set_mib} MiB, dirtying {created.dirty_rate_mib} MiB/s"
        + (f", disk {created.disk_path}" if created.disk_path else "")
        + f"; first heartbeat after {created.boot_seconds:.1f} s"
    )


@vm.command("set-rate")
@vm_name_argument
@click.argument("rate", type=int)
def vm_set_rate(name: str, rate: int) -> None:
    """Change how many MiB/s the guest dirties, while it runs."""
    set_rate(name, rate)
    console.print(f"{name} now dirties {rate} MiB/s")


@vm.command("rm")
@vm_name_argument
def vm_rm(name: str) -> None:
    """Destroy a lab VM on every host and delete its lab disks."""
    hosts = remove_vm(name)
    console.print(f"removed {name}" + (f" from {', '.join(hosts)}" if hosts else ""))


def render_heartbeat(report: HeartbeatReport) -> str:
    if not report.beats:
        return f"{report.vm}: no heartbeat received yet"
    hosts = ", ".join(f"{h} last #{seq}" for h, seq in report.last_seq_by_host.items())
    verdict = "contiguous" if report.contiguous else "NOT contiguous: " + "; ".join(report.problems)
    gap = f"largest gap {report.largest_gap_ms:.0f} ms"
    if report.largest_gap_hosts:
        gap += (
            f" after #{report.largest_gap_after_seq} "
            f"({report.largest_gap_hosts[0]} -> {report.largest_gap_hosts[1]})"
        )
    return (
        f"{report.vm}: {report.beats} beats #{report.first_seq}..#{report.last_seq}, "
        f"{verdict}; {gap}; {hosts}"
    )


@lab.command()
@vm_name_argument
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def heartbeat(name: str, as_json: bool) -> None:
    """Guest-observed downtime: largest gap between beats, and whether none was lost."""
    report = heartbeat_report(name)
    if as_json:
        _print_json(report.to_dict())
    else:
        console.print(render_heartbeat(report))


@lab.command()
@click.option(
    "--rate", help="Limit hostA's uplink (to every other lab host), e.g. 1gbit or 100mbit."
)
@click.option("--delay", help="Add latency, e.g. 5ms (needs netem in the kernel).")
@click.option("--reset", is_flag=True, help="Remove the limit.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def link(rate: str | None, delay: str | None, reset: bool, as_json: bool) -> None:
    """Emulate hostA's uplink (tc on lo), or show its state and byte counter.

    One rate for all traffic to the other running lab hosts (hostB, and hostC and hostD when
    they run), as parallel moves out of hostA share one NIC; traffic to hostA is not shaped."""
    if reset and (rate or delay):
        raise click.UsageError("--reset cannot be combined with --rate or --delay")
    if delay and not rate:
        raise click.UsageError("--delay needs --rate")
    if rate or reset:
        require_root()
    if reset:
        lab_link.reset()
    elif rate:
        lab_link.shape(rate, delay)
    current = lab_link.status()
    if as_json:
        _print_json(current.to_dict())
    elif current.shaped:
        console.print(
            f"hostA's uplink (traffic to {_shaped_hosts(current)}) limited to {current.rate}"
            + (f" with {current.delay} delay" if current.delay else "")
            + f"; {current.bytes_shaped} bytes sent through the limit"
        )
    else:
        console.print("traffic between the lab hosts is not shaped")
