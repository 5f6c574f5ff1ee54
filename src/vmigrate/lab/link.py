"""Emulating a real link to hostB: an htb class (+ netem delay) on `lo` for traffic to its address.

Only packets to hostB's loopback address are classified; everything else on `lo` passes the
htb root unshaped (htb sends unclassified packets directly when there is no default class).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from vmigrate.errors import EnvironmentProblem, UsageError
from vmigrate.lab.config import HOST_B

DEVICE = "lo"
ROOT_HANDLE = "1:"
SHAPED_CLASS = "1:10"
_RATE = re.compile(r"^\d+(\.\d+)?(bit|kbit|mbit|gbit|tbit|bps|kbps|mbps|gbps|tbps)$", re.I)
_CLASS_STATS = re.compile(
    r"class htb 1:10 .*?rate (?P<rate>\S+) .*?\n\s*Sent (?P<bytes>\d+) bytes", re.S
)
_DELAY = re.compile(r"^\d+(\.\d+)?(us|ms|s)$")


@dataclass(frozen=True)
class LinkStatus:
    shaped: bool
    rate: str | None
    delay: str | None
    bytes_to_hostb: int

    def to_dict(self) -> dict[str, object]:
        return {
            "shaped": self.shaped,
            "rate": self.rate,
            "delay": self.delay,
            "bytes_to_hostb": self.bytes_to_hostb,
        }


def _tc(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    tc = shutil.which("tc", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if tc is None:
        raise EnvironmentProblem("`tc` is not installed", fix="apt-get install iproute2")
    result = subprocess.run([tc, *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise EnvironmentProblem(
            f"tc {' '.join(args)} failed: {result.stderr.strip()}",
            fix="link emulation needs root and the sch_htb/sch_netem kernel modules",
        )
    return result


def shaping_commands(rate: str, delay: str | None) -> list[list[str]]:
    """The tc invocations that shape traffic to hostB (pure, for tests and --dry-run)."""
    if not _RATE.match(rate):
        raise UsageError(f"link rate {rate!r} is not a rate", fix="use e.g. 1gbit, 100mbit, 50mbps")
    if delay is not None and not _DELAY.match(delay):
        raise UsageError(f"link delay {delay!r} is not a duration", fix="use e.g. 5ms or 200us")
    commands = [
        ["qdisc", "add", "dev", DEVICE, "root", "handle", ROOT_HANDLE, "htb"],
        [
            "class",
            "add",
            "dev",
            DEVICE,
            "parent",
            ROOT_HANDLE,
            "classid",
            SHAPED_CLASS,
            # Loopback packets are up to 64 KiB: burst and quantum must hold whole packets.
            "htb",
            "rate",
            rate,
            "ceil",
            rate,
            "burst",
            "256k",
            "cburst",
            "256k",
            "quantum",
            "65536",
        ],
        [
            "filter",
            "add",
            "dev",
            DEVICE,
            "parent",
            ROOT_HANDLE,
            "protocol",
            "ip",
            "prio",
            "1",
            "u32",
            "match",
            "ip",
            "dst",
            f"{HOST_B.address}/32",
            "flowid",
            SHAPED_CLASS,
        ],
    ]
    if delay is not None:
        commands.append(
            [
                "qdisc",
                "add",
                "dev",
                DEVICE,
                "parent",
                SHAPED_CLASS,
                "handle",
                "10:",
                "netem",
                "delay",
                delay,
                "limit",
                "100000",
            ]
        )
    return commands


def _qdiscs() -> list[dict[str, Any]]:
    """`tc -j qdisc show` as data; anything but a JSON list is a clear error."""
    output = _tc("-j", "qdisc", "show", "dev", DEVICE).stdout or "[]"
    try:
        qdiscs = json.loads(output)
    except ValueError as err:
        raise EnvironmentProblem(
            f"tc printed no JSON for the qdiscs of {DEVICE}: {output[:200]!r}",
            fix="install iproute2 from Debian 12 (its tc supports -j)",
        ) from err
    return [q for q in qdiscs if isinstance(q, dict)] if isinstance(qdiscs, list) else []


def _is_ours() -> bool:
    qdiscs = _qdiscs()
    return any(
        q.get("kind") == "htb" and q.get("handle") == ROOT_HANDLE and q.get("root") for q in qdiscs
    )


def shape(rate: str, delay: str | None = None) -> LinkStatus:
    """Limit traffic to hostB to `rate` (tc syntax), optionally adding `delay`."""
    commands = shaping_commands(rate, delay)
    reset()
    try:
        for command in commands:
            result = _tc(*command, check=False)
            if result.returncode != 0 and "netem" in command and "unknown" in result.stderr:
                raise EnvironmentProblem(
                    "this kernel has no netem queueing discipline, so delay cannot be emulated",
                    fix="shape the rate alone (drop --delay), or use a kernel with sch_netem",
                )
            if result.returncode != 0:
                _tc(*command)  # raises with tc's own message
    except EnvironmentProblem:
        reset()
        raise
    return status()


def reset() -> bool:
    """Remove the lab's shaping; returns whether there was any. Leaves foreign qdiscs alone."""
    if not _is_ours():
        return False
    _tc("qdisc", "del", "dev", DEVICE, "root")
    return True


def status() -> LinkStatus:
    if not _is_ours():
        return LinkStatus(shaped=False, rate=None, delay=None, bytes_to_hostb=0)
    # `tc -j class` prints no JSON for htb classes: read the text form.
    classes = _tc("-s", "class", "show", "dev", DEVICE).stdout
    shaped = _CLASS_STATS.search(classes)
    qdiscs = _qdiscs()
    netem = next((q for q in qdiscs if q.get("kind") == "netem"), None)
    delay = None
    if netem is not None:
        delay_seconds = netem.get("options", {}).get("delay", {}).get("delay")
        delay = f"{delay_seconds * 1000:g}ms" if delay_seconds is not None else None
    return LinkStatus(
        shaped=True,
        rate=shaped["rate"] if shaped else None,
        delay=delay,
        bytes_to_hostb=int(shaped["bytes"]) if shaped else 0,
    )
