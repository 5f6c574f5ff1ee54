"""The copy and digest steps of a pool change, for every disk of a move at once: one helper
per host, the copies side by side, the source digested from the bytes the copy reads and
only the destination read after the copy; a corrupted destination is caught (pure: QEMU's
copies and the hosts' reads are stand-ins that say what they were asked)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import libvirt
import pytest

from vmigrate.cold import pool_change_steps
from vmigrate.cold.pool_change import (
    PoolChange,
    plan_export,
    plan_import,
    pool_change_needs,
    source_scratch_needs,
)
from vmigrate.cold.pool_change_steps import (
    PoolChangeError,
    PoolChangeSteps,
    reserve_step,
    verify_step,
    write_step,
)
from vmigrate.journal import Journal
from vmigrate.store import JobStore
from vmigrate.virt import domains
from vmigrate.virt.connection import Connection
from vmigrate.virt.mirror import MirrorError
from vmigrate.virt.pool_copy import DiskCopy

from .test_pool_change import BOTH_RBD, FACTS, GIB, IMAGES, _chain, _export_source

SOURCE, DESTINATION = cast(Connection, "src-conn"), cast(Connection, "dst-conn")
QCOW2 = plan_import("vda", _chain(), "rbd", facts=FACTS, rbd_pool_xml=BOTH_RBD)
RAW = replace(  # a second disk: one raw file (digested as it is), another image
    plan_import("vdb", _chain(raw=True), "rbd", facts=FACTS, rbd_pool_xml=BOTH_RBD),
    source=f"{IMAGES}/vm-vdb.img",
    original_file=f"{IMAGES}/vm-vdb.img",
    destination="vmigrate/vm-vdb",
    image="vm-vdb",
)


@dataclass
class _Hosts:
    """What the stand-ins were asked: helpers started, copies run, files read."""

    helpers: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    helper_disks: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> its disks
    failing_starts: list[str] = field(default_factory=list)  # helper starts to fail, in turn
    copy_calls: list[list[tuple[str, str, int]]] = field(default_factory=list)
    reads: list[tuple[str, str]] = field(default_factory=list)
    copied: dict[str, str] = field(default_factory=dict)  # path -> what it holds now
    corrupt: set[str] = field(default_factory=set)  # new disks that hold other bytes


def _stand_ins(monkeypatch: pytest.MonkeyPatch) -> _Hosts:
    hosts = _Hosts(copied={f"{IMAGES}/vm-vdb.img": "bytes of vdb"})  # the raw original

    class Helper:
        def __init__(self, conn: Connection, name: str, host: str, disks: dict[str, str]):
            hosts.helpers.append((str(conn), name, tuple(disks)))
            hosts.helper_disks[name] = dict(disks)
            self.name, self.devices, self.disks = name, dict.fromkeys(disks, "vdX"), disks

        def start(self) -> None:
            if hosts.failing_starts and self.name.endswith(hosts.failing_starts[0]):
                hosts.failing_starts.pop(0)
                raise libvirt.libvirtError("error connecting: Permission denied")

        def release(self) -> None: ...
        def join(self) -> None: ...

    def run_copies(copies: list[DiskCopy], *, parallel: int, progress: Any = None,
                   on_leg: Any = None) -> dict[DiskCopy, float]:  # fmt: skip
        hosts.copy_calls.append([(c.helper.name, c.key, len(c.legs)) for c in copies])
        for copy in copies:
            for leg, target in enumerate(copy.legs):
                # What a leg's disk holds after the pivot: the guest-visible bytes.
                if "file=" in target:
                    path = target.split("file=")[1].split('"')[1]
                    bytes_of = f"bytes of {copy.key}"
                    hosts.copied[path] = (
                        "garbage" if copy.key in hosts.corrupt and "destination" in path
                        else bytes_of
                    )  # fmt: skip
                if progress is not None:
                    progress(copy, leg, 1, 2)
                if on_leg is not None:
                    on_leg(copy, leg)
        return dict.fromkeys(copies, 1.5)

    def digest_at(conn: Connection, path: str, *, host: str) -> str:
        hosts.reads.append((host, path))
        return "sha-of-" + hosts.copied[path]

    monkeypatch.setattr(pool_change_steps, "Helper", Helper)
    monkeypatch.setattr(pool_change_steps, "run_copies", run_copies)
    monkeypatch.setattr(pool_change_steps, "digest_at", digest_at)
    monkeypatch.setattr(
        pool_change_steps, "create_scratch_file", lambda c, p, name, s: f"{IMAGES}/{name}"
    )
    monkeypatch.setattr(pool_change_steps, "delete_pool_volume", lambda *_: True)
    monkeypatch.setattr(pool_change_steps, "find_pool_volume", lambda *_: "there")
    monkeypatch.setattr(domains, "refresh_pool", lambda *_: None)
    return hosts


def _journal(tmp_path: Path, *changes: PoolChange) -> Journal:
    store = JobStore(tmp_path / "jobs.sqlite")
    journal = Journal(store, store.create_job("cold", "vm", "hostA", "hostB", {}))
    for change in changes:
        journal.record(reserve_step(change), "done", {"created": True, "volume": change.image})
    return journal


def _steps(journal: Journal) -> PoolChangeSteps:
    return PoolChangeSteps((SOURCE, DESTINATION), ("hostA", "hostB"), journal, "vm", print)


def test_two_disks_one_helper_per_host_copied_side_by_side(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hosts = _stand_ins(monkeypatch)
    changes = (QCOW2, RAW)
    journal = _journal(tmp_path, *changes)
    _steps(journal).forward(changes)
    tag = f"vmigrate-{journal.job_id}-{journal.token[:12]}"
    # One helper on each host for both disks, not one per disk or per stage.
    assert hosts.helpers == [
        ("src-conn", f"{tag}-source", ("vda", "vdb")),
        ("dst-conn", f"{tag}-destination", ("vda", "vdb")),
    ]
    # Both disks in one run of copies (side by side); the qcow2 chain through its raw read.
    assert hosts.copy_calls == [
        [(f"{tag}-source", "vda", 2), (f"{tag}-source", "vdb", 1)],
        [(f"{tag}-destination", "vda", 1), (f"{tag}-destination", "vdb", 1)],
    ]
    for change in changes:
        assert journal.done(write_step(change)) and journal.done(verify_step(change))
        assert journal.detail(verify_step(change))["sha256"] == f"sha-of-bytes of {change.target}"
        assert journal.detail(write_step(change))["source_sha256"] == (
            f"sha-of-bytes of {change.target}"
        )


def test_each_byte_is_read_once_on_each_side(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The source's digests come from the reads the copy makes (the raw file itself, the raw
    read the copy goes on from); after the copy only the destination is read."""
    hosts = _stand_ins(monkeypatch)
    changes = (QCOW2, RAW)
    _steps(_journal(tmp_path, *changes)).forward(changes)
    by_host = {h: sorted(p.rsplit("/", 1)[1] for host, p in hosts.reads if host == h)
               for h in ("hostA", "hostB")}  # fmt: skip
    assert len(by_host["hostA"]) == 2 and len(by_host["hostB"]) == 2, by_host
    assert "vm-vdb.img" in by_host["hostA"]  # the raw original, as it is
    assert any(p.endswith("vda-source-digest.img") for p in by_host["hostA"])
    assert all(p.endswith("destination-digest.img") for p in by_host["hostB"])


