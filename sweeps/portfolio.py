"""vectorbt portfolios of the rows a sweep report shows, built from the simulator's fills.

The sweep's numbers come from :func:`core.simulator.simulate_kernel` (the strategy, trade for
trade as ``nts backtest``). For the rows the report shows (the top rows and the rows the
walk-forward folds chose) each fill -- its bar, signed size, price and the fee rate of its
order type (maker for limit orders, taker otherwise) -- is executed again through vectorbt's
own order primitive (:func:`vectorbt.portfolio.nb.process_order_nb`: vectorbt's cash, fee and
position arithmetic and its order records), and a ``vbt.Portfolio`` is built from those
records. vectorbt then supplies what it is good at: trades, drawdowns, ``stats()`` and plots.

Check: vectorbt's value of every row equals the kernel's equity (final value within
:data:`VALUE_RTOL` relative, also reported bar by bar). A difference means the two disagree on
a fill, so :func:`build_portfolios` raises instead of reporting vectorbt figures of a different
run.

Why not ``Portfolio.from_orders``: it takes at most one order per bar and column, and a bar can
hold two fills here (an entry filled at the open and its stop later in the same bar). Why not
vectorbt for every row: measured on 85k bars x 1,000 columns its simulators plus its pandas
metrics take 20-60 s and 4-7 GB (issue 10); the kernel reduces each row on the fly instead.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
import pandas as pd
import vectorbt as vbt
from vectorbt.portfolio.enums import Direction, ProcessOrderState, log_dt, order_dt
from vectorbt.portfolio.nb import order_nb, process_order_nb

from core.simulator import SimResult
from core.timeframes import timeframe_seconds
from sweeps.engine import SweepData, SweepResult

VALUE_RTOL = 1e-9
YEAR_FREQ = "365 days"  # strategies.metrics' year (bars_per_year uses 365 days)
# vectorbt's ratios of a row that never traded, set to the sweep's convention (sweeps.overfit)
FLAT_RATIOS = {"Sharpe Ratio": 0.0, "Sortino Ratio": 0.0, "Calmar Ratio": np.nan, "Omega Ratio": np.nan}


@numba.njit(cache=False, nogil=True)
def _replay_nb(close, col, bars, sizes, prices, rates, cash0, order_records, oidx0):
    """Execute one column's fills, bar by bar, with vectorbt's ``process_order_nb`` and return
    (next order index, value per bar). Not cached: it inlines vectorbt's functions, which
    numba's cache would not re-check after a vectorbt upgrade."""
    log_records = np.zeros(0, dtype=log_dt)
    state = ProcessOrderState(cash=cash0, position=0.0, debt=0.0, free_cash=cash0, val_price=np.nan, value=cash0,
                              oidx=oidx0, lidx=0)
    n = close.shape[0]
    value = np.empty(n)
    k = 0
    for i in range(n):
        while k < bars.shape[0] and bars[k] == i:
            order = order_nb(size=sizes[k], price=prices[k], fees=rates[k], direction=Direction.Both,
                             allow_partial=False, raise_reject=True)
            _res, state = process_order_nb(i, col, col, state, True, order, order_records, log_records)
            k += 1
        v = state.cash + state.position * close[i]
        value[i] = v
        state = ProcessOrderState(cash=state.cash, position=state.position, debt=state.debt,
                                  free_cash=state.free_cash, val_price=close[i], value=v, oidx=state.oidx,
                                  lidx=state.lidx)
    return state.oidx, value


@dataclass
class PortfolioSet:
    """vectorbt portfolio over the span for the rows shown, one column per row."""

    portfolio: Any                # vbt.Portfolio, columns = row names
    rows: list[int]               # sweep rows, in column order
    sims: dict[int, SimResult]    # the kernel's run of each row (fills, trades, equity)
    final_rel_diff: dict[int, float]  # |vbt final value / kernel final equity - 1|
    max_rel_diff: dict[int, float]    # the same, largest over every bar of the span
    _stats: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def worst_final_diff(self) -> float:
        """Largest final-value difference over the rows (0 with no rows)."""
        return max(self.final_rel_diff.values(), default=0.0)

    @property
    def worst_bar_diff(self) -> float:
        """Largest bar-by-bar value difference over the rows."""
        return max(self.max_rel_diff.values(), default=0.0)

    def column(self, row: int) -> str:
        """The portfolio column of sweep row ``row``."""
        return str(self.portfolio.wrapper.columns[self.rows.index(row)])

    def stats(self) -> pd.DataFrame:
        """vectorbt's ``stats()`` of every column, one column per row (computed once: it is the
        slow part of a report).

        A row without a fill (flat) gets Sharpe and Sortino 0, as in the sweep's table and
        statistics (vectorbt divides 0 by 0 there and shows inf), and no Calmar or Omega ratio
        (NaN: no drawdown, no loss)."""
        if self._stats is None:
            out = {}
            for row in self.rows:
                col = self.column(row)
                st = self.portfolio.stats(column=col, settings=dict(year_freq=YEAR_FREQ))
                if len(self.sims[row].fills) == 0:
                    st = st.astype(object)
                    for name, value in FLAT_RATIOS.items():
                        if name in st.index:
                            st[name] = value
                out[col] = st
            self._stats = pd.DataFrame(out)
        return self._stats


