"""The features as backtrader indicator lines (batch in ``once()``, streaming in ``next()``).

Both modes call the one implementation in :mod:`models.features` (``compute_features``
over the whole feed in runonce mode, ``StreamingFeatures`` bar by bar otherwise), so a
strategy sees the same numbers the model was trained on.

* :class:`FeatureLines` -- all 12 features, one line each (``FEATURE_NAMES``).
* :class:`VolForecast` -- ``ewma_vol_fast`` annualised: per-bar EWMA volatility of 1-bar log
  returns x ``sqrt(bars per year)`` (``sqrt(35040)`` for 15m bars), the forecast used for
  volatility-targeted sizing, computed by the policy's rule
  (:func:`core.policy.annualised_vol` / :func:`core.policy.annualised_vols`). Unit: fraction
  per year (0.5 = 50% annualised).
* :class:`BarrierWidth` -- the volatility-scaled barrier width ``sigma_t * sqrt(horizon)`` of
  ``labels.scale: vol`` (:func:`models.labels.barrier_widths` in ``once()``,
  :class:`models.labels.StreamingWidth` -- streaming features with span ``vol_span`` -- in
  ``next()``: the labeller's sigma_t, computed on its own span even where it differs from
  ``features.ewma_vol_fast_span``).
* :class:`RealisedVol` -- realised daily volatility for the risk manager
  (:func:`core.risk.realised_daily_vol`).

**Primed warm-up** (paper and live restarts): the streaming indicators take an optional
param ``history``, the bars before the first bar backtrader feeds them (a canonical OHLCV
frame). They start from the state they would have after those bars (one vectorised step,
no line values written for them) instead of being fed each bar; their minimum period counts
those bars as seen. :func:`history_vols` gives the batch values of the forecast over them.
"""
from __future__ import annotations

from array import array

import backtrader as bt
import numpy as np
import pandas as pd

from core.policy import annualisation_factor, annualised_vol, annualised_vols
from core.risk import realised_daily_vol
from core.timeframes import (
    bt_num_to_ns,
    bt_num_to_timestamp,
    timeframe_seconds,
)
from models.features import FEATURE_NAMES, StreamingFeatures, compute_features, segment_ids
from models.labels import StreamingWidth, barrier_widths


def _np(line) -> np.ndarray:
    """Zero-copy float64 view of a backtrader line buffer."""
    return np.frombuffer(line.array, dtype="float64")


_OHLCV = ("open", "high", "low", "close", "volume")
_OHLCV_INDEX = pd.Index(_OHLCV)


def feed_frame(data, last: int | None = None) -> pd.DataFrame:
    """The canonical OHLCV frame of a (preloaded) backtrader data feed: UTC bar open times,
    float64 open/high/low/close/volume; with ``last``, of its last ``last`` bars only. Used once
    per run by the batch indicators, and on every bar of a live feed by the strategy's hooks
    (over their trailing ``hook_lookback`` bars; built as one float64 block: ~4x faster than a
    frame from a dict of columns, with the same values, dtypes and contiguous columns)."""
    n = data.buflen()
    a = 0 if last is None else max(0, n - last)
    idx = pd.DatetimeIndex(bt_num_to_ns(_np(data.datetime)[a:n]), tz="UTC", name="timestamp")
    block = np.empty((len(_OHLCV), n - a))
    for row, name in zip(block, _OHLCV):
        row[:] = _np(getattr(data, name))[a:n]
    return pd.DataFrame(block.T, index=idx, columns=_OHLCV_INDEX, copy=False)


def write_line(line, values: np.ndarray, start: int, end: int) -> None:
    """Copy ``values[start:end]`` into a line's buffer (runonce ``once()`` helper)."""
    line.array[start:end] = array("d", np.asarray(values[start:end], dtype="float64"))


class _BatchOnce(bt.Indicator):
    """Base for indicators whose runonce pass computes everything once over the feed."""

    _full: dict[str, np.ndarray] | None = None

    def _compute_full(self) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fill(self, start: int, end: int) -> None:
        if self._full is None:
            self._full = self._compute_full()
        for name, values in self._full.items():
            write_line(getattr(self.lines, name), values, start, end)

    def preonce(self, start: int, end: int) -> None:
        self._fill(start, end)

    def oncestart(self, start: int, end: int) -> None:
        self._fill(start, end)

    def once(self, start: int, end: int) -> None:
        self._fill(start, end)


class FeatureLines(_BatchOnce):
    """The 12 features of :mod:`models.features` as lines (NaN during warm-up and after gaps)."""

    lines = FEATURE_NAMES
    params = (("cfg", None), ("timeframe", "15m"))

    def __init__(self) -> None:
        self._stream = StreamingFeatures(self.p.cfg, self.p.timeframe)

    def _compute_full(self) -> dict[str, np.ndarray]:
        feats = compute_features(feed_frame(self.data), self.p.cfg, timeframe=self.p.timeframe)
        return {name: feats[name].to_numpy() for name in FEATURE_NAMES}

    def next(self) -> None:
        d = self.data
        row = self._stream.update(bt_num_to_timestamp(d.datetime[0]), d.open[0], d.high[0], d.low[0],
                                  d.close[0], d.volume[0])
        for k, name in enumerate(FEATURE_NAMES):
            getattr(self.lines, name)[0] = row[k]

    prenext = next


