"""The WAL checkpointer keeps the log small under a steady stream of commits (sdk/_store.py).

SQLite rewinds a WAL only when a writer begins while every frame is already copied into the
database; a PASSIVE checkpoint racing with commits never leaves it so, and the log grew without
bound on a busy gateway (every page read then searches a longer WAL index). Real SQLite files,
a real writer thread and the real checkpointer thread.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from nbo.sdk.core import WalCheckpointer

_FRAME = 4096 + 24


class _Rounds(WalCheckpointer):
    """The checkpointer, counting its rounds: the workload runs for a number of rounds, not for
    a number of seconds."""

    def __init__(self, path: Path, *, rounds: int, **kwargs: Any) -> None:
        self.rounds, self._wanted, self.enough = 0, rounds, threading.Event()
        super().__init__(path, **kwargs)

    def checkpoint(self, conn: sqlite3.Connection) -> int:
        result = super().checkpoint(conn)
        self.rounds += 1
        if self.rounds >= self._wanted:
            self.enough.set()
        return result


def _writer(path: Path, stop: threading.Event, counts: list[int], progress: threading.Condition) -> None:
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
    try:
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")  # as the stores do: only the checkpointer copies
        while not stop.is_set():
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t(k, v) VALUES (?, ?)", (os.urandom(8).hex(), os.urandom(300)))
            conn.execute("COMMIT")
            with progress:
                counts[0] += 1
                progress.notify_all()
            time.sleep(0.0002)  # pacing, not a race: a busy gateway's decision writer also waits for requests
    finally:
        conn.close()


def _run(tmp_path: Path, restart_frames: int, *, rounds: int = 40, commits: int = 2000) -> tuple[int, int]:
    """Commit while a checkpointer runs, until it has run ``rounds`` rounds and the writer has made
    ``commits`` commits; (commits made, bytes of WAL at the end)."""
    path = tmp_path / f"wal-{restart_frames}.sqlite"
    with sqlite3.connect(str(path), isolation_level=None) as setup:
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE t(k TEXT, v BLOB)")
        setup.execute("CREATE INDEX t_k ON t(k)")  # a random-key index: several pages per commit
    checkpointer = _Rounds(path, rounds=rounds, interval=0.02, restart_frames=restart_frames)
    stop, counts, progress = threading.Event(), [0], threading.Condition()
    writer = threading.Thread(target=_writer, args=(path, stop, counts, progress))
    writer.start()
    try:
        assert checkpointer.enough.wait(60), "the checkpointer did not run"
        with progress:
            assert progress.wait_for(lambda: counts[0] >= commits, timeout=60), counts
    finally:
        stop.set()
        writer.join(30)
        checkpointer.stop()
    return counts[0], os.path.getsize(f"{path}-wal")


def test_the_log_starts_over_while_commits_keep_coming(tmp_path: Path) -> None:
    commits, wal_bytes = _run(tmp_path, restart_frames=64)
    assert commits >= 2000  # a steady stream, each commit at least a frame
    # Bounded by what a few checkpoint intervals write, not by everything ever committed.
    assert wal_bytes < commits * _FRAME / 4, (commits, wal_bytes)


def test_without_restarts_the_log_keeps_every_commit(tmp_path: Path) -> None:
    """The failure the restarts fix, shown on the same workload (PASSIVE checkpoints only)."""
    commits, wal_bytes = _run(tmp_path, restart_frames=1 << 40)
    assert wal_bytes >= commits * _FRAME * 0.9, (commits, wal_bytes)


def _logged(path: Path, rows: int) -> sqlite3.Connection:
    """A WAL database with ``rows`` single-row commits still in its log; its writer connection."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t(v BLOB)")
    for _ in range(rows):
        conn.execute("INSERT INTO t VALUES (?)", (os.urandom(200),))
    return conn


