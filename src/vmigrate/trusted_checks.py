"""The checks a fleet job made before it started a move, handed to the move's child (a
private file named by `--trust-checks`), so that the child checks again only what can have
changed since: the VM's state and the destination's free memory. Its lease and the
destination's maintenance are checked by guard.py before every move anyway. Pure but for
reading the file."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmigrate.errors import UsageError
from vmigrate.model import CheckReport, Finding, Mode

#: Checks older than this are not trusted: the child checks everything again.
TRUST_FOR_S = 900.0
#: The checks a child makes again (prefixes of `Finding.check`): what can change in the
#: seconds or minutes between the fleet's checks and the move's start.
RECHECKED = ("state.", "resources.")


@dataclass(frozen=True)
class TrustedChecks:
    job_id: int  # the fleet job that made them
    made_at: float  # time.time() when they were made
    report: CheckReport

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "made_at": self.made_at, "report": self.report.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrustedChecks:
        return cls(
            int(values["job_id"]), float(values["made_at"]), CheckReport.from_dict(values["report"])
        )

    def refusal(
        self, vm: str, source: str, destination: str, mode: Mode, copy_storage: bool, now: float
    ) -> str | None:
        """Why these checks do not stand for this move (None: they do)."""
        report = self.report
        if (report.vm, report.source, report.destination) != (vm, source, destination):
            return (
                f"they are of {report.vm} from {report.source} to {report.destination}, "
                f"not of {vm} from {source} to {destination}"
            )
        if (report.mode, report.copy_storage) != (mode, copy_storage):
            return "they were made for another kind of move"
        age = now - self.made_at
        if not 0 <= age <= TRUST_FOR_S:
            return f"they are {age:.0f} s old (trusted up to {TRUST_FOR_S:.0f} s)"
        return None


#: How a move's child says it trusted a fleet job's checks (a Notice, stored with its job).
TRUSTED_PREFIX = "pre-flight: trusted the checks of job"


def trusted_notice(trusted: TrustedChecks, again: Iterable[str]) -> str:
    return f"{TRUSTED_PREFIX} {trusted.job_id}; checked again: {', '.join(again)}"


def rechecked(check: str) -> bool:
    return check.startswith(RECHECKED)


def merged(trusted: CheckReport, fresh: Iterable[Finding], seconds: float) -> CheckReport:
    """The trusted report with every finding the child checked again replaced by its new
    one; `seconds` is what the child spent."""
    kept = tuple(f for f in trusted.findings if not rechecked(f.check))
    return CheckReport(
        trusted.vm,
        trusted.source,
        trusted.destination,
        trusted.mode,
        trusted.copy_storage,
        kept + tuple(f for f in fresh if rechecked(f.check)),
        seconds,
    )


def read_trusted(path: Path) -> TrustedChecks:
    """The file a fleet job wrote for this child: refused unless it is ours and private
    (another user could otherwise hand a move checks it never passed)."""
    values = read_private_json(path, "--trust-checks", "leave --trust-checks to the fleet jobs")
    try:
        return TrustedChecks.from_dict(values)
    except (ValueError, KeyError, TypeError) as err:
        raise UsageError(f"--trust-checks {path}: not a fleet job's checks ({err})") from err


def read_private_json(path: Path, named_by: str, fix: str) -> Any:
    """What a fleet job handed its move's child in a file (`named_by` names it: an option,
    a variable): refused unless it is a private regular file of this user, not a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise UsageError(f"{named_by} {path}: {err.strerror}") from err
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if (
            not stat.S_ISREG(info.st_mode)
            or info.st_uid != os.getuid()
            or info.st_mode & (stat.S_IRWXG | stat.S_IRWXO)
        ):
            raise UsageError(
                f"{named_by} {path}: not a private file of this user",
                fix=f"{fix} that start moves",
            )
        try:
            return json.loads(handle.read())
        except ValueError as err:
            raise UsageError(f"{named_by} {path}: not JSON ({err})") from err
