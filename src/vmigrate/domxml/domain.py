"""What the checks need to know about a domain, read from its XML (pure functions)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass


@dataclass(frozen=True)
class NetworkSource:
    """Where a network disk lives: what QEMU opens itself, with no file on either host."""

    protocol: str  # rbd | iscsi | nfs | gluster | nbd | ...
    name: str | None  # rbd: pool/image; iscsi: IQN/LUN; nfs and gluster: volume/path
    hosts: tuple[tuple[str, int | None], ...]  # monitors, portal, server (name, port)
    secret_type: str | None  # <auth><secret type=...>: ceph | iscsi
    secret_uuid: str | None
    secret_usage: str | None
    username: str | None

    @property
    def servers(self) -> str:
        return ", ".join(f"{h}:{p}" if p else h for h, p in self.hosts) or "(default server)"


@dataclass(frozen=True)
class DiskInfo:
    target: str  # vda
    device: str  # disk | cdrom | floppy | lun
    source_type: str  # file | block | network | volume | dir | nvme | ...
    path: str | None  # file or block device path
    pool: str | None  # for type='volume'
    volume: str | None
    protocol: str | None  # for type='network' (rbd, iscsi, gluster, nbd, ...)
    format: str | None  # qcow2 | raw | ...
    cache: str | None
    readonly: bool
    shareable: bool
    backing_chain: tuple[str, ...]  # paths (or descriptions) below the top image, in order
    network: NetworkSource | None = None  # for type='network'

    @property
    def is_empty(self) -> bool:
        return self.source_type in ("file", "block") and self.path is None


@dataclass(frozen=True)
class InterfaceInfo:
    kind: str  # network | bridge | direct | user | ...
    source: str | None  # network name, bridge name or host NIC
    portgroup: str | None
    mac: str | None


@dataclass(frozen=True)
class HostDeviceInfo:
    kind: str  # hostdev type (pci, usb, scsi, mdev) or "shmem", ...
    description: str


@dataclass(frozen=True)
class DomainSummary:
    name: str
    uuid: str
    virt_type: str  # kvm | qemu
    arch: str
    machine: str
    emulator: str | None
    memory_kib: int
    vcpus: int
    disks: tuple[DiskInfo, ...]
    interfaces: tuple[InterfaceInfo, ...]
    host_devices: tuple[HostDeviceInfo, ...]


def _chain(disk: ET.Element) -> tuple[str, ...]:
    chain: list[str] = []
    store = disk.find("backingStore")
    while store is not None and store.find("source") is not None:
        source = store.find("source")
        assert source is not None
        chain.append(source.get("file") or source.get("dev") or source.get("name") or "?")
        store = store.find("backingStore")
    return tuple(chain)


def _port(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _network_source(disk: ET.Element) -> NetworkSource | None:
    source = disk.find("source")
    if source is None or source.get("protocol") is None:
        return None
    # libvirt accepts <auth> inside <source> (preferred) or beside it in <disk>.
    auth = source.find("auth")
    if auth is None:
        auth = disk.find("auth")
    secret = auth.find("secret") if auth is not None else None
    return NetworkSource(
        protocol=source.get("protocol", "?"),
        name=source.get("name"),
        hosts=tuple((h.get("name", "?"), _port(h.get("port"))) for h in source.findall("host")),
        secret_type=secret.get("type") if secret is not None else None,
        secret_uuid=secret.get("uuid") if secret is not None else None,
        secret_usage=secret.get("usage") if secret is not None else None,
        username=auth.get("username") if auth is not None else None,
    )


def _disk(element: ET.Element) -> DiskInfo:
    source = element.find("source")
    driver = element.find("driver")
    target = element.find("target")

    def attr(key: str) -> str | None:
        return source.get(key) if source is not None else None

    return DiskInfo(
        target=target.get("dev", "?") if target is not None else "?",
        device=element.get("device", "disk"),
        source_type=element.get("type", "file"),
        path=attr("file") or attr("dev"),
        pool=attr("pool"),
        volume=attr("volume"),
        protocol=attr("protocol"),
        format=driver.get("type") if driver is not None else None,
        cache=driver.get("cache") if driver is not None else None,
        readonly=element.find("readonly") is not None,
        shareable=element.find("shareable") is not None,
        backing_chain=_chain(element),
        network=_network_source(element) if element.get("type") == "network" else None,
    )


def _interface(element: ET.Element) -> InterfaceInfo:
    source = element.find("source")
    kind = element.get("type", "?")
    name = None
    if source is not None:
        name = source.get({"network": "network", "bridge": "bridge"}.get(kind, "dev"))
    mac = element.find("mac")
    return InterfaceInfo(
        kind=kind,
        source=name,
        portgroup=source.get("portgroup") if source is not None else None,
        mac=mac.get("address") if mac is not None else None,
    )


def _host_devices(devices: ET.Element) -> tuple[HostDeviceInfo, ...]:
    found = []
    for hostdev in devices.findall("hostdev"):
        kind = hostdev.get("type", "?")
        address = hostdev.find("source/address")
        where = " ".join(
            f"{k}={v}" for k, v in (address.attrib if address is not None else {}).items()
        )
        found.append(HostDeviceInfo(kind, f"{kind} host device {where}".strip()))
    for shmem in devices.findall("shmem"):
        found.append(HostDeviceInfo("shmem", f"shared memory device {shmem.get('name')}"))
    return tuple(found)


def parse_domain(xml: str) -> DomainSummary:
    root = ET.fromstring(xml)
    os_type = root.find("os/type")
    devices = root.find("devices")
    if devices is None:
        devices = ET.Element("devices")
    memory = root.find("memory")
    memory_kib = int(memory.text or 0) if memory is not None else 0
    unit = memory.get("unit", "KiB") if memory is not None else "KiB"
    scale = {
        "b": 1 / 1024,
        "bytes": 1 / 1024,
        "KiB": 1,
        "k": 1,
        "MiB": 1024,
        "M": 1024,
        "GiB": 1024**2,
        "G": 1024**2,
    }.get(unit, 1)
    vcpu = root.find("vcpu")
    return DomainSummary(
        name=root.findtext("name", ""),
        uuid=root.findtext("uuid", ""),
        virt_type=root.get("type", ""),
        arch=os_type.get("arch", "") if os_type is not None else "",
        machine=os_type.get("machine", "") if os_type is not None else "",
        emulator=devices.findtext("emulator"),
        memory_kib=int(memory_kib * scale),
        vcpus=int(vcpu.text or 1) if vcpu is not None else 1,
        disks=tuple(_disk(d) for d in devices.findall("disk")),
        interfaces=tuple(_interface(i) for i in devices.findall("interface")),
        host_devices=_host_devices(devices),
    )
