"""The lab's Ceph cluster: one monitor, one manager and one memstore OSD, all on the lab's
Ceph address, made with Ceph's own tools (no cephadm, no containers), and the rbd pool with
the cephx user libvirt authenticates as."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from vmigrate.lab.ports import port_open, wait_for
from vmigrate.lab.processes import spawn_daemon, terminate
from vmigrate.lab.storage.common import STORAGE_DIR, ServerRecord, run, tool

CEPH_ADDRESS = "127.0.0.21"
MON_PORT = 6789  # msgr v1; v2 listens on 3300 beside it
MON_V2_PORT = 3300
CEPH_DIR = STORAGE_DIR / "ceph"
CONF = CEPH_DIR / "ceph.conf"
ADMIN_KEYRING = CEPH_DIR / "client.admin.keyring"
RBD_POOL = "vmigrate"
#: The cephx user the lab hosts' libvirt and QEMU authenticate as (rbd on RBD_POOL only).
CLIENT = "libvirt"
_PACKAGE = "ceph-mon, ceph-mgr, ceph-osd and ceph-common"
MEMSTORE_BYTES = 4 << 30  # an upper bound: memstore holds only what is written


def render_ceph_conf(fsid: str, directory: Path = CEPH_DIR) -> str:
    """One node on one loopback address: a pool of size one is healthy, and nothing of the
    cluster lives outside `directory` (runtime files, logs, data)."""
    settings = {
        "fsid": fsid,
        "mon host": f"[v2:{CEPH_ADDRESS}:{MON_V2_PORT},v1:{CEPH_ADDRESS}:{MON_PORT}]",
        "public addr": CEPH_ADDRESS,
        "cluster addr": CEPH_ADDRESS,
        "ms bind ipv6": "false",
        "auth cluster required": "cephx",
        "auth service required": "cephx",
        "auth client required": "cephx",
        "auth allow insecure global id reclaim": "false",
        "osd pool default size": "1",
        "osd pool default min size": "1",
        "mon allow pool size one": "true",
        "mon warn on pool no redundancy": "false",
        "osd crush chooseleaf type": "0",
        # The lab shares the machine's disk: its free space is not the cluster's to police.
        "mon data avail warn": "1",
        "mon data avail crit": "0",
        "run dir": str(directory / "run"),
        "admin socket": str(directory / "run" / "$cluster-$name.asok"),
        "pid file": str(directory / "run" / "$cluster-$name.pid"),
        "log file": str(directory / "log" / "$cluster-$name.log"),
        "mon cluster log file": str(directory / "log" / "$cluster.log"),
        "mon data": str(directory / "mon" / "$cluster-$id"),
        "mgr data": str(directory / "mgr" / "$cluster-$id"),
        "osd data": str(directory / "osd" / "$cluster-$id"),
        "osd objectstore": "memstore",
        "memstore device bytes": str(MEMSTORE_BYTES),
    }
    lines = ["# Written by `vmigrate lab up --storage rbd`.", "[global]"]
    lines += [f"{key} = {value}" for key, value in settings.items()]
    lines += ["", "[client.admin]", f"keyring = {ADMIN_KEYRING}", ""]
    return "\n".join(lines)


def ceph(*args: str, what: str, timeout: float = 60.0) -> str:
    """A `ceph` admin command against the lab's cluster (never the machine's /etc/ceph)."""
    command = [tool("ceph", _PACKAGE), "-c", str(CONF), "--connect-timeout", "20", *args]
    return run(command, what=what, timeout=timeout)


def _authtool(*args: str) -> None:
    run([tool("ceph-authtool", _PACKAGE), *args], what="making the Ceph keyrings")


def _status(timeout: float = 60.0) -> dict[str, Any] | None:
    """`ceph status` as JSON, or None when the cluster does not answer (yet)."""
    try:
        said = ceph("status", "--format", "json", what="asking Ceph's health", timeout=timeout)
        return dict(json.loads(said))
    except Exception:
        return None


def _health() -> str:
    """The cluster's health once every placement group is active+clean, else ""."""
    status = _status()
    if status is None:
        return ""
    pgs = status.get("pgmap", {})
    clean = sum(
        s.get("count", 0)
        for s in pgs.get("pgs_by_state", [])
        if s.get("state_name") == "active+clean"
    )
    if pgs.get("num_pgs", 0) and clean == pgs["num_pgs"]:
        return str(status.get("health", {}).get("status", ""))
    return ""


def start_ceph() -> ServerRecord:
    """Make and start a new cluster; returns once its rbd pool is active+clean. A cluster
    of an earlier start is not reused (memstore kept none of its data): its directory is
    made anew. A failed start stops every daemon it started."""
    if CEPH_DIR.exists():
        shutil.rmtree(CEPH_DIR)
    pids: list[int] = []
    try:
        return _make_cluster(pids)
    except BaseException:
        terminate(list(reversed(pids)), grace_seconds=3.0)
        raise


