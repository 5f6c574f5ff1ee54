"""The lease a job holds on a VM, kept in the domain's own libvirt metadata (pure).

Every vmigrate, whatever machine and job store it uses, reads the lease before it changes
anything about a VM, and refuses a live lease that is not its own (docs/safety.md, section 2).
This module is the value, its XML element, the judgement "live or stale" and the messages;
`virt/lease.py` reads and writes it on the hosts.
"""

from __future__ import annotations

import getpass
import json
import socket
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from vmigrate.errors import VmigrateError

NAMESPACE = "https://vmigrate.dev/xmlns/lease/1"
#: The namespace prefix libvirt writes the element with (`<vmigrate:lease ...>`).
PREFIX = "vmigrate"
ELEMENT = "lease"
#: A holder that has not renewed its lease for this long is presumed gone (unless libvirt
#: still runs a job on the domain: a live migration blocks renewals while it runs).
DEFAULT_TTL_S = 90
RENEW_INTERVAL_S = 20.0
#: Between our write and the read-back that proves the lease is ours: a second writer that
#: read "free" before our write must write within this time to be seen (and to win).
SETTLE_S = 0.5


class LeaseError(VmigrateError):
    """A VM's lease stops this move: held by another job, stale, lost in a race, unreadable."""


class MalformedLease(ValueError):
    """A metadata element in the lease namespace that is not a lease vmigrate can read."""


@dataclass(frozen=True)
class Holder:
    """Who takes a lease: one job of one store. The token is what proves it is the same job
    (a job id alone repeats across stores); it stays in the job's parameters."""

    job: int
    kind: str
    owner: str  # user@machine
    store: str  # the job store's identity (a UUID)
    token: str


@dataclass(frozen=True)
class Lease:
    job: int
    kind: str
    owner: str
    store: str
    token: str
    taken: datetime
    renewed: datetime
    ttl_s: int = DEFAULT_TTL_S

    @classmethod
    def new(cls, holder: Holder, now: datetime, ttl_s: int = DEFAULT_TTL_S) -> Lease:
        now = to_the_second(now)
        return cls(
            holder.job, holder.kind, holder.owner, holder.store, holder.token, now, now, ttl_s
        )

    def renewed_at(self, now: datetime) -> Lease:
        return replace(self, renewed=to_the_second(now))

    def held_by(self, holder: Holder) -> bool:
        """Ours: the same job of the same store, proven by the token."""
        return (self.job, self.store, self.token) == (holder.job, holder.store, holder.token)

    def expires(self) -> datetime:
        return self.renewed + timedelta(seconds=self.ttl_s)

    def age_s(self, now: datetime) -> float:
        """Seconds since the holder last renewed it."""
        return (now - self.renewed).total_seconds()

    def to_xml(self) -> str:
        """The element as `setMetadata` takes it: libvirt adds the namespace and prefix."""
        return ET.tostring(ET.Element(ELEMENT, self._attributes()), encoding="unicode")

    def to_element_xml(self) -> str:
        """The element as it appears inside a domain's `<metadata>`."""
        ET.register_namespace(PREFIX, NAMESPACE)
        element = ET.Element(f"{{{NAMESPACE}}}{ELEMENT}", self._attributes())
        return ET.tostring(element, encoding="unicode")

    def to_dict(self) -> dict[str, Any]:
        """For display and the store's history: everything but the token."""
        return {
            "job": self.job,
            "kind": self.kind,
            "owner": self.owner,
            "store": self.store,
            "taken": format_time(self.taken),
            "renewed": format_time(self.renewed),
            "ttl_s": self.ttl_s,
        }

    def _attributes(self) -> dict[str, str]:
        return {
            "job": str(self.job),
            "kind": self.kind,
            "owner": self.owner,
            "store": self.store,
            "token": self.token,
            "taken": format_time(self.taken),
            "renewed": format_time(self.renewed),
            "ttl": str(self.ttl_s),
        }


