"""Drawing a job: a PNG that says what it shows (read back from the figure), and a clear
error (never a traceback) when the file cannot be written."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from vmigrate.cli.host_names import HostNames
from vmigrate.errors import UsageError, VmigrateError
from vmigrate.plot import plot_job
from vmigrate.store import ActionRecord, JobRecord, JobStore


def job() -> tuple[JobRecord, list[dict[str, float]], list[ActionRecord]]:
    record = JobRecord(
        1, "live", "web1", "a", "b", {}, "completed", None, 100.0, 110.0, "completed", None
    )
    samples = [
        {"t": 100.0 + i, "memory_remaining": (10 - i) << 20, "dirty_rate_bps": 5 << 20}
        for i in range(10)
    ]
    return record, samples, [ActionRecord(105.0, "postcopy", "pass 2", "policy")]


def test_plot_is_a_png(tmp_path: Path) -> None:
    path = tmp_path / "job.png"
    plot_job(*job(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_into_a_missing_directory_says_so(tmp_path: Path) -> None:
    path = tmp_path / "no-such-dir" / "job.png"
    with pytest.raises(VmigrateError) as caught:
        plot_job(*job(), path)
    assert f"cannot write the plot {path}" in str(caught.value)
    assert f"{path.parent} does not exist" in caught.value.fix


def test_plot_onto_a_directory_says_so(tmp_path: Path) -> None:
    directory = tmp_path / "plots.png"
    directory.mkdir()
    with pytest.raises(VmigrateError) as caught:
        plot_job(*job(), directory)
    assert f"cannot write the plot {directory}" in str(caught.value)
    assert "is a directory" in caught.value.fix


def test_plot_with_an_unknown_image_format_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        plot_job(*job(), tmp_path / "job.xyz")
    assert ".xyz" in str(caught.value) and ".png" in caught.value.fix
    assert not (tmp_path / "job.xyz").exists()


# Jobs recorded in the lab (tests/unit/data/recorded27/README.md): job 1 a live move the
# policy switched to post-copy, job 3 an evacuation of hostB (one move done, one refused),
# job 4 its live move of rec27-web.
STORE = Path(__file__).parent / "data" / "stores" / "lab-issue27.sqlite"


def recorded_store(tmp_path: Path) -> JobStore:
    path = tmp_path / "jobs.sqlite"
    shutil.copyfile(STORE, path)
    return JobStore(path)


def lab_name(uri: str) -> str:
    return HostNames().name(uri)


def overlaps(a: Any, b: Any, fig: Figure) -> bool:
    canvas = FigureCanvasAgg(fig)  # the figure's own canvas went with plt.close
    canvas.draw()  # type: ignore[no-untyped-call]
    renderer = canvas.get_renderer()  # type: ignore[no-untyped-call]
    box_a, box_b = a.get_window_extent(renderer), b.get_window_extent(renderer)
    return bool(box_a.overlaps(box_b))


def _left_title(axes: Axes) -> Any:
    """The artist of the axes' left title, for its box on the figure."""
    return getattr(axes, "_left_title")  # noqa: B009 - no public getter for the artist


def legend_labels(axes: Axes) -> list[str]:
    legend = axes.get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


def test_a_live_moves_plot_says_what_it_shows(tmp_path: Path) -> None:
    store = recorded_store(tmp_path)
    record = store.job(1)
    path = tmp_path / "job1.png"
    fig = plot_job(record, store.samples(1), store.actions(1), path, names=lab_name)
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] == 1000 and 500 <= image.size[1] <= 800
    plot = fig.axes[0]
    title = _left_title(plot)
    assert plot.get_title(loc="left") == "rec27-web: hostA → hostB, completed, 28.9 s"
    legend = plot.get_legend()
    assert legend is not None
    assert not overlaps(legend, title, fig)
    assert not overlaps(legend, plot, fig)  # under the axes, clear of the data
    labels = legend_labels(plot)
    assert "post-copy" in labels and "setup, pre-copy passes" in labels
    shaded = [t.get_text() for t in plot.texts]
    assert "pass 1" in shaded and "post-copy" in shaded
    # the policy's action: marked on the plot, its reason written out under it
    assert any(a.get_text() == "1. postcopy" for a in plot.texts)
    notes = " ".join(" ".join(t.get_text().split()) for t in fig.axes[-1].texts)
    assert "cannot converge under 30 ms within 4 passes" in notes
    assert "hostA" in plot.get_title(loc="left") and "qemu" not in plot.get_title(loc="left")


def test_a_move_run_by_a_plan_is_drawn_against_its_prediction(tmp_path: Path) -> None:
    store = recorded_store(tmp_path)
    path = tmp_path / "job4.png"
    fig = plot_job(store.job(4), store.samples(4), [], path, names=lab_name, predicted_s=5.5)
    labels = legend_labels(fig.axes[0])
    assert "predicted end (5.5 s)" in labels and "actual end (2.8 s)" in labels
    assert fig.axes[0].get_title(loc="left") == "rec27-web: hostB → hostA, completed, 2.8 s"


def test_a_fleet_jobs_plot_is_a_timeline_of_its_moves(tmp_path: Path) -> None:
    store = recorded_store(tmp_path)
    record = store.job(3)
    path = tmp_path / "job3.png"
    fig = plot_job(record, [], [], path, moves=[store.job(4)], names=lab_name)
    with Image.open(path) as image:
        assert image.size[0] == 1000 and image.size[1] >= 250
    axes = fig.axes[0]
    assert axes.get_title(loc="left") == (
        "evacuate hostB → hostA, failed, 5.0 s (1 of 2 VMs moved)"
    )
    assert [t.get_text() for t in axes.get_yticklabels()] == ["rec27-web", "rec27-local"]
    # per VM a predicted bar; an actual bar for the move that ran (job 4: 2.8 s)
    bars = [p for p in axes.patches if isinstance(p, Rectangle) and p.get_width() > 0]
    widths = sorted(round(p.get_width(), 1) for p in bars)
    assert widths == [2.8, 5.2, 5.5]
    assert any("refused after 1.5 s" in t.get_text() for t in axes.texts)
    assert legend_labels(axes) == ["predicted", "actual: moved", "actual: not moved"]
    legend = axes.get_legend()
    assert not overlaps(legend, axes, fig) and not overlaps(legend, _left_title(axes), fig)
