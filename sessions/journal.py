"""Session journal for paper and live trading: one SQLite file per session (``state/SESSION.db``).

A session must survive Ctrl+C and ``kill -9`` with nothing lost or doubled. The journal is the
storage it stands on:

* **Durability.** WAL mode with ``synchronous=FULL``: a call that returned has its transaction
  fsynced to the write-ahead log, so it survives a crash or power loss. A transaction that was
  cut off (process killed mid-commit) does not exist after reopening - SQLite's guarantee, which
  the tests exercise by SIGKILLing a writer in a tight loop.
* **Write-ahead order intents.** :meth:`Journal.record_intent` commits *before* the order is sent,
  under a deterministic client order id (:func:`deterministic_client_id`). After a crash the
  session looks each unfinished intent up on the exchange by that id instead of sending it again.
  Acks, fills (idempotent on the exchange's trade id), cancels and status changes follow.
* **Per-bar checkpoints.** :meth:`Journal.record_bar` stores position, cash, equity, breaker and
  strategy state of one bar in one transaction; :meth:`Journal.atomic` groups several calls
  (intent + fill + bar) into one.
* **A halt that survives restarts** (:meth:`Journal.halt`), cleared only by
  :meth:`Journal.clear_halt` (``nts resume``), which is itself journaled.
* **Refusals, never repairs.** A damaged, truncated, non-SQLite or foreign file, a newer schema,
  or a session of another mode/exchange/symbol/timeframe/model is refused with one
  :class:`JournalError` line naming the path and the problem; the file is left as it was.
* **No secrets.** Dicts written to the journal are checked for credential-like keys.

Times are UTC epoch **milliseconds** (ccxt's convention); datetimes (naive = UTC, backtrader's
convention) and pandas Timestamps are accepted too. Plain floats are refused so that a
``time.time()`` in seconds cannot slip in as milliseconds.

Three ways to open a file: :meth:`Journal.open` (the session itself: creates or verifies, holds an
exclusive lock so that two sessions can never drive one journal), :meth:`Journal.open_readonly`
(``nts status``, dashboards: works while the session writes) and :meth:`Journal.open_admin`
(``nts resume``: operator actions only - halt, clear halt, events - allowed next to a running
session, whose :meth:`Journal.halted` always reads the file and so sees the change).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
import sqlite3
import struct
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from brokers.orders import (  # noqa: F401  (re-exported: the journal's callers import them from here)
    ROLE_CODES,
    TERMINAL_STATUSES,
    JournalError,
    deterministic_client_id,
    to_ms,
)
from core.errors import NtsError
from core.redact import redact

try:  # POSIX advisory lock; released by the kernel when the process dies, even by kill -9
    import fcntl
except ImportError:  # pragma: no cover - Windows: no session lock
    fcntl = None  # type: ignore[assignment]

SCHEMA_VERSION = 1
APP_NAME = "nts-journal"
# PRAGMA application_id lives in the file header: tells our files from other SQLite files
# before any table is read. 0x4E54534A = "NTSJ".
APPLICATION_ID = 0x4E54534A

Mode = Literal["paper", "live"]
MODES = ("paper", "live")
SIDES = ("buy", "sell")
# ccxt order statuses plus our own "intent" (journaled, no exchange answer yet).
STATUSES = ("intent", "open", "closed", "canceled", "expired", "rejected")
# Event kinds the summary counts; any lowercase identifier is accepted.
EVENT_BREAKER_TRIP = "breaker_trip"

_SQLITE_MAGIC = b"SQLite format 3\x00"
_CLIENT_ID_RE = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")  # Binance newClientOrderId charset
_KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
# Credential-like keys, compared after lower-casing and dropping "_", "-", "." and spaces.
_SECRET_KEY_PARTS = ("apikey", "secret", "password", "passwd", "passphrase", "signature",
                     "privatekey", "accesstoken", "authorization")
_FLOAT_TAG = "$float"  # JSON tag for non-finite floats: {"$float": "nan" | "inf" | "-inf"}


class BarFigures(NamedTuple):
    """The numbers journaled for one closed bar (:meth:`Journal.record_bar`; the ``bars``
    table's float columns, in the table's order). None is journaled as NaN."""

    close: float
    prob: float
    signal: float
    weight: float
    position: float
    avg_price: float
    cash: float
    equity: float


_BAR_FLOATS = BarFigures._fields  # the bars table's float columns: one list for the record and the table
_TABLES = ("meta", "session", "intents", "order_events", "fills", "bars", "gaps", "events", "halts")
# Tables other modules may add to a journal file; accepted, never required: the notification
# outbox and its read cursors (sessions/outbox.py), and the model id per journaled bar
# (created by the first record_bar that names one: journals written before it stay readable).
OPTIONAL_TABLES = ("outbox", "outbox_cursor", "bar_models")
# The model (bundle, or the walk-forward fold) that scored each journaled bar's decision.
_BAR_MODELS_SQL = ("CREATE TABLE IF NOT EXISTS bar_models (bar_time INTEGER PRIMARY KEY REFERENCES bars (bar_time), "
                   "model_id TEXT NOT NULL)")

_SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE session (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    session_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    mode TEXT NOT NULL CHECK (mode IN ('paper', 'live')),
    exchange TEXT NOT NULL,
    symbol TEXT NOT NULL,
    timeframe TEXT NOT NULL,
    model_path TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    config_hash TEXT NOT NULL
);
CREATE TABLE intents (
    client_id TEXT PRIMARY KEY,
    bar_time INTEGER NOT NULL,
    role TEXT NOT NULL,
    side TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
    order_type TEXT NOT NULL,
    amount REAL NOT NULL CHECK (amount > 0),
    price REAL,
    stop_price REAL,
    extra TEXT NOT NULL,
    recorded_at INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'intent' CHECK (status IN {STATUSES!r}),
    exchange_order_id TEXT,
    filled REAL,
    status_ts INTEGER,
    cancel_reason TEXT
);
CREATE INDEX intents_open ON intents (status);
CREATE TABLE order_events (
    id INTEGER PRIMARY KEY,
    client_id TEXT NOT NULL REFERENCES intents (client_id),
    ts INTEGER NOT NULL,
    kind TEXT NOT NULL,
    status TEXT,
    exchange_order_id TEXT,
    filled REAL,
    reason TEXT
);
CREATE TABLE fills (
    seq INTEGER PRIMARY KEY,
    trade_id TEXT NOT NULL UNIQUE,
    client_id TEXT REFERENCES intents (client_id),
    side TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
    price REAL NOT NULL,
    amount REAL NOT NULL,
    fee REAL NOT NULL,
    fee_currency TEXT,
    ts INTEGER NOT NULL,
    duplicates INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE bars (
    bar_time INTEGER PRIMARY KEY,
    close REAL, prob REAL, signal REAL, weight REAL, position REAL, avg_price REAL,
    cash REAL, equity REAL,
    breaker_state TEXT NOT NULL,
    risk_state TEXT NOT NULL,
    strategy_state TEXT NOT NULL,
    recorded_at INTEGER NOT NULL
);
CREATE TABLE gaps (
    id INTEGER PRIMARY KEY,
    gap_start INTEGER NOT NULL,
    gap_end INTEGER NOT NULL,
    bars_missing INTEGER NOT NULL CHECK (bars_missing >= 0),
    recorded_at INTEGER NOT NULL
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT
);
CREATE INDEX events_kind ON events (kind);
CREATE TABLE halts (
    id INTEGER PRIMARY KEY,
    reason TEXT NOT NULL,
    ts INTEGER NOT NULL,
    cleared_by TEXT,
    cleared_ts INTEGER
);
"""


