"""Opening libvirt connections, and turning libvirt's errors into ones that say what to do."""

from __future__ import annotations

import contextlib
import errno
import logging
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt

from vmigrate.errors import HostUnreachable, NotFound
from vmigrate.hosts import parse_uri
from vmigrate.tls_probe import explain_untrusted_server
from vmigrate.transport_errors import diagnose
from vmigrate.virt.errors import translate

log = logging.getLogger(__name__)
T = TypeVar("T")


def _quiet_error_handler(_context: Any, _error: Any) -> None:
    # libvirt prints every error to stderr by default; we raise them as exceptions instead.
    return


libvirt.registerErrorHandler(_quiet_error_handler, None)

Connection = libvirt.virConnect
Domain = libvirt.virDomain
LibvirtError = libvirt.libvirtError
#: The definition of a running domain as another host must see it (no host-only parts;
#: without VIR_DOMAIN_XML_SECURE, so no passwords end up in the job store).
MIGRATABLE_XML = libvirt.VIR_DOMAIN_XML_MIGRATABLE
#: Undefine a migrated-away source but keep its NVRAM file (it may be on shared storage).
UNDEFINE_KEEP_NVRAM = libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM
#: A device change that applies to the running domain and to its definition alike.
AFFECT_LIVE_AND_CONFIG = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG
#: Undefine a domain together with its managed save image and snapshot metadata.
UNDEFINE_WITH_METADATA = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
)


_loop_lock = threading.Lock()


def signals_to_main_thread() -> None:
    """Block Ctrl-C and SIGTERM in worker threads: the main thread turns them into an abort,
    and a signal landing in a thread blocked inside libvirt would only disturb that call."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


_loop_started = False


def ensure_event_loop() -> None:
    """libvirt delivers events (job completed, keepalive) only with an event loop running.

    Must run before connections are opened; the loop lives in a daemon thread.
    """
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            signals_to_main_thread()
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, daemon=True, name="libvirt-events").start()
        _loop_started = True


#: A peer that stops answering (link cut, daemon frozen) fails our calls after about
#: interval x (count + 1) seconds instead of hanging them for TCP's many minutes.
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3


def open_connection(uri: str, *, host: str | None = None) -> libvirt.virConnect:
    """Open a read-write connection with keepalive; errors name the host and what to check."""
    ensure_event_loop()  # keepalive messages need libvirt's event loop
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as err:
        words = err.get_error_message()
        diagnosis = diagnose(uri, words)
        if diagnosis is not None and diagnosis.code == "tls.server-not-trusted":
            parsed = parse_uri(uri)  # a URI libvirt accepted parses
            if parsed.host and parsed.daemon_port:
                diagnosis = (
                    explain_untrusted_server(uri, parsed.host, parsed.daemon_port) or diagnosis
                )
        if diagnosis is not None:
            raise HostUnreachable(
                f"cannot connect to libvirt at {uri}: {diagnosis.cause} (libvirt: {words})",
                host=host or uri,
                fix=diagnosis.fix,
            ) from err
        raise HostUnreachable(
            f"cannot connect to libvirt at {uri}: {words}",
            host=host or uri,
            fix="check that libvirtd runs there and listens on this transport "
            "(for the local lab: `vmigrate lab up`)",
        ) from err
    with contextlib.suppress(libvirt.libvirtError):  # drivers without a daemon have none
        conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
    return conn


def wait_for_connection(uri: str, *, timeout: float, host: str | None = None) -> libvirt.virConnect:
    """Retry until the daemon answers (it is starting up) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return open_connection(uri, host=host)
        except HostUnreachable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def lookup_domain(conn: libvirt.virConnect, name: str, *, host: str) -> libvirt.virDomain:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise NotFound(
                f"no VM named {name!r}",
                host=host,
                vm=name,
                fix="list the VMs with `virsh list --all` or `vmigrate lab status`",
            ) from err
        raise translate(err, host=host, vm=name) from err


def find_domain(conn: libvirt.virConnect, name: str) -> libvirt.virDomain | None:
    """The domain, or None if the host has none of that name; other errors leave translated."""
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise translate(err, host=None, vm=name, doing="look the VM up") from err


def find_domain_by_uuid(
    conn: libvirt.virConnect, uuid: str, *, host: str
) -> libvirt.virDomain | None:
    """The domain with this UUID, or None if the host has none; other errors leave translated
    (naming the host): a failed look-up never passes for an absent VM."""
    try:
        return conn.lookupByUUIDString(uuid)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise translate(err, host=host, doing=f"look for the VM with UUID {uuid}") from err


def unless_vanished(call: Callable[[], T]) -> T | None:
    """`call()` on a domain just listed; None if that domain is gone since (VIR_ERR_NO_DOMAIN).

    Any other libvirt error raises: a domain that could not be read is still on the host,
    and dropping it from a listing would let "the host is empty" be claimed while it is not.
    """
    try:
        return call()
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "no state",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}


def domain_state(domain: libvirt.virDomain) -> str:
    state, _reason = domain.state()
    return STATE_NAMES.get(state, f"state {state}")


def probe_tcp(host: str, port: int, *, timeout: float) -> tuple[str, float]:
    """Try a TCP connection: ('open'|'refused'|'filtered'|'unreachable'|'error: ...', seconds).

    'refused' means a host answered with a reset: reachable, nothing listening (or a REJECT
    rule); 'filtered' means no answer at all within `timeout`, typical of a firewall DROP.
    """
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return "open", time.monotonic() - started
    except ConnectionRefusedError:
        return "refused", time.monotonic() - started
    except TimeoutError:
        return "filtered", time.monotonic() - started
    except UnicodeError:  # a name the resolver cannot even encode (an empty label: "a..b")
        return "error: not a valid host name", time.monotonic() - started
    except OSError as err:
        if err.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "unreachable", time.monotonic() - started
        return f"error: {err.strerror or err}", time.monotonic() - started


def open_with_timeout(uri: str, *, host: str, timeout: float) -> libvirt.virConnect:
    """Open a connection, giving up after `timeout` seconds instead of TCP's minutes.

    libvirt's open blocks without a deadline; it runs in a daemon thread that is abandoned
    if the daemon does not answer in time.
    """
    result: queue.Queue[libvirt.virConnect | BaseException] = queue.Queue()

    def attempt() -> None:
        try:
            result.put(open_connection(uri, host=host))
        except BaseException as err:  # handed to the caller's thread
            result.put(err)

    threading.Thread(target=attempt, daemon=True, name=f"open {uri}").start()
    try:
        outcome = result.get(timeout=timeout)
    except queue.Empty:
        raise HostUnreachable(
            f"libvirt at {uri} did not answer within {timeout:.0f} s",
            host=host,
            fix="check that the host is up and that its libvirt port is not filtered",
        ) from None
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
