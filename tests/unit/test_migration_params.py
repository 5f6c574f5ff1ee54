"""The migration's typed parameters: a --copy-storage mirror detects zeroes where the source's
libvirt can (10.9.0 on), and an older one is never sent a parameter it would refuse."""

from __future__ import annotations

import libvirt

from vmigrate.model import LiveOptions
from vmigrate.virt.migration import DETECT_ZEROES_LIBVIRT, migration_params

DETECT = "migrate_disks_detect_zeroes"


def test_copied_disks_detect_zeroes_on_a_source_that_can() -> None:
    params = migration_params(LiveOptions(copy_disks=("vda", "vdb")), source_libvirt=11_003_000)
    assert params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] == ["vda", "vdb"]
    assert params[DETECT] == ["vda", "vdb"]
    assert getattr(libvirt, "VIR_MIGRATE_PARAM_MIGRATE_DISKS_DETECT_ZEROES", DETECT) == DETECT


def test_an_older_source_or_no_copy_gets_no_zero_detection() -> None:
    older = migration_params(
        LiveOptions(copy_disks=("vda",)), source_libvirt=DETECT_ZEROES_LIBVIRT - 1
    )
    assert DETECT not in older and older[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] == ["vda"]
    assert DETECT not in migration_params(LiveOptions(), source_libvirt=11_003_000)
