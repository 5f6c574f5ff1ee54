"""The lab's certificates: what TLS peers check in them, and who may read the keys."""

from __future__ import annotations

import datetime
import ipaddress
import stat
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from vmigrate.lab.pki import issue, make_ca, write_client_pkipath, write_host_pki


def test_a_host_certificate_names_its_address_and_comes_from_the_ca() -> None:
    ca = make_ca()
    assert ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    host = issue(ca, "hostB", addresses=("127.0.0.3",), dns_names=("hostB",), server=True)
    names = host.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert ipaddress.ip_address("127.0.0.3") in names.value.get_values_for_type(x509.IPAddress)
    assert "hostB" in names.value.get_values_for_type(x509.DNSName)
    usage = host.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    assert ExtendedKeyUsageOID.CLIENT_AUTH not in usage
    host.certificate.verify_directly_issued_by(ca.certificate)


def test_a_negative_validity_makes_an_expired_certificate() -> None:
    ca = make_ca()
    old = issue(ca, "someone", client=True, valid_days=-1)
    assert old.certificate.not_valid_after_utc < datetime.datetime.now(datetime.UTC)


def test_private_keys_are_root_only(tmp_path: Path) -> None:
    ca = make_ca()
    write_host_pki(tmp_path / "pki", ca, host_name="hostA", address="127.0.0.2")
    write_client_pkipath(tmp_path / "client", ca.cert_pem(), issue(ca, "c", client=True))
    keys = [*tmp_path.rglob("*key.pem")]
    assert len(keys) == 5  # libvirt server + client, QEMU server + client, vmigrate's client
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert stat.S_IMODE((tmp_path / "client").stat().st_mode) == 0o700
    assert (tmp_path / "pki" / "qemu" / "server-cert.pem").read_bytes().startswith(b"-----BEGIN")
