"""After a checksum mismatch, a resume copies the file again from its start (the journal's
transition; the copy itself is the lab's)."""

from __future__ import annotations

from pathlib import Path

from vmigrate.cold.steps import copy_again
from vmigrate.journal import Detail, Journal
from vmigrate.store import JobStore

STEP = "copy /var/lib/libvirt/images/db1.qcow2"


def test_a_mismatch_makes_the_resume_copy_again_from_offset_zero(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    job = store.create_job("cold", "db1", "hostA", "hostB", {})
    journal = Journal(store, job)
    journal.run(STEP, lambda _previous: {"created": True, "offset": 1 << 30, "sha256": None})
    assert journal.done(STEP)

    copy_again(journal, "/var/lib/libvirt/images/db1.qcow2", "checksum mismatch for ...")

    resumed = Journal(store, job)  # as `jobs resume` reads it back
    assert not resumed.done(STEP)
    seen: list[Detail] = []

    def copy(previous: Detail) -> Detail:
        seen.append(previous)
        return {"created": True}

    resumed.run(STEP, copy)
    assert seen[0]["created"] is True and seen[0]["offset"] == 0
    assert "checksum mismatch" in seen[0]["error"]


def test_the_file_stays_the_jobs_for_a_rollback(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    job = store.create_job("cold", "db1", "hostA", "hostB", {})
    journal = Journal(store, job)
    journal.run(STEP, lambda _previous: {"created": True, "offset": 4096})
    copy_again(journal, "/var/lib/libvirt/images/db1.qcow2", "checksum mismatch")
    undo = [r for r in Journal(store, job).done_in_reverse() if r.name == STEP]
    assert undo and undo[0].detail["created"] is True  # the rollback deletes it


def test_a_file_the_job_did_not_create_is_not_claimed(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    journal = Journal(store, store.create_job("cold", "db1", "hostA", "hostB", {}))
    copy_again(journal, "/var/lib/libvirt/images/db1.qcow2", "checksum mismatch")
    assert journal.detail(STEP)["created"] is False
