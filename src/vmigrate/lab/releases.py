"""The releases a lab host can run besides the machine's own QEMU and libvirt (pure).

A release is a Debian suite and the packages a lab host needs from it; its root file system
is built once (vmigrate.lab.rootfs) and cached under a key of exactly these."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from vmigrate.errors import UsageError
from vmigrate.lab.config import LabHost, lab_host


@dataclass(frozen=True)
class Release:
    """A Debian release whose own QEMU and libvirt a lab host runs from a root of its own."""

    name: str
    suite: str
    packages: tuple[str, ...]
    libvirt: str  # what its packages ship, for messages; the lab reads versions from libvirt
    qemu: str
    #: mmdebstrap --customize-hook commands (constants, never user input) run on the root.
    customize: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The cache key: a changed package list or set-up is a different root."""
        text = "\n".join((self.suite, *sorted(self.packages), *self.customize))
        return f"{self.name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


#: The name of the machine's own packages (what `lab host upgrade` moves a host to).
SYSTEM_RELEASE = "system"

#: Debian 12's own libvirt 9.0 and QEMU 7.2. Its storage and network drivers are part of
#: libvirt-daemon (bookworm has no libvirt-daemon-driver-storage/-network packages);
#: openssh-server for the host's sshd, netcat for libvirt's qemu+ssh fallback.
BOOKWORM = Release(
    name="bookworm",
    suite="bookworm",
    packages=(
        "libvirt-clients",
        "libvirt-daemon",
        "libvirt-daemon-driver-qemu",
        "netcat-openbsd",
        "openssh-server",
        "qemu-system-x86",
        "qemu-utils",
    ),
    libvirt="9.0",
    qemu="7.2",
    # libvirtd refuses to start without this user even when QEMU runs as root; the package
    # that makes it (libvirt-daemon-system) would bring systemd units the lab does not use.
    customize=(
        'chroot "$1" groupadd --system libvirt-qemu',
        'chroot "$1" useradd --system --gid libvirt-qemu --home-dir /var/lib/libvirt'
        " --shell /usr/sbin/nologin libvirt-qemu",
    ),
)

RELEASES: Mapping[str, Release] = {BOOKWORM.name: BOOKWORM}


def release_named(name: str) -> Release:
    release = RELEASES.get(name.lower())
    if release is None:
        raise UsageError(
            f"the lab knows no release {name!r}",
            fix=f"use one of: {', '.join(sorted(RELEASES))} (or leave the host on the "
            "machine's own packages)",
        )
    return release


def parse_version_specs(specs: Iterable[str], hosts: Iterable[LabHost]) -> dict[str, Release]:
    """`hostC=bookworm` options → release by host name, for hosts of the lab being started."""
    wanted = {host.name for host in hosts}
    chosen: dict[str, Release] = {}
    for spec in specs:
        name, equals, release_name = spec.partition("=")
        if not equals or not name or not release_name:
            raise UsageError(
                f"--version {spec!r} is not HOST=RELEASE", fix="e.g. --version hostC=bookworm"
            )
        host = lab_host(name.strip())
        if host is None or host.name not in wanted:
            raise UsageError(
                f"--version {spec!r}: {name!r} is not a host of this lab "
                f"({', '.join(sorted(wanted))})",
                fix="name a host the lab starts, or start more with --hosts N",
            )
        if host.name in chosen:
            raise UsageError(f"--version names {host.name} twice", fix="name each host once")
        chosen[host.name] = release_named(release_name.strip())
    return chosen
