"""Lab VMs: create (with an optional disk the guest fills with known data), set rate, remove.

Creation is all or nothing: every step registers its undo, and a failure undoes them in
reverse, so a failed `lab vm create` leaves nothing half-made on either host.
"""

from __future__ import annotations

import contextlib
import math
import re
import shlex
import subprocess
import time
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vmigrate.errors import (
    AlreadyExists,
    EnvironmentProblem,
    LabError,
    NotFound,
    UsageError,
    VmigrateError,
)
from vmigrate.lab.accel import accelerator
from vmigrate.lab.config import LAB_HOSTS, LOCAL_POOL, SHARED_POOL, LabHost, lab_host
from vmigrate.lab.domain import LabDisk, LabGuestSpec, render_domain_xml
from vmigrate.lab.heartbeat import read_console, wait_for_console
from vmigrate.lab.heartbeat_collector import (
    log_path,
    send_to_guest,
    socket_path,
    start_collector,
    stop_collector,
)
from vmigrate.lab.hostfs import in_host
from vmigrate.lab.image import kernel_cmdline, load_guest_image
from vmigrate.lab.lifecycle import connect, running_hosts
from vmigrate.lab.paths import LAB_DIR
from vmigrate.lab.storage.hosts import (
    NETWORK_DISKS,
    create_network_disk,
    refresh_pool,
    remove_network_disks,
)
from vmigrate.lab.storage.pools import network_disk_element
from vmigrate.virt.connection import (
    AFFECT_LIVE_AND_CONFIG,
    UNDEFINE_WITH_METADATA,
    Connection,
    LibvirtError,
    domain_state,
    find_domain,
)
from vmigrate.virt.errors import libvirt_errors

#: A lab VM's name: it becomes file names under the lab directory and libvirt volume names.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
VALID_NAME = (
    "1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit (no '/', no '..')"
)
_DISK_TARGET = re.compile(r"vd[b-z]")
#: Memory the guest's kernel and initramfs keep whatever the guest's size, and the share of
#: its RAM the kernel keeps besides (page structures, hash tables, free-page reserve, page
#: tables); past 3.5 GiB some RAM sits above 4 GiB and the kernel adds 64 MiB of bounce
#: buffers. Measured free at /init, less ~16 MiB the workload needs to start: a guest keeps
#: 76 MiB of 128, 95 of 1024, 116 of 2048, 219 of 4096 and 291 of 8192 (docs/lab.md).
GUEST_BASE_MIB = 96
GUEST_RAM_SHARE = 1 / 32
GUEST_HIGH_MEMORY_MIB = 3584
GUEST_BOUNCE_BUFFERS_MIB = 64
#: The default working set leaves a margin above that.
DEFAULT_HEADROOM_MIB = 128
#: What QEMU itself takes beside guest RAM (TCG translation cache and friends), at least.
QEMU_OVERHEAD_MIB = 160
MIN_MEMORY_MIB = 128
#: Boot to the first heartbeat: the guest writes its whole working set first (under TCG
#: ~4 s for 1 GiB, ~18 s for 4 GiB, measured), so bigger guests get longer.
BOOT_TIMEOUT_SECONDS = 90.0
BOOT_SECONDS_PER_GIB = 15.0
#: Console lines that mean the guest will never beat: the workload gave up, or the kernel died.
_BOOT_FAILED = re.compile(r"^FATAL |Kernel panic")
DISK_PATTERN_MIB = 16
#: Where `lab vm create --disk` puts the guest's disk: a pool of the lab's hosts, or one of
#: the lab's storage servers (`lab up --storage`).
DISK_KINDS = ("none", "shared", "local", "iscsi", "rbd", "nfs")


@dataclass(frozen=True)
class LabVmRequest:
    name: str
    host: str = "hostA"
    memory_mib: int = 512
    working_set_mib: int | None = None  # default: default_working_set_mib(memory_mib)
    dirty_rate_mib: int = 0
    disk: str = "none"  # none | shared | local | iscsi | rbd | nfs
    disk_format: str | None = None  # qcow2 | raw; default qcow2, raw on iscsi and rbd
    disk_size_gib: float = 1.0
    disk_backing: bool = False  # qcow2 disk on a raw backing file that holds backing_data()
    acpi: bool = True  # False: the guest ignores the ACPI power button (a stuck guest)


