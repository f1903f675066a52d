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

Sequence mode (``model.context: sequence``): the bundle's :meth:`sequence_stepper` gives a
state that computes one new time step per layer from cached activations
(:class:`models.sequence_scorer.SequenceStep`); each bar's normalised row is pushed into it
(every bar, scored or not, so the state follows the stream) and a gap or a non-finite row
restarts it. A schedule or an ensemble of sequence bundles scores the last ``input_bars``
rows through ``score_features`` instead (one pass over them: correct, slower).

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
from models.recalibration import RollingStream, is_rolling

_NAN2 = (math.nan, math.nan)


class BarScorer:
    """Incremental (logit, P) of one bar stream for a loaded bundle (see module docs)."""

    def __init__(self, bundle: Any) -> None:
        self.bundle = bundle
        self.window = int(bundle.window)
        # the feature rows one logit depends on (window + receptive field - 1 in sequence mode)
        self.input_bars = int(getattr(bundle, "input_bars", self.window))
        self.features = StreamingFeatures(bundle.feature_cfg, bundle.timeframe)
        # Ring of feature rows written twice (at k and k + n), so the last ``n = input_bars`` rows
        # are always one contiguous slice: no per-bar np.stack of a deque (measured 21 us a bar).
        self._ring = np.full((2 * self.input_bars, len(bundle.feature_names)), np.nan)
        self._next = 0  # ring slot of the next row (0 .. n-1)
        self._count = 0  # rows of the current stretch held (capped at n)
        stepper = getattr(bundle, "sequence_stepper", None)
        self.step = stepper() if callable(stepper) else None
        # rolling calibration (calibration.mode: rolling) refits on the stream's trailing bars
        self.rolling = (RollingStream(bundle.history_bars, bundle.ccfg, bundle.timeframe)
                        if is_rolling(bundle) else None)

    @property
    def rows(self) -> np.ndarray:
        """The current stretch's last ``min(bars, input_bars)`` feature rows, oldest first (read-only view)."""
        n, k = self.input_bars, self._next
        view = self._ring[k + n - self._count:k + n]
        view.flags.writeable = False
        return view

    def reset(self) -> None:
        """Forget every bar."""
        self.features.reset()
        self._clear()
        if self.rolling is not None:
            self.rolling.reset()

    def _clear(self) -> None:
        self._count = 0
        if self.step is not None:
            self.step.reset()

    def _push(self, row: np.ndarray) -> None:
        n, k = self.input_bars, self._next
        self._ring[k] = row
        self._ring[k + n] = row
        self._next = k + 1 if k + 1 < n else 0
        if self._count < n:
            self._count += 1

    def update(self, ts: Any, open: float, high: float, low: float, close: float, volume: float,
               score: bool = True) -> tuple[float, float]:
        """Feed one closed bar (``ts`` = its open time); its (logit, P), NaN until the current
        stretch holds a full window of finite features (or when ``score`` is False)."""
        row = self.features.update(ts, open, high, low, close, volume)
        if self.rolling is not None:
            self.rolling.append(ts, open, high, low, close, volume)
        if self.features.bars_in_stretch == 1:  # first bar of a new stretch (start or after a gap)
            self._clear()
        self._push(row)
        if self.step is not None:
            logit = self.step.push(self.bundle.normalise_row(row))  # a non-finite row restarts it
            if not score or math.isnan(logit):
                return _NAN2
            return logit, float(self.bundle.calibrate(np.array([logit]))[0])
        if not score or self._count < self.input_bars:
            return _NAN2
        # a walk-forward schedule scores with the bundle valid at this bar's time
        model = self.bundle.for_time(ts) if hasattr(self.bundle, "for_time") else self.bundle
        if model is None:
            return _NAN2
        if self.rolling is not None:
            return model.score_features(self.rows, at=ts, stream=self.rolling)
        return model.score_features(self.rows)

    def prime(self, frame: pd.DataFrame) -> tuple[float, float]:
        """Reset, then take the state after the bars of ``frame``: the recursive feature state
        from all but the last ``window`` bars (:meth:`StreamingFeatures.prime`, no rows), the
        last ``window`` bars through :meth:`update` (their feature rows), and only the last bar
        scored. Returns that bar's (logit, P). (``window`` is ``input_bars`` in sequence mode.)"""
        idx, data = checked_bars(frame, COLUMNS, "BarScorer.prime")
        self._clear()
        k = max(0, len(idx) - self.input_bars)
        self.features.prime(frame.iloc[:k])
        if self.rolling is not None:  # its trailing bars; the last window bars come through update()
            self.rolling.reset()
            self.rolling.extend(frame.iloc[max(0, k - self.rolling.rows.maxlen):k])
        out = _NAN2
        last = len(idx) - 1
        for i in range(k, len(idx)):
            o, h, lo, c, v = data[i].tolist()
            out = self.update(idx[i], o, h, lo, c, v, score=i == last)
        return out
