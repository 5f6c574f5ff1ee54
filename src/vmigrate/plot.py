"""Drawing a job: remaining memory and dirty rate over time, with the policy's actions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from vmigrate.errors import UsageError, VmigrateError
from vmigrate.store import ActionRecord, JobRecord

MIB = 1 << 20


def plot_job(
    record: JobRecord,
    samples: list[dict[str, Any]],
    actions: list[ActionRecord],
    path: Path,
    *,
    moves: list[JobRecord] | None = None,
    names: Callable[[str], str] | None = None,
) -> None:
    """Draw the job into `path` (its suffix picks the format; none: PNG)."""
    fig, left = plt.subplots(figsize=(9, 4.5))
    try:
        kind = path.suffix.lower().removeprefix(".")
        supported = fig.canvas.get_supported_filetypes()
        if kind and kind not in supported:
            raise UsageError(
                f"cannot draw {path}: there is no .{kind} image format",
                fix=f"name it .png (or one of .{', .'.join(sorted(supported))})",
            )
        if record.kind == "balance":
            _draw_loads(left, record)
        else:
            _draw(fig, left, record, samples, actions)
        try:
            fig.savefig(path, dpi=100)
        except OSError as err:
            raise VmigrateError(
                f"cannot write the plot {path}: {err.strerror or err}",
                fix=_where_to_write(path),
            ) from err
    finally:
        plt.close(fig)


def _draw(
    fig: Figure,
    left: Axes,
    record: JobRecord,
    samples: list[dict[str, Any]],
    actions: list[ActionRecord],
) -> None:
    t0 = record.started
    times = [s.get("elapsed_s", s["t"] - t0) for s in samples]
    left.plot(
        times,
        [s["memory_remaining"] / MIB for s in samples],
        label="remaining (MiB)",
        color="tab:blue",
    )
    left.set_xlabel("seconds since start")
    left.set_ylabel("remaining memory (MiB)")
    right = left.twinx()
    right.plot(
        times,
        [s["dirty_rate_bps"] / MIB for s in samples],
        label="dirty rate (MiB/s)",
        color="tab:red",
        linestyle="--",
    )
    right.set_ylabel("dirty rate (MiB/s)")
    for action in actions:
        left.axvline(action.t - t0, color="gray", linestyle=":")
        left.annotate(
            action.action, (action.t - t0, left.get_ylim()[1]), rotation=90, va="top", fontsize=7
        )
    left.set_title(
        f"job {record.id}: {record.vm} {record.source} -> {record.destination} "
        f"({record.outcome or record.state})",
        fontsize=9,
    )
    fig.legend(loc="upper right", fontsize=8)
    fig.tight_layout()


def _where_to_write(path: Path) -> str:
    directory = path.parent
    if path.is_dir():
        return f"{path} is a directory: pass --plot a file name, e.g. {path / 'job.png'}"
    if not directory.is_dir():
        return f"{directory} does not exist: create it, or pass --plot a file in one that does"
    return f"make {directory} writable, or pass --plot a file in a directory you can write"


def _draw_loads(axes: Axes, record: JobRecord) -> None:
    """A balance round: each host's load before, as planned after, and as measured after."""
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
    axes.set_xticks(range(len(hosts)), hosts)
    axes.set_ylabel("load: (CPU share + memory share) / 2")
    axes.set_title(
        f"balance job {record.id}: imbalance {plan.get('imbalance_before', 0):.3f} -> "
        f"{plan.get('imbalance_after', 0):.3f} planned"
        + (
            f", {report['imbalance_measured_after']:.3f} measured"
            if report.get("imbalance_measured_after") is not None
            else ""
        )
    )
    axes.legend()
