"""The notification outbox: two tables in the session's journal file (SQLite, WAL).

``outbox``: one row per (message, target), unique by ``key`` (``<target>:<what>``, e.g.
``ops:fill:<trade id>``), so a message derived twice from the journal (a restart re-reading
it) is stored once; ``sent_at`` is set when the target accepted it; ``attempts`` /
``next_try`` / ``last_error`` drive the retries. ``outbox_cursor``: how far the notifier has
read the journal (fills, events, days), committed in the same transaction as the rows it
derived, so nothing is skipped or derived twice across a crash.

The connection is the notifier's own (never the session's), with a busy timeout: a write
here waits for the session's bar transaction instead of failing, and holds the lock for
microseconds. The journal's schema check accepts these tables (sessions/journal.py
``OPTIONAL_TABLES``).
"""
from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

TABLES = ("outbox", "outbox_cursor")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try INTEGER NOT NULL,
    sent_at INTEGER,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (sent_at, next_try);
CREATE TABLE IF NOT EXISTS outbox_cursor (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def now_ms() -> int:
    """Wall clock, epoch milliseconds."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Message:
    """One notification for one target."""

    key: str
    target: str
    kind: str
    title: str
    body: str
    id: int = 0
    attempts: int = 0
    created_at: int = 0


class Outbox:
    """The outbox tables of one journal file (see module docstring)."""

    def __init__(self, journal_path: str | Path) -> None:
        self.path = Path(journal_path)
        self._conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30.0)
        self._lock = threading.Lock()
        self._conn.execute("PRAGMA busy_timeout = 30000")
        self._conn.execute("PRAGMA synchronous = FULL")
        with self._tx():
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    self._conn.execute(stmt)

    def _tx(self):
        outbox = self

        class _Tx:
            def __enter__(self):
                outbox._lock.acquire()
                outbox._conn.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, *rest):
                try:
                    outbox._conn.execute("ROLLBACK" if exc_type else "COMMIT")
                finally:
                    outbox._lock.release()

        return _Tx()

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    def cursor(self, name: str, default: int = 0) -> int:
        """A read position (see module docstring)."""
        with self._lock:
            row = self._conn.execute("SELECT value FROM outbox_cursor WHERE name = ?", (name,)).fetchone()
        return default if row is None else int(row[0])

    def enqueue(self, messages: Iterable[Message], cursors: dict[str, int]) -> int:
        """Store new messages (a key already stored is ignored) and advance the cursors, in one
        transaction; returns how many rows were new."""
        t = now_ms()
        new = 0
        with self._tx():
            for m in messages:
                cur = self._conn.execute(
                    "INSERT OR IGNORE INTO outbox (key, target, kind, title, body, created_at, next_try)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)", (m.key, m.target, m.kind, m.title, m.body, t, t))
                new += cur.rowcount
            for name, value in cursors.items():
                self._conn.execute("INSERT INTO outbox_cursor (name, value) VALUES (?, ?) "
                                   "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (name, int(value)))
        return new

    def due(self, limit: int = 100) -> list[Message]:
        """Unsent messages whose retry time has come, oldest first, in order per target: a
        message waiting for its retry holds back the later ones of its target, so a target
        that comes back after an outage receives everything in the order it happened."""
        now = now_ms()
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, key, target, kind, title, body, attempts, created_at, next_try FROM outbox"
                " WHERE sent_at IS NULL ORDER BY id").fetchall()
        out: list[Message] = []
        held: set[str] = set()
        for r in rows:
            if r[2] in held:
                continue
            if r[8] > now:
                held.add(r[2])
                continue
            out.append(Message(key=r[1], target=r[2], kind=r[3], title=r[4], body=r[5], id=r[0], attempts=r[6],
                               created_at=r[7]))
            if len(out) >= limit:
                break
        return out

    def mark_sent(self, message_id: int) -> None:
        """The target accepted the message."""
        with self._tx():
            self._conn.execute("UPDATE outbox SET sent_at = ?, attempts = attempts + 1, last_error = NULL "
                               "WHERE id = ?", (now_ms(), message_id))

    def mark_failed(self, message_id: int, error: str, retry_in_s: float) -> None:
        """A failed attempt (``error`` already free of secrets); retry after ``retry_in_s``."""
        with self._tx():
            self._conn.execute("UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_try = ? WHERE id = ?",
                               (error[:500], now_ms() + int(retry_in_s * 1000), message_id))

    def counts(self) -> dict[str, int]:
        """``pending`` and ``sent`` message counts."""
        with self._lock:
            pending, sent = self._conn.execute(
                "SELECT COALESCE(SUM(sent_at IS NULL), 0), COALESCE(SUM(sent_at IS NOT NULL), 0) FROM outbox").fetchone()
        return {"pending": int(pending), "sent": int(sent)}
