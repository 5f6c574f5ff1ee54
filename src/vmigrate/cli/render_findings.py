"""Findings as an operator reads them: the verdict first, one line per check, the evidence
and the fix in full only for what needs attention (`--verbose`: for every check)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from rich.console import Console, ConsoleOptions
from rich.segment import Segment
from rich.text import Text

from vmigrate.cli.host_names import HostNames
from vmigrate.cli.layout import INDENT, Cell, Column, Grid, paragraph
from vmigrate.model import CheckReport, Finding, Verdict

STYLE = {
    Verdict.PASS: "green",
    Verdict.WARN: "yellow",
    Verdict.FAIL: "bold red",
    Verdict.SKIPPED: "dim",
}
NEEDS_ATTENTION = (Verdict.FAIL, Verdict.WARN)


def report_from_dict(data: dict[str, Any]) -> CheckReport:
    """A report back from its `to_dict` (the `checks` event of `live` and `cold`)."""
    return CheckReport.from_dict(data)


def _name(finding: Finding) -> str:
    # The subject (a disk, a NIC) tells apart the findings of one check; most summaries
    # start with it already.
    if finding.subject and not finding.summary.startswith(finding.subject):
        return f"{finding.check} {finding.subject}"
    return finding.check


def verdict_line(report: CheckReport, names: HostNames, width: int) -> list[Text]:
    verdict = Text("will not work", style="bold red") if report.failed else None
    if verdict is None:
        warned = report.count(Verdict.WARN)
        verdict = Text(
            "can go ahead" + (", with warnings" if warned else ""),
            style="yellow" if warned else "green",
        )
    counts = ", ".join(f"{report.count(v)} {v.value}" for v in Verdict if report.count(v))
    how = report.mode.value + (", copying storage" if report.copy_storage else "")
    rest = (
        f": {report.vm} from {names.name(report.source)} to "
        f"{names.name(report.destination)} ({how}); {counts} ({report.seconds:.1f} s)"
    )
    lines = paragraph(verdict.plain + rest, width)
    lines[0].stylize(str(verdict.style), 0, len(verdict.plain))
    return lines


def check_lines(findings: Iterable[Finding], width: int) -> list[Text]:
    """One line per check: verdict, name, and its summary cut to fit."""
    grid = Grid([Column("", right=False), Column("check")], free=Column("seen"))
    for finding in findings:
        grid.add(
            Cell(finding.verdict.value, STYLE[finding.verdict]),
            _name(finding),
            free=finding.summary,
        )
    return [Text("  ") + line for line in grid.lines(width - 2)[1:]]  # no header row needed


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return ", ".join(_value(v) for v in value) if value else "none"
    return json.dumps(value, default=str)


def details(finding: Finding, width: int) -> list[Text]:
    """A finding in full: its summary, what was seen, and what to do."""
    lines = [
        Text.assemble(
            (finding.verdict.value, STYLE[finding.verdict]), "  ", (_name(finding), "bold")
        )
    ]
    lines += paragraph(finding.summary, width, INDENT)
    for key, value in finding.evidence.items():
        lines += paragraph(f"{key}: {_value(value)}", width, INDENT + "  ", style="dim")
    if finding.fix:
        fix = paragraph(f"fix: {finding.fix}", width, INDENT)
        fix[0].stylize("bold", len(INDENT), len(INDENT) + 4)
        lines += fix
    return lines


def report_lines(
    report: CheckReport,
    width: int,
    *,
    verbose: bool = False,
    brief: bool = False,
    names: HostNames | None = None,
) -> list[Text]:
    """The whole report at `width` columns. `brief`: only the checks that need attention
    are listed (before a move starts); `verbose`: every check in full."""
    names = names or HostNames()
    lines = verdict_line(report, names, width)
    listed = [f for f in report.findings if not brief or verbose or f.verdict in NEEDS_ATTENTION]
    if not listed:
        return lines
    lines.append(Text(""))
    if verbose:
        for finding in listed:
            lines += details(finding, width)
        return lines
    lines += check_lines(listed, width)
    attention = [f for f in report.findings if f.verdict in NEEDS_ATTENTION]
    for finding in sorted(attention, key=lambda f: f.verdict is not Verdict.FAIL):
        lines.append(Text(""))
        lines += details(finding, width)
    if not brief and not report.failed:
        lines.append(Text(""))
        lines.append(Text("--verbose shows every check's evidence", style="dim"))
    return lines


@dataclass(frozen=True)
class FindingsView:
    """A report laid out at the width of the console that prints it."""

    report: CheckReport
    verbose: bool = False
    brief: bool = False
    names: HostNames | None = None

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Segment]:
        lines = report_lines(
            self.report,
            options.max_width,
            verbose=self.verbose,
            brief=self.brief,
            names=self.names,
        )
        yield from rendered(console, lines)


def rendered(console: Console, lines: Iterable[Text]) -> Iterator[Segment]:
    """Lines laid out already, as segments: Rich must not fold them again (a URI longer
    than the terminal stays whole)."""
    for line in lines:
        yield from line.render(console)
        yield Segment.line()
