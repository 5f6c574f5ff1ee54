"""Pure parts of the lab guest image builder: cpio, cmdline, disk pattern, kernel unpacking."""

from __future__ import annotations

import json
import lzma
import stat
import subprocess
from pathlib import Path

import pytest

from vmigrate.errors import GuestImageError
from vmigrate.lab import image
from vmigrate.lab.image import (
    CpioEntry,
    GuestImage,
    build_guest_image,
    cpio_newc,
    disk_header,
    expected_disk_block,
    extract_vmlinux,
    first_bad_disk_block,
    heartbeat_stats,
    kernel_cmdline,
    load_guest_image,
    module_load_order,
)

ENTRIES = [
    CpioEntry("bin", stat.S_IFDIR | 0o755),
    CpioEntry("dev", stat.S_IFDIR | 0o755),
    CpioEntry("init", stat.S_IFREG | 0o755, b"#!/bin/sh\necho hi\n"),
    CpioEntry("bin/busybox", stat.S_IFREG | 0o755, bytes(range(256)) * 3 + b"xyz"),
    CpioEntry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
    CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
]


def parse_newc(data: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    """A strict little newc reader: (name, mode, data, rdev) per entry, trailer excluded."""
    out: list[tuple[str, int, bytes, tuple[int, int]]] = []
    pos = 0
    while True:
        assert pos % 4 == 0
        assert data[pos : pos + 6] == b"070701"
        f = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name_end = pos + 110 + namesize
        name = data[pos + 110 : name_end - 1].decode()
        assert data[name_end - 1] == 0
        start = name_end + (-name_end % 4)
        body = data[start : start + filesize]
        pos = start + filesize + (-(start + filesize) % 4)
        if name == "TRAILER!!!":
            assert pos == len(data)
            return out
        out.append((name, f[1], body, (f[9], f[10])))


def test_cpio_header_is_byte_exact() -> None:
    got = cpio_newc([CpioEntry("init", stat.S_IFREG | 0o755, b"abc")])
    fields = ["00000001", "000081ED", "0" * 8, "0" * 8, "00000001", "0" * 8, "00000003"]
    fields += ["0" * 8] * 4 + ["00000005", "0" * 8]
    entry = b"070701" + "".join(fields).encode() + b"init\0" + b"\0" + b"abc\0"
    trailer = ["0" * 8, "0" * 8, "0" * 8, "0" * 8, "00000001"] + ["0" * 8] * 6
    trailer += ["0000000B", "0" * 8]
    end = b"070701" + "".join(trailer).encode() + b"TRAILER!!!\0" + b"\0" * 3
    assert got == entry + end
    assert len(got) % 4 == 0


def test_cpio_round_trips_through_parser() -> None:
    parsed = parse_newc(cpio_newc(ENTRIES))
    assert parsed == [(e.name, e.mode, e.data, e.rdev) for e in ENTRIES]


def test_cpio_is_readable_by_gnu_cpio(tmp_path: Path) -> None:
    archive = cpio_newc(ENTRIES)
    listing = subprocess.run(
        ["cpio", "-it", "--quiet"], input=archive, capture_output=True, check=True
    ).stdout.decode()
    assert listing.split() == [e.name for e in ENTRIES]
    files = cpio_newc([e for e in ENTRIES if not stat.S_ISCHR(e.mode)])  # mknod needs root
    subprocess.run(
        ["cpio", "-idm", "--quiet", "--no-absolute-filenames"],
        input=files,
        cwd=tmp_path,
        check=True,
    )
    assert (tmp_path / "init").read_bytes() == ENTRIES[2].data
    assert (tmp_path / "bin" / "busybox").read_bytes() == ENTRIES[3].data
    assert (tmp_path / "init").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "bin" / "sh").readlink() == Path("busybox")