def build_portfolios(result: SweepResult, rows: Sequence[int]) -> PortfolioSet:
    """Re-run ``rows`` with the simulator, replay their fills through vectorbt and check that
    vectorbt's value equals the kernel's equity (raises AssertionError beyond
    :data:`VALUE_RTOL`)."""
    rows = list(dict.fromkeys(int(r) for r in rows))  # unique, in order
    data = result.data
    first, last = data.inputs.first, data.inputs.last
    close = np.ascontiguousarray(data.inputs.close[first:last + 1])
    sims = {r: result.simulate_row(r) for r in rows}
    n_orders = sum(len(s.fills) for s in sims.values())
    records = np.zeros(max(n_orders, 1), dtype=order_dt)
    oidx = 0
    values: dict[int, np.ndarray] = {}
    for col, r in enumerate(rows):
        sim = sims[r]
        policy = result.row_policy(r)
        f = sim.fills
        bars = f["bar"].to_numpy(dtype=np.int64) - first
        if len(bars) and (bars.min() < 0 or bars.max() > last - first):
            raise AssertionError(f"row {r}: a fill lies outside the span")  # decisions start inside it
        rates = np.where(f["maker"].to_numpy(dtype=bool), policy.maker_fee, policy.taker_fee)
        oidx, values[r] = _replay_nb(close, col, np.ascontiguousarray(bars),
                                     np.ascontiguousarray(f["size"].to_numpy(dtype=np.float64)),
                                     np.ascontiguousarray(f["price"].to_numpy(dtype=np.float64)),
                                     np.ascontiguousarray(rates, dtype=np.float64), float(data.inputs.cash), records,
                                     oidx)
    index = data.span_index
    columns = pd.Index([result.names[r] for r in rows], name="row")
    freq = pd.Timedelta(seconds=timeframe_seconds(data.timeframe))
    wrapper = vbt.ArrayWrapper(index, columns, ndim=2, freq=freq)
    close2d = np.repeat(close[:, None], len(rows), axis=1)
    pf = vbt.Portfolio(wrapper, close2d, records[:oidx], np.zeros(0, dtype=log_dt), init_cash=np.full(len(rows), float(data.inputs.cash)),
                       cash_sharing=False)
    vbt_value = pf.value().to_numpy() if rows else np.zeros((len(index), 0))
    final_diff, bar_diff = {}, {}
    for col, r in enumerate(rows):
        kernel = sims[r].equity["equity"].to_numpy()[first:last + 1]
        if len(kernel) != len(index):
            raise AssertionError(f"row {r}: the simulator stopped early")
        mine = vbt_value[:, col]
        final_diff[r] = abs(mine[-1] / kernel[-1] - 1.0)
        bar_diff[r] = float(np.max(np.abs(mine / kernel - 1.0)))
        replay = abs(values[r][-1] / kernel[-1] - 1.0)
        worst = max(final_diff[r], replay)
        if not worst <= VALUE_RTOL or math.isnan(worst):
            raise AssertionError(f"row {r}: vectorbt's final value {mine[-1]!r} differs from the kernel's equity "
                                 f"{kernel[-1]!r} by {worst:.3g} (relative), above {VALUE_RTOL:g}")
    return PortfolioSet(portfolio=pf, rows=rows, sims=sims, final_rel_diff=final_diff, max_rel_diff=bar_diff)


def report_rows(result: SweepResult) -> list[int]:
    """The rows a report shows: the top rows by Sharpe (and the best rows that trade, when some
    rows never trade), then each fold's in-sample choice."""
    rows = [int(r) for r in result.top.index]
    if result.flat_rows:  # flat rows may fill the top: show the best rows that trade too
        rows += [int(r) for r in result.top_trading.index]
    if result.walk_forward is not None and not result.walk_forward.table.empty:
        rows += [int(r) for r in result.walk_forward.table["row"]]
    return list(dict.fromkeys(rows))


def buy_and_hold_value(data: SweepData) -> pd.Series:
    """Buy-and-hold equity over the span (strategies.metrics.buy_and_hold's rule)."""
    close = data.span_close
    return data.inputs.cash * close / close.iloc[0]
