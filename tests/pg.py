"""A throwaway PostgreSQL server for the tests: Debian's postgresql package, a cluster of its
own in a temporary directory, listening on 127.0.0.1 only (a free port) and on a unix socket
in its data directory; roles that log in with a password over TCP (scram-sha-256).

As root the server runs as the `postgres` user the package creates (PostgreSQL refuses to
run as root); as anyone else, as that user. The server is a direct child of the test
process (no pg_ctl daemon): stopping it is a signal and a wait, so nothing is left behind.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

PG_ROOT = Path("/usr/lib/postgresql")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
#: The role the store's tests use, with a password, owner of every test database.
USER = "vmigrate_test"
#: A role that may log in and nothing more.
POWERLESS = "vmigrate_nobody"


def postgres_bin() -> Path:
    """The newest installed PostgreSQL's bin directory, or a clear failure."""
    versions = sorted(
        (p for p in PG_ROOT.glob("*/bin") if (p / "postgres").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not versions:
        raise RuntimeError(
            f"PostgreSQL is not installed (no {PG_ROOT}/VERSION/bin/postgres): the store's "
            "tests run against a real server; run scripts/setup.sh (it installs Debian's "
            "postgresql package)"
        )
    return versions[-1]


PR_SET_PDEATHSIG = 1


def _stop_with_parent() -> None:
    """In the server's process before exec (after it became the postgres user, which clears
    the setting): a fast shutdown when the test process dies, even by SIGKILL."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGINT)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.base = Path(tempfile.mkdtemp(prefix="vmigrate-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "postgres.log"
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.powerless_password = secrets.token_hex(16)
        self._run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(
                    "PostgreSQL refuses to run as root and there is no `postgres` user (Debian's "
                    "postgresql-common makes it): run scripts/setup.sh"
                ) from None
            self._run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
            os.chown(self.base, account.pw_uid, account.pw_gid)
        self.base.chmod(0o700)
        self.process: subprocess.Popen[bytes] | None = None
        self._databases = 0

    def _env(self) -> dict[str, str]:
        return {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": str(self.base)}

    def start(self) -> None:
        subprocess.run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            env=self._env(),
            cwd=self.base,
            **self._run_as,
        )
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    str(self.bin / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={self.data}",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=self.base,
                start_new_session=True,  # a Ctrl-C in the terminal is for pytest, not it
                preexec_fn=_stop_with_parent,
                **self._run_as,
            )
        self._wait_ready()
        with self.admin() as db:
            db.execute(f"CREATE ROLE {USER} LOGIN PASSWORD '{self.password}'")
            db.execute(f"CREATE ROLE {POWERLESS} LOGIN PASSWORD '{self.powerless_password}'")

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with {self.process.returncode}: {self.log.read_text()}"
                )
            try:
                psycopg.connect(**self._admin_args()).close()
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"postgres did not accept connections within {START_TIMEOUT_S:.0f} s: "
                        f"{self.log.read_text()}"
                    ) from None
                time.sleep(0.1)
            else:
                return

    def _admin_args(self) -> dict[str, Any]:
        return {
            "host": str(self.data),
            "port": self.port,
            "user": "postgres",
            "dbname": "postgres",
            "autocommit": True,
        }

    def admin(self, dbname: str = "postgres") -> psycopg.Connection[tuple[Any, ...]]:
        """The superuser, over the unix socket (trusted)."""
        return psycopg.connect(**{**self._admin_args(), "dbname": dbname})

    def new_database(self) -> str:
        """A fresh database owned by USER: its name."""
        self._databases += 1
        name = f"store_{self._databases}"
        with self.admin() as db:
            db.execute(f"CREATE DATABASE {name} OWNER {USER}")
        return name

    def url(self, database: str, user: str = USER) -> str:
        """A URL without a password (the tests give it in PGPASSWORD or a pgpass file)."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        shutil.rmtree(self.base, ignore_errors=True)