def test_kernel_cmdline() -> None:
    line = kernel_cmdline(working_set_mib=128, dirty_rate_mib=100, disk=True, seed=2**32 + 5)
    words = line.split()
    assert words[0] == "console=ttyS0"
    for w in ("vmigrate.ws=128", "vmigrate.rate=100", "vmigrate.disk=1", "vmigrate.seed=5"):
        assert w in words
    assert "vmigrate.diskmb=16" in words
    assert "panic=-1" in words
    assert "quiet" in words
    other = kernel_cmdline(working_set_mib=1, dirty_rate_mib=0, disk=False, seed=1, disk_mib=8)
    assert "vmigrate.disk=0" in other.split()
    assert "vmigrate.diskmb=8" in other.split()


def test_kernel_cmdline_acpi_flag() -> None:
    def line(**acpi: bool) -> list[str]:
        return kernel_cmdline(
            working_set_mib=8, dirty_rate_mib=0, disk=False, seed=1, **acpi
        ).split()

    default = line()
    assert "vmigrate.acpi=1" in default  # the guest obeys the power button unless told not to
    assert line(acpi=True) == default
    ignoring = line(acpi=False)
    assert "vmigrate.acpi=0" in ignoring
    assert "vmigrate.acpi=1" not in ignoring
    assert [w for w in ignoring if w != "vmigrate.acpi=0"] == [
        w for w in default if w != "vmigrate.acpi=1"
    ]


def test_every_module_list_is_loaded_by_the_workload() -> None:
    source = image.WORKLOAD_SOURCE.read_text()
    assert set(image.MODULE_ROOTS) == {"acpi", "disk"}
    for name in image.MODULE_ROOTS:
        assert f'load_modules("{name}", ' in source
    assert "vmigrate.acpi=" in source


def test_disk_header() -> None:
    h = disk_header(42, 16)
    assert len(h) == 4096
    assert h.startswith(b"VMIGRATE-DISK seed=42 mb=16\n\0")
    assert h.rstrip(b"\0") == b"VMIGRATE-DISK seed=42 mb=16\n"
    assert disk_header(42, 16) == h
    assert disk_header(43, 16) != h


def test_expected_disk_block() -> None:
    b = expected_disk_block(0x2A, 1)
    assert len(b) == 4096
    lines = b.split(b"\n")[:-1]
    assert len(lines) == 64
    assert all(len(line) == 63 for line in lines)
    assert lines[0] == b"vmigrate seed=0000002a block=00000001 line=00".ljust(63, b".")
    assert lines[63].startswith(b"vmigrate seed=0000002a block=00000001 line=3f.")
    assert expected_disk_block(0x2A, 1) == b
    assert expected_disk_block(0x2B, 1) != b
    assert expected_disk_block(0x2A, 2) != b
    with pytest.raises(ValueError, match="header"):
        expected_disk_block(1, 0)


def test_workload_c_writes_the_same_pattern(tmp_path: Path) -> None:
    harness = tmp_path / "harness.c"
    harness.write_text(
        "#define main workload_main\n"
        f'#include "{image.WORKLOAD_SOURCE}"\n'
        "#undef main\n"
        "int main(int argc, char **argv) {\n"
        "    static char b[4096];\n"
        "    p_seed = strtoul(argv[1], 0, 0); p_diskmb = strtoul(argv[2], 0, 0);\n"
        "    for (int i = 3; i < argc; i++) {\n"
        "        fill_block(b, (uint32_t)strtoul(argv[i], 0, 0));\n"
        "        fwrite(b, 1, sizeof b, stdout);\n"
        "    }\n"
        "    return 0;\n"
        "}\n"
    )
    exe = tmp_path / "harness"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", exe, harness], check=True)
    blocks = [0, 1, 2, 255, 4095]
    out = subprocess.run(
        [exe, str(0xDEADBEEF), "16", *map(str, blocks)], capture_output=True, check=True
    ).stdout
    want = disk_header(0xDEADBEEF, 16) + b"".join(
        expected_disk_block(0xDEADBEEF, i) for i in blocks[1:]
    )
    assert out == want


