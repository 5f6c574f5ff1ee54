"""libvirt's errors become vmigrate's at the edge: real errors from libvirt's test driver
(API glue only: it cannot migrate) and messages recorded from real daemons."""

from __future__ import annotations

import libvirt
import pytest

from vmigrate.errors import DriverMissing, HostError, NotFound, Vanished
from vmigrate.live.failure import explain_failure
from vmigrate.virt.errors import libvirt_errors, missing_driver, translate

#: Recorded on a fresh Debian 12 root whose libvirtd lacked its storage driver (issue #12).
NO_STORAGE_DRIVER = (
    "this function is not supported by the connection driver: virStoragePoolLookupByName"
)


@pytest.fixture
def conn() -> libvirt.virConnect:
    connection = libvirt.open("test:///default")
    yield connection
    connection.close()


def _raised(call: object) -> libvirt.libvirtError:
    try:
        call()  # type: ignore[operator]
    except libvirt.libvirtError as err:
        return err
    raise AssertionError("libvirt raised nothing")


def test_a_missing_driver_names_the_package() -> None:
    assert missing_driver(NO_STORAGE_DRIVER) == ("storage", "libvirt-daemon-driver-storage")
    network = "this function is not supported by the connection driver: virNetworkLookupByName"
    assert missing_driver(network) == ("network", "libvirt-daemon-driver-network")
    # Recorded by `lab up` from a lab host whose storage module was hidden.
    listing = (
        "this function is not supported by the connection driver: virConnectListAllStoragePools"
    )
    assert missing_driver(listing) == ("storage", "libvirt-daemon-driver-storage")
    backend = "internal error: missing backend for pool type 11 (iscsi-direct)"
    assert missing_driver(backend) == (
        "iscsi-direct storage back-end",
        "libvirt-daemon-driver-storage-iscsi-direct",
    )
    assert missing_driver("missing backend for pool type 0 (dir)") is None
    assert missing_driver("Requested operation is not valid: domain is not running") is None


def test_a_vanished_vm_is_an_answer_with_host_and_vm(conn: libvirt.virConnect) -> None:
    err = _raised(lambda: conn.lookupByName("no-such-vm"))
    translated = translate(err, host="hostB", vm="no-such-vm", doing="look at the VM")
    assert isinstance(translated, Vanished)
    assert str(translated).startswith("host hostB, VM no-such-vm: look at the VM: the VM is gone")


@pytest.mark.parametrize(
    ("lookup", "hint"),
    [
        (lambda c: c.storagePoolLookupByName("nope"), "virsh pool-list"),
        (lambda c: c.networkLookupByName("nope"), "--net-map"),
    ],
)
def test_missing_objects_say_how_to_list_or_define_them(
    conn: libvirt.virConnect, lookup: object, hint: str
) -> None:
    err = _raised(lambda: lookup(conn))  # type: ignore[operator]
    translated = translate(err, host="hostA")
    assert isinstance(translated, NotFound)
    assert hint in translated.fix
    assert translated.host == "hostA"


def test_a_host_without_the_secret_driver_is_told_which_package(
    conn: libvirt.virConnect,
) -> None:
    # The test driver has no secret driver: the same error a daemon without it gives.
    err = _raised(lambda: conn.secretLookupByUUIDString("5b1f3c9e-4a7d-4f5e-9a2b-0c1d2e3f4a5b"))
    translated = translate(err, host="hostB", doing="look up the disk's cephx secret")
    assert isinstance(translated, DriverMissing)
    assert "libvirt-daemon-driver-secret" in translated.fix


def test_a_refusal_keeps_libvirts_code_and_words(conn: libvirt.virConnect) -> None:
    domain = conn.lookupByName("test")
    err = _raised(lambda: domain.resume())  # it runs: "domain 'test' not paused"
    with (
        pytest.raises(HostError) as caught,
        libvirt_errors(host="hostA", vm="test", doing="resume"),
    ):
        raise err
    assert caught.value.code == err.get_error_code()
    assert caught.value.cause == err.get_error_message()
    assert str(caught.value).startswith("host hostA, VM test: resume: ")
    assert caught.value.fix
    # An API the driver lacks is not a package to install: a domain call is the QEMU driver's.
    unsupported = translate(_raised(lambda: domain.abortJob()), host="hostA")
    assert not isinstance(unsupported, DriverMissing)


@pytest.mark.parametrize(
    "words",
    [
        # Each recorded in the lab (libvirt 11.3, QEMU 10.0) when hostB's QEMU was killed.
        "internal error: QEMU unexpectedly closed the monitor (vm='fault-qemu'): ",
        "operation failed: job 'migration out' failed: Unable to write to socket: "
        "Connection reset by peer",
        "End of file while reading data: Input/output error",
    ],
)
def test_every_way_a_destination_qemu_dies_reads_as_a_broken_stream(words: str) -> None:
    message = explain_failure(words, lost=[], destination="hostB")
    assert message.startswith("the migration stream to hostB broke")
    assert message.endswith(words)


def test_a_lost_host_comes_first_and_other_failures_stay_as_they_are() -> None:
    lost = explain_failure("End of file while reading data", lost=["hostA"], destination="hostB")
    assert lost.startswith("lost the connection to hostA")
    other = "unsupported configuration: the CPU is incompatible with host CPU"
    assert explain_failure(other, lost=[], destination="hostB") == other