def test_a_corrupted_destination_is_caught_and_copied_again_on_resume(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hosts = _stand_ins(monkeypatch)
    hosts.corrupt.add("vda")
    changes = (QCOW2, RAW)
    journal = _journal(tmp_path, *changes)
    with pytest.raises(PoolChangeError, match="vda: digest mismatch") as raised:
        _steps(journal).forward(changes)
    assert "vdb" not in raised.value.message
    assert "vmigrate jobs resume" in (raised.value.fix or "")
    # The bad disk's copy is to be done again; the good one's stays done.
    assert journal.records[write_step(QCOW2)].state == "failed"
    assert journal.done(write_step(changes[1]))
    assert not journal.done(verify_step(QCOW2))

    hosts.corrupt.clear()
    hosts.helpers.clear()
    hosts.copy_calls.clear()
    _steps(journal).forward(changes)  # the resume: vda copied again, both checked
    assert [[key for _, key, _ in call] for call in hosts.copy_calls] == [["vda"], ["vda", "vdb"]]
    assert all(journal.done(verify_step(c)) for c in changes)


def test_a_resume_after_the_copies_reads_only_the_destination(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hosts = _stand_ins(monkeypatch)
    changes = (QCOW2,)
    journal = _journal(tmp_path, *changes)
    journal.record(
        write_step(QCOW2), "done", {"seconds": 1.0, "source_sha256": "sha-of-bytes of vda"}
    )
    _steps(journal).forward(changes)
    assert journal.detail(verify_step(QCOW2))["sha256"] == "sha-of-bytes of vda"
    assert [h for h, _ in hosts.reads] == ["hostB"]
    assert [conn for conn, _, _ in hosts.helpers] == ["dst-conn"]


def test_a_copy_journalled_without_the_source_digest_is_done_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A write step done by an older vmigrate (which digested the source after the copy)."""
    _stand_ins(monkeypatch)
    journal = _journal(tmp_path, QCOW2)
    journal.record(write_step(QCOW2), "done", {"seconds": 1.0})
    with pytest.raises(PoolChangeError, match="without the source's digest"):
        _steps(journal).forward((QCOW2,))
    assert journal.records[write_step(QCOW2)].state == "failed"


def test_an_export_is_digested_on_the_source_while_the_destination_copies_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hosts = _stand_ins(monkeypatch)
    change = plan_export(_export_source(), "local", facts=FACTS, rbd_pool_xml=BOTH_RBD)
    journal = _journal(tmp_path, change)
    _steps(journal).forward((change,))
    tag = f"vmigrate-{journal.job_id}-{journal.token[:12]}"
    # Both hosts' QEMUs in one run: the source's raw read and the destination's copy.
    assert hosts.copy_calls == [[(f"{tag}-source", "vda", 1), (f"{tag}-destination", "vda", 1)]]
    assert [h for h, _ in hosts.reads] == ["hostA", "hostB"]
    assert journal.detail(verify_step(change))["sha256"]


def test_the_destination_reads_need_room_for_every_disk_at_once() -> None:
    changes = (QCOW2, RAW)
    assert pool_change_needs(changes)["local"] == QCOW2.allocation + RAW.allocation
    assert source_scratch_needs(changes) == {"local": QCOW2.allocation}  # raw: read as it is
    assert QCOW2.capacity == GIB


def test_the_destination_is_ready_to_read_when_the_copy_ends(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The destination's helper is started while the source copies (once, for every disk),
    holding the new images uncached: nothing it might read before the copy ends is kept."""
    hosts = _stand_ins(monkeypatch)
    changes = (QCOW2, RAW)
    journal = _journal(tmp_path, *changes)
    _steps(journal).forward(changes)
    name = f"vmigrate-{journal.job_id}-{journal.token[:12]}-destination"
    assert [n for _, n, _ in hosts.helpers].count(name) == 1
    assert all('cache="none"' in xml for xml in hosts.helper_disks[name].values())
    assert all(journal.done(verify_step(c)) for c in changes)


def test_a_destination_helper_that_cannot_start_early_is_started_by_the_verify_step(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hosts = _stand_ins(monkeypatch)
    hosts.failing_starts = ["-destination"]  # once: a host busy a moment
    journal = _journal(tmp_path, QCOW2)
    _steps(journal).forward((QCOW2,))
    assert [conn for conn, _, _ in hosts.helpers] == ["src-conn", "dst-conn", "dst-conn"]
    assert journal.done(verify_step(QCOW2))


def test_a_destination_that_cannot_open_the_images_fails_the_verify_step_not_the_copy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A wrong key on the destination: the copy is done, the check fails naming hostB."""
    hosts = _stand_ins(monkeypatch)
    hosts.failing_starts = ["-destination", "-destination"]
    journal = _journal(tmp_path, QCOW2)
    with pytest.raises(MirrorError, match="Permission denied") as raised:
        _steps(journal).forward((QCOW2,))
    assert raised.value.host == "hostB"
    assert journal.done(write_step(QCOW2))
    assert journal.records[verify_step(QCOW2)].state == "failed"