def test_first_bad_disk_block(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    good = disk_header(9, 1) + b"".join(expected_disk_block(9, i) for i in range(1, 256))
    raw.write_bytes(good + b"\0" * 4096)  # the device may be larger than the pattern
    assert first_bad_disk_block(raw, 9, 1) is None
    raw.write_bytes(good[: 7 * 4096] + b"X" + good[7 * 4096 + 1 :])
    assert first_bad_disk_block(raw, 9, 1) == 7
    assert first_bad_disk_block(raw, 10, 1) == 0


def test_heartbeat_stats() -> None:
    log = [(1.0, "VMIGRATE workload ws=1 rate=0 disk=0")]
    log += [(1.5 + 0.01 * i, f"HB {i + 1}") for i in range(101)]
    first, mean, worst = heartbeat_stats(log)
    assert first == 1.5
    assert mean == pytest.approx(0.01)
    assert worst == pytest.approx(0.01)
    with pytest.raises(GuestImageError, match="sequence"):
        heartbeat_stats([(0.0, "HB 1"), (0.01, "HB 3")])


def test_extract_vmlinux_finds_the_xz_elf() -> None:
    elf = b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 64
    payload = lzma.compress(elf, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    decoy = b"\xfd7zXZ\x00 is not a stream"
    not_elf = lzma.compress(b"just some data", format=lzma.FORMAT_XZ)
    bzimage = b"MZ" + b"\0" * 0x1F0 + b"HdrS" + decoy + not_elf + b"\0" * 13 + payload
    bzimage += len(elf).to_bytes(4, "little") + b"\xcc" * 100  # trailing size and junk
    assert extract_vmlinux(bzimage) == elf


def test_extract_vmlinux_without_payload() -> None:
    with pytest.raises(GuestImageError, match="xz"):
        extract_vmlinux(b"MZ" + b"\0" * 4096)


def modinfo(depends: str) -> bytes:
    return b"\x7fELF...\0license=GPL\0depends=" + depends.encode() + b"\0intree=Y\0"


def test_module_load_order() -> None:
    mods = {
        "virtio_ring": modinfo(""),
        "virtio": modinfo("virtio_ring"),
        "virtio_pci_modern_dev": modinfo(""),
        "virtio_pci_legacy_dev": modinfo(""),
        "virtio_pci": modinfo("virtio_ring,virtio_pci_modern_dev,virtio_pci_legacy_dev,virtio"),
        "virtio_blk": modinfo("virtio,virtio_ring"),
        "unrelated": modinfo(""),
    }
    order = module_load_order(["virtio_pci", "virtio_blk"], mods)
    assert order == [
        "virtio_ring",
        "virtio_pci_modern_dev",
        "virtio_pci_legacy_dev",
        "virtio",
        "virtio_pci",
        "virtio_blk",
    ]
    with pytest.raises(GuestImageError, match="missing_mod"):
        module_load_order(["x"], {"x": modinfo("missing_mod")})


def fake_cache(tmp_path: Path, digest: str) -> None:
    (tmp_path / "vmlinux").write_bytes(b"\x7fELF")
    (tmp_path / "initrd.cpio").write_bytes(b"070701")
    manifest = {
        "kernel": "vmlinux",
        "initrd": "initrd.cpio",
        "kernel_version": "6.1.0-99-amd64",
        "kernel_format": "elf",
        "workload_sha256": digest,
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))


def test_load_guest_image(tmp_path: Path) -> None:
    assert load_guest_image(tmp_path) is None
    fake_cache(tmp_path, "stale")
    assert load_guest_image(tmp_path) is None  # built from another workload.c
    fake_cache(tmp_path, image._source_digest())
    assert load_guest_image(tmp_path) == GuestImage(
        tmp_path / "vmlinux", tmp_path / "initrd.cpio", "6.1.0-99-amd64", "elf"
    )
    (tmp_path / "initrd.cpio").unlink()
    assert load_guest_image(tmp_path) is None


def test_build_is_a_no_op_when_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cache(tmp_path, image._source_digest())

    def no_tools(*args: object, **kwargs: object) -> None:
        raise AssertionError("build_guest_image ran a tool although the cache is complete")

    monkeypatch.setattr(subprocess, "run", no_tools)
    monkeypatch.setattr(subprocess, "Popen", no_tools)
    assert build_guest_image(tmp_path).kernel == tmp_path / "vmlinux"
