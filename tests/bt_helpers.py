"""Helpers for backtrader strategy tests: a stand-in probability line and quick runs."""
from __future__ import annotations

import numpy as np
import pandas as pd

from core.config import RiskConfig
from strategies.base import ModelStrategy
from core.risk import RiskManager

# Breakers that never trip (tests that are not about risk).
LOOSE_RISK = dict(max_drawdown=0.99, daily_loss=0.99, max_volatility=10.0)


class LineStrategy(ModelStrategy):
    """ModelStrategy reading P from a ``prob`` column of the feed and the annualised vol
    forecast from a ``fvol`` column when present (stand-ins for the TCN and ewma_vol_fast)."""

    def make_probability(self):
        return self.data.prob

    def make_vol_forecast(self):
        if "fvol" in self.data.getlinealiases():
            return self.data.fvol
        return super().make_vol_forecast()


def loose_risk(tmp_path, **over) -> RiskManager:
    """A RiskManager whose breakers stay quiet unless overridden; kill file under tmp_path."""
    cfg = RiskConfig(**{**LOOSE_RISK, **over})
    return RiskManager(cfg, kill_switch_file=tmp_path / "KILL")


def with_lines(frame: pd.DataFrame, prob, fvol=None) -> pd.DataFrame:
    """Copy of ``frame`` with ``prob`` (and ``fvol``) columns."""
    out = frame.copy()
    out["prob"] = np.broadcast_to(np.asarray(prob, dtype=float), len(out)).copy()
    if fvol is not None:
        out["fvol"] = np.broadcast_to(np.asarray(fvol, dtype=float), len(out)).copy()
    return out
