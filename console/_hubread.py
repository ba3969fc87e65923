"""A read-only connection to the hub database (SQLite or PostgreSQL).

The console never writes to the hub: SQLite is opened with ``mode=ro`` (a URI), so even a
bug cannot change it, and PostgreSQL sessions run with ``default_transaction_read_only``
on, so the server refuses any write. Both work beside running gateways: SQLite readers in
WAL mode do not block the gateway's writer, and PostgreSQL readers never lock rows.

The console's SQL uses ``?`` placeholders and no literal ``?`` or ``%``; for psycopg they
become ``%s``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from nbo.sdk import ConfigError, StateError

__all__ = ["HubReader", "open_hub_reader"]


class HubReader:
    """Runs read-only queries on the hub; thread-safe (one connection behind a lock)."""

    dialect: str

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _SQLiteReader(HubReader):
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise ConfigError(f"--hub: no hub database at {path}")
        self.path = path
        self._lock = threading.Lock()
        uri = f"file:{quote(str(path.resolve()))}?mode=ro"
        try:
            self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30.0)
            self._conn.execute("PRAGMA query_only=ON")  # belt and braces: mode=ro already refuses writes
            self._conn.execute("SELECT 1 FROM hub_events LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise StateError(f"cannot read hub database {path}: {exc} (is it an nbo hub? "
                             "a hub opened by a gateway at least once has its tables)") from exc

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise StateError(f"hub database {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _PostgresReader(HubReader):
    dialect = "postgresql"

    def __init__(self, url: str, *, schema: str | None = None) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise ConfigError("a postgresql:// hub needs psycopg (install nbo-edge[gateway])") from exc
        self._psycopg = psycopg
        self._lock = threading.Lock()
        options = "-c default_transaction_read_only=on"
        if schema is not None:
            if not schema.replace("_", "").isalnum():
                raise ConfigError(f"invalid schema name {schema!r}")
            options += f" -c search_path={schema}"
        try:
            self._conn = psycopg.connect(url, autocommit=True, connect_timeout=10, options=options)
        except psycopg.Error as exc:
            raise StateError(f"cannot connect to the PostgreSQL hub: {_first_line(exc)}") from exc

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                cur = self._conn.execute(sql.replace("?", "%s"), tuple(params), prepare=False)
                return list(cur.fetchall()) if cur.description is not None else []
            except self._psycopg.Error as exc:
                raise StateError(f"PostgreSQL hub: {_first_line(exc)}") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_hub_reader(url: str, *, schema: str | None = None) -> HubReader:
    """A read-only reader of the hub at ``url`` (``sqlite:///abs``, ``sqlite:rel``, ``postgresql://…``).

    ``schema`` (PostgreSQL only) reads the tables of that schema (tests keep runs apart with it).
    """
    if url.startswith("sqlite:"):
        rest = url[len("sqlite:"):]
        if rest.startswith("//"):
            rest = rest[2:]
        if not rest:
            raise ConfigError(f"--hub: sqlite URL {url!r} has no path")
        return _SQLiteReader(Path(rest))
    if url.startswith(("postgresql://", "postgres://")):
        return _PostgresReader(url, schema=schema)
    raise ConfigError(f"--hub must start with sqlite: or postgresql://, got {url.split(':', 1)[0]!r}")
