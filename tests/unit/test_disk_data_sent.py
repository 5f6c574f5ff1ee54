"""What a --copy-storage migration says its disks sent (#26 item 5): the data, not the
virtual size; the backing copies by what they streamed, the mirrored tops by what they hold."""

from __future__ import annotations

from pathlib import Path

from vmigrate.journal import Journal
from vmigrate.live.storage_copy import STEP_PREFIX, disk_data_sent
from vmigrate.live.storage_plan import BackingCopy, ImageToCreate, StorageCopyPlan
from vmigrate.store import JobStore

MIB = 1 << 20
BASE = "/var/lib/libvirt/images/web-base.img"


def _plan() -> StorageCopyPlan:
    top = ImageToCreate(
        target="vda", path="/var/lib/libvirt/images/web-vda.qcow2", pool="local",
        format="qcow2", capacity=1024 * MIB, allocation=17 * MIB,
        backing_path=BASE, backing_format="raw",
    )  # fmt: skip
    sparse = ImageToCreate(
        target="vdb", path="/var/lib/libvirt/images/web-vdb.img", pool="local",
        format="raw", capacity=2048 * MIB, allocation=1280 * MIB,
        backing_path=None, backing_format=None,
    )  # fmt: skip
    backing = BackingCopy(BASE, "local", "local", "raw", physical=64 * MIB)
    return StorageCopyPlan(("vda", "vdb"), (), (top, sparse), (backing,), (), ())


def test_data_not_virtual_size(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    journal = Journal(store, store.create_job("live", "web", "hostA", "hostB", {}))
    plan = _plan()
    # Not yet copied (or journalled before the count was kept): its size on disk.
    assert disk_data_sent(plan, journal) == (17 + 1280 + 64) * MIB
    journal.run(STEP_PREFIX + BASE, lambda _previous: {"created": BASE, "data_bytes": 16 * MIB})
    assert disk_data_sent(plan, journal) == (17 + 1280 + 16) * MIB
    assert disk_data_sent(plan, journal) < sum(i.capacity for i in plan.images)
