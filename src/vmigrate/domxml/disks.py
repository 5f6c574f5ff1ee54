"""Disk elements for the pool changes of a cold move (pure): a local file, an rbd image as
one host's rbd pool reaches it, and the paused helper domain whose QEMU copies between them.

libvirt's rbd pool takes no volume upload or download, and no volume made from a file pool's
volume (measured with libvirt 11.3), so only QEMU moves bytes into or out of Ceph without the
cephx key leaving libvirt: a transient helper domain, started paused (its CPU never runs),
opens the disk, and a block copy mirrors it into the new one.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET


def file_disk_xml(path: str, fmt: str) -> str:
    """A file disk; QEMU follows its backing chain as the image names it."""
    disk = ET.Element("disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type=fmt)
    ET.SubElement(disk, "source", file=path)
    return ET.tostring(disk, encoding="unicode")


def rbd_disk_xml(pool_xml: str, image: str) -> str:
    """The raw rbd image `image` as the host whose pool this is reaches it: the same
    monitors, Ceph pool, user and secret (secrets are per host, so each side uses its own)."""
    pool = ET.fromstring(pool_xml)
    ceph_pool = pool.findtext("source/name") or ""
    disk = ET.Element("disk", type="network", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="raw")
    source = ET.SubElement(disk, "source", protocol="rbd", name=f"{ceph_pool}/{image}")
    for host in pool.findall("source/host"):
        ET.SubElement(source, "host", {k: v for k, v in host.attrib.items() if v})
    auth = pool.find("source/auth")
    secret = auth.find("secret") if auth is not None else None
    if auth is not None and secret is not None:
        element = ET.SubElement(source, "auth", username=auth.get("username", ""))
        ET.SubElement(element, "secret", {**secret.attrib, "type": "ceph"})
    return ET.tostring(disk, encoding="unicode")


def uncached_disk_xml(disk_xml: str) -> str:
    """The disk with no client-side cache (cache='none'): a helper that opens an image before
    another host writes it reads what is in the storage, never what it cached before."""
    disk = ET.fromstring(disk_xml)
    driver = disk.find("driver")
    if driver is None:
        driver = ET.SubElement(disk, "driver", name="qemu")
    driver.set("cache", "none")
    return ET.tostring(disk, encoding="unicode")


def helper_domain_xml(name: str, disk_xml: str, domain_type: str = "qemu") -> str:
    """A helper holding one disk, as vda (helper_domain_xml_for)."""
    return helper_domain_xml_for(name, (("vda", disk_xml),), domain_type)


def helper_domain_xml_for(
    name: str, disks: tuple[tuple[str, str], ...], domain_type: str = "qemu"
) -> str:
    """A transient domain with only `disks` ((target dev, disk XML), ...), started paused:
    nothing boots, the guest never runs, QEMU just holds the disks open for block copies.

    Each disk gets discard='unmap': libvirt gives the copy's target the source disk's discard
    mode, and without it QEMU allocates every zero it writes into a raw file (measured: a
    1 GiB image holding 16 MiB became a 1 GiB file; with it, 16 MiB)."""
    domain = ET.Element("domain", type=domain_type)
    ET.SubElement(domain, "name").text = name
    ET.SubElement(domain, "memory", unit="MiB").text = "32"
    ET.SubElement(ET.SubElement(domain, "os"), "type").text = "hvm"
    devices = ET.SubElement(domain, "devices")
    for dev, disk_xml in disks:
        disk = ET.fromstring(disk_xml)
        disk.set("device", "disk")
        driver = disk.find("driver")
        if driver is None:
            driver = ET.SubElement(disk, "driver", name="qemu")
        driver.set("discard", "unmap")
        ET.SubElement(disk, "target", dev=dev, bus="virtio")
        devices.append(disk)
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(domain, encoding="unicode")


def helper_targets(count: int) -> tuple[str, ...]:
    """The helper's device names for `count` disks: vda .. vdz, then vdaa, vdab, ..."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    names = []
    for index in range(count):
        suffix = ""
        index += 1
        while index:
            index, rest = divmod(index - 1, 26)
            suffix = letters[rest] + suffix
        names.append(f"vd{suffix}")
    return tuple(names)


def replace_disk_source(disk: ET.Element, new_disk_xml: str) -> None:
    """Make a domain's <disk> open what `new_disk_xml` names, keeping its target, bus, cache
    and address: type, driver format, source and auth change; the old backing chain goes."""
    new = ET.fromstring(new_disk_xml)
    disk.set("type", new.get("type", "file"))
    for tag in ("source", "auth", "backingStore"):
        for element in disk.findall(tag):
            disk.remove(element)
    driver = disk.find("driver")
    new_driver = new.find("driver")
    if driver is None:
        driver = ET.Element("driver", name="qemu")
        disk.insert(0, driver)
    if new_driver is not None:
        driver.set("type", new_driver.get("type", "raw"))
    source = new.find("source")
    if source is not None:
        disk.insert(list(disk).index(driver) + 1, source)
