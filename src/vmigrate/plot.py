"""Drawing a job (matplotlib, PNG): what it shows is said in its title.

A live move: remaining memory and dirty rate over time, each pass shaded, post-copy in a
colour of its own, the policy's actions marked and their reasons written out below, the
predicted end (when a plan predicted one) against the real one. A fleet job: a timeline of
its moves, one row per VM, predicted against actual. A balance round: each host's load.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from vmigrate.errors import UsageError, VmigrateError
from vmigrate.store import ActionRecord, JobRecord

MIB = 1 << 20
WIDTH_IN = 10.0
DPI = 100
REASON_CHARS = 130  # a reason's line below the plot, at 8 points over 10 inches
PASS_SHADES = ("#f2f2f2", "#e0e0e0")
POSTCOPY_SHADE = "#fde2c4"
FLEET_KINDS = ("evacuate", "maintenance-return")

HostName = Callable[[str], str]


def _same(host: str) -> str:
    return host


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def title_of(record: JobRecord, names: HostName = _same) -> str:
    """The VM, the hosts by name, the outcome and the total time."""
    took = _duration(record.finished - record.started) if record.finished else "still running"
    outcome = record.state
    if record.kind in ("live", "cold"):
        what = f"{record.vm}: {names(record.source)} → {names(record.destination)}"
    elif record.kind == "balance":
        what = f"balance {record.vm}"
    else:
        what = f"{record.kind} {names(record.source)} → {names(record.destination)}"
    return f"{what}, {outcome}, {took}"


def plot_job(
    record: JobRecord,
    samples: list[dict[str, Any]],
    actions: list[ActionRecord],
    path: Path,
    *,
    moves: list[JobRecord] | None = None,
    names: HostName | None = None,
    predicted_s: float | None = None,
) -> Figure:
    """Draw the job into `path` (its suffix picks the format; none: PNG). `moves`: a fleet
    job's move jobs; `predicted_s`: what the plan predicted for this move."""
    host_name = names or _same
    kind = path.suffix.lower().removeprefix(".")
    supported = FigureCanvasBase.get_supported_filetypes()
    if kind and kind not in supported:
        raise UsageError(
            f"cannot draw {path}: there is no .{kind} image format",
            fix=f"name it .png (or one of .{', .'.join(sorted(supported))})",
        )
    if record.kind == "balance":
        fig = _draw_balance(record, moves or [], host_name)
    elif (record.report or {}).get("moves") is not None or record.kind in FLEET_KINDS:
        fig = _draw_timeline(record, moves or [], host_name)
    else:
        fig = _draw_move(record, samples, actions, host_name, predicted_s)
    try:
        fig.savefig(path, dpi=DPI)
    except OSError as err:
        raise VmigrateError(
            f"cannot write the plot {path}: {err.strerror or err}",
            fix=_where_to_write(path),
        ) from err
    finally:
        plt.close(fig)
    return fig


def _reason_lines(record: JobRecord, actions: list[ActionRecord]) -> list[str]:
    lines = []
    for n, action in enumerate(actions, start=1):
        head = f"{n}. +{action.t - record.started:.1f} s, {action.actor}: {action.action}: "
        wrapped = textwrap.wrap(
            head + " ".join(action.reason.split()),
            REASON_CHARS,
            subsequent_indent="     ",
            break_long_words=False,
            break_on_hyphens=False,
        )
        lines += wrapped
    return lines


def _phase_label(sample: dict[str, Any]) -> str:
    phase = sample.get("phase", "precopy")
    if phase == "postcopy":
        return "post-copy"
    if phase == "setup" or not sample.get("iteration"):
        return "setup"
    return f"pass {sample['iteration']}"


def _pass_spans(
    samples: list[dict[str, Any]], times: list[float]
) -> list[tuple[str, float, float]]:
    """(label, start, end) of the setup, each pass and post-copy, from the samples."""
    spans: list[tuple[str, float, float]] = []
    for sample, t in zip(samples, times, strict=True):
        label = _phase_label(sample)
        if spans and spans[-1][0] == label:
            spans[-1] = (label, spans[-1][1], t)
        else:
            start = spans[-1][2] if spans else 0.0
            spans.append((label, start, t))
    return spans


