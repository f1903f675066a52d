"""Timeframe arithmetic and backtrader date numbers: the one definition every layer uses.

backtrader stores times as float days since 0001-01-01 (plus one); the conversions live
here (pure arithmetic, no backtrader import) so that models, indicators, strategies and
brokers share them without importing upward.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from core.errors import ConfigError

_TIMEFRAME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_TIMEFRAME_S = 4 * 604800  # no exchange offers candles longer than a month
# backtrader's float-day number of 1970-01-01 00:00 UTC
BT_EPOCH = 719163.0


def timeframe_seconds(timeframe: str) -> int:
    """Seconds in a ccxt-style timeframe string such as ``15m`` or ``1h``."""
    tf = str(timeframe).strip()
    if len(tf) < 2 or tf[-1] not in _TIMEFRAME_UNITS or not tf[:-1].isascii() or not tf[:-1].isdigit() \
            or int(tf[:-1]) <= 0:
        raise ConfigError(f"invalid timeframe {timeframe!r}: expected e.g. 1m, 15m, 1h, 1d")
    seconds = int(tf[:-1]) * _TIMEFRAME_UNITS[tf[-1]]
    if seconds > MAX_TIMEFRAME_S:  # beyond it, bar arithmetic in ns overflows int64 sooner or later
        raise ConfigError(f"invalid timeframe {timeframe!r}: longer than 4 weeks")
    return seconds


def bars_per_day(timeframe: str = "15m") -> float:
    """Number of bars in 24 hours (96 for 15m)."""
    return 86400.0 / timeframe_seconds(timeframe)


def bars_per_year(timeframe: str = "15m") -> float:
    """Bars in 365 days (35,040 for 15m)."""
    return 365.0 * 86400.0 / timeframe_seconds(timeframe)


def bt_num_to_ns(values: np.ndarray) -> np.ndarray:
    """backtrader float-day timestamps -> int64 ns since the epoch, rounded to the second
    (the float carries ~10 us of noise; bars sit on whole seconds)."""
    secs = np.rint((np.asarray(values, dtype="float64") - BT_EPOCH) * 86400.0)
    return secs.astype("int64") * 1_000_000_000


def bt_num_to_timestamp(value: float) -> pd.Timestamp:
    """One backtrader float-day timestamp as a UTC pandas Timestamp."""
    return pd.Timestamp(int(round((value - BT_EPOCH) * 86400.0)), unit="s", tz="UTC")


def ns_to_bt_num(ns: np.ndarray) -> np.ndarray:
    """int64 ns since the epoch -> backtrader float-day numbers (inverse of bt_num_to_ns)."""
    return np.asarray(ns, dtype="int64") / 86_400e9 + BT_EPOCH


def timestamp_to_bt_num(ts) -> float:
    """A timestamp (naive = UTC) as a backtrader float-day number."""
    t = pd.Timestamp(ts)
    t = t.tz_localize("UTC") if t.tz is None else t.tz_convert("UTC")
    return float(t.value / 86_400e9 + BT_EPOCH)
