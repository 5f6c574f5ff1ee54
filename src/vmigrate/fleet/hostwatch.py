"""The hosts of the moves in flight, probed every few seconds in the background, so a host
whose libvirtd died is known within seconds (not when a child's own connection times out)
and the scheduler's loop never waits on a silent host."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from typing import Protocol

from vmigrate.errors import VmigrateError
from vmigrate.hosts import HostRef
from vmigrate.virt.connection import open_with_timeout, signals_to_main_thread

PROBE_EVERY_S = 3.0
PROBE_TIMEOUT_S = 3.0


def host_answers(ref: HostRef, timeout: float = PROBE_TIMEOUT_S) -> bool:
    try:
        open_with_timeout(ref.uri, host=ref.name, timeout=timeout).close()
    except VmigrateError:
        return False
    return True


class HostWatch(Protocol):
    def watch(self, hosts: Collection[str]) -> None:
        """Probe these hosts from now on (and no others)."""

    def failures(self, host: str) -> int:
        """Probes in a row the host did not answer (0 after one it did)."""

    def answers(self, host: str) -> bool:
        """Probe the host now, and wait for the answer."""

    def close(self) -> None: ...


class ProbingWatch:
    """One daemon thread per watched host."""

    def __init__(
        self,
        refs: dict[str, HostRef],
        probe: Callable[[HostRef], bool] = host_answers,
        every_s: float = PROBE_EVERY_S,
    ) -> None:
        self.refs, self.probe, self.every_s = refs, probe, every_s
        self._lock = threading.Lock()
        self._failures: dict[str, int] = {}
        self._stops: dict[str, threading.Event] = {}

    def watch(self, hosts: Collection[str]) -> None:
        wanted = {h for h in hosts if h in self.refs}
        for host in set(self._stops) - wanted:
            self._stops.pop(host).set()
        for host in wanted - set(self._stops):
            stop = self._stops[host] = threading.Event()
            threading.Thread(
                target=self._loop, args=(host, stop), daemon=True, name=f"probe {host}"
            ).start()

    def _loop(self, host: str, stop: threading.Event) -> None:
        signals_to_main_thread()
        while not stop.is_set():
            self._note(host, self.probe(self.refs[host]))
            stop.wait(self.every_s)

    def _note(self, host: str, answered: bool) -> None:
        with self._lock:
            self._failures[host] = 0 if answered else self._failures.get(host, 0) + 1

    def failures(self, host: str) -> int:
        with self._lock:
            return self._failures.get(host, 0)

    def answers(self, host: str) -> bool:
        ref = self.refs.get(host)
        if ref is None:
            return True
        answered = self.probe(ref)
        self._note(host, answered)
        return answered

    def close(self) -> None:
        for stop in self._stops.values():
            stop.set()
        self._stops.clear()
