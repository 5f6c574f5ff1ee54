"""How big a lab guest may be, and how much working set it holds: the rules `lab vm create`
applies before making anything, checked against what guests were measured to keep free."""

from __future__ import annotations

import pytest

from vmigrate.errors import UsageError
from vmigrate.lab import vms
from vmigrate.lab.image import kernel_cmdline

#: Free memory the workload found at /init in a guest of each size (MiB, TCG, transparent
#: huge pages off), measured by booting the lab guest with an impossible working set.
MEASURED_FREE_AT_INIT = {
    128: 52,
    256: 177,
    512: 427,
    1024: 929,
    2048: 1932,
    3072: 2933,
    4096: 3877,
    8192: 7901,
}


@pytest.mark.parametrize(("memory", "free"), sorted(MEASURED_FREE_AT_INIT.items()))
def test_the_largest_working_set_fits_what_the_guest_measured_free(memory: int, free: int) -> None:
    most = vms.max_working_set_mib(memory)
    # the workload needs 16 MiB beside its working set, the kernel its page tables and reserve
    assert 0 < most <= free - 16 - memory // 256
    # and the rule does not waste much: 32 MiB and 5 % of the guest's memory at most
    assert most >= free - 32 - memory * 0.05


def test_default_working_set_is_memory_less_128_where_the_guest_holds_it() -> None:
    assert vms.default_working_set_mib(128) == 0
    assert vms.default_working_set_mib(512) == 384
    assert vms.default_working_set_mib(1024) == 896
    # past ~2.5 GiB the guest's kernel keeps more than 128 MiB
    assert vms.default_working_set_mib(4096) == vms.max_working_set_mib(4096) < 4096 - 128


def test_the_guest_kernel_keeps_no_memory_for_huge_pages() -> None:
    line = kernel_cmdline(working_set_mib=1, dirty_rate_mib=0, disk=False, seed=1).split()
    assert "transparent_hugepage=never" in line


@pytest.fixture
def machine_of(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine with 24 GiB available (what the lab machines have)."""
    monkeypatch.setattr(vms, "available_memory_mib", lambda: 24 * 1024)


@pytest.mark.parametrize("memory", [128, 768, 1024, 2048, 4096, 8192])
def test_sizes_from_128_mib_to_what_the_machine_holds_are_accepted(
    machine_of: None, memory: int
) -> None:
    host, working_set = vms._validate(vms.LabVmRequest("big", memory_mib=memory))
    assert host.name == "hostA"
    assert working_set == vms.default_working_set_mib(memory)


@pytest.mark.parametrize(
    ("request_", "words", "fix"),
    [
        (vms.LabVmRequest("v", memory_mib=127), "too little memory", "at least 128 MiB"),
        (vms.LabVmRequest("v", memory_mib=0), "too little memory", "at least 128 MiB"),
        (
            vms.LabVmRequest("v", memory_mib=24 * 1024),
            "does not fit: this machine has 24576 MiB available",
            "at most 23406 MiB (--memory)",
        ),
        (
            vms.LabVmRequest("v", memory_mib=1024, working_set_mib=1000),
            "a working set of 1000 MiB does not fit in 1024 MiB",
            "at most 896 MiB (--working-set)",
        ),
        (
            vms.LabVmRequest("v", memory_mib=4096, working_set_mib=3968),
            "the guest's kernel keeps 288 MiB",
            "at most 3808 MiB",
        ),
    ],
)
def test_sizes_nobody_can_hold_are_refused_clearly(
    machine_of: None, request_: vms.LabVmRequest, words: str, fix: str
) -> None:
    with pytest.raises(UsageError) as caught:
        vms._validate(request_)
    assert words in caught.value.message and fix in (caught.value.fix or "")
    assert caught.value.vm == "v"


def test_the_largest_size_offered_is_accepted(machine_of: None) -> None:
    vms._validate(vms.LabVmRequest("v", memory_mib=23406))
    with pytest.raises(UsageError):
        vms._validate(vms.LabVmRequest("v", memory_mib=23407))


def test_bigger_guests_get_longer_to_boot() -> None:
    assert vms.boot_timeout_seconds(512) < vms.boot_timeout_seconds(4096)
    assert vms.boot_timeout_seconds(4096) >= 90 + 4 * 15
