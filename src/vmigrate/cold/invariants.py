"""What must still hold right before each step of a cold move that cannot be undone.

- before define and start on the destination: the source is as the stop step left it (not
  active; saved: its state file there and not restarted since), and no other known host
  runs a domain with the VM's UUID;
- before undefining the source: the destination runs the VM (or, not to start there, has
  it defined), and the source does not;
- before restarting the source in a rollback: no other known host runs it.

Each look asks the hosts now, by UUID (a copy under another name writes the same disks); a
host that cannot answer stops the job, since absence is never claimed from a failed look.
"""

from __future__ import annotations

import time

from vmigrate.cold.errors import InvariantViolated
from vmigrate.virt.connection import Connection
from vmigrate.virt.placement import Seen, active_with_uuid, look_by_uuid

#: How a persistent domain that was saved can be off without having been restored since.
SAVED_AND_UNTOUCHED = ("saved", "unknown")  # unknown: libvirtd restarted since


class Invariants:
    def __init__(
        self,
        vm: str,
        uuid: str,
        job_id: int,
        source: tuple[str, Connection],
        others: dict[str, Connection],
    ) -> None:
        """`others`: every other host the move knows of, the destination first."""
        self.vm, self.uuid, self.job_id = vm, uuid, job_id
        self.source_name, self.src = source
        self.others = others

    def _what_to_do(self) -> str:
        return (
            f"shut it down and `vmigrate jobs resume {self.job_id}`, or "
            f"`vmigrate jobs rollback {self.job_id}` to keep it on {self.source_name}"
        )

    def source_as_stopped(self, *, stopped_at: float | None, saved: bool, state_file: bool) -> None:
        """The source is as the stop step left it: nothing active with the VM's UUID; saved:
        its state file is there and the domain was not restored (and stopped) since."""
        seen = look_by_uuid(self.src, self.uuid, host=self.source_name)
        since = f" since the job stopped it at {_clock(stopped_at)}" if stopped_at else ""
        if seen is not None and seen.active:
            raise InvariantViolated(
                f"{self.vm} runs on {self.source_name} again (state {seen.state}){since}: "
                "starting it elsewhere would make two QEMUs write its disks",
                vm=self.vm,
                host=self.source_name,
                fix=self._what_to_do(),
            )
        if not saved:
            return
        if not state_file:
            raise InvariantViolated(
                f"the state file this job saved {self.vm} into is gone from {self.source_name}",
                vm=self.vm,
                host=self.source_name,
                fix=f"roll the job back (vmigrate jobs rollback {self.job_id}): the guest "
                "boots afresh on the source if its state is lost",
            )
        if seen is not None and seen.persistent and seen.shutoff_reason not in SAVED_AND_UNTOUCHED:
            raise InvariantViolated(
                f"{self.vm} ran on {self.source_name} again{since} (it is off now: "
                f"{seen.shutoff_reason}): the saved state no longer matches its disks",
                vm=self.vm,
                host=self.source_name,
                fix=f"roll the job back (vmigrate jobs rollback {self.job_id}) and move it "
                "again; restoring that state would corrupt its disks",
            )

    def runs_nowhere_else(self, *, ours: str | None = None) -> None:
        """No other known host runs a domain with the VM's UUID (`ours`: a host where this
        job itself started it, on an earlier try of the same step)."""
        hosts = {h: c for h, c in self.others.items() if h != ours}
        running = active_with_uuid(self.uuid, hosts)
        if running:
            raise InvariantViolated(
                f"{self.vm} already runs on {_where(running)}: not starting another copy",
                vm=self.vm,
                host=next(iter(running)),
                fix="find out who started it there; to keep it there, roll this job back "
                f"(vmigrate jobs rollback {self.job_id}); to move it, shut that copy down "
                f"and `vmigrate jobs resume {self.job_id}`",
            )

    def destination_has_it(self, destination: str, *, running: bool) -> None:
        """Before the source is undefined: the destination runs the VM (or has it defined,
        when it was not to start there), and the source does not run it."""
        conn = self.others[destination]
        seen = look_by_uuid(conn, self.uuid, host=destination)
        if seen is None or (running and not seen.active) or not seen.persistent:
            found = "not there" if seen is None else f"{seen.state}, persistent {seen.persistent}"
            want = "running" if running else "defined"
            raise InvariantViolated(
                f"{self.vm} is not {want} on {destination} ({found}): "
                f"not undefining it on {self.source_name}",
                vm=self.vm,
                host=destination,
                fix=f"start it on {destination} and `vmigrate jobs resume {self.job_id}`, or "
                f"`vmigrate jobs rollback {self.job_id}` to bring it back on {self.source_name}",
            )
        on_source = look_by_uuid(self.src, self.uuid, host=self.source_name)
        if on_source is not None and on_source.active:
            raise InvariantViolated(
                f"{self.vm} runs on {self.source_name} again while it runs on {destination}: "
                f"two copies; not undefining it on {self.source_name}",
                vm=self.vm,
                host=self.source_name,
                fix=f"shut down the copy whose data you do not keep at once; then "
                f"`vmigrate jobs resume {self.job_id}` (it stays on {destination})",
            )

    def may_restart_source(self) -> None:
        """A rollback brings the VM back on the source only while no other host runs it."""
        running = active_with_uuid(self.uuid, self.others)
        if running:
            raise InvariantViolated(
                f"{self.vm} runs on {_where(running)}: not restarting it on {self.source_name}",
                vm=self.vm,
                host=next(iter(running)),
                fix=f"it stays where it runs; to bring it back on {self.source_name}, shut "
                f"that copy down and `vmigrate jobs rollback {self.job_id}` again",
            )


def _where(running: dict[str, Seen]) -> str:
    return ", ".join(
        f"{host} (as {seen.name!r}, state {seen.state})" for host, seen in running.items()
    )


def _clock(at: float | None) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(at)) if at else "?"
