"""Round trips: fills -> trades, shared by every engine (backtrader's FillLog, the reference
simulator, paper and live sessions), so a trades table means the same thing everywhere."""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

TRADE_COLUMNS: tuple[str, ...] = (
    "entry_time", "exit_time", "side", "size", "entry_price", "exit_price", "entry_bar", "exit_bar",
    "hold_bars", "pnl_gross", "fees", "pnl_net", "return_net", "exit_kind", "entry_kind", "status")
FILL_COLUMNS: tuple[str, ...] = ("time", "side", "size", "price", "value", "commission", "order_type", "kind", "ref")


def _bar_of(bars: pd.DatetimeIndex, t: pd.Timestamp) -> int:
    """Index of the bar that opens at (or first after) ``t``."""
    return int(bars.searchsorted(t, side="left"))


def _new_trade(f: Any, qty: float, bars: pd.DatetimeIndex) -> dict:
    """The running totals of a trade opened by fill ``f`` (``qty``: its signed opening part)."""
    return {"entry_time": f.time, "side": "long" if qty > 0 else "short", "size": 0.0,
            "entry_cost": 0.0, "exit_proceeds": 0.0, "closed": 0.0, "fees": 0.0,
            "entry_bar": _bar_of(bars, f.time), "entry_kind": f.kind}


def _trade_row(cur: dict, t: pd.Timestamp, kind: str, status: str, bars: pd.DatetimeIndex) -> dict:
    """The :data:`TRADE_COLUMNS` row of the trade ``cur`` closed (or marked) at ``t``."""
    size = cur["size"]
    entry_px = cur["entry_cost"] / size
    exit_px = cur["exit_proceeds"] / size
    sign = 1.0 if cur["side"] == "long" else -1.0
    gross = sign * (exit_px - entry_px) * size
    fees = cur["fees"]
    return {
        "entry_time": cur["entry_time"], "exit_time": t, "side": cur["side"], "size": size,
        "entry_price": entry_px, "exit_price": exit_px, "entry_bar": cur["entry_bar"],
        "exit_bar": _bar_of(bars, t), "hold_bars": _bar_of(bars, t) - cur["entry_bar"],
        "pnl_gross": gross, "fees": fees, "pnl_net": gross - fees,
        "return_net": (gross - fees) / cur["entry_cost"] if cur["entry_cost"] else math.nan,
        "exit_kind": kind, "entry_kind": cur["entry_kind"], "status": status,
    }


def round_trips(fills: pd.DataFrame, bar_times: pd.DatetimeIndex, last_close: float | None = None) -> pd.DataFrame:
    """Group fills into trades: a trade opens when the position leaves 0 and closes when it
    returns to 0 (a fill that flips the sign closes one trade and opens the next).

    ``bar_times`` (the data's bar open times) turns fill times into bar indices for
    ``hold_bars``. A trade still open at the end has ``status='open'`` and is marked at
    ``last_close``. ``fills`` has the columns :data:`FILL_COLUMNS` (``size`` signed: buys
    positive), in execution order.
    """
    rows: list[dict] = []
    bars = pd.DatetimeIndex(bar_times)
    pos = 0.0
    cur: dict | None = None
    eps = 1e-12
    for f in fills.itertuples(index=False):
        qty = f.size  # signed: buys positive, sells negative
        while abs(qty) > eps:
            if abs(pos) <= eps:  # opening
                cur = _new_trade(f, qty, bars)
            same_dir = (pos >= 0 and qty > 0) or (pos <= 0 and qty < 0)
            if same_dir or abs(pos) <= eps:
                share = 1.0
                cur["size"] += abs(qty)
                cur["entry_cost"] += abs(qty) * f.price
                cur["fees"] += f.commission * share
                pos += qty
                qty = 0.0
            else:  # reducing / closing
                take = min(abs(qty), abs(pos))
                share = take / abs(f.size)
                cur["exit_proceeds"] += take * f.price
                cur["closed"] += take
                cur["fees"] += f.commission * share
                step = math.copysign(take, qty)
                pos += step
                qty -= step
                if abs(pos) <= eps:
                    pos = 0.0
                    rows.append(_trade_row(cur, f.time, f.kind, "closed", bars))
                    cur = None
    if cur is not None and abs(pos) > eps:
        # Open at the end: mark the unclosed part at the last close.
        px = last_close if last_close is not None else math.nan
        cur["exit_proceeds"] += abs(pos) * px
        rows.append(_trade_row(cur, bars[-1] if len(bars) else cur["entry_time"], "open", "open", bars))
    return pd.DataFrame(rows, columns=list(TRADE_COLUMNS))
