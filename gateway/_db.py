"""A tiny connection layer for the hub store: one SQL dialect, two databases.

SQL is written once with ``?`` placeholders and portable constructs (``INSERT … ON CONFLICT``,
``UPDATE … RETURNING``, ``DOUBLE PRECISION``, JSON as TEXT). On PostgreSQL the placeholders
are translated to ``%s`` (and literal ``%`` doubled) once per statement text and cached.

- ``sqlite:///abs/path`` (or ``sqlite:rel/path``): one connection in WAL mode, shared by all
  threads behind a lock — SQLite serialises writers anyway.
- ``postgresql://…``: a small pool of psycopg 3 connections, one per concurrent transaction.

Every driver error becomes :class:`~nbo.sdk.StateError`.
"""

from __future__ import annotations

import queue
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from nbo.sdk import ConfigError, StateError
from nbo.sdk.core import limit_wal

__all__ = ["Database", "DbTx", "open_database", "sqlite_path", "translate_placeholders"]

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class DbTx(Protocol):
    """An open transaction."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement; return its rows (empty for statements without a result)."""
        ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for many parameter rows."""
        ...


class Database(Protocol):
    """A hub database: transactions and a dialect name."""

    dialect: str
    """``sqlite`` or ``postgresql``."""

    def transaction(self) -> AbstractContextManager[DbTx]:
        """Context manager yielding a :class:`DbTx`; commits on success, rolls back on error."""
        ...

    def close(self) -> None: ...


def sqlite_path(url: str) -> Path:
    """The file path of a ``sqlite:`` URL (``sqlite:///abs``, ``sqlite:rel``)."""
    rest = url[len("sqlite:"):]
    if rest.startswith("//"):
        rest = rest[2:]
    if not rest:
        raise ConfigError(f"sqlite URL {url!r} has no path")
    return Path(rest)


def open_database(url: str, *, schema: str | None = None, pool_size: int = 8) -> Database:
    """Open the database named by ``url``.

    ``schema`` (PostgreSQL only) puts every table in that schema, created if missing — tests
    use it to keep parallel runs apart. It is ignored for SQLite.
    """
    if url.startswith("sqlite:"):
        return SQLiteDatabase(sqlite_path(url))
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url, schema=schema, pool_size=pool_size)
    raise ConfigError(f"hub database URL must start with sqlite: or postgresql://, got {url!r}")


class _SQLiteTx:
    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)


class SQLiteDatabase:
    """The default hub database: one SQLite file (WAL, ``synchronous=FULL``)."""

    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            # An acknowledged batch must survive a power cut: the device deletes nothing, but it
            # stops re-sending what the hub acknowledged.
            self._conn.execute("PRAGMA synchronous=FULL")
            limit_wal(self._conn)
        except (sqlite3.Error, OSError) as exc:
            # A plain DatabaseError is a damaged or foreign file (a locked or full one is a subclass).
            hint = (" — the file is damaged or not an nbo hub database: stop the gateway, move it aside and "
                    "restore the hub from its backup (docs/operations.md, Backups), or point --hub-db at the "
                    "right file") if type(exc) is sqlite3.DatabaseError else ""
            raise StateError(f"cannot open hub database {path}: {exc}{hint}") from exc

    @contextmanager
    def transaction(self) -> Iterator[_SQLiteTx]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StateError(f"hub database {self.path}: {exc}") from exc
            try:
                yield _SQLiteTx(self._conn)
            except sqlite3.Error as exc:
                self._rollback()
                raise StateError(f"hub database {self.path}: {exc}") from exc
            except BaseException:
                self._rollback()
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise StateError(f"hub database {self.path}: {exc}") from exc

    def _rollback(self) -> None:
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # nothing open: the failing statement already ended the transaction

    def close(self) -> None:
        with self._lock:
            self._conn.close()


_TRANSLATED: dict[str, str] = {}


def translate_placeholders(sql: str) -> str:
    """``?`` → ``%s`` outside quoted strings, and ``%`` → ``%%`` (psycopg's format style)."""
    cached = _TRANSLATED.get(sql)
    if cached is not None:
        return cached
    out: list[str] = []
    quote: str | None = None
    for ch in sql:
        if quote is not None:
            out.append("%%" if ch == "%" else ch)
            if ch == quote:
                quote = None
        elif ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        elif ch == "%":
            out.append("%%")
        else:
            out.append(ch)
    result = "".join(out)
    if len(_TRANSLATED) < 4096:
        _TRANSLATED[sql] = result
    return result


class _PgTx:
    __slots__ = ("_conn",)

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = self._conn.execute(translate_placeholders(sql), tuple(params), prepare=False)
        if cur.description is None:
            return []
        return list(cur.fetchall())

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        with self._conn.cursor() as cur:
            cur.executemany(translate_placeholders(sql), [tuple(r) for r in rows])


class PostgresDatabase:
    """A shared PostgreSQL hub: several gateway replicas may use one database."""

    dialect = "postgresql"

    def __init__(self, url: str, *, schema: str | None = None, pool_size: int = 8) -> None:
        try:
            import psycopg
        except ImportError as exc:  # the [gateway] extra is missing
            raise ConfigError("a postgresql:// hub needs psycopg (install nbo-edge[gateway])") from exc
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise ConfigError(f"invalid schema name {schema!r}")
        self._psycopg = psycopg
        self._url = url
        self._schema = schema
        self._pool: queue.LifoQueue[Any] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._all: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False
        if schema is not None:
            with self.transaction() as tx:
                tx.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')

    def _connect(self) -> Any:
        try:
            conn = self._psycopg.connect(self._url, autocommit=False, connect_timeout=10)
            if self._schema is not None:
                conn.execute(f'SET search_path TO "{self._schema}"')
                conn.commit()
        except self._psycopg.Error as exc:
            raise StateError(f"cannot connect to the PostgreSQL hub: {_pg_message(exc)}") from exc
        with self._lock:
            self._all.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[_PgTx]:
        if self._closed:
            raise StateError("hub database is closed")
        self._slots.acquire()
        conn = None
        try:
            try:
                conn = self._pool.get_nowait()
            except queue.Empty:
                conn = self._connect()
            if conn.closed:
                self._forget(conn)
                conn = self._connect()
            try:
                yield _PgTx(conn)
                conn.commit()
            except self._psycopg.Error as exc:
                self._rollback(conn)
                raise StateError(f"PostgreSQL hub: {_pg_message(exc)}") from exc
            except BaseException:
                self._rollback(conn)
                raise
            self._pool.put(conn)
            conn = None
        finally:
            if conn is not None and not conn.closed:
                self._pool.put(conn)
            self._slots.release()

    def _rollback(self, conn: Any) -> None:
        try:
            conn.rollback()
        except self._psycopg.Error:
            conn.close()

    def _forget(self, conn: Any) -> None:
        with self._lock:
            if conn in self._all:
                self._all.remove(conn)

    def drop_schema(self) -> None:
        """Drop this database's private schema and everything in it (tests clean up with it)."""
        if self._schema is None:
            return
        with self.transaction() as tx:
            tx.execute(f'DROP SCHEMA IF EXISTS "{self._schema}" CASCADE')

    def close(self) -> None:
        self._closed = True
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except self._psycopg.Error:
                pass


def _pg_message(exc: Exception) -> str:
    # First line only: psycopg messages may carry a multi-line DETAIL with row values.
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
