"""What travels encrypted: libvirt's control connection to each host (the URI's transport)
and, for a live move, the migration stream itself (QEMU TLS). qemu+ssh and qemu+tls protect
only the control connection: guest memory crosses the link in clear without QEMU TLS."""

from __future__ import annotations

from vmigrate.checks.context import CheckInput
from vmigrate.encryption import migration_tls, tls_reason
from vmigrate.hosts import HostRef, parse_uri
from vmigrate.model import Finding, Mode, Verdict

FAMILY = "encryption"

_CONTROL = {
    "tls": "TLS with certificates",
    "ssh": "SSH (openssh)",
    "libssh": "SSH (libssh)",
    "libssh2": "SSH (libssh2)",
    "unix": "a local UNIX socket",
}


def _control(role: str, ref: HostRef, peer_to_peer: bool) -> Finding:
    uri = parse_uri(ref.uri)
    transport = uri.effective_transport
    evidence: dict[str, object] = {"uri": ref.uri, "transport": transport}
    if role == "destination" and peer_to_peer and ref.peer_uri:
        # The source's libvirtd opens the peer URI: it must be encrypted as well.
        evidence["peer_uri"] = ref.peer_uri
        peer = parse_uri(ref.peer_uri)
        if not peer.encrypted:
            return Finding(
                f"encryption.control-{role}",
                FAMILY,
                Verdict.WARN,
                f"UNENCRYPTED peer connection to {ref.name}: the source's libvirtd reaches it "
                f"over {ref.peer_uri}, plain TCP without authentication",
                evidence,
                fix=f"give {ref.name} a qemu+tls:// or qemu+ssh:// peer_uri in the hosts file",
            )
    if uri.encrypted:
        return Finding(
            f"encryption.control-{role}",
            FAMILY,
            Verdict.PASS,
            f"control connection to {ref.name}: {_CONTROL[transport]}, encrypted and authenticated",
            evidence,
        )
    return Finding(
        f"encryption.control-{role}",
        FAMILY,
        Verdict.WARN,
        f"UNENCRYPTED control connection to {ref.name}: {ref.uri} is plain TCP without "
        "authentication; anyone on the path can read or take over the libvirt connection",
        evidence,
        fix=f"reach {ref.name} over qemu+tls:// or qemu+ssh:// outside an isolated test network",
    )


def _stream(facts: CheckInput, source: HostRef, destination: HostRef) -> Finding:
    requested = facts.migration_tls_requested
    encrypted = migration_tls(requested, source, destination)
    reason = tls_reason(requested, source, destination)
    evidence = {
        "tls": encrypted,
        "requested": requested,
        "source_declares": source.migration_tls,
        "destination_declares": destination.migration_tls,
    }
    if encrypted:
        return Finding(
            "encryption.migration-stream",
            FAMILY,
            Verdict.PASS,
            f"migration stream: QEMU TLS, encrypted ({reason})",
            evidence,
        )
    return Finding(
        "encryption.migration-stream",
        FAMILY,
        Verdict.WARN,
        "UNENCRYPTED migration stream: the guest's memory"
        + (" and copied disks" if facts.copy_storage else "")
        + f" cross the link in clear ({reason})",
        evidence,
        fix="put QEMU TLS certificates in /etc/pki/qemu on both hosts, set migration_tls = "
        "true for them in the hosts file (or pass --tls)"
        if requested is not False
        else "drop --no-tls unless the link between the hosts is trusted",
    )


def check_encryption(facts: CheckInput) -> list[Finding]:
    source, destination = facts.source_ref, facts.destination_ref
    if source is None or destination is None:
        return []
    findings = [
        _control("source", source, facts.peer_to_peer),
        _control("destination", destination, facts.peer_to_peer),
    ]
    if facts.mode is Mode.LIVE:
        findings.append(_stream(facts, source, destination))
    return findings
