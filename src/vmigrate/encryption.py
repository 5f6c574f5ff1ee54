"""What is encrypted on a move: libvirt's control connection (the URI's transport) and the
migration stream (QEMU's own TLS), decided from the hosts as declared (pure)."""

from __future__ import annotations

from vmigrate.hosts import HostRef


def migration_tls(requested: bool | None, source: HostRef, destination: HostRef) -> bool:
    """--tls or --no-tls as asked; otherwise TLS when both hosts have QEMU TLS credentials."""
    if requested is not None:
        return requested
    return bool(source.migration_tls and destination.migration_tls)


def tls_reason(requested: bool | None, source: HostRef, destination: HostRef) -> str:
    """Why the stream is (or is not) encrypted, in the words of the check's report."""
    if requested is True:
        return "--tls was given"
    if requested is False:
        return "--no-tls was given"
    lacking = [ref.name for ref in (source, destination) if not ref.migration_tls]
    if not lacking:
        return "both hosts have QEMU TLS credentials, so vmigrate uses TLS by default"
    return (
        f"{' and '.join(lacking)} declare{'s' if len(lacking) == 1 else ''} no QEMU TLS "
        "credentials (migration_tls in the hosts file)"
    )
