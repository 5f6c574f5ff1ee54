"""Domain XML of a lab guest (pure). Built with ElementTree: names never meet string templates."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from vmigrate.lab.storage.pools import NetworkDiskSource, network_disk_element

LAB_XMLNS = "https://vmigrate.dev/xmlns/lab/1"
QEMU_BINARY = "/usr/bin/qemu-system-x86_64"


@dataclass(frozen=True)
class LabDisk:
    path: Path | None  # a file's path; None for a disk on a storage server
    format: str  # "qcow2" or "raw"
    network: NetworkDiskSource | None = None

    @property
    def where(self) -> str:
        return self.network.url if self.network is not None else str(self.path)


@dataclass(frozen=True)
class LabGuestSpec:
    name: str
    memory_mib: int
    working_set_mib: int
    dirty_rate_mib: int
    kernel: Path
    initrd: Path
    cmdline: str
    serial_socket: Path
    domain_type: str  # "kvm" or "qemu" (TCG)
    disk: LabDisk | None = None
    vcpus: int = 1


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def render_domain_xml(spec: LabGuestSpec) -> str:
    domain = ET.Element("domain", {"type": spec.domain_type})
    _sub(domain, "name", spec.name)
    _sub(domain, "memory", str(spec.memory_mib), unit="MiB")
    _sub(domain, "vcpu", str(spec.vcpus))
    metadata = _sub(domain, "metadata")
    ET.SubElement(
        metadata,
        f"{{{LAB_XMLNS}}}guest",
        {
            "working-set-mib": str(spec.working_set_mib),
            "dirty-rate-mib": str(spec.dirty_rate_mib),
        },
    )
    os_element = _sub(domain, "os")
    _sub(os_element, "type", "hvm", arch="x86_64", machine="pc")
    _sub(os_element, "kernel", str(spec.kernel))
    _sub(os_element, "initrd", str(spec.initrd))
    _sub(os_element, "cmdline", spec.cmdline)
    features = _sub(domain, "features")
    _sub(features, "acpi")
    if spec.domain_type == "kvm":
        _sub(domain, "cpu", mode="host-passthrough")
    _sub(domain, "clock", offset="utc")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "destroy")
    _sub(domain, "on_crash", "destroy")
    devices = _sub(domain, "devices")
    _sub(devices, "emulator", QEMU_BINARY)
    if spec.disk is not None and spec.disk.network is not None:
        devices.append(network_disk_element(spec.disk.network, spec.disk.format, "vda"))
    elif spec.disk is not None:
        disk = _sub(devices, "disk", type="file", device="disk")
        # cache='none': libvirt refuses to live-migrate a shared disk that the host caches.
        _sub(disk, "driver", name="qemu", type=spec.disk.format, cache="none")
        _sub(disk, "source", file=str(spec.disk.path))
        _sub(disk, "target", dev="vda", bus="virtio")
    serial = _sub(devices, "serial", type="unix")
    source = _sub(serial, "source", mode="connect", path=str(spec.serial_socket))
    # If the collector restarts, QEMU reconnects instead of losing the console for good.
    _sub(source, "reconnect", enabled="yes", timeout="1")
    _sub(serial, "target", port="0")
    _sub(devices, "controller", type="usb", model="none")
    _sub(devices, "memballoon", model="none")
    ET.register_namespace("vmigrate-lab", LAB_XMLNS)
    return ET.tostring(domain, encoding="unicode")
