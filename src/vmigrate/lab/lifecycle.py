"""`lab up`, `lab down`, `lab status`: the lab as a whole (two hosts by default, up to four)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from vmigrate.errors import DriverMissing, EnvironmentProblem, LabError
from vmigrate.lab import link
from vmigrate.lab.accel import cached_accelerator
from vmigrate.lab.config import (
    DEFAULT_HOST_COUNT,
    HOST_A,
    LAB_HOSTS,
    LOCAL_POOL,
    LOCAL_POOL_PATH,
    SHARED_POOL,
    SHARED_POOL_PATH,
    LabHost,
    lab_hosts,
    render_dir_pool_xml,
    up_command,
)
from vmigrate.lab.credentials import make_lab_credentials
from vmigrate.lab.daemons import (
    DaemonRecord,
    namespace_when_ready,
    start_libvirtd,
    stop_host_processes,
)
from vmigrate.lab.heartbeat_collector import stop_all_collectors
from vmigrate.lab.paths import LAB_DIR, LAB_MARKER
from vmigrate.lab.processes import is_alive
from vmigrate.lab.releases import SYSTEM_RELEASE, Release, parse_version_specs, release_named
from vmigrate.lab.rootfs import ensure_root
from vmigrate.lab.sshd import SSH_PORT, start_sshd, stop_sshd, wait_for_port
from vmigrate.lab.state import (
    load_records,
    running_lab_hosts,
    save_records,
    serves_insecure_tcp,
)
from vmigrate.lab.storage import nfs
from vmigrate.lab.storage.hosts import prepare_host
from vmigrate.lab.storage.servers import start_servers, stop_servers
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
    """A connection to a lab host, with a hint to start the lab (or that host) if it is down."""
    running = running_lab_hosts()
    if host not in running:
        what = (
            f"this lab host is not running (the lab runs {', '.join(h.name for h in running)})"
            if running
            else "the lab is not running"
        )
        raise LabError(what, host=host.name, fix=f"start it with `{up_command(host)}`")
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


def _wanted_hosts(count: int | None, running: tuple[LabHost, ...]) -> tuple[LabHost, ...]:
    """The hosts `lab up` makes sure run: the first `count`; without a count, as many as
    reach the last running host (a host of them that died is restarted), or the default."""
    if count is not None:
        return lab_hosts(count)
    reach = max((LAB_HOSTS.index(host) + 1 for host in running), default=0)
    return lab_hosts(max(reach, DEFAULT_HOST_COUNT))


def hosts_beyond(count: int | None, hosts: list[HostStatus]) -> list[str]:
    """The running hosts past the first `count`: `lab up --hosts N` leaves them running."""
    if count is None:
        return []
    wanted = {host.name for host in lab_hosts(count)}
    return [host.name for host in hosts if host.running and host.name not in wanted]


def _releases_for(
    count: int | None, version_specs: Collection[str]
) -> dict[str, tuple[Release, Path]]:
    """Each `--version HOST=RELEASE` checked against the hosts this call starts and what
    runs now, and its root built (or found cached): all before anything changes."""
    if not version_specs:
        return {}
    releases = parse_version_specs(version_specs, _wanted_hosts(count, running_lab_hosts()))
    running = running_hosts()
    for name, release in releases.items():
        record = running.get(name)
        if record is not None and record.release != release.name:
            raise LabError(
                f"it already runs on {record.release or SYSTEM_RELEASE}, not {release.name}: "
                "a running host keeps its release",
                host=name,
                fix="`vmigrate lab down` and start the lab again with this --version",
            )
    return {name: (release, ensure_root(release)) for name, release in releases.items()}


def lab_up(
    count: int | None = None,
    *,
    insecure_tcp: bool | None = None,
    storage: Collection[str] = (),
    versions: Collection[str] = (),
) -> list[HostStatus]:
    """Start the first `count` hosts (those not already running) and return when they
    answer. Without a count: the hosts running now, or the default two when none run.
    Hosts running beyond `count` keep running; `lab down` stops them.

    Each host serves qemu+tls and qemu+ssh; plain TCP only with `insecure_tcp` (decided when
    the lab starts: None keeps what a running lab has).

    `storage`: storage servers to start as well (iscsi, rbd, nfs); every host gets pools for
    all that run, those started earlier included.

    `versions`: `HOST=RELEASE` (vmigrate.lab.releases), hosts that run that release's QEMU
    and libvirt from a root of their own instead of the machine's."""
    require_root()
    roots = _releases_for(count, versions)
    with lab_files():
        LAB_DIR.mkdir(parents=True, exist_ok=True)
        LAB_DIR.chmod(0o755)
        LAB_MARKER.touch()
    records = load_records()
    fresh = not any(rec.is_running() for rec in records.values())
    if fresh:
        # Leftovers of a lab whose processes died with a session: clear them first, and
        # forget them, so a host this call does not start is not listed as stopped.
        for leftover in records.values():
            stop_host_processes(leftover)
        stop_all_collectors()
        stop_servers()
        link.reset()
        records = {}
        with lab_files():
            _note_mount_points()
            make_lab_credentials()
        tcp = bool(insecure_tcp)
    else:
        tcp = serves_insecure_tcp()
        if insecure_tcp is not None and insecure_tcp != tcp:
            raise LabError(
                "the lab runs "
                + ("with plain TCP open" if tcp else "without plain TCP")
                + ": its transports are chosen when it starts",
                fix="`vmigrate lab down`, then `vmigrate lab up"
                + (" --insecure-tcp`" if insecure_tcp else "`"),
            )
    wanted = _wanted_hosts(count, () if fresh else running_lab_hosts())
    started: list[LabHost] = []
    for host in wanted:
        existing = records.get(host.name)
        if existing is not None and existing.is_running():
            continue
        if existing is not None:
            # Its QEMU processes may outlive libvirtd (the new one reconnects to them), but
            # its old sshd holds the host's port 22.
            stop_sshd(existing.mount_namespace)
        release, root = roots.get(host.name, (None, None))
        if release is None and existing is not None and existing.release:
            # A host of another release that died comes back on that release.
            release = release_named(existing.release)
            root = ensure_root(release)
        with lab_files():
            records[host.name] = start_libvirtd(
                host,
                insecure_tcp=tcp,
                root=root,
                release=release.name if release is not None else "",
            )
        started.append(host)
    try:
        for host in wanted:
            wait_until_ready(host, records, start_ssh=host in started)
    except BaseException:  # nothing half-started: stop what this call started, whatever broke
        with contextlib.suppress(OSError):  # the first error is the one to report
            save_records(records, insecure_tcp=tcp)
        for host in started:
            stop_host_processes(namespace_when_ready(records[host.name]))
        raise
    with lab_files():
        save_records(records, insecure_tcp=tcp)
    # A link shaped before this call carries hostA's traffic to the new hosts too.
    link.cover([host.address for host in started if host != HOST_A])
    with lab_files():
        servers = start_servers(storage)
    if servers:
        for host in running_lab_hosts():
            conn = open_connection(host.uri, host=host.name)
            try:
                prepare_host(conn, host, servers)
            finally:
                conn.close()
    return lab_status()


