"""Reading a lab VM's heartbeat log: guest-observed downtime and whether the guest stayed whole.

The workload prints `HB <seq>` every 10 ms. A healthy migration shows every sequence number
exactly once, in order, and the largest gap between two beats (host time) is the downtime
the guest really had.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise

from vmigrate.errors import LabError, VmigrateError
from vmigrate.lab.heartbeat_collector import log_path

_LINE = re.compile(r"^(?P<ns>\d+) (?P<host>\S+) (?P<text>.*)$")
_BEAT = re.compile(r"^HB (?P<seq>\d+)$")
_MAX_PROBLEMS = 10


@dataclass(frozen=True)
class ConsoleLine:
    time_ns: int
    host: str
    text: str


@dataclass(frozen=True)
class Beat:
    time_ns: int
    host: str
    seq: int


@dataclass(frozen=True)
class HeartbeatReport:
    vm: str
    beats: int
    first_seq: int | None
    last_seq: int | None
    last_seq_by_host: dict[str, int]
    contiguous: bool
    problems: list[str] = field(default_factory=list)
    largest_gap_ms: float = 0.0
    largest_gap_after_seq: int | None = None
    largest_gap_hosts: tuple[str, str] | None = None
    last_beat_age_ms: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "vm": self.vm,
            "beats": self.beats,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "last_seq_by_host": self.last_seq_by_host,
            "contiguous": self.contiguous,
            "problems": self.problems,
            "largest_gap_ms": round(self.largest_gap_ms, 1),
            "largest_gap_after_seq": self.largest_gap_after_seq,
            "largest_gap_hosts": list(self.largest_gap_hosts) if self.largest_gap_hosts else None,
            "last_beat_age_ms": (
                None if self.last_beat_age_ms is None else round(self.last_beat_age_ms, 1)
            ),
        }


def parse_console(lines: Iterable[str]) -> list[ConsoleLine]:
    parsed = []
    for raw in lines:
        match = _LINE.match(raw.rstrip("\n"))
        if match:
            parsed.append(ConsoleLine(int(match["ns"]), match["host"], match["text"]))
    return parsed


def beats_of(lines: Iterable[ConsoleLine]) -> list[Beat]:
    beats = []
    for line in lines:
        match = _BEAT.match(line.text)
        if match:
            beats.append(Beat(line.time_ns, line.host, int(match["seq"])))
    return beats


def analyse(vm: str, beats: list[Beat], *, now_ns: int | None = None) -> HeartbeatReport:
    """Contiguity, largest gap and last sequence per host of a series of beats."""
    if not beats:
        return HeartbeatReport(
            vm, 0, None, None, {}, contiguous=False, problems=["no heartbeat received"]
        )
    problems: list[str] = []
    last_by_host: dict[str, int] = {}
    gap_ns, gap_index = 0, 0
    for index, beat in enumerate(beats):
        last_by_host[beat.host] = beat.seq
        if index == 0:
            continue
        previous = beats[index - 1]
        if beat.seq != previous.seq + 1 and len(problems) < _MAX_PROBLEMS:
            if beat.seq <= previous.seq:
                problems.append(f"beat {beat.seq} after {previous.seq}: repeated or restarted")
            else:
                problems.append(
                    f"beats {previous.seq + 1}..{beat.seq - 1} lost "
                    f"(between {previous.host} and {beat.host})"
                )
        if beat.time_ns - previous.time_ns > gap_ns:
            gap_ns, gap_index = beat.time_ns - previous.time_ns, index
    contiguous = all(b.seq == a.seq + 1 for a, b in pairwise(beats))
    gap_hosts = (beats[gap_index - 1].host, beats[gap_index].host) if gap_index else None
    age = None if now_ns is None else (now_ns - beats[-1].time_ns) / 1e6
    return HeartbeatReport(
        vm=vm,
        beats=len(beats),
        first_seq=beats[0].seq,
        last_seq=beats[-1].seq,
        last_seq_by_host=last_by_host,
        contiguous=contiguous,
        problems=problems,
        largest_gap_ms=gap_ns / 1e6,
        largest_gap_after_seq=beats[gap_index - 1].seq if gap_index else None,
        largest_gap_hosts=gap_hosts,
        last_beat_age_ms=age,
    )


def read_console(vm: str) -> list[ConsoleLine]:
    try:
        with log_path(vm).open(encoding="utf-8", errors="replace") as handle:
            return parse_console(handle)
    except FileNotFoundError as err:
        raise LabError(
            "no heartbeat log: this is not a lab VM, or it was removed",
            vm=vm,
            fix="create it with `vmigrate lab vm create NAME`",
        ) from err
    except OSError as err:
        raise LabError(
            f"cannot read the heartbeat log {log_path(vm)}: {err.strerror or err}",
            vm=vm,
            fix="run the command as root (the lab's files belong to root)",
        ) from err


def heartbeat_report(vm: str, *, since_ns: int = 0) -> HeartbeatReport:
    """The report over every beat received at or after host monotonic time `since_ns`."""
    beats = [b for b in beats_of(read_console(vm)) if b.time_ns >= since_ns]
    return analyse(vm, beats, now_ns=time.monotonic_ns())


def wait_for_console(vm: str, pattern: str, *, timeout: float, since_ns: int = 0) -> ConsoleLine:
    """Wait until the guest prints a line matching `pattern` (a regex) after `since_ns`."""
    wanted = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        for line in read_console(vm):
            if line.time_ns >= since_ns and wanted.search(line.text):
                return line
        if time.monotonic() > deadline:
            raise LabError(
                f"the guest did not print /{pattern}/ within {timeout:.0f} s",
                vm=vm,
                fix=f"look at its console log {log_path(vm)}",
            )
        time.sleep(0.1)


def largest_gap_since(vm: str, since_ns: int) -> float | None:
    """The largest gap (ms) the guest's heartbeat shows since `since_ns`: the lab's probe of
    a move's guest gap (vmigrate.guest_gap); None for a VM the lab does not record."""
    try:
        report = heartbeat_report(vm, since_ns=since_ns)
    except (VmigrateError, OSError):
        return None
    return round(report.largest_gap_ms, 1) if report.beats else None
