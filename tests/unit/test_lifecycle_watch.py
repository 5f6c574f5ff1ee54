"""The cold move's lifecycle watch over libvirt's own test driver (a real driver with real
events; its QEMU-side figures are made up, so only what libvirt itself decides is tested):
the shutdown returns once libvirt says the guest stopped, the watch of a started guest fails
on its stop, and where a start or stop ended is what counts."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from vmigrate.virt.connection import open_connection
from vmigrate.virt.lifecycle_watch import (
    LifecycleWatch,
    StoppedRunning,
    shutdown_and_wait,
    watch_it_run,
)

UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"
NODE = f"""<node>
  <domain type='test'>
    <name>guest</name><uuid>{UUID}</uuid>
    <memory>262144</memory><vcpu>1</vcpu><os><type>hvm</type></os>
  </domain>
</node>"""


@pytest.fixture
def host(tmp_path: Path) -> Iterator[libvirt.virConnect]:
    """A private test host, opened as vmigrate opens hosts (with libvirt's event loop)."""
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    conn = open_connection(f"test://{node}")
    yield conn
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()


def _until(what: str, check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_the_shutdown_returns_once_the_guest_stopped(host: libvirt.virConnect) -> None:
    domain = host.lookupByName("guest")
    assert shutdown_and_wait(host, domain, timeout=10)
    assert not domain.isActive()


def test_a_guest_stopped_while_watched_fails_the_watch(host: libvirt.virConnect) -> None:
    domain = host.lookupByName("guest")
    watch = LifecycleWatch(host, UUID)
    try:
        domain.destroy()
        _until("the stop event", lambda: watch.stopped() is not None)
        with pytest.raises(StoppedRunning, match="stopped"):
            watch_it_run(domain, watch, (), at_most=3.0)
    finally:
        watch.close()


def test_a_paused_guest_fails_the_watch(host: libvirt.virConnect) -> None:
    domain = host.lookupByName("guest")
    watch = LifecycleWatch(host, UUID)
    try:
        domain.suspend()
        with pytest.raises(StoppedRunning, match="paused"):
            watch_it_run(domain, watch, (), at_most=30.0)
    finally:
        watch.close()


def test_a_guest_whose_vcpus_run_is_seen_running_before_the_bound(
    host: libvirt.virConnect,
) -> None:
    domain = host.lookupByName("guest")
    watch = LifecycleWatch(host, UUID)
    try:
        seen = watch_it_run(domain, watch, (), at_most=30.0)
    finally:
        watch.close()
    assert seen.vcpu_ms > 0 and "vCPUs ran" in seen.why, seen
    assert seen.seconds < 30.0


def test_only_where_the_starts_and_stops_ended_counts(host: libvirt.virConnect) -> None:
    domain = host.lookupByName("guest")
    watch = LifecycleWatch(host, UUID)
    try:
        domain.suspend()
        _until("the pause", lambda: watch.stopped() is not None)
        assert "paused" in (watch.stopped() or "")
        domain.resume()  # a restore pauses and resumes on its way
        _until("the resume", lambda: watch.stopped() is None)
    finally:
        watch.close()
