"""TCN + calibrator as a backtrader indicator: lines ``logit`` and ``prob``.

* runonce (``once()``): the whole feed is converted to the canonical frame once and scored
  in batches through :meth:`models.bundle.ModelBundle.predict_logit` (features, windows and
  the network run vectorised; no per-bar Python loop over the network), then calibrated --
  or read from the probability cache (param ``cache``, :mod:`models.prob_cache`).
* event mode (``next()``, paper/live): each closed bar goes through the bundle's one
  incremental scorer, :class:`models.streaming.BarScorer` (streaming features, the last
  ``window`` feature rows of the current stretch, ONNX Runtime, calibrator).

Primed warm-up (paper/live restarts, param ``history``: the bars before the first fed one):
the scorer starts from the state after those bars (:meth:`BarScorer.prime`, one vectorised
step), the minimum period counts them as seen, and :meth:`TCNProbability.history_prob` gives
their P by the batch path (only when a strategy's hooks read the history).

Both modes give the same numbers (to float32 network precision); the test suite checks it
on real candles -- that equality is the lookahead test. The minimum period is
``bundle.min_bars`` (feature warm-up + window - 1); after a data gap both modes are NaN
until a full window of the new stretch exists.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.timeframes import bt_num_to_timestamp
from indicators.bt_features import _BatchOnce, feed_frame, primed_minperiod
from models.loading import as_bundle  # noqa: F401  (re-exported: the loader's old import path)
from models.prob_cache import cached_scores
from models.streaming import BarScorer


class TCNProbability(_BatchOnce):
    """Calibrated P(profit barrier first) of the bundle's TCN, per bar (see module docs)."""

    lines = ("logit", "prob")
    # cache: folder of the probability cache (models.prob_cache) for the runonce pass; None = off
    # history: bars before the first fed one, primed in one step (module docstring)
    params = (("bundle", None), ("cache", None), ("history", None))

    def __init__(self) -> None:
        self.bundle = as_bundle(self.p.bundle)
        self.addminperiod(primed_minperiod(self.bundle.min_bars, self.p.history))
        self._stream = BarScorer(self.bundle)  # bundle, ensemble or schedule
        self.cache_hit: bool | None = None  # runonce pass: True when P came from the cache
        self._history_prob: np.ndarray | None = None
        if self.p.history is not None and len(self.p.history):
            self._stream.prime(self.p.history)

    def history_prob(self) -> np.ndarray:
        """P over the primed ``history`` bars (the batch path, computed once on first use;
        empty without history)."""
        if self._history_prob is None:
            h = self.p.history
            self._history_prob = np.zeros(0) if h is None or not len(h) else cached_scores(self.bundle, h, None)[1]
        return self._history_prob

    def _plotlabel(self) -> list[str]:
        """Chart legend: the bundle's directory name, not the object's repr."""
        path = getattr(self.bundle, "path", None)
        if not path:
            return ["bundle"]
        path = Path(path)
        return [path.parent.name if path.suffix == ".pt" else path.name]

    def _compute_full(self) -> dict[str, np.ndarray]:
        frame = feed_frame(self.data)
        logit, prob, self.cache_hit = cached_scores(self.bundle, frame, self.p.cache)
        return {"logit": logit, "prob": prob}

    def _stream_bar(self) -> None:
        d = self.data
        logit, prob = self._stream.update(bt_num_to_timestamp(d.datetime[0]), d.open[0], d.high[0], d.low[0],
                                          d.close[0], d.volume[0])
        self.lines.logit[0] = logit
        self.lines.prob[0] = prob

    def next(self) -> None:
        self._stream_bar()

    prenext = next
    nextstart = next
