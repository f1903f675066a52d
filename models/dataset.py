"""Windows of ``window`` bars x 12 features ending at bar t, and their normalisation.

One implementation serves training, evaluation and scoring:

* :func:`feature_matrix` computes the 12 causal features (``models.features``).
* :func:`valid_window_mask` marks the bars t whose window ``[t - window + 1, t]`` lies inside
  one contiguous stretch (``core.ohlcv.segment_ids``) and has every feature finite.
* :class:`Normaliser` holds per-feature mean/std fitted on the training span only.
* :func:`window_view` is a zero-copy strided view ``(N - window + 1, window, F)`` over the
  normalised matrix; training copies only the rows of one batch
  (:func:`models.tcn.gather_windows`). No array of ``N x window`` copies is ever built.

No torch here: scoring (``models.bundle``) imports this module on the trading path.

A sample is a bar t with a valid window and a finite triple-barrier label (target = label of
bar t). Rows with NaN features or no label are dropped explicitly by :func:`sample_positions`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.errors import DataError
from core.ohlcv import COLUMNS, checked_bars, segment_ids
from models.features import FEATURE_NAMES, compute_features
from models.labels import triple_barrier_events


def check_frame(frame: pd.DataFrame, where: str = "candles") -> None:
    """Refuse anything that is not a canonical OHLCV frame (one line naming the problem)."""
    checked_bars(frame, COLUMNS, where)


def feature_matrix(frame: pd.DataFrame, feature_cfg=None, timeframe: str = "15m") -> np.ndarray:
    """The 12 features as a float64 ``(N, 12)`` array in ``FEATURE_NAMES`` order (NaN in warm-up)."""
    feats = compute_features(frame, feature_cfg, timeframe=timeframe)
    return feats.loc[:, list(FEATURE_NAMES)].to_numpy(dtype=np.float64)


def valid_window_mask(features: np.ndarray, seg: np.ndarray, window: int) -> np.ndarray:
    """Bool per bar: the window ending here has ``window`` bars, one stretch, all features finite."""
    n = len(features)
    ok = np.zeros(n, dtype=bool)
    if n < window:
        return ok
    finite_row = np.isfinite(features).all(axis=1).astype(np.int64)
    csum = np.concatenate([[0], np.cumsum(finite_row)])
    ends = np.arange(window - 1, n)
    n_finite = csum[ends + 1] - csum[ends + 1 - window]
    # segment ids never decrease, so equal ids at both ends means no gap inside the window
    same_seg = seg[ends] == seg[ends - window + 1]
    ok[ends] = (n_finite == window) & same_seg
    return ok


@dataclass
class Normaliser:
    """Per-feature standardisation ``(x - mean) / std``; fitted on training rows only."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray, rows: np.ndarray) -> "Normaliser":
        """Fit on ``features[rows]`` (rows: bool mask or positions), ignoring non-finite rows."""
        x = features[rows]
        x = x[np.isfinite(x).all(axis=1)]
        if len(x) < 2:
            raise DataError("not enough finite feature rows in the training span to fit the normaliser")
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)  # a constant feature stays 0, never inf
        return cls(mean=mean, std=std)

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Normalised float32 copy (computed in float64, then cast: one rounding rule everywhere)."""
        return ((np.asarray(features, dtype=np.float64) - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict:
        """JSON-able form stored in bundle.json."""
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, d: dict) -> "Normaliser":
        """Inverse of :meth:`to_dict`."""
        return cls(mean=np.asarray(d["mean"], dtype=np.float64), std=np.asarray(d["std"], dtype=np.float64))


def window_view(norm: np.ndarray, window: int) -> np.ndarray:
    """Read-only strided view ``(N - window + 1, window, F)``; row i is the window ending at bar i + window - 1."""
    return np.lib.stride_tricks.sliding_window_view(norm, window, axis=0).transpose(0, 2, 1)


@dataclass
class PreparedData:
    """Everything the training and evaluation steps need about one candle frame."""

    index: pd.DatetimeIndex
    features: np.ndarray        # (N, F) float64 raw features
    labels: np.ndarray          # (N,) float 1/0/NaN
    valid_window: np.ndarray    # (N,) bool
    samples: np.ndarray         # positions t with a valid window and a finite label
    seg: np.ndarray


def sample_positions(valid_window: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Positions t usable as samples: valid window AND a finite label (the rest is dropped here)."""
    return np.flatnonzero(valid_window & np.isfinite(labels)).astype(np.int64)


def prepare(frame: pd.DataFrame, cfg, window: int | None = None) -> PreparedData:
    """Features, labels, window validity and sample positions for a frame under a ``Config``."""
    check_frame(frame)
    timeframe = cfg.data.timeframe
    window = int(window or cfg.model.window)
    feats = feature_matrix(frame, cfg.features, timeframe)
    labels = triple_barrier_events(frame, cfg.labels, timeframe=timeframe)["label"].to_numpy(dtype=np.float64)
    seg = segment_ids(frame.index, timeframe)
    valid = valid_window_mask(feats, seg, window)
    return PreparedData(index=frame.index, features=feats, labels=labels, valid_window=valid,
                        samples=sample_positions(valid, labels), seg=seg)
