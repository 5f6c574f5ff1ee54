"""A host's domains, listed: one gone since the listing is skipped, any other error is an
error naming the host (never an empty host). libvirt's test:/// driver is the host."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import libvirt
import pytest

from vmigrate.errors import VmigrateError
from vmigrate.virt import domains
from vmigrate.virt.connection import unless_vanished
from vmigrate.virt.facts import _guests
from vmigrate.virt.placement import active_with_uuid, look_by_uuid

UUID = "6695eb01-f6a4-8304-79aa-97f2502e1111"
NODE = f"""<node>
  <domain type='test'>
    <name>db1</name><uuid>{UUID}</uuid>
    <memory>131072</memory><vcpu>1</vcpu><os><type>hvm</type></os>
    <devices><disk type='file' device='disk'><source file='/pool/db1.qcow2'/>
      <target dev='vda'/></disk></devices>
  </domain>
</node>"""


@pytest.fixture
def host(tmp_path: Path) -> Iterator[libvirt.virConnect]:
    """A private test host (its own driver instance, unlike test:///default)."""
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    conn = libvirt.open(f"test://{node}")
    yield conn
    with contextlib.suppress(libvirt.libvirtError):  # a test may have closed it
        conn.close()


def test_a_domain_gone_since_the_listing_is_skipped(host: libvirt.virConnect) -> None:
    listed = host.listAllDomains(0)
    listed[0].destroy()
    listed[0].undefine()
    assert unless_vanished(listed[0].info) is None
    assert _guests(host) == ()


def test_any_other_error_reading_a_listed_domain_raises(host: libvirt.virConnect) -> None:
    listed = host.listAllDomains(0)
    # A real refusal from the driver (it has no block jobs), not "no such domain".
    with pytest.raises(libvirt.libvirtError) as raised:
        unless_vanished(partial(listed[0].blockJobInfo, "vda", 0))
    assert raised.value.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN


def test_the_listing_holds_every_domain(host: libvirt.virConnect) -> None:
    guests = _guests(host)
    assert [(g.name, g.uuid, g.state) for g in guests] == [("db1", UUID, "running")]
    assert domains.domain_using(host, "/pool/db1.qcow2", host="hostA") == "db1"
    assert domains.domain_using(host, "/pool/other.qcow2", host="hostA") is None


def test_a_host_that_fails_to_answer_is_an_error_not_an_empty_host(
    host: libvirt.virConnect,
) -> None:
    host.close()
    with pytest.raises(VmigrateError) as raised:
        domains.domain_using(host, "/pool/db1.qcow2", host="hostA")
    assert raised.value.host == "hostA"
    with pytest.raises(VmigrateError) as raised:
        active_with_uuid(UUID, {"hostA": host})
    assert raised.value.host == "hostA"
    assert "UUID" in raised.value.message


def test_found_by_uuid_whatever_its_name(tmp_path: Path) -> None:
    node = tmp_path / "node.xml"
    node.write_text(NODE.replace("<name>db1</name>", "<name>db1-copy</name>"))
    conn = libvirt.open(f"test://{node}")
    seen = look_by_uuid(conn, UUID, host="hostB")
    assert seen is not None and (seen.name, seen.active) == ("db1-copy", True)
    assert list(active_with_uuid(UUID, {"hostB": conn})) == ["hostB"]
    conn.lookupByName("db1-copy").destroy()
    assert active_with_uuid(UUID, {"hostB": conn}) == {}
    seen = look_by_uuid(conn, UUID, host="hostB")
    assert seen is not None and seen.shutoff_reason == "destroyed"
    assert look_by_uuid(conn, "6695eb01-f6a4-8304-79aa-97f2502e2222", host="hostB") is None
    conn.close()
