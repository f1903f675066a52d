"""What the server scores with, built once: the bundle, the policy, the risk cap, the warm-up.

:func:`build_setup` is the ONE place that turns (config, bundle path, barrier choice) into
the objects ``/predict`` applies, through the same helpers ``nts backtest`` and ``nts paper``
use (:func:`strategies.base.strategy_params`, :func:`strategies.backtest.warmup_bars_for`).
When the frozen run specification lands, this function is what it replaces.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import Config
from core.costs import Costs
from core.policy import Policy
from core.risk import RiskManager
from indicators.tcn_indicator import as_bundle
from strategies.backtest import warmup_bars_for
from strategies.base import strategy_params


@dataclass(frozen=True)
class ServeSetup:
    """Everything ``/predict`` needs, resolved once at start (see module docstring)."""

    cfg: Config
    bundle: Any            # models.bundle.ModelBundle (or the scorer's drop-in)
    policy: Policy         # the policy nts backtest trades with this config and bundle
    risk: RiskManager      # only its weight cap is used: breakers are session state
    warmup_bars: int       # the one warm-up: bars every request must carry at least
    barriers: str          # "bundle" or "config"

    @property
    def timeframe(self) -> str:
        """Bar length of the bundle, e.g. ``15m``."""
        return str(self.bundle.timeframe)

    @property
    def model_id(self) -> str:
        """``<bundle folder>@<first 12 hex digits of the weights' sha256>``."""
        path = getattr(self.bundle, "path", None)
        name = Path(path).name if path else "bundle"
        return f"{name}@{str(self.bundle.meta.get('weights_sha256', ''))[:12]}"


def build_setup(cfg: Config, model: str | Path | Any, barriers: str = "bundle") -> ServeSetup:
    """Load the bundle and build the policy and risk cap exactly as ``run_backtest`` does
    (``strategy_params(cfg, bundle, barriers, costs=Costs.from_config(cfg))``)."""
    bundle = as_bundle(model)
    params = strategy_params(cfg, bundle=bundle, barriers=barriers, costs=Costs.from_config(cfg))
    return ServeSetup(cfg=cfg, bundle=bundle, policy=params["policy"], risk=params["risk"],
                      warmup_bars=warmup_bars_for(bundle, cfg), barriers=barriers)
