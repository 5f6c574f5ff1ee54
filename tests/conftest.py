"""Fixtures every test directory shares: a real PostgreSQL server for the job store's tests.

Tests drive the library as the CLI does: with the lab plugged in (hostA.. by name, the
cluster `lab`, heartbeat gaps in move reports). tests/unit/test_lab_boundary.py checks that
the product itself imports no lab and names no lab host without it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg import PostgresServer, postgres_bin
from vmigrate.lab.plugin import install as install_lab
from vmigrate.store import StoreLocation

install_lab()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL cluster for the session, stopped (and waited for) at its end.
    Without PostgreSQL installed the tests that need it fail, never skip."""
    try:
        postgres_bin()
        server = PostgresServer()
    except RuntimeError as err:
        pytest.fail(str(err))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty database's URL (no password in it: PGPASSWORD has it)."""
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    monkeypatch.delenv("PGPASSFILE", raising=False)
    return postgres.url(postgres.new_database())


@pytest.fixture(params=["sqlite", "postgresql"])
def store_at(request: pytest.FixtureRequest, tmp_path: Path) -> StoreLocation:
    """Where a test's store lives: a fresh SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "jobs.sqlite"
    url: str = request.getfixturevalue("pg_url")
    return url
