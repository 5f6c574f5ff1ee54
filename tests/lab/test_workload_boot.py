"""Boot the real lab guest in plain QEMU (TCG) and check what the workload promises.

Needs the built image (`python -m vmigrate.lab.image build`) and QEMU; ~30 s in all.
"""

from __future__ import annotations

import json
import queue
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from vmigrate.lab.image import (
    ConsoleLog,
    GuestImage,
    boot_guest,
    first_bad_disk_block,
    heartbeat_stats,
    kernel_cmdline,
    load_guest_image,
    qemu_command,
)

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def guest() -> GuestImage:
    img = load_guest_image()
    if img is None:
        pytest.fail("guest image not built: run scripts/setup.sh")
    return img


def is_hb(line: str) -> bool:
    return line.startswith("HB ")


def test_heartbeats_every_10ms(guest: GuestImage) -> None:
    cmdline = kernel_cmdline(working_set_mib=32, dirty_rate_mib=100, disk=False, seed=1)
    log = boot_guest(guest, cmdline, until="HB 500".__eq__)
    assert "VMIGRATE workload ws=32 rate=100 disk=0" in [s for _, s in log]
    first, mean, worst = heartbeat_stats(log)
    assert first < 30
    assert mean == pytest.approx(0.010, rel=0.05)
    assert worst < 0.1


def test_console_commands(guest: GuestImage) -> None:
    cmdline = kernel_cmdline(working_set_mib=8, dirty_rate_mib=0, disk=False, seed=1)
    log = boot_guest(guest, cmdline, until="HB 20".__eq__, send=["rate 250", "frobnicate"])
    said = [s for _, s in log if not is_hb(s)]
    assert said[-2:] == ["RATE 250", "ERR unknown command"]
    assert not any("frobnicate" in s or "rate 250" in s for s in said)  # raw tty: no echo
    heartbeat_stats(log)  # beats stay in sequence


def test_disk_pattern_survives_reboot_and_detects_corruption(
    guest: GuestImage, tmp_path: Path
) -> None:
    seed, mib = 0x5EED, 16
    qcow, raw = tmp_path / "d.qcow2", tmp_path / "d.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", qcow, "32M"], check=True)
    cmdline = kernel_cmdline(working_set_mib=8, dirty_rate_mib=0, disk=True, seed=seed)

    def boot(*send: str) -> list[str]:
        log = boot_guest(guest, cmdline, disk=qcow, until=is_hb, send=send)
        return [s for _, s in log if not is_hb(s)]

    assert f"DISK written {mib * 256}" in boot("poweroff")
    subprocess.run(["qemu-img", "convert", "-O", "raw", qcow, raw], check=True)
    assert first_bad_disk_block(raw, seed, mib) is None
    assert boot("verify").count(f"DISK verify ok {mib * 256}") == 2
    if shutil.which("qemu-io") is None:
        pytest.fail("qemu-io (from qemu-utils) is missing: run scripts/setup.sh")
    corrupt = ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x55 {123 * 4096 + 512} 512", str(qcow)]
    subprocess.run(corrupt, check=True, capture_output=True)
    assert boot()[-1] == "DISK verify bad 123"


@pytest.fixture
def qmp_guest(guest: GuestImage, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Any]]:
    """A guest with a 512 MiB working set, its serial console and a QMP connection."""
    sock_path = tmp_path / "qmp.sock"
    cmdline = kernel_cmdline(working_set_mib=512, dirty_rate_mib=0, disk=False, seed=1)
    cmd = qemu_command(guest, cmdline, memory_mib=768)
    cmd += ["-qmp", f"unix:{sock_path},server=on,wait=off"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    watchdog = threading.Timer(60, proc.kill)  # a guest that never beats ends the wait
    watchdog.start()
    try:
        assert proc.stdout is not None
        console = proc.stdout
        while not (line := console.readline()).startswith(b"HB 10\n"):
            assert line, "QEMU exited (or the guest did not beat within 60 s)"
        watchdog.cancel()
        # Keep reading the console, from the same file object, so that the guest never
        # blocks on a full pipe while the test runs.
        threading.Thread(target=console.read, daemon=True).start()
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(sock_path))
        qmp = sock.makefile("rw")
        qmp.readline()  # greeting
        yield proc, qmp
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()


def qmp_call(qmp: Any, command: str, **arguments: object) -> Any:
    qmp.write(json.dumps({"execute": command, "arguments": arguments}) + "\n")
    qmp.flush()
    while True:
        reply = json.loads(qmp.readline())
        if "return" in reply:
            return reply["return"]
        assert "error" not in reply, reply


