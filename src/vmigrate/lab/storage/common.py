"""What the lab's storage servers share: their directory, finding their programs, running a
command with a clear error, and the record `lab down` stops them by."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vmigrate.errors import EnvironmentProblem, LabError
from vmigrate.lab.paths import LAB_DIR
from vmigrate.lab.processes import is_alive

STORAGE_DIR = LAB_DIR / "storage"
RECORD_FILE = STORAGE_DIR / "servers.json"
BACKENDS = ("iscsi", "rbd", "nfs")
_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def tool(name: str, package: str) -> str:
    path = shutil.which(name, path=_PATH)
    if path is None:
        raise EnvironmentProblem(
            f"`{name}` is not installed: the lab's storage servers need {package}",
            fix="run scripts/setup.sh as root (it installs the storage servers without "
            "starting them)",
        )
    return path


def run(command: list[str], *, what: str, timeout: float = 60.0) -> str:
    """Run a server's admin command; its failure is a LabError quoting what it said."""
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as err:
        raise LabError(
            f"{what}: `{Path(command[0]).name}` did not answer in {timeout:.0f} s"
        ) from err
    if result.returncode != 0:
        said = (result.stderr.strip() or result.stdout.strip())[-800:]
        raise LabError(f"{what}: `{Path(command[0]).name}` failed: {said}")
    return result.stdout


def is_vm_disk(vm: str, name: str) -> bool:
    """A lab disk of `vm` on a storage server: vda..vdz, with or without its file suffix,
    and not a disk of a VM whose name merely starts the same."""
    return bool(re.fullmatch(re.escape(vm) + r"-vd[a-z](\.(qcow2|img))?", name))


def process_start(pid: int) -> int | None:
    """When the process started (clock ticks since boot): with the PID, who it is."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[-1].split()[19])


@dataclass
class ServerRecord:
    """One running storage server: where it listens and the processes `lab down` stops."""

    backend: str  # iscsi | rbd | nfs
    address: str
    port: int
    pids: list[int]
    start_seconds: float = 0.0
    details: dict[str, str] = field(default_factory=dict)
    #: Each PID's start time, so a PID reused after a reboot is never taken for ours.
    starts: list[int] = field(default_factory=list)

    def stamp(self) -> None:
        self.starts = [process_start(pid) or 0 for pid in self.pids]

    def own_pids(self) -> list[int]:
        """The recorded processes that are still the ones the lab started."""
        if len(self.starts) != len(self.pids):
            return [pid for pid in self.pids if is_alive(pid)]
        return [
            pid
            for pid, start in zip(self.pids, self.starts, strict=True)
            if is_alive(pid) and process_start(pid) == start
        ]

    def running(self) -> bool:
        return bool(self.pids) and len(self.own_pids()) == len(self.pids)


def load_servers() -> dict[str, ServerRecord]:
    try:
        raw = json.loads(RECORD_FILE.read_text())
        return {name: ServerRecord(**fields) for name, fields in raw.items()}
    except (OSError, ValueError, TypeError):
        return {}


def save_servers(servers: dict[str, ServerRecord]) -> None:
    STORAGE_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = RECORD_FILE.with_suffix(".tmp")
    temporary.write_text(json.dumps({name: asdict(rec) for name, rec in servers.items()}, indent=2))
    temporary.replace(RECORD_FILE)
