"""`lab link` limits only traffic to hostB, counts its bytes, and `--reset` lifts the limit."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from vmigrate.lab import link
from vmigrate.lab.config import HOST_A, HOST_B
from vmigrate.lab.lifecycle import HostStatus

pytestmark = pytest.mark.lab
MIB = 1 << 20


def throughput_mib_s(address: str, megabytes: int) -> float:
    """Send `megabytes` over TCP to a listener on `address` (loopback) and time it."""
    with socket.socket() as server:
        server.bind((address, 0))
        server.listen(1)
        received = 0

        def sink() -> None:
            nonlocal received
            conn, _ = server.accept()
            with conn:
                while chunk := conn.recv(MIB):
                    received += len(chunk)

        reader = threading.Thread(target=sink)
        reader.start()
        payload = b"\0" * MIB
        started = time.monotonic()
        with socket.create_connection(server.getsockname(), timeout=60) as client:
            for _ in range(megabytes):
                client.sendall(payload)
        reader.join(timeout=60)
        elapsed = time.monotonic() - started
    assert received == megabytes * MIB
    return megabytes / elapsed


@pytest.fixture
def unshaped_afterwards() -> Iterator[None]:
    yield
    link.reset()


def test_rate_limit_caps_traffic_to_hostb_only(
    lab: list[HostStatus], unshaped_afterwards: None
) -> None:
    status = link.shape("100mbit")  # 11.9 MiB/s
    assert status.shaped
    assert status.bytes_to_hostb == 0
    to_b = throughput_mib_s(HOST_B.address, 24)
    to_a = throughput_mib_s(HOST_A.address, 24)
    assert to_b < 16, f"shaped link carried {to_b:.1f} MiB/s"
    assert to_a > 40, f"traffic to hostA was slowed too ({to_a:.1f} MiB/s)"
    # The counter saw at least the payload sent to hostB (plus TCP/IP headers).
    assert link.status().bytes_to_hostb >= 24 * MIB
    assert link.reset()
    assert not link.status().shaped
    assert throughput_mib_s(HOST_B.address, 24) > 40
