"""`vmigrate jobs` and `jobs show` as an operator reads them: host names, whole VM names and
states, short times, a one-phrase outcome; one job told top-down."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rich.text import Text

from vmigrate.cli.host_names import HostNames
from vmigrate.cli.layout import INDENT, NO_BREAK, Cell, Column, Grid, paragraph
from vmigrate.live.history import ESTIMATE_KIND
from vmigrate.live.rehearsal import route_of
from vmigrate.store import ActionRecord, JobRecord

MIB = 1 << 20
STATE_STYLE = {
    "completed": "green",
    "running": "cyan",
    "failed": "red",
    "interrupted": "red",
    "aborted": "yellow",
    "cancelled": "yellow",
    "rolled back": "yellow",
}
_URI = re.compile(r"\b[a-z][a-z0-9+]*://[^\s,;)]*")
#: `jobs show` lists every sample up to this many; beyond, the last of each pass.
ALL_SAMPLES_UP_TO = 20


def started_at(t: float, now: float) -> str:
    """Today's time as HH:MM, an older one as its date."""
    when, today = time.localtime(t), time.localtime(now)
    if when[:3] == today[:3]:
        return time.strftime("%H:%M", when)
    return time.strftime("%Y-%m-%d", when)


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def with_host_names(text: str, names: HostNames) -> str:
    """Free text with each libvirt URI in it replaced by its host's name."""
    return _URI.sub(lambda m: names.name(m.group(0)), text)


def _first_clause(text: str) -> str:
    """The text up to its first `: ` outside parentheses (what failed, before the
    details of how)."""
    depth = 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and char == ":" and text[i + 1 : i + 2] == " ":
            return text[:i]
    return text


def outcome_phrase(record: JobRecord, names: HostNames) -> str:
    """A job's outcome in one phrase: who drives it while it runs; the first clause of
    its outcome after."""
    if record.state == "running":
        return f"driven by {record.holder}" + (" (another machine)" if record.elsewhere else "")
    return with_host_names(_first_clause(record.outcome or ""), names)


@dataclass(frozen=True)
class JobFilter:
    vm: str | None = None
    host: str | None = None  # a name or a URI, matched against both ends of the move
    state: str | None = None
    last: int | None = None

    def keeps(self, record: JobRecord, names: HostNames) -> bool:
        if self.vm is not None and record.vm != self.vm:
            return False
        if self.state is not None and record.state != self.state:
            return False
        if self.host is not None:
            ends = {record.source, record.destination}
            ends |= {names.name(end) for end in ends}
            if self.host not in ends and names.name(self.host) not in ends:
                return False
        return True

    def apply(self, records: Iterable[JobRecord], names: HostNames) -> list[JobRecord]:
        kept = [r for r in records if self.keeps(r, names)]
        return kept[: self.last] if self.last is not None else kept


def jobs_lines(
    records: list[JobRecord], width: int, names: HostNames, now: float | None = None
) -> list[Text]:
    """The job list: one row per job, newest first."""
    now = time.time() if now is None else now
    grid = Grid(
        [
            Column("ID", right=True),
            Column("KIND", drop_order=2),
            Column("VM", line_break_after=True),
            Column("FROM"),
            Column("TO"),
            Column("STATE"),
            Column("START"),
            Column("TOOK", drop_order=1, right=True),
        ],
        free=Column("OUTCOME"),
    )
    for r in records:
        took = duration(r.finished - r.started) if r.finished else "-"
        grid.add(
            str(r.id),
            r.kind,
            r.vm,
            names.name(r.source),
            names.name(r.destination),
            Cell(r.state, STATE_STYLE.get(r.state, "")),
            started_at(r.started, now),
            took,
            free=Cell(outcome_phrase(r, names), wraps=r.state == "running"),
        )
    if not records:
        return [Text("no jobs")]
    return grid.lines(width)


