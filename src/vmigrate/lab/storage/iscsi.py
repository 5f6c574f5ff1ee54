"""The lab's iSCSI target: tgtd, a user-space target, on its own loopback address, with one
target whose LUNs are sparse files under the lab's directory, one per lab disk. QEMU reaches
it with libiscsi and libvirt with an `iscsi-direct` pool: no kernel initiator anywhere (this
kernel has none)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from vmigrate.errors import LabError
from vmigrate.lab.ports import port_open, wait_for
from vmigrate.lab.processes import spawn_daemon, terminate
from vmigrate.lab.storage.common import STORAGE_DIR, ServerRecord, is_vm_disk, run, tool

ISCSI_ADDRESS = "127.0.0.20"
ISCSI_PORT = 3260
TARGET_IQN = "iqn.2026-12.lab.vmigrate:store"
TID = 1
#: tgtd's control port (its socket is /run/tgtd/socket.N): the lab's own number, so a tgtd
#: of the machine (number 0) is never the one we talk to.
CONTROL = 7
CONTROL_DIR = Path("/run/tgtd")
ISCSI_DIR = STORAGE_DIR / "iscsi"
_LUNS = ISCSI_DIR / "luns.json"  # disk name -> LUN
_PACKAGE = "tgt"


def initiator_iqn(host_name: str) -> str:
    return f"iqn.2026-12.lab.vmigrate:{host_name.lower()}"


def _tgtadm(*args: str, what: str) -> str:
    command = [tool("tgtadm", _PACKAGE), "-C", str(CONTROL), "--lld", "iscsi", *args]
    return run(command, what=what, timeout=20)


def _answers() -> bool:
    try:
        _tgtadm("--op", "show", "--mode", "sys", what="asking tgtd")
    except LabError:
        return False
    return True


def start_target() -> ServerRecord:
    """Start tgtd on the lab's iSCSI address with the lab's (empty) target."""
    ISCSI_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    made_control_dir = not CONTROL_DIR.exists()
    log = ISCSI_DIR / "tgtd.log"
    portal = f"portal={ISCSI_ADDRESS}:{ISCSI_PORT}"
    pid = spawn_daemon([tool("tgtd", _PACKAGE), "-f", "--iscsi", portal, "-C", str(CONTROL)], log)
    record = ServerRecord(
        "iscsi",
        ISCSI_ADDRESS,
        ISCSI_PORT,
        [pid],
        details={"target": TARGET_IQN, "made_control_dir": "yes" if made_control_dir else ""},
    )
    try:
        wait_for(_answers, timeout=10, what="tgtd does not answer on its control socket", log=log)
        _tgtadm("--op", "new", "--mode", "target", "--tid", str(TID), "-T", TARGET_IQN,
                what="creating the lab's iSCSI target")  # fmt: skip
        # Any initiator may log in: the portal listens on a loopback address the lab owns.
        _tgtadm("--op", "bind", "--mode", "target", "--tid", str(TID), "-I", "ALL",
                what="opening the target to the lab's initiators")  # fmt: skip
        wait_for(
            lambda: port_open(ISCSI_ADDRESS, ISCSI_PORT),
            timeout=10,
            what=f"tgtd does not listen on {ISCSI_ADDRESS}:{ISCSI_PORT}",
            log=log,
        )
        _replay_luns()
    except BaseException:
        stop_target(record)
        raise
    return record


def stop_target(record: ServerRecord) -> list[int]:
    """tgtd keeps running on SIGTERM while it has a target: it is killed after a short grace
    (its state is only the LUN files, which go with the lab's directory)."""
    # Not reported as "had to kill": for tgtd that is how it stops.
    terminate(record.own_pids(), grace_seconds=1.0)
    for leftover in (f"socket.{CONTROL}", f"socket.{CONTROL}.lock"):
        (CONTROL_DIR / leftover).unlink(missing_ok=True)
    if record.details.get("made_control_dir"):
        with contextlib.suppress(OSError):
            CONTROL_DIR.rmdir()
    return []


def _load_luns() -> dict[str, int]:
    try:
        return {str(k): int(v) for k, v in json.loads(_LUNS.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def _replay_luns() -> None:
    """A tgtd started again (it died, or the lab's processes did) serves the LUNs of the
    lab disks it served before, from their files; a disk whose file is gone is forgotten."""
    luns = _load_luns()
    for disk_name, lun in sorted(luns.items(), key=lambda item: item[1]):
        backing = ISCSI_DIR / f"{disk_name}.img"
        if not backing.exists():
            del luns[disk_name]
            continue
        _tgtadm("--op", "new", "--mode", "logicalunit", "--tid", str(TID), "--lun", str(lun),
                "-b", str(backing), what=f"serving LUN {lun} again")  # fmt: skip
    _LUNS.write_text(json.dumps(luns))


def add_lun(disk_name: str, size_bytes: int) -> int:
    """A new LUN backed by a sparse file of `size_bytes`; its number."""
    luns = _load_luns()
    if disk_name in luns:
        raise LabError(f"the iSCSI target already has a LUN for {disk_name}")
    lun = max(luns.values(), default=0) + 1
    backing = ISCSI_DIR / f"{disk_name}.img"
    with backing.open("wb") as file:
        file.truncate(size_bytes)
    try:
        _tgtadm("--op", "new", "--mode", "logicalunit", "--tid", str(TID), "--lun", str(lun),
                "-b", str(backing), what=f"adding LUN {lun} to the lab's iSCSI target")  # fmt: skip
    except BaseException:
        backing.unlink(missing_ok=True)
        raise
    luns[disk_name] = lun
    _LUNS.write_text(json.dumps(luns))
    return lun


def remove_lun(disk_name: str) -> bool:
    luns = _load_luns()
    lun = luns.pop(disk_name, None)
    if lun is None:
        return False
    with contextlib.suppress(LabError):  # tgtd gone: its file goes all the same
        _tgtadm("--op", "delete", "--mode", "logicalunit", "--tid", str(TID), "--lun", str(lun),
                what=f"removing LUN {lun}")  # fmt: skip
    (ISCSI_DIR / f"{disk_name}.img").unlink(missing_ok=True)
    _LUNS.write_text(json.dumps(luns))
    return True


def luns_of_vm(vm: str) -> list[str]:
    return [name for name in _load_luns() if is_vm_disk(vm, name)]


def healthy() -> bool:
    return _answers() and port_open(ISCSI_ADDRESS, ISCSI_PORT)