def test_a_round_reports_the_log_and_a_restarted_log_is_reused(tmp_path: Path) -> None:
    path = tmp_path / "round.sqlite"
    conn = _logged(path, 50)
    checkpointer = WalCheckpointer(path, interval=3600, restart_frames=10)  # rounds run by hand
    try:
        other = sqlite3.connect(str(path), isolation_level=None)
        assert checkpointer.checkpoint(other) >= 50
        size = os.path.getsize(f"{path}-wal")
        conn.execute("INSERT INTO t VALUES (?)", (os.urandom(200),))  # the writer starts the log over
        assert os.path.getsize(f"{path}-wal") == size  # the file is reused, not grown
        assert conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1] == 1
        other.close()
    finally:
        checkpointer.stop()
        conn.close()


@pytest.mark.parametrize("frames", [0, 1])
def test_a_quiet_log_is_only_checkpointed(tmp_path: Path, frames: int) -> None:
    path = tmp_path / "quiet.sqlite"
    conn = _logged(path, frames)
    checkpointer = WalCheckpointer(path, interval=3600, restart_frames=10)
    try:
        assert 0 <= checkpointer.checkpoint(conn) < 10
    finally:
        checkpointer.stop()
        conn.close()


def test_a_reader_holding_the_log_delays_the_restart_not_the_writers(tmp_path: Path) -> None:
    path = tmp_path / "reader.sqlite"
    conn = _logged(path, 30)
    reader = sqlite3.connect(str(path), isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT COUNT(*) FROM t").fetchone() == (30,)  # a snapshot in the log
    conn.execute("INSERT INTO t VALUES (?)", (os.urandom(200),))  # past the reader's snapshot
    checkpointer = WalCheckpointer(path, interval=3600, restart_frames=10)
    own = sqlite3.connect(str(path), isolation_level=None)
    try:
        assert checkpointer.checkpoint(own) == -1  # gave up: the reader still needs the log
        # Writers were not left blocked: with no busy wait at all, a lock still held would fail
        # this insert at once ("database is locked") instead of merely slowing it down.
        conn.execute("PRAGMA busy_timeout=0")
        conn.execute("INSERT INTO t VALUES (?)", (os.urandom(200),))
        reader.execute("COMMIT")
        assert checkpointer.checkpoint(own) >= 0  # the next round restarts the log
    finally:
        checkpointer.stop()
        for c in (own, reader, conn):
            c.close()


def test_every_writing_connection_cuts_a_grown_log_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A log that a reader kept from restarting shrinks again once it can restart (the device
    store here; the hub's two writing connections set the same limit, checked below)."""
    from nbo.gateway._db import SQLiteDatabase
    from nbo.gateway._hub_state import _RelaxedSQLite
    from nbo.sdk import _store

    monkeypatch.setattr(_store, "WAL_SIZE_LIMIT", 256 * 1024)
    store = _store.SQLiteStateStore(tmp_path / "state.sqlite", device_id="pos-1")
    reader = sqlite3.connect(str(store.path), isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM outbox").fetchone()  # holds the log: no restart
        with store.transaction() as tx:
            tx.execute("INSERT INTO profiles(customer_id, profile, updated_at) VALUES ('C0', '{}', 0)")
        for n in range(400):
            with store.transaction() as tx:
                tx.execute("UPDATE profiles SET profile = ? WHERE customer_id = 'C0'", (f'{{"n": "{"x" * 2000}{n}"}}',))
        wal = Path(f"{store.path}-wal")
        assert wal.stat().st_size > 4 * 256 * 1024
        reader.execute("COMMIT")
        own = sqlite3.connect(str(store.path), isolation_level=None)
        WalCheckpointer(store.path, interval=3600, restart_frames=10).checkpoint(own)
        own.close()
        with store.transaction() as tx:  # the writer starts the log over, and cuts the file back
            tx.execute("UPDATE profiles SET profile = '{}' WHERE customer_id = 'C0'")
        assert wal.stat().st_size <= 256 * 1024
    finally:
        reader.close()
        store.close()
    durable = SQLiteDatabase(tmp_path / "hub.sqlite")
    relaxed = _RelaxedSQLite(str(tmp_path / "hub.sqlite"))
    try:
        for conn in (durable._conn, relaxed._conn):
            assert conn.execute("PRAGMA journal_size_limit").fetchone() == (256 * 1024,)
    finally:
        relaxed.close()
        durable.close()
