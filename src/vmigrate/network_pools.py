"""Which libvirt pool of a host holds a network disk's volume, decided from the pool's XML
(pure): an rbd pool on the disk's monitors and Ceph pool, an iSCSI pool on its portal and
target, a netfs pool whose export directory holds its file."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from vmigrate.domxml.domain import NetworkSource

#: The pool types that can hold each protocol's network disks.
POOL_TYPES = {"rbd": ("rbd",), "iscsi": ("iscsi-direct", "iscsi"), "nfs": ("netfs",)}


@dataclass(frozen=True)
class PoolMatch:
    """The pool reaches the disk's server and volume set: the volume to look for in it."""

    volume: str  # rbd: image; nfs: path below the export; iscsi: the LUN number
    lun: str | None  # iscsi: volumes are named unit:B:T:LUN, their paths ...-lun-LUN
    secret_uuid: str | None  # the secret the pool authenticates with
    secret_usage: str | None


def _split(source: NetworkSource) -> tuple[str, str]:
    """(collection, member): rbd pool and image, iSCSI IQN and LUN (0 when none is named)."""
    name = source.name or ""
    if source.protocol == "iscsi" and "/" not in name:
        return name, "0"
    collection, _, member = name.rpartition("/")
    return collection, member


def match_pool(pool_xml: str, source: NetworkSource) -> PoolMatch | None:
    root = ET.fromstring(pool_xml)
    if root.get("type") not in POOL_TYPES.get(source.protocol, ()):
        return None
    pool_hosts = {h.get("name", "") for h in root.findall("source/host")}
    disk_hosts = {host for host, _port in source.hosts}
    # A side that names no server uses its default (ceph.conf's monitors): no verdict here.
    if disk_hosts and pool_hosts and not disk_hosts & pool_hosts:
        return None
    secret = root.find("source/auth/secret")
    secret_uuid = secret.get("uuid") if secret is not None else None
    secret_usage = secret.get("usage") if secret is not None else None
    if source.protocol == "nfs":
        directory = next((d.get("path", "") for d in root.findall("source/dir")), "").rstrip("/")
        name = source.name or ""
        if not directory or not name.startswith(directory + "/"):
            return None
        return PoolMatch(name[len(directory) + 1 :], None, secret_uuid, secret_usage)
    collection, member = _split(source)
    if source.protocol == "rbd":
        if (root.findtext("source/name") or "") != collection:
            return None
        return PoolMatch(member, None, secret_uuid, secret_usage)
    device = next((d.get("path", "") for d in root.findall("source/device")), "")
    if device != collection:
        return None
    return PoolMatch(member, member, secret_uuid, secret_usage)


def is_the_volume(match: PoolMatch, name: str, path: str) -> bool:
    if name == match.volume:
        return True
    lun = match.lun
    return lun is not None and (name.endswith(f":{lun}") or path.endswith(f"-lun-{lun}"))


def same_ceph_pool(pool_xml: str, other_xml: str) -> bool:
    """Both are rbd pools on one Ceph pool: the same pool name, a monitor in common (a side
    naming no monitor uses its ceph.conf's: no verdict against it)."""
    a, b = ET.fromstring(pool_xml), ET.fromstring(other_xml)
    if a.get("type") != "rbd" or b.get("type") != "rbd":
        return False
    if (a.findtext("source/name") or "") != (b.findtext("source/name") or ""):
        return False
    hosts_a = {h.get("name", "") for h in a.findall("source/host")}
    hosts_b = {h.get("name", "") for h in b.findall("source/host")}
    return not (hosts_a and hosts_b) or bool(hosts_a & hosts_b)
