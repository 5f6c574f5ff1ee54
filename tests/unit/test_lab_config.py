"""Configuration of the lab hosts and the XML of lab guests (pure functions)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vmigrate.errors import UsageError
from vmigrate.lab.config import (
    HOST_A,
    HOST_B,
    PRIVATE_DIRS,
    lab_host,
    render_dir_pool_xml,
    render_libvirtd_conf,
    render_qemu_conf,
)
from vmigrate.lab.domain import LabDisk, LabGuestSpec, render_domain_xml
from vmigrate.lab.link import shaping_commands
from vmigrate.lab.vms import disk_device_xml, volume_xml
from vmigrate.versions import format_version, parse_version


def conf_values(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def test_hosts_listen_on_their_own_loopback_address_with_distinct_uuids() -> None:
    a, b = conf_values(render_libvirtd_conf(HOST_A)), conf_values(render_libvirtd_conf(HOST_B))
    assert a["listen_addr"] == '"127.0.0.2"'
    assert b["listen_addr"] == '"127.0.0.3"'
    assert a["host_uuid"] != b["host_uuid"]
    assert a["listen_tcp"] == "1"
    assert a["listen_tls"] == "0"


def test_host_uuid_is_stable() -> None:
    assert HOST_A.host_uuid == HOST_A.host_uuid
    assert HOST_A.host_uuid != HOST_B.host_uuid


def test_qemu_migrates_over_the_hosts_own_address() -> None:
    values = conf_values(render_qemu_conf(HOST_B))
    assert values["migration_address"] == '"127.0.0.3"'
    assert values["migration_host"] == '"127.0.0.3"'
    assert values["security_driver"] == '"none"'
    assert values["stdio_handler"] == '"file"'


def test_every_private_dir_maps_to_a_distinct_place_per_host() -> None:
    places = {HOST_A.private_dir(p) for p in PRIVATE_DIRS} | {
        HOST_B.private_dir(p) for p in PRIVATE_DIRS
    }
    assert len(places) == 2 * len(PRIVATE_DIRS)


@pytest.mark.parametrize(
    ("name", "expected"), [("A", "hostA"), ("hostb", "hostB"), ("hostA", "hostA"), ("C", None)]
)
def test_lab_host_names(name: str, expected: str | None) -> None:
    host = lab_host(name)
    assert (host.name if host else None) == expected


def spec(**overrides: object) -> LabGuestSpec:
    values: dict[str, object] = {
        "name": "vm1",
        "memory_mib": 256,
        "working_set_mib": 128,
        "dirty_rate_mib": 100,
        "kernel": Path("/k"),
        "initrd": Path("/i"),
        "cmdline": "console=ttyS0",
        "serial_socket": Path("/run/vm1.sock"),
        "domain_type": "qemu",
    }
    values.update(overrides)
    return LabGuestSpec(**values)  # type: ignore[arg-type]


def test_domain_xml_boots_the_lab_kernel_with_serial_on_the_collector_socket() -> None:
    root = ET.fromstring(render_domain_xml(spec()))
    assert root.get("type") == "qemu"
    assert root.findtext("name") == "vm1"
    assert root.find("memory").text == "256"  # type: ignore[union-attr]
    assert root.findtext("os/kernel") == "/k"
    assert root.findtext("os/cmdline") == "console=ttyS0"
    serial = root.find("devices/serial")
    assert serial is not None and serial.get("type") == "unix"
    assert serial.find("source").get("path") == "/run/vm1.sock"  # type: ignore[union-attr]
    assert root.find("devices/disk") is None
    assert root.find("cpu") is None


def test_domain_xml_under_kvm_passes_the_host_cpu_through() -> None:
    root = ET.fromstring(render_domain_xml(spec(domain_type="kvm")))
    assert root.get("type") == "kvm"
    assert root.find("cpu").get("mode") == "host-passthrough"  # type: ignore[union-attr]


def test_domain_xml_disk_uses_cache_none_for_live_migration() -> None:
    xml = render_domain_xml(spec(disk=LabDisk(Path("/pool/vm1-vda.qcow2"), "qcow2")))
    driver = ET.fromstring(xml).find("devices/disk/driver")
    assert driver is not None
    assert driver.get("cache") == "none"
    assert driver.get("type") == "qcow2"


def test_names_are_escaped_not_interpolated() -> None:
    root = ET.fromstring(render_domain_xml(spec(name="a<b>&c")))
    assert root.findtext("name") == "a<b>&c"


NASTY = """a<b>&c'd"e"""