def _draw_move(
    record: JobRecord,
    samples: list[dict[str, Any]],
    actions: list[ActionRecord],
    names: HostName,
    predicted_s: float | None,
) -> Figure:
    reasons = _reason_lines(record, actions)
    height = 5.0 + 0.17 * len(reasons)
    fig = plt.figure(figsize=(WIDTH_IN, height), layout="constrained")
    plot_share = 5.0 / height
    outer = fig.add_gridspec(2, 1, height_ratios=[plot_share, max(1.0 - plot_share, 0.01)])
    left = fig.add_subplot(outer[0])
    left.set_title(title_of(record, names), fontsize=12, fontweight="bold", loc="left")
    t0 = record.started
    times = [s.get("elapsed_s", s["t"] - t0) for s in samples]
    handles: list[Any] = []
    ends = [*times, (record.finished or t0) - t0, predicted_s or 0.0]
    x_range = max([*ends, 1.0])
    for n, (label, start, end) in enumerate(_pass_spans(samples, times)):
        colour = POSTCOPY_SHADE if label == "post-copy" else PASS_SHADES[n % 2]
        left.axvspan(start, end, color=colour, zorder=0, linewidth=0)
        if end - start >= 0.06 * x_range:  # a narrow pass is shaded, not named
            left.text(
                (start + end) / 2,
                0.985,
                label,
                transform=left.get_xaxis_transform(),
                ha="center",
                va="top",
                fontsize=8,
                color="#555555",
            )
    moving = [(t, s) for t, s in zip(times, samples, strict=True) if _phase_label(s) != "setup"]
    if moving:
        (remaining,) = left.plot(
            [t for t, _ in moving],
            [s["memory_remaining"] / MIB for _, s in moving],
            color="tab:blue",
            linewidth=2,
            label="memory left to send (MiB)",
        )
        handles.append(remaining)
    left.set_xlabel("seconds since the move started")
    left.set_ylabel("memory left to send (MiB)", color="tab:blue")
    left.set_ylim(bottom=0, top=max([s["memory_remaining"] / MIB for s in samples] + [1]) * 1.15)
    right = left.twinx()
    if samples:
        (dirty,) = right.plot(
            times,
            [s["dirty_rate_bps"] / MIB for s in samples],
            color="tab:red",
            linestyle="--",
            label="dirty rate (MiB/s)",
        )
        handles.append(dirty)
    right.set_ylabel("dirty rate (MiB/s)", color="tab:red")
    right.set_ylim(bottom=0, top=max([s["dirty_rate_bps"] / MIB for s in samples] + [1]) * 1.3)
    handles.append(Patch(color=PASS_SHADES[1], label="setup, pre-copy passes"))
    if any(s.get("phase") == "postcopy" for s in samples):
        handles.append(Patch(color=POSTCOPY_SHADE, label="post-copy"))
    for n, action in enumerate(actions, start=1):
        at = action.t - t0
        left.axvline(at, color="#6a3d9a", linewidth=1.5)
        left.annotate(
            f"{n}. {action.action}",
            (at, 0.9),
            xycoords=left.get_xaxis_transform(),
            xytext=(4, 0),
            textcoords="offset points",
            fontsize=9,
            color="#6a3d9a",
            fontweight="bold",
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "#6a3d9a", "alpha": 0.9},
        )
    if actions:
        handles.append(Line2D([], [], color="#6a3d9a", label="policy's action (reasons below)"))
    if record.finished:
        end = record.finished - t0
        left.axvline(end, color="black", linewidth=1)
        handles.append(Line2D([], [], color="black", label=f"actual end ({_duration(end)})"))
    if predicted_s is not None:
        left.axvline(predicted_s, color="black", linestyle=":", linewidth=1.5)
        handles.append(
            Line2D(
                [],
                [],
                color="black",
                linestyle=":",
                label=f"predicted end ({_duration(predicted_s)})",
            )
        )
    left.set_xlim(left=0)
    left.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        ncol=min(len(handles), 4),
        fontsize=9,
        frameon=False,
    )
    if reasons:
        notes = fig.add_subplot(outer[1])
        notes.axis("off")
        notes.text(0, 1, "\n".join(reasons), va="top", ha="left", fontsize=8, family="monospace")
    return fig


def _moved_vms(record: JobRecord) -> list[str]:
    report = record.report or {}
    planned = {m["vm"] for m in (report.get("plan") or {}).get("moves", [])}
    return sorted(planned | {m["vm"] for m in report.get("moves", [])})


def _draw_timeline(record: JobRecord, moves: list[JobRecord], names: HostName) -> Figure:
    vms = _moved_vms(record)
    if not vms:
        raise UsageError(f"job {record.id} recorded no moves to draw")
    fig = plt.figure(figsize=(WIDTH_IN, 2.2 + 0.6 * len(vms)), layout="constrained")
    axes = fig.add_subplot()
    moved = sum(1 for m in (record.report or {}).get("moves", []) if m.get("state") == "moved")
    axes.set_title(
        f"{title_of(record, names)} ({moved} of {len(vms)} VMs moved)",
        fontsize=12,
        fontweight="bold",
        loc="left",
    )
    _timeline(axes, record, moves, vms)
    return fig


