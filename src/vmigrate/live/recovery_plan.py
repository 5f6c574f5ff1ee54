"""What to do after vmigrate died in the middle of a live migration (pure).

`vmigrate recover` observes the VM on both hosts, then this decides: finish a migration that
had completed (undefine the source, keep the destination's definition), clean up one that
had not (resume a source paused for a switch-over that never came, destroy an incoming
leftover on the destination), or, when the state is one a program must not guess about
(post-copy cut in half, the VM running on both), change nothing and say exactly what to do.
Whatever the case, nothing that holds the only running copy of the guest is ever destroyed.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from typing import Any

from vmigrate.model import DomainView, Step


@dataclass(frozen=True)
class RecoveryPlan:
    outcome: str  # completed | aborted | failed
    steps: tuple[Step, ...]
    message: str
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_recovery(
    vm: str, source: DomainView, destination: DomainView, *, transient: bool
) -> RecoveryPlan:
    src, dst = source.host, destination.host
    if source.in_postcopy or destination.in_postcopy:
        return RecoveryPlan(
            "failed",
            (),
            f"post-copy was interrupted: {vm} runs from {dst}'s memory and still needs pages "
            f"that only {src} holds; both halves are kept, nothing was destroyed",
            fix=postcopy_instructions(vm, source.uri, destination.uri),
        )
    source_runs = source.state == "running"
    destination_runs = destination.state == "running"
    if source_runs and destination_runs:
        return RecoveryPlan(
            "failed",
            (),
            f"{vm} runs on both {src} and {dst}: two copies write to its disks",
            fix=f"decide which copy is current, then stop the other at once "
            f"(virsh -c URI destroy {shlex.quote(vm)}); vmigrate does not guess",
        )
    if destination_runs:
        steps: tuple[Step, ...] = (
            ("undefine-source",) if source.exists and source.persistent and not transient else ()
        )
        return RecoveryPlan(
            "completed",
            steps,
            f"the migration had finished: {vm} runs on {dst}"
            + ("; its definition on the source is removed" if steps else ""),
        )
    cleanup: tuple[Step, ...] = (
        ("destroy-destination-leftover",) if destination.incoming_leftover else ()
    )
    if source_runs:
        return RecoveryPlan(
            "aborted",
            cleanup,
            f"the migration did not finish: {vm} runs on {src}"
            + (f"; the unfinished incoming copy on {dst} is removed" if cleanup else ""),
        )
    if source.state == "paused" and source.reason == "migration":
        return RecoveryPlan(
            "aborted",
            (*cleanup, "resume-source"),
            f"{vm} was paused on {src} for a switch-over that never happened: resumed there",
        )
    if source.exists and source.state == "shut off" and not destination.exists:
        return RecoveryPlan(
            "aborted",
            ("start-source",),
            f"{vm} was found shut off on {src} and absent from {dst}: started again on {src}",
        )
    return RecoveryPlan(
        "failed",
        (),
        f"{vm} is {source.state} on {src} and {destination.state} on {dst}: "
        "not a state vmigrate changes by itself",
        fix=f"look at both hosts (virsh -c URI domstate --reason {shlex.quote(vm)}) and "
        "start the copy that holds the current disks",
    )


def postcopy_instructions(
    vm: str, source_uri: str, destination_uri: str, *, tls: bool = False
) -> str:
    """What to do with a post-copy that lost its link; `tls`: the stream used QEMU TLS (the
    resumed stream must too, or the destination refuses it)."""
    resume = shlex.join(
        [
            *("virsh", "-c", source_uri, "migrate", "--live", "--p2p", "--postcopy"),
            *(("--tls",) if tls else ()),
            *("--postcopy-resume", vm, destination_uri),
        ]
    )
    return (
        f"do not destroy {vm} on either host: its memory is split between them. Restore the "
        f"link: the migration then continues by itself, and `vmigrate recover {shlex.quote(vm)}` "
        "records the outcome. If the source still shows 'paused (post-copy failed)' and "
        "nothing moves once the link is back, QEMU gave up on the connection: resume with "
        f"`{resume}`, but first upgrade libvirt on the destination if it is 11.2 or "
        "11.3 (their resume crashes libvirtd; fixed in 11.4; the guest survives the restart)"
    )
