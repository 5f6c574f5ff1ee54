"""What a rolling upgrade does to one emptied host: the operator's command (an argument list,
never a shell), then the wait until the host answers again and its health check (versions
read again, the pools that were active are active, optionally a test domain started and
destroyed)."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vmigrate.errors import HostUnreachable, UsageError, VmigrateError
from vmigrate.facts import HostFacts
from vmigrate.hosts import HostRef
from vmigrate.preflight import HostSession, open_session
from vmigrate.versions import format_version
from vmigrate.virt.connection import find_domain
from vmigrate.virt.domains import is_active, power_off, start_transient
from vmigrate.virt.host_domains import HostDomain, domains_on

HOST_PLACEHOLDER = "{host}"
#: How much of the command's output a step keeps (its end: where errors are).
OUTPUT_KEPT = 2000
#: Seconds the test domain must keep running to count as started.
TEST_DOMAIN_HOLD_S = 2.0
POLL_S = 2.0


class RollStepFailed(VmigrateError):
    """A step of the roll failed: the roll stops there, every VM still running."""


def command_argv(template: str, host: str) -> list[str]:
    """The operator's command for `host`: split like a shell would (shlex), `{host}`
    replaced inside each argument; never run through a shell."""
    try:
        words = shlex.split(template)
    except ValueError as err:
        raise UsageError(
            f"--run {template!r} cannot be split into arguments: {err}",
            fix="close the quotes, e.g. --run 'apt-get -y upgrade'",
        ) from err
    if not words:
        raise UsageError("--run is empty", fix="give the command, e.g. --run 'upgrade {host}'")
    return [word.replace(HOST_PLACEHOLDER, host) for word in words]


def check_command(template: str, host: str) -> list[str]:
    """The command for `host`, refused before anything moves when it does not exist."""
    argv = command_argv(template, host)
    if shutil.which(argv[0]) is None:
        raise UsageError(
            f"--run: command {argv[0]!r} not found (not an executable file, nor on PATH)",
            fix="give its absolute path, or install it; nothing was changed",
        )
    return argv


@dataclass(frozen=True)
class CommandResult:
    argv: list[str]
    returncode: int | None  # None: killed at the timeout
    seconds: float
    output: str  # its last OUTPUT_KEPT characters (stdout and stderr together)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_command(
    argv: list[str], host: str, timeout_s: float, on_start: Callable[[int], None]
) -> CommandResult:
    """Run the command (its own process group, so a timeout stops all of it); a command
    that cannot start, exits non-zero or outlives `timeout_s` is a failed step."""
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    except OSError as err:
        raise RollStepFailed(
            f"the command {shlex.join(argv)} could not start: {err}",
            host=host,
            fix="fix the command, then `vmigrate jobs resume JOB`",
        ) from err
    on_start(process.pid)
    try:
        output, _ = process.communicate(timeout=timeout_s)
        code: int | None = process.returncode
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        code = None
    result = CommandResult(
        argv, code, round(time.monotonic() - started, 1), (output or "")[-OUTPUT_KEPT:]
    )
    if code != 0:
        ended = f"was stopped after {timeout_s:g} s" if code is None else f"exited {code}"
        last = result.output.strip().splitlines()[-3:]
        raise RollStepFailed(
            f"the command {shlex.join(argv)} {ended}" + (f": {' / '.join(last)}" if last else ""),
            host=host,
            fix="find out why on the host and fix it, then `vmigrate jobs resume JOB` runs "
            "the command again and goes on",
        )
    return result


def wait_for_host(ref: HostRef, wait_s: float) -> HostSession:
    """The host's session once libvirt answers again (it may be rebooting)."""
    deadline = time.monotonic() + wait_s
    while True:
        session = open_session(ref)
        if session.facts is not None:
            return session
        if time.monotonic() >= deadline:
            raise HostUnreachable(
                f"libvirt did not answer within {wait_s:g} s after the command: {session.error}",
                host=ref.name,
                fix="bring the host back (libvirtd running, port open), then "
                "`vmigrate jobs resume JOB`",
            )
        time.sleep(POLL_S)


@dataclass(frozen=True)
class Health:
    libvirt_version: str
    qemu_version: str
    qemu_encoded: int
    pools_active: list[str]
    test_domain: str | None  # its name, when one was started and destroyed
    seconds: float
    #: Domains found on the host once it answered (before any test domain): the roll keeps
    #: it empty until its VMs return, so any is a second actor's.
    domains: tuple[HostDomain, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def active_pools(facts: HostFacts) -> list[str]:
    return sorted(pool.name for pool in facts.pools if pool.active)


def health_check(
    ref: HostRef, pools_before: list[str], test_domain: Path | None, wait_s: float
) -> Health:
    """Wait until the host answers, then: versions read again, every pool that was active
    before is active, the domains on it listed, and (when there are none) the test domain,
    if any, runs for a moment and is destroyed."""
    started = time.monotonic()
    session = wait_for_host(ref, wait_s)
    try:
        assert session.facts is not None and session.conn is not None
        facts = session.facts
        pools = active_pools(facts)
        missing = sorted(set(pools_before) - set(pools))
        if missing:
            raise RollStepFailed(
                f"pool(s) {', '.join(missing)} were active before the command and are not now",
                host=ref.name,
                fix=f"start them (`virsh -c URI pool-start {missing[0]}`), then "
                "`vmigrate jobs resume JOB`",
            )
        domains = domains_on(session.conn, host=ref.name)
        name = None
        if test_domain is not None and not domains:
            name = _try_test_domain(session, test_domain)
    finally:
        session.close()
    return Health(
        format_version(facts.libvirt_version),
        format_version(facts.hypervisor_version),
        facts.hypervisor_version,
        pools,
        name,
        round(time.monotonic() - started, 1),
        domains,
    )


def _try_test_domain(session: HostSession, path: Path) -> str:
    """Start the domain of `path` transient, see it run, destroy it."""
    ref, conn = session.ref, session.conn
    assert conn is not None
    xml = path.read_text()
    name = ET.fromstring(xml).findtext("name") or ""
    if not name:
        raise UsageError(f"--test-domain {path}: the domain XML has no <name>")
    if find_domain(conn, name) is not None:
        raise RollStepFailed(
            f"a domain named {name!r} already exists there: the test domain needs a free name",
            host=ref.name,
            fix="rename the test domain in its XML, then `vmigrate jobs resume JOB`",
        )
    start_transient(conn, xml, host=ref.name)
    try:
        time.sleep(TEST_DOMAIN_HOLD_S)
        domain = find_domain(conn, name)
        if domain is None or not is_active(domain, host=ref.name):
            raise RollStepFailed(
                f"the test domain {name!r} stopped within {TEST_DOMAIN_HOLD_S:g} s of its start",
                host=ref.name,
                fix="see the host's QEMU log for it, fix the host, then `vmigrate jobs resume JOB`",
            )
    finally:
        domain = find_domain(conn, name)
        if domain is not None:
            with contextlib.suppress(Exception):
                power_off(domain)
    return name