def primed_minperiod(minperiod: int, history: pd.DataFrame | None) -> int:
    """The minimum period left for bars fed after ``history`` (backtrader counts bars from
    the first one fed; the primed ones count as seen)."""
    return max(1, int(minperiod) - (0 if history is None else len(history)))


def history_vols(history: pd.DataFrame, cfg, timeframe: str) -> np.ndarray:
    """:class:`VolForecast`'s values over ``history`` (its batch definition, ``once()``)."""
    feats = compute_features(history, cfg, timeframe=timeframe)
    return annualised_vols(feats["ewma_vol_fast"].to_numpy(dtype="float64"), annualisation_factor(timeframe))


class VolForecast(_BatchOnce):
    """Annualised volatility forecast: ``ewma_vol_fast x sqrt(bars_per_year)`` (see module docs)."""

    lines = ("vol",)
    # history: bars before the first fed one, primed in one step (module docstring)
    params = (("cfg", None), ("timeframe", "15m"), ("history", None))

    def _plotlabel(self) -> list[str]:
        return ["ewma_vol_fast, annualised", self.p.timeframe]

    def __init__(self) -> None:
        self._stream = StreamingFeatures(self.p.cfg, self.p.timeframe)
        self._ann = annualisation_factor(self.p.timeframe)
        self._col = FEATURE_NAMES.index("ewma_vol_fast")
        if self.p.history is not None:
            self._stream.prime(self.p.history)

    def _compute_full(self) -> dict[str, np.ndarray]:
        return {"vol": history_vols(feed_frame(self.data), self.p.cfg, self.p.timeframe)}

    def next(self) -> None:
        d = self.data
        row = self._stream.update(bt_num_to_timestamp(d.datetime[0]), d.open[0], d.high[0], d.low[0],
                                  d.close[0], d.volume[0])
        self.lines.vol[0] = annualised_vol(float(row[self._col]), self._ann)

    prenext = next


def history_widths(history: pd.DataFrame, horizon: int, vol_span: int, timeframe: str) -> np.ndarray:
    """:class:`BarrierWidth`'s values over ``history`` (its batch definition, ``once()``)."""
    return barrier_widths(history, horizon, vol_span, timeframe)


class BarrierWidth(_BatchOnce):
    """Volatility-scaled barrier width per bar, ``sigma_t * sqrt(horizon)`` (module docstring)."""

    lines = ("width",)
    # history: bars before the first fed one, primed in one step (module docstring)
    params = (("horizon", 8), ("vol_span", 20), ("timeframe", "15m"), ("history", None))

    def __init__(self) -> None:
        self._stream = StreamingWidth(self.p.horizon, self.p.vol_span, self.p.timeframe)
        if self.p.history is not None:
            self._stream.prime(self.p.history)

    def _compute_full(self) -> dict[str, np.ndarray]:
        return {"width": history_widths(feed_frame(self.data), self.p.horizon, self.p.vol_span, self.p.timeframe)}

    def next(self) -> None:
        d = self.data
        self.lines.width[0] = self._stream.update(bt_num_to_timestamp(d.datetime[0]), d.open[0], d.high[0],
                                                  d.low[0], d.close[0], d.volume[0])

    prenext = next


class RealisedVol(_BatchOnce):
    """Realised daily volatility of the close over ``window`` bars (risk manager input)."""

    lines = ("vol",)
    # history: bars before the first fed one, primed in one step (module docstring)
    params = (("window", 96), ("timeframe", "15m"), ("history", None))

    def __init__(self) -> None:
        self._closes: list[float] = []
        self._last_ns: int | None = None
        self._step_ns = timeframe_seconds(self.p.timeframe) * 1_000_000_000
        history = self.p.history
        if history is not None and len(history):
            # the closes next() would hold: the last window + 1 of the last gap-free stretch
            seg = segment_ids(pd.DatetimeIndex(history.index), self.p.timeframe)
            first = int(np.searchsorted(seg, seg[-1]))
            self._closes = history["close"].to_numpy(dtype="float64")[first:][-(self.p.window + 1):].tolist()
            self._last_ns = int(pd.DatetimeIndex(history.index).as_unit("ns").asi8[-1])

    def _compute_full(self) -> dict[str, np.ndarray]:
        frame = feed_frame(self.data)
        return {"vol": realised_daily_vol(frame["close"].to_numpy(), self.p.window, self.p.timeframe,
                                          index=frame.index)}

    def next(self) -> None:
        closes = self._closes
        now_ns = int(bt_num_to_ns(np.array([self.data.datetime[0]]))[0])
        if self._last_ns is not None and now_ns - self._last_ns != self._step_ns:
            closes.clear()  # a gap: the window restarts, as in the batch definition
        self._last_ns = now_ns
        closes.append(self.data.close[0])
        if len(closes) > self.p.window + 1:
            del closes[0]
        if len(closes) <= self.p.window:
            self.lines.vol[0] = float("nan")
        else:
            self.lines.vol[0] = float(realised_daily_vol(np.asarray(closes), self.p.window, self.p.timeframe)[-1])

    prenext = next
