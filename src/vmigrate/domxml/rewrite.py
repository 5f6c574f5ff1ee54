"""Domain XML for the destination of a cold move (pure): new disk paths, mapped networks,
and no parts that only make sense on the source host."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from vmigrate.domxml.disks import replace_disk_source

# Elements that describe the source host's runtime, not the guest: libvirt regenerates them.
_HOST_SPECIFIC = ("seclabel", "resource")


@dataclass(frozen=True)
class Rewrite:
    disk_paths: dict[str, str] = field(default_factory=dict)  # source path -> destination path
    networks: dict[str, str] = field(default_factory=dict)  # network or bridge -> new name
    flattened: frozenset[str] = frozenset()  # disk targets whose chain became one image
    #: disk target -> the <disk> it opens now (a file imported into rbd, an image exported)
    disk_sources: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RewriteResult:
    xml: str
    changes: tuple[str, ...]  # human-readable, for --dry-run and the report


def rewrite_for_destination(domain_xml: str, rewrite: Rewrite) -> RewriteResult:
    root = ET.fromstring(domain_xml)
    changes: list[str] = []
    for tag in _HOST_SPECIFIC:
        for element in root.findall(tag):
            root.remove(element)
            changes.append(f"removed <{tag}> (host-specific)")
    root.attrib.pop("id", None)
    for disk in root.findall("devices/disk"):
        target = disk.find("target")
        name = target.get("dev", "?") if target is not None else "?"
        if name in rewrite.disk_sources:
            before = _source_name(disk)
            replace_disk_source(disk, rewrite.disk_sources[name])
            changes.append(f"{name}: {before} -> {_source_name(disk)}")
            continue
        if name in rewrite.flattened:
            for backing in disk.findall("backingStore"):
                disk.remove(backing)
            changes.append(f"{name}: backing chain flattened into one image")
        for source in [disk.find("source"), *disk.findall(".//backingStore/source")]:
            if source is None:
                continue
            for attribute in ("file", "dev"):
                old = source.get(attribute)
                if old is not None and old in rewrite.disk_paths:
                    source.set(attribute, rewrite.disk_paths[old])
                    changes.append(f"{name}: {old} -> {rewrite.disk_paths[old]}")
    for nic in root.findall("devices/interface"):
        source = nic.find("source")
        if source is None:
            continue
        for attribute in ("network", "bridge"):
            old = source.get(attribute)
            if old is not None and old in rewrite.networks:
                source.set(attribute, rewrite.networks[old])
                changes.append(f"interface {attribute} {old} -> {rewrite.networks[old]}")
    return RewriteResult(ET.tostring(root, encoding="unicode"), tuple(changes))


def _source_name(disk: ET.Element) -> str:
    source = disk.find("source")
    if source is None:
        return "(empty)"
    if disk.get("type") == "network":
        return f"{source.get('protocol', '?')} {source.get('name', '?')}"
    return source.get("file") or source.get("dev") or "?"


def parse_maps(values: tuple[str, ...], option: str) -> dict[str, str]:
    """`SRC:DST` pairs from repeated command-line options; ValueError names the bad one."""
    mapping = {}
    for value in values:
        old, sep, new = value.partition(":")
        if not sep or not old or not new:
            raise ValueError(f"{option} {value!r} is not SRC:DST")
        mapping[old] = new
    return mapping
