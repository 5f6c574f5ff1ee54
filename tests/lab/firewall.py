"""Drop TCP packets to a lab address for the duration of a test (iptables on loopback only)."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

COMMENT = "vmigrate-test"


@contextmanager
def dropped(
    address: str, ports: str, *, new_only: bool = False, reject: bool = False
) -> Iterator[None]:
    """Silently drop TCP to `address`:`ports` ("16514" or "49152:49215"), like a firewall.

    `new_only`: only new connections (SYN): those already open keep working. `reject`:
    refuse them at once (a TCP reset) instead of dropping them."""
    assert ipaddress.ip_address(address).is_loopback, "tests only touch loopback addresses"
    rule = [
        "INPUT",
        "-d",
        f"{address}/32",
        "-p",
        "tcp",
        "--dport",
        ports,
        *(["--syn"] if new_only else []),
        "-m",
        "comment",
        "--comment",
        COMMENT,
        "-j",
        *(["REJECT", "--reject-with", "tcp-reset"] if reject else ["DROP"]),
    ]
    subprocess.run(["iptables", "-I", *rule], check=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-D", *rule], check=True)
