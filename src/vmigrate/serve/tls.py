"""The server's certificate: the one the user names, or one made once and kept privately.

A made certificate is self-signed (EC P-256, a year), for the names the server listens on;
clients pin it by the SHA-256 fingerprint the server prints at start."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vmigrate.errors import UsageError

VALID_DAYS = 365


def default_tls_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "vmigrate" / "serve"


@dataclass(frozen=True)
class ServerCertificate:
    cert_path: Path
    key_path: Path
    fingerprint: str  # SHA-256, colon-separated hex
    made: bool  # made by the server (self-signed), not given


def fingerprint_of(cert_pem: bytes) -> str:
    certificate = x509.load_pem_x509_certificate(cert_pem)
    return certificate.fingerprint(hashes.SHA256()).hex(":").upper()


def _names(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    addresses = {"127.0.0.1", "::1"}
    hostname = socket.gethostname()
    if hostname and hostname != "localhost":
        names.append(x509.DNSName(hostname))
    try:
        addresses.add(str(ipaddress.ip_address(host)))
    except ValueError:
        if host:
            names.append(x509.DNSName(host))
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in sorted(addresses)]
    return names


def make_self_signed(host: str) -> tuple[bytes, bytes]:
    """A self-signed server certificate and its key (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"vmigrate serve {host}")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_names(host)), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def _write(path: Path, data: bytes, mode: int) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    path.chmod(mode)


def _still_valid(cert_pem: bytes) -> bool:
    certificate = x509.load_pem_x509_certificate(cert_pem)
    left = certificate.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    return left > datetime.timedelta(days=7)


def server_certificate(
    host: str, cert: Path | None, key: Path | None, directory: Path | None = None
) -> ServerCertificate:
    """The named certificate, or the one made earlier in DIRECTORY (made now if missing,
    expiring or for another address)."""
    if (cert is None) != (key is None):
        raise UsageError("--cert and --key go together", fix="give both, or neither")
    if cert is not None and key is not None:
        try:
            pem = cert.read_bytes()
            key.read_bytes()
            return ServerCertificate(cert, key, fingerprint_of(pem), made=False)
        except (OSError, ValueError) as err:
            raise UsageError(
                f"cannot read the certificate {cert} or key {key}: {err}",
                fix="give a PEM certificate and its PEM key, or neither (one is made)",
            ) from err
    where = directory or default_tls_dir()
    where.mkdir(parents=True, exist_ok=True, mode=0o700)
    where.chmod(0o700)
    safe = host.replace(":", "_") or "any"
    cert_path, key_path = where / f"server-{safe}.crt", where / f"server-{safe}.key"
    if cert_path.exists() and key_path.exists() and _still_valid(cert_path.read_bytes()):
        return ServerCertificate(
            cert_path, key_path, fingerprint_of(cert_path.read_bytes()), made=True
        )
    cert_pem, key_pem = make_self_signed(host)
    _write(key_path, key_pem, 0o600)
    _write(cert_path, cert_pem, 0o644)
    return ServerCertificate(cert_path, key_path, fingerprint_of(cert_pem), made=True)
