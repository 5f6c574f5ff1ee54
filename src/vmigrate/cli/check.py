"""`vmigrate check`: will the move work, and if not, why and how to fix it."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console

from vmigrate.cli.host_names import HostNames
from vmigrate.cli.options import json_option, policy_config, vm_and_hosts
from vmigrate.cli.render_findings import FindingsView
from vmigrate.encryption import migration_tls
from vmigrate.hosts import resolve_host
from vmigrate.live.policy import DEFAULT_POLICY, PRESETS
from vmigrate.migration_features import FeatureUse, features_used
from vmigrate.model import CheckReport, Mode
from vmigrate.preflight import run_checks

console = Console(highlight=False)


def render_report(
    report: CheckReport, *, verbose: bool = False, hosts_file: Path | None = None
) -> FindingsView:
    """The report laid out at the printing console's width: the verdict first, one line
    per check, the evidence and fix of warnings and failures (`verbose`: of every check)."""
    return FindingsView(report, verbose=verbose, names=HostNames.from_hosts_file(hosts_file))


@click.command("check")
@vm_and_hosts
@click.option(
    "--mode", type=click.Choice([m.value for m in Mode]), default="live", show_default=True
)
@click.option("--copy-storage", is_flag=True, help="Local disks will be copied (live).")
@click.option(
    "--tls/--no-tls",
    default=None,
    help="The move will (or will not) use QEMU TLS for the stream. [default: as `live` decides]",
)
@click.option(
    "--policy",
    type=click.Choice(sorted(PRESETS)),
    default=DEFAULT_POLICY,
    show_default=True,
    help="The policy the live move will run (post-copy or not).",
)
@click.option("--parallel", type=click.IntRange(min=1), help="The move will use multifd.")
@click.option("--compress", is_flag=True, help="The move will compress memory pages.")
@click.option("--verbose", "-v", is_flag=True, help="Every check's evidence, in full.")
@json_option
def check(
    vm: str,
    source: str,
    destination: str,
    mode: str,
    copy_storage: bool,
    tls: bool | None,
    policy: str,
    parallel: int | None,
    compress: bool,
    hosts_file: Path | None,
    verbose: bool,
    as_json: bool,
) -> None:
    """Say, before anything moves, whether VM can move from --from to --to, and why not.

    Exit status: 0 nothing failed, 1 something failed, 2 usage error.
    """
    report = run_checks(
        vm,
        source,
        destination,
        mode=Mode(mode),
        copy_storage=copy_storage,
        hosts_file=hosts_file,
        tls=tls,
        features=_features(source, destination, hosts_file, tls, policy, parallel, compress),
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        console.print(render_report(report, verbose=verbose, hosts_file=hosts_file))
    if report.failed:
        raise SystemExit(1)


def _features(
    source: str,
    destination: str,
    hosts_file: Path | None,
    tls: bool | None,
    policy: str,
    parallel: int | None,
    compress: bool,
) -> FeatureUse:
    """The migration features `live` with these options would use (as live resolves them:
    parallel connections take post-copy off the policy)."""
    config = policy_config(policy, None, None, False if parallel else None)
    return features_used(
        postcopy=config.postcopy_allowed,
        autoconverge=config.autoconverge_at_start,
        parallel=bool(parallel),
        compressed=compress,
        tls=migration_tls(
            tls, resolve_host(source, hosts_file), resolve_host(destination, hosts_file)
        ),
    )
