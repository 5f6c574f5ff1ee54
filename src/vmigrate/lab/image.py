"""Build and smoke-test the lab guest: a Debian kernel plus an initramfs whose /init is workload.c.

Usage: python -m vmigrate.lab.image build [--force]
       python -m vmigrate.lab.image boot-test [--disk] [--accel tcg|kvm]
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import itertools
import json
import lzma
import queue
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from vmigrate.errors import GuestImageError
from vmigrate.lab.paths import GUEST_CACHE_DIR

WORKLOAD_SOURCE = Path(__file__).parent / "guest" / "workload.c"
QEMU = "qemu-system-x86_64"
BLOCK_SIZE = 4096
HEARTBEAT_INTERVAL_S = 0.010
MANIFEST = "manifest.json"
INITRD = "initrd.cpio"
# Kernel modules the workload loads (finit_module) from lib/modules/<list>.order, by list:
# "acpi" at every boot: the ACPI power button as an input device (CONFIG_ACPI_BUTTON=m) and
# /dev/input/event* to read it (CONFIG_INPUT_EVDEV=m); "disk" with vmigrate.disk=1:
# virtio-blk over PCI.  Everything else they need (and VIRTIO_PCI_LEGACY) is built in (=y).
MODULE_ROOTS = {"acpi": ("button", "evdev"), "disk": ("virtio_pci", "virtio_blk")}
BUSYBOX_LINKS = ("sh", "ls", "cat", "mount", "dmesg")
_XZ_MAGIC = b"\xfd7zXZ\x00"


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    kernel_version: str
    kernel_format: str  # "elf" (PVH entry, boots faster under TCG) or "bzimage"


# ---- pure helpers (unit tested) ---------------------------------------------------------------


def kernel_cmdline(
    *,
    working_set_mib: int,
    dirty_rate_mib: int,
    disk: bool,
    seed: int,
    disk_mib: int = 16,
    acpi: bool = True,
) -> str:
    """The guest's kernel command line; `acpi=False` makes it ignore the ACPI power button."""
    # quiet + loglevel=3 keep kernel chatter out of the heartbeat stream; tsc=reliable avoids the
    # clocksource watchdog (TCG time jitters); the rest trims ~0.3 s of boot under TCG (measured).
    # transparent_hugepage=never: with huge pages the kernel keeps min(44 MiB, 5 % of RAM) free
    # for them, so a working set that fits a 512 MiB guest made bigger guests run out of memory
    # (PID 1 killed: panic, reset); and khugepaged would copy pages the workload never wrote.
    fast = (
        "quiet loglevel=3 panic=-1 tsc=reliable no_timer_check mitigations=off 8250.nr_uarts=1"
        " cryptomgr.notests i8042.noaux i8042.nokbd transparent_hugepage=never"
    )
    params = (
        f"vmigrate.ws={working_set_mib} vmigrate.rate={dirty_rate_mib} "
        f"vmigrate.disk={int(disk)} vmigrate.seed={seed & 0xFFFFFFFF} vmigrate.diskmb={disk_mib} "
        f"vmigrate.acpi={int(acpi)}"
    )
    return f"console=ttyS0 {fast} {params}"


def disk_header(seed: int, disk_mib: int) -> bytes:
    """Block 0 of a workload disk, as written by workload.c."""
    header = f"VMIGRATE-DISK seed={seed & 0xFFFFFFFF} mb={disk_mib}\n"
    return header.encode().ljust(BLOCK_SIZE, b"\0")


