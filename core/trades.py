"""Round trips: fills -> trades, shared by every engine (backtrader's FillLog, the reference
simulator, paper and live sessions), so a trades table means the same thing everywhere."""
from __future__ import annotations

import math

import pandas as pd

TRADE_COLUMNS: tuple[str, ...] = (
    "entry_time", "exit_time", "side", "size", "entry_price", "exit_price", "entry_bar", "exit_bar",
    "hold_bars", "pnl_gross", "fees", "pnl_net", "return_net", "exit_kind", "entry_kind", "status")
FILL_COLUMNS: tuple[str, ...] = ("time", "side", "size", "price", "value", "commission", "order_type", "kind", "ref")


def round_trips(fills: pd.DataFrame, bar_times: pd.DatetimeIndex, last_close: float | None = None) -> pd.DataFrame:
    """Group fills into trades: a trade opens when the position leaves 0 and closes when it
    returns to 0 (a fill that flips the sign closes one trade and opens the next).

    ``bar_times`` (the data's bar open times) turns fill times into bar indices for
    ``hold_bars``. A trade still open at the end has ``status='open'`` and is marked at
    ``last_close``. ``fills`` has the columns :data:`FILL_COLUMNS` (``size`` signed: buys
    positive), in execution order.
    """
    cols = list(TRADE_COLUMNS)
    rows: list[dict] = []
    bars = pd.DatetimeIndex(bar_times)
    pos = 0.0
    cur: dict | None = None
    eps = 1e-12

    def bar_of(t: pd.Timestamp) -> int:
        return int(bars.searchsorted(t, side="left"))

    def close_trade(t: pd.Timestamp, kind: str, status: str, price: float | None) -> None:
        assert cur is not None
        size = cur["size"]
        entry_px = cur["entry_cost"] / size
        exit_px = cur["exit_proceeds"] / size if price is None else price
        sign = 1.0 if cur["side"] == "long" else -1.0
        gross = sign * (exit_px - entry_px) * size
        fees = cur["fees"]
        rows.append({
            "entry_time": cur["entry_time"], "exit_time": t, "side": cur["side"], "size": size,
            "entry_price": entry_px, "exit_price": exit_px, "entry_bar": cur["entry_bar"],
            "exit_bar": bar_of(t), "hold_bars": bar_of(t) - cur["entry_bar"],
            "pnl_gross": gross, "fees": fees, "pnl_net": gross - fees,
            "return_net": (gross - fees) / cur["entry_cost"] if cur["entry_cost"] else math.nan,
            "exit_kind": kind, "entry_kind": cur["entry_kind"], "status": status,
        })

    for f in fills.itertuples(index=False):
        qty = f.size  # signed: buys positive, sells negative
        while abs(qty) > eps:
            if abs(pos) <= eps:  # opening
                cur = {"entry_time": f.time, "side": "long" if qty > 0 else "short", "size": 0.0,
                       "entry_cost": 0.0, "exit_proceeds": 0.0, "closed": 0.0, "fees": 0.0,
                       "entry_bar": bar_of(f.time), "entry_kind": f.kind}
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
                    close_trade(f.time, f.kind, "closed", None)
                    cur = None
    if cur is not None and abs(pos) > eps:
        # Open at the end: mark the unclosed part at the last close.
        px = last_close if last_close is not None else math.nan
        remaining = abs(pos)
        cur["exit_proceeds"] += remaining * px
        close_trade(bars[-1] if len(bars) else cur["entry_time"], "open", "open", None)
    return pd.DataFrame(rows, columns=cols)
