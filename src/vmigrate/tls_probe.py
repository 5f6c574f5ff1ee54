"""Why a host's TLS certificate failed verification, found out by looking at it.

libvirt says only "Failed to verify peer's certificate" for a certificate from another CA,
an expired one and one that does not name the host alike. This fetches the certificate the
host presents (with the client's own certificate, verifying nothing) and checks it against
the client's CA the way libvirt does: issuer and signature, validity dates, the name."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import ssl
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from vmigrate.transport_errors import Diagnosis

#: Where libvirt looks for a root client's CA and certificate without ?pkipath=.
DEFAULT_CA = Path("/etc/pki/CA/cacert.pem")
DEFAULT_CLIENT_CERT = Path("/etc/pki/libvirt/clientcert.pem")
DEFAULT_CLIENT_KEY = Path("/etc/pki/libvirt/private/clientkey.pem")


def _client_files(uri: str) -> tuple[Path, Path, Path]:
    pkipath = parse_qs(urlsplit(uri).query).get("pkipath")
    if pkipath:
        base = Path(pkipath[0])
        return base / "cacert.pem", base / "clientcert.pem", base / "clientkey.pem"
    return DEFAULT_CA, DEFAULT_CLIENT_CERT, DEFAULT_CLIENT_KEY


def presented_certificate(
    host: str, port: int, client: tuple[Path, Path] | None, timeout: float = 5.0
) -> x509.Certificate | None:
    """The certificate `host` presents on `port`, unverified; None if no handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if client is not None:
        with contextlib.suppress(OSError, ssl.SSLError):
            context.load_cert_chain(str(client[0]), str(client[1]))
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    return x509.load_der_x509_certificate(der) if der else None


def _names(certificate: x509.Certificate) -> list[str]:
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(a) for a in sans.get_values_for_type(x509.IPAddress)] + list(
        sans.get_values_for_type(x509.DNSName)
    )


def _names_host(names: list[str], host: str) -> bool:
    with contextlib.suppress(ValueError):
        wanted = ipaddress.ip_address(host)
        return any(_same_address(name, wanted) for name in names)
    return host.lower() in (name.lower() for name in names)


def _same_address(name: str, wanted: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(name) == wanted
    return False


def explain_untrusted_server(uri: str, host: str, port: int) -> Diagnosis | None:
    """What is wrong with the certificate `host` presents, measured against the client's CA."""
    ca_file, cert_file, key_file = _client_files(uri)
    certificate = presented_certificate(host, port, (cert_file, key_file))
    if certificate is None:
        return None
    try:
        ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
    except (OSError, ValueError):
        return None
    subject = certificate.subject.rfc4514_string()
    try:
        certificate.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):  # another issuer, another key
        return Diagnosis(
            "tls.unknown-ca",
            f"{host}'s certificate ({subject}) was issued by "
            f"{certificate.issuer.rfc4514_string()}, not by the CA this client trusts "
            f"({ca.subject.rfc4514_string()}, {ca_file})",
            f"give this client the CA that signed {host}'s certificate as {ca_file}, or "
            f"reissue {host}'s server certificate from your CA",
        )
    now = datetime.datetime.now(datetime.UTC)
    if certificate.not_valid_after_utc < now:
        return Diagnosis(
            "tls.server-certificate-expired",
            f"{host}'s certificate ({subject}) expired on "
            f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
            f"reissue {host}'s server certificate (/etc/pki/libvirt/servercert.pem there) and "
            "restart its libvirtd",
        )
    if certificate.not_valid_before_utc > now:
        return Diagnosis(
            "tls.server-certificate-not-yet-valid",
            f"{host}'s certificate ({subject}) is valid only from "
            f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
            "check the clocks of this machine and of the host (NTP), or reissue the certificate",
        )
    names = _names(certificate)
    if not _names_host(names, host):
        return Diagnosis(
            "tls.name-mismatch",
            f"{host}'s certificate does not name {host}: it lists "
            f"{', '.join(names) or 'no subjectAltName'} ({subject})",
            f"reach the host by a name or address its certificate lists, or reissue it with "
            f"{host} as a subjectAltName",
        )
    return None
