"""One root error for everything vmigrate reports, with context (host, VM) and a next step.

The CLI prints these without a traceback; anything else reaching the CLI is a bug.
"""

from __future__ import annotations


class VmigrateError(Exception):
    """An expected failure: the message says what is wrong, `fix` says what to do."""

    exit_code = 1

    def __init__(
        self, message: str, *, fix: str = "", host: str | None = None, vm: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.host = host
        self.vm = vm

    def __str__(self) -> str:
        where = ", ".join(
            part
            for part in (
                f"host {self.host}" if self.host else "",
                f"VM {self.vm}" if self.vm else "",
            )
            if part
        )
        text = f"{where}: {self.message}" if where else self.message
        return f"{text}\n  what to do: {self.fix}" if self.fix else text


def split_printed_error(stderr: str) -> tuple[str, str]:
    """A `vmigrate` command's stderr read back as (message, fix): its last `error: MESSAGE`
    (with the lines that continue it) and the `  what to do: FIX` after it, as the CLI prints
    a VmigrateError; without an `error:` line, its last line and no fix ("" for none)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    if not starts:
        return (lines[-1] if lines else ""), ""
    message = lines[starts[-1]].removeprefix("error:").strip()
    for rest in lines[starts[-1] + 1 :]:
        if rest.startswith("what to do:"):
            return message, rest.removeprefix("what to do:").strip()
        message += " " + rest
    return message, ""


class UsageError(VmigrateError):
    """The command line or an input file is malformed."""

    exit_code = 2


class EnvironmentProblem(VmigrateError):
    """This machine lacks something vmigrate needs (root, packages, the guest image)."""


class HostUnreachable(VmigrateError):
    """A libvirt daemon did not answer, or the connection to it was lost."""


class HostError(VmigrateError):
    """A host's libvirt refused or failed an operation. `cause` keeps libvirt's own words and
    `code` its error number, so callers outside `virt/` can tell cases apart without libvirt."""

    def __init__(
        self,
        message: str,
        *,
        fix: str = "",
        host: str | None = None,
        vm: str | None = None,
        code: int | None = None,
        cause: str = "",
    ) -> None:
        super().__init__(message, fix=fix, host=host, vm=vm)
        self.code = code
        self.cause = cause


class DriverMissing(HostError):
    """The host's libvirt daemon lacks a driver (storage, network, ...): a package to install."""


def install_fix(package: str, host: str = "that host") -> str:
    """What to do about a missing libvirt driver package (a check finding or an error)."""
    return (
        f"install {package} on {host} (Debian 12: "
        f"`apt-get install -t bookworm-backports {package}`, or `./scripts/setup.sh` for the "
        "lab) and restart its libvirtd"
    )


class Vanished(HostError):
    """A domain, volume or pool went away while vmigrate looked at it: an answer, not a crash."""


class OutOfSpace(VmigrateError):
    """The destination would run out of space: the copy stops before it does."""


class GuestImageError(VmigrateError):
    """The lab's guest image cannot be built, found or booted; the message says what to do."""


class LabError(VmigrateError):
    """The local lab could not do what was asked."""


class NotFound(VmigrateError):
    """A VM or host that the user named does not exist."""


class AlreadyExists(VmigrateError):
    """Creating something that already exists."""


class MigrationRefused(VmigrateError):
    """Pre-flight checks failed, so nothing was moved."""

    def __init__(
        self, message: str, *, fix: str = "", vm: str | None = None, report: object = None
    ) -> None:
        super().__init__(message, fix=fix, vm=vm)
        self.report = report
