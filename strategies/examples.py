"""Example user strategies: each overrides one vectorised hook of TCNStrategy.

Hooks take whole arrays over the bars (``bars``: the OHLCV frame, UTC ``DatetimeIndex``) and
return one value per bar; a value at bar t may use bars up to t only (``nts strategy check``
proves it). Run one with ``nts backtest|sweep|paper --strategy night_only ...``; your own as
``--strategy mypkg.mymodule:MyStrategy`` or ``--strategy path/to/file.py:MyStrategy``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from strategies.tcn import TCNStrategy


class NightOnly(TCNStrategy):
    """Enter only between 00:00 and 06:00 UTC (bar open time)."""

    def entry_allowed(self, bars: pd.DataFrame) -> np.ndarray:
        return bars.index.hour < 6


class CalmOnly(TCNStrategy):
    """Enter only while the last day's realised volatility is at or below its trailing
    week's average (a volatility filter; needs a week of history before its first entry)."""

    params = (("vol_bars", 96), ("mean_bars", 672))

    def entry_allowed(self, bars: pd.DataFrame) -> np.ndarray:
        r = np.log(bars["close"]).diff()
        vol = r.rolling(self.p.vol_bars, min_periods=self.p.vol_bars).std()
        mean = vol.rolling(self.p.mean_bars, min_periods=self.p.mean_bars).mean()
        return (vol <= mean).to_numpy()  # NaN compares False: no entry in the warm-up


class TrendFollow(TCNStrategy):
    """Take long signals only above the close's EMA and short ones only below it (a trend
    filter; on spot, where shorts are off, it trades longs in up-trends only)."""

    params = (("ema_bars", 200),)

    def signal(self, p: np.ndarray, bars: pd.DataFrame) -> np.ndarray:
        s = super().signal(p, bars)
        close = bars["close"]
        up = (close > close.ewm(span=self.p.ema_bars, adjust=False).mean()).to_numpy()
        return np.where(up, np.maximum(s, 0.0), np.minimum(s, 0.0))
