"""Every domain a host knows (running or only defined), read from its libvirt, and a watch
on the domains that appear there: what a rolling upgrade asks of a host right before, and
while, the operator's command runs on it."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import libvirt

from vmigrate.virt.connection import domain_state, unless_vanished
from vmigrate.virt.errors import libvirt_errors


@dataclass(frozen=True)
class HostDomain:
    name: str
    state: str  # running, paused, shut off, ...
    persistent: bool


def _domain(domain: libvirt.virDomain) -> HostDomain:
    return HostDomain(domain.name(), domain_state(domain), bool(domain.isPersistent()))


def domains_on(conn: libvirt.virConnect, *, host: str) -> tuple[HostDomain, ...]:
    """Every domain of the host, active or defined; a failed listing raises (naming the
    host): "no domain there" is never claimed from a listing that did not happen."""
    with libvirt_errors(host=host, doing="list its domains"):
        found = []
        for domain in conn.listAllDomains(0):
            seen = unless_vanished(partial(_domain, domain))
            if seen is not None:
                found.append(seen)
        return tuple(sorted(found, key=lambda d: d.name))


#: The lifecycle events that put a domain on a host (defined, started, resumed).
_APPEARING = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
}


@dataclass(frozen=True)
class Appeared:
    vm: str
    event: str  # defined | started | resumed
    at: float  # epoch seconds, as this process received the event


class AppearingWatch:
    """Domains defined, started or resumed on the host from the moment it is made: the
    listing made right after it cannot miss one that appears in between."""

    def __init__(self, conn: libvirt.virConnect, *, host: str) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._seen: list[Appeared] = []
        with libvirt_errors(host=host, doing="watch its domains' lifecycle events"):
            self._id = int(
                conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, None
                )
            )

    def _on_event(
        self, _conn: Any, domain: libvirt.virDomain, event: int, _detail: int, _opaque: Any
    ) -> None:
        what = _APPEARING.get(event)
        if what is None:
            return
        with self._lock:
            self._seen.append(Appeared(domain.name(), what, time.time()))

    def appeared(self) -> list[Appeared]:
        with self._lock:
            return list(self._seen)

    def close(self) -> None:
        """Stop watching; a connection already dropped (the host rebooted) has nothing left
        to stop."""
        with contextlib.suppress(libvirt.libvirtError):
            self._conn.domainEventDeregisterAny(self._id)
