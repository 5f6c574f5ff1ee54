"""Drawing a job: a PNG, and a clear error (never a traceback) when the file cannot be written."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmigrate.errors import UsageError, VmigrateError
from vmigrate.plot import plot_job
from vmigrate.store import ActionRecord, JobRecord


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
