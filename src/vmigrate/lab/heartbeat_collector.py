"""The host-side end of a lab VM's serial port: stamps every line with host monotonic time.

Both the source and the destination QEMU connect their serial port to the same unix socket,
so one log holds the guest's whole output across a migration. Each line is stamped when its
newline arrives and labelled with the lab host whose QEMU sent it. The guest's own clock stops
while it is paused; host timestamps are what make the measured downtime honest.

Run as `python -m vmigrate.lab.heartbeat_collector VM` (started by `lab vm create`).
"""

from __future__ import annotations

import contextlib
import selectors
import signal
import socket
import struct
import sys
import time
from pathlib import Path

from vmigrate.errors import LabError
from vmigrate.lab.paths import LAB_DIR
from vmigrate.lab.processes import (
    is_alive,
    mount_namespace_of,
    spawn_daemon,
    terminate,
)
from vmigrate.lab.state import host_of_namespace

HEARTBEAT_DIR = LAB_DIR / "heartbeat"
_PEERCRED = struct.Struct("3i")


def socket_path(vm: str) -> Path:
    return HEARTBEAT_DIR / f"{vm}.sock"


def control_path(vm: str) -> Path:
    return HEARTBEAT_DIR / f"{vm}.ctl"


def log_path(vm: str) -> Path:
    return HEARTBEAT_DIR / f"{vm}.log"


def collector_log_path(vm: str) -> Path:
    """The collector's own output (not the guest's console)."""
    return HEARTBEAT_DIR / f"{vm}.collector.log"


def _pid_path(vm: str) -> Path:
    return HEARTBEAT_DIR / f"{vm}.pid"


def _peer_host(conn: socket.socket) -> str:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, _uid, _gid = _PEERCRED.unpack(creds)
    return host_of_namespace(mount_namespace_of(pid))


class Collector:
    """Serves one VM: guest connections on the serial socket, commands on the control socket."""

    def __init__(self, vm: str) -> None:
        self.vm = vm
        self.selector = selectors.DefaultSelector()
        self.log = log_path(vm).open("ab", buffering=0)
        self.pending = b""
        self.guests: dict[socket.socket, str] = {}
        self.last_active: socket.socket | None = None
        for path, handler in (
            (socket_path(vm), self._accept_guest),
            (control_path(vm), self._accept_control),
        ):
            path.unlink(missing_ok=True)
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(str(path))
            server.listen(8)
            self.selector.register(server, selectors.EVENT_READ, handler)

    def serve_forever(self) -> None:
        while True:
            for key, _events in self.selector.select():
                try:
                    key.data(key.fileobj)
                except OSError:  # one peer's broken socket must not stop the heartbeat log
                    if key.fileobj in self.guests:
                        self._disconnected(key.fileobj, time.monotonic_ns())

    def _accept_guest(self, server: socket.socket) -> None:
        conn, _ = server.accept()
        host = _peer_host(conn)
        self.guests[conn] = host
        self._write(f"{time.monotonic_ns()} {host} #connected\n".encode())
        self.selector.register(conn, selectors.EVENT_READ, self._read_guest)

    def _read_guest(self, conn: socket.socket) -> None:
        data = conn.recv(65536)
        now = time.monotonic_ns()
        host = self.guests[conn]
        if not data:
            self._disconnected(conn, now)
            return
        self.last_active = conn
        # One buffer for all connections: a line the source began may be finished by the
        # destination after switch-over, and must not be split into two broken lines.
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        out = b"".join(f"{now} {host} ".encode() + line.rstrip(b"\r") + b"\n" for line in lines)
        if out:
            self._write(out)

    def _disconnected(self, conn: socket.socket, now: int) -> None:
        host = self.guests.pop(conn)
        self.selector.unregister(conn)
        conn.close()
        if self.last_active is conn:
            self.last_active = None
        self._write(f"{now} {host} #disconnected\n".encode())

    def _accept_control(self, server: socket.socket) -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(2.0)
            request = conn.recv(4096).decode(errors="replace").strip()
            verb, _, text = request.partition(" ")
            target = self.last_active or next(reversed(list(self.guests)), None)
            if verb != "send":
                conn.sendall(b"error unknown request\n")
            elif target is None:
                conn.sendall(b"error no guest connected\n")
            else:
                target.sendall(text.encode() + b"\n")
                conn.sendall(b"ok\n")

    def _write(self, data: bytes) -> None:
        self.log.write(data)


def start_collector(vm: str, *, timeout: float = 5.0) -> int:
    """Start the collector for `vm` and return once its socket accepts connections."""
    HEARTBEAT_DIR.mkdir(parents=True, exist_ok=True)
    socket_path(vm).unlink(missing_ok=True)
    pid = spawn_daemon(
        [sys.executable, "-m", "vmigrate.lab.heartbeat_collector", vm],
        collector_log_path(vm),
    )
    _pid_path(vm).write_text(str(pid))
    deadline = time.monotonic() + timeout
    while not control_path(vm).exists():
        if time.monotonic() > deadline or not is_alive(pid):
            stop_collector(vm)
            raise LabError(
                "the heartbeat collector did not start",
                vm=vm,
                fix=f"see {collector_log_path(vm)}",
            )
        time.sleep(0.02)
    return pid


def _collector_pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"vmigrate.lab.heartbeat_collector" in cmdline else None


def stop_collector(vm: str) -> bool:
    pid = _collector_pid(_pid_path(vm))
    if pid is not None:
        terminate([pid], grace_seconds=2.0)
    for path in (_pid_path(vm), socket_path(vm), control_path(vm)):
        path.unlink(missing_ok=True)
    return pid is not None


def stop_all_collectors() -> int:
    if not HEARTBEAT_DIR.exists():
        return 0
    return sum(stop_collector(pid_file.stem) for pid_file in HEARTBEAT_DIR.glob("*.pid"))


def send_to_guest(vm: str, text: str) -> None:
    """Type one line into the guest's serial console (the QEMU that is running it)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5.0)
        try:
            conn.connect(str(control_path(vm)))
        except OSError as err:
            raise LabError(
                "no heartbeat collector runs for this VM",
                vm=vm,
                fix="is it a lab VM? (`vmigrate lab status`)",
            ) from err
        try:
            conn.sendall(f"send {text}\n".encode())
            reply = conn.recv(4096).decode(errors="replace").strip()
        except OSError as err:
            raise LabError(
                f"the VM's heartbeat collector did not answer: {err.strerror or err}",
                vm=vm,
                fix="look at `vmigrate lab status`; `vmigrate lab vm rm` and create it again "
                "if its collector died",
            ) from err
    if reply != "ok":
        raise LabError(f"cannot type into the console: {reply.removeprefix('error ')}", vm=vm)


def main(argv: list[str]) -> None:
    (vm,) = argv
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    collector = Collector(vm)
    try:
        collector.serve_forever()
    finally:
        for path in (socket_path(vm), control_path(vm)):
            with contextlib.suppress(OSError):
                path.unlink()


if __name__ == "__main__":
    main(sys.argv[1:])
