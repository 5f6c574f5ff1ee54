"""The store's events table, on SQLite and on a real PostgreSQL server: each job's events in
order, a store-wide `seq` a follower never sees go backwards, and stores of schema version 2
brought to 3 in place."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

from vmigrate.store import SCHEMA_VERSION, JobStore, StoredEvent, StoreLocation

FIXTURE_V2 = Path(__file__).parent / "data" / "stores" / "main-0382b09-v2.sqlite"


def bodies(events: list[StoredEvent]) -> list[dict[str, object]]:
    return [e.body for e in events]


def test_events_are_read_back_in_order_per_job_and_store_wide(store_at: StoreLocation) -> None:
    store = JobStore(store_at)
    live = store.create_job("live", "web1", "hostA", "hostB", {})
    cold = store.create_job("cold", "db1", "hostA", "hostB", {})
    first = store.append_event(live, "job", {"event": "job", "job_id": live})
    second = store.append_event(cold, "copy", {"event": "copy", "path": "/d.qcow2", "done": 0})
    third = store.append_event(live, "sample", {"event": "sample", "percent": 12.5})
    assert first < second < third

    everything = store.events_after(0)
    assert [(e.seq, e.job_id, e.kind) for e in everything] == [
        (first, live, "job"),
        (second, cold, "copy"),
        (third, live, "sample"),
    ]
    assert everything[2].body == {"event": "sample", "percent": 12.5}
    assert everything[0].t <= everything[2].t
    assert bodies(store.events_after(0, job_id=live)) == [
        {"event": "job", "job_id": live},
        {"event": "sample", "percent": 12.5},
    ]
    assert [e.seq for e in store.events_after(first)] == [second, third]
    assert [e.seq for e in store.events_after(first, job_id=live)] == [third]
    assert [e.seq for e in store.events_after(0, limit=2)] == [first, second]
    assert store.events_after(third) == []
    # Another process's store sees them too.
    assert JobStore(store_at).events_after(0) == everything


def test_a_follower_misses_no_event_of_writers_at_once(store_at: StoreLocation) -> None:
    # Two jobs write from two connections while a third follows with events_after(last):
    # a seq handed out before another but made visible after it would be skipped.
    writers = [JobStore(store_at), JobStore(store_at)]
    jobs = [w.create_job("live", f"vm{i}", "hostA", "hostB", {}) for i, w in enumerate(writers)]
    follower = JobStore(store_at)
    per_writer = 150

    def write(store: JobStore, job: int) -> None:
        for n in range(per_writer):
            store.append_event(job, "sample", {"n": n})

    threads = [
        threading.Thread(target=write, args=pair) for pair in zip(writers, jobs, strict=True)
    ]
    for thread in threads:
        thread.start()
    seen: list[StoredEvent] = []
    while True:
        writing = any(thread.is_alive() for thread in threads)
        seen += follower.events_after(seen[-1].seq if seen else 0, limit=50)
        if not writing and not follower.events_after(seen[-1].seq if seen else 0):
            break
    for thread in threads:
        thread.join()
    assert len(seen) == 2 * per_writer
    assert seen == follower.events_after(0, limit=10_000)
    for job in jobs:  # each job's events in the order it wrote them
        assert [e.body["n"] for e in seen if e.job_id == job] == list(range(per_writer))


def test_a_version_2_store_written_by_main_is_migrated_after_a_backup(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    shutil.copyfile(FIXTURE_V2, path)
    store = JobStore(path)
    assert store.schema_version() == SCHEMA_VERSION == 3
    jobs = {r.id: r for r in store.jobs()}
    assert {(r.kind, r.vm, r.state) for r in jobs.values()} == {
        ("live", "web1", "completed"),
        ("cold", "db1", "failed"),
    }
    assert [s["memory_remaining"] for s in store.samples(1)] == [1000]
    assert [s.name for s in store.steps(2)] == ["shutdown"]
    assert store.events_after(0) == []
    seq = store.append_event(1, "done", {"event": "done", "outcome": "completed"})
    assert [(e.seq, e.job_id) for e in store.events_after(0)] == [(seq, 1)]
    # The backup is main's version 2 store as it was: no events table.
    (backup,) = tmp_path.glob("jobs.sqlite.v2-backup-*")
    with sqlite3.connect(backup) as old:
        tables = {row[0] for row in old.execute("SELECT name FROM sqlite_master")}
        assert "events" not in tables and "jobs" in tables
        assert old.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("2",)
    store.close()
    JobStore(path).close()  # opened again: no second migration, no second backup
    assert len(list(tmp_path.glob("jobs.sqlite.v2-backup-*"))) == 1


def test_a_version_2_store_is_migrated_in_place_on_both_databases(
    store_at: StoreLocation,
) -> None:
    # Version 3 is version 2 with the events table: take it away to have a version 2 store.
    store = JobStore(store_at)
    job = store.create_job("cold", "db1", "hostA", "hostB", {"k": "v"})
    store._db.run("DROP TABLE events")
    store._db.run("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    store.close()
    store = JobStore(store_at)
    assert store.schema_version() == 3
    assert store.job(job).params == {"k": "v"}
    seq = store.append_event(job, "notice", {"message": "hello"})
    assert store.events_after(0, job_id=job)[0].seq == seq
