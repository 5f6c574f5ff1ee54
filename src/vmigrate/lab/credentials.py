"""Every credential of a lab, made once by `lab up` on a fresh lab and removed by `lab down`:
the lab CA, each host's certificates and ssh keys, vmigrate's own client certificate and
key, and the pinned host keys (no `no_verify` anywhere)."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from vmigrate.lab.config import LAB_CLIENT_CN, LAB_HOSTS, LabHost
from vmigrate.lab.paths import CA_DIR, CLIENT_PKI_DIR, CLIENT_SSH_DIR
from vmigrate.lab.pki import (
    Issued,
    issue,
    load_ca,
    make_ca,
    write_client_pkipath,
    write_host_pki,
    write_private,
    write_public,
)

CA_CERT = CA_DIR / "ca-cert.pem"
CA_KEY = CA_DIR / "ca-key.pem"
SSH_KEY_NAME = "id_ed25519"
HOST_KEY_NAME = "ssh_host_ed25519_key"


def ssh_keypair() -> tuple[bytes, bytes]:
    """(private key in OpenSSH format, public key line)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public


def _write_ssh_key(path: Path, private: bytes, public: bytes, owner: str) -> None:
    write_private(path, private)
    write_public(path.with_name(path.name + ".pub"), public + f" {owner}\n".encode())


def lab_ca() -> Issued:
    return load_ca(CA_CERT, CA_KEY)


def make_lab_credentials() -> None:
    """A new CA, vmigrate's client identity, and every lab host's certificates and ssh keys,
    with each host's key pinned for vmigrate and for every other host."""
    ca = make_ca()
    write_public(CA_CERT, ca.cert_pem())
    write_private(CA_KEY, ca.key_pem())
    CA_DIR.chmod(0o700)
    write_client_pkipath(CLIENT_PKI_DIR, ca.cert_pem(), issue(ca, LAB_CLIENT_CN, client=True))

    client_private, client_public = ssh_keypair()
    _write_ssh_key(CLIENT_SSH_DIR / SSH_KEY_NAME, client_private, client_public, "vmigrate")
    CLIENT_SSH_DIR.chmod(0o700)
    host_keys: dict[str, bytes] = {}
    user_keys: dict[str, bytes] = {}
    for host in LAB_HOSTS:
        write_host_pki(host.private_dir("/etc/pki"), ca, host_name=host.name, address=host.address)
        host_private, host_keys[host.name] = ssh_keypair()
        _write_ssh_key(host.ssh_dir / HOST_KEY_NAME, host_private, host_keys[host.name], host.name)
        user_private, user_keys[host.name] = ssh_keypair()
        root_ssh = host.private_dir("/root/.ssh")
        _write_ssh_key(root_ssh / SSH_KEY_NAME, user_private, user_keys[host.name], host.name)
        root_ssh.chmod(0o700)
    known = b"".join(_known_host_line(h, host_keys[h.name]) for h in LAB_HOSTS)
    authorized = (
        client_public
        + b" vmigrate\n"
        + b"".join(user_keys[h.name] + f" root@{h.name}\n".encode() for h in LAB_HOSTS)
    )
    write_public(CLIENT_SSH_DIR / "known_hosts", known)
    _write_ssh_command()
    for host in LAB_HOSTS:
        root_ssh = host.private_dir("/root/.ssh")
        write_public(root_ssh / "known_hosts", known)
        write_private(root_ssh / "authorized_keys", authorized)


def _write_ssh_command() -> None:
    """openssh takes no known-hosts file from a libvirt URI (only libssh does): the lab's
    qemu+ssh URIs name this fixed command, ssh with the lab's pinned host keys."""
    config = CLIENT_SSH_DIR / "config"
    write_private(
        config,
        "\n".join(
            [
                "# Written by `vmigrate lab up`: the lab hosts' keys are pinned, nothing else.",
                "Host *",
                f"    UserKnownHostsFile {CLIENT_SSH_DIR / 'known_hosts'}",
                "    GlobalKnownHostsFile /dev/null",
                "    StrictHostKeyChecking yes",
                "    IdentitiesOnly yes",
                "    PasswordAuthentication no",
                "    KbdInteractiveAuthentication no",
                "    BatchMode yes",
                "",
            ]
        ).encode(),
    )
    command = CLIENT_SSH_DIR / "ssh"
    write_private(
        command,
        f'#!/bin/sh\nexec /usr/bin/ssh -F {config} "$@"\n'.encode(),
    )
    command.chmod(0o700)


def _known_host_line(host: LabHost, public: bytes) -> bytes:
    return f"{host.address} ".encode() + public + b"\n"
