"""The job store's two databases behind one small interface: SQLite (a file, the default)
and PostgreSQL (psycopg 3, for a team that shares one store).

The store writes its SQL once, in what both understand (`?` placeholders, `ON CONFLICT`,
`RETURNING`, `IS NOT DISTINCT FROM`); this module adapts the rest: placeholders, the id
column, how a transaction locks (SQLite `BEGIN IMMEDIATE` locks the file; PostgreSQL takes a
transaction-level advisory lock on a key, e.g. the VM's name), and what a failure means.
"""

from __future__ import annotations

import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from vmigrate.errors import UsageError, VmigrateError

if TYPE_CHECKING:
    import psycopg

Params = Sequence[Any]
Row = tuple[Any, ...]

#: How long a PostgreSQL server may take to answer before vmigrate says it does not.
CONNECT_TIMEOUT_S = 5
#: Where to keep a PostgreSQL password: never in the URL (it would be stored in jobs, shown,
#: and passed on the command line of the moves an evacuation starts).
WHERE_PASSWORDS_GO = (
    "remove the password from the URL and keep it in ~/.pgpass "
    "(host:port:database:user:password, mode 0600), in the file PGPASSFILE names, or in "
    "PGPASSWORD"
)


class StoreError(VmigrateError):
    """The job store's database refused or failed; nothing was changed."""


class Database(ABC):
    """One connection to the store's database, used by one JobStore (thread-safe: a lock
    serialises statements and transactions)."""

    #: DDL of an auto-numbered primary key column
    serial: str
    #: what the store calls this database in messages (never with a password)
    name: str

    def __init__(self) -> None:
        self._lock = threading.RLock()

    @abstractmethod
    def query(self, sql: str, params: Params = ()) -> list[Row]: ...

    @abstractmethod
    def run(self, sql: str, params: Params = ()) -> int:
        """Execute a statement; the number of rows it changed."""

    @abstractmethod
    def transaction(self, lock_key: str | None = None) -> Any:
        """A context manager: one transaction, that holds `lock_key` (a VM's name) against
        every other transaction asking for the same key until it ends."""

    @abstractmethod
    def tables(self) -> set[str]: ...

    @abstractmethod
    def close(self) -> None: ...


class SqliteDatabase(Database):
    serial = "INTEGER PRIMARY KEY AUTOINCREMENT"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.name = str(path)
        self.db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error:
            self.db.close()
            raise

    def query(self, sql: str, params: Params = ()) -> list[Row]:
        with self._lock:
            return list(self.db.execute(sql, params).fetchall())

    def run(self, sql: str, params: Params = ()) -> int:
        with self._lock:
            return self.db.execute(sql, params).rowcount

    @contextmanager
    def transaction(self, lock_key: str | None = None) -> Iterator[None]:
        # BEGIN IMMEDIATE takes the file's write lock at once: the whole store is the lock.
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def tables(self) -> set[str]:
        return {row[0] for row in self.query("SELECT name FROM sqlite_master WHERE type='table'")}

    def backup(self, target: Path) -> None:
        """A consistent copy of the database into `target` (an existing, private file).

        Read through a second connection: a connection holding its own write transaction
        waits for itself in sqlite3's backup loop. In WAL mode that reader sees the last
        commit, which the caller's open write transaction keeps the latest."""
        with self._lock:
            source = sqlite3.connect(self.name, timeout=10.0)
            copy = sqlite3.connect(target)
            try:
                source.backup(copy)
                copy.execute("PRAGMA journal_mode=DELETE")  # one file, no -wal/-shm beside it
            finally:
                copy.close()
                source.close()

    def close(self) -> None:
        self.db.close()


def check_url(url: str) -> str:
    """The URL as given, when it carries no password; else a clear refusal that does not
    repeat the password."""
    parts = urlsplit(url)
    in_query = any(key == "password" for key, _ in parse_qsl(parts.query))
    if parts.password is not None or in_query:
        raise UsageError(
            f"the store URL {safe_url(url)} carries a password: vmigrate never keeps one in a URL",
            fix=WHERE_PASSWORDS_GO,
        )
    return url


