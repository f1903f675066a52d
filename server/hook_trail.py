"""The bars before the scored one that a served strategy's hooks look back over.

A strategy that overrides a vectorised hook declares how many trailing bars its hooks need
(``hook_lookback``, :func:`strategies.hooks.declared_lookback`; 1 for the default per-bar
rules). Paper and live evaluate the hooks over that many bars; the server does the same, so
its answer on a bar is the backtest's. A :class:`HookTrail` holds the ``lookback - 1`` bars
before the scored one with their P and volatility forecast:

* for a request (``/predict``, ``POST /streams``) from the batch path over the request's
  last ``warm-up + lookback - 1`` bars (:func:`trail_of`): the functions a paper session
  uses for the bars of its primed history (``cached_scores``: P; ``history_vols``: the
  forecast), each of those bars with a full warm-up of its own before it;
* for a stream, from then on, each scored bar's own P and forecast (:meth:`HookTrail.push`),
  as a session's fed bars.

With the default hooks (lookback 1) there is no trail and the hooks see the scored bar alone
(no frame of history is built per request).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from indicators.bt_features import history_vols
from models.prob_cache import cached_scores

_COLUMNS = pd.Index(["open", "high", "low", "close", "volume"])


class HookTrail:
    """The last ``n`` bars before the scored one: open times (ns), OHLCV, P, forecast."""

    def __init__(self, ts_ns: np.ndarray, values: np.ndarray, prob: np.ndarray, fvol: np.ndarray) -> None:
        self.ts_ns = np.array(ts_ns, dtype=np.int64)
        self.values = np.array(values, dtype=np.float64).reshape(-1, 5)
        self.prob = np.array(prob, dtype=np.float64)
        self.fvol = np.array(fvol, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.ts_ns)

    def hook_inputs(self, t_ns: int, row: np.ndarray, p: float, fvol: float) -> tuple[pd.DataFrame, np.ndarray,
                                                                                       np.ndarray]:
        """(bars, P, forecast) of the trail followed by the scored bar (open ``t_ns``, OHLCV
        ``row``, its ``p`` and ``fvol``): what the hooks are evaluated over."""
        ts = np.append(self.ts_ns, np.int64(t_ns))
        values = np.vstack([self.values, np.asarray(row, dtype=np.float64).reshape(1, 5)])
        bars = pd.DataFrame(values, index=pd.DatetimeIndex(ts, dtype="datetime64[ns, UTC]"), columns=_COLUMNS)
        return bars, np.append(self.prob, p), np.append(self.fvol, fvol)

    def push(self, t_ns: int, row: np.ndarray, p: float, fvol: float) -> None:
        """The scored bar joins the trail and the oldest bar leaves it (the length stays)."""
        if not len(self):
            return
        self.ts_ns[:-1], self.ts_ns[-1] = self.ts_ns[1:], t_ns
        self.values[:-1], self.values[-1] = self.values[1:], np.asarray(row, dtype=np.float64)
        self.prob[:-1], self.prob[-1] = self.prob[1:], p
        self.fvol[:-1], self.fvol[-1] = self.fvol[1:], fvol


def trail_of(bundle: Any, tail: pd.DataFrame, lookback: int) -> HookTrail | None:
    """The trail of the last bar of ``tail`` (checked, contiguous bars holding at least the
    warm-up plus ``lookback - 1``): its ``lookback - 1`` bars before that bar, their P and
    forecast by the batch path over ``tail`` without its last bar. None for ``lookback`` 1."""
    n = lookback - 1
    if n <= 0:
        return None
    before = tail.iloc[:-1]
    prob = cached_scores(bundle, before, None)[1]
    fvol = history_vols(before, bundle.feature_cfg, bundle.timeframe)
    return HookTrail(before.index.asi8[-n:], before.to_numpy(dtype=np.float64)[-n:], prob[-n:], fvol[-n:])
