"""Example user strategies: each is a few lines on top of TCNStrategy.

Run one with ``nts backtest --strategy night_only ...`` or, for your own module,
``nts backtest --strategy mypkg.mymodule:MyStrategy ...``.
"""
from __future__ import annotations

from strategies.tcn import TCNStrategy


class NightOnly(TCNStrategy):
    """Trade the TCN signal only between 00:00 and 06:00 UTC (bar open time)."""

    def signal(self, p: float) -> float:
        return super().signal(p) if self.data.datetime.datetime(0).hour < 6 else 0.0
