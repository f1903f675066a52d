"""Example user strategies: each overrides one vectorised hook of TCNStrategy.

Hooks take whole arrays over the bars (``bars``: the OHLCV frame, UTC ``DatetimeIndex``) and
return one value per bar; a value at bar t may use bars up to t only (``nts strategy check``
proves it). Each declares ``hook_lookback``, the trailing bars its hook needs, so paper and
live evaluate it over that many bars only (the check verifies the number too). Run one with
``nts backtest|sweep|paper --strategy night_only ...``; your own as ``--strategy
mypkg.mymodule:MyStrategy`` or ``--strategy path/to/file.py:MyStrategy``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from strategies.tcn import TCNStrategy


class NightOnly(TCNStrategy):
    """Enter only between 00:00 and 06:00 UTC (bar open time)."""

    hook_lookback = 1  # the bar's own time

    def entry_allowed(self, bars: pd.DataFrame) -> np.ndarray:
        return bars.index.hour < 6


class CalmOnly(TCNStrategy):
    """Enter only while the last day's realised volatility is at or below its trailing
    week's average (a volatility filter; needs a week of history before its first entry)."""

    params = (("vol_bars", 96), ("mean_bars", 672))

    @property
    def hook_lookback(self) -> int:
        """A return needs the previous close, a volatility ``vol_bars`` returns, the mean
        ``mean_bars`` volatilities: ``vol_bars + mean_bars`` bars in all."""
        return self.p.vol_bars + self.p.mean_bars

    def entry_allowed(self, bars: pd.DataFrame) -> np.ndarray:
        r = np.log(bars["close"]).diff()
        vol = r.rolling(self.p.vol_bars, min_periods=self.p.vol_bars).std()
        mean = vol.rolling(self.p.mean_bars, min_periods=self.p.mean_bars).mean()
        return (vol <= mean).to_numpy()  # NaN compares False: no entry in the warm-up


class TrendFollow(TCNStrategy):
    """Take long signals only above the close's EMA and short ones only below it (a trend
    filter; on spot, where shorts are off, it trades longs in up-trends only)."""

    params = (("ema_bars", 200),)

    @property
    def hook_lookback(self) -> int:
        """An EMA never forgets, but the weight of bars older than 10 spans is below
        ``(1 - 2 / (span + 1)) ** (10 * span)`` (< 3e-9 for any span >= 10): the EMA over the
        last 10 spans differs from the whole history's by that fraction of the gap between the
        first close and the EMA, far below a tick, so the above/below test agrees (the check
        verifies it on the bars it samples)."""
        return 10 * self.p.ema_bars

    def signal(self, p: np.ndarray, bars: pd.DataFrame) -> np.ndarray:
        s = super().signal(p, bars)
        close = bars["close"]
        up = (close > close.ewm(span=self.p.ema_bars, adjust=False).mean()).to_numpy()
        return np.where(up, np.maximum(s, 0.0), np.minimum(s, 0.0))
