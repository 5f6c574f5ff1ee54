"""The monitor acts the moment a pass ends, from libvirt's event thread: replayed over a
recorded jobStats trace of the lab's L3 guest (200 MiB/s over the 1 Gbit/s link)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from vmigrate.events import ignore
from vmigrate.live.monitor import Monitor, Steering
from vmigrate.live.policy import PRESETS
from vmigrate.store import JobStore

from .test_policy import TRACES


class ReplayedDomain:
    """libvirt's domain as the recorded trace saw it: jobStats gives the current entry;
    the steering calls are kept in order."""

    def __init__(self, trace: list[dict[str, Any]]) -> None:
        self.trace, self.at = trace, 0
        self.calls: list[str] = []

    def jobStats(self, _flags: int) -> dict[str, Any]:
        return dict(self.trace[self.at]["stats"])

    def migrateSetMaxDowntime(self, ms: int, _flags: int) -> None:
        self.calls.append(f"downtime {ms}")

    def migrateStartPostCopy(self, _flags: int) -> None:
        self.calls.append("postcopy")


def _monitor(tmp_path: Path) -> tuple[Monitor, ReplayedDomain, JobStore, int]:
    trace = json.loads((TRACES / "l3-200mibs-1gbit-postcopy-after-precopy.json").read_text())
    domain = ReplayedDomain(trace["trace"])
    store = JobStore(tmp_path / "jobs.sqlite")
    job_id = store.create_job("live", "vm", "a", "b", {})
    steering = Steering(store, job_id, ignore)
    monitor = Monitor(
        domain, PRESETS["fast"], store, job_id, steering, ignore, time.monotonic(), "hostB"
    )
    return monitor, domain, store, job_id


def test_the_switch_to_post_copy_is_made_in_the_pass_end_event_itself(tmp_path: Path) -> None:
    monitor, domain, store, job_id = _monitor(tmp_path)
    second_pass = next(
        i for i, e in enumerate(domain.trace) if e["stats"].get("memory_iteration") == 2
    )
    for domain.at in range(1, second_pass):  # pass 1, sampled by the main thread
        monitor._step()
    assert "postcopy" not in domain.calls
    domain.at = second_pass
    monitor.on_pass_end(2)  # libvirt's event thread, as pass 2 begins
    assert domain.calls[-1] == "postcopy"
    # Nothing written from the event thread: the store is the main thread's.
    assert [a.action for a in store.actions(job_id)] == []
    monitor._step()  # the main thread, woken by the same event
    assert [a.action for a in store.actions(job_id)] == ["postcopy"]
    assert store.actions(job_id)[0].reason.startswith("pass 2:")
    assert domain.calls.count("postcopy") == 1
    recorded = store.samples(job_id)
    assert [s["iteration"] for s in recorded][-2:] == [2, 2]
    store.close()


def test_a_pass_end_after_the_switch_does_nothing(tmp_path: Path) -> None:
    monitor, domain, store, _ = _monitor(tmp_path)
    domain.at = next(
        i for i, e in enumerate(domain.trace) if e["stats"].get("memory_iteration") == 2
    )
    monitor.on_pass_end(2)
    calls = list(domain.calls)
    domain.at += 1
    monitor.on_pass_end(3)  # QEMU's last sync, as post-copy starts
    assert domain.calls == calls and monitor.state.postcopy
    store.close()