# ---------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class SessionIdentity:
    """What a session is: a journal refuses to be reopened as anything else.

    ``mode``/``exchange``/``symbol``/``timeframe`` can never change for a journal (start a new
    file); ``model_path``/``model_sha256``/``config_hash`` may, with ``allow_model_change``.
    """

    mode: Mode
    exchange: str
    symbol: str
    timeframe: str
    model_path: str
    model_sha256: str
    config_hash: str


@dataclass(frozen=True)
class SessionInfo(SessionIdentity):
    """The journal's ``session`` row: the identity plus the id and creation time."""

    session_id: str
    created_at: int


@dataclass(frozen=True)
class Intent:
    """One order intent and what the exchange has said about it so far."""

    client_id: str
    bar_time: int
    role: str
    side: str
    order_type: str
    amount: float
    price: float | None
    stop_price: float | None
    extra: dict[str, Any]
    recorded_at: int
    status: str
    exchange_order_id: str | None
    filled: float | None
    status_ts: int | None
    cancel_reason: str | None

    @property
    def terminal(self) -> bool:
        """True once the order is closed, canceled, expired or rejected."""
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class Fill:
    """One trade (execution) reported by the exchange; ``duplicates`` counts ignored repeats."""

    seq: int
    trade_id: str
    client_id: str | None
    side: str
    price: float
    amount: float
    fee: float
    fee_currency: str | None
    ts: int
    duplicates: int


@dataclass(frozen=True)
class Checkpoint:
    """The state journaled at the end of one bar (what a restart resumes from)."""

    bar_time: int
    close: float
    prob: float
    signal: float
    weight: float
    position: float
    avg_price: float
    cash: float
    equity: float
    breaker_state: str
    risk_state: dict[str, Any]
    strategy_state: dict[str, Any]
    recorded_at: int
    model_id: str | None = None  # model that scored the bar (a schedule's fold); None in older journals


@dataclass(frozen=True)
class HaltInfo:
    """An active (or, in history, cleared) halt."""

    id: int
    reason: str
    ts: int
    cleared_by: str | None = None
    cleared_ts: int | None = None

    @property
    def ts_iso(self) -> str:
        """When the halt was set, ISO 8601 UTC."""
        return iso_ms(self.ts)


# ---------------------------------------------------------------------------------- helpers
def iso_ms(ms: int | None) -> str | None:
    """Epoch milliseconds as ``YYYY-MM-DDTHH:MM:SS(.fff)Z`` (None stays None)."""
    if ms is None:
        return None
    dt = _dt.datetime.fromtimestamp(ms / 1000.0, tz=_dt.timezone.utc)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{ms % 1000:03d}Z" if ms % 1000 else "Z")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _check_secrets(obj: Any, where: str, path: str = "") -> None:
    """Refuse credential-like keys anywhere inside ``obj`` (dicts within lists within dicts...)."""
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            norm = re.sub(r"[\s_.\-]", "", str(key).lower())
            if any(part in norm for part in _SECRET_KEY_PARTS):
                raise JournalError(f"{where}: key {path + str(key)!r} looks like a credential; "
                                   "secrets are never written to the journal")
            _check_secrets(value, where, f"{path}{key}.")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_secrets(value, where, f"{path}{i}.")


def _to_jsonable(obj: Any, where: str, path: str = "$") -> Any:
    """Plain-JSON form: non-finite floats tagged, numpy scalars unwrapped, tuples as lists.
    Anything else (sets, datetimes, objects, non-string keys) is refused rather than guessed."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        if math.isnan(x):
            return {_FLOAT_TAG: "nan"}
        if math.isinf(x):
            return {_FLOAT_TAG: "inf" if x > 0 else "-inf"}
        return x
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise JournalError(f"{where}: key {key!r} at {path} is not a string (JSON keys are strings)")
            if key == _FLOAT_TAG:
                raise JournalError(f"{where}: key {_FLOAT_TAG!r} at {path} is reserved")
            out[key] = _to_jsonable(value, where, f"{path}.{key}")
        return out
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v, where, f"{path}[{i}]") for i, v in enumerate(obj)]
    raise JournalError(f"{where}: {type(obj).__name__} at {path} cannot be journaled as JSON")


def _from_json_hook(d: dict[str, Any]) -> Any:
    if len(d) == 1 and _FLOAT_TAG in d:
        return float(d[_FLOAT_TAG])
    return d


def dumps(obj: Any, where: str = "value") -> str:
    """Canonical JSON (sorted keys, no NaN literals) whose :func:`loads` gives back the same
    floats bit for bit (``repr`` round-trips) and NaN/inf through tagged objects."""
    return json.dumps(_to_jsonable(obj, where), sort_keys=True, separators=(",", ":"), allow_nan=False)


def loads(text: str | None) -> Any:
    """Inverse of :func:`dumps`."""
    return None if text is None else json.loads(text, object_hook=_from_json_hook)


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of a config dict's canonical JSON (for :attr:`SessionIdentity.config_hash`)."""
    return hashlib.sha256(dumps(config, "config").encode()).hexdigest()


def _float_or_nan(x: float | None) -> float:
    # SQLite stores NaN as NULL; bar floats read NULL back as NaN.
    return math.nan if x is None else float(x)


def _opt_finite(x: Any, name: str) -> float | None:
    if x is None:
        return None
    return _finite(x, name)


def _finite(x: Any, name: str) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise JournalError(f"{name}: expected a number, got {x!r}") from None
    if not math.isfinite(v):
        raise JournalError(f"{name}: expected a finite number, got {v}")
    return v


# ---------------------------------------------------------------------------------- file checks
def _check_file(path: Path) -> None:
    """Refuse a file that is not a complete SQLite database, before SQLite touches it."""
    with open(path, "rb") as fh:
        header = fh.read(100)
    size = path.stat().st_size
    if header[:16] != _SQLITE_MAGIC:
        raise JournalError(f"{path}: not a SQLite database (no SQLite header); refusing to use it")
    if len(header) < 100:
        raise JournalError(f"{path}: truncated SQLite file ({size} bytes, shorter than its header)")
    (page_size,) = struct.unpack(">H", header[16:18])
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        raise JournalError(f"{path}: damaged SQLite header (page size {page_size})")
    if size % page_size:
        raise JournalError(f"{path}: truncated SQLite file ({size} bytes is not a whole number of "
                           f"{page_size}-byte pages)")
    change_counter, pages = struct.unpack(">II", header[24:32])
    (valid_for,) = struct.unpack(">I", header[92:96])
    # the in-header page count is only valid when written by the same change as the counter;
    # and while a -wal file exists a writer may be checkpointing: it writes page 1 (the new
    # count) before the pages that extend the file, so a short file is then not damage
    # (SQLite's own quick_check still judges it)
    wal_live = Path(str(path) + "-wal").exists()
    if valid_for == change_counter and pages and size < pages * page_size and not wal_live:
        raise JournalError(f"{path}: truncated SQLite file ({size} bytes, header says {pages} pages "
                           f"of {page_size})")


