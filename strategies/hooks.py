"""The hooks a strategy overrides, vectorised over the bars, and the one way to evaluate them.

In the spirit of freqtrade's ``populate_*`` methods, every hook takes whole arrays (the bars of
a span as a DataFrame with a UTC ``DatetimeIndex`` and ``open/high/low/close/volume``
columns) and returns one value per bar. The same function serves every engine: it is
evaluated once over the span in backtest and sweep, and over the trailing history in paper
and live; :func:`evaluate_hooks` is the only caller, so a lookahead check of it covers every
engine.

=========================================  ==================================================
hook                                       default
=========================================  ==================================================
``signal(p, bars) -> s``                   :meth:`core.policy.Policy.signals` (0 at the centre)
``entry_allowed(bars) -> bool``            every bar
``target_weight(s, fvol, bars) -> w``      :meth:`core.policy.Policy.target_weights`
=========================================  ==================================================

A hook may read ``self.policy`` (the frozen :class:`core.policy.Policy`) and ``self.p`` (the
strategy's backtrader params), nothing that exists only while backtrader runs: the sweep
evaluates hooks on an instance that was never added to a cerebro (:func:`hook_instance`).
A value at bar ``t`` must depend on bars ``<= t`` only (``nts strategy check`` proves it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from core.policy import Policy


@dataclass(frozen=True)
class HookArrays:
    """The hooks' outputs over a span, one value per bar (float64 / bool arrays)."""

    prob: np.ndarray      # calibrated P(profit first), NaN where unknown (warm-up)
    signal: np.ndarray    # s in [-1, 1]
    weight: np.ndarray    # target weight of equity before the risk manager's caps (0 = no position)
    allowed: np.ndarray   # bool: a new entry may be opened on this bar

    def __len__(self) -> int:
        return len(self.prob)


class VectorHooks:
    """Mixin with the default vectorised hooks (see the module docstring)."""

    policy: Policy

    def signal(self, p: np.ndarray, bars: pd.DataFrame) -> np.ndarray:
        """s in [-1, 1] per bar from the calibrated probability ``p`` (0 = no edge)."""
        return self.policy.signals(p)

    def entry_allowed(self, bars: pd.DataFrame) -> np.ndarray:
        """True on the bars where a new position may be opened."""
        return np.ones(len(bars), dtype=bool)

    def target_weight(self, s: np.ndarray, fvol: np.ndarray, bars: pd.DataFrame) -> np.ndarray:
        """Weight of equity to hold per bar from the signal and the annualised volatility
        forecast ``fvol`` (vol scaling, deadband, clip, max position, long-only on spot)."""
        return self.policy.target_weights(s, fvol)


def hook_instance(strategy_cls: type, policy: Policy, params: dict[str, Any] | None = None) -> Any:
    """An instance of ``strategy_cls`` on which the hooks can run outside backtrader.

    backtrader builds strategies through a metaclass that needs a running cerebro; the hooks
    need only ``policy`` and ``p``, so the object is made with ``__new__`` (``super()`` inside
    a user's hook still works: it is a real instance of the class).
    """
    obj = object.__new__(strategy_cls)
    p = strategy_cls.params() if hasattr(strategy_cls, "params") and callable(strategy_cls.params) else None
    for key, value in (params or {}).items():
        if p is not None and hasattr(p, key):
            setattr(p, key, value)
    obj.p = obj.params = p
    obj.policy = policy
    return obj


def _as_array(name: str, value: Any, n: int, dtype: str) -> np.ndarray:
    arr = np.asarray(value, dtype=dtype)
    if arr.shape != (n,):
        raise ValueError(f"hook {name}() returned shape {arr.shape}, expected ({n},): one value per bar")
    return np.ascontiguousarray(arr)


def evaluate_hooks(strategy: Any, bars: pd.DataFrame, prob: np.ndarray, fvol: np.ndarray) -> HookArrays:
    """Run ``strategy``'s hooks over ``bars`` (an instance with ``policy`` and ``p``: a running
    backtrader strategy or :func:`hook_instance`); ``prob`` and ``fvol`` are per-bar arrays
    aligned with ``bars``. Returns the arrays every engine's decision step reads."""
    n = len(bars)
    p = _as_array("prob", prob, n, "float64")
    fv = _as_array("fvol", fvol, n, "float64")
    s = _as_array("signal", strategy.signal(p, bars), n, "float64")
    allowed = _as_array("entry_allowed", strategy.entry_allowed(bars), n, "bool")
    w = _as_array("target_weight", strategy.target_weight(s, fv, bars), n, "float64")
    return HookArrays(prob=p, signal=s, weight=w, allowed=allowed)
