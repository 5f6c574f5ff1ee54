from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vmigrate.domxml.rewrite import Rewrite, parse_maps, rewrite_for_destination

BLOCKERS = (Path(__file__).parent / "data" / "domains" / "blockers.xml").read_text()


def test_disk_paths_backing_chain_and_networks_are_rewritten() -> None:
    result = rewrite_for_destination(
        BLOCKERS,
        Rewrite(
            disk_paths={
                "/var/lib/libvirt/images/db1.qcow2": "/srv/pool/db1.qcow2",
                "/var/lib/libvirt/images/base.qcow2": "/srv/pool/base.qcow2",
            },
            networks={"prod": "prod-b", "br-storage": "br-san"},
        ),
    )
    root = ET.fromstring(result.xml)
    disk = root.find("devices/disk")
    assert disk is not None
    assert disk.find("source").get("file") == "/srv/pool/db1.qcow2"  # type: ignore[union-attr]
    assert disk.find("backingStore/source").get("file") == "/srv/pool/base.qcow2"  # type: ignore[union-attr]
    sources = [n.find("source") for n in root.findall("devices/interface")]
    assert [s.get("network") or s.get("bridge") for s in sources if s is not None] == [
        "prod-b",
        "br-san",
    ]
    assert "vda: /var/lib/libvirt/images/db1.qcow2 -> /srv/pool/db1.qcow2" in result.changes
    # The UUID stays: it is the same VM.
    assert root.findtext("uuid") == "5b1f3c9e-4a7d-4f5e-9a2b-0c1d2e3f4a5b"


def test_host_specific_parts_are_removed() -> None:
    xml = (
        "<domain type='kvm' id='7'><name>a</name><seclabel type='dynamic' model='apparmor'/>"
        "<devices/></domain>"
    )
    result = rewrite_for_destination(xml, Rewrite())
    root = ET.fromstring(result.xml)
    assert root.find("seclabel") is None and "id" not in root.attrib


def test_maps() -> None:
    assert parse_maps(("a:b", "c:d"), "--net-map") == {"a": "b", "c": "d"}
    with pytest.raises(ValueError, match="--pool-map 'nocolon'"):
        parse_maps(("nocolon",), "--pool-map")


def test_a_flattened_disk_loses_its_backing_store() -> None:
    result = rewrite_for_destination(
        BLOCKERS,
        Rewrite(
            disk_paths={"/var/lib/libvirt/images/db1.qcow2": "/srv/pool/db1.qcow2"},
            flattened=frozenset({"vda"}),
        ),
    )
    disk = ET.fromstring(result.xml).find("devices/disk")
    assert disk is not None and disk.find("backingStore") is None
    assert "vda: backing chain flattened into one image" in result.changes