def expected_disk_block(seed: int, index: int) -> bytes:
    """Block `index` (>= 1) of a workload disk: 64 lines of 64 bytes, as written by workload.c."""
    if index < 1:
        raise ValueError("block 0 is the header; use disk_header()")
    lines = (
        f"vmigrate seed={seed & 0xFFFFFFFF:08x} block={index:08x} line={n:02x}".ljust(63, ".")
        + "\n"
        for n in range(BLOCK_SIZE // 64)
    )
    return "".join(lines).encode()


@dataclass(frozen=True)
class CpioEntry:
    name: str  # path inside the archive, without a leading "/"
    mode: int  # including the file type bits (stat.S_IFREG, ...)
    data: bytes = b""  # file content, or the target of a symlink
    rdev: tuple[int, int] = (0, 0)  # (major, minor) of device nodes


def cpio_newc(entries: Iterable[CpioEntry]) -> bytes:
    """An uncompressed "newc" (070701) cpio archive, the format the kernel unpacks as initramfs."""

    def pad4(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % 4)

    out = bytearray()
    for ino, e in enumerate([*entries, CpioEntry("TRAILER!!!", 0)], start=1):
        name = e.name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(e.mode) else 1
        ino = ino if e.mode else 0  # the trailer
        fields = (ino, e.mode, 0, 0, nlink, 0, len(e.data), 0, 0, *e.rdev, len(name), 0)
        out += pad4(b"070701" + "".join(f"{f:08X}" for f in fields).encode() + name)
        out += pad4(e.data)
    return bytes(out)


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF vmlinux inside a bzImage whose payload is xz-compressed."""
    start = bzimage.find(_XZ_MAGIC)
    while start >= 0:
        try:
            elf = lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(bzimage[start:])
        except lzma.LZMAError:
            elf = b""
        if elf.startswith(b"\x7fELF"):
            return elf
        start = bzimage.find(_XZ_MAGIC, start + 1)
    raise GuestImageError("no xz-compressed ELF payload in the bzImage (not CONFIG_KERNEL_XZ?)")


def module_load_order(roots: Iterable[str], modules: dict[str, bytes]) -> list[str]:
    """Names of `roots` and what they need (from `depends=` in .modinfo), dependencies first."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name not in modules:
            raise GuestImageError(f"kernel module {name}.ko not found in the kernel package")
        m = re.search(rb"(?:^|\0)depends=([^\0]*)", modules[name])
        for dep in m.group(1).decode().split(",") if m else []:
            if dep and dep.replace("-", "_") not in order:
                visit(dep.replace("-", "_"))
        order.append(name)

    for root in roots:
        if root not in order:
            visit(root)
    return order


# ---- building ---------------------------------------------------------------------------------


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise GuestImageError(f"{what}: {cmd[0]} is not installed") from e
    if res.returncode != 0:
        raise GuestImageError(f"{what} failed: {' '.join(cmd)}\n{res.stderr.strip()}")
    return res.stdout


def _order_file(order: list[str]) -> bytes:
    return "".join(f"{n}.ko\n" for n in order).encode()


def _kernel_package() -> tuple[str, str]:
    """(package, version) behind bookworm's linux-image-amd64, skipping backports."""
    for line in _run(["apt-cache", "madison", "linux-image-amd64"], "apt-cache").splitlines():
        _, version, source = (f.strip() for f in line.split("|"))
        if "backports" in source:
            continue
        show = _run(["apt-cache", "show", f"linux-image-amd64={version}"], "apt-cache")
        m = re.search(r"^Depends:.*?(linux-image-[\w.+-]+) \(= ([^)]+)\)", show, re.MULTILINE)
        if m:
            return m.group(1), m.group(2)
    raise GuestImageError("apt knows no bookworm linux-image-amd64; run `apt-get update`")


def _source_digest() -> str:
    return hashlib.sha256(WORKLOAD_SOURCE.read_bytes()).hexdigest()


def load_guest_image(cache_dir: Path = GUEST_CACHE_DIR) -> GuestImage | None:
    """The cached image, or None if it is missing, incomplete or built from another workload.c."""
    try:
        m = json.loads((cache_dir / MANIFEST).read_text())
        kernel, initrd = cache_dir / m["kernel"], cache_dir / m["initrd"]
        image = GuestImage(kernel, initrd, m["kernel_version"], m["kernel_format"])
        fresh = m["workload_sha256"] == _source_digest()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return image if fresh and image.kernel.is_file() and image.initrd.is_file() else None


def build_guest_image(cache_dir: Path = GUEST_CACHE_DIR, *, force: bool = False) -> GuestImage:
    """Build the image into `cache_dir` unless it already holds a complete, current one."""
    if not force and (cached := load_guest_image(cache_dir)):
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others reuse its result
        if not force and (cached := load_guest_image(cache_dir)):
            return cached
        (cache_dir / MANIFEST).unlink(missing_ok=True)  # written last, it marks "complete"
        return _build(cache_dir)


def _build(cache_dir: Path) -> GuestImage:
    package, version = _kernel_package()
    with tempfile.TemporaryDirectory(prefix="vmigrate-guest-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            _run(
                ["apt-get", "download", "-o", "APT::Sandbox::User=root", f"{package}={version}"],
                "download",
                cwd=tmp,
            )
        except GuestImageError as e:
            raise GuestImageError(f"{e}\nrun `apt-get update` and retry") from e
        _run(["dpkg-deb", "-x", str(next(tmp.glob("*.deb"))), str(tmp / "x")], "dpkg-deb")
        vmlinuz = next((tmp / "x" / "boot").glob("vmlinuz-*"))
        kernel_version = vmlinuz.name.removeprefix("vmlinuz-")
        kos = {
            p.name.removesuffix(".ko").replace("-", "_"): p.read_bytes()
            for p in (tmp / "x" / "lib" / "modules" / kernel_version).rglob("*.ko")
        }
        orders = {lst: module_load_order(roots, kos) for lst, roots in MODULE_ROOTS.items()}
        init = tmp / "init"
        _run(["gcc", "-static", "-O2", "-Wall", "-s", "-o", str(init), str(WORKLOAD_SOURCE)], "gcc")
        busybox = shutil.which("busybox")
        if not busybox:
            raise GuestImageError("busybox not found; run `apt-get install busybox-static`")
        dirs = ("bin", "dev", "proc", "sys", "lib", "lib/modules")
        modules = sorted({n for order in orders.values() for n in order})
        entries = [
            *(CpioEntry(d, stat.S_IFDIR | 0o755) for d in dirs),
            CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
            CpioEntry("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3)),
            CpioEntry("init", stat.S_IFREG | 0o755, init.read_bytes()),
            CpioEntry("bin/busybox", stat.S_IFREG | 0o755, Path(busybox).read_bytes()),
            *(CpioEntry(f"bin/{n}", stat.S_IFLNK | 0o777, b"busybox") for n in BUSYBOX_LINKS),
            *(CpioEntry(f"lib/modules/{n}.ko", stat.S_IFREG | 0o644, kos[n]) for n in modules),
            *(
                CpioEntry(f"lib/modules/{lst}.order", stat.S_IFREG | 0o644, _order_file(order))
                for lst, order in orders.items()
            ),
        ]
        # Uncompressed: ~3 MiB unpacks faster under TCG than the guest could inflate it.
        (cache_dir / INITRD).write_bytes(cpio_newc(entries))
        candidates = [("elf", "vmlinux", extract_vmlinux(vmlinuz.read_bytes()))]
        candidates.append(("bzimage", "vmlinuz", vmlinuz.read_bytes()))
    smoke = kernel_cmdline(working_set_mib=4, dirty_rate_mib=0, disk=False, seed=1)
    failures: list[str] = []
    for fmt, name, blob in candidates:
        (cache_dir / name).write_bytes(blob)
        image = GuestImage(cache_dir / name, cache_dir / INITRD, kernel_version, fmt)
        try:  # QEMU's ELF loader needs a PVH note; prove it boots rather than assume.
            log = boot_guest(image, smoke, until="HB 1".__eq__, timeout=60)
            if errors := [s for _, s in log if s.startswith("ACPI error")]:
                raise GuestImageError(f"the power button is not watched: {errors}")
        except GuestImageError as e:
            (cache_dir / name).unlink()
            failures.append(f"{fmt}: {e}")
            continue
        manifest = {"kernel": name, "initrd": INITRD, "kernel_version": kernel_version}
        manifest |= {"kernel_format": fmt, "package": f"{package}={version}"}
        manifest["workload_sha256"] = _source_digest()
        (cache_dir / f"{MANIFEST}.tmp").write_text(json.dumps(manifest, indent=2) + "\n")
        (cache_dir / f"{MANIFEST}.tmp").replace(cache_dir / MANIFEST)
        return image
    raise GuestImageError(f"{package} {version} does not boot in QEMU:\n" + "\n".join(failures))


# ---- booting ----------------------------------------------------------------------------------

ConsoleLog = list[tuple[float, str]]  # (seconds since QEMU started, console line without "\r\n")


def qemu_command(
    image: GuestImage,
    cmdline: str,
    *,
    disk: Path | None = None,
    memory_mib: int = 256,
    accel: str = "tcg",
) -> list[str]:
    """Plain QEMU (no libvirt) with the serial console on stdin/stdout."""
    cmd = [QEMU, "-accel", accel, "-m", str(memory_mib), "-kernel", str(image.kernel)]
    cmd += ["-initrd", str(image.initrd), "-append", cmdline]
    cmd += ["-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none"]
    cmd += ["-serial", "chardev:ser0", "-chardev", "stdio,id=ser0,signal=off"]
    if disk is not None:
        cmd += ["-drive", f"file={disk},format=qcow2,if=none,id=d0"]
        cmd += ["-device", "virtio-blk-pci,drive=d0"]
    return cmd


def boot_guest(
    image: GuestImage,
    cmdline: str,
    *,
    until: Callable[[str], bool],
    disk: Path | None = None,
    send: Iterable[str] = (),
    timeout: float = 120.0,
    accel: str = "tcg",
) -> ConsoleLog:
    """Boot with QEMU until a console line satisfies `until`, then send each command of `send`
    and wait for its reply (for "poweroff": for QEMU to exit), then stop QEMU."""
    cmd = qemu_command(image, cmdline, disk=disk, accel=accel)
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
    except FileNotFoundError as e:
        raise GuestImageError(f"{QEMU} not found; run `apt-get install qemu-system-x86`") from e
    start = time.monotonic()
    lines: queue.Queue[tuple[float, str] | None] = queue.Queue()

    def reader() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put((time.monotonic() - start, raw.decode(errors="replace").rstrip("\r\n")))
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    log: ConsoleLog = []
    pending, ready = [*send], False
    try:
        while True:
            try:
                item = lines.get(timeout=max(0.0, start + timeout - time.monotonic()))
                why = "QEMU exited"
            except queue.Empty:
                item, why = None, f"timed out after {timeout:.0f}s"
            if item is None:
                if ready and not pending:  # QEMU exited after our last command ("poweroff")
                    return log
                tail = "\n".join(f"  {t:7.3f} {s}" for t, s in log[-15:]) or "  (none)"
                raise GuestImageError(f"guest boot failed: {why}; last console lines:\n{tail}")
            log.append(item)
            if not ready:
                ready = until(item[1])
                if not ready:
                    continue
            elif item[1].startswith("HB "):
                continue  # not yet the reply to our last command
            if not pending:
                return log
            assert proc.stdin is not None
            proc.stdin.write(pending.pop(0).encode() + b"\n")
            proc.stdin.flush()
    finally:
        proc.kill()
        proc.wait()


def _is_hb(line: str) -> bool:
    return line.startswith("HB ")


def heartbeat_stats(log: ConsoleLog) -> tuple[float, float, float]:
    """(arrival of the first beat, mean and max interval) in seconds; checks seq has no holes."""
    hb = [(t, int(s[3:])) for t, s in log if re.fullmatch(r"HB \d+", s)]
    if len(hb) < 2 or any(b[1] != a[1] + 1 for a, b in itertools.pairwise(hb)):
        raise GuestImageError(f"heartbeats missing or out of sequence: {hb[:5]}...")
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(hb)]
    return hb[0][0], (hb[-1][0] - hb[0][0]) / (len(hb) - 1), max(gaps)


def first_bad_disk_block(raw: Path, seed: int, disk_mib: int = 16) -> int | None:
    """Check a raw disk image against the workload pattern: None if intact, else the block."""
    with raw.open("rb") as f:
        if f.read(BLOCK_SIZE) != disk_header(seed, disk_mib):
            return 0
        for i in range(1, disk_mib * (2**20 // BLOCK_SIZE)):
            if f.read(BLOCK_SIZE) != expected_disk_block(seed, i):
                return i
    return None


def boot_test(*, disk: bool, accel: str = "tcg") -> None:
    image = build_guest_image()
    size = image.initrd.stat().st_size / 2**20
    print(f"kernel {image.kernel} ({image.kernel_format} {image.kernel_version})")
    print(f"initrd {image.initrd} ({size:.2f} MiB)")
    cmdline = kernel_cmdline(working_set_mib=16, dirty_rate_mib=0, disk=False, seed=1)
    first, mean, worst = heartbeat_stats(
        boot_guest(image, cmdline, until="HB 300".__eq__, accel=accel)
    )
    print(
        f"first heartbeat {first:.2f}s after QEMU start; 300 beats: interval mean "
        f"{mean * 1e3:.2f} ms, max {worst * 1e3:.1f} ms"
    )
    if abs(mean - HEARTBEAT_INTERVAL_S) > 0.2 * HEARTBEAT_INTERVAL_S:
        raise GuestImageError(f"heartbeat interval {mean * 1e3:.2f} ms is not ~10 ms")
    if not disk:
        return
    seed, mib = 0xC0FFEE, 16
    cmdline = kernel_cmdline(working_set_mib=16, dirty_rate_mib=0, disk=True, seed=seed)
    with tempfile.TemporaryDirectory(prefix="vmigrate-boot-test-") as tmp:
        qcow, raw = Path(tmp) / "disk.qcow2", Path(tmp) / "disk.raw"
        _run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow), "64M"], "qemu-img")
        commands = ["rate 100", "nonsense", "poweroff"]
        log = boot_guest(image, cmdline, disk=qcow, until=_is_hb, send=commands, accel=accel)
        said = [s for _, s in log if not _is_hb(s)]
        print("first boot:", said)
        for want in (f"DISK written {mib * 256}", "RATE 100", "ERR unknown command"):
            if want not in said:
                raise GuestImageError(f"first boot: no {want!r}")
        _run(["qemu-img", "convert", "-O", "raw", str(qcow), str(raw)], "qemu-img")
        if (bad := first_bad_disk_block(raw, seed, mib)) is not None:
            raise GuestImageError(f"disk block {bad} differs from expected_disk_block()")
        print("host-side check of the disk pattern: ok")
        log = boot_guest(image, cmdline, disk=qcow, until=_is_hb, send=["verify"], accel=accel)
        said = [s for _, s in log if not _is_hb(s)]
        print("second boot:", said)
        if said.count(f"DISK verify ok {mib * 256}") != 2:
            raise GuestImageError("second boot: no 'DISK verify ok' at boot and after 'verify'")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmigrate.lab.image")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build").add_argument("--force", action="store_true")
    bt = sub.add_parser("boot-test")
    bt.add_argument("--disk", action="store_true")
    bt.add_argument("--accel", default="tcg")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            image = build_guest_image(force=args.force)
            print(f"kernel  {image.kernel} ({image.kernel_format}, {image.kernel_version})")
            print(f"initrd  {image.initrd}")
        else:
            boot_test(disk=args.disk, accel=args.accel)
            print("boot-test: ok")
    except GuestImageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
