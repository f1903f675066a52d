"""Example user strategies: each is a few lines on top of TCNStrategy.

Run one with ``nts backtest --strategy night_only ...`` or, for your own module,
``nts backtest --strategy mypkg.mymodule:MyStrategy ...``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from strategies.tcn import TCNStrategy


class NightOnly(TCNStrategy):
    """Open positions only between 00:00 and 06:00 UTC (bar open time)."""

    def entry_allowed(self, bars: pd.DataFrame) -> np.ndarray:
        return bars.index.hour < 6