@pytest.mark.parametrize("rate", [0, 100, 500])
def test_dirty_rate_is_accurate(qmp_guest: tuple[subprocess.Popen[bytes], Any], rate: int) -> None:
    proc, qmp = qmp_guest
    qmp_call(qmp, "qmp_capabilities")
    assert proc.stdin is not None
    proc.stdin.write(f"rate {rate}\n".encode())
    proc.stdin.flush()
    time.sleep(0.5)
    # 500 ms window: even 500 MiB/s touches fewer pages than the 512 MiB working set holds.
    unit = {"calc-time-unit": "millisecond"}
    qmp_call(qmp, "calc-dirty-rate", **{"calc-time": 500, "sample-pages": 10000}, **unit)
    for _ in range(50):
        time.sleep(0.2)
        result = qmp_call(qmp, "query-dirty-rate", **unit)
        if result["status"] == "measured":
            break
    measured = result["dirty-rate"]  # MiB/s, estimated from ~7500 sampled pages
    if rate == 0:
        assert measured <= 5
    else:
        assert measured == pytest.approx(rate, rel=0.2)


# ---- ACPI power button ------------------------------------------------------------------------


class ButtonGuest:
    """A guest in plain QEMU whose console is read by a thread (so every wait has a deadline)
    and whose ACPI power button is pressed over QMP (`system_powerdown`, as libvirt's
    virDomainShutdown does)."""

    def __init__(self, guest: GuestImage, cmdline: str, sock_path: Path) -> None:
        cmd = qemu_command(guest, cmdline)
        cmd += ["-qmp", f"unix:{sock_path},server=on,wait=off"]
        self.sock_path = sock_path
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.start = time.monotonic()
        self.log: ConsoleLog = []
        self._lines: queue.Queue[tuple[float, str] | None] = queue.Queue()
        self._qmp: Any = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            self._lines.put((time.monotonic() - self.start, line))
        self._lines.put(None)

    def __enter__(self) -> ButtonGuest:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.proc.kill()
        self.proc.wait()
        if self._qmp is not None:
            self._qmp.close()

    def read_until(self, stop: Callable[[str], bool] | None, *, timeout: float) -> list[str]:
        """Console lines up to the first satisfying `stop` or, with stop=None, until QEMU exits."""
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"console: timed out after {timeout:g} s; last lines {out[-8:]}")
            if item is None:
                if stop is None:
                    return out
                pytest.fail(f"QEMU exited; last console lines {out[-8:]}")
            self.log.append(item)
            out.append(item[1])
            if stop is not None and stop(item[1]):
                return out

    def press_power_button(self) -> None:
        if self._qmp is None:
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(30)
            sock.connect(str(self.sock_path))
            self._qmp = sock.makefile("rw")
            self._qmp.readline()  # greeting
            qmp_call(self._qmp, "qmp_capabilities")
        qmp_call(self._qmp, "system_powerdown")

    def qmp_events(self) -> list[str]:
        """Names of the QMP events still unread, up to QEMU's exit; SHUTDOWN with its reason."""
        events = []
        for line in self._qmp:
            msg = json.loads(line)
            if "event" in msg:
                reason = msg.get("data", {}).get("reason")
                events.append(f"{msg['event']} {reason}" if reason else msg["event"])
        return events


def test_acpi_power_button_powers_the_guest_off(guest: GuestImage, tmp_path: Path) -> None:
    cmdline = kernel_cmdline(working_set_mib=8, dirty_rate_mib=50, disk=False, seed=1)
    assert "vmigrate.acpi=1" in cmdline.split()  # the default
    with ButtonGuest(guest, cmdline, tmp_path / "qmp.sock") as vm:
        vm.read_until("HB 50".__eq__, timeout=60)
        vm.press_power_button()
        after = vm.read_until(None, timeout=10)  # until QEMU exits: the guest powered off
        assert vm.proc.wait(timeout=10) == 0
        said = [s for s in after if not is_hb(s)]
        assert said[:1] == ["POWEROFF acpi"], after
        assert not any(is_hb(s) for s in after[after.index("POWEROFF acpi") :])
        # The guest itself powered off (ACPI S5), not QEMU on its own.
        assert "SHUTDOWN guest-shutdown" in vm.qmp_events()
        assert heartbeat_stats(vm.log)[2] < 0.1  # beats in sequence, none late


def test_guest_booted_with_acpi_0_ignores_the_power_button(
    guest: GuestImage, tmp_path: Path
) -> None:
    cmdline = kernel_cmdline(working_set_mib=8, dirty_rate_mib=0, disk=False, seed=1, acpi=False)
    with ButtonGuest(guest, cmdline, tmp_path / "qmp.sock") as vm:
        vm.read_until("HB 50".__eq__, timeout=60)
        for n in (1, 2):  # one line per press
            vm.press_power_button()
            after = vm.read_until("ACPI ignored".__eq__, timeout=10)
            beat = int(next(s for _, s in reversed(vm.log) if is_hb(s))[3:])
            after += vm.read_until(f"HB {beat + 100}".__eq__, timeout=10)  # keeps beating
            assert [s for s in after if not is_hb(s)] == ["ACPI ignored"], n
        assert vm.proc.poll() is None
        assert heartbeat_stats(vm.log)[2] < 0.1  # beats in sequence, none late