def wait_until_ready(host: LabHost, records: dict[str, DaemonRecord], *, start_ssh: bool) -> None:
    """Wait for the host to answer, record its namespace, prove its drivers, set up pools,
    and start its sshd."""
    conn = wait_for_connection(host.uri, timeout=START_TIMEOUT_SECONDS, host=host.name)
    try:
        record = records[host.name]
        if not record.is_running():
            raise LabError(
                f"libvirtd exited during start-up; its log says:\n{_tail(host.daemon_log)}"
                f"{_tail(host.root / 'libvirtd.console.log')}",
                host=host.name,
                fix=f"is another libvirtd listening on {host.address}:16514? "
                f"Stop it, then run `{up_command(host)}` again",
            )
        records[host.name] = namespace_when_ready(record)
        verify_drivers(conn, host)
        _ensure_pools(conn, host)
    finally:
        conn.close()
    if start_ssh:
        sshd = start_sshd(host, records[host.name].pid)
        log = host.root / "sshd.log"
        wait_for_port(host.address, SSH_PORT, timeout=10.0, what=f"{host.name}'s sshd", log=log)
        time.sleep(0.2)  # an sshd that cannot bind exits at once, while another one answers
        if not is_alive(sshd):
            raise LabError(
                f"its sshd exited: {_tail(log).strip() or 'no output'}; something else "
                f"answers on {host.address}:{SSH_PORT}",
                host=host.name,
                fix=f"stop the sshd that listens on {host.address}:{SSH_PORT} (or on every "
                f"address, 0.0.0.0:{SSH_PORT}), then run `{up_command(host)}` again",
            )