def safe_url(url: str) -> str:
    """The URL without any password (for messages)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    query = "&".join(f"{k}={v}" for k, v in parse_qsl(parts.query) if k != "password")
    return parts._replace(netloc=netloc, query=query).geturl()


def _pg_sql(sql: str) -> str:
    # The store's SQL never holds a literal '%' or '?' outside placeholders.
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresDatabase(Database):
    serial = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"

    def __init__(self, url: str) -> None:
        super().__init__()
        import psycopg

        self.name = safe_url(check_url(url))
        self._psycopg = psycopg
        options: dict[str, Any] = {"autocommit": True, "application_name": "vmigrate"}
        if "connect_timeout" not in urlsplit(url).query:
            options["connect_timeout"] = CONNECT_TIMEOUT_S
        try:
            self.db: psycopg.Connection[Row] = psycopg.connect(url, **options)
        except psycopg.Error as err:
            raise self._error(err, connecting=True) from err

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except self._psycopg.Error as err:
            raise self._error(err) from err

    def query(self, sql: str, params: Params = ()) -> list[Row]:
        with self._lock, self._errors():
            return self.db.execute(_pg_sql(sql), params).fetchall()

    def run(self, sql: str, params: Params = ()) -> int:
        with self._lock, self._errors():
            return self.db.execute(_pg_sql(sql), params).rowcount

    @contextmanager
    def transaction(self, lock_key: str | None = None) -> Iterator[None]:
        with self._lock, self._errors(), self.db.transaction():
            if lock_key is not None:
                self.db.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (lock_key,)
                )
            yield

    def tables(self) -> set[str]:
        rows = self.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
        return {row[0] for row in rows}

    def close(self) -> None:
        self.db.close()

    def _error(self, err: psycopg.Error, *, connecting: bool = False) -> StoreError:
        """What a failure of the server means, and what to do (never with a password)."""
        return describe_pg_error(err, self.name, connecting=connecting)


def describe_pg_error(err: Exception, name: str, *, connecting: bool = False) -> StoreError:
    import psycopg

    text = " ".join(str(err).split())
    parts = urlsplit(name)
    where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
    user = parts.username or "(your login name)"
    database = parts.path.lstrip("/") or user
    if isinstance(err, psycopg.errors.InsufficientPrivilege):
        return StoreError(
            f"the job store {name}: role {user} lacks a privilege: {text}",
            fix=f"let the database's owner grant it (`GRANT CREATE ON SCHEMA public TO {user}` "
            f"to create the store's tables, `GRANT SELECT, INSERT, UPDATE, DELETE ON ALL "
            f"TABLES IN SCHEMA public TO {user}` and `GRANT USAGE ON ALL SEQUENCES IN SCHEMA "
            f"public TO {user}` to use them), or use a role that has them",
        )
    if connecting and ("password authentication failed" in text or "no password" in text):
        return StoreError(
            f"the PostgreSQL server at {where} refused role {user}: wrong or missing password",
            fix=f"put the right password for {user} in ~/.pgpass "
            f"({where}:{database}:{user}:PASSWORD, mode 0600), in the file PGPASSFILE names, "
            "or in PGPASSWORD",
        )
    if connecting and f'database "{database}" does not exist' in text:
        return StoreError(
            f"the PostgreSQL server at {where} has no database {database!r}",
            fix=f"create it (`createdb -h {parts.hostname or 'localhost'} -p "
            f"{parts.port or 5432} -U {user} {database}`, or ask its administrator), or name "
            "an existing one in the URL",
        )
    if connecting and f'role "{user}" does not exist' in text:
        return StoreError(
            f"the PostgreSQL server at {where} has no role {user}",
            fix="name an existing role in the URL (postgresql://ROLE@HOST/DB), or create it",
        )
    if connecting:
        return StoreError(
            f"the PostgreSQL server at {where} did not answer ({text})",
            fix=f"check that PostgreSQL runs there and accepts connections from this machine "
            f"(listen_addresses, pg_hba.conf, firewall); vmigrate waits {CONNECT_TIMEOUT_S} s",
        )
    return StoreError(
        f"the job store {name} failed: {text}",
        fix="see the PostgreSQL server's log; the command changed nothing it had not recorded",
    )
