"""A link that breaks during post-copy: say so, never abort, and see the migration through.

In post-copy the guest already runs on the destination while part of its memory is still on
the source, so aborting or destroying either side would lose it. What works in our lab
(libvirt 11.3, QEMU 10.0), measured: with the link cut, QEMU's TCP stream stalls but stays
open, and once the link is back TCP retransmits and post-copy finishes by itself, even after
libvirt's keepalive has marked the job "post-copy failed" and the migrate call has returned
(libvirt then completes the migration unattended). libvirt's own `--postcopy-resume`, needed
only when QEMU itself dropped the connection, crashes the destination's libvirtd 11.2-11.3
(fixed in 11.4); docs/lab.md has the evidence.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from vmigrate.errors import VmigrateError
from vmigrate.virt.connection import find_domain
from vmigrate.virt.migration import job_stats
from vmigrate.virt.reachability import HostLinks
from vmigrate.virt.recovery import observe

POLL_S = 1.0


class LinkWatch:
    """Notices, once each, that data stopped reaching the destination and that it flows again."""

    def __init__(self, stall_s: float, destination: str, note: Callable[[str], None]) -> None:
        self.stall_s, self.destination, self.note = stall_s, destination, note
        self.last_processed: int | None = None
        self.last_move = time.monotonic()
        self.broken = False

    def update(self, processed: int) -> None:
        now = time.monotonic()
        if processed != self.last_processed:
            self.last_processed, self.last_move = processed, now
            if self.broken:
                self.broken = False
                self.note(f"data reaches {self.destination} again: post-copy continues")
            return
        if not self.broken and now - self.last_move >= self.stall_s:
            self.broken = True
            self.note(
                f"nothing has reached {self.destination} for {self.stall_s:g} s in post-copy: "
                "the link is broken. The guest runs there and waits for memory still on the "
                "source, so vmigrate does not abort (that would lose it) and waits for the link"
            )


FINISHED, TIMED_OUT, DESTINATION_GONE = "finished", "timed out", "destination gone"
NEVER_SWITCHED = "never switched"  # the job failed before the switch: the source runs on


def wait_for_postcopy(
    vm: str,
    links: HostLinks,
    source: str,
    destination: str,
    watch: LinkWatch,
    *,
    wait_s: float,
) -> str:
    """After the migrate call returned during post-copy, wait until the source's QEMU has
    handed everything over and the destination runs the guest on its own (libvirt stops
    the source and marks the destination "migrated"): FINISHED. TIMED_OUT after `wait_s`;
    DESTINATION_GONE at once if the guest stopped existing on the destination (its QEMU
    died: post-copy's one unrecoverable failure, since each side holds half of the guest)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        with contextlib.suppress(VmigrateError):  # a host that fails now: poll again
            status = _status(vm, links, source, destination, watch)
            if status is not None:
                return status
        time.sleep(POLL_S)
    return TIMED_OUT


def _status(
    vm: str, links: HostLinks, source: str, destination: str, watch: LinkWatch
) -> str | None:
    src, dst = links.conn(source), links.conn(destination)
    if src is None or dst is None:
        return None
    before = observe(src, source, "", vm)
    if before.state == "running" and not before.in_postcopy:
        return NEVER_SWITCHED  # libvirt resumed the source: it still holds the whole guest
    after = observe(dst, destination, "", vm)
    if not after.exists or after.state in ("shut off", "crashed"):
        return DESTINATION_GONE
    if before.exists and before.state != "shut off":
        domain = find_domain(src, vm)
        stats = job_stats(domain) if domain is not None else {}
        with contextlib.suppress(KeyError, TypeError, ValueError):
            watch.update(int(stats["memory_processed"]) + int(stats.get("disk_processed", 0)))
        return None
    # A source that is gone while the destination still waits for pages is not a success.
    return FINISHED if after.state == "running" and not after.in_postcopy else None