def _make_cluster(pids: list[int]) -> ServerRecord:
    for directory in ("run", "log", "mon/ceph-a", "mgr/ceph-x", "osd/ceph-0"):
        (CEPH_DIR / directory).mkdir(parents=True, exist_ok=True, mode=0o700)
    CEPH_DIR.chmod(0o700)
    fsid = str(uuid.uuid4())
    CONF.write_text(render_ceph_conf(fsid))
    mon_keyring = CEPH_DIR / "mon.keyring"
    _authtool(
        "--create-keyring", str(mon_keyring), "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"
    )
    _authtool(
        "--create-keyring", str(ADMIN_KEYRING), "--gen-key", "-n", "client.admin",
        "--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *",
        "--cap", "mds", "allow *",
    )  # fmt: skip
    _authtool(str(mon_keyring), "--import-keyring", str(ADMIN_KEYRING))
    monmap = CEPH_DIR / "monmap"
    run(
        [
            tool("monmaptool", _PACKAGE), "--create", "--fsid", fsid, "--addv", "a",
            f"[v2:{CEPH_ADDRESS}:{MON_V2_PORT},v1:{CEPH_ADDRESS}:{MON_PORT}]", str(monmap),
        ],
        what="making the Ceph monitor map",
    )  # fmt: skip
    mon = tool("ceph-mon", _PACKAGE)
    run(
        [
            mon,
            "-c",
            str(CONF),
            "--mkfs",
            "-i",
            "a",
            "--monmap",
            str(monmap),
            "--keyring",
            str(mon_keyring),
        ],
        what="making the Ceph monitor's store",
    )
    pids.append(
        spawn_daemon([mon, "-c", str(CONF), "-i", "a", "-f"], CEPH_DIR / "log" / "mon.console")
    )
    wait_for(
        lambda: port_open(CEPH_ADDRESS, MON_PORT),
        timeout=30,
        what=f"the Ceph monitor does not answer on {CEPH_ADDRESS}:{MON_PORT}",
        log=CEPH_DIR / "log" / "ceph-mon.a.log",
    )
    ceph(
        "auth", "get-or-create", "mgr.x", "mon", "allow profile mgr", "osd", "allow *",
        "mds", "allow *", "-o", str(CEPH_DIR / "mgr" / "ceph-x" / "keyring"),
        what="creating the Ceph manager's key",
    )  # fmt: skip
    mgr = tool("ceph-mgr", _PACKAGE)
    pids.append(
        spawn_daemon([mgr, "-c", str(CONF), "-i", "x", "-f"], CEPH_DIR / "log" / "mgr.console")
    )
    osd_uuid = str(uuid.uuid4())
    osd_id = ceph("osd", "new", osd_uuid, what="registering the Ceph OSD").strip()
    osd_dir = CEPH_DIR / "osd" / f"ceph-{osd_id}"
    osd_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    osd_keyring = osd_dir / "keyring"
    _authtool("--create-keyring", str(osd_keyring), "--gen-key", "-n", f"osd.{osd_id}")
    ceph(
        "auth", "add", f"osd.{osd_id}", "osd", "allow *", "mon", "allow profile osd",
        "mgr", "allow profile osd", "-i", str(osd_keyring),
        what="registering the Ceph OSD's key",
    )  # fmt: skip
    osd = tool("ceph-osd", _PACKAGE)
    run(
        [osd, "-c", str(CONF), "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid],
        what="making the Ceph OSD's store",
    )
    pids.append(
        spawn_daemon([osd, "-c", str(CONF), "-i", osd_id, "-f"], CEPH_DIR / "log" / "osd.console")
    )
    ceph("osd", "pool", "create", RBD_POOL, "8", "8", what=f"creating the rbd pool {RBD_POOL!r}")
    ceph("osd", "pool", "application", "enable", RBD_POOL, "rbd", what="enabling rbd on the pool")
    wait_for(
        lambda: bool(_health()),
        timeout=90,
        what="the Ceph cluster's placement groups did not become active+clean",
        log=CEPH_DIR / "log" / f"ceph-osd.{osd_id}.log",
    )
    return ServerRecord(
        "rbd",
        CEPH_ADDRESS,
        MON_PORT,
        pids,
        details={"pool": RBD_POOL, "fsid": fsid, "user": CLIENT},
    )


def client_key() -> str:
    """The cephx key of the lab's libvirt user (created on first use): it goes into each
    host's libvirt secret, never into a file or a log of ours."""
    return ceph(
        "auth", "get-or-create-key", f"client.{CLIENT}", "mon", "profile rbd",
        "osd", f"profile rbd pool={RBD_POOL}",
        what="getting the cephx key for libvirt",
    ).strip()  # fmt: skip


def health() -> str:
    """HEALTH_OK / HEALTH_WARN / HEALTH_ERR, or "" when the cluster does not answer."""
    status = _status(timeout=10)
    return "" if status is None else str(status.get("health", {}).get("status", ""))


def stop_ceph(record: ServerRecord) -> list[int]:
    """OSD, manager, then monitor. Their data goes with the lab's directory, so a short grace
    (memstore writes its whole store out on a clean stop)."""
    return terminate(list(reversed(record.own_pids())), grace_seconds=3.0)
