"""The CLI's last resort: an exception nobody expected prints one clear line and exits
non-zero; the traceback goes to a private crash report, never to the terminal."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from vmigrate.cli.crash import UNEXPECTED_EXIT
from vmigrate.cli.main import cli
from vmigrate.errors import HostError


@pytest.fixture
def failing_command() -> Iterator[str]:
    @click.command("explode")
    @click.option("--kind", default="bug")
    def explode(kind: str) -> None:
        if kind == "expected":
            raise HostError("libvirt refused", host="hostB", vm="web[1]", fix="retry")
        raise KeyError("memory_processed")

    cli.add_command(explode)
    yield "explode"
    cli.commands.pop("explode")


def test_an_unexpected_exception_is_one_line_and_a_private_crash_report(
    failing_command: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        cli, [failing_command], env={"XDG_STATE_HOME": str(tmp_path)}, catch_exceptions=False
    )
    assert result.exit_code == UNEXPECTED_EXIT
    assert "Traceback" not in result.output
    assert "unexpected failure in `vmigrate" in result.output
    assert "KeyError: 'memory_processed'" in result.output
    reports = list((tmp_path / "vmigrate").glob("crash-*.txt"))
    assert len(reports) == 1
    assert stat.S_IMODE(reports[0].stat().st_mode) == 0o600
    assert "Traceback" in reports[0].read_text()


def test_an_expected_failure_prints_as_written(failing_command: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [failing_command, "--kind", "expected"],
        env={"XDG_STATE_HOME": str(tmp_path)},
        catch_exceptions=False,
    )
    assert result.exit_code == 1
    # Brackets in names are text, not console markup.
    assert "host hostB, VM web[1]: libvirt refused" in result.output
    assert "what to do: retry" in result.output
    assert not list(tmp_path.glob("vmigrate/crash-*"))
