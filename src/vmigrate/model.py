"""Typed, immutable values that flow between the stages: facts -> findings -> report.

Every value here can be turned into JSON (`to_dict`) for `--json`, the job store and fixtures.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any, Literal


class Verdict(enum.StrEnum):
    PASS = "pass"  # noqa: S105 - a verdict, not a password
    WARN = "warn"
    FAIL = "fail"
    SKIPPED = "skipped"


class Mode(enum.StrEnum):
    LIVE = "live"
    COLD = "cold"


@dataclass(frozen=True)
class Finding:
    """What one check saw: a verdict, the evidence behind it, and how to fix a problem."""

    check: str  # e.g. "cpu.compatible"
    family: str  # versions, machine, connectivity, storage, cpu, resources, devices, ...
    verdict: Verdict
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    fix: str = ""
    subject: str = ""  # what the check was about when there are several (a disk, a NIC)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict.value}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Finding:
        """A finding back from its `to_dict`."""
        return cls(
            check=str(values["check"]),
            family=str(values["family"]),
            verdict=Verdict(values["verdict"]),
            summary=str(values["summary"]),
            evidence=dict(values.get("evidence") or {}),
            fix=str(values.get("fix") or ""),
            subject=str(values.get("subject") or ""),
        )


@dataclass(frozen=True)
class CheckReport:
    vm: str
    source: str
    destination: str
    mode: Mode
    copy_storage: bool
    findings: tuple[Finding, ...]
    seconds: float

    @property
    def failed(self) -> bool:
        return any(f.verdict is Verdict.FAIL for f in self.findings)

    def count(self, verdict: Verdict) -> int:
        return sum(1 for f in self.findings if f.verdict is verdict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "source": self.source,
            "destination": self.destination,
            "mode": self.mode.value,
            "copy_storage": self.copy_storage,
            "ok": not self.failed,
            "counts": {v.value: self.count(v) for v in Verdict},
            "seconds": round(self.seconds, 3),
            "findings": [f.to_dict() for f in self.findings],
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CheckReport:
        """A report back from its `to_dict` (the `checks` event, a fleet's trusted checks)."""
        return cls(
            vm=str(values["vm"]),
            source=str(values["source"]),
            destination=str(values["destination"]),
            mode=Mode(values["mode"]),
            copy_storage=bool(values["copy_storage"]),
            findings=tuple(Finding.from_dict(f) for f in values["findings"]),
            seconds=float(values.get("seconds", 0.0)),
        )


# What `vmigrate recover` observes and does (plan in live/recovery_plan, libvirt side in
# virt/recovery).
Step = Literal["resume-source", "start-source", "destroy-destination-leftover", "undefine-source"]


@dataclass(frozen=True)
class DomainView:
    """The VM as one host sees it."""

    host: str
    uri: str
    exists: bool
    state: str = "absent"  # running | paused | shut off | ... | absent
    reason: str = ""  # for running/paused: migration, postcopy, postcopy-failed, user, ...
    persistent: bool = False
    uuid: str | None = None
    job: str | None = None  # a libvirt job still running on the VM there

    @property
    def in_postcopy(self) -> bool:
        return self.reason in ("postcopy", "postcopy-failed")

    @property
    def incoming_leftover(self) -> bool:
        """A destination domain that only ever was the target of an unfinished migration."""
        return (
            self.exists
            and self.state == "paused"
            and self.reason
            in (
                "migration",
                "starting up",
            )
        )


@dataclass(frozen=True)
class LiveOptions:
    peer_to_peer: bool = True
    persist_destination: bool = True
    postcopy: bool = False  # enable the capability; the switch itself is the policy's call
    autoconverge: bool = False
    autoconverge_initial: int | None = None
    autoconverge_increment: int | None = None
    bandwidth_mib: int | None = None
    parallel_connections: int | None = None
    compressed: bool = False
    tls: bool = False
    migration_uri: str | None = None  # e.g. tcp://10.0.0.2 for the data stream
    copy_disks: tuple[str, ...] = ()  # targets whose top image QEMU mirrors (--copy-storage)


@dataclass(frozen=True)
class Placement:
    vm: str
    states: dict[str, str] = field(default_factory=dict)  # host -> state, where it exists
    persistent: dict[str, bool] = field(default_factory=dict)

    @property
    def running_on(self) -> list[str]:
        return [h for h, s in self.states.items() if s in ("running", "paused", "blocked")]

    @property
    def defined_on(self) -> list[str]:
        return [h for h, p in self.persistent.items() if p]

    @property
    def unknown_on(self) -> list[str]:
        """Hosts that did not answer: they may hold the VM."""
        return [h for h, s in self.states.items() if s.startswith("unknown")]

    def exactly_on(self, host: str, *, defined: bool) -> bool:
        """Running on `host` only; defined there (and nowhere else) when `defined`.

        Not proven while a host does not answer."""
        if self.running_on != [host] or self.unknown_on:
            return False
        return self.defined_on == [host] if defined else True

    def summary(self) -> str:
        running = ", ".join(self.running_on) or "no host"
        defined = ", ".join(self.defined_on) or "no host"
        summary = f"{self.vm} runs on {running}; defined on {defined}"
        for host in self.unknown_on:
            summary += f"; {host} could not be checked: {self.states[host]}"
        return summary

    def to_dict(self) -> dict[str, object]:
        return {
            "running_on": self.running_on,
            "defined_on": self.defined_on,
            "states": self.states,
            "summary": self.summary(),
        }
