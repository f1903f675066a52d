"""Dates on the command line: one meaning everywhere (download, backtest, and later sweeps,
paper and live).

A span is half-open, ``[start, end)`` in UTC: a bar belongs to it when its OPEN time ``t``
satisfies ``start <= t < end``.

* ``YYYY-MM-DD`` as a start means that midnight; as an END it means the END of that day
  (the next midnight), so ``--end 2024-10-31`` includes every bar of 31 October.
* A full timestamp (``2024-10-31T12:00``, ``2024-10-31 12:00:00+02:00``, ``...Z``) is that
  instant: as an end, a bar opening exactly then is not included.
* No offset means UTC. ``now`` is the current instant, ``today`` the current UTC day (as an
  end: its end).
* Anything else - ``2024``, ``2024-10``, ``31/10/2024``, epoch numbers in text - is refused
  rather than guessed. Library callers may pass a ``pd.Timestamp``/``datetime`` (an instant)
  or an ``int`` (epoch milliseconds).
"""
from __future__ import annotations

import datetime as _dt
import re
from typing import Any

import numpy as np
import pandas as pd

from core.errors import ConfigError

_DATE = r"\d{4}-\d{2}-\d{2}"
_DATE_ONLY = re.compile(rf"^{_DATE}$")
_DATETIME = re.compile(rf"^{_DATE}[T ]\d{{2}}:\d{{2}}(?::\d{{2}}(?:\.\d{{1,9}})?)?(?:Z|[+-]\d{{2}}:?\d{{2}})?$")
FORMATS = "YYYY-MM-DD or an ISO date-time such as 2024-10-31T12:00 (UTC unless an offset is given)"


def parse_utc(value: Any, *, end: bool = False, what: str = "time") -> pd.Timestamp | None:
    """The UTC instant ``value`` names (see the module docstring); None stays None.

    ``end=True`` reads a date alone (and ``today``) as the end of that day. ``what`` names the
    option in the one-line ConfigError (``--end``)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{what}: {value!r} is not a time ({FORMATS})")
    if isinstance(value, (int, np.integer)):
        return _checked(pd.Timestamp(int(value), unit="ms", tz="UTC"), value, what)
    if isinstance(value, (pd.Timestamp, _dt.datetime, np.datetime64)):
        ts = pd.Timestamp(value)
        if ts is pd.NaT:
            raise ConfigError(f"{what}: not a time (NaT)")
        ts = ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")
        return _checked(ts, value, what)
    if isinstance(value, _dt.date):
        value = value.isoformat()
    if not isinstance(value, str):
        raise ConfigError(f"{what}: {value!r} is not a time ({FORMATS})")
    text = value.strip()
    word = text.lower()
    now = pd.Timestamp.now(tz="UTC")
    if word == "now":
        return now
    if word == "today":
        day = now.normalize()
        return day + pd.Timedelta(days=1) if end else day
    if not (_DATE_ONLY.match(text) or _DATETIME.match(text)):
        raise ConfigError(f"{what}: cannot read {value!r} as a time (expected {FORMATS})")
    try:
        ts = pd.Timestamp(text)
    except (ValueError, TypeError, OverflowError) as exc:  # 2024-02-30, 25:00, year 99999
        first = (str(exc).splitlines() or [""])[0]
        raise ConfigError(f"{what}: {value!r} is not a valid date ({first[:120]})") from None
    ts = ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")
    if end and _DATE_ONLY.match(text):
        ts = ts + pd.Timedelta(days=1)  # the whole day: up to the next midnight, exclusive
    return _checked(ts, value, what)


def _checked(ts: pd.Timestamp, value: Any, what: str) -> pd.Timestamp:
    # pandas' nanosecond range (1677 .. 2262): every later step works in ns
    try:
        return ts.as_unit("ns")
    except (OverflowError, ValueError, pd.errors.OutOfBoundsDatetime):
        raise ConfigError(f"{what}: {value!r} is outside the supported years 1678 .. 2261") from None


def parse_span(start: Any, end: Any, *, start_name: str = "--start",
               end_name: str = "--end") -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """``(start, end)`` of a half-open span; None where not given. Refuses an empty span
    (start not before end) with one line that shows both instants."""
    s = parse_utc(start, what=start_name)
    e = parse_utc(end, end=True, what=end_name)
    if s is not None and e is not None and s >= e:
        raise ConfigError(f"empty span: {start_name} {s} is not before {end_name} {e} "
                          "(spans are [start, end); a date alone as the end includes that day)")
    return s, e


def to_epoch_ms(ts: pd.Timestamp) -> int:
    """Epoch milliseconds of a UTC timestamp (ccxt's unit)."""
    return int(ts.value // 1_000_000)
