"""`lab up`, `lab down`, `lab status`: the two-host lab as a whole."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vmigrate.errors import DriverMissing, EnvironmentProblem, LabError
from vmigrate.lab import link
from vmigrate.lab.accel import cached_accelerator
from vmigrate.lab.config import (
    LAB_HOSTS,
    LOCAL_POOL,
    LOCAL_POOL_PATH,
    SHARED_POOL,
    SHARED_POOL_PATH,
    LabHost,
    render_dir_pool_xml,
)
from vmigrate.lab.daemons import (
    DaemonRecord,
    namespace_when_ready,
    start_libvirtd,
    stop_host_processes,
)
from vmigrate.lab.heartbeat_collector import stop_all_collectors
from vmigrate.lab.paths import LAB_DIR, LAB_MARKER
from vmigrate.lab.state import load_records, save_records
from vmigrate.versions import format_version
from vmigrate.virt.connection import (
    Connection,
    LibvirtError,
    domain_state,
    open_connection,
    wait_for_connection,
)
from vmigrate.virt.errors import libvirt_errors
from vmigrate.virt.storage import pool_by_name

START_TIMEOUT_SECONDS = 30.0


@contextlib.contextmanager
def lab_files() -> Iterator[None]:
    """The lab's own files: a directory that cannot be written is a clear error."""
    try:
        yield
    except OSError as err:
        raise LabError(
            f"cannot write the lab's files: {err.filename or LAB_DIR}: {err.strerror or err}",
            fix=f"check that {LAB_DIR} (VMIGRATE_LAB_DIR) is on a writable file system with "
            "free space",
        ) from err


def require_root() -> None:
    if os.geteuid() != 0:
        raise EnvironmentProblem(
            "the lab needs root: it starts libvirt daemons in their own namespaces",
            fix="run the command again as root (sudo vmigrate lab ...)",
        )


def running_hosts() -> dict[str, DaemonRecord]:
    return {name: rec for name, rec in load_records().items() if rec.is_running()}


def connect(host: LabHost) -> Connection:
    """A connection to a lab host, with a hint to start the lab if it is down."""
    if host.name not in running_hosts():
        raise LabError(
            "the lab is not running", host=host.name, fix="start it with `vmigrate lab up`"
        )
    return open_connection(host.uri, host=host.name)


def _tail(path: Path, lines: int = 8) -> str:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return ""


def verify_drivers(conn: Connection, host: LabHost) -> None:
    """Prove by calls, not by package names, that the daemon has every driver the lab and
    vmigrate use: a daemon without its storage or network driver answers "not supported"."""
    listings = {
        "list storage pools": conn.listAllStoragePools,
        "list networks": conn.listAllNetworks,
    }
    for doing, listing in listings.items():
        try:
            with libvirt_errors(host=host.name, doing=doing):
                listing(0)
        except DriverMissing as err:
            raise LabError(
                f"{err.message}; the lab needs it for its pools and networks",
                host=host.name,
                fix=err.fix,
            ) from err


def _ensure_pools(conn: Connection, host: LabHost) -> None:
    SHARED_POOL_PATH.mkdir(parents=True, exist_ok=True)
    for name, path in ((SHARED_POOL, SHARED_POOL_PATH), (LOCAL_POOL, LOCAL_POOL_PATH)):
        with libvirt_errors(host=host.name, doing=f"set up the lab pool {name!r}"):
            pool = pool_by_name(conn, name)
            if pool is None:
                pool = conn.storagePoolDefineXML(render_dir_pool_xml(name, path), 0)
                pool.build(0)
                pool.setAutostart(True)
            if not pool.isActive():
                pool.create(0)
            pool.refresh(0)