def to_the_second(moment: datetime) -> datetime:
    """What the element keeps of a time: UTC, whole seconds."""
    return moment.astimezone(UTC).replace(microsecond=0)


def format_time(moment: datetime) -> str:
    """UTC, ISO 8601, to the second: 2026-12-07T12:00:30Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return moment.astimezone(UTC)


def decode(text: str) -> Lease:
    """A lease from the element libvirt returns (`<lease xmlns="..." .../>`), or as found in
    a domain's `<metadata>` (`<vmigrate:lease xmlns:vmigrate="..." .../>`)."""
    try:
        element = ET.fromstring(text)
    except ET.ParseError as err:
        raise MalformedLease(f"not XML: {err}") from err
    namespace, _, local = element.tag.rpartition("}")
    if local != ELEMENT or namespace not in ("", "{" + NAMESPACE):
        raise MalformedLease(f"not a lease element: {element.tag}")
    attributes = element.attrib
    try:
        return Lease(
            job=int(attributes["job"]),
            kind=attributes["kind"],
            owner=attributes["owner"],
            store=attributes["store"],
            token=attributes["token"],
            taken=parse_time(attributes["taken"]),
            renewed=parse_time(attributes["renewed"]),
            ttl_s=int(attributes["ttl"]),
        )
    except KeyError as err:
        raise MalformedLease(f"the lease has no {err.args[0]!r}") from err
    except ValueError as err:
        raise MalformedLease(f"the lease has a bad value: {err}") from err


def lease_in_domain_xml(xml: str) -> Lease | None:
    """The lease inside a domain's XML, if any (a malformed one raises MalformedLease)."""
    root = ET.fromstring(xml)
    found = root.find(f"metadata/{{{NAMESPACE}}}{ELEMENT}")
    return None if found is None else decode(ET.tostring(found, encoding="unicode"))


@dataclass(frozen=True)
class Liveness:
    live: bool
    why: str  # "renewed 12 s ago", "libvirt runs a job on it", "not renewed for 300 s"


def judge(lease: Lease, now: datetime, *, job_in_progress: bool) -> Liveness:
    """Live while renewed within its ttl, or while libvirt runs a job on the domain (a live
    migration holds the domain's job lock, so its holder cannot renew during the call)."""
    age = lease.age_s(now)
    if now < lease.expires():
        return Liveness(True, f"renewed {_ago(age)}")
    if job_in_progress:
        return Liveness(True, f"libvirt runs a job on it (renewed {_ago(age)})")
    return Liveness(False, f"not renewed for {_span(age)} (ttl {lease.ttl_s} s)")


