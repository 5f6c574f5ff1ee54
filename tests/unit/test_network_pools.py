"""Which pool of a host holds a network disk's volume, from pool XML recorded on the lab's
hosts (`virsh pool-dumpxml`: the iscsi-direct and rbd pools of `lab up --storage`, and a
netfs pool defined but never started: this kernel cannot mount NFS)."""

from __future__ import annotations

from pathlib import Path

from vmigrate.domxml.domain import NetworkSource
from vmigrate.network_pools import is_the_volume, match_pool

DATA = Path(__file__).parent / "data" / "pools"
IQN = "iqn.2026-12.lab.vmigrate:store"


def _xml(name: str) -> str:
    return (DATA / f"{name}.xml").read_text()


def _disk(protocol: str, name: str, host: str, port: int | None = None) -> NetworkSource:
    return NetworkSource(protocol, name, ((host, port),), None, None, None, None)


def test_an_rbd_disk_is_in_the_pool_on_its_monitors_and_ceph_pool() -> None:
    match = match_pool(_xml("rbd"), _disk("rbd", "vmigrate/vm1-vda", "127.0.0.21", 6789))
    assert match is not None and match.volume == "vm1-vda" and match.lun is None
    assert match.secret_uuid == "c93c047b-b59f-50db-b966-0a900c2110eb"
    assert match_pool(_xml("rbd"), _disk("rbd", "other/vm1-vda", "127.0.0.21")) is None
    assert match_pool(_xml("rbd"), _disk("rbd", "vmigrate/vm1-vda", "10.0.0.9")) is None
    assert match_pool(_xml("iscsi-direct"), _disk("rbd", "vmigrate/x", "127.0.0.21")) is None


def test_an_iscsi_disk_is_the_lun_of_the_pool_on_its_portal_and_target() -> None:
    match = match_pool(_xml("iscsi-direct"), _disk("iscsi", f"{IQN}/3", "127.0.0.20", 3260))
    assert match is not None and match.lun == "3"
    assert is_the_volume(match, "unit:0:0:3", f"ip-127.0.0.20:3260-iscsi-{IQN}-lun-3")
    assert not is_the_volume(match, "unit:0:0:13", f"ip-127.0.0.20:3260-iscsi-{IQN}-lun-13")
    no_lun = match_pool(_xml("iscsi-direct"), _disk("iscsi", IQN, "127.0.0.20"))
    assert no_lun is not None and no_lun.lun == "0"  # a target without a LUN means LUN 0
    assert match_pool(_xml("iscsi-direct"), _disk("iscsi", "iqn.x:other/3", "127.0.0.20")) is None


def test_an_nfs_file_is_in_the_netfs_pool_of_its_export() -> None:
    match = match_pool(_xml("netfs"), _disk("nfs", "/srv/export/vm1-vda.qcow2", "127.0.0.22"))
    assert match is not None and match.volume == "vm1-vda.qcow2"
    assert match_pool(_xml("netfs"), _disk("nfs", "/srv/exported/x.qcow2", "127.0.0.22")) is None