def _ro_uri(path: Path, immutable: bool = False) -> str:
    # immutable=1: no locks, no -shm/-wal created; only safe while no one writes the file
    return "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro" + ("&immutable=1" if immutable else "")


def _verify_schema(conn: sqlite3.Connection, path: Path, *, empty_ok: bool, records: bool = True) -> bool:
    """Integrity and schema checks on an open connection; True when the file has no tables at
    all (a crash between creating the file and committing the schema) and ``empty_ok``."""
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
        if rows != [("ok",)]:
            problems = "; ".join(str(r[0]) for r in rows[:3])
            raise JournalError(f"{path}: damaged SQLite file (quick_check: {problems})")
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise JournalError(f"{path}: damaged SQLite file ({exc})") from None
    if app_id == 0 and not tables:
        # nts creates journals whole (schema written and checkpointed in a temporary file,
        # then renamed into place): a SQLite file without tables is not one of ours, or a
        # journal whose content is still in a -wal file that did not come with it
        wal = Path(str(path) + "-wal")
        raise JournalError(f"{path}: SQLite file without a journal schema: a journal copied without its -wal file? "
                           f"Copy {wal.name} next to it (or give a new --state file)")
    if app_id != APPLICATION_ID:
        names = ", ".join(sorted(tables)[:5]) or "none"
        raise JournalError(f"{path}: not an nts session journal (foreign SQLite schema; tables: {names})")
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall()) if "meta" in tables else {}
    if meta.get("app") != APP_NAME:
        raise JournalError(f"{path}: not an nts session journal (no meta app row)")
    try:
        version = int(meta.get("schema_version", ""))
    except ValueError:
        raise JournalError(f"{path}: journal schema version {meta.get('schema_version')!r} is not a number") from None
    if version > SCHEMA_VERSION:
        raise JournalError(f"{path}: journal schema version {version} is newer than this nts "
                           f"understands ({SCHEMA_VERSION}); upgrade nts")
    if version != SCHEMA_VERSION:
        raise JournalError(f"{path}: unknown journal schema version {version} (this nts writes {SCHEMA_VERSION})")
    missing = [t for t in _TABLES if t not in tables]
    if missing:
        raise JournalError(f"{path}: journal schema incomplete (missing tables: {', '.join(missing)})")
    if conn.execute("SELECT COUNT(*) FROM session").fetchone()[0] != 1:
        raise JournalError(f"{path}: journal has no session row")
    if meta.get("clean") == "0" and not Path(str(path) + "-wal").exists():
        raise JournalError(f"{path}: the journal was not closed cleanly and its -wal file is missing (copied without "
                           f"it?): its last writes are in {path.name}-wal; copy that file next to it")
    problem = _integrity_problem(conn) if records else None
    if problem:
        raise JournalError(f"{path}: {problem}; the journal cannot be trusted: restore it from a copy that includes "
                           "its -wal file, or start a new --state file")
    return False


def _integrity_problem(conn: sqlite3.Connection) -> str | None:
    """The first thing a session could not trust in the journal's records, or None:
    fills or order events of orders it does not have, impossible checkpoint values, an
    order open again after its final status."""
    try:
        bad = conn.execute("PRAGMA foreign_key_check").fetchall()
        if bad:
            table, rowid = bad[0][0], bad[0][1]
            what = {"fills": "a fill", "order_events": "an order event"}.get(table, f"a {table} row")
            return f"{what} (row {rowid}) of an order the journal does not have ({len(bad)} such rows)"
        row = conn.execute("SELECT bar_time, equity, cash, close FROM bars WHERE equity < 0 OR close <= 0 "
                           "OR (cash IS NULL AND equity IS NOT NULL) ORDER BY bar_time LIMIT 1").fetchone()
        if row:
            return (f"impossible checkpoint at bar {iso_ms(row[0])} (equity {row[1]}, cash {row[2]}, close {row[3]})")
        row = conn.execute("SELECT i.client_id, i.status, e.status FROM intents i JOIN order_events e "
                           "ON e.client_id = i.client_id WHERE i.status IN ('intent', 'open') AND e.status IN "
                           "('closed', 'canceled', 'expired', 'rejected') LIMIT 1").fetchone()
        if row:
            return f"order {row[0]} is {row[1]} again after it was {row[2]}"
    except sqlite3.DatabaseError as exc:
        return f"unreadable records ({exc})"
    return None


