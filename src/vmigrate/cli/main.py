"""The `vmigrate` command. Commands are thin: they call the library and render its values."""

from __future__ import annotations

import logging
import shlex
import sys
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from vmigrate import __version__
from vmigrate.cli.crash import UNEXPECTED_EXIT, describe_unexpected
from vmigrate.errors import VmigrateError
from vmigrate.store import record_unexpected_failure

err_console = Console(stderr=True, highlight=False)


class VmigrateGroup(click.Group):
    """Turns expected failures into a clear message and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VmigrateError as err:
            err_console.print(
                f"[bold red]error:[/] {escape(str(err))}", markup=True, soft_wrap=True
            )
            ctx.exit(err.exit_code)
        except KeyboardInterrupt:
            err_console.print("interrupted")
            ctx.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as err:  # a bug, or a failure nobody translated: still no traceback
            command = shlex.join(sys.argv[1:]) or ctx.invoked_subcommand or ""
            err_console.print(
                f"[bold red]error:[/] {escape(describe_unexpected(err, command))}",
                markup=True,
                soft_wrap=True,
            )
            record_unexpected_failure(f"{type(err).__name__}: {err}")
            ctx.exit(UNEXPECTED_EXIT)


@click.group(cls=VmigrateGroup)
@click.version_option(__version__, prog_name="vmigrate")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Move KVM virtual machines between libvirt hosts, live or cold."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _register() -> None:
    from vmigrate.cli.balance import balance
    from vmigrate.cli.check import check
    from vmigrate.cli.cold import cold
    from vmigrate.cli.estimate import estimate
    from vmigrate.cli.evacuate import evacuate_command, maintenance
    from vmigrate.cli.hosts import hosts
    from vmigrate.cli.jobs import jobs
    from vmigrate.cli.lab import lab
    from vmigrate.cli.live import live
    from vmigrate.cli.recover import recover
    from vmigrate.cli.rolling import rolling_command
    from vmigrate.cli.serve import serve
    from vmigrate.lab.plugin import install as install_lab

    # The product imports no lab: the CLI plugs the lab's host names (hostA.., cluster `lab`)
    # and its heartbeat (guest gaps in move reports) in.
    install_lab()
    cli.add_command(check)
    cli.add_command(live)
    cli.add_command(cold)
    cli.add_command(estimate)
    cli.add_command(recover)
    cli.add_command(hosts)
    cli.add_command(evacuate_command)
    cli.add_command(maintenance)
    cli.add_command(balance)
    cli.add_command(rolling_command)
    cli.add_command(jobs)
    cli.add_command(lab)
    cli.add_command(serve)


_register()


def main() -> None:
    cli(prog_name="vmigrate")


if __name__ == "__main__":
    main()
