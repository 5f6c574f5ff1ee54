"""What a --copy-storage job may remove from the destination: only what it created.

libvirt's test:/// driver stands in for the destination (API glue only: it cannot migrate)."""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest

from vmigrate.journal import Journal
from vmigrate.live.storage_copy import created_paths, remove_created
from vmigrate.store import JobStore
from vmigrate.virt import domains


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    store = JobStore(tmp_path / "jobs.sqlite")
    job = store.create_job("live", "vm", "qemu+tcp://a/system", "qemu+tcp://b/system", {})
    return Journal(store, job)


def test_only_images_the_job_claimed_are_removed(journal: Journal) -> None:
    conn = libvirt.open("test:///default")
    ours = domains.create_image(
        conn, "default-pool", "ours.qcow2", fmt="qcow2", capacity=1 << 20
    ).path()
    theirs = domains.create_image(
        conn, "default-pool", "base.img", fmt="raw", capacity=1 << 20
    ).path()
    # Ours was claimed before it was created; theirs existed, so its step failed unclaimed.
    journal.record(f"destination image {ours}", "started", {"creating": ours})
    journal.record(f"destination image {ours}", "done", {"created": ours})
    journal.record(f"destination image {theirs}", "failed", {"error": "exists"})
    assert created_paths(journal) == [ours]
    removed, left = remove_created(journal, conn)
    assert (removed, left) == ([ours], [])
    assert domains.volume_at(conn, ours) is None
    assert domains.volume_at(conn, theirs) is not None
    assert created_paths(journal) == []  # undone: a second clean-up removes nothing
