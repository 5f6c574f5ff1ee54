"""libvirt's errors turned into vmigrate's at the edge: host, VM, cause and what to do.

Everything outside `virt/` sees only `vmigrate.errors` types; `code` and `cause` on a
`HostError` keep libvirt's number and words for the few callers that must tell cases apart.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import libvirt

from vmigrate.errors import (
    DriverMissing,
    HostError,
    HostUnreachable,
    NotFound,
    Vanished,
    VmigrateError,
    install_fix,
)

#: The Debian package that brings each libvirt driver, by the object its API names
#: (virStoragePoolLookupByName and virConnectListAllStoragePools alike).
DRIVER_PACKAGES = {
    "Storage": ("storage", "libvirt-daemon-driver-storage"),
    "NWFilter": ("network filter", "libvirt-daemon-driver-nwfilter"),
    "Network": ("network", "libvirt-daemon-driver-network"),
    "Secret": ("secret", "libvirt-daemon-driver-secret"),
    "Interface": ("interface", "libvirt-daemon-driver-interface"),
    "NodeDevice": ("node device", "libvirt-daemon-driver-nodedev"),
}
#: Pool types built into the storage driver itself; every other type is a package of its own.
_BUILTIN_POOL_TYPES = {"dir", "fs", "netfs"}

_UNSUPPORTED = re.compile(r"not supported by the connection driver: (vir[A-Za-z]+)")
_MISSING_BACKEND = re.compile(r"missing backend for pool type \d+ \(([\w-]+)\)")

#: Codes that mean the connection itself is gone, not that the operation was refused.
_CONNECTION_LOST = {
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INVALID_CONN,
    libvirt.VIR_ERR_RPC,
}


def missing_driver(message: str) -> tuple[str, str] | None:
    """(driver, package) when libvirt's words say a driver or pool back-end is not there."""
    found = _UNSUPPORTED.search(message)
    if found:
        api = found.group(1)
        for family, driver in DRIVER_PACKAGES.items():
            if family in api:
                return driver
        return None
    backend = _MISSING_BACKEND.search(message)
    if backend and backend.group(1) not in _BUILTIN_POOL_TYPES:
        pool_type = backend.group(1)
        return f"{pool_type} storage back-end", f"libvirt-daemon-driver-storage-{pool_type}"
    return None


def is_connection_lost(err: libvirt.libvirtError) -> bool:
    if err.get_error_code() in _CONNECTION_LOST:
        return True
    message = (err.get_error_message() or "").lower()
    return err.get_error_code() == libvirt.VIR_ERR_SYSTEM_ERROR and any(
        words in message
        for words in ("end of file", "connection reset", "socket is closed", "broken pipe")
    )


def translate(
    err: libvirt.libvirtError, *, host: str | None, vm: str | None = None, doing: str = ""
) -> VmigrateError:
    """The vmigrate error for one libvirt error: who, what, libvirt's words, and a fix."""
    code = err.get_error_code()
    words = err.get_error_message() or str(err)
    what = f"{doing}: " if doing else ""
    driver = missing_driver(words)
    if driver is not None:
        name, package = driver
        return DriverMissing(
            f"{what}its libvirt daemon has no {name} driver ({words})",
            host=host,
            vm=vm,
            code=code,
            cause=words,
            fix=install_fix(package),
        )
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return Vanished(
            f"{what}the VM is gone from this host", host=host, vm=vm, code=code, cause=words
        )
    not_found = {
        libvirt.VIR_ERR_NO_STORAGE_POOL: "list the pools with `virsh pool-list --all`",
        libvirt.VIR_ERR_NO_STORAGE_VOL: "list the volumes with `virsh vol-list POOL`",
        libvirt.VIR_ERR_NO_NETWORK: "list the networks with `virsh net-list --all`, "
        "or map it with --net-map",
        libvirt.VIR_ERR_NO_SECRET: "define the secret on this host too "
        "(`virsh secret-define` and `virsh secret-set-value`): libvirt keeps secrets per host",
    }
    if code in not_found:
        return NotFound(f"{what}{words}", host=host, vm=vm, fix=not_found[code])
    if is_connection_lost(err):
        return HostUnreachable(
            f"{what}lost the connection to libvirt ({words})",
            host=host,
            vm=vm,
            fix="check that libvirtd still runs there and that the link to it is up",
        )
    refused = code in (
        libvirt.VIR_ERR_OPERATION_INVALID,
        libvirt.VIR_ERR_OPERATION_DENIED,
        libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
        libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
        libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
        libvirt.VIR_ERR_OPERATION_FAILED,
    )
    fix = (
        "the host's libvirt refused this in the VM's current state: check it with "
        "`vmigrate check` or `virsh dominfo`, then retry"
        if refused
        else "see the host's libvirtd log for details, fix what it names, then retry"
    )
    return HostError(f"{what}{words}", host=host, vm=vm, code=code, cause=words, fix=fix)


@contextlib.contextmanager
def libvirt_errors(*, host: str | None, vm: str | None = None, doing: str = "") -> Iterator[None]:
    """Run libvirt calls; a libvirt error leaves as the matching vmigrate error."""
    try:
        yield
    except libvirt.libvirtError as err:
        raise translate(err, host=host, vm=vm, doing=doing) from err
