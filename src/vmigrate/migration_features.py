"""Which migration features a QEMU offers, by version, and which ones a live move uses (data).

Each feature is QEMU's own name for it (a `query-migrate-capabilities` capability, or the
`tls-creds` parameter for TLS), with the first QEMU version that has it, the version that
removed it, the libvirt that drives it (the flag vmigrate sets), and where that is written.
The table agrees with what QEMU 7.2.22 and 10.0.2 answered in the lab
(tests/unit/data/versions/*-migrate-capabilities.json, *-migrate-parameters.json).

A move asks for some features outright (`--parallel`, `--compress`, TLS): a side without one
refuses the move. Others the policy may use (post-copy, auto-converge): a side without one
only takes them off the policy's table for this move.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmigrate.versions import parse_version

QAPI = "QEMU qapi/migration.json, MigrationCapability"
REMOVED_9_1 = (
    "QEMU docs/about/removed-features.rst: deprecated in 8.2, removed in 9.1 "
    "(tests/unit/data/versions: 7.2.22 has it, 10.0.2 does not)"
)


@dataclass(frozen=True)
class MigrationFeature:
    name: str  # QEMU's name
    what: str  # what vmigrate uses it for, as a finding says it
    since: int  # the first QEMU version that has it (libvirt's encoding)
    reference: str
    removed: int | None = None  # the first QEMU version without it
    libvirt_since: int = 0  # the libvirt whose flag vmigrate sets for it

    def offered_by(self, qemu: int, libvirt: int) -> bool:
        present = self.since <= qemu and (self.removed is None or qemu < self.removed)
        return present and libvirt >= self.libvirt_since


FEATURES: tuple[MigrationFeature, ...] = (
    MigrationFeature(
        "xbzrle",
        "page compression (--compress: libvirt's default method, xbzrle)",
        parse_version("1.2"),
        f"{QAPI} (since 1.2); libvirt VIR_MIGRATE_COMPRESSED",
        libvirt_since=parse_version("1.0.3"),
    ),
    MigrationFeature(
        "auto-converge",
        "throttling a guest that does not converge (auto-converge)",
        parse_version("1.6"),
        f"{QAPI} (since 1.6); libvirt VIR_MIGRATE_AUTO_CONVERGE",
        libvirt_since=parse_version("1.2.3"),
    ),
    MigrationFeature(
        "zero-blocks", "zero blocks in block migration", parse_version("1.6"), f"{QAPI} (1.6)"
    ),
    MigrationFeature(
        "compress",
        "multi-threaded compression (libvirt's 'mt' method)",
        parse_version("2.4"),
        REMOVED_9_1,
        removed=parse_version("9.1"),
    ),
    MigrationFeature(
        "postcopy-ram",
        "post-copy",
        parse_version("2.6"),
        f"{QAPI} (since 2.6); libvirt VIR_MIGRATE_POSTCOPY",
        libvirt_since=parse_version("1.3.3"),
    ),
    MigrationFeature(
        "tls",
        "TLS for the migration stream (--tls)",
        parse_version("2.7"),
        "QEMU qapi/migration.json, MigrationParameter tls-creds (since 2.7); libvirt "
        "VIR_MIGRATE_TLS",
        libvirt_since=parse_version("3.7.0"),
    ),
    MigrationFeature(
        "return-path", "the return path", parse_version("2.10"), f"{QAPI} (since 2.10)"
    ),
    MigrationFeature(
        "block",
        "block migration (vmigrate copies disks with NBD instead)",
        parse_version("2.10"),
        REMOVED_9_1,
        removed=parse_version("9.1"),
    ),
    MigrationFeature(
        "multifd",
        "parallel connections (--parallel, multifd)",
        parse_version("4.0"),
        f"{QAPI} (since 4.0); libvirt VIR_MIGRATE_PARALLEL",
        libvirt_since=parse_version("5.2.0"),
    ),
    MigrationFeature(
        "postcopy-preempt", "post-copy preemption", parse_version("7.1"), f"{QAPI} (since 7.1)"
    ),
    MigrationFeature(
        "zero-copy-send", "zero-copy send", parse_version("7.1"), f"{QAPI} (since 7.1)"
    ),
    MigrationFeature(
        "switchover-ack", "switch-over acknowledgement", parse_version("8.1"), f"{QAPI} (8.1)"
    ),
    MigrationFeature(
        "dirty-limit", "dirty-rate limit", parse_version("8.1"), f"{QAPI} (since 8.1)"
    ),
    MigrationFeature("mapped-ram", "mapped RAM", parse_version("9.0"), f"{QAPI} (since 9.0)"),
)
BY_NAME = {feature.name: feature for feature in FEATURES}


def offered(qemu: int, libvirt: int) -> frozenset[str]:
    """The features a host with this QEMU and libvirt offers."""
    return frozenset(f.name for f in FEATURES if f.offered_by(qemu, libvirt))


@dataclass(frozen=True)
class FeatureUse:
    """The migration features a live move would use."""

    required: tuple[str, ...] = ()  # the user's options ask for them: both sides must have them
    optional: tuple[str, ...] = ()  # the policy may use them: a side without one restricts it
    why: dict[str, str] | None = None  # feature -> the option that asks for it


def features_used(
    *, postcopy: bool, autoconverge: bool, parallel: bool, compressed: bool, tls: bool
) -> FeatureUse:
    """What a live move with these options uses (the same flags virt/migration.py sets)."""
    asked = {
        "multifd": (parallel, "--parallel"),
        "xbzrle": (compressed, "--compress"),
        "tls": (tls, "--tls (or both hosts' migration_tls)"),
    }
    return FeatureUse(
        required=tuple(name for name, (used, _option) in asked.items() if used),
        optional=tuple(
            name
            for name, used in (("postcopy-ram", postcopy), ("auto-converge", autoconverge))
            if used
        ),
        why={name: option for name, (used, option) in asked.items() if used},
    )


def lacking(
    use: FeatureUse, source: tuple[int, int], destination: tuple[int, int]
) -> dict[str, list[str]]:
    """Feature -> the sides ('source', 'destination') without it, for the features `use`
    names; each side given as (QEMU version, libvirt version)."""
    sides = {"source": offered(*source), "destination": offered(*destination)}
    missing: dict[str, list[str]] = {}
    for name in (*use.required, *use.optional):
        without = [side for side, features in sides.items() if name not in features]
        if without:
            missing[name] = without
    return missing
