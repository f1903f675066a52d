"""Performance metrics of an equity curve and a trade list (pure functions, no backtrader).

Conventions (stated once):

* Per-bar simple returns of the equity curve, risk-free rate 0.
* **Sharpe** = mean / std (ddof=1) of per-bar returns x ``sqrt(bars_per_year)``; crypto
  trades all year, so ``bars_per_year = 365 x 86400 / bar seconds`` = **35,040** for 15m
  bars, i.e. the factor is ``sqrt(35040)`` ~ 187.2.
* **Sortino** = mean / downside deviation x ``sqrt(bars_per_year)``, downside deviation
  = ``sqrt(mean(min(r, 0)^2))`` over all bars.
* **CAGR** = ``(end / start) ** (1 / years) - 1``, ``years`` = calendar time from the first
  to the last bar (last timestamp - first timestamp) / **365 days** -- the same 365-day year
  as ``bars_per_year``; calendar time, not the bar count, so a data gap does not inflate it.
  ``turnover_per_year`` uses the same calendar years.
* **Max drawdown** = largest ``1 - equity / running peak``.
* **Exposure** = share of bars ending with an open position.
* **Turnover** = traded notional (entries + exits) / mean equity, also per year.
* Win rate / average hold count closed round trips only; hold in bars = index distance
  between the entry fill bar and the exit fill bar, hours = bars x bar length.
* **Buy-and-hold** holds the asset from the first bar's close to the last bar's close,
  fully invested, no fees.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from core.timeframes import bars_per_year, timeframe_seconds


def span_years(index: pd.Index, timeframe: str = "15m") -> float:
    """Calendar years (365 days) from the first to the last timestamp of ``index``; for an
    index without timestamps, the bar count x bar length (no gaps can be seen there)."""
    if len(index) < 2:
        return float("nan")
    if isinstance(index, pd.DatetimeIndex):
        seconds = (index[-1] - index[0]).total_seconds()
    else:
        seconds = (len(index) - 1) * timeframe_seconds(timeframe)
    return seconds / (365.0 * 86400.0)


def _safe(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def equity_metrics(equity: pd.Series, timeframe: str = "15m") -> dict[str, float | None]:
    """Return, Sharpe, Sortino, CAGR and drawdown of an equity curve indexed by bar time."""
    eq = pd.Series(equity, dtype="float64").dropna()
    out: dict[str, float | None] = {
        "start_equity": None, "end_equity": None, "total_return": None, "cagr": None,
        "sharpe": None, "sortino": None, "volatility_ann": None, "max_drawdown": None, "bars": int(len(eq)),
    }
    if len(eq) < 2:
        return out
    values = eq.to_numpy()
    rets = values[1:] / values[:-1] - 1.0
    ann = math.sqrt(bars_per_year(timeframe))
    std = rets.std(ddof=1) if len(rets) > 1 else float("nan")
    downside = math.sqrt(float(np.mean(np.minimum(rets, 0.0) ** 2)))
    years = span_years(eq.index, timeframe)
    total = values[-1] / values[0] - 1.0
    peak = np.maximum.accumulate(values)
    out.update(
        start_equity=float(values[0]),
        end_equity=float(values[-1]),
        total_return=float(total),
        cagr=(_safe((values[-1] / values[0]) ** (1.0 / years) - 1.0) if years > 0 else None)
        if values[-1] > 0 else -1.0,
        sharpe=_safe(rets.mean() / std * ann) if std > 0 else None,
        sortino=_safe(rets.mean() / downside * ann) if downside > 0 else None,
        volatility_ann=_safe(std * ann),
        max_drawdown=float(np.max(1.0 - values / peak)),
    )
    return out


def trade_metrics(trades: pd.DataFrame, timeframe: str = "15m") -> dict[str, Any]:
    """Counts, win rate and holding time of closed round trips (``status == 'closed'``)."""
    closed = trades[trades["status"] == "closed"] if len(trades) else trades
    n = int(len(closed))
    hours_per_bar = timeframe_seconds(timeframe) / 3600.0
    out: dict[str, Any] = {"trades": n, "open_trades": int(len(trades) - n), "win_rate": None,
                           "avg_hold_bars": None, "avg_hold_hours": None, "avg_trade_return": None,
                           "exit_kinds": {}}
    if n:
        out["win_rate"] = float((closed["pnl_net"] > 0).mean())
        out["avg_hold_bars"] = float(closed["hold_bars"].mean())
        out["avg_hold_hours"] = float(closed["hold_bars"].mean() * hours_per_bar)
        out["avg_trade_return"] = float(closed["return_net"].mean())
        out["exit_kinds"] = {str(k): int(v) for k, v in closed["exit_kind"].value_counts().items()}
    return out


def buy_and_hold(close: pd.Series, cash: float) -> pd.Series:
    """Equity of holding ``cash`` worth of the asset from the first close to the last."""
    c = pd.Series(close, dtype="float64")
    return cash * c / c.iloc[0]


def summarize(equity: pd.Series, positions: pd.Series, fills: pd.DataFrame, trades: pd.DataFrame,
              close: pd.Series, cash: float, timeframe: str = "15m") -> dict[str, Any]:
    """All backtest metrics: strategy, trade statistics, costs and buy-and-hold beside them."""
    strat = equity_metrics(equity, timeframe)
    strat.update(trade_metrics(trades, timeframe))
    notional = float(fills["value"].abs().sum()) if len(fills) else 0.0
    mean_eq = float(pd.Series(equity).mean()) if len(equity) else float("nan")
    years = span_years(pd.Series(equity).index, timeframe)
    strat["exposure"] = float((pd.Series(positions) != 0).mean()) if len(positions) else 0.0
    strat["turnover"] = _safe(notional / mean_eq) if mean_eq > 0 else None
    strat["turnover_per_year"] = _safe(notional / mean_eq / years) if mean_eq > 0 and years > 0 else None
    strat["fees_paid"] = float(fills["commission"].sum()) if len(fills) else 0.0
    strat["traded_notional"] = notional
    bh = equity_metrics(buy_and_hold(close, cash), timeframe)
    return {
        "strategy": strat,
        "buy_and_hold": bh,
        "conventions": {
            "bars_per_year": bars_per_year(timeframe),
            "sharpe": f"mean/std of per-bar returns x sqrt({bars_per_year(timeframe):.0f}) ({timeframe} bars, 365-day year, rf=0)",
            "buy_and_hold": "fully invested from first to last close, no fees",
        },
    }