def _timeline(axes: Axes, record: JobRecord, moves: list[JobRecord], vms: list[str]) -> None:
    """One row per VM: the planned bar against the real one."""
    report = record.report or {}
    planned = {m["vm"]: m for m in (report.get("plan") or {}).get("moves", [])}
    results = {m["vm"]: m for m in report.get("moves", [])}
    jobs = {j.id: j for j in moves}
    for row, vm in enumerate(reversed(vms)):
        move = planned.get(vm)
        if move is not None:
            axes.barh(
                row + 0.18,
                move["predicted_s"],
                left=move.get("predicted_start_s", 0.0),
                height=0.32,
                color="#c6dbef",
                edgecolor="#4a7fb5",
                hatch="//",
            )
        result = results.get(vm, {})
        job = jobs.get(result.get("job_id") or -1)
        state = result.get("state", "not run")
        colour = "#41ab5d" if state == "moved" else "#e34a33"
        if job is not None:
            start = job.started - record.started
            end = (job.finished or record.finished or job.started) - record.started
            axes.barh(row - 0.18, end - start, left=start, height=0.32, color=colour)
            axes.text(
                end, row - 0.18, f" {state}, {_duration(end - start)}", va="center", fontsize=8
            )
        else:
            axes.plot([0], [row - 0.18], marker="x", color=colour, markersize=9, clip_on=False)
            axes.text(0, row - 0.18, f"   {state}: {_no_job(result)}", va="center", fontsize=8)
    axes.set_yticks(range(len(vms)), list(reversed(vms)))
    axes.set_ylim(-0.6, len(vms) - 0.4)
    axes.set_xlabel("seconds since the job started")
    axes.set_xlim(left=0, right=max(axes.get_xlim()[1], 1.0) * 1.25)
    axes.legend(
        handles=[
            Patch(facecolor="#c6dbef", edgecolor="#4a7fb5", hatch="//", label="predicted"),
            Patch(color="#41ab5d", label="actual: moved"),
            Patch(color="#e34a33", label="actual: not moved"),
        ],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=9,
        frameon=False,
    )


def _no_job(result: dict[str, Any]) -> str:
    """A move that left no job of its own: how its attempts ended."""
    attempts = result.get("attempts") or []
    if not attempts:
        return "never started"
    last = attempts[-1]
    took = f" after {_duration(last['seconds'])}" if last.get("seconds") is not None else ""
    return f"{last.get('outcome', 'failed')}{took} (no job recorded)"


def _where_to_write(path: Path) -> str:
    directory = path.parent
    if path.is_dir():
        return f"{path} is a directory: pass --plot a file name, e.g. {path / 'job.png'}"
    if not directory.is_dir():
        return f"{directory} does not exist: create it, or pass --plot a file in one that does"
    return f"make {directory} writable, or pass --plot a file in a directory you can write"


def _draw_balance(record: JobRecord, moves: list[JobRecord], names: HostName) -> Figure:
    """A balance round: each host's load, and when it moved VMs, the timeline of its moves."""
    vms = _moved_vms(record)
    if not vms:
        fig = plt.figure(figsize=(WIDTH_IN, 5), layout="constrained")
        _loads(fig.add_subplot(), record, names)
        return fig
    timeline_in = 1.4 + 0.6 * len(vms)
    fig = plt.figure(figsize=(WIDTH_IN, 4.5 + timeline_in), layout="constrained")
    loads, timeline = fig.subplots(2, 1, height_ratios=[4.5, timeline_in])
    _loads(loads, record, names)
    _timeline(timeline, record, moves, vms)
    timeline.set_title("its moves, predicted against actual", fontsize=10, loc="left")
    return fig


def _loads(axes: Axes, record: JobRecord, names: HostName) -> None:
    """Each host's load before, as planned after, and as measured after."""
    report = record.report or {}
    plan = report.get("plan") or record.params.get("plan") or {}
    before = {h["name"]: h["load"] for h in plan.get("hosts_before", [])}
    planned = {h["name"]: h["load"] for h in plan.get("hosts_after", [])}
    measured = {h["name"]: h["load"] for h in report.get("hosts_measured_after", [])}
    hosts = sorted(before)
    if not hosts:
        raise UsageError(f"job {record.id} recorded no host loads to draw")
    width = 0.27
    for offset, (label, values) in enumerate(
        (("before", before), ("planned after", planned), ("measured after", measured))
    ):
        axes.bar(
            [i + (offset - 1) * width for i in range(len(hosts))],
            [values.get(h, 0.0) for h in hosts],
            width,
            label=label,
        )
    axes.set_xticks(range(len(hosts)), [names(h) for h in hosts])
    axes.set_ylabel("load: (CPU share + memory share) / 2")
    measured_after = report.get("imbalance_measured_after")
    axes.set_title(
        f"{title_of(record, names)}: imbalance {plan.get('imbalance_before', 0):.3f} → "
        f"{plan.get('imbalance_after', 0):.3f} planned"
        + (f", {measured_after:.3f} measured" if measured_after is not None else ""),
        fontsize=12,
        fontweight="bold",
        loc="left",
    )
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
