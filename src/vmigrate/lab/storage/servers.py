"""Start, stop and report the lab's storage servers as a set (`lab up --storage`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from vmigrate.errors import UsageError
from vmigrate.lab.processes import mount_namespace_of, pids_in_mount_namespace
from vmigrate.lab.storage import ceph, iscsi, nfs
from vmigrate.lab.storage.access import lift, restrict_to_root
from vmigrate.lab.storage.common import (
    BACKENDS,
    STORAGE_DIR,
    ServerRecord,
    load_servers,
    save_servers,
)

_STARTERS: dict[str, Callable[[], ServerRecord]] = {
    "iscsi": iscsi.start_target,
    "rbd": ceph.start_ceph,
    "nfs": nfs.start_nfs,
}
_STOPPERS: dict[str, Callable[[ServerRecord], list[int]]] = {
    "iscsi": iscsi.stop_target,
    "rbd": ceph.stop_ceph,
    "nfs": nfs.stop_nfs,
}
ADDRESSES = {"iscsi": iscsi.ISCSI_ADDRESS, "rbd": ceph.CEPH_ADDRESS, "nfs": nfs.NFS_ADDRESS}
_SERVER = {"iscsi": "tgt (iSCSI target)", "rbd": "Ceph (mon, mgr, osd)", "nfs": "NFS-Ganesha"}


def parse_backends(text: str) -> tuple[str, ...]:
    """`iscsi,rbd,nfs` (any subset, any order) as a tuple in BACKENDS order."""
    asked = {part.strip().lower() for part in text.split(",") if part.strip()}
    unknown = sorted(asked - set(BACKENDS))
    if unknown:
        raise UsageError(
            f"unknown storage backend {', '.join(unknown)}",
            fix=f"use a comma-separated subset of {','.join(BACKENDS)}",
        )
    return tuple(b for b in BACKENDS if b in asked)


def start_servers(backends: Iterable[str]) -> dict[str, ServerRecord]:
    """Start those of `backends` not running (a dead one is started again); returns all the
    running servers. A server that fails to start leaves nothing of itself behind."""
    servers = load_servers()
    wanted = [b for b in backends if not (b in servers and servers[b].running())]
    if wanted:  # root-only before any of them listens
        restrict_to_root(ADDRESSES[b] for b in wanted)
    for backend in wanted:
        record = servers.get(backend)
        if record is not None:  # died: clear its remains first
            _STOPPERS[backend](record)
        started = time.monotonic()
        record = _STARTERS[backend]()
        record.start_seconds = round(time.monotonic() - started, 2)
        record.stamp()
        servers[backend] = record
        save_servers(servers)
    return {name: rec for name, rec in servers.items() if rec.running()}


def stop_servers() -> list[int]:
    """Stop every recorded server; the PIDs that had to be killed."""
    killed: list[int] = []
    for backend, record in load_servers().items():
        killed += _STOPPERS[backend](record)
    lift(ADDRESSES.values())
    if STORAGE_DIR.exists():
        save_servers({})
    return killed


@dataclass(frozen=True)
class StorageStatus:
    backend: str
    server: str
    address: str
    port: int
    running: bool
    health: str  # e.g. "HEALTH_OK", "serving", "not answering"
    start_seconds: float
    rss_mib: int


def _rss_mib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text(errors="replace")
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total // 1024


def _health(backend: str) -> str:
    if backend == "rbd":
        return ceph.health() or "not answering"
    healthy = iscsi.healthy() if backend == "iscsi" else nfs.healthy()
    return "serving" if healthy else "not answering"


def storage_status() -> list[StorageStatus]:
    statuses = []
    for backend, record in load_servers().items():
        running = record.running()
        statuses.append(
            StorageStatus(
                backend,
                _SERVER[backend],
                record.address,
                record.port,
                running,
                _health(backend) if running else "stopped",
                record.start_seconds,
                _rss_mib(server_pids(record)),
            )
        )
    return statuses


def server_pids(record: ServerRecord) -> list[int]:
    """Every process of a server, those it started included (NFS: ganesha, rpcbind)."""
    if record.backend != "nfs":
        return list(record.pids)
    namespace = mount_namespace_of(record.pids[0])
    return sorted(set(record.pids) | set(pids_in_mount_namespace(namespace)))
