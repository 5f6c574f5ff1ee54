"""The guest-observed gap of a move, where something measures it: an optional add-on to a
move's report. The CLI registers the lab's heartbeat as a probe; without one, no figure.

A probe gets the VM's name and the host monotonic time (ns) the move started at, and returns
the largest gap (ms) the guest saw since, or None when it knows nothing of that VM."""

from __future__ import annotations

from collections.abc import Callable

GapProbe = Callable[[str, int], float | None]

_PROBES: list[GapProbe] = []


def register_gap_probe(probe: GapProbe) -> None:
    """Add a probe (registering it again changes nothing)."""
    if probe not in _PROBES:
        _PROBES.append(probe)


def unregister_gap_probe(probe: GapProbe) -> None:
    if probe in _PROBES:
        _PROBES.remove(probe)


def measured_gap_ms(vm: str, since_ns: int) -> float | None:
    """The first registered probe's figure for `vm`, or None."""
    for probe in _PROBES:
        gap = probe(vm, since_ns)
        if gap is not None:
            return gap
    return None
