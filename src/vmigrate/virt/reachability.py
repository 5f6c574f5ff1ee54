"""Connections to the two hosts that survive a broken link: a connection closed by keepalive
is opened again when the host answers, and a host that does not answer is reported as such."""

from __future__ import annotations

import contextlib
import time

import libvirt

from vmigrate.errors import HostUnreachable
from vmigrate.model import Placement
from vmigrate.virt.connection import open_with_timeout
from vmigrate.virt.placement import locate

RECONNECT_TIMEOUT_S = 5.0


class HostLinks:
    def __init__(self, uris: dict[str, str], conns: dict[str, libvirt.virConnect]) -> None:
        self.uris = uris
        self.conns: dict[str, libvirt.virConnect | None] = dict(conns)
        self.errors: dict[str, str] = {}
        self.lost: set[str] = set()  # hosts whose connection died on the way

    def conn(self, host: str) -> libvirt.virConnect | None:
        """The host's connection, opened again if keepalive closed it; None if it is silent."""
        current = self.conns.get(host)
        if current is not None:
            with contextlib.suppress(libvirt.libvirtError):
                if current.isAlive():
                    return current
            with contextlib.suppress(libvirt.libvirtError):
                current.close()
            self.conns[host] = None
            self.lost.add(host)
        try:
            fresh = open_with_timeout(self.uris[host], host=host, timeout=RECONNECT_TIMEOUT_S)
        except HostUnreachable as err:
            self.errors[host] = str(err)
            return None
        self.conns[host] = fresh
        self.errors.pop(host, None)
        return fresh

    def locate(self, vm: str) -> Placement:
        reachable = {h: c for h in self.uris if (c := self.conn(h)) is not None}
        placement = locate(vm, reachable)
        silent = {
            h: f"unknown ({self.errors.get(h, 'no answer')})"
            for h in self.uris
            if h not in reachable
        }
        return Placement(vm, {**placement.states, **silent}, placement.persistent)

    def locate_when_known(self, vm: str, *, wait_s: float) -> Placement:
        """Where the VM is, waiting up to `wait_s` for silent hosts to answer again."""
        deadline = time.monotonic() + wait_s
        placement = self.locate(vm)
        try:
            while placement.unknown_on and time.monotonic() < deadline:
                time.sleep(2.0)
                placement = self.locate(vm)
        except KeyboardInterrupt:  # stop waiting; report what is known
            pass
        return placement

    def close(self) -> None:
        for conn in self.conns.values():
            if conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.close()
