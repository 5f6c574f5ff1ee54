"""Only root reaches the lab's storage servers. tgt admits every initiator, Ganesha sees
every NFS client as 127.0.0.1 (through the forwarders) and trusts the uid it claims, and the
hosts' QEMU, libvirtd and vmigrate all run as root: so one iptables rule per server
address refuses TCP from any other user, as the libvirt sockets of the lab hosts do."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Iterable

from vmigrate.errors import EnvironmentProblem, LabError

COMMENT = "vmigrate-lab-storage"


def _rule(address: str) -> list[str]:
    assert ipaddress.ip_address(address).is_loopback, "the lab only ever touches loopback"
    return [
        "OUTPUT", "-d", f"{address}/32", "-p", "tcp", "-m", "owner", "!", "--uid-owner", "0",
        "-m", "comment", "--comment", COMMENT, "-j", "REJECT", "--reject-with", "tcp-reset",
    ]  # fmt: skip


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    iptables = shutil.which("iptables", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if iptables is None:
        raise EnvironmentProblem(
            "`iptables` is not installed: the lab keeps its storage servers root-only with it",
            fix="run scripts/setup.sh as root (it installs iptables)",
        )
    return subprocess.run([iptables, *args], capture_output=True, text=True, check=False)


def restrict_to_root(addresses: Iterable[str]) -> None:
    for address in addresses:
        if _iptables("-C", *_rule(address)).returncode == 0:
            continue  # already there
        added = _iptables("-I", *_rule(address))
        if added.returncode != 0:
            raise LabError(
                f"cannot keep {address} root-only: iptables says {added.stderr.strip()}",
                fix="check that iptables works here (the lab tests need it too)",
            )


def lift(addresses: Iterable[str]) -> None:
    for address in addresses:
        while _iptables("-D", *_rule(address)).returncode == 0:
            pass  # every copy of it
