"""What each lab host gets for the storage servers (pure XML): an `iscsi-direct` pool on the
iSCSI target, an `rbd` pool on the Ceph pool with the cephx secret it authenticates with,
and the network-disk sources lab guests use. NFS has no pool: libvirt's only NFS pool
(`netfs`) mounts the export with the kernel, which this machine has not; its disks are
network disks QEMU opens with libnfs."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from vmigrate.lab.storage import ceph, iscsi, nfs

ISCSI_POOL = "iscsi"
RBD_POOL = "rbd"
#: One secret, the same UUID on every lab host, as a real cluster's hosts would have it.
RBD_SECRET_UUID = str(uuid.uuid5(uuid.UUID("0b9e3c3e-1f4e-4b8e-9d55-6a0d0c7e21aa"), "ceph"))
RBD_SECRET_USAGE = f"client.{ceph.CLIENT} secret"


@dataclass(frozen=True)
class NetworkDiskSource:
    """A lab disk on a storage server, as the domain XML names it."""

    protocol: str  # iscsi | rbd | nfs
    name: str  # IQN/LUN | pool/image | /export/path/file
    host: str
    port: int | None  # None: the protocol's own discovery (NFS asks the portmapper)
    secret_uuid: str | None = None
    username: str | None = None

    @property
    def host_filename(self) -> str:
        """How this machine's qemu-img and qemu-io open it: rbd as the lab's Ceph admin
        (through the lab's ceph.conf, so no key is ever on a command line)."""
        if self.protocol == "rbd":
            return f"rbd:{self.name}:conf={ceph.CONF}:id=admin"
        return self.url

    @property
    def url(self) -> str:
        """How a person (and `qemu-img`) would name it."""
        if self.protocol == "rbd":
            return f"rbd:{self.name}"
        return f"{self.protocol}://{self.host}{'' if self.name.startswith('/') else '/'}{self.name}"


def render_secret_xml() -> str:
    secret = ET.Element("secret", ephemeral="no", private="yes")
    ET.SubElement(secret, "uuid").text = RBD_SECRET_UUID
    ET.SubElement(secret, "description").text = "cephx key of the vmigrate lab's Ceph"
    usage = ET.SubElement(secret, "usage", type="ceph")
    ET.SubElement(usage, "name").text = RBD_SECRET_USAGE
    return ET.tostring(secret, encoding="unicode")


def render_iscsi_pool_xml(host_name: str) -> str:
    """libvirt lists the target's LUNs through libiscsi, logged in as this host."""
    pool = ET.Element("pool", type="iscsi-direct")
    ET.SubElement(pool, "name").text = ISCSI_POOL
    source = ET.SubElement(pool, "source")
    ET.SubElement(source, "host", name=iscsi.ISCSI_ADDRESS, port=str(iscsi.ISCSI_PORT))
    ET.SubElement(source, "device", path=iscsi.TARGET_IQN)
    initiator = ET.SubElement(source, "initiator")
    ET.SubElement(initiator, "iqn", name=iscsi.initiator_iqn(host_name))
    return ET.tostring(pool, encoding="unicode")


def render_rbd_pool_xml() -> str:
    pool = ET.Element("pool", type="rbd")
    ET.SubElement(pool, "name").text = RBD_POOL
    source = ET.SubElement(pool, "source")
    ET.SubElement(source, "name").text = ceph.RBD_POOL
    ET.SubElement(source, "host", name=ceph.CEPH_ADDRESS, port=str(ceph.MON_PORT))
    auth = ET.SubElement(source, "auth", type="ceph", username=ceph.CLIENT)
    ET.SubElement(auth, "secret", uuid=RBD_SECRET_UUID)
    return ET.tostring(pool, encoding="unicode")


def render_rbd_volume_xml(name: str, size_bytes: int) -> str:
    volume = ET.Element("volume")
    ET.SubElement(volume, "name").text = name
    ET.SubElement(volume, "capacity", unit="bytes").text = str(size_bytes)
    return ET.tostring(volume, encoding="unicode")


def iscsi_source(lun: int) -> NetworkDiskSource:
    return NetworkDiskSource(
        "iscsi", f"{iscsi.TARGET_IQN}/{lun}", iscsi.ISCSI_ADDRESS, iscsi.ISCSI_PORT
    )


def rbd_source(image: str) -> NetworkDiskSource:
    return NetworkDiskSource(
        "rbd",
        f"{ceph.RBD_POOL}/{image}",
        ceph.CEPH_ADDRESS,
        ceph.MON_PORT,
        secret_uuid=RBD_SECRET_UUID,
        username=ceph.CLIENT,
    )


def nfs_source(file_name: str) -> NetworkDiskSource:
    return NetworkDiskSource("nfs", str(nfs.EXPORT_DIR / file_name), nfs.NFS_ADDRESS, None)


def network_disk_element(source: NetworkDiskSource, fmt: str, target: str) -> ET.Element:
    """A virtio network disk; cache='none', which libvirt wants of a disk both hosts open."""
    disk = ET.Element("disk", type="network", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type=fmt, cache="none")
    if source.secret_uuid is not None:
        auth = ET.SubElement(disk, "auth", username=source.username or "")
        ET.SubElement(auth, "secret", type="ceph", uuid=source.secret_uuid)
    element = ET.SubElement(disk, "source", protocol=source.protocol, name=source.name)
    host = ET.SubElement(element, "host", name=source.host)
    if source.port is not None:
        host.set("port", str(source.port))
    ET.SubElement(disk, "target", dev=target, bus="virtio")
    return disk
