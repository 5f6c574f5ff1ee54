"""What the lab adds to vmigrate when it is installed (the CLI does at start-up; tests and
benchmarks that drive the library directly do too): its hosts by name and the cluster `lab`,
and its heartbeat's guest gap in the report of every move."""

from __future__ import annotations

from vmigrate.guest_gap import register_gap_probe
from vmigrate.hosts import register_host_source
from vmigrate.lab.heartbeat import largest_gap_since
from vmigrate.lab.host_source import LabHostSource


def install() -> None:
    """Register the lab's host source and gap probe; installing it again changes nothing."""
    register_host_source(LabHostSource())
    register_gap_probe(largest_gap_since)
