"""The libvirt calls of a live migration: flags and parameters, start, steer, finish."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import libvirt

from vmigrate.model import LiveOptions
from vmigrate.virt.connection import signals_to_main_thread
from vmigrate.virt.errors import libvirt_errors


def migration_flags(options: LiveOptions) -> int:
    flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_ABORT_ON_ERROR
    if options.peer_to_peer:
        flags |= libvirt.VIR_MIGRATE_PEER2PEER
    if options.persist_destination:
        flags |= libvirt.VIR_MIGRATE_PERSIST_DEST
    if options.postcopy:
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    if options.autoconverge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if options.compressed:
        flags |= libvirt.VIR_MIGRATE_COMPRESSED
    if options.tls:
        flags |= libvirt.VIR_MIGRATE_TLS
    if options.parallel_connections:
        flags |= libvirt.VIR_MIGRATE_PARALLEL
    if options.copy_disks:
        # Only the top image: the destination already holds the backing chain (we made it).
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
    return int(flags)


#: libvirt that can have the mirror detect zeroes (source side: the NBD client in QEMU).
DETECT_ZEROES_LIBVIRT = 10_009_000


def migration_params(options: LiveOptions, *, source_libvirt: int = 0) -> dict[str, Any]:
    """The typed parameters; `source_libvirt` is the source daemon's version (getLibVersion):
    an older one refuses a parameter it does not know, so none is sent to it."""
    params: dict[str, Any] = {}
    if options.bandwidth_mib:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = options.bandwidth_mib
    if options.parallel_connections:
        params[libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS] = options.parallel_connections
    if options.migration_uri:
        params[libvirt.VIR_MIGRATE_PARAM_URI] = options.migration_uri
    if options.autoconverge and options.autoconverge_initial is not None:
        params[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL] = options.autoconverge_initial
    if options.autoconverge and options.autoconverge_increment is not None:
        params[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT] = options.autoconverge_increment
    if options.copy_disks:
        # Named explicitly, so that libvirt never copies a disk we found shared.
        params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(options.copy_disks)
    if options.copy_disks and source_libvirt >= DETECT_ZEROES_LIBVIRT:
        # Zeroes the mirror reads (allocated, but all zero) become write-zeroes requests on
        # the NBD connection instead of data; holes never travel (block status says zero).
        # (VIR_MIGRATE_PARAM_MIGRATE_DISKS_DETECT_ZEROES, by value: older bindings lack it)
        params["migrate_disks_detect_zeroes"] = list(options.copy_disks)
    return params


class MigrationCall:
    """Runs the blocking migrate call in a worker thread; the caller monitors meanwhile."""

    def __init__(
        self,
        domain: libvirt.virDomain,
        options: LiveOptions,
        *,
        destination_uri: str,
        destination: libvirt.virConnect | None,
    ) -> None:
        self.domain = domain
        self.error: str | None = None
        self.error_code: int | None = None
        #: Set when the call returns or a pass ends: the monitor waits on it.
        self.wake = threading.Event()
        self._thread = threading.Thread(
            target=self._run,
            daemon=True,
            name="migrate",
            args=(options, destination_uri, destination),
        )

    def _run(
        self, options: LiveOptions, destination_uri: str, destination: libvirt.virConnect | None
    ) -> None:
        signals_to_main_thread()
        flags = migration_flags(options)
        try:
            params = migration_params(
                options, source_libvirt=int(self.domain.connect().getLibVersion())
            )
            if options.peer_to_peer:
                self.domain.migrateToURI3(destination_uri, params, flags)
            else:
                assert destination is not None
                self.domain.migrate3(destination, params, flags)
        except libvirt.libvirtError as err:
            self.error, self.error_code = err.get_error_message(), err.get_error_code()
        except BaseException as err:  # never report success for a call that did not return
            self.error = f"the migrate call failed: {err!r}"
        finally:
            self.wake.set()

    def start(self) -> None:
        self._thread.start()

    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()


def job_stats(domain: libvirt.virDomain) -> dict[str, Any]:
    try:
        return dict(domain.jobStats(0))
    except libvirt.libvirtError:
        return {}


# Steering a running job: each raises a translated vmigrate error (a job that ended a moment
# ago, a host that stopped answering), which the monitor notes instead of failing.


def set_max_downtime(domain: libvirt.virDomain, ms: float) -> None:
    with libvirt_errors(host=None, doing=f"set the maximum downtime to {ms:g} ms"):
        domain.migrateSetMaxDowntime(int(ms), 0)


def set_bandwidth(domain: libvirt.virDomain, mib_per_s: float) -> None:
    with libvirt_errors(host=None, doing=f"set the bandwidth to {mib_per_s:g} MiB/s"):
        domain.migrateSetMaxSpeed(int(mib_per_s), 0)


def start_postcopy(domain: libvirt.virDomain, push_mib: float | None = None) -> None:
    """Switch to post-copy; `push_mib` holds QEMU's background push to that rate (QEMU takes
    its post-copy bandwidth when it switches), leaving the rest of the link to faults."""
    if push_mib is not None:
        with libvirt_errors(host=None, doing=f"hold post-copy to {push_mib:g} MiB/s"):
            domain.migrateSetMaxSpeed(int(push_mib), libvirt.VIR_DOMAIN_MIGRATE_MAX_SPEED_POSTCOPY)
    with libvirt_errors(host=None, doing="switch to post-copy"):
        domain.migrateStartPostCopy(0)


def abort_job(domain: libvirt.virDomain) -> None:
    with libvirt_errors(host=None, doing="abort the migration"):
        domain.abortJob()


def watch_iterations(
    conn: libvirt.virConnect,
    domain: libvirt.virDomain,
    wake: threading.Event,
    on_pass: Callable[[int], None] | None = None,
) -> int:
    """Wake the monitor the moment a pre-copy pass ends, instead of at its next poll.

    `on_pass(iteration)` runs first, in libvirt's event thread, as the new pass begins: a
    decision taken there acts at the pass's very start, as virsh's
    --postcopy-after-precopy does (it calls migrateStartPostCopy from this event)."""

    def on_iteration(
        _conn: libvirt.virConnect, _dom: libvirt.virDomain, iteration: int, _opaque: object
    ) -> None:
        try:
            if on_pass is not None:
                on_pass(int(iteration))
        finally:
            wake.set()

    with libvirt_errors(host=None, doing="watch the migration's passes"):
        return int(
            conn.domainEventRegisterAny(
                domain, libvirt.VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION, on_iteration, None
            )
        )


def watch_job_completed(
    conn: libvirt.virConnect, domain: libvirt.virDomain, into: dict[str, Any]
) -> int:
    """Collect the completed job's statistics (downtime, totals) from libvirt's event."""

    def on_completed(
        _conn: libvirt.virConnect, _dom: libvirt.virDomain, params: dict[str, Any], _opaque: object
    ) -> None:
        into.update(params)

    with libvirt_errors(host=None, doing="watch for the job's completion"):
        return int(
            conn.domainEventRegisterAny(
                domain, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, on_completed, None
            )
        )
