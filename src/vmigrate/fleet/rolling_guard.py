"""The roll's gate around the operator's command: the host it runs on is empty by its own
libvirt's word, not by the plan's, and stays so while the command runs.

Right before the command starts:
1. the host is put in maintenance again (a no-op unless someone ended it meanwhile), so no
   vmigrate of this store plans or starts a move onto it from this moment (guard.py checks
   the mark before every move);
2. a watch on the host's domain lifecycle events starts;
3. the host's domains are listed, running and defined: any domain there (an operator started
   one after the evacuation, an incoming move of a vmigrate on another store or run with
   --force) stops the roll before the command runs, naming it.

The listing is the last thing before the command starts, so the window in which a domain
can appear unseen is the command's own start (a fork and an exec): libvirt has no way to
refuse new domains for a while. What lands in that window or while the command runs is not
lost: the watch saw it defined, started or resumed, and the step fails after the command
with its name, even if the command (a reboot) made it vanish. The health check then lists
the host's domains again once it answers (rolling_host.health_check)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from vmigrate.fleet.rolling_host import RollStepFailed
from vmigrate.hosts import HostRef
from vmigrate.store import JobStore
from vmigrate.virt.connection import open_with_timeout
from vmigrate.virt.host_domains import Appeared, AppearingWatch, HostDomain, domains_on

#: Seconds the host's libvirt may take to answer the check before the command.
CHECK_TIMEOUT_S = 15.0


def describe_domains(domains: tuple[HostDomain, ...]) -> str:
    return ", ".join(
        f"{d.name} ({d.state}{', defined' if d.persistent else ', transient'})" for d in domains
    )


#: What the roll did not do, said when domains are found before the command.
COMMAND_NOT_RUN = "the command was not run on it"
#: ... and when they are found by the health check after it.
FOUND_AFTER_COMMAND = "found once it answered after the command: its VMs do not come back yet"


def found_on_emptied_host(
    host: str, domains: tuple[HostDomain, ...], job_id: int, consequence: str = COMMAND_NOT_RUN
) -> None:
    """Refuse to go on while the host the roll emptied holds domains (RollStepFailed)."""
    if not domains:
        return
    first = domains[0].name
    raise RollStepFailed(
        f"{len(domains)} domain(s) on {host}, which the roll emptied and keeps in maintenance: "
        f"{describe_domains(domains)}; {consequence}",
        host=host,
        vm=first,
        fix=f"move {'them' if len(domains) > 1 else 'it'} to a host not in maintenance "
        f"(`vmigrate live {first} --from {host} --to HOST`), or shut down and undefine "
        f"{'them' if len(domains) > 1 else 'it'} if it does not belong there, then "
        f"`vmigrate jobs resume {job_id}`",
    )


def _when(appeared: Appeared) -> str:
    return time.strftime("%H:%M:%S", time.localtime(appeared.at))


def appeared_during_command(host: str, appeared: list[Appeared], outcome: str, job_id: int) -> None:
    """Refuse to go on when a domain appeared on the host while the command ran."""
    if not appeared:
        return
    names = sorted({a.vm for a in appeared})
    seen = "; ".join(f"{a.vm} {a.event} at {_when(a)}" for a in appeared)
    raise RollStepFailed(
        f"while the command ran on {host} ({outcome}), a second actor put "
        f"{', '.join(names)} there: {seen}; the command may have stopped or harmed "
        f"{'them' if len(names) > 1 else 'it'}",
        host=host,
        vm=names[0],
        fix=f"find where {names[0]} runs and that its disks are intact (`vmigrate recover "
        f"{names[0]}`), keep it off {host} until the roll brings its VMs back, then "
        f"`vmigrate jobs resume {job_id}` (the command runs again)",
    )


@contextlib.contextmanager
def host_kept_empty(
    store: JobStore, job_id: int, ref: HostRef, on_remarked: Callable[[str], None]
) -> Iterator[AppearingWatch]:
    """Mark, watch, list (module docstring); yields the watch for the command's duration.
    `on_remarked` is told when the host had left maintenance and was put back."""
    if not store.in_maintenance(ref.uri):  # kept as it is when marked (its evacuation's job)
        store.set_maintenance(ref.name, ref.uri, None, f"rolling upgrade job {job_id}")
        on_remarked(
            f"{ref.name} was no longer in maintenance (someone ended it during the roll): "
            "put back until its VMs return"
        )
    conn = open_with_timeout(ref.uri, host=ref.name, timeout=CHECK_TIMEOUT_S)
    try:
        watch = AppearingWatch(conn, host=ref.name)
        try:
            found_on_emptied_host(ref.name, domains_on(conn, host=ref.name), job_id)
            yield watch
        finally:
            watch.close()
    finally:
        with contextlib.suppress(Exception):  # the command may have restarted its libvirt
            conn.close()
