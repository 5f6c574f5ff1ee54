"""Console passwords and the source's current <metadata> grafted into the planned XML at
define time. Recorded from the lab's libvirt 11.3 (hostA): one domain dumped with and
without VIR_DOMAIN_XML_SECURE, the lease written with setMetadata before the secure dump."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from vmigrate.domxml.rewrite import Rewrite, rewrite_for_destination
from vmigrate.domxml.secrets import graft_secrets

DATA = Path(__file__).parent / "data" / "domains"
SECURE = (DATA / "vnc-password-secure.xml").read_text()  # now, with SECURE: passwd and lease
PLAIN = (DATA / "vnc-password-plain.xml").read_text()  # as planned and stored: neither
LEASE = "{https://vmigrate.dev/xmlns/lease/1}lease"


def _planned() -> str:
    """The plan's destination XML: the stored definition through the cold rewrite."""
    return rewrite_for_destination(PLAIN, Rewrite()).xml


def test_the_recorded_plain_dump_has_no_password() -> None:
    assert "passwd=" not in PLAIN and "vnc-s3cr" not in PLAIN
    assert "passwd='vnc-s3cr'" in SECURE


def test_the_console_password_and_the_lease_are_grafted() -> None:
    result = graft_secrets(_planned(), SECURE)
    root = ET.fromstring(result.xml)
    graphics = root.find("devices/graphics")
    assert graphics is not None
    assert graphics.get("passwd") == "vnc-s3cr"
    assert graphics.get("passwdValidTo") == "2030-01-01T00:00:00"
    lease = root.find(f"metadata/{LEASE}")
    assert lease is not None and (lease.get("job"), lease.get("token")) == ("42", "abc")
    assert root.find("metadata/{https://example.org/app/1}tags/tag") is not None
    assert result.grafted == ("graphics vnc #0 passwd", "metadata")
    assert "vnc-s3cr" not in " ".join(result.grafted)  # the note names, never values


def test_nothing_else_changes() -> None:
    planned = ET.fromstring(_planned())
    grafted = ET.fromstring(graft_secrets(_planned(), SECURE).xml)
    for root in (planned, grafted):
        for graphics in root.iter("graphics"):
            graphics.attrib.pop("passwd", None)
        metadata = root.find("metadata")
        assert metadata is not None
        root.remove(metadata)
    assert ET.tostring(planned) == ET.tostring(grafted)


def test_metadata_removed_on_the_source_is_not_carried() -> None:
    source = ET.fromstring(SECURE)
    metadata = source.find("metadata")
    assert metadata is not None
    source.remove(metadata)
    result = graft_secrets(_planned(), ET.tostring(source, encoding="unicode"))
    assert ET.fromstring(result.xml).find("metadata") is None
    assert "metadata" in result.grafted


def test_metadata_added_since_the_plan_goes_after_the_identity() -> None:
    planned = ET.fromstring(_planned())
    metadata = planned.find("metadata")
    assert metadata is not None
    planned.remove(metadata)
    result = graft_secrets(ET.tostring(planned, encoding="unicode"), SECURE)
    tags = [child.tag for child in ET.fromstring(result.xml)]
    assert tags[:3] == ["name", "uuid", "metadata"]


def test_graphics_are_matched_by_type_and_order() -> None:
    def with_second_vnc(xml: str, password: str | None) -> str:
        root = ET.fromstring(xml)
        devices = root.find("devices")
        assert devices is not None
        second = ET.SubElement(devices, "graphics", type="vnc", port="-1", autoport="yes")
        if password:
            second.set("passwd", password)
        devices.insert(0, ET.Element("graphics", type="dbus"))  # another type, first
        return ET.tostring(root, encoding="unicode")

    result = graft_secrets(with_second_vnc(_planned(), None), with_second_vnc(SECURE, "two"))
    vnc = ET.fromstring(result.xml).findall("devices/graphics[@type='vnc']")
    assert [g.get("passwd") for g in vnc] == ["vnc-s3cr", "two"]
    assert ET.fromstring(result.xml).find("devices/graphics[@type='dbus']") is not None


def test_a_source_without_secrets_changes_nothing_but_metadata() -> None:
    result = graft_secrets(_planned(), PLAIN)
    assert "passwd=" not in result.xml
    assert result.grafted == ()