@dataclass(frozen=True)
class DownReport:
    stopped_hosts: list[str]
    killed_pids: list[int]
    stopped_collectors: int
    link_reset: bool


#: Directories of the machine the hosts' private mounts and sshd need: made if missing, and
#: removed again by `lab down` when it made them and they are still empty.
_MOUNT_POINTS = ("/etc/pki", "/root/.ssh", "/run/sshd")
_MADE_DIRS = LAB_DIR / "made-dirs.json"


def _note_mount_points() -> None:
    if not _MADE_DIRS.exists():
        missing = [path for path in _MOUNT_POINTS if not Path(path).exists()]
        _MADE_DIRS.write_text(json.dumps(missing))


def _remove_mount_points() -> None:
    try:
        made = json.loads(_MADE_DIRS.read_text())
    except (OSError, ValueError):
        return
    for path in made if isinstance(made, list) else []:
        with contextlib.suppress(OSError):  # not empty any more, or gone: keep it
            Path(str(path)).rmdir()


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
    killed += stop_servers()
    nfs.unpin_namespace()  # whatever servers.json says: a killed start leaves no record
    _remove_mount_points()
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
    uris: dict[str, str] = field(default_factory=dict)  # by transport: tls, ssh, tcp
    pid: int | None = None
    address: str = ""
    capacity_mib: int = 0  # what the lab host declares (LabHost.capacity_mib)
    vcpus: int = 0
    release: str = ""  # the packages it runs: SYSTEM_RELEASE, or a release's root
    hostname: str = ""
    libvirt_version: str = ""
    qemu_version: str = ""
    accelerator: str = ""
    vms: list[VmSummary] = field(default_factory=list)
    problem: str = ""


def _host_status(host: LabHost, record: DaemonRecord | None, *, insecure_tcp: bool) -> HostStatus:
    declared = HostStatus(
        host.name,
        host.uri,
        running=False,
        uris=host.uris(insecure_tcp=insecure_tcp),
        address=host.address,
        capacity_mib=host.capacity_mib,
        vcpus=host.vcpus,
    )
    if record is None or not record.is_running():
        return declared
    declared = replace(declared, release=record.release or SYSTEM_RELEASE)
    try:
        conn = open_connection(host.uri, host=host.name)
    except Exception as err:  # a status report shows every problem rather than stopping
        return replace(declared, running=True, pid=record.pid, problem=str(err))
    try:
        vms = []
        for dom in conn.listAllDomains(0):
            # A domain may vanish while we look (a restarted libvirtd kills half-migrated ones).
            with contextlib.suppress(LibvirtError):
                vms.append(VmSummary(dom.name(), domain_state(dom), bool(dom.isPersistent())))
        return replace(
            declared,
            running=True,
            pid=record.pid,
            hostname=conn.getHostname(),
            libvirt_version=format_version(conn.getLibVersion()),
            qemu_version=format_version(conn.getVersion()),
            accelerator=cached_accelerator() or "not probed yet",
            vms=sorted(vms, key=lambda vm: vm.name),
        )
    except LibvirtError as err:  # the daemon died or restarted as we asked
        return replace(declared, running=True, pid=record.pid, problem=err.get_error_message())
    finally:
        with contextlib.suppress(LibvirtError):
            conn.close()


def status_hosts(recorded: Collection[str]) -> tuple[LabHost, ...]:
    """The hosts `lab status` lists: the default lab's (running or not) and every recorded one."""
    return tuple(
        host
        for index, host in enumerate(LAB_HOSTS)
        if index < DEFAULT_HOST_COUNT or host.name in recorded
    )


def lab_status() -> list[HostStatus]:
    records = load_records()
    insecure_tcp = serves_insecure_tcp()  # one read of the lab's state for every host
    return [
        _host_status(host, records.get(host.name), insecure_tcp=insecure_tcp)
        for host in status_hosts(records)
    ]
