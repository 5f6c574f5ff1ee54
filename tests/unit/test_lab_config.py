"""Configuration of the lab hosts, link shaping and the XML of lab guests (pure functions)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from vmigrate.errors import UsageError
from vmigrate.lab.config import (
    DEFAULT_HOST_COUNT,
    HOST_A,
    HOST_B,
    HOST_C,
    HOST_D,
    LAB_HOSTS,
    PRIVATE_DIRS,
    lab_host,
    lab_hosts,
    render_dir_pool_xml,
    render_libvirtd_conf,
    render_qemu_conf,
    up_command,
)
from vmigrate.lab.domain import LabDisk, LabGuestSpec, render_domain_xml
from vmigrate.lab.link import SHAPED_CLASS, LinkStatus, filter_destinations, shaping_commands
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
    assert a["listen_tls"] == "1" and a["listen_tcp"] == "0"
    assert a["auth_tls"] == '"none"'  # the client certificate is the authentication
    assert '"CN=vmigrate-lab-client"' in a["tls_allowed_dn_list"]
    assert a["unix_sock_rw_perms"] == '"0700"'  # reachable from outside the namespace


def test_plain_tcp_only_when_asked_for() -> None:
    insecure = conf_values(render_libvirtd_conf(HOST_A, insecure_tcp=True))
    assert insecure["listen_tcp"] == "1" and insecure["listen_tls"] == "1"
    assert "tcp" not in HOST_A.uris(insecure_tcp=False)
    assert HOST_A.uris(insecure_tcp=True)["tcp"] == "qemu+tcp://127.0.0.2/system"


def test_lab_uris_carry_their_own_credentials() -> None:
    uris = HOST_B.uris(insecure_tcp=False)
    assert uris["tls"].startswith("qemu+tls://127.0.0.3/system?pkipath=/")
    assert uris["ssh"].startswith("qemu+ssh://root@127.0.0.3/system?keyfile=/")
    assert "command=" in uris["ssh"]  # openssh takes its pinned host keys from there
    assert HOST_B.uri == uris["tls"]  # TLS is the lab's default
    # The hosts reach each other with their own credentials, as real hosts do.
    assert HOST_B.peer_uri("tls") == "qemu+tls://127.0.0.3/system"
    assert HOST_B.peer_uri("ssh") == "qemu+ssh://root@127.0.0.3/system"


def test_qemu_has_tls_credentials_for_the_stream() -> None:
    values = conf_values(render_qemu_conf(HOST_B))
    assert values["migrate_tls_x509_cert_dir"] == '"/etc/pki/qemu"'
    assert values["migrate_tls_x509_verify"] == "1"


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
    places = {host.private_dir(p) for host in LAB_HOSTS for p in PRIVATE_DIRS}
    assert len(places) == len(LAB_HOSTS) * len(PRIVATE_DIRS)


def test_four_hosts_on_consecutive_loopback_addresses_with_distinct_uuids() -> None:
    assert [h.name for h in LAB_HOSTS] == ["hostA", "hostB", "hostC", "hostD"]
    assert [h.address for h in LAB_HOSTS] == ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
    assert HOST_D.tcp_uri == "qemu+tcp://127.0.0.5/system"
    assert len({h.host_uuid for h in LAB_HOSTS}) == 4
    values = conf_values(render_libvirtd_conf(HOST_C))
    assert values["listen_addr"] == '"127.0.0.4"'
    assert conf_values(render_qemu_conf(HOST_D))["migration_address"] == '"127.0.0.5"'


def test_declared_capacities_are_small_and_differ() -> None:
    assert {h.name: h.capacity_mib for h in LAB_HOSTS} == {
        "hostA": 4096,
        "hostB": 2048,
        "hostC": 3072,
        "hostD": 2048,
    }
    assert {h.vcpus for h in LAB_HOSTS} == {4}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("A", "hostA"),
        ("hostb", "hostB"),
        ("hostA", "hostA"),
        ("C", "hostC"),
        ("hostC", "hostC"),
        ("hostc", "hostC"),
        ("d", "hostD"),
        ("E", None),
        ("hostE", None),
    ],
)
def test_lab_host_names(name: str, expected: str | None) -> None:
    host = lab_host(name)
    assert (host.name if host else None) == expected


def test_a_lab_of_n_hosts_is_the_first_n() -> None:
    assert lab_hosts(DEFAULT_HOST_COUNT) == (HOST_A, HOST_B)
    assert lab_hosts(3) == (HOST_A, HOST_B, HOST_C)
    assert lab_hosts(4) == LAB_HOSTS


@pytest.mark.parametrize("count", [0, 1, 5])
def test_lab_host_count_outside_2_to_4_is_a_usage_error(count: int) -> None:
    with pytest.raises(UsageError) as caught:
        lab_hosts(count)
    assert "2 to 4" in str(caught.value)
    assert "--hosts" in caught.value.fix


def test_up_command_names_the_host_count_a_host_needs() -> None:
    assert up_command(HOST_A) == up_command(HOST_B) == "vmigrate lab up"
    assert up_command(HOST_C) == "vmigrate lab up --hosts 3"
    assert up_command(HOST_D) == "vmigrate lab up --hosts 4"


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


def _filters(commands: list[list[str]]) -> list[str]:
    return [" ".join(c) for c in commands if c[0] == "filter"]


def test_shaping_matches_only_hostb() -> None:
    commands = shaping_commands("1gbit", None, [HOST_B.address])
    flat = [" ".join(c) for c in commands]
    assert _filters(commands) == [
        f"filter add dev lo parent 1: protocol ip prio 1 u32 match ip dst 127.0.0.3/32 "
        f"flowid {SHAPED_CLASS}"
    ]
    assert not any("netem" in c for c in flat)
    with_delay = shaping_commands("1gbit", "5ms", [HOST_B.address])
    assert any("netem delay 5ms" in " ".join(c) for c in with_delay)


def test_shaping_sends_every_destination_through_the_one_uplink_class() -> None:
    commands = shaping_commands("100mbit", None, ["127.0.0.3", "127.0.0.4", "127.0.0.5"])
    assert [c[0] for c in commands].count("class") == 1
    filters = _filters(commands)
    assert [f.split(" dst ")[1] for f in filters] == [
        f"127.0.0.3/32 flowid {SHAPED_CLASS}",
        f"127.0.0.4/32 flowid {SHAPED_CLASS}",
        f"127.0.0.5/32 flowid {SHAPED_CLASS}",
    ]
    assert not any("127.0.0.2" in f for f in filters), "hostA's own address is never shaped"
    # A destination named twice is filtered once.
    assert len(_filters(shaping_commands("1gbit", None, ["127.0.0.4", "127.0.0.4"]))) == 1


@pytest.mark.parametrize("address", ["10.0.0.3", "127.0.0.3/8", "hostB", "127.0.0.3; ls", ""])
def test_shaping_refuses_anything_but_a_loopback_address(address: str) -> None:
    with pytest.raises(UsageError, match="loopback"):
        shaping_commands("1gbit", None, [address])


def test_shaping_needs_a_destination() -> None:
    with pytest.raises(UsageError, match="no destination"):
        shaping_commands("1gbit", None, [])


@pytest.mark.parametrize("rate", ["fast", "1 gbit", "1gbit; rm -rf /", ""])
def test_shaping_rejects_bad_rates(rate: str) -> None:
    with pytest.raises(UsageError):
        shaping_commands(rate, None, [HOST_B.address])


def test_shaping_rejects_bad_delay() -> None:
    with pytest.raises(UsageError):
        shaping_commands("1gbit", "soon", [HOST_B.address])


#: `tc -j filter show dev lo parent 1:` after shaping hostB and hostC (iproute2 6.1).
TC_FILTERS = (
    '[{"protocol":"ip","pref":1,"kind":"u32","chain":0},{"protocol":"ip","pref":1,"kind":"u32",'
    '"chain":0,"options":{"fh":"800:","ht_divisor":1}},{"protocol":"ip","pref":1,"kind":"u32",'
    '"chain":0,"options":{"fh":"800::800","order":2048,"key_ht":"800","bkt":"0","flowid":"1:10",'
    '"not_in_hw":true,"match":{"value":"7f000003","mask":"ffffffff","offmask":"","off":16}}},'
    '{"protocol":"ip","pref":1,"kind":"u32","chain":0,"options":{"fh":"800::801","order":2049,'
    '"key_ht":"800","bkt":"0","flowid":"1:10","not_in_hw":true,"match":{"value":"7f000004",'
    '"mask":"ffffffff","offmask":"","off":16}}}]'
)


def test_filter_destinations_read_from_tc() -> None:
    entries: list[dict[str, Any]] = json.loads(TC_FILTERS)
    assert filter_destinations(entries) == ("127.0.0.3", "127.0.0.4")
    foreign = {"options": {"flowid": "1:20", "match": {"value": "7f000005", "off": 16}}}
    assert filter_destinations([foreign, {"options": "x"}, {}]) == ()


def test_link_status_keeps_the_old_byte_counter_key() -> None:
    status = LinkStatus(True, "100Mbit", None, 1234, ("127.0.0.3", "127.0.0.4"))
    assert status.bytes_to_hostb == status.bytes_shaped == 1234
    assert status.hosts == ("hostB", "hostC")
    data = status.to_dict()
    assert data["bytes_to_hostb"] == data["bytes_shaped"] == 1234
    assert data["destinations"] == ["127.0.0.3", "127.0.0.4"]
    assert data["hosts"] == ["hostB", "hostC"]


def test_versions_round_trip() -> None:
    assert format_version(11003000) == "11.3.0"
    assert parse_version("10.0.2") == 10000002
    assert format_version(parse_version("4.0")) == "4.0.0"