# ---------------------------------------------------------------------------------- journal
class Journal:
    """One session's SQLite journal. Build it with :meth:`open`, :meth:`open_readonly` or
    :meth:`open_admin`; use as a context manager or call :meth:`close`.

    Every write method commits before it returns (unless inside :meth:`atomic`). Reads always
    go to the file, so a reader in another process sees each committed write.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, role: Literal["session", "admin", "reader"],
                 lock_fd: int | None = None) -> None:
        """Internal: use :meth:`open`, :meth:`open_readonly` or :meth:`open_admin`."""
        self.path = path
        self.role = role
        self._conn = conn
        self._lock_fd = lock_fd
        self._depth = 0
        # one connection shared by e.g. a strategy thread and a websocket thread
        self._mutex = threading.RLock()
        self.session = self._load_session()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike, identity: SessionIdentity, *,
             allow_model_change: bool = False) -> "Journal":
        """Open the session journal at ``path`` for writing, creating it when absent.

        An existing file must be an intact journal of the same mode, exchange, symbol and
        timeframe; a different model path/weights/config hash is refused unless
        ``allow_model_change`` (then the session row is updated and a ``model_change`` event
        journaled). Holds an exclusive lock on ``<path>.lock`` until :meth:`close` (or process
        death), so a second session on the same file is refused.
        """
        path = Path(path)
        _validate_identity(identity)
        if path.is_dir():
            raise JournalError(f"{path}: is a directory, not a journal file")
        existed = path.exists() and path.stat().st_size > 0
        if existed:
            cls._precheck(path, empty_ok=False)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a parent that is a file, a read-only folder
            raise JournalError(f"{path}: cannot create its folder ({exc.strerror or exc.__class__.__name__})") from None
        lock_fd = _acquire_lock(path)
        try:
            if not existed:
                _create_whole(path, identity)
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10.0)
            try:
                _configure(conn, path)
                _verify_schema(conn, path, empty_ok=False, records=False)  # records: checked by _precheck
                journal = cls(path, conn, "session", lock_fd)
                journal._check_identity(identity, allow_model_change)
                journal._mark_clean(False)
                journal.record_event("open", f"{identity.mode} session {journal.session.session_id} opened "
                                     f"({'resumed' if existed else 'new'}), pid {os.getpid()}",
                                     {"new": not existed})
                return journal
            except BaseException:
                conn.close()
                raise
        except BaseException:
            _release_lock(lock_fd, path)
            raise

    @classmethod
    def open_readonly(cls, path: str | os.PathLike) -> "Journal":
        """Open an existing journal read-only (``mode=ro``); safe next to a running session."""
        path = Path(path)
        cls._require_file(path)
        cls._precheck(path, empty_ok=False)
        # read-only for real: without a -wal file (closed cleanly) the file is read as
        # immutable, so SQLite creates no -wal/-shm beside it; with one, a running or killed
        # session already made both
        immutable = not path.with_name(path.name + "-wal").exists()
        conn = sqlite3.connect(_ro_uri(path, immutable), uri=True, isolation_level=None, check_same_thread=False,
                               timeout=10.0)
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            _verify_schema(conn, path, empty_ok=False, records=False)  # records: checked by _precheck
            return cls(path, conn, "reader")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise JournalError(f"{path}: cannot read journal ({exc})") from None
        except BaseException:
            conn.close()
            raise

    @classmethod
    def open_admin(cls, path: str | os.PathLike) -> "Journal":
        """Open an existing journal for operator actions (:meth:`halt`, :meth:`clear_halt`,
        :meth:`record_event`) without the session lock: SQLite serialises the writes with a
        running session's. Orders, fills and bars are refused on this handle."""
        path = Path(path)
        cls._require_file(path)
        cls._precheck(path, empty_ok=False)
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10.0)
        try:
            _configure(conn, path)
            _verify_schema(conn, path, empty_ok=False, records=False)  # records: checked by _precheck
            return cls(path, conn, "admin")
        except BaseException:
            conn.close()
            raise

    @staticmethod
    def _require_file(path: Path) -> None:
        if not path.exists():
            raise JournalError(f"{path}: no such journal file")
        if path.is_dir():
            raise JournalError(f"{path}: is a directory, not a journal file")
        if path.stat().st_size == 0:
            raise JournalError(f"{path}: empty file, not a journal")

    @staticmethod
    def _precheck(path: Path, *, empty_ok: bool) -> None:
        """Header and integrity checks on a read-only connection, so that a file we refuse is
        never opened for writing (nothing can be "recovered" into it)."""
        _check_file(path)
        # Without a -wal beside it no session has the file open (a session keeps its -wal until
        # it closes, a killed one leaves it): check it as immutable so that even a read-only
        # connection leaves no -shm/-wal next to a file we may refuse. With a -wal, open it
        # normally so that committed transactions still in the WAL are part of the check.
        immutable = not path.with_name(path.name + "-wal").exists()
        try:
            conn = sqlite3.connect(_ro_uri(path, immutable), uri=True, isolation_level=None, timeout=10.0)
        except sqlite3.Error as exc:
            raise JournalError(f"{path}: cannot open as SQLite ({exc})") from None
        try:
            _verify_schema(conn, path, empty_ok=empty_ok)
        finally:
            conn.close()

    def close(self) -> None:
        """Close the connection (checkpointing the WAL) and release the session lock."""
        with self._mutex:
            if self._conn is not None:
                if self.role == "session":
                    try:
                        self._mark_clean(True)
                    except (JournalError, sqlite3.Error):
                        pass  # a disk that refuses writes: the -wal file stays, and says so
                self._conn.close()
                self._conn = None  # type: ignore[assignment]
            if self._lock_fd is not None:
                _release_lock(self._lock_fd, self.path)
                self._lock_fd = None

    def _mark_clean(self, clean: bool) -> None:
        """``meta.clean``: 0 while a session has the file open (checkpointed into the main
        file at once, so a copy of the main file without its -wal says it is incomplete),
        1 after a clean close."""
        with self._write():
            self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('clean', ?)", ("1" if clean else "0",))
        if not clean:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # never waits for readers
            except sqlite3.Error as exc:
                raise JournalError(f"{self.path}: cannot write the journal ({exc})") from None

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def atomic(self) -> Iterator["Journal"]:
        """Group writes into one transaction: all of them are on disk after the block, or none
        (exception, crash, kill -9). Nests; an inner block that raises rolls back only itself."""
        with self._mutex:
            if self._conn is None:
                raise JournalError(f"{self.path}: journal is closed")
            if self._depth:
                name = f"sp{self._depth}"
                self._conn.execute(f"SAVEPOINT {name}")
                self._depth += 1
                try:
                    yield self
                except BaseException:
                    self._conn.execute(f"ROLLBACK TO {name}")
                    self._conn.execute(f"RELEASE {name}")
                    raise
                else:
                    self._conn.execute(f"RELEASE {name}")
                finally:
                    self._depth -= 1
                return
            # IMMEDIATE: take the write lock now, so a concurrent admin write waits instead of
            # failing half-way through our transaction
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _write_error(self.path, exc) from None
            self._depth = 1
            try:
                yield self
                self._conn.execute("COMMIT")
            except BaseException as exc:
                try:
                    self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # SQLite already rolled back (disk full, I/O error): nothing was written
                if isinstance(exc, sqlite3.Error):
                    raise _write_error(self.path, exc) from None
                raise
            finally:
                self._depth = 0

    def _write(self, *roles: str) -> Any:
        allowed = roles or ("session",)
        if self.role not in allowed:
            raise JournalError(f"{self.path}: this journal handle is {self.role}; that write needs "
                               f"{' or '.join(allowed)}")
        return self.atomic()

    def _q(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._mutex:
            if self._conn is None:
                raise JournalError(f"{self.path}: journal is closed")
            cur = self._conn.execute(sql, args)
            cur.row_factory = sqlite3.Row
            return cur.fetchall()

    # ------------------------------------------------------------------ session identity
    def _load_session(self) -> SessionInfo:
        row = self._q("SELECT * FROM session WHERE id = 1")[0]
        return SessionInfo(**{k: row[k] for k in row.keys() if k != "id"})

    def _check_identity(self, identity: SessionIdentity, allow_model_change: bool) -> None:
        s = self.session
        fixed = [f"{k} {getattr(s, k)!r} != {getattr(identity, k)!r}"
                 for k in ("mode", "exchange", "symbol", "timeframe") if getattr(s, k) != getattr(identity, k)]
        if fixed:
            raise JournalError(f"{self.path}: journal belongs to another session ({'; '.join(fixed)}); "
                               "use a new state file")
        changed = {k: (getattr(s, k), getattr(identity, k))
                   for k in ("model_path", "model_sha256", "config_hash") if getattr(s, k) != getattr(identity, k)}
        if not changed:
            return
        if not allow_model_change:
            def short(key: str, value: str) -> str:  # digests: a prefix is enough to tell them apart
                return value[:16] if key != "model_path" else repr(value)

            what = "; ".join(f"{k} {short(k, old)} -> {short(k, new)}" for k, (old, new) in changed.items())
            raise JournalError(f"{self.path}: session was started with another model/config ({what}); "
                               "pass allow_model_change to switch deliberately")
        with self._write():
            self._conn.execute(
                "UPDATE session SET model_path = ?, model_sha256 = ?, config_hash = ? WHERE id = 1",
                (identity.model_path, identity.model_sha256, identity.config_hash))
            self.record_event("model_change", "model/config changed on reopen",
                              {k: {"old": old, "new": new} for k, (old, new) in changed.items()})
        self.session = self._load_session()

    # ------------------------------------------------------------------ order intents
    def record_intent(self, client_id: str, bar_time: Any, role: str, side: str, order_type: str,
                      amount: float, price: float | None = None, stop_price: float | None = None,
                      extra: dict[str, Any] | None = None) -> Intent:
        """Journal an order *before* it is sent (committed when this returns).

        Re-recording the same ``client_id`` with identical fields returns the existing intent
        (with whatever status it has reached): that is how a restart on the same bar finds out
        the order may already be at the exchange. Different fields -> :class:`JournalError`.
        """
        if not isinstance(client_id, str) or not _CLIENT_ID_RE.match(client_id):
            raise JournalError(f"client_id {client_id!r}: expected 1-36 characters of [.A-Z:/a-z0-9_-]")
        if role not in ROLE_CODES:
            raise JournalError(f"intent {client_id}: role {role!r} not one of {', '.join(ROLE_CODES)}")
        if side not in SIDES:
            raise JournalError(f"intent {client_id}: side {side!r} not buy/sell")
        if not isinstance(order_type, str) or not order_type:
            raise JournalError(f"intent {client_id}: order_type must be a non-empty string")
        fields = {
            "bar_time": to_ms(bar_time, "bar_time"), "role": role, "side": side, "order_type": order_type,
            "amount": _finite(amount, "amount"), "price": _opt_finite(price, "price"),
            "stop_price": _opt_finite(stop_price, "stop_price"),
        }
        if fields["amount"] <= 0:
            raise JournalError(f"intent {client_id}: amount must be > 0, got {fields['amount']}")
        _check_secrets(extra or {}, f"intent {client_id} extra")
        extra_json = dumps(extra or {}, f"intent {client_id} extra")
        with self._write():
            old = self._intent_row(client_id)
            if old is not None:
                stored = {k: old[k] for k in fields} | {"extra": old["extra"]}
                new = fields | {"extra": extra_json}
                diff = [k for k in new if stored[k] != new[k]]
                if diff:
                    raise JournalError(f"intent {client_id} already journaled with other "
                                       f"{', '.join(f'{k} ({stored[k]!r} != {new[k]!r})' for k in diff)}")
                return self._intent_from_row(old)
            self._conn.execute(
                "INSERT INTO intents (client_id, bar_time, role, side, order_type, amount, price, stop_price,"
                " extra, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (client_id, fields["bar_time"], role, side, order_type, fields["amount"], fields["price"],
                 fields["stop_price"], extra_json, _now_ms()))
            return self._intent_from_row(self._intent_row(client_id))

    def _intent_row(self, client_id: str) -> sqlite3.Row | None:
        rows = self._q("SELECT * FROM intents WHERE client_id = ?", (client_id,))
        return rows[0] if rows else None

    @staticmethod
    def _intent_from_row(row: sqlite3.Row) -> Intent:
        d = {k: row[k] for k in row.keys()}
        d["extra"] = loads(d["extra"])
        return Intent(**d)

    def intent(self, client_id: str) -> Intent | None:
        """The intent with this client id, or None."""
        row = self._intent_row(client_id)
        return None if row is None else self._intent_from_row(row)

    def _require_intent(self, client_id: str, what: str) -> sqlite3.Row:
        row = self._intent_row(client_id)
        if row is None:
            raise JournalError(f"{what} for unknown client_id {client_id!r} (no intent journaled)")
        return row

    def _set_status(self, client_id: str, status: str, ts: int, *, kind: str,
                    exchange_order_id: str | None = None, filled: float | None = None,
                    reason: str | None = None) -> Intent:
        """Apply one status report; no-op when nothing changes, JournalError on contradictions
        (another exchange order id, a final status changing, a final order reopening)."""
        if status not in STATUSES or status == "intent":
            raise JournalError(f"{kind} {client_id}: status {status!r} not one of {', '.join(STATUSES[1:])}")
        row = self._require_intent(client_id, kind)
        old_status, old_eid = row["status"], row["exchange_order_id"]
        if exchange_order_id is not None and old_eid is not None and str(exchange_order_id) != old_eid:
            raise JournalError(f"{kind} {client_id}: exchange order id {exchange_order_id!r} != journaled {old_eid!r}")
        if old_status in TERMINAL_STATUSES and status != old_status:
            raise JournalError(f"{kind} {client_id}: order already {old_status}, cannot become {status}")
        eid = old_eid if exchange_order_id is None else str(exchange_order_id)
        new_filled = row["filled"] if filled is None else _finite(filled, "filled")
        if (status, eid, new_filled) == (old_status, old_eid, row["filled"]) and reason is None:
            return self._intent_from_row(row)
        self._conn.execute(
            "UPDATE intents SET status = ?, exchange_order_id = ?, filled = ?, status_ts = ?,"
            " cancel_reason = COALESCE(?, cancel_reason) WHERE client_id = ?",
            (status, eid, new_filled, ts, reason, client_id))
        self._conn.execute(
            "INSERT INTO order_events (client_id, ts, kind, status, exchange_order_id, filled, reason)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)", (client_id, ts, kind, status, eid, new_filled, reason))
        return self._intent_from_row(self._intent_row(client_id))

    def record_ack(self, client_id: str, exchange_order_id: str, status: str, ts: Any) -> Intent:
        """The exchange accepted (or answered) the order: its id and ccxt status."""
        if exchange_order_id is None or str(exchange_order_id) == "":
            raise JournalError(f"ack {client_id}: empty exchange order id")
        with self._write():
            return self._set_status(client_id, status, to_ms(ts, "ts"), kind="ack",
                                    exchange_order_id=str(exchange_order_id))

    def record_order_status(self, client_id: str, status: str, ts: Any, *, filled: float | None = None,
                            exchange_order_id: str | None = None) -> Intent:
        """A status seen later (fetch_order, reconciliation, websocket): ccxt status and filled amount."""
        with self._write():
            return self._set_status(client_id, status, to_ms(ts, "ts"), kind="status",
                                    exchange_order_id=exchange_order_id, filled=filled)

    def record_cancel(self, client_id: str, ts: Any, reason: str) -> Intent:
        """The order is canceled (confirmed by the exchange, or never sent and abandoned).
        Repeating it is a no-op; canceling a closed order is a contradiction."""
        with self._write():
            row = self._require_intent(client_id, "cancel")
            if row["status"] == "canceled":
                return self._intent_from_row(row)
            return self._set_status(client_id, "canceled", to_ms(ts, "ts"), kind="cancel", reason=str(reason))

    # ------------------------------------------------------------------ fills
    def record_fill(self, trade_id: str, client_id: str | None, side: str, price: float, amount: float,
                    fee: float, fee_currency: str | None, ts: Any) -> bool:
        """Journal one trade; True when new. A repeat with identical fields is ignored (counted
        in ``duplicates``); the same trade id with other fields -> :class:`JournalError`.
        ``client_id`` None is a trade of no intent of ours (found by reconciliation)."""
        trade_id = str(trade_id)
        if not trade_id:
            raise JournalError("fill: empty trade id")
        if side not in SIDES:
            raise JournalError(f"fill {trade_id}: side {side!r} not buy/sell")
        new = {"client_id": client_id, "side": side, "price": _finite(price, "price"),
               "amount": _finite(amount, "amount"), "fee": _finite(fee, "fee"),
               "fee_currency": None if fee_currency is None else str(fee_currency), "ts": to_ms(ts, "ts")}
        if new["price"] <= 0 or new["amount"] <= 0:
            raise JournalError(f"fill {trade_id}: price and amount must be > 0")
        with self._write():
            rows = self._q("SELECT * FROM fills WHERE trade_id = ?", (trade_id,))
            if rows:
                diff = [k for k in new if rows[0][k] != new[k]]
                if diff:
                    raise JournalError(f"fill {trade_id} already journaled with other "
                                       f"{', '.join(f'{k} ({rows[0][k]!r} != {new[k]!r})' for k in diff)}")
                self._conn.execute("UPDATE fills SET duplicates = duplicates + 1 WHERE trade_id = ?", (trade_id,))
                return False
            if client_id is not None:
                intent = self._require_intent(client_id, f"fill {trade_id}")
                if intent["side"] != side:
                    raise JournalError(f"fill {trade_id}: side {side} but intent {client_id} is {intent['side']}")
            self._conn.execute(
                "INSERT INTO fills (trade_id, client_id, side, price, amount, fee, fee_currency, ts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (trade_id, client_id, side, new["price"], new["amount"], new["fee"], new["fee_currency"], new["ts"]))
            return True

    def fills(self, since_trade_id: str | None = None) -> list[Fill]:
        """Fills in journal order; with ``since_trade_id`` only those journaled after that one."""
        if since_trade_id is None:
            rows = self._q("SELECT * FROM fills ORDER BY seq")
        else:
            ref = self._q("SELECT seq FROM fills WHERE trade_id = ?", (str(since_trade_id),))
            if not ref:
                raise JournalError(f"fills since {since_trade_id!r}: no such trade id in the journal")
            rows = self._q("SELECT * FROM fills WHERE seq > ? ORDER BY seq", (ref[0]["seq"],))
        return [Fill(**{k: r[k] for k in r.keys()}) for r in rows]

    # ------------------------------------------------------------------ bars
    def record_bar(self, bar_time: Any, figures: BarFigures, breaker_state: str, risk_state: dict[str, Any],
                   strategy_state: dict[str, Any], model_id: str | None = None) -> None:
        """Checkpoint one closed bar in one transaction: its ``figures`` (:class:`BarFigures`),
        breaker state and the risk manager's and strategy's state. ``bar_time`` must be later
        than the last journaled bar (the caller never delivers a bar twice). NaN/inf round-trip exactly, in
        the columns and in the state dicts (e.g. RiskManager.state_dict()'s ``peak=-inf``).
        ``model_id``: the model that scored the bar's decision (a walk-forward schedule's fold
        name), kept in the optional ``bar_models`` table; None (or "") records none."""
        ms = to_ms(bar_time, "bar_time")
        values = []
        for name, v in zip(_BAR_FLOATS, figures):
            try:
                values.append(math.nan if v is None else float(v))
            except (TypeError, ValueError):
                raise JournalError(f"bar {iso_ms(ms)}: {name} {v!r} is not a number") from None
        if not isinstance(breaker_state, str):
            raise JournalError(f"bar {iso_ms(ms)}: breaker_state must be a string")
        _check_secrets(risk_state, "risk_state")
        _check_secrets(strategy_state, "strategy_state")
        risk_json, strat_json = dumps(risk_state, "risk_state"), dumps(strategy_state, "strategy_state")
        with self._write():
            last = self._q("SELECT MAX(bar_time) AS t FROM bars")[0]["t"]
            if last is not None and ms <= last:
                raise JournalError(f"bar {iso_ms(ms)} is not after the last journaled bar {iso_ms(last)} "
                                   "(bars are journaled once, in order)")
            self._conn.execute(
                "INSERT INTO bars (bar_time, close, prob, signal, weight, position, avg_price, cash, equity,"
                " breaker_state, risk_state, strategy_state, recorded_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (ms, *values, breaker_state, risk_json, strat_json, _now_ms()))
            if model_id:
                self._conn.execute(_BAR_MODELS_SQL)
                self._conn.execute("INSERT INTO bar_models (bar_time, model_id) VALUES (?, ?)", (ms, str(model_id)))

    @staticmethod
    def _checkpoint(row: sqlite3.Row) -> Checkpoint:
        d = {k: row[k] for k in row.keys()}
        for k in _BAR_FLOATS:
            d[k] = _float_or_nan(d[k])
        d["risk_state"], d["strategy_state"] = loads(d["risk_state"]), loads(d["strategy_state"])
        return Checkpoint(**d)

    def _bars_sql(self) -> str:
        """SELECT of the bars with their model id (NULL when the journal has no bar_models table)."""
        if self._q("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'bar_models'"):
            return "SELECT b.*, m.model_id FROM bars b LEFT JOIN bar_models m USING (bar_time)"
        return "SELECT b.*, NULL AS model_id FROM bars b"

    def last_checkpoint(self) -> Checkpoint | None:
        """The latest bar checkpoint (what a restart restores), or None before the first bar."""
        rows = self._q(self._bars_sql() + " ORDER BY bar_time DESC LIMIT 1")
        return self._checkpoint(rows[0]) if rows else None

    def last_bar(self) -> int | None:
        """Open time (epoch ms) of the latest journaled bar, or None."""
        return self._q("SELECT MAX(bar_time) AS t FROM bars")[0]["t"]

    def bars(self, since: Any = None) -> list[Checkpoint]:
        """All checkpoints (or those after ``since``) in time order."""
        if since is None:
            rows = self._q(self._bars_sql() + " ORDER BY bar_time")
        else:
            rows = self._q(self._bars_sql() + " WHERE bar_time > ? ORDER BY bar_time", (to_ms(since, "since"),))
        return [self._checkpoint(r) for r in rows]

    def record_gap(self, start: Any, end: Any, bars_missing: int) -> None:
        """Bars the session never saw (downtime, exchange outage): from ``start`` to ``end``."""
        s, e = to_ms(start, "start"), to_ms(end, "end")
        if e < s or not isinstance(bars_missing, (int, np.integer)) or bars_missing < 0:
            raise JournalError(f"gap {iso_ms(s)}..{iso_ms(e)}: need end >= start and bars_missing >= 0")
        with self._write():
            self._conn.execute("INSERT INTO gaps (gap_start, gap_end, bars_missing, recorded_at) VALUES (?, ?, ?, ?)",
                               (s, e, int(bars_missing), _now_ms()))

    def gaps(self) -> list[dict[str, Any]]:
        """Recorded gaps: ``start``, ``end`` (ms), ``bars_missing``."""
        return [{"start": r["gap_start"], "end": r["gap_end"], "bars_missing": r["bars_missing"]}
                for r in self._q("SELECT * FROM gaps ORDER BY id")]

    # ------------------------------------------------------------------ events and halts
    def record_event(self, kind: str, message: str, data: dict[str, Any] | None = None, ts: Any = None) -> None:
        """Journal a session event (start, resume, reconcile report, breaker_trip, kill_switch,
        error, ...). ``kind`` is a lowercase identifier; ``ts`` defaults to now."""
        if not isinstance(kind, str) or not _KIND_RE.match(kind):
            raise JournalError(f"event kind {kind!r}: expected a lowercase identifier")
        _check_secrets(data or {}, f"event {kind} data")
        data_json = None if data is None else dumps(data, f"event {kind} data")
        when = _now_ms() if ts is None else to_ms(ts, "ts")
        with self._write("session", "admin"):
            self._conn.execute("INSERT INTO events (ts, kind, message, data) VALUES (?, ?, ?, ?)",
                               (when, kind, redact(str(message)), data_json))

    def events(self, kind: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Events oldest first (the last ``limit`` of them when given), optionally of one kind."""
        where, args = ("WHERE kind = ?", (kind,)) if kind else ("", ())
        sql = f"SELECT * FROM events {where} ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else "")
        rows = self._q(sql, args)[::-1]
        return [{"id": r["id"], "ts": r["ts"], "kind": r["kind"], "message": r["message"], "data": loads(r["data"])}
                for r in rows]

    def halt(self, reason: str, ts: Any) -> HaltInfo:
        """Halt the session (survives restarts until :meth:`clear_halt`). When already halted
        the first halt stays in force and the new reason is journaled as an event."""
        when = to_ms(ts, "ts")
        reason = redact(str(reason))  # text from user code or an operator: never a secret
        with self._write("session", "admin"):
            current = self.halted()
            if current is not None:
                self.record_event("halt", f"halt requested again: {reason} (already halted: {current.reason})", ts=when)
                return current
            self._conn.execute("INSERT INTO halts (reason, ts) VALUES (?, ?)", (str(reason), when))
            self.record_event("halt", f"halted: {reason}", ts=when)
            return self.halted()  # type: ignore[return-value]

    def halted(self) -> HaltInfo | None:
        """The active halt, or None. Always read from the file (sees another process's clear)."""
        rows = self._q("SELECT * FROM halts WHERE cleared_ts IS NULL ORDER BY id DESC LIMIT 1")
        return HaltInfo(**{k: rows[0][k] for k in rows[0].keys()}) if rows else None

    def clear_halt(self, by: str, ts: Any) -> HaltInfo | None:
        """Clear the active halt, journaling who and when; returns the cleared halt or None
        when there was none."""
        if not by or not str(by).strip():
            raise JournalError("clear_halt: say who clears the halt")
        by = redact(str(by))  # an operator name typed on the command line: never a secret
        when = to_ms(ts, "ts")
        with self._write("session", "admin"):
            current = self.halted()
            if current is None:
                return None
            self._conn.execute("UPDATE halts SET cleared_by = ?, cleared_ts = ? WHERE cleared_ts IS NULL",
                               (str(by), when))
            self.record_event("halt_cleared", f"halt cleared by {by}: was {current.reason!r} since {current.ts_iso}",
                              {"halt_id": current.id, "by": str(by)}, ts=when)
            return HaltInfo(current.id, current.reason, current.ts, str(by), when)

    # ------------------------------------------------------------------ reading
    def intents(self, open_only: bool = False) -> list[Intent]:
        """Intents in journal order; ``open_only``: those without a final status."""
        if open_only:
            rows = self._q("SELECT * FROM intents WHERE status IN ('intent', 'open') ORDER BY rowid")
        else:
            rows = self._q("SELECT * FROM intents ORDER BY rowid")
        return [self._intent_from_row(r) for r in rows]

    def orders_without_terminal_status(self) -> list[Intent]:
        """What a restart must reconcile: intents never answered (may or may not have reached the
        exchange - look them up by client id) and orders last seen open."""
        return self.intents(open_only=True)

    def summary(self) -> dict[str, Any]:
        """One dict for ``nts status`` and dashboards (times in ms plus ``*_iso``)."""
        with self._mutex:
            # one read transaction: every number comes from the same committed state
            self._conn.execute("BEGIN") if self._depth == 0 else None
            try:
                return self._summary()
            finally:
                if self._depth == 0:
                    self._conn.execute("COMMIT")

    def _summary(self) -> dict[str, Any]:
        cp = self.last_checkpoint()
        counts = self._q("SELECT (SELECT COUNT(*) FROM bars) AS bars, (SELECT COUNT(*) FROM fills) AS fills,"
                         " (SELECT COALESCE(SUM(duplicates), 0) FROM fills) AS dups,"
                         " (SELECT COUNT(*) FROM intents) AS intents,"
                         " (SELECT COUNT(*) FROM gaps) AS gaps,"
                         " (SELECT COALESCE(SUM(bars_missing), 0) FROM gaps) AS missing,"
                         " (SELECT COUNT(*) FROM events WHERE kind = ?) AS trips,"
                         " (SELECT COUNT(*) FROM events) AS events", (EVENT_BREAKER_TRIP,))[0]
        fees = {("" if r["cur"] is None else r["cur"]): r["fee"] for r in
                self._q("SELECT fee_currency AS cur, SUM(fee) AS fee FROM fills GROUP BY fee_currency ORDER BY cur")}
        open_orders = [{"client_id": i.client_id, "role": i.role, "side": i.side, "type": i.order_type,
                        "amount": i.amount, "price": i.price, "status": i.status,
                        "exchange_order_id": i.exchange_order_id} for i in self.intents(open_only=True)]
        halt = self.halted()
        last_events = self.events(limit=1)
        clock = self.events("clock", limit=1)
        return {
            "path": str(self.path),
            "session": asdict(self.session) | {"created_at_iso": iso_ms(self.session.created_at)},
            "last_bar": None if cp is None else cp.bar_time,
            "last_bar_iso": None if cp is None else iso_ms(cp.bar_time),
            "last_bar_recorded_iso": None if cp is None else iso_ms(cp.recorded_at),
            "bars_processed": counts["bars"],
            "close": None if cp is None else cp.close,
            "equity": None if cp is None else cp.equity,
            "cash": None if cp is None else cp.cash,
            "position": None if cp is None else cp.position,
            "avg_price": None if cp is None else cp.avg_price,
            "breaker_state": None if cp is None else cp.breaker_state,
            "open_orders": open_orders,
            "intents": counts["intents"],
            "trade_count": counts["fills"],
            "duplicate_fills_ignored": counts["dups"],
            "fees_by_currency": fees,
            "breaker_trips": counts["trips"],
            "halted": halt is not None,
            "halt": None if halt is None else {"reason": halt.reason, "ts": halt.ts, "ts_iso": halt.ts_iso},
            "gaps": counts["gaps"],
            "bars_missing": counts["missing"],
            "events": counts["events"],
            "clock_offset_ms": None if not clock else (clock[0]["data"] or {}).get("offset_ms"),
            "clock_measured_iso": None if not clock else iso_ms(clock[0]["ts"]),
            "last_event": (None if not last_events else
                           {k: last_events[0][k] for k in ("kind", "message")} | {"ts_iso": iso_ms(last_events[0]["ts"])}),
        }


# ---------------------------------------------------------------------------------- formatting
def _plain(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # machine output is strict JSON; a flat position's NaN avg price is "none"
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def summary_json(summary: dict[str, Any]) -> str:
    """``summary`` as strict JSON (non-finite numbers become null)."""
    return json.dumps(_plain(summary), indent=2, sort_keys=True, allow_nan=False)


def _num(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{digits}f}"


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """Human-readable lines of :meth:`Journal.summary` (``nts status``)."""
    s = summary["session"]
    lines = [
        f"journal   {summary['path']}",
        f"session   {s['session_id']} {s['mode']} {s['exchange']} {s['symbol']} {s['timeframe']}"
        f" (since {s['created_at_iso']})",
        f"model     {s['model_path']} (weights {s['model_sha256'][:12]}, config {s['config_hash'][:12]})",
    ]
    if summary["halted"]:
        h = summary["halt"]
        lines.append(f"HALTED    since {h['ts_iso']}: {h['reason']} (clear with: nts resume --state {summary['path']})")
    else:
        lines.append("halt      none")
    if summary["last_bar"] is None:
        lines.append("bars      none yet")
    else:
        lines += [
            f"last bar  {summary['last_bar_iso']} close {_num(summary['close'])} "
            f"(journaled {summary['last_bar_recorded_iso']})",
            f"bars      {summary['bars_processed']:,} processed, {summary['gaps']} gaps "
            f"({summary['bars_missing']:,} bars missing)",
            f"equity    {_num(summary['equity'])}  cash {_num(summary['cash'])}  position "
            f"{_num(summary['position'], 8)} @ {_num(summary['avg_price'])}",
            f"breakers  {summary['breaker_state']} ({summary['breaker_trips']} trips)",
        ]
    fees = ", ".join(f"{v:.8g} {k or '?'}" for k, v in summary["fees_by_currency"].items()) or "none"
    lines.append(f"trades    {summary['trade_count']} fills from {summary['intents']} orders; fees {fees}"
                 + (f"; {summary['duplicate_fills_ignored']} duplicate fills ignored"
                    if summary["duplicate_fills_ignored"] else ""))
    if summary["open_orders"]:
        lines.append(f"open      {len(summary['open_orders'])} orders without a final status:")
        for o in summary["open_orders"]:
            at = "" if o["price"] is None else f" @ {o['price']:.8g}"
            lines.append(f"  {o['client_id']} {o['role']} {o['side']} {o['type']} {o['amount']:.8g}{at} [{o['status']}]")
    else:
        lines.append("open      no open orders")
    if summary.get("clock_offset_ms") is not None:
        lines.append(f"clock     host {summary['clock_offset_ms']:+d} ms off the exchange's clock (measured "
                     f"{summary['clock_measured_iso']}; requests signed with the exchange's time)")
    if summary["last_event"]:
        e = summary["last_event"]
        lines.append(f"last      {e['ts_iso']} {e['kind']}: {e['message']}")
    return lines


# ---------------------------------------------------------------------------------- internals
def _validate_identity(identity: SessionIdentity) -> None:
    if identity.mode not in MODES:
        raise JournalError(f"session mode {identity.mode!r}: expected paper or live")
    for key in ("exchange", "symbol", "timeframe", "model_path", "model_sha256", "config_hash"):
        if not isinstance(getattr(identity, key), str) or not getattr(identity, key):
            raise JournalError(f"session {key}: expected a non-empty string")


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        conn.execute("PRAGMA synchronous = FULL")  # fsync the WAL at every commit
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.DatabaseError as exc:
        raise JournalError(f"{path}: cannot open journal ({exc})") from None
    if str(mode).lower() != "wal":
        raise JournalError(f"{path}: cannot switch the journal to WAL mode (got {mode})")


def _create_schema(conn: sqlite3.Connection, identity: SessionIdentity) -> None:
    # one transaction: a crash leaves either no tables (treated as new) or the full schema
    conn.execute("BEGIN IMMEDIATE")
    try:
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                         [("app", APP_NAME), ("schema_version", str(SCHEMA_VERSION))])
        conn.execute(
            "INSERT INTO session (id, session_id, created_at, mode, exchange, symbol, timeframe, model_path,"
            " model_sha256, config_hash) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (uuid.uuid4().hex[:12], _now_ms(), identity.mode, identity.exchange, identity.symbol,
             identity.timeframe, identity.model_path, identity.model_sha256, identity.config_hash))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _write_error(path: Path, exc: BaseException) -> JournalError:
    """One line for a write the disk refused (full, read-only, I/O error)."""
    return JournalError(f"{path}: cannot write the journal ({exc}); the session stops here with nothing "
                        "half-written: free disk space or fix the folder's permissions, then start it again")


def _create_whole(path: Path, identity: SessionIdentity) -> None:
    """Create a journal whole: schema and session row committed in a temporary sibling
    (owner-only permissions), then renamed into place; a failure leaves nothing behind."""
    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        conn = sqlite3.connect(str(tmp), isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = DELETE")
            conn.execute("PRAGMA synchronous = FULL")
            _create_schema(conn, identity)
            conn.execute("PRAGMA journal_mode = WAL")
        finally:
            conn.close()
        if path.exists() and path.stat().st_size > 0:
            raise JournalError(f"{path}: appeared while the journal was being created; not replacing it")
        os.replace(tmp, path)  # a 0-byte file (nothing to lose) is replaced, anything else refused above
    except (OSError, sqlite3.Error) as exc:
        what = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise JournalError(f"{path}: cannot create the journal ({what}); nothing was created") from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _acquire_lock(path: Path) -> int | None:
    if fcntl is None:  # pragma: no cover
        return None
    lock_path = path.with_name(path.name + ".lock")
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise JournalError(f"{path}: cannot create its lock file ({exc.strerror or exc}); nothing was "
                               "created") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise JournalError(f"{path}: already open by another session (pid {holder}); "
                               "one session per journal") from None
        try:  # a closing session unlinks the lock file: make sure ours is the one at the path
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except OSError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _release_lock(fd: int | None, path: Path | None = None) -> None:
    """Release the session lock; with ``path`` (a clean close) the lock file goes too."""
    if fd is None or fcntl is None:
        return
    try:
        if path is not None:
            try:
                os.unlink(path.with_name(path.name + ".lock"))
            except OSError:
                pass
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