def _span(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _ago(seconds: float) -> str:
    return "in the future (clocks differ)" if seconds < -1 else f"{_span(seconds)} ago"


#: What to do with the lease found on a VM before taking it.
TAKE, RENEW, TAKE_OVER = "take", "renew", "take over"
#: The lease found is the fleet job's, handed to this move's child (HandedLease).
HANDOVER = "handover"


#: Names the private file in which a fleet job hands a move's child its lease on the VM
#: (HandedLease): set by the fleet for that child only (fleet/moves.py), read by guard.py.
HANDOVER_ENV = "VMIGRATE_LEASE_HANDOVER"


@dataclass(frozen=True)
class HandedLease:
    """A fleet job's lease on one VM, handed to the child that moves it: the child replaces
    it with its own without waiting to see a rival (docs/safety.md, "The fleet's lease
    handed to its move"). It carries the fleet job's token, so it lives only in a private
    file of the job's log directory, never in the store or a log."""

    vm: str
    holder: Holder

    def to_dict(self) -> dict[str, Any]:
        return {"vm": self.vm, **asdict(self.holder)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> HandedLease:
        return cls(
            str(values["vm"]),
            Holder(
                int(values["job"]),
                str(values["kind"]),
                str(values["owner"]),
                str(values["store"]),
                str(values["token"]),
            ),
        )


def settle_needed(action: str, found: Lease | None, now: datetime) -> bool:
    """Whether a taker must wait SETTLE_S and read back before it holds the VM: always, but
    for a handover of a live lease. The settle exists to see a rival that read the VM free
    at the same moment; while a live lease of the fleet job stands, nobody reads it free
    (a live lease is refused even with --take-over-lease), and the fleet job's own take
    settled. A handed lease gone stale may be being taken over: the full way then."""
    if action != HANDOVER or found is None:
        return True
    return not judge(found, now, job_in_progress=False).live


def decide(
    found: Lease | None,
    holder: Holder,
    now: datetime,
    *,
    job_in_progress: bool,
    take_over: bool,
    vm: str,
    host: str,
    handed: Holder | None = None,
) -> str:
    """TAKE a free VM, RENEW our own lease (a resumed job), HANDOVER the lease of the fleet
    job that `handed` it to us, TAKE_OVER a stale lease with the flag; anything else raises
    LeaseError naming the holder."""
    if found is None:
        return TAKE
    if found.held_by(holder):
        return RENEW
    if handed is not None and found.held_by(handed):
        return HANDOVER
    liveness = judge(found, now, job_in_progress=job_in_progress)
    if liveness.live:
        raise held_error(found, liveness, vm=vm, host=host)
    if take_over:
        return TAKE_OVER
    raise stale_error(found, liveness, vm=vm, host=host)


def describe(lease: Lease) -> str:
    return f"{lease.kind} job {lease.job} of {lease.owner} (store {lease.store})"


def held_error(found: Lease, liveness: Liveness, *, vm: str, host: str) -> LeaseError:
    return LeaseError(
        f"{vm} is leased by {describe(found)}, taken {format_time(found.taken)}, "
        f"{liveness.why}: nothing was changed",
        vm=vm,
        host=host,
        fix=f"wait for that job to end (ask {found.owner}; `vmigrate jobs show {found.job}` "
        "with its store), then retry",
    )


def stale_error(found: Lease, liveness: Liveness, *, vm: str, host: str) -> LeaseError:
    return LeaseError(
        f"{vm} carries a stale lease of {describe(found)}: {liveness.why} and libvirt runs "
        "no job on it; nothing was changed",
        vm=vm,
        host=host,
        fix="make sure that job no longer runs (its holder may be alive somewhere it cannot "
        f"renew from, e.g. cut off from {host}: taking over then lets two jobs act on one VM, "
        "which can leave it on two hosts or lose a disk), then retry with --take-over-lease",
    )


def malformed_error(problem: str, *, vm: str, host: str) -> LeaseError:
    return LeaseError(
        f"{vm} carries a lease element vmigrate cannot read ({problem}): nothing was changed",
        vm=vm,
        host=host,
        fix="find out who wrote it (`virsh metadata "
        f"{vm} {NAMESPACE}`), then retry with --take-over-lease to replace it",
    )


def lost_race_error(found: Lease | None, *, vm: str, host: str) -> LeaseError:
    who = f"{describe(found)}" if found is not None else "nobody (it was removed)"
    return LeaseError(
        f"another vmigrate wrote its lease on {vm} at the same moment: the lease is now held "
        f"by {who}; nothing was changed",
        vm=vm,
        host=host,
        fix="let that job run; retry once it has ended",
    )


def slow_take_error(took_s: float, settle_s: float, *, vm: str, host: str) -> LeaseError:
    return LeaseError(
        f"taking the lease on {vm} took {took_s:.2f} s from reading it to writing it, longer "
        f"than the {settle_s:g} s another vmigrate waits to see a rival: its lease may have "
        "been overwritten unseen, so this one backs out; nothing was changed",
        vm=vm,
        host=host,
        fix=f"retry; if it happens again, the link to {host} or this machine is too slow",
    )


def current_owner() -> str:
    """user@machine of this process (the lease's owner)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def now_utc() -> datetime:
    return datetime.now(UTC)
