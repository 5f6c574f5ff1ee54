"""What the job store never holds, put back into a destination's definition at the moment it
is defined (pure): console passwords, and the source's current <metadata>.

The plan's XML is read without VIR_DOMAIN_XML_SECURE (it is stored), so its <graphics> have
no `passwd`; defined as it is, the moved VM's console would have none. Right before the
define, the source's definition is read again with the flag and its secrets are grafted in;
the result is handed to libvirt and never stored or logged. <metadata> comes from the source
as it is now, since it changed after planning (the lease on the VM lives there).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass

#: <graphics> attributes that belong to its password; only `passwd` needs the SECURE flag,
#: the others come along so a password keeps its expiry and its policy.
PASSWORD_ATTRIBUTES = ("passwd", "passwdValidTo", "connected")


@dataclass(frozen=True)
class Grafted:
    xml: str  # secret: for defineXML only, never stored, logged or printed
    grafted: tuple[str, ...]  # what was put back (names, never values): for the journal


def graft_secrets(planned_xml: str, current_source_xml: str) -> Grafted:
    """`planned_xml` with the password attributes of each <graphics> (matched by type and
    order) and the <metadata> element taken from `current_source_xml`."""
    root = ET.fromstring(planned_xml)
    source = ET.fromstring(current_source_xml)
    grafted: list[str] = []
    planned = _graphics_by_type(root)
    for kind, elements in _graphics_by_type(source).items():
        for index, (element, target) in enumerate(
            zip(elements, planned.get(kind, []), strict=False)
        ):
            for attribute in PASSWORD_ATTRIBUTES:
                value = element.get(attribute)
                if value is not None and target.get(attribute) != value:
                    target.set(attribute, value)
                    grafted.append(f"graphics {kind} #{index} {attribute}")
    if _graft_metadata(root, source.find("metadata")):
        grafted.append("metadata")
    return Grafted(ET.tostring(root, encoding="unicode"), tuple(grafted))


def _graphics_by_type(root: ET.Element) -> dict[str, list[ET.Element]]:
    found: dict[str, list[ET.Element]] = defaultdict(list)
    for graphics in root.findall("devices/graphics"):
        found[graphics.get("type", "?")].append(graphics)
    return found


def _graft_metadata(root: ET.Element, current: ET.Element | None) -> bool:
    """The source's <metadata> as it is now replaces the planned one (or its absence)."""
    planned = root.find("metadata")
    if current is None and planned is None:
        return False
    if planned is not None and current is not None and _same(planned, current):
        return False
    position = list(root).index(planned) if planned is not None else _after_identity(root)
    if planned is not None:
        root.remove(planned)
    if current is not None:
        root.insert(position, current)
    return True


def _same(a: ET.Element, b: ET.Element) -> bool:
    return ET.tostring(a, encoding="unicode") == ET.tostring(b, encoding="unicode")


def _after_identity(root: ET.Element) -> int:
    """Where libvirt writes <metadata>: after name, uuid, title and description."""
    children = list(root)
    for index, child in enumerate(children):
        if child.tag not in ("name", "uuid", "genid", "title", "description"):
            return index
    return len(children)
