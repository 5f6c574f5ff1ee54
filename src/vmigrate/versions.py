"""libvirt encodes versions as major * 1,000,000 + minor * 1,000 + release."""

from __future__ import annotations


def format_version(encoded: int) -> str:
    major, rest = divmod(encoded, 1_000_000)
    minor, release = divmod(rest, 1_000)
    return f"{major}.{minor}.{release}"


def parse_version(text: str) -> int:
    parts = [int(part) for part in text.split(".")] + [0, 0]
    return parts[0] * 1_000_000 + parts[1] * 1_000 + parts[2]
