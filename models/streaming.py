"""One stream of closed bars -> (logit, P) per bar: the one incremental scoring path.

:class:`BarScorer` joins :class:`models.features.StreamingFeatures` (O(1)-ish update per bar,
no history recomputed), a ring buffer of the last ``window`` feature rows of the current
contiguous stretch, and the bundle's scorer (:meth:`models.bundle.ModelBundle.score_features`:
normaliser -> ONNX Runtime -> calibrator). It serves every streaming engine:

* backtrader's ``next()`` (paper and live sessions) through
  :class:`indicators.tcn_indicator.TCNProbability`;
* the server's single-window scoring through :meth:`models.bundle.ModelBundle.score_window`,
  which keeps one BarScorer and feeds it only the bars it has not seen;
* restarts: :meth:`BarScorer.prime` sets the state from warm-up bars without a feature row
  (or a network call) per bar.

Its probabilities equal the batch path's (``predict_proba``) to float32 network rounding,
and its features equal ``compute_features`` to 1e-9 (tests on real candles).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from core.ohlcv import COLUMNS, checked_bars
from models.features import StreamingFeatures

_NAN2 = (math.nan, math.nan)


class BarScorer:
    """Incremental (logit, P) of one bar stream for a loaded bundle (see module docs)."""

    def __init__(self, bundle: Any) -> None:
        self.bundle = bundle
        self.window = int(bundle.window)
        self.features = StreamingFeatures(bundle.feature_cfg, bundle.timeframe)
        # Ring of feature rows written twice (at k and k + window), so the last ``window`` rows
        # are always one contiguous slice: no per-bar np.stack of a deque (measured 21 us a bar).
        self._ring = np.full((2 * self.window, len(bundle.feature_names)), np.nan)
        self._next = 0  # ring slot of the next row (0 .. window-1)
        self._count = 0  # rows of the current stretch held (capped at window)

    @property
    def rows(self) -> np.ndarray:
        """The current stretch's last ``min(bars, window)`` feature rows, oldest first (read-only view)."""
        k = self._next
        view = self._ring[k + self.window - self._count:k + self.window]
        view.flags.writeable = False
        return view

    def reset(self) -> None:
        """Forget every bar."""
        self.features.reset()
        self._count = 0

    def _push(self, row: np.ndarray) -> None:
        k = self._next
        self._ring[k] = row
        self._ring[k + self.window] = row
        self._next = k + 1 if k + 1 < self.window else 0
        if self._count < self.window:
            self._count += 1

    def update(self, ts: Any, open: float, high: float, low: float, close: float, volume: float,
               score: bool = True) -> tuple[float, float]:
        """Feed one closed bar (``ts`` = its open time); its (logit, P), NaN until the current
        stretch holds a full window of finite features (or when ``score`` is False)."""
        row = self.features.update(ts, open, high, low, close, volume)
        if self.features.bars_in_stretch == 1:  # first bar of a new stretch (start or after a gap)
            self._count = 0
        self._push(row)
        if not score or self._count < self.window:
            return _NAN2
        # a walk-forward schedule scores with the bundle valid at this bar's time
        model = self.bundle.for_time(ts) if hasattr(self.bundle, "for_time") else self.bundle
        return _NAN2 if model is None else model.score_features(self.rows)

    def prime(self, frame: pd.DataFrame) -> tuple[float, float]:
        """Reset, then take the state after the bars of ``frame``: the recursive feature state
        from all but the last ``window`` bars (:meth:`StreamingFeatures.prime`, no rows), the
        last ``window`` bars through :meth:`update` (their feature rows), and only the last bar
        scored. Returns that bar's (logit, P)."""
        idx, data = checked_bars(frame, COLUMNS, "BarScorer.prime")
        self._count = 0
        k = max(0, len(idx) - self.window)
        self.features.prime(frame.iloc[:k])
        out = _NAN2
        last = len(idx) - 1
        for i in range(k, len(idx)):
            o, h, lo, c, v = data[i].tolist()
            out = self.update(idx[i], o, h, lo, c, v, score=i == last)
        return out
