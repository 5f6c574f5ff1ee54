"""The lab's own record of the daemons it started (a JSON file under LAB_DIR).

Imports no libvirt: vmigrate.hosts asks it which lab hosts run."""

from __future__ import annotations

import json
from dataclasses import asdict

from vmigrate.lab.config import LAB_HOSTS, LabHost
from vmigrate.lab.daemons import DaemonRecord
from vmigrate.lab.paths import LAB_DIR

STATE_FILE = LAB_DIR / "state.json"


def load_records() -> dict[str, DaemonRecord]:
    """What `lab up` recorded; a missing or damaged file reads as "nothing running" (the
    processes themselves are found again by `lab down` through their namespaces)."""
    try:
        raw = json.loads(STATE_FILE.read_text())
        return {name: DaemonRecord(**fields) for name, fields in raw.get("hosts", {}).items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def save_records(records: dict[str, DaemonRecord], *, insecure_tcp: bool = False) -> None:
    LAB_DIR.mkdir(parents=True, exist_ok=True)
    payload = {
        "hosts": {name: asdict(record) for name, record in records.items()},
        "insecure_tcp": insecure_tcp,
    }
    temporary = STATE_FILE.with_suffix(".tmp")
    temporary.write_text(json.dumps(payload, indent=2))
    temporary.replace(STATE_FILE)


def serves_insecure_tcp() -> bool:
    """Whether the running lab was started with `--insecure-tcp` (plain TCP open)."""
    try:
        return bool(json.loads(STATE_FILE.read_text()).get("insecure_tcp", False))
    except (OSError, ValueError, AttributeError):
        return False


def running_lab_hosts() -> tuple[LabHost, ...]:
    """The lab hosts whose recorded daemon is running, in LAB_HOSTS order."""
    records = load_records()
    return tuple(
        host
        for host in LAB_HOSTS
        if (record := records.get(host.name)) is not None and record.is_running()
    )


def host_of_namespace(mount_namespace: str) -> str:
    """Which lab host a process belongs to, from its mount namespace."""
    for name, record in load_records().items():
        if record.mount_namespace and record.mount_namespace == mount_namespace:
            return name
    return "unknown"
