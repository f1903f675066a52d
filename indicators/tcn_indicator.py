"""TCN + calibrator as a backtrader indicator: lines ``logit`` and ``prob``.

* runonce (``once()``): the whole feed is converted to the canonical frame once and scored
  in batches through :meth:`models.bundle.ModelBundle.predict_logit` (features, windows and
  the network run vectorised; no per-bar Python loop over the network), then calibrated --
  or read from the probability cache (param ``cache``, :mod:`models.prob_cache`).
* event mode (``next()``, paper/live): each closed bar goes through
  :class:`models.features.StreamingFeatures`; a ring buffer keeps the last ``window``
  feature rows of the current contiguous stretch and
  :meth:`~models.bundle.ModelBundle.score_features` scores them.

Both modes give the same numbers (to float32 network precision); the test suite checks it
on real candles -- that equality is the lookahead test. The minimum period is
``bundle.min_bars`` (feature warm-up + window - 1); after a data gap both modes are NaN
until a full window of the new stretch exists.
"""
from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np

from core.errors import BundleError
from core.timeframes import bt_num_to_timestamp
from indicators.bt_features import _BatchOnce, feed_frame
from models.schedule import load_model
from models.features import StreamingFeatures
from models.prob_cache import cached_scores


def as_bundle(bundle):
    """A loaded model from a bundle or schedule object, a bundle or schedule directory or a
    ``final_model.pt`` path (``models.schedule.load_model``)."""
    if isinstance(bundle, (str, Path)):
        return load_model(bundle)
    if bundle is None:
        raise BundleError("TCNProbability needs a model bundle (param 'bundle')")
    return bundle


class TCNProbability(_BatchOnce):
    """Calibrated P(profit barrier first) of the bundle's TCN, per bar (see module docs)."""

    lines = ("logit", "prob")
    # cache: folder of the probability cache (models.prob_cache) for the runonce pass; None = off
    params = (("bundle", None), ("cache", None))

    def __init__(self) -> None:
        self.bundle = as_bundle(self.p.bundle)
        self.addminperiod(self.bundle.min_bars)
        self._stream = StreamingFeatures(self.bundle.feature_cfg, self.bundle.timeframe)
        self._rows: deque[np.ndarray] = deque(maxlen=self.bundle.window)
        self.cache_hit: bool | None = None  # runonce pass: True when P came from the cache

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

    def _stream_time(self):
        return bt_num_to_timestamp(self.data.datetime[0])

    def _stream_bar(self) -> None:
        d = self.data
        row = self._stream.update(bt_num_to_timestamp(d.datetime[0]), d.open[0], d.high[0], d.low[0],
                                  d.close[0], d.volume[0])
        if self._stream.bars_in_stretch == 1:  # first bar of a new stretch (start or after a gap)
            self._rows.clear()
        self._rows.append(row)
        if len(self._rows) == self.bundle.window:
            # a schedule scores with the bundle valid at this bar's time
            model = self.bundle.for_time(self._stream_time()) if hasattr(self.bundle, "for_time") else self.bundle
            logit, prob = model.score_features(np.stack(self._rows)) if model is not None else (np.nan, np.nan)
        else:
            logit = prob = float("nan")
        self.lines.logit[0] = logit
        self.lines.prob[0] = prob

    def next(self) -> None:
        self._stream_bar()

    prenext = next
    nextstart = next
