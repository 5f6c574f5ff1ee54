"""The lease as the CLI shows it: the --take-over-lease option, progress lines, host tables."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def take_over_lease_option(command: F) -> F:
    return click.option(
        "--take-over-lease",
        is_flag=True,
        help="Take over a stale lease on the VM (its holder stopped renewing it and libvirt "
        "runs no job on it). Only when you know that job no longer runs: if it does, two jobs "
        "act on one VM.",
    )(command)


def lease_line(payload: dict[str, Any]) -> str:
    """One lease event of a move (taken, taken over, released) for the terminal."""
    action = payload["action"]
    if action == "released":
        return f"lease released ({', '.join(payload['removed_from']) or 'no host held it'})"
    if action == "kept":
        return "lease kept until the job is resumed or rolled back"
    return f"lease {action} on {payload['host']}: job {payload['job']}, {payload['owner']}"


def describe_found(found: dict[str, Any]) -> str:
    """A lease found on a host (FoundLease.to_dict()) in a few words."""
    if found.get("problem"):
        return f"{found['vm']}: unreadable lease ({found['problem']})"
    age = found["age_s"]
    return (
        f"{found['vm']}: {found['state']} {found['kind']} job {found['job']} of "
        f"{found['owner']}, renewed {age:.0f} s ago"
    )
