"""The inventory the API shows: every known host's facts, read through the same library the
`vmigrate hosts` command uses, in a worker thread, and kept a few seconds so that many
viewers cost the hosts one read (single flight: concurrent requests wait for one gather)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmigrate.capacity import MIB
from vmigrate.errors import NotFound, UsageError

if TYPE_CHECKING:  # the server imports without libvirt; only the gather reads hosts
    from vmigrate.preflight import HostSession

#: How long an inventory is shown before the hosts are read again.
DEFAULT_TTL_S = 5.0


@dataclass(frozen=True)
class Snapshot:
    hosts: list[dict[str, Any]]
    clusters: dict[str, list[str]]
    taken: float
    took_s: float
    by_name: dict[str, dict[str, Any]] = field(default_factory=dict)

    def host(self, name: str) -> dict[str, Any]:
        """A host by name or URI; an unknown one is refused as the CLI refuses it."""
        found = self.by_name.get(name)
        if found is None:
            for row in self.hosts:
                if row["uri"] == name:
                    return row
            known = ", ".join(sorted(self.by_name)) or "none"
            raise NotFound(
                f"unknown host {name!r} (known hosts: {known})",
                fix="pass a host of `vmigrate hosts`, or add it to the hosts file",
            )
        return found

    def where_is(self, vm: str) -> list[str]:
        """The hosts that define or run VM."""
        return [
            row["name"]
            for row in self.hosts
            if any(guest["name"] == vm for guest in row.get("vms", []))
        ]

    def vm(self, vm: str) -> str:
        """The host a VM is on (running there if it is defined on several)."""
        hosts = self.where_is(vm)
        if not hosts:
            raise NotFound(
                f"no VM named {vm!r} on any known host",
                vm=vm,
                fix="list the VMs with `vmigrate hosts` (or `vmigrate lab status`)",
            )
        return hosts[0]

    def cluster(self, name: str) -> list[str]:
        if name not in self.clusters:
            known = ", ".join(sorted(self.clusters)) or "none"
            raise NotFound(
                f"unknown cluster {name!r} (clusters: {known})",
                fix="define [clusters.NAME] hosts = [...] in the hosts file, or pick one of those",
            )
        return self.clusters[name]


def snapshot_of(
    rows: list[dict[str, Any]], clusters: dict[str, list[str]], started: float
) -> Snapshot:
    return Snapshot(
        rows,
        clusters,
        time.time(),
        time.monotonic() - started,
        {row["name"]: row for row in rows},
    )


def session_row(session: HostSession, cluster: str | None) -> dict[str, Any]:
    """`vmigrate hosts --json`'s row, each VM with its memory and vCPUs for the bars."""
    from vmigrate.cli.hosts import host_row

    row = host_row(session, cluster, None)
    if session.facts is not None:
        sizes = {g.name: g for g in session.facts.guests}
        row["vms"] = [
            {
                **vm,
                "memory_mib": sizes[vm["name"]].memory_bytes // MIB,
                "vcpus": sizes[vm["name"]].vcpus,
            }
            for vm in row["vms"]
        ]
    return row


def gather_hosts(hosts_file: Path | None) -> Snapshot:
    """Every known host (hosts file, the running lab), read in parallel, with its cluster."""
    from vmigrate.fleet.gather import close_sessions, open_sessions
    from vmigrate.hosts import cluster_names, cluster_of, known_hosts, resolve_cluster

    started = time.monotonic()
    refs = known_hosts(hosts_file)
    clusters: dict[str, list[str]] = {}
    for name in cluster_names(hosts_file):
        try:
            clusters[name] = [ref.name for ref in resolve_cluster(name, hosts_file)]
        except UsageError:  # the lab stopped between the two reads
            continue
    sessions = open_sessions(refs)
    try:
        rows = [session_row(sessions[ref.name], cluster_of(ref, hosts_file)) for ref in refs]
    finally:
        close_sessions(sessions)
    return snapshot_of(rows, clusters, started)


Gatherer = Callable[[], Snapshot]


class Inventory:
    """The last snapshot, read again when older than `ttl_s`."""

    def __init__(self, gather: Gatherer, ttl_s: float = DEFAULT_TTL_S) -> None:
        self._gather = gather
        self.ttl_s = ttl_s
        self._snapshot: Snapshot | None = None
        self._lock: asyncio.Lock | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inventory")

    def cached(self) -> Snapshot | None:
        """The last snapshot, however old (the metrics use this: a scrape never reads hosts)."""
        return self._snapshot

    def _fresh(self) -> Snapshot | None:
        snap = self._snapshot
        if snap is not None and time.time() - snap.taken < self.ttl_s:
            return snap
        return None

    async def snapshot(self) -> Snapshot:
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            fresh = self._fresh()
            if fresh is not None:
                return fresh
            snap = await asyncio.wrap_future(self._pool.submit(self._gather))
            self._snapshot = snap
            return snap

    def invalidate(self) -> None:
        """After an action that moves VMs or marks hosts: the next read goes to the hosts."""
        self._snapshot = None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
