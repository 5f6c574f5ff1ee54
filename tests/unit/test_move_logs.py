"""The move logs of a fleet job (fleet/logs.py) in a shared directory such as /tmp: another
user's symlink or directory is never followed or written, and each file is a fresh one."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from vmigrate.fleet.job import log_dir
from vmigrate.fleet.logs import MoveLogs, UnsafeLogDirectory, read_from, safe_stem
from vmigrate.store import JobStore, default_store_path


def _write_and_read(logs: MoveLogs, stem: str, text: bytes) -> tuple[str, bytes]:
    files = logs.child_files(stem)
    try:
        os.write(files.events_write, text)
        return files.stem, read_from(files.events_read, 0)
    finally:
        for fd in (files.events_write, files.errors_write, files.events_read, files.errors_read):
            os.close(fd)


def test_the_directory_is_made_private_and_each_attempt_gets_fresh_files(tmp_path: Path) -> None:
    logs = MoveLogs(tmp_path, ("fleet", "7"))
    first, data = _write_and_read(logs, "web.1", b'{"event": "job"}\n')
    second, _ = _write_and_read(logs, "web.1", b"")  # a resumed job reuses attempt numbers
    logs.close()
    assert data == b'{"event": "job"}\n'
    assert (first, second) == ("web.1", "web.1.1")
    for directory in (tmp_path / "fleet", tmp_path / "fleet" / "7"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "fleet" / "7" / "web.1.events.jsonl").stat().st_mode) == 0o600


def test_a_planted_symlink_as_a_log_file_is_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    directory = tmp_path / "fleet" / "3"
    directory.mkdir(parents=True, mode=0o700)
    (tmp_path / "fleet").chmod(0o700)
    (directory / "web.1.events.jsonl").symlink_to(victim)
    (directory / "web.1.stderr").symlink_to(victim)
    logs = MoveLogs(tmp_path, ("fleet", "3"))
    stem, _ = _write_and_read(logs, "web.1", b"overwritten?")
    logs.close()
    assert stem == "web.1.1"
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("level", ["fleet", "job"])
def test_a_symlinked_directory_is_refused(tmp_path: Path, level: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    if level == "fleet":
        (tmp_path / "fleet").symlink_to(elsewhere)
    else:
        (tmp_path / "fleet").mkdir(mode=0o700)
        (tmp_path / "fleet" / "4").symlink_to(elsewhere)
    logs = MoveLogs(tmp_path, ("fleet", "4"))
    with pytest.raises(UnsafeLogDirectory) as caught:
        logs.child_files("web.1")
    assert "not a plain directory" in caught.value.message
    assert "--store" in caught.value.fix
    assert list(elsewhere.iterdir()) == []


def test_a_directory_others_may_write_is_refused(tmp_path: Path) -> None:
    (tmp_path / "fleet").mkdir()
    (tmp_path / "fleet").chmod(0o777)
    with pytest.raises(UnsafeLogDirectory) as caught:
        MoveLogs(tmp_path, ("fleet", "5")).child_files("web.1")
    assert "others may write in it (mode 0777)" in caught.value.message
    assert not (tmp_path / "fleet" / "5").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory away takes root")
def test_a_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    (tmp_path / "fleet").mkdir(mode=0o700)
    os.chown(tmp_path / "fleet", 65534, 65534)
    with pytest.raises(UnsafeLogDirectory) as caught:
        MoveLogs(tmp_path, ("fleet", "6")).child_files("web.1")
    assert "belongs to user id 65534" in caught.value.message


def test_vm_names_become_plain_file_names() -> None:
    assert safe_stem("web/../x.1") == "web_.._x.1"
    assert safe_stem("..") == "_.."
    assert safe_stem(".hidden.1") == "_.hidden.1"


def test_logs_go_beside_a_store_file_or_under_the_state_directory(tmp_path: Path) -> None:
    beside = log_dir(cast(JobStore, SimpleNamespace(path=tmp_path / "jobs.sqlite")), 9)
    assert beside.path == tmp_path / "fleet" / "9"
    server: Any = SimpleNamespace(path="postgresql://ops@db/vmigrate")
    assert log_dir(server, 9).path == default_store_path().parent / "fleet" / "9"


def test_a_child_s_error_keeps_its_cause_and_its_fix() -> None:
    from vmigrate.fleet.moves import last_error

    stderr = (
        "some progress line\n"
        "error: host hostB, VM web1: hostB is in maintenance (job 7)\n"
        "  what to do: pick another destination, or end it: vmigrate maintenance end hostB\n"
    )
    assert last_error(stderr) == (
        "host hostB, VM web1: hostB is in maintenance (job 7); what to do: pick another "
        "destination, or end it: vmigrate maintenance end hostB"
    )
    assert last_error("error: plain failure\n") == "plain failure"
    assert last_error("Traceback-free last words\n") == "Traceback-free last words"
    assert last_error("") == ""
