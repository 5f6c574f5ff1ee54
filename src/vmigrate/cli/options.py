"""Options every command that moves or checks a VM shares, declared once."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

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


def json_option(command: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(command)


#: Ctrl-C and SIGTERM: what stops a command that moves VMs at a clean point.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def interrupt_on(*signums: int) -> None:
    """Make these signals raise KeyboardInterrupt, even where a parent shell started us with
    SIGINT ignored: the library turns the interrupt into a clean stop (an abort, a cancel)."""
    for signum in signums:
        signal.signal(signum, signal.default_int_handler)