def _full_time(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _label(label: str, value: str, width: int, style: str = "") -> list[Text]:
    """`label` in a column of its own, `value` wrapped beside it."""
    head = f"{label + ':':<11}"
    lines = paragraph(value, width, " " * len(head), style=style)
    lines[0] = Text(head) + Text(lines[0].plain[len(head) :], style=style)
    return lines


def _downtime(record: JobRecord) -> str:
    report = record.report or {}
    if report.get("downtime_ms") is not None:
        return f"{report['downtime_ms']:.0f} ms"
    if report.get("downtime_s") is not None:
        return f"{report['downtime_s']:.1f} s (the VM was stopped while its disks moved)"
    return "not recorded"


def _gap(record: JobRecord, fleet_move: dict[str, Any] | None) -> str:
    for source in (record.report or {}, fleet_move or {}):
        if source.get("gap_ms") is not None:
            return f"{source['gap_ms']:.0f} ms (the largest the guest's heartbeat saw)"
    return "not measured (the lab's heartbeat measures it)"


def _name_and_uri(host: str, names: HostNames) -> str:
    name = names.name(host)
    return name if name == host else f"{name} ({host})"


def _summary_lines(record: JobRecord, names: HostNames, width: int) -> list[Text]:
    """`job N KIND VM SOURCE -> DESTINATION: STATE`, wrapped between words."""
    source = names.name(record.source)
    # A fleet job's "VM" is the host it empties or the cluster it balances.
    what = "" if record.vm == source else f"{record.vm} "
    head = f"job {record.id}"
    text = f"{head} {record.kind} {what}{source} -> {names.name(record.destination)}: "
    lines = paragraph(text + record.state.replace(" ", NO_BREAK), width)  # "rolled back" whole
    lines[0].stylize("bold", 0, len(head))
    last = lines[-1]
    last.stylize(STATE_STYLE.get(record.state, ""), len(last.plain) - len(record.state))
    return lines


def _live_facts(report: dict[str, Any]) -> str:
    facts = []
    if report.get("passes") is not None:
        facts.append(f"{report['passes']} pass(es)")
    if report.get("postcopy"):
        facts.append("switched to post-copy")
    if report.get("bytes_sent"):
        facts.append(f"{report['bytes_sent'] / MIB:,.0f} MiB sent")
    if report.get("bytes_moved"):
        facts.append(f"{report['bytes_moved'] / MIB:,.0f} MiB of disks copied")
    return ", ".join(facts)


def _predicted(prediction: dict[str, Any]) -> str:
    if prediction.get("outcome") != "completed":
        return f"route {prediction.get('route')}, {prediction.get('outcome')}"
    return (
        f"{duration(prediction['total_s'])}, {prediction['passes']} passes, route "
        f"{prediction['route']}, downtime {prediction['downtime_ms']:.0f} ms, guest gap "
        f"{prediction['guest_gap_ms']:.0f} ms"
    )


def _happened(
    report: dict[str, Any], actions: list[ActionRecord], fleet_move: dict[str, Any] | None
) -> str:
    route = route_of(a.action for a in actions if a.actor == "policy")
    downtime = report.get("downtime_ms")
    gap = next(
        (s["gap_ms"] for s in (report, fleet_move or {}) if s.get("gap_ms") is not None), None
    )
    return (
        f"{duration(report.get('total_s') or 0.0)}, {report.get('passes', '?')} passes, route "
        f"{route}, downtime {'-' if downtime is None else f'{downtime:.0f} ms'}, guest gap "
        f"{'not measured' if gap is None else f'{gap:.0f} ms'}"
    )


def prediction_lines(
    record: JobRecord,
    actions: list[ActionRecord],
    width: int,
    prediction: dict[str, Any],
    fleet_move: dict[str, Any] | None = None,
) -> list[Text]:
    """The estimate made before this move, next to what the move did."""
    made = prediction.get("made")
    when = f"estimate job {prediction.get('job_id')}" + (
        f", {duration(record.started - made)} before" if made is not None else ""
    )
    predicted = prediction.get("prediction") or {}
    lines = _label("predicted", f"{_predicted(predicted)} ({when})", width)
    if predicted.get("timeline"):
        lines += _label("would act", predicted["timeline"], width)
    if record.report and record.kind != ESTIMATE_KIND:
        lines += _label("happened", _happened(record.report, actions, fleet_move), width)
    return lines


def show_lines(
    record: JobRecord,
    samples: list[dict[str, Any]],
    actions: list[ActionRecord],
    width: int,
    names: HostNames,
    fleet_move: dict[str, Any] | None = None,
    prediction: dict[str, Any] | None = None,
) -> list[Text]:
    """One job, top-down: what moved where, the outcome, the time, the downtime and gap,
    the prediction made before it next to what happened, the policy's actions with their
    reasons, then the samples. `fleet_move`: what the evacuation or balance round that ran
    this move recorded of it; `prediction`: the `vmigrate estimate` made before it (an
    estimate job's own report for an estimate job)."""
    report = record.report or {}
    lines = _summary_lines(record, names, width)
    lines += _label("from", _name_and_uri(record.source, names), width)
    lines += _label("to", _name_and_uri(record.destination, names), width)
    outcome = with_host_names(record.outcome or "none yet", names)
    lines += _label("outcome", outcome, width, STATE_STYLE.get(record.state, ""))
    if report.get("fix"):
        lines += _label("to do", report["fix"], width)
    took = f", took {duration(record.finished - record.started)}" if record.finished else ""
    if fleet_move and fleet_move.get("predicted_s") is not None:
        took += f" (its plan predicted {duration(fleet_move['predicted_s'])})"
    lines += _label(
        "time",
        f"started {_full_time(record.started)}, finished {_full_time(record.finished)}{took}",
        width,
    )
    if record.kind in ("live", "cold"):
        lines += _label("downtime", _downtime(record), width)
        lines += _label("gap", _gap(record, fleet_move), width)
    if record.state == "running":
        lines += _label(
            "driven by", outcome_phrase(record, names).removeprefix("driven by "), width
        )
    if prediction is not None:
        lines += prediction_lines(record, actions, width, prediction, fleet_move)
    facts = _live_facts(report)
    if facts:
        lines += _label("moved", facts, width)
    placement = report.get("placement") or {}
    if placement.get("summary"):
        lines += _label("where", placement["summary"], width)
    if report.get("moves"):
        lines += [Text(""), Text("moves", style="bold")]
        lines += fleet_move_lines(report, width, names)
    lines.append(Text(""))
    lines += action_lines(record, actions, width)
    lines.append(Text(""))
    lines += sample_lines(samples, width)
    return lines


def action_lines(record: JobRecord, actions: list[ActionRecord], width: int) -> list[Text]:
    if not actions:
        return [Text("actions: none", style="dim")]
    lines = [Text("actions", style="bold")]
    for action in actions:
        head = f"  +{action.t - record.started:.1f} s  {action.actor}  {action.action}"
        lines.append(Text(head, style="cyan"))
        lines += paragraph(action.reason, width, INDENT + "    ")
    return lines


def _per_pass(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last sample of each pass and phase."""
    last: dict[tuple[int, str], dict[str, Any]] = {}
    for sample in samples:
        last[(sample.get("iteration", 0), sample.get("phase", ""))] = sample
    return list(last.values())


def sample_lines(samples: list[dict[str, Any]], width: int) -> list[Text]:
    if not samples:
        return [Text("samples: none", style="dim")]
    shown = samples if len(samples) <= ALL_SAMPLES_UP_TO else _per_pass(samples)
    title = (
        f"samples ({len(samples)})"
        if shown is samples
        else f"samples: the last of each pass ({len(shown)} of {len(samples)}; --json: all)"
    )
    grid = Grid(
        [
            Column("AT", right=True),
            Column("PHASE"),
            Column("PASS", right=True),
            Column("REMAINING", right=True),
            Column("DIRTY RATE", right=True),
            Column("LINK", right=True, drop_order=1),
            Column("DOWNTIME", right=True, drop_order=2),
        ]
    )
    for s in shown:
        expected = s.get("expected_downtime_ms")
        grid.add(
            f"{s.get('elapsed_s', 0.0):.1f} s",
            s.get("phase", ""),
            str(s.get("iteration", "")),
            f"{s.get('memory_remaining', 0) / MIB:,.0f} MiB",
            f"{s.get('dirty_rate_bps', 0) / MIB:,.1f} MiB/s",
            f"{s.get('bandwidth_bps', 0) / MIB:,.1f} MiB/s",
            f"{expected:.0f} ms" if expected is not None else "-",
        )
    return [Text(title, style="bold"), *grid.lines(width)]


def fleet_move_lines(report: dict[str, Any], width: int, names: HostNames) -> list[Text]:
    """A fleet job's moves: where each VM went, taken against predicted, and why."""
    grid = Grid(
        [
            Column("VM", line_break_after=True),
            Column("TO"),
            Column("STATE"),
            Column("TOOK", right=True),
            Column("PREDICTED", right=True),
            Column("GAP", right=True, drop_order=1),
        ],
        free=Column("WHY"),
        free_wraps=True,
        min_free=36,
    )
    for move in report["moves"]:
        state = move["state"]
        grid.add(
            move["vm"],
            names.name(move.get("destination") or "-"),
            Cell(state, "green" if state == "moved" else "red"),
            duration(move["seconds"]) if move.get("seconds") is not None else "-",
            duration(move["predicted_s"]) if move.get("predicted_s") is not None else "-",
            f"{move['gap_ms']:.0f} ms" if move.get("gap_ms") is not None else "-",
            free=with_host_names(" ".join(move.get("reason", "").split()), names),
        )
    return grid.lines(width)
