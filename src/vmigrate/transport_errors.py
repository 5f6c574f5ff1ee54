"""Why a libvirt connection over ssh or TLS failed, in words an operator can act on (pure).

libvirt hands back ssh's stderr or GnuTLS's verdict inside its own message ("Cannot recv
data: Host key verification failed.: Connection reset by peer"). Each known cause becomes a
diagnosis with what to do; anything else keeps libvirt's words."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from vmigrate.errors import UsageError
from vmigrate.hosts import ParsedUri, parse_uri


@dataclass(frozen=True)
class Diagnosis:
    code: str  # e.g. "ssh.host-key-changed"
    cause: str
    fix: str


def _target(uri: ParsedUri) -> str:
    return f"{uri.host}:{uri.daemon_port}" if uri.host else "the host"


def _ssh(uri: ParsedUri, user: str, message: str, text: str) -> Diagnosis | None:
    host = uri.host or "the host"
    command = re.search(r"cannot execute binary (\S+): permission denied", message, re.I)
    if command:
        return Diagnosis(
            "ssh.command-not-allowed",
            f"this user may not run the ssh command {command.group(1).rstrip(':')} the URI names",
            "run vmigrate as the user the credentials belong to (the lab's: root)",
        )
    if "remote host identification has changed" in text or "differs from stored identity" in text:
        return Diagnosis(
            "ssh.host-key-changed",
            f"the ssh host key of {host} is not the one pinned in known_hosts: the host was "
            "reinstalled, or someone is in the middle",
            f"verify the new key out of band (on {host}: ssh-keygen -lf /etc/ssh/ssh_host_*.pub), "
            f"then replace the old line (ssh-keygen -R {host}) and add the new one",
        )
    if (
        "host key verification failed" in text
        or ("no " in text and "host key is known" in text)
        or "host key for server not found" in text
        or "can't verify the session host key" in text
        or "not found in known_hosts" in text
    ):
        return Diagnosis(
            "ssh.host-key-unknown",
            f"{host}'s ssh host key is not in known_hosts, and vmigrate never accepts an "
            "unknown key",
            f"add {host}'s host key to the known_hosts file the URI uses (ssh-keyscan {host}, "
            "compared with its fingerprint out of band)",
        )
    keyfile = re.search(r"identity file (\S+) not accessible", message, re.IGNORECASE)
    if keyfile:
        return Diagnosis(
            "ssh.key-file-missing",
            f"the ssh key file {keyfile.group(1)} cannot be read",
            "fix the keyfile= path in the URI (or key_file in the hosts file); it must be "
            "readable by the user running vmigrate",
        )
    if "permission denied" in text or "authentication failed" in text:
        return Diagnosis(
            "ssh.key-refused",
            f"{host} refused the ssh key ({user}): it is not in that user's authorized_keys",
            f"add the public key to ~{user}/.ssh/authorized_keys on {host}, or name the right "
            "key with keyfile= in the URI",
        )
    if "nc: not found" in text or ("virt-ssh-helper" in text and "not found" in text):
        return Diagnosis(
            "ssh.no-helper",
            f"{host} has neither virt-ssh-helper nor nc: ssh reached it, but nothing there "
            "connects to libvirt's socket",
            f"install libvirt-clients on {host} (it provides virt-ssh-helper)",
        )
    if "libvirt-sock" in text and ("no such file" in text or "connection refused" in text):
        return Diagnosis(
            "ssh.no-daemon",
            f"ssh reached {host}, but no libvirt daemon listens on its socket there",
            f"start libvirtd (or virtqemud) on {host}",
        )
    if "connection refused" in text and "port" in text:
        return Diagnosis(
            "ssh.refused",
            f"nothing accepts ssh connections on {_target(uri)}",
            f"start sshd on {host}, or put the right port in the URI (ssh://user@host:PORT/)",
        )
    if "could not resolve hostname" in text:
        return Diagnosis(
            "ssh.unknown-name",
            f"the name {host} does not resolve",
            "use the host's address or a name DNS or /etc/hosts knows",
        )
    return None


def _tls(uri: ParsedUri, message: str, text: str) -> Diagnosis | None:
    host = uri.host or "the host"
    own = re.search(r"the (client|CA) certificate (\S+) has expired", message, re.IGNORECASE)
    if own:
        return Diagnosis(
            "tls.own-certificate-expired",
            f"vmigrate's {own.group(1)} certificate {own.group(2)} has expired",
            "issue a new certificate from your CA and put it where the URI's pkipath (or "
            "/etc/pki) points",
        )
    if "not yet active" in text:
        return Diagnosis(
            "tls.certificate-not-yet-valid",
            f"a certificate is not valid yet ({message.strip()}): a clock is wrong or it "
            "was issued for the future",
            "check the clocks of this machine and of the host (NTP), or reissue the certificate",
        )
    if "expired" in text:
        return Diagnosis(
            "tls.certificate-expired",
            f"a certificate on the way to {host} has expired ({message.strip()})",
            f"reissue {host}'s server certificate (/etc/pki/libvirt/servercert.pem) or this "
            "client's from your CA",
        )
    if "does not match the hostname" in text or "owner does not match" in text:
        return Diagnosis(
            "tls.name-mismatch",
            f"{host}'s certificate does not name {host}: its subject and SANs are for another host",
            f"reach the host by a name or address its certificate lists, or reissue it with "
            f"{host} as a subjectAltName",
        )
    if "cannot read ca certificate" in text or ("cannot read" in text and "certificate" in text):
        path = re.search(r"'([^']+)'", message)
        return Diagnosis(
            "tls.no-client-credentials",
            f"this machine has no readable TLS client credentials "
            f"({path.group(1) if path else 'pkipath'}): vmigrate must show a certificate",
            "install the CA certificate and a client certificate and key (cacert.pem, "
            "clientcert.pem, clientkey.pem) in /etc/pki or a directory named by ?pkipath=",
        )
    own_invalid = re.search(r"our own certificate (\S+) failed validation", message, re.I)
    if own_invalid:
        return Diagnosis(
            "tls.own-certificate-invalid",
            f"this client's certificate {own_invalid.group(1)} was not issued by the CA "
            "next to it (cacert.pem)",
            "issue the client certificate from the CA the hosts trust, and keep that CA's "
            "certificate as cacert.pem beside it",
        )
    if "failed to verify peer" in text:
        return Diagnosis(
            "tls.server-not-trusted",
            f"{host}'s certificate failed this client's verification: issued by another CA, "
            f"expired or not yet valid, or not naming {host}",
            f"check {host}'s /etc/pki/libvirt/servercert.pem against this client's cacert.pem "
            "(certtool --verify or openssl verify), its dates, and its subjectAltNames",
        )
    if "known issuer" in text or "not trusted" in text or "signer not found" in text:
        return Diagnosis(
            "tls.unknown-ca",
            f"{host}'s certificate was not issued by the CA this client trusts",
            "use the CA certificate that signed the host's certificate as cacert.pem (pkipath "
            "or /etc/pki/CA/cacert.pem), or reissue the host's certificate from your CA",
        )
    if (
        "tls confirmation" in text
        or "client certificate" in text
        or "connection reset" in text
        or "handshake" in text
    ):
        return Diagnosis(
            "tls.client-refused",
            f"{host} refused this client's certificate: not issued by the CA it trusts, "
            "or its name is not in the host's tls_allowed_dn_list",
            f"issue this client's certificate from {host}'s CA, and allow its subject in "
            f"tls_allowed_dn_list of {host}'s libvirtd.conf",
        )
    return None


def diagnose(uri_text: str, message: str) -> Diagnosis | None:
    """What failed in a connection to `uri_text`, from libvirt's message; None: unknown."""
    try:
        uri = parse_uri(uri_text)
    except UsageError:
        return None
    text = message.lower()
    if uri.effective_transport in ("ssh", "libssh", "libssh2"):
        return _ssh(uri, urlsplit(uri_text).username or "root", message, text)
    if uri.effective_transport == "tls":
        return _tls(uri, message, text)
    return None
