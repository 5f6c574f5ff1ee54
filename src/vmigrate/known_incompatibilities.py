"""Known incompatibilities between QEMU and libvirt versions, kept as data with references.

Each entry names the version ranges it applies to (the source's and the destination's QEMU
and libvirt), and, where the bug needs more, the migration feature the move must use or what
the guest must have. `checks/versions.py` matches them against a move and turns each match
into a finding; an entry is added here, not as code.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmigrate.model import Verdict
from vmigrate.versions import format_version, parse_version


@dataclass(frozen=True)
class VersionRange:
    low: int = 0  # inclusive
    high: int | None = None  # exclusive

    def __contains__(self, version: object) -> bool:
        if not isinstance(version, int):
            return False
        return self.low <= version and (self.high is None or version < self.high)

    def describe(self) -> str:
        if self.high is None:
            return f">= {format_version(self.low)}" if self.low else "any"
        if not self.low:
            return f"< {format_version(self.high)}"
        return f"{format_version(self.low)} to < {format_version(self.high)}"


ANY = VersionRange()


def between(low: str, high: str | None = None) -> VersionRange:
    return VersionRange(parse_version(low), parse_version(high) if high else None)


def below(high: str) -> VersionRange:
    return VersionRange(0, parse_version(high))


#: What a guest must have for an entry to apply (checks/versions.py reads them off its XML).
GUEST_SMT = "several threads per core"  # <cpu><topology threads='2' or more>
GUEST_TCG = "TCG (domain type 'qemu')"


@dataclass(frozen=True)
class KnownIncompatibility:
    key: str  # the finding's subject: stable, short
    problem: str  # what goes wrong, as the finding says it
    references: tuple[str, ...]
    verdict: Verdict  # FAIL: the move fails; WARN: it may
    fix: str  # may name {source} and {destination}
    source_qemu: VersionRange = ANY
    destination_qemu: VersionRange = ANY
    source_libvirt: VersionRange = ANY
    destination_libvirt: VersionRange = ANY
    feature: str | None = None  # only when the move uses this migration feature
    guest: str | None = None  # only for guests with this (GUEST_*)

    def applies(
        self, source: tuple[int, int], destination: tuple[int, int], features: set[str]
    ) -> bool:
        """Whether the versions ((QEMU, libvirt) per side) and the features match; the guest
        condition is the caller's."""
        return (
            source[0] in self.source_qemu
            and source[1] in self.source_libvirt
            and destination[0] in self.destination_qemu
            and destination[1] in self.destination_libvirt
            and (self.feature is None or self.feature in features)
        )


KNOWN: tuple[KnownIncompatibility, ...] = (
    KnownIncompatibility(
        "libvirt-ht-qemu-10",
        "libvirt before 11.10 rejects an incoming migration to QEMU 10.0 or newer of a guest "
        "with several CPU threads per core (\"guest CPU doesn't match specification: extra "
        'features: ht")',
        (
            "libvirt 11.10.0 release notes: 'qemu: Fix incoming migration to QEMU 10.0.0 and "
            "newer'",
            "https://redhat.atlassian.net/browse/RHEL-104216",
            "https://github.com/harvester/harvester/issues/11615",
        ),
        Verdict.FAIL,
        "upgrade libvirt on {destination} to 11.10 or newer, or move the VM cold",
        destination_qemu=between("10.0"),
        destination_libvirt=below("11.10"),
        guest=GUEST_SMT,
    ),
    KnownIncompatibility(
        "qemu-2720-multifd",
        "multifd from a QEMU older than 9.0 to QEMU 9.2.0 fails (the older QEMU sends data "
        "with its SYNC packets, which 9.2.0 no longer reads)",
        (
            "https://gitlab.com/qemu-project/qemu/-/issues/2720",
            "QEMU commit b93d897ea2f0 'migration/multifd: Fix compat with QEMU < 9.0' "
            "(in 10.0, and the 9.2 stable branch)",
        ),
        Verdict.FAIL,
        "move it without --parallel, or update QEMU on {destination} past 9.2.0",
        source_qemu=below("9.0"),
        destination_qemu=between("9.2.0", "9.2.1"),
        feature="multifd",
    ),
    KnownIncompatibility(
        "qemu-7.2-tcg-busy-guest",
        "QEMU 7.2 under TCG corrupted guests that wrote memory during a live migration (the "
        "destination's kernel oopsed after the switch-over); idle guests moved fine",
        ("measured in vmigrate's lab, docs/lab.md 'A host on another version'",),
        Verdict.WARN,
        "move a busy guest cold, or upgrade QEMU on {source} first",
        source_qemu=between("7.2", "7.3"),
        guest=GUEST_TCG,
    ),
)
