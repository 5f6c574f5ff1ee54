"""The lab's storage servers and what each host gets for them, as pure text and XML: the
configuration files stay inside the lab's directory, the pools name the servers, and a lab
guest's network disk reads back as vmigrate's checks see one."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vmigrate.domxml.domain import parse_domain
from vmigrate.errors import UsageError
from vmigrate.lab.domain import LabDisk, LabGuestSpec, render_domain_xml
from vmigrate.lab.storage import ceph, iscsi, nfs
from vmigrate.lab.storage.pools import (
    RBD_SECRET_UUID,
    NetworkDiskSource,
    iscsi_source,
    nfs_source,
    rbd_source,
    render_iscsi_pool_xml,
    render_rbd_pool_xml,
    render_secret_xml,
)
from vmigrate.lab.storage.servers import parse_backends


def test_ceph_runs_on_one_loopback_address_with_everything_in_its_directory(
    tmp_path: Path,
) -> None:
    conf = ceph.render_ceph_conf("8d4b1c5e-0000-4000-8000-000000000001", tmp_path)
    settings = dict(line.split(" = ", 1) for line in conf.splitlines() if " = " in line)
    assert settings["mon host"] == "[v2:127.0.0.21:3300,v1:127.0.0.21:6789]"
    assert settings["public addr"] == settings["cluster addr"] == "127.0.0.21"
    assert settings["osd pool default size"] == "1" and settings["osd objectstore"] == "memstore"
    paths = [v for k, v in settings.items() if k.endswith(("dir", "file", "data", "socket"))]
    assert paths and all(p.startswith(str(tmp_path)) for p in paths), paths


def test_ganesha_exports_the_lab_directory_to_root(tmp_path: Path) -> None:
    conf = nfs.render_ganesha_conf(tmp_path)
    assert f'Path = "{tmp_path / "export"}";' in conf
    assert "Squash = No_Root_Squash;" in conf and "Protocols = 3;" in conf
    assert f'RecoveryRoot = "{tmp_path / "recovery"}";' in conf


def test_pools_name_the_servers_and_the_secret() -> None:
    iscsi_pool = ET.fromstring(render_iscsi_pool_xml("hostB"))
    assert iscsi_pool.get("type") == "iscsi-direct"
    assert iscsi_pool.find("source/host").get("name") == iscsi.ISCSI_ADDRESS  # type: ignore[union-attr]
    assert iscsi_pool.find("source/device").get("path") == iscsi.TARGET_IQN  # type: ignore[union-attr]
    assert iscsi_pool.find("source/initiator/iqn").get("name").endswith(":hostb")  # type: ignore[union-attr]
    rbd_pool = ET.fromstring(render_rbd_pool_xml())
    assert rbd_pool.findtext("source/name") == ceph.RBD_POOL
    assert rbd_pool.find("source/auth/secret").get("uuid") == RBD_SECRET_UUID  # type: ignore[union-attr]
    secret = ET.fromstring(render_secret_xml())
    assert secret.get("private") == "yes" and secret.findtext("uuid") == RBD_SECRET_UUID
    assert secret.find("usage").get("type") == "ceph"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("source", "fmt", "endpoint"),
    [
        (iscsi_source(3), "raw", ("127.0.0.20", 3260)),
        (rbd_source("vm1-vda"), "raw", ("127.0.0.21", 6789)),
        (nfs_source("vm1-vda.qcow2"), "qcow2", ("127.0.0.22", None)),
    ],
)
def test_a_lab_network_disk_reads_back_as_the_checks_see_it(
    source: NetworkDiskSource, fmt: str, endpoint: tuple[str, int | None]
) -> None:
    spec = LabGuestSpec(
        name="vm1",
        memory_mib=256,
        working_set_mib=128,
        dirty_rate_mib=0,
        kernel=Path("/k"),
        initrd=Path("/i"),
        cmdline="",
        serial_socket=Path("/s"),
        domain_type="qemu",
        disk=LabDisk(None, fmt, source),
    )
    (disk,) = parse_domain(render_domain_xml(spec)).disks
    assert disk.source_type == "network" and disk.cache == "none" and disk.format == fmt
    assert disk.network is not None and disk.network.protocol == source.protocol
    assert disk.network.name == source.name and disk.network.hosts == (endpoint,)
    if source.protocol == "rbd":
        assert disk.network.secret_uuid == RBD_SECRET_UUID and disk.network.username == "libvirt"


def test_storage_backends_are_a_checked_subset() -> None:
    assert parse_backends("nfs, rbd") == ("rbd", "nfs")
    assert parse_backends("") == ()
    with pytest.raises(UsageError, match="unknown storage backend gluster"):
        parse_backends("iscsi,gluster")


def test_status_table_keeps_each_address_whole_in_80_columns() -> None:
    from rich.console import Console

    from vmigrate.cli.lab import _storage_table
    from vmigrate.lab.storage.servers import StorageStatus

    servers = [
        StorageStatus("iscsi", "tgtd (tgt 1.0.85)", "127.0.0.20", 3260, True, "serving", 0.2, 4),
        StorageStatus("rbd", "Ceph", "127.0.0.21", 6789, True, "HEALTH_OK", 12.7, 386),
        StorageStatus("nfs", "NFS-Ganesha 4.3", "127.0.0.22", 2049, True, "serving", 0.4, 25),
    ]  # fmt: skip
    console = Console(width=80, record=True)
    console.print(_storage_table(servers))
    text = console.export_text()
    for address in ("127.0.0.20:3260", "127.0.0.21:6789", "127.0.0.22:2049", "HEALTH_OK"):
        assert address in text
