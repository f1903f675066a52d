"""backtrader analyzers that export what the reports need: the equity curve and every fill.
:func:`round_trips` (fills -> trades) lives in :mod:`core.trades`, shared with the reference
simulator; it is re-exported here for callers."""
from __future__ import annotations

import backtrader as bt
import numpy as np
import pandas as pd

from core.timeframes import bt_num_to_ns, bt_num_to_timestamp
from core.trades import FILL_COLUMNS, round_trips  # noqa: F401  (re-exported)


class EquityCurve(bt.Analyzer):
    """Per bar (after the bar's orders): time, equity, cash, position size and close."""

    def start(self) -> None:
        self._t: list[float] = []
        self._value: list[float] = []
        self._cash: list[float] = []
        self._pos: list[float] = []
        self._close: list[float] = []

    def next(self) -> None:
        self._record()

    def prenext(self) -> None:  # record the warm-up bars too (flat, equity = cash)
        self._record()

    def _record(self) -> None:
        broker = self.strategy.broker
        data = self.strategy.data
        self._t.append(data.datetime[0])
        self._value.append(broker.getvalue())
        self._cash.append(broker.getcash())
        self._pos.append(self.strategy.getposition(data).size)
        self._close.append(data.close[0])

    def get_analysis(self) -> pd.DataFrame:
        idx = pd.DatetimeIndex(bt_num_to_ns(np.asarray(self._t)), tz="UTC", name="timestamp")
        return pd.DataFrame({"equity": self._value, "cash": self._cash, "position": self._pos,
                             "close": self._close}, index=idx)


class FillLog(bt.Analyzer):
    """Every completed order: time, side, size, average price, value, commission, order
    type and the strategy's ``kind`` tag (entry, stop, take_profit, time, risk, kill)."""

    def start(self) -> None:
        self._rows: list[dict] = []

    def notify_order(self, order: bt.Order) -> None:
        if order.status != order.Completed:
            return
        ex = order.executed
        self._rows.append({
            "time": bt_num_to_timestamp(ex.dt),
            "side": "buy" if order.isbuy() else "sell",
            "size": float(ex.size),
            "price": float(ex.price),
            "value": float(ex.size * ex.price),
            "commission": float(ex.comm),
            "order_type": order.getordername(),
            "kind": str(order.info.get("kind", "") or ""),
            "ref": order.ref,
        })

    def get_analysis(self) -> pd.DataFrame:
        return pd.DataFrame(self._rows, columns=list(FILL_COLUMNS))
