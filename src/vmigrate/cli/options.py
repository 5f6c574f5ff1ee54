"""Options every command that moves or checks a VM shares, declared once."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from vmigrate.live.policy import DEFAULT_POLICY, PRESETS, PolicyConfig
from vmigrate.store import store_location

F = TypeVar("F", bound=Callable[..., Any])


def vm_and_hosts(command: F) -> F:
    """VM, --from, --to and --hosts, in that order on the command line."""
    for decorator in reversed(
        (
            click.argument("vm"),
            click.option(
                "--from",
                "source",
                required=True,
                help="Source host: a libvirt URI or a name from the hosts file.",
            ),
            click.option(
                "--to",
                "destination",
                required=True,
                help="Destination host: a libvirt URI or a name from the hosts file.",
            ),
            click.option(
                "--hosts",
                "hosts_file",
                type=click.Path(path_type=Path),
                help="Hosts file [default: ~/.config/vmigrate/hosts.toml].",
            ),
        )
    ):
        command = decorator(command)
    return command


def store_option(command: F) -> F:
    return click.option(
        "--store",
        "store_path",
        callback=lambda _ctx, _param, value: store_location(value),
        help="Job store: a SQLite file or a postgresql:// URL "
        "[default: ~/.local/state/vmigrate/jobs.sqlite].",
    )(command)


def trust_checks_option(command: F) -> F:
    """A fleet move's child (live or cold) checks again only what can have changed."""
    return click.option(
        "--trust-checks",
        "trust_checks",
        type=click.Path(path_type=Path, dir_okay=False),
        hidden=True,  # written by a fleet job for the moves it starts
        help="A private file of a fleet job's checks of this move: only what can have changed "
        "since (the VM's state, the destination's memory) is checked again.",
    )(command)


def json_option(command: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(command)


#: Ctrl-C and SIGTERM: what stops a command that moves VMs at a clean point.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def interrupt_on(*signums: int) -> None:
    """Make these signals raise KeyboardInterrupt, even where a parent shell started us with
    SIGINT ignored: the library turns the interrupt into a clean stop (an abort, a cancel)."""
    for signum in signums:
        signal.signal(signum, signal.default_int_handler)


def _positive(_ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise click.BadParameter(f"{value:g} is impossible: it must be positive", param=param)
    return value


def policy_options(command: F) -> F:
    """How `live` steers a migration, shared by `live` and `estimate` so that an estimate
    simulates exactly the policy `live` will run (defaults in live/policy.py's PRESETS)."""
    for decorator in reversed(
        (
            click.option(
                "--policy",
                type=click.Choice(sorted(PRESETS)),
                default=DEFAULT_POLICY,
                show_default=True,
                help="fast: post-copy when needed; safe: never post-copy, "
                "throttle instead; strict: short pause or abort.",
            ),
            click.option(
                "--max-downtime",
                type=int,
                callback=_positive,
                help="Never pause the guest longer (ms). [default: the policy's]",
            ),
            click.option(
                "--timeout",
                type=float,
                callback=_positive,
                help="Then post-copy (if allowed) or abort (s).",
            ),
            click.option(
                "--allow-postcopy/--no-postcopy", default=None, help="Override the policy."
            ),
        )
    ):
        command = decorator(command)
    return command


def stream_options(command: F) -> F:
    """How the migration stream is sent: limit, connections, compression, TLS."""
    for decorator in reversed(
        (
            click.option(
                "--bandwidth",
                type=int,
                callback=_positive,
                help="Limit the migration stream (MiB/s).",
            ),
            click.option(
                "--parallel",
                type=int,
                callback=_positive,
                help="Parallel connections (multifd).",
            ),
            click.option("--compress", is_flag=True, help="Compress memory pages."),
            click.option(
                "--tls/--no-tls",
                default=None,
                help="Encrypt the migration stream with QEMU's TLS, or refuse to. [default: TLS "
                "when both hosts have QEMU TLS credentials (migration_tls in the hosts file; "
                "the lab's hosts do)]",
            ),
        )
    ):
        command = decorator(command)
    return command


def policy_config(
    policy: str, max_downtime: int | None, timeout: float | None, allow_postcopy: bool | None
) -> PolicyConfig:
    """The policy `live` runs for these options (and `estimate` simulates)."""
    return PRESETS[policy].with_limits(
        max_downtime_ms=max_downtime, timeout_s=timeout, postcopy=allow_postcopy
    )


def hosts_file_option(command: F) -> F:
    return click.option(
        "--hosts",
        "hosts_file",
        type=click.Path(path_type=Path),
        help="Hosts file [default: ~/.config/vmigrate/hosts.toml].",
    )(command)


def bandwidth_option(command: F) -> F:
    """The link a fleet command's moves share, as its planner assumes it."""
    return click.option(
        "--bandwidth", type=float, help="MiB/s of the link the moves share (else measured)."
    )(command)


def fleet_limits_options(max_parallel: int, max_per_host: int) -> Callable[[F], F]:
    """How many moves a fleet command (evacuate, rolling) runs at once, in all and per host.
    The defaults come from the caller (fleet.plan's), so that the commands that import this
    module without planning anything (a move's child) do not import the planner."""

    def decorate(command: F) -> F:
        for decorator in reversed(
            (
                click.option(
                    "--max-parallel",
                    type=int,
                    default=max_parallel,
                    show_default=True,
                    help="Moves at once, in all.",
                ),
                click.option(
                    "--max-per-host",
                    type=int,
                    default=max_per_host,
                    show_default=True,
                    help="Moves at once out of or into any one host.",
                ),
            )
        ):
            command = decorator(command)
        return command

    return decorate


def dry_run_option(shows: str) -> Callable[[F], F]:
    """--dry-run, saying what this command prints instead of acting."""

    def decorate(command: F) -> F:
        return click.option("--dry-run", is_flag=True, help=f"{shows}; change nothing.")(command)

    return decorate
