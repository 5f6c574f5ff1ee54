"""The lab's certificates: one CA, and per host a server and a client certificate for libvirt
and for QEMU's migration stream, laid out as on a real host's /etc/pki (pure file writing).

Made with the `cryptography` package: no certtool, and the same code makes the bad
certificates the tests need (another CA, expired)."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vmigrate.lab.config import host_client_cn

#: Validity of the lab's certificates, made once per fresh lab for all four hosts: a year
#: outlasts any lab (a host added later gets the same certificates), yet ends.
VALID_DAYS = 365


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _window(now: datetime.datetime, valid_days: int) -> tuple[datetime.datetime, datetime.datetime]:
    if valid_days >= 0:
        return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=valid_days)
    # A negative validity makes an already expired certificate (for the tests).
    return now + datetime.timedelta(days=valid_days * 2), now + datetime.timedelta(days=valid_days)


def _builder(
    common_name: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, *, ca: bool, days: int
) -> x509.CertificateBuilder:
    """Subject, validity and key usage: a CA signs certificates, a leaf does TLS."""
    not_before, not_after = _window(datetime.datetime.now(datetime.UTC), days)
    usage = x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=not ca,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(usage, critical=True)
    )


def make_ca(common_name: str = "vmigrate lab CA", valid_days: int = VALID_DAYS) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder(common_name, _name(common_name), key, ca=True, days=valid_days)
    return Issued(builder.sign(key, hashes.SHA256()), key)


def issue(
    ca: Issued,
    common_name: str,
    *,
    addresses: tuple[str, ...] = (),
    dns_names: tuple[str, ...] = (),
    server: bool = False,
    client: bool = False,
    valid_days: int = VALID_DAYS,
) -> Issued:
    """A certificate signed by `ca`; IP and DNS SANs are what TLS peers verify the host by."""
    key = ec.generate_private_key(ec.SECP256R1())
    purposes = [ExtendedKeyUsageOID.SERVER_AUTH] * server
    purposes += [ExtendedKeyUsageOID.CLIENT_AUTH] * client
    builder = _builder(
        common_name, ca.certificate.subject, key, ca=False, days=valid_days
    ).add_extension(x509.ExtendedKeyUsage(purposes), critical=False)
    names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    names += [x509.DNSName(name) for name in dns_names]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def write_private(path: Path, data: bytes) -> None:
    """Write a file only root can read, in a directory only root can enter."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
    path.chmod(0o600)


def write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o644)


def write_client_pkipath(directory: Path, ca_pem: bytes, client: Issued) -> None:
    """A directory libvirt's `pkipath` URI parameter reads: cacert, clientcert, clientkey."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory.chmod(0o700)
    write_public(directory / "cacert.pem", ca_pem)
    write_public(directory / "clientcert.pem", client.cert_pem())
    write_private(directory / "clientkey.pem", client.key_pem())


def write_host_pki(
    etc_pki: Path, ca: Issued, *, host_name: str, address: str, valid_days: int = VALID_DAYS
) -> None:
    """A host's /etc/pki as libvirt and QEMU look for it by default: libvirtd's server
    certificate and the client one it uses for peer-to-peer migration, and QEMU's pair for
    the migration stream (migrate_tls_x509_cert_dir = /etc/pki/qemu)."""
    ca_pem = ca.cert_pem()
    server = issue(
        ca,
        host_name,
        addresses=(address,),
        dns_names=(host_name,),
        server=True,
        valid_days=valid_days,
    )
    client = issue(ca, host_client_cn(host_name), client=True, valid_days=valid_days)
    write_public(etc_pki / "CA" / "cacert.pem", ca_pem)
    write_public(etc_pki / "libvirt" / "servercert.pem", server.cert_pem())
    write_private(etc_pki / "libvirt" / "private" / "serverkey.pem", server.key_pem())
    write_public(etc_pki / "libvirt" / "clientcert.pem", client.cert_pem())
    write_private(etc_pki / "libvirt" / "private" / "clientkey.pem", client.key_pem())
    qemu = etc_pki / "qemu"
    write_public(qemu / "ca-cert.pem", ca_pem)
    write_public(qemu / "server-cert.pem", server.cert_pem())
    write_private(qemu / "server-key.pem", server.key_pem())
    write_public(qemu / "client-cert.pem", client.cert_pem())
    write_private(qemu / "client-key.pem", client.key_pem())


def load_ca(cert_path: Path, key_path: Path) -> Issued:
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{key_path} is not the lab CA's key")
    return Issued(certificate, key)
