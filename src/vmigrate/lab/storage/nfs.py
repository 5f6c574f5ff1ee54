"""The lab's NFS server: NFS-Ganesha (VFS) exporting a directory of the lab over NFSv3, in a
network namespace of its own (see nfs_netns.py), reached on the lab's NFS address through
`socat` forwarders: one per port a client needs (portmapper, mountd, nfs).

QEMU opens disks there with libnfs (`nfs://ADDR/PATH`): no kernel client, no mount."""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
from pathlib import Path

from vmigrate.lab.ports import port_open, wait_for
from vmigrate.lab.processes import (
    executable_of,
    mount_namespace_of,
    pids_in_mount_namespace,
    spawn_daemon,
    terminate,
)
from vmigrate.lab.storage.common import STORAGE_DIR, ServerRecord, run, tool

NFS_ADDRESS = "127.0.0.22"
NFS_PORT = 2049
MOUNTD_PORT = 20048
PORTMAP_PORT = 111
FORWARDED_PORTS = (PORTMAP_PORT, NFS_PORT, MOUNTD_PORT)
NFS_DIR = STORAGE_DIR / "nfs"
#: The exported directory. NFSv3 clients name files by the export's real path.
EXPORT_DIR = NFS_DIR / "export"
#: The server's network namespace, bound onto a file (see _pin_namespace).
NETNS_PIN = NFS_DIR / "netns"
_PACKAGE = "nfs-ganesha, nfs-ganesha-vfs, rpcbind and socat"
#: What runs in the server's namespace.
_SERVER_PROGRAMS = ("ganesha.nfsd", "rpcbind", "python3", "python3.11", "unshare")


def render_ganesha_conf(directory: Path = NFS_DIR) -> str:
    export = directory / "export"
    return f"""# Written by `vmigrate lab up --storage nfs`.
NFS_CORE_PARAM {{
    Protocols = 3;
    NFS_Port = {NFS_PORT};
    MNT_Port = {MOUNTD_PORT};
    Enable_NLM = false;
    Enable_RQUOTA = false;
}}
NFSV4 {{
    Graceless = true;
    RecoveryBackend = fs;
    RecoveryRoot = "{directory / "recovery"}";
}}
EXPORT {{
    Export_Id = 1;
    Path = "{export}";
    Pseudo = "/export";
    Protocols = 3;
    Transports = TCP;
    Access_Type = RW;
    # The lab's QEMU runs as root: squashing it would make the disks unwritable.
    Squash = No_Root_Squash;
    SecType = sys;
    FSAL {{ Name = VFS; }}
}}
LOG {{ Default_Log_Level = EVENT; }}
"""


def _ganesha_pid(holder: int) -> int | None:
    namespace = mount_namespace_of(holder)
    for pid in pids_in_mount_namespace(namespace):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip().startswith("ganesha"):
                return pid
        except OSError:
            continue
    return None


def _pin_namespace(holder: int) -> Path:
    """The server's network namespace bound onto a file of the lab's: the forwarders enter it
    by that name, never through a PID another process could take once the server ends (a
    pinned namespace outlives its processes, and then refuses every connection)."""
    NETNS_PIN.touch(mode=0o600)
    mount = tool("mount", "util-linux")
    run([mount, "--bind", f"/proc/{holder}/ns/net", str(NETNS_PIN)], what="pinning NFS' netns")
    return NETNS_PIN


def unpin_namespace() -> None:
    """Unmount the pinned namespace, if any (`lab down` calls it whatever the record says:
    a start killed half-way leaves a mount and no record)."""
    while NETNS_PIN.exists() and os.path.ismount(NETNS_PIN):
        run([tool("umount", "util-linux"), str(NETNS_PIN)], what="unpinning NFS' netns")
    NETNS_PIN.unlink(missing_ok=True)


