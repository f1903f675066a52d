"""Order vocabulary shared by the exchange adapters and the session journal.

Statuses, order roles, client order ids and the journal's time unit live here, below both
the live broker (:mod:`brokers.ccxt_broker`, which journals every intent before it sends)
and the journal itself (:mod:`sessions.journal`), so neither imports the other's package
the wrong way.
"""
from __future__ import annotations

import datetime as _dt
import re
from typing import Any, Protocol

import numpy as np

from core.errors import NtsError

TERMINAL_STATUSES = frozenset({"closed", "canceled", "expired", "rejected"})
# Order roles and their one-letter code in client order ids (see deterministic_client_id).
ROLE_CODES: dict[str, str] = {
    "entry": "e", "exit": "x", "take_profit": "t", "stop_loss": "s", "flatten": "f", "rebalance": "r",
}


class JournalError(NtsError):
    """The journal refused a file or a write (damaged file, other session, conflicting record)."""


def to_ms(value: Any, name: str = "time") -> int:
    """UTC epoch milliseconds from an int (taken as ms), a datetime (naive = UTC) or a pandas
    Timestamp. Floats and bools are refused: seconds-vs-milliseconds must not be guessed."""
    if isinstance(value, (bool, np.bool_)):
        raise JournalError(f"{name}: expected epoch milliseconds or a datetime, got a bool")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, _dt.datetime):  # pandas.Timestamp is a datetime subclass
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        # integer arithmetic: float timestamps() can be off by one ms
        delta = value - _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    if isinstance(value, np.datetime64):
        return int(value.astype("datetime64[ms]").astype(np.int64))
    raise JournalError(f"{name}: expected epoch milliseconds (int) or a datetime, got {type(value).__name__} {value!r}")


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    if n == 0:
        return "0"
    out = []
    while n:
        n, r = divmod(n, 36)
        out.append(digits[r])
    return "".join(reversed(out))


def deterministic_client_id(session_id: str, bar_time: Any, role: str, attempt: int = 0) -> str:
    """Client order id for the order of ``role`` decided on ``bar_time``, ``attempt`` n.

    Format: ``nts-<first 8 of session id>-<bar open in epoch minutes, base 36>-<role code><attempt
    base 36>``, e.g. ``nts-3f9a1c2e-rz1xq0-e0`` (at most 23 characters; Binance accepts up to 36 of
    ``[.A-Z:/a-z0-9_-]``). The same inputs always give the same id, so a session that restarts
    on the same bar asks the exchange "do you have this id?" instead of sending a second order.
    ``attempt`` counts re-sends after an order was definitively rejected or canceled.
    Role codes: :data:`ROLE_CODES`. Bars are whole minutes (every ccxt timeframe is).
    """
    if not re.fullmatch(r"[0-9a-f]{8,}", str(session_id)):
        raise JournalError(f"session id {session_id!r}: expected at least 8 lowercase hex digits")
    if role not in ROLE_CODES:
        raise JournalError(f"role {role!r}: expected one of {', '.join(ROLE_CODES)}")
    if not isinstance(attempt, (int, np.integer)) or isinstance(attempt, bool) or not 0 <= attempt < 36 ** 2:
        raise JournalError(f"attempt {attempt!r}: expected an int in 0..{36 ** 2 - 1}")
    ms = to_ms(bar_time, "bar_time")
    if ms < 0 or ms % 60_000:
        raise JournalError(f"bar_time {ms}: client ids need a bar open at a whole UTC minute")
    return f"nts-{session_id[:8]}-{_base36(ms // 60_000)}-{ROLE_CODES[role]}{_base36(int(attempt))}"


class OrderJournal(Protocol):
    """What the live broker needs of a session journal (:class:`sessions.journal.Journal`
    implements it): every intent is written before its send, every answer after it."""

    session: Any

    def atomic(self) -> Any: ...
    def intent(self, client_id: str) -> Any: ...
    def intents(self, *args: Any, **kwargs: Any) -> list[Any]: ...
    def fills(self, *args: Any, **kwargs: Any) -> list[Any]: ...
    def record_intent(self, *args: Any, **kwargs: Any) -> Any: ...
    def record_ack(self, *args: Any, **kwargs: Any) -> Any: ...
    def record_cancel(self, *args: Any, **kwargs: Any) -> Any: ...
    def record_order_status(self, *args: Any, **kwargs: Any) -> Any: ...
    def record_fill(self, *args: Any, **kwargs: Any) -> Any: ...
    def record_event(self, *args: Any, **kwargs: Any) -> Any: ...