def test_pool_xml_is_a_dir_pool_with_its_name_and_path_escaped() -> None:
    plain = ET.fromstring(render_dir_pool_xml("shared", Path("/var/lib/vmigrate-lab/shared")))
    assert plain.tag == "pool" and plain.get("type") == "dir"
    assert plain.findtext("name") == "shared"
    assert plain.findtext("target/path") == "/var/lib/vmigrate-lab/shared"
    xml = render_dir_pool_xml(NASTY, f"/pools/{NASTY}")
    assert "<b>" not in xml
    root = ET.fromstring(xml)
    assert root.findtext("name") == NASTY
    assert root.findtext("target/path") == f"/pools/{NASTY}"


def test_volume_xml_sizes_in_bytes_with_its_name_escaped() -> None:
    root = ET.fromstring(volume_xml(f"{NASTY}-vdb.qcow2", "qcow2", 128 / 1024))
    assert root.findtext("name") == f"{NASTY}-vdb.qcow2"
    capacity = root.find("capacity")
    assert capacity is not None and capacity.get("unit") == "bytes"
    assert capacity.text == str(128 << 20)
    assert root.find("target/format").get("type") == "qcow2"  # type: ignore[union-attr]
    assert root.find("allocation") is None
    overlay = ET.fromstring(volume_xml("v", "qcow2", 1, (f"/p/{NASTY}.img", "raw"), sparse=True))
    assert overlay.findtext("allocation") == "0"
    assert overlay.findtext("backingStore/path") == f"/p/{NASTY}.img"
    assert overlay.find("backingStore/format").get("type") == "raw"  # type: ignore[union-attr]


def test_added_disk_xml_is_a_virtio_disk_with_its_path_escaped() -> None:
    xml = disk_device_xml(f"/var/lib/libvirt/images/{NASTY}-vdb.qcow2", "vdb")
    assert "<b>" not in xml
    root = ET.fromstring(xml)
    assert (root.tag, root.get("type"), root.get("device")) == ("disk", "file", "disk")
    driver = root.find("driver")
    assert driver is not None
    assert (driver.get("name"), driver.get("type"), driver.get("cache")) == (
        "qemu",
        "qcow2",
        "none",
    )
    source = root.find("source")
    assert source is not None
    assert source.get("file") == f"/var/lib/libvirt/images/{NASTY}-vdb.qcow2"
    target = root.find("target")
    assert target is not None and (target.get("dev"), target.get("bus")) == ("vdb", "virtio")


def test_shaping_matches_only_hostb() -> None:
    commands = shaping_commands("1gbit", None)
    flat = [" ".join(c) for c in commands]
    assert any("match ip dst 127.0.0.3/32" in c for c in flat)
    assert not any("netem" in c for c in flat)
    assert any("netem delay 5ms" in " ".join(c) for c in shaping_commands("1gbit", "5ms"))


@pytest.mark.parametrize("rate", ["fast", "1 gbit", "1gbit; rm -rf /", ""])
def test_shaping_rejects_bad_rates(rate: str) -> None:
    with pytest.raises(UsageError):
        shaping_commands(rate, None)


def test_shaping_rejects_bad_delay() -> None:
    with pytest.raises(UsageError):
        shaping_commands("1gbit", "soon")


def test_versions_round_trip() -> None:
    assert format_version(11003000) == "11.3.0"
    assert parse_version("10.0.2") == 10000002
    assert format_version(parse_version("4.0")) == "4.0.0"
