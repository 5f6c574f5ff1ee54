"""The recorded capabilities of both versions (tests/unit/data/versions) say what the lab
measured: which machine types each QEMU runs, and what `pc` stands for on each."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data" / "versions"
OLD = "libvirt-9.0.0-qemu-7.2.22"
NEW = "libvirt-11.3.0-qemu-10.0.2"


def machines(prefix: str) -> dict[str, str]:
    """Machine type → its canonical name (itself when it is no alias), for x86_64 TCG."""
    caps = ET.parse(DATA / f"{prefix}-capabilities.xml").getroot()
    found: dict[str, str] = {}
    for arch in caps.iterfind("./guest/arch[@name='x86_64']"):
        for machine in arch.iterfind("machine"):
            name = machine.text or ""
            found[name] = machine.get("canonical", name)
    return found


def test_pc_and_q35_mean_each_qemus_newest() -> None:
    assert machines(OLD)["pc"] == "pc-i440fx-7.2"
    assert machines(OLD)["q35"] == "pc-q35-7.2"
    assert machines(NEW)["pc"] == "pc-i440fx-10.0"
    assert machines(NEW)["q35"] == "pc-q35-10.0"


def test_a_newer_machine_type_is_unknown_to_the_older_qemu() -> None:
    assert "pc-i440fx-10.0" not in machines(OLD)
    assert "pc-q35-10.0" not in machines(OLD)
    assert "pc-i440fx-7.2" in machines(NEW)  # older to newer: the newer QEMU still runs it


@pytest.mark.parametrize("prefix", [OLD, NEW])
@pytest.mark.parametrize("virttype", ["kvm", "tcg"])
def test_domain_capabilities_name_their_default_machine(prefix: str, virttype: str) -> None:
    caps = ET.parse(DATA / f"{prefix}-domcaps-{virttype}.xml").getroot()
    assert caps.findtext("machine") == machines(prefix)["pc"]
    assert caps.findtext("domain") == ("kvm" if virttype == "kvm" else "qemu")


def migration_capabilities(prefix: str) -> set[str]:
    answer = json.loads((DATA / f"{prefix}-migrate-capabilities.json").read_text())
    return {entry["capability"] for entry in answer["return"]}


def test_the_migration_capabilities_each_qemu_has() -> None:
    old, new = migration_capabilities(OLD), migration_capabilities(NEW)
    shared = {"postcopy-ram", "multifd", "return-path", "auto-converge", "xbzrle"}
    assert shared <= old & new
    assert old - new == {"block", "compress"}  # QEMU 10.0 removed them
    assert new - old == {"dirty-limit", "mapped-ram", "switchover-ack"}
