"""What crosses the loopback wire: the first payload bytes of each TCP connection to a set of
ports, captured with a raw packet socket on `lo` (root; no tcpdump needed)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

_ETH_P_ALL = 0x0003
_ETH_HEADER = 14


@dataclass
class Capture:
    address: str
    ports: range
    #: (source port, destination port) -> the first payload bytes sent to the destination
    first_bytes: dict[tuple[int, int], bytes] = field(default_factory=dict)
    payload_bytes: int = 0

    def feed(self, frame: bytes) -> None:
        ip = frame[_ETH_HEADER:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_TCP:
            return
        if socket.inet_ntoa(ip[16:20]) != self.address:
            return
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack("!H", ip[2:4])[0]
        tcp = ip[ihl:total]
        if len(tcp) < 20:
            return
        source_port, destination_port = struct.unpack("!HH", tcp[:4])
        if destination_port not in self.ports:
            return
        payload = tcp[(tcp[12] >> 4) * 4 :]
        if payload:
            self.payload_bytes += len(payload)
            self.first_bytes.setdefault((source_port, destination_port), payload[:16])

    def tls_connections(self) -> int:
        """Connections whose first captured bytes are a TLS record header: a content type
        (0x14 change-cipher-spec .. 0x17 application data) and version 3.x. Usually the
        handshake (0x16); a loaded machine's raw socket can miss a connection's first
        packet (seen: a TLS 1.3 ClientHello missed, its ChangeCipherSpec captured first),
        and a plaintext QEMU stream ("QEVM", or page data) never starts like this."""
        return sum(1 for data in self.first_bytes.values() if _is_tls_record(data))


def _is_tls_record(data: bytes) -> bool:
    return len(data) >= 3 and 0x14 <= data[0] <= 0x17 and data[1] == 3 and data[2] <= 4


@contextlib.contextmanager
def capture(address: str, ports: range) -> Iterator[Capture]:
    """Capture TCP payloads sent to `address` on `ports` while the block runs."""
    result = Capture(address, ports)
    sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
    sniffer.bind(("lo", 0))
    sniffer.settimeout(0.2)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                frame, meta = sniffer.recvfrom(65535)
            except TimeoutError:
                continue
            if meta[2] != socket.PACKET_OUTGOING:  # loopback shows each packet twice
                result.feed(frame)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        sniffer.close()