def lab_up() -> list[HostStatus]:
    """Start both hosts (those not already running) and return when both answer."""
    require_root()
    with lab_files():
        LAB_DIR.mkdir(parents=True, exist_ok=True)
        LAB_MARKER.touch()
    records = load_records()
    fresh = not any(rec.is_running() for rec in records.values())
    if fresh:
        # Leftovers of a lab whose processes died with a session: clear them first.
        for leftover in records.values():
            stop_host_processes(leftover)
        stop_all_collectors()
        link.reset()
    started: list[LabHost] = []
    for host in LAB_HOSTS:
        existing = records.get(host.name)
        if existing is not None and existing.is_running():
            continue
        with lab_files():
            records[host.name] = start_libvirtd(host)
        started.append(host)
    try:
        for host in LAB_HOSTS:
            conn = wait_for_connection(host.uri, timeout=START_TIMEOUT_SECONDS, host=host.name)
            record = records[host.name]
            if not record.is_running():
                raise LabError(
                    f"libvirtd exited during start-up; its log says:\n{_tail(host.daemon_log)}"
                    f"{_tail(host.root / 'libvirtd.console.log')}",
                    host=host.name,
                    fix=f"is another libvirtd listening on {host.address}:16509? "
                    "Stop it, then run `vmigrate lab up` again",
                )
            records[host.name] = namespace_when_ready(record)
            try:
                verify_drivers(conn, host)
                _ensure_pools(conn, host)
            finally:
                conn.close()
    except BaseException:  # nothing half-started: stop what this call started, whatever broke
        with contextlib.suppress(OSError):  # the first error is the one to report
            save_records(records)
        for host in started:
            stop_host_processes(namespace_when_ready(records[host.name]))
        raise
    with lab_files():
        save_records(records)
    return lab_status()


@dataclass(frozen=True)
class DownReport:
    stopped_hosts: list[str]
    killed_pids: list[int]
    stopped_collectors: int
    link_reset: bool


def _refuse_foreign_lab_dir() -> None:
    """`lab down` deletes LAB_DIR as root: only ever a directory `lab up` made."""
    if LAB_DIR.exists() and not LAB_MARKER.exists():
        raise LabError(
            f"{LAB_DIR} is not a vmigrate lab directory (it has no {LAB_MARKER.name}): "
            "nothing was stopped or deleted",
            fix="check VMIGRATE_LAB_DIR; `lab down` only removes a directory `lab up` made",
        )


def lab_down() -> DownReport:
    """Stop everything the lab started, by PID, and remove its state. Safe to run twice."""
    require_root()
    _refuse_foreign_lab_dir()
    records = load_records()
    killed: list[int] = []
    for record in records.values():
        killed += stop_host_processes(record)
    collectors = stop_all_collectors()
    was_shaped = link.reset()
    if LAB_DIR.exists():
        with lab_files():
            shutil.rmtree(LAB_DIR)
    return DownReport(
        stopped_hosts=sorted(records),
        killed_pids=killed,
        stopped_collectors=collectors,
        link_reset=was_shaped,
    )


@dataclass(frozen=True)
class VmSummary:
    name: str
    state: str
    persistent: bool


@dataclass(frozen=True)
class HostStatus:
    name: str
    uri: str
    running: bool
    pid: int | None = None
    hostname: str = ""
    libvirt_version: str = ""
    qemu_version: str = ""
    accelerator: str = ""
    vms: list[VmSummary] = field(default_factory=list)
    problem: str = ""


def _host_status(host: LabHost, record: DaemonRecord | None) -> HostStatus:
    if record is None or not record.is_running():
        return HostStatus(host.name, host.uri, running=False)
    try:
        conn = open_connection(host.uri, host=host.name)
    except Exception as err:  # a status report shows every problem rather than stopping
        return HostStatus(host.name, host.uri, running=True, pid=record.pid, problem=str(err))
    try:
        vms = []
        for dom in conn.listAllDomains(0):
            # A domain may vanish while we look (a restarted libvirtd kills half-migrated ones).
            with contextlib.suppress(LibvirtError):
                vms.append(VmSummary(dom.name(), domain_state(dom), bool(dom.isPersistent())))
        return HostStatus(
            name=host.name,
            uri=host.uri,
            running=True,
            pid=record.pid,
            hostname=conn.getHostname(),
            libvirt_version=format_version(conn.getLibVersion()),
            qemu_version=format_version(conn.getVersion()),
            accelerator=cached_accelerator() or "not probed yet",
            vms=sorted(vms, key=lambda vm: vm.name),
        )
    except LibvirtError as err:  # the daemon died or restarted as we asked
        return HostStatus(
            host.name, host.uri, running=True, pid=record.pid, problem=err.get_error_message()
        )
    finally:
        with contextlib.suppress(LibvirtError):
            conn.close()


def lab_status() -> list[HostStatus]:
    records = load_records()
    return [_host_status(host, records.get(host.name)) for host in LAB_HOSTS]