def start_nfs() -> ServerRecord:
    # Before the server's namespaces are made: they would copy a stale pin and keep it alive.
    unpin_namespace()
    for directory in ("export", "run", "recovery", "log"):
        (NFS_DIR / directory).mkdir(parents=True, exist_ok=True, mode=0o700)
    NFS_DIR.chmod(0o700)
    EXPORT_DIR.chmod(0o755)
    conf = NFS_DIR / "ganesha.conf"
    conf.write_text(render_ganesha_conf())
    log = NFS_DIR / "log" / "ganesha.log"
    ganesha = tool("ganesha.nfsd", _PACKAGE)
    tool("rpcbind", _PACKAGE)
    socat = tool("socat", _PACKAGE)
    nsenter = tool("nsenter", "util-linux")
    command = [
        tool("unshare", "util-linux"), "--net", "--mount", "--propagation", "private", "--",
        sys.executable, "-m", "vmigrate.lab.storage.nfs_netns", str(NFS_DIR / "run"), "--",
        ganesha, "-F", "-f", str(conf), "-L", str(log), "-p", str(NFS_DIR / "run" / "ganesha.pid"),
    ]  # fmt: skip
    holder = spawn_daemon(command, NFS_DIR / "log" / "netns.console")
    record = ServerRecord(
        "nfs", NFS_ADDRESS, NFS_PORT, [holder], details={"export": str(EXPORT_DIR)}
    )
    try:
        wait_for(
            lambda: _ganesha_pid(holder) is not None and "NFS SERVER INITIALIZED" in _read(log),
            timeout=30,
            what="NFS-Ganesha did not start",
            log=log if log.exists() else NFS_DIR / "log" / "netns.console",
        )
        # Recorded so that `lab down` finds rpcbind even when ganesha died first.
        record.details["mount_namespace"] = mount_namespace_of(holder)
        namespace = f"--net={_pin_namespace(holder)}"
        for port in FORWARDED_PORTS:
            # socat runs no shell: EXEC splits its fixed words itself (a path and a port);
            # a colon inside it must be escaped or socat reads it as its own separator.
            inside = rf"{nsenter} {namespace} {socat} STDIO TCP\:127.0.0.1\:{port}"
            listen = f"TCP-LISTEN:{port},bind={NFS_ADDRESS},reuseaddr,fork"
            record.pids.append(
                spawn_daemon(
                    [socat, listen, f"EXEC:{inside}"], NFS_DIR / "log" / f"socat-{port}.log"
                )
            )
        for port in FORWARDED_PORTS:
            wait_for(
                functools.partial(port_open, NFS_ADDRESS, port),
                timeout=10,
                what=f"nothing forwards {NFS_ADDRESS}:{port} to the NFS server",
            )
        wait_for(
            _serves_files, timeout=20, what="the NFS server does not serve its export", log=log
        )
    except BaseException:
        with contextlib.suppress(Exception):  # the failure to report is the start's
            stop_nfs(record)
        raise
    return record


def nfs_url(path: Path) -> str:
    """QEMU's URL of a file in the export (NFSv3 names it by its real path)."""
    return f"nfs://{NFS_ADDRESS}{path}"


def _serves_files() -> bool:
    """A real read through the forwarders (portmapper, mount, nfs), as QEMU will do."""
    probe = EXPORT_DIR / ".vmigrate-probe"
    probe.write_bytes(b"\0" * 512)
    result = subprocess.run(
        ["qemu-img", "info", "-f", "raw", nfs_url(probe)],
        capture_output=True,
        check=False,
        timeout=20,
    )
    return result.returncode == 0


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def stop_nfs(record: ServerRecord) -> list[int]:
    """The forwarders, then everything in the server's namespace (ganesha, rpcbind)."""
    holder = record.pids[0]
    own = record.own_pids()
    killed = terminate([pid for pid in own if pid != holder], grace_seconds=2.0)
    namespace = mount_namespace_of(holder) if holder in own else ""
    namespace = namespace or record.details.get("mount_namespace", "")
    # In that namespace only the server's own programs: an inode number can be reused.
    inside = [
        pid
        for pid in (pids_in_mount_namespace(namespace) if namespace else [])
        if Path(executable_of(pid)).name in _SERVER_PROGRAMS
    ]
    killed += terminate(sorted(set(inside) | ({holder} & set(own))), grace_seconds=5.0)
    unpin_namespace()
    return killed


def disk_path(disk_name: str, fmt: str) -> Path:
    """Where a lab disk on NFS lives, seen from this machine (the export's own directory)."""
    return EXPORT_DIR / f"{disk_name}.{'qcow2' if fmt == 'qcow2' else 'img'}"


def healthy() -> bool:
    return all(port_open(NFS_ADDRESS, port) for port in FORWARDED_PORTS)
