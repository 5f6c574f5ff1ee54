"""The job store from an async server: each call runs in a small thread pool, each thread
with its own open store (a SQLite file or a PostgreSQL connection), opened on first use."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from vmigrate.store import JobStore, StoreLocation

T = TypeVar("T")
#: Store calls are short; a few threads keep many viewers from queueing behind one another.
STORE_THREADS = 8


class StoreAccess:
    def __init__(self, location: StoreLocation | None) -> None:
        self.location = location
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=STORE_THREADS, thread_name_prefix="store")
        self._all: list[JobStore] = []
        self._lock = threading.Lock()

    def _store(self) -> JobStore:
        store: JobStore | None = getattr(self._local, "store", None)
        if store is None:
            store = JobStore(self.location)
            self._local.store = store
            with self._lock:
                self._all.append(store)
        return store

    async def run(self, work: Callable[[JobStore], T]) -> T:
        """Run WORK with a store, off the event loop."""
        return await asyncio.wrap_future(self._pool.submit(lambda: work(self._store())))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            for store in self._all:
                store.close()
            self._all.clear()