@dataclass(frozen=True)
class LabVm:
    name: str
    host: str
    memory_mib: int
    working_set_mib: int
    dirty_rate_mib: int
    disk_path: str | None
    boot_seconds: float


def guest_reserve_mib(memory_mib: int) -> int:
    """What a lab guest of `memory_mib` keeps for its kernel and initramfs (measured, with a
    margin): the rest can hold the workload's working set."""
    reserve = GUEST_BASE_MIB + math.ceil(memory_mib * GUEST_RAM_SHARE)
    if memory_mib > GUEST_HIGH_MEMORY_MIB:
        reserve += GUEST_BOUNCE_BUFFERS_MIB
    return reserve


def max_working_set_mib(memory_mib: int) -> int:
    """The largest working set a guest of `memory_mib` holds without running out of memory."""
    return max(memory_mib - guest_reserve_mib(memory_mib), 0)


def default_working_set_mib(memory_mib: int) -> int:
    """Memory less DEFAULT_HEADROOM_MIB, and never more than the guest can hold."""
    return max(min(memory_mib - DEFAULT_HEADROOM_MIB, max_working_set_mib(memory_mib)), 0)


def qemu_overhead_mib(memory_mib: int) -> int:
    return max(QEMU_OVERHEAD_MIB, memory_mib // 20)


def largest_guest_mib(available_mib: int) -> int:
    """The most guest memory that fits, with QEMU's overhead, in `available_mib`."""
    largest = min(available_mib - QEMU_OVERHEAD_MIB, available_mib * 20 // 21)
    while largest + 1 + qemu_overhead_mib(largest + 1) <= available_mib:
        largest += 1
    return max(largest, 0)


def boot_timeout_seconds(memory_mib: int) -> float:
    return BOOT_TIMEOUT_SECONDS + BOOT_SECONDS_PER_GIB * memory_mib / 1024


def available_memory_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


def disk_seed(name: str) -> int:
    """The seed of the pattern a lab VM writes to its disk, derived from its name."""
    return zlib.crc32(name.encode())


def check_vm_name(name: str) -> str:
    """`name` if it is a valid lab VM name, else a UsageError saying what a valid one is.

    Every lab command checks it first: the name becomes paths under the lab directory
    (console log, collector socket and pid file) that `lab vm rm` deletes as root."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise UsageError(f"{name!r} is not a valid lab VM name", fix=f"use {VALID_NAME}")
    return name


@contextlib.contextmanager
def _lab_errors(*, host: str | None, vm: str, doing: str) -> Iterator[None]:
    """libvirt's errors as vmigrate's (host, VM, what to do); an OSError from the lab's own
    files and processes as a LabError; a vmigrate error that names no host gets this one."""
    try:
        with libvirt_errors(host=host, vm=vm, doing=doing):
            yield
    except VmigrateError as err:
        if err.host is None:
            err.host = host
        raise
    except OSError as err:
        raise LabError(
            f"{doing}: {err}",
            host=host,
            vm=vm,
            fix=f"check that the lab's directory {LAB_DIR} is writable and has space, then retry",
        ) from err


def _validate(request: LabVmRequest) -> tuple[LabHost, int]:
    name = check_vm_name(request.name)
    host = lab_host(request.host)
    if host is None:
        raise UsageError(
            f"unknown lab host {request.host!r}",
            vm=name,
            fix="use A, B, C or D (hostA..hostD; C and D run with `vmigrate lab up --hosts N`)",
        )
    working_set = (
        request.working_set_mib
        if request.working_set_mib is not None
        else default_working_set_mib(request.memory_mib)
    )
    if request.memory_mib < MIN_MEMORY_MIB:
        raise UsageError(
            f"{request.memory_mib} MiB is too little memory for the lab guest",
            vm=name,
            fix=f"give it at least {MIN_MEMORY_MIB} MiB",
        )
    available = available_memory_mib()
    if request.memory_mib + qemu_overhead_mib(request.memory_mib) > available:
        largest = largest_guest_mib(available)
        raise UsageError(
            f"{request.memory_mib} MiB of guest memory does not fit: this machine has "
            f"{available} MiB available, and QEMU needs "
            f"{qemu_overhead_mib(request.memory_mib)} MiB beside the guest's",
            vm=name,
            host=host.name,
            fix=f"ask for at most {max(largest, 0)} MiB (--memory), or remove lab VMs",
        )
    most = max_working_set_mib(request.memory_mib)
    if not 0 <= working_set <= most:
        raise UsageError(
            f"a working set of {working_set} MiB does not fit in {request.memory_mib} MiB: "
            f"the guest's kernel keeps {guest_reserve_mib(request.memory_mib)} MiB",
            vm=name,
            fix=f"use at most {most} MiB (--working-set), or give the guest more --memory",
        )
    if not 0 <= request.dirty_rate_mib <= 100_000:
        raise UsageError(
            f"dirty rate {request.dirty_rate_mib} MiB/s is out of range",
            vm=name,
            fix="use 0 to 100000 MiB/s",
        )
    if request.disk not in DISK_KINDS:
        raise UsageError(
            f"unknown disk kind {request.disk!r}", vm=name, fix=f"use {', '.join(DISK_KINDS)}"
        )
    if request.disk_format not in (None, "qcow2", "raw"):
        raise UsageError(
            f"unknown disk format {request.disk_format!r}", vm=name, fix="use qcow2 or raw"
        )
    if request.disk in ("iscsi", "rbd") and request.disk_format == "qcow2":
        raise UsageError(
            f"a lab disk on {request.disk} is raw: the {request.disk} volume is the disk itself",
            vm=name,
            fix="leave out --disk-format, or use --disk nfs for a qcow2 file on a server",
        )
    if request.disk_backing and (
        request.disk not in ("shared", "local") or disk_format(request) != "qcow2"
    ):
        raise UsageError(
            "a backing file needs a qcow2 disk", vm=name, fix="add --disk local --disk-format qcow2"
        )
    if request.disk != "none" and request.disk_size_gib * 1024 < DISK_PATTERN_MIB * 2:
        raise UsageError(
            f"a {request.disk_size_gib} GiB disk is too small",
            vm=name,
            fix=f"use at least {DISK_PATTERN_MIB * 2 / 1024:g} GiB",
        )
    return host, working_set


def disk_format(request: LabVmRequest) -> str:
    if request.disk_format is not None:
        return request.disk_format
    return "raw" if request.disk in ("iscsi", "rbd") else "qcow2"


def volume_xml(
    name: str,
    fmt: str,
    size_gib: float,
    backing: tuple[str, str] | None = None,
    *,
    sparse: bool = False,
) -> str:
    volume = ET.Element("volume")
    ET.SubElement(volume, "name").text = name
    ET.SubElement(volume, "capacity", unit="bytes").text = str(int(size_gib * 2**30))
    if sparse:
        ET.SubElement(volume, "allocation", unit="bytes").text = "0"
    target = ET.SubElement(volume, "target")
    ET.SubElement(target, "format", type=fmt)
    if backing is not None:
        store = ET.SubElement(volume, "backingStore")
        ET.SubElement(store, "path").text = backing[0]
        ET.SubElement(store, "format", type=backing[1])
    return ET.tostring(volume, encoding="unicode")


def disk_device_xml(path: str, target: str, fmt: str = "qcow2") -> str:
    """A file-backed virtio disk, as `lab vm create` gives its guests (cache='none')."""
    disk = ET.Element("disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type=fmt, cache="none")
    ET.SubElement(disk, "source", file=path)
    ET.SubElement(disk, "target", dev=target, bus="virtio")
    return ET.tostring(disk, encoding="unicode")


def volume_name(vm: str, fmt: str) -> str:
    return f"{vm}-vda.{'qcow2' if fmt == 'qcow2' else 'img'}"


def backing_volume_name(vm: str) -> str:
    return f"{vm}-base.img"


#: Where the backing file of a lab disk holds data of its own, past the guest's pattern.
BACKING_DATA_OFFSET = 2 * DISK_PATTERN_MIB << 20


def backing_data(vm: str) -> bytes:
    """1 MiB that only the backing file holds: the guest never writes there."""
    line = f"vmigrate backing file of {vm}\n".encode()
    return (line * (2**20 // len(line) + 1))[: 2**20]


def _lab_volume(vm: str, name: str) -> bool:
    """The lab's volumes of `vm`: its disks vda..vdz (tests add some) and its backing file,
    and not those of a VM whose name merely starts the same."""
    return name == backing_volume_name(vm) or bool(
        re.fullmatch(re.escape(vm) + r"-vd[a-z]\.(qcow2|img)", name)
    )


def _backing_file(conn: Connection, pool_name: str, vm: str, size_gib: float) -> str:
    """A raw backing file holding backing_data() at BACKING_DATA_OFFSET; returns its path."""
    pool = conn.storagePoolLookupByName(pool_name)
    volume = pool.createXML(volume_xml(backing_volume_name(vm), "raw", size_gib, sparse=True), 0)
    try:
        data = backing_data(vm)
        stream = conn.newStream(0)
        volume.upload(stream, BACKING_DATA_OFFSET, len(data), 0)
        stream.send(data)
        stream.finish()
    except BaseException:
        volume.delete(0)
        raise
    return str(volume.path())


def _running_lab_hosts() -> list[LabHost]:
    """The lab hosts whose daemon runs, in order (two by default, up to four)."""
    running = running_hosts()
    return [host for host in LAB_HOSTS if host.name in running]


def _refresh_pools(backend: str) -> None:
    for host in _running_lab_hosts():
        conn = connect(host)
        try:
            refresh_pool(conn, backend)
        finally:
            conn.close()


def _ensure_absent(name: str) -> None:
    for host in _running_lab_hosts():
        conn = connect(host)
        try:
            if find_domain(conn, name) is not None:
                raise AlreadyExists(
                    f"a VM named {name!r} already exists",
                    vm=name,
                    host=host.name,
                    fix=f"pick another name, or remove it: vmigrate lab vm rm {shlex.quote(name)}",
                )
        finally:
            conn.close()


def create_vm(request: LabVmRequest) -> LabVm:
    host, working_set = _validate(request)
    image = load_guest_image()
    if image is None:
        raise EnvironmentProblem(
            "the lab guest image is not built", fix="run scripts/setup.sh (it builds the image)"
        )
    conn = connect(host)
    name = request.name

    def step(doing: str) -> contextlib.AbstractContextManager[None]:
        return _lab_errors(host=host.name, vm=name, doing=doing)

    undo: list[Callable[[], None]] = []
    try:
        _ensure_absent(name)
        with step("starting its console collector"):
            log_path(name).unlink(missing_ok=True)
            start_collector(name)
        undo.append(lambda: _remove_console(name))
        disk = None
        fmt = disk_format(request)
        if request.disk in NETWORK_DISKS:
            with step(f"creating its disk on the lab's {request.disk} server"):
                source, remove_disk = create_network_disk(
                    conn, request.disk, f"{name}-vda", fmt, int(request.disk_size_gib * 2**30)
                )
            undo.append(remove_disk)
            disk = LabDisk(None, fmt, source)
            with step("listing its disk in every host's pool"):
                _refresh_pools(request.disk)
        elif request.disk != "none":
            pool_name = SHARED_POOL if request.disk == "shared" else LOCAL_POOL
            with step(f"creating its disk in pool {pool_name!r}"):
                pool = conn.storagePoolLookupByName(pool_name)
                backing = None
                if request.disk_backing:
                    base = _backing_file(conn, pool_name, name, request.disk_size_gib)
                    undo.append(lambda: conn.storageVolLookupByPath(base).delete(0))
                    backing = (base, "raw")
                volume = pool.createXML(
                    volume_xml(
                        volume_name(name, fmt),
                        fmt,
                        request.disk_size_gib,
                        backing,
                    ),
                    0,
                )
                undo.append(lambda: volume.delete(0))
                disk = LabDisk(Path(volume.path()), fmt)
        spec = LabGuestSpec(
            name=name,
            memory_mib=request.memory_mib,
            working_set_mib=working_set,
            dirty_rate_mib=request.dirty_rate_mib,
            kernel=image.kernel,
            initrd=image.initrd,
            cmdline=kernel_cmdline(
                working_set_mib=working_set,
                dirty_rate_mib=request.dirty_rate_mib,
                disk=disk is not None,
                seed=disk_seed(name),
                disk_mib=DISK_PATTERN_MIB,
                acpi=request.acpi,
            ),
            serial_socket=socket_path(name),
            domain_type="kvm" if accelerator(image) == "kvm" else "qemu",
            disk=disk,
        )
        with step("defining it"):
            domain = conn.defineXML(render_domain_xml(spec))
        undo.append(domain.undefine)
        started = time.monotonic()
        with step("starting it"):
            domain.create()
        undo.append(domain.destroy)
        timeout = boot_timeout_seconds(request.memory_mib)
        with step("waiting for its first heartbeat"):
            _wait_for_first_beat(name, host.name, domain.isActive, timeout)
        boot_seconds = time.monotonic() - started
        if disk is not None:
            with step("waiting for it to fill its disk"):
                line = wait_for_console(name, r"^DISK ", timeout=timeout)
            if not line.text.startswith(("DISK written", "DISK verify ok")):
                raise LabError(
                    f"the guest could not use its disk: {line.text}",
                    vm=name,
                    host=host.name,
                    fix=f"see the console log {log_path(name)}",
                )
    except BaseException:
        for undo_step in reversed(undo):
            # Keep undoing the rest: the original error is the one that matters.
            with contextlib.suppress(LibvirtError, OSError):
                undo_step()
        raise
    finally:
        conn.close()
    return LabVm(
        request.name,
        host.name,
        request.memory_mib,
        working_set,
        request.dirty_rate_mib,
        disk.where if disk else None,
        boot_seconds,
    )


def _wait_for_first_beat(
    name: str, host: str, is_active: Callable[[], int], timeout: float
) -> None:
    """Wait for `HB 1`; a guest that gave up, panicked or stopped fails at once, and the
    error quotes its console (the undo that follows removes the log)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = read_console(name)
        if any(line.text == "HB 1" for line in lines):
            return
        said = [line.text for line in lines if not line.text.startswith("HB ")]
        failed = next((text for text in said if _BOOT_FAILED.search(text)), None)
        stopped = failed is None and not is_active()
        if failed is not None or stopped or time.monotonic() > deadline:
            why = (
                f"it said {failed!r}"
                if failed is not None
                else "it stopped"
                if stopped
                else f"not within {timeout:.0f} s"
            )
            tail = "\n".join(f"  {text}" for text in said[-8:]) or "  (nothing)"
            raise LabError(
                f"the guest did not print HB 1: {why}; its console said:\n{tail}",
                vm=name,
                host=host,
                fix="give it more --memory or a smaller --working-set if it ran out of "
                "memory; otherwise rebuild the guest image (scripts/setup.sh)",
            )
        time.sleep(0.1)


def _remove_console(name: str) -> None:
    stop_collector(name)
    log_path(name).unlink(missing_ok=True)


def _remove_from_host(conn: Connection, name: str) -> bool:
    found = False
    domain = find_domain(conn, name)
    if domain is not None:
        found = True
        # A transient domain vanishes when destroyed: ask before destroying it.
        persistent = bool(domain.isPersistent())
        if domain.isActive():
            domain.destroy()
        if persistent:
            domain.undefineFlags(UNDEFINE_WITH_METADATA)
    for pool_name in (SHARED_POOL, LOCAL_POOL):
        pool = conn.storagePoolLookupByName(pool_name)
        pool.refresh(0)
        # Overlays before the backing files under them.
        for volume in sorted(pool.listAllVolumes(0), key=lambda v: v.name().endswith("base.img")):
            if _lab_volume(name, volume.name()):
                volume.delete(0)
                found = True
    return found


def remove_vm(name: str) -> list[str]:
    """Destroy and undefine the VM on every lab host, delete its lab disks and console."""
    check_vm_name(name)
    removed_from = []
    hosts = _running_lab_hosts()
    for host in hosts:
        conn = connect(host)
        try:
            with _lab_errors(host=host.name, vm=name, doing="removing it"):
                if _remove_from_host(conn, name):
                    removed_from.append(host.name)
        finally:
            conn.close()
    had_network_disks = False
    if hosts:  # once its QEMU is gone everywhere: a server keeps an image that is in use
        conn = connect(hosts[0])
        try:
            with _lab_errors(host=hosts[0].name, vm=name, doing="removing its storage disks"):
                had_network_disks = remove_network_disks(conn, name)
        finally:
            conn.close()
    with _lab_errors(host=None, vm=name, doing="removing its console"):
        had_console = log_path(name).exists()
        _remove_console(name)
    if not removed_from and not had_console and not had_network_disks:
        raise NotFound(
            f"no lab VM named {name!r}", vm=name, fix="see the lab's VMs with `vmigrate lab status`"
        )
    return removed_from


def locate_vm(name: str) -> dict[str, str]:
    """The state of the VM on each lab host that knows it."""
    where = {}
    for host in _running_lab_hosts():
        conn = connect(host)
        try:
            domain = find_domain(conn, name)
            if domain is not None:
                where[host.name] = domain_state(domain)
        finally:
            conn.close()
    return where


def set_rate(name: str, rate_mib: int, *, timeout: float = 10.0) -> None:
    """Change the guest's dirty rate while it runs; returns once the guest confirms."""
    check_vm_name(name)
    if not 0 <= rate_mib <= 100_000:
        raise UsageError(
            f"dirty rate {rate_mib} MiB/s is out of range", vm=name, fix="use 0 to 100000 MiB/s"
        )
    where = locate_vm(name)
    if not where:
        raise NotFound(
            f"no lab VM named {name!r}", vm=name, fix="see the lab's VMs with `vmigrate lab status`"
        )
    if "running" not in where.values():
        raise UsageError(
            f"the VM is not running ({', '.join(where.values())})",
            vm=name,
            fix="start it, or create a new one",
        )
    since = time.monotonic_ns()
    send_to_guest(name, f"rate {rate_mib}")
    wait_for_console(name, rf"^RATE {rate_mib}$", timeout=timeout, since_ns=since)


def add_disk(vm: str, pool: str, target: str, size_mib: int, fill: str) -> str:
    """A qcow2 disk `target` in `pool` on hostA holding `fill` (a qemu-io command, e.g.
    "write -P 0xa5 0 8M"), attached to the running VM and its definition; its path.

    Named like the VM's own lab disks, so `lab vm rm` deletes it too."""
    check_vm_name(vm)
    if not _DISK_TARGET.fullmatch(target):
        raise UsageError(f"{target!r} is not a lab disk target", vm=vm, fix="use vdb to vdz")
    host = lab_host("hostA")
    assert host is not None
    conn = connect(host)
    try:
        with _lab_errors(host=host.name, vm=vm, doing=f"adding disk {target}"):
            volume = conn.storagePoolLookupByName(pool).createXML(
                volume_xml(f"{vm}-{target}.qcow2", "qcow2", size_mib / 1024), 0
            )
            path = str(volume.path())
            written = in_host("hostA", "qemu-io", "-f", "qcow2", "-c", fill, path)
            if written.returncode != 0:
                volume.delete(0)
                raise LabError(f"qemu-io could not fill {path}: {written.stderr.strip()}", vm=vm)
            try:
                conn.lookupByName(vm).attachDeviceFlags(
                    disk_device_xml(path, target), AFFECT_LIVE_AND_CONFIG
                )
            except BaseException:
                with contextlib.suppress(LibvirtError):
                    volume.delete(0)
                raise
            return path
    finally:
        conn.close()


def add_network_disk(
    vm: str, backend: str, target: str, size_mib: int, fill: str | None = None
) -> str:
    """A disk `target` on one of the lab's storage servers, holding `fill` (a qemu-io
    command) if given, attached to the running VM on hostA and to its definition; its URL.
    Named like the VM's lab disks, so `lab vm rm` deletes it too."""
    check_vm_name(vm)
    if not _DISK_TARGET.fullmatch(target):
        raise UsageError(f"{target!r} is not a lab disk target", vm=vm, fix="use vdb to vdz")
    if backend not in NETWORK_DISKS:
        raise UsageError(f"{backend!r} is not a storage server", fix="use iscsi, rbd or nfs")
    host = lab_host("hostA")
    assert host is not None
    conn = connect(host)
    try:
        with _lab_errors(host=host.name, vm=vm, doing=f"adding disk {target} on {backend}"):
            fmt = "qcow2" if backend == "nfs" else "raw"
            source, remove = create_network_disk(
                conn, backend, f"{vm}-{target}", fmt, size_mib << 20
            )
            try:
                if fill is not None:
                    written = subprocess.run(
                        ["qemu-io", "-f", fmt, "-c", fill, source.host_filename],
                        capture_output=True,
                        text=True,
                        check=False,
                    )
                    if written.returncode != 0:
                        raise LabError(
                            f"qemu-io could not fill {source.url}: {written.stderr.strip()}", vm=vm
                        )
                xml = ET.tostring(network_disk_element(source, fmt, target), encoding="unicode")
                conn.lookupByName(vm).attachDeviceFlags(xml, AFFECT_LIVE_AND_CONFIG)
            except BaseException:
                with contextlib.suppress(LibvirtError, OSError):
                    remove()
                raise
        _refresh_pools(backend)
        return source.url
    finally:
        conn.close()
