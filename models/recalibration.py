"""Causal rolling recalibration (``calibration.mode: rolling``).

The network's logits keep their ranking on later data while the base rate of the label
drifts, so a calibrator fitted once goes stale. Rolling mode refits Platt scaling while
scoring, on the most recent bars whose labels are already known at decision time:

* A decision at bar t is taken after bar t closes. The triple-barrier label of bar s needs
  bars ``s+1 .. s+horizon``; it counts as known at bar t only when ``ts[s] + horizon * bar
  <= ts[t]`` (its whole horizon has closed; an early barrier touch is NOT used, so the rule
  does not depend on the outcome).
* Refits happen on the UTC time grid every ``refit_bars`` bars (block ``ts // (refit_bars *
  bar)``). Every bar of a block uses the parameters fitted at the block's grid start G on the
  labels known at G whose horizon ended within the last ``window_bars`` bars of time:
  ``G - window_bars * bar < ts[s] + horizon * bar <= G``. Anchoring to the grid (not to the
  first bar of the frame) makes P independent of where the scored frame starts once it holds
  :func:`extra_history` bars more than the bundle needs, and appending bars never changes an
  earlier P (``tests/test_recalibration.py`` checks both).
* Bars of the network's own training span (``spans.train`` of the bundle) are never used:
  its logits there are in-sample. (The validation span is used: only the epoch was chosen
  there.)
* Fewer than ``min_samples`` known labels with a finite logit, or fewer than 10 of either
  class, in a block's window: that block uses the bundle's static calibrator.

* Streaming (paper, live: :class:`models.streaming.BarScorer`): the scorer keeps the trailing
  ``history_bars`` raw bars in a :class:`RollingStream`; at the first bar of each refit block
  the scoring bundle fits that block's parameters on them with the same window, labels and
  fit as the batch path (:func:`_block_fit`), so a session's P equals the backtest's to the
  network's float32 rounding (``tests/test_schedule_trading.py``).

The fit is plain maximum-likelihood Platt scaling (Newton steps on two parameters; a 1e-6
ridge only keeps a separable window finite), the same model as the static Platt calibrator.
"""
from __future__ import annotations

import math
from collections import deque

import numpy as np
import pandas as pd

from core.config import CalibrationConfig, LabelConfig
from core.errors import BundleError
from core.ohlcv import COLUMNS
from core.timeframes import timeframe_seconds
from models.calibration import Calibrator, sigmoid
from models.labels import label_arrays

MIN_PER_CLASS = 10
# Part of the probability cache's identity of rolling P: bump it whenever fit_platt's numbers change
# (1: damped Newton; the undamped fit diverged on narrow, inverted logit ranges)
ROLLING_FIT = "platt-damped-newton-1"
_RIDGE = 1e-6


def fit_platt(z: np.ndarray, y: np.ndarray, iters: int = 50) -> tuple[float, float]:
    """Maximum-likelihood ``(a, b)`` of ``P = sigmoid(a z + b)`` by damped Newton steps.

    A full Newton step from ``(1, 0)`` can overshoot and diverge (logits of a narrow range whose
    ranking is inverted sent ``b`` to 1e8 on real data); each step is halved until the
    penalised negative log-likelihood does not increase."""
    theta = np.array([1.0, 0.0])
    x = np.column_stack([z, np.ones_like(z)])
    loss = _platt_loss(theta, x, y)
    for _ in range(iters):
        p = sigmoid(x @ theta)
        w = p * (1.0 - p)
        grad = x.T @ (p - y) + _RIDGE * theta
        hess = (x * w[:, None]).T @ x + _RIDGE * np.eye(2)
        step = np.linalg.solve(hess, grad)
        for _ in range(60):
            new_loss = _platt_loss(theta - step, x, y)
            if new_loss <= loss:
                break
            step = step / 2.0
        else:
            break  # no decrease along the Newton direction: at the optimum to float precision
        theta, loss = theta - step, new_loss
        if np.abs(step).max() < 1e-10:
            break
    return float(theta[0]), float(theta[1])


def _platt_loss(theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """Negative log-likelihood of Platt parameters plus the ridge (stable for any logit)."""
    u = x @ theta
    return float(np.sum(np.logaddexp(0.0, u) - y * u) + 0.5 * _RIDGE * theta @ theta)


def known_labels(frame: pd.DataFrame, label_cfg: LabelConfig, timeframe: str) -> np.ndarray:
    """Triple-barrier labels of ``frame`` (1/0, NaN where the horizon is incomplete or gapped)."""
    code = label_arrays(frame, label_cfg, timeframe)[0]
    return np.where(code > 0, (code == 1).astype(np.float64), np.nan)


def extra_history(ccfg: CalibrationConfig, horizon: int) -> int:
    """Bars of history rolling calibration needs beyond the bundle's own ``history_bars``."""
    return int(ccfg.window_bars + horizon + ccfg.refit_bars)


def rolling_params(index: pd.DatetimeIndex, logits: np.ndarray, labels: np.ndarray, horizon: int,
                   ccfg: CalibrationConfig, timeframe: str, fitted_until: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per bar ``(a, b)`` of the rolling Platt fit (NaN where the static calibrator applies).
    ``fitted_until`` (ns): bars up to this time are never used (the network's own training
    span, where its logits are in-sample and too confident)."""
    bar = timeframe_seconds(timeframe) * 1_000_000_000
    ts = pd.DatetimeIndex(index).as_unit("ns").asi8
    known_at = ts + horizon * bar           # sorted, as ts is
    usable = _usable(index, logits, labels, fitted_until)
    block_len = ccfg.refit_bars * bar
    block = ts // block_len
    a = np.full(len(ts), np.nan)
    b = np.full(len(ts), np.nan)
    starts = np.flatnonzero(np.r_[True, block[1:] != block[:-1]]) if len(ts) else np.array([], int)
    ends = np.r_[starts[1:], len(ts)]
    for lo_bar, hi_bar in zip(starts, ends):
        grid = int(block[lo_bar]) * block_len
        a[lo_bar:hi_bar], b[lo_bar:hi_bar] = _block_fit(grid, known_at, usable, logits, labels, ccfg, bar)
    return a, b


def _block_fit(grid: int, known_at: np.ndarray, usable: np.ndarray, logits: np.ndarray, labels: np.ndarray,
               ccfg: CalibrationConfig, bar: int) -> tuple[float, float]:
    """``(a, b)`` of the refit block starting at ``grid`` (ns): Platt on the usable bars whose
    label became known in ``(grid - window_bars * bar, grid]``; NaN when too few (module docstring)."""
    lo = np.searchsorted(known_at, grid - ccfg.window_bars * bar, side="right")
    hi = np.searchsorted(known_at, grid, side="right")
    sel = np.flatnonzero(usable[lo:hi]) + lo
    if len(sel) < ccfg.min_samples:
        return math.nan, math.nan
    y = labels[sel]
    pos = int(y.sum())
    if min(pos, len(y) - pos) < MIN_PER_CLASS:
        return math.nan, math.nan
    return fit_platt(logits[sel], y)


def _usable(index: pd.DatetimeIndex, logits: np.ndarray, labels: np.ndarray, fitted_until: int | None) -> np.ndarray:
    """Bars a refit may use: finite logit and label, after the network's own training span."""
    usable = np.isfinite(logits) & np.isfinite(labels)
    if fitted_until is not None:
        usable &= pd.DatetimeIndex(index).as_unit("ns").asi8 > fitted_until
    return usable


def rolling_probabilities(index: pd.DatetimeIndex, logits: np.ndarray, labels: np.ndarray, horizon: int,
                          ccfg: CalibrationConfig, timeframe: str, fallback: Calibrator,
                          fitted_until: int | None = None) -> np.ndarray:
    """Calibrated P per bar: the rolling Platt fit where one exists, ``fallback`` elsewhere."""
    a, b = rolling_params(index, logits, labels, horizon, ccfg, timeframe, fitted_until)
    static = fallback(logits)
    rolled = sigmoid(np.where(np.isnan(a), 0.0, a) * logits + np.where(np.isnan(b), 0.0, b))
    return np.where(np.isnan(a), static, rolled)


class RollingCalibrated:
    """A bundle whose probabilities come from causal rolling Platt refits (module docstring).

    Same scoring surface as :class:`models.bundle.ModelBundle` for the batch paths
    (``predict_logit``, ``predict_proba``, ``score_frame``, ``score_window``); everything else
    is the wrapped bundle's. The streaming path (paper, live: ``score_features``) needs the
    stream's trailing bars: :class:`models.streaming.BarScorer` keeps them in a
    :class:`RollingStream` and passes it with the bar time; without one it is refused."""

    def __init__(self, bundle, ccfg: CalibrationConfig) -> None:
        self.inner = bundle
        self.ccfg = ccfg
        self.history_bars = int(bundle.history_bars) + extra_history(ccfg, bundle.label_cfg.horizon)
        # the network's training span (labels included): its logits there are in-sample
        train = (bundle.meta.get("spans") or {}).get("train")
        self._fitted_until = int(pd.Timestamp(train[1]).as_unit("ns").value) if train else None
        # a different calibrator entry: the probability cache never mixes static and rolling P
        self.meta = {**bundle.meta, "calibrator": {"kind": "rolling-platt", "fit": ROLLING_FIT,
                                                   "params": ccfg.model_dump(mode="json"),
                                                   "fallback": bundle.meta.get("calibrator")}}

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        """Refused: a rolling P depends on the bar's time and the labels before it."""
        raise BundleError("rolling calibration depends on each bar's time: use score_frame or predict_proba")

    def score_frame(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """``(logit, P)`` for every bar of ``frame`` (NaN where no full window exists)."""
        logit = self.inner.predict_logit(frame).to_numpy()
        labels = known_labels(frame, self.inner.label_cfg, self.inner.timeframe)
        prob = rolling_probabilities(frame.index, logit, labels, self.inner.label_cfg.horizon, self.ccfg,
                                     self.inner.timeframe, self.inner.calibrator, self._fitted_until)
        return logit, prob

    def predict_proba(self, frame: pd.DataFrame) -> pd.Series:
        """Rolling-calibrated P per bar."""
        return pd.Series(self.score_frame(frame)[1], index=frame.index, name="prob")

    def score_window(self, bars: pd.DataFrame) -> float:
        """Rolling-calibrated P of the last bar of ``bars`` (the last :attr:`history_bars` used)."""
        tail = bars.iloc[-self.history_bars:]
        if len(tail) < self.inner.min_bars:
            return float("nan")
        return float(self.score_frame(tail)[1][-1])

    def score_features(self, window: np.ndarray, at=None, stream: "RollingStream | None" = None
                       ) -> tuple[float, float]:
        """(logit, P) of one raw feature window of the bar opening at ``at``, calibrated with the
        Platt parameters :meth:`block_params` fits on ``stream``'s trailing bars for ``at``'s
        refit block (once per block); the static calibrator where that fit falls back."""
        if stream is None or at is None:
            raise BundleError("rolling calibration needs the trailing bars: score with score_window(bars), or "
                              "through models.streaming.BarScorer (it keeps them)")
        logit, static = self.inner.score_features(window)
        a, b = stream.params(self, at)
        return logit, (static if math.isnan(a) else float(sigmoid(a * logit + b)))

    def block_params(self, frame: pd.DataFrame, grid: int) -> tuple[float, float]:
        """``(a, b)`` of the refit block starting at ``grid`` (ns) from the bars of ``frame``
        (the stream's trailing bars): this bundle's logits and the known labels through the same
        functions as :meth:`score_frame`; NaN when the static calibrator applies."""
        logit = self.inner.predict_logit(frame).to_numpy()
        labels = known_labels(frame, self.inner.label_cfg, self.inner.timeframe)
        bar = timeframe_seconds(self.inner.timeframe) * 1_000_000_000
        known_at = frame.index.as_unit("ns").asi8 + self.inner.label_cfg.horizon * bar
        usable = _usable(frame.index, logit, labels, self._fitted_until)
        return _block_fit(grid, known_at, usable, logit, labels, self.ccfg, bar)


class RollingStream:
    """The trailing raw bars of one bar stream, for rolling calibration while streaming.

    :class:`models.streaming.BarScorer` appends every bar; :meth:`params` returns the Platt
    parameters of the refit block holding a bar, fitted by the scoring model's
    :meth:`RollingCalibrated.block_params` on these bars once per (model, block) -- the same
    window, labels and fit as the batch path (a schedule's new fold refits on its own logits)."""

    def __init__(self, history_bars: int, ccfg: CalibrationConfig, timeframe: str) -> None:
        self.rows: deque[tuple] = deque(maxlen=int(history_bars))
        self.block_len = ccfg.refit_bars * timeframe_seconds(timeframe) * 1_000_000_000
        self._key: tuple[int, int] | None = None
        self._ab = (math.nan, math.nan)

    def reset(self) -> None:
        """Forget every bar."""
        self.rows.clear()
        self._key, self._ab = None, (math.nan, math.nan)

    def append(self, ts, open: float, high: float, low: float, close: float, volume: float) -> None:
        """Keep one closed bar (``ts`` = its open time)."""
        self.rows.append((pd.Timestamp(ts).value, open, high, low, close, volume))

    def extend(self, frame: pd.DataFrame) -> None:
        """Keep the bars of ``frame`` (warm-up)."""
        for ts, row in zip(frame.index.as_unit("ns").asi8, frame[list(COLUMNS)].to_numpy(dtype="float64")):
            self.rows.append((int(ts), *row.tolist()))

    def frame(self) -> pd.DataFrame:
        """The kept bars as a canonical OHLCV frame."""
        data = np.array([r[1:] for r in self.rows], dtype="float64").reshape(-1, len(COLUMNS))
        index = pd.DatetimeIndex(pd.to_datetime([r[0] for r in self.rows], unit="ns", utc=True))
        return pd.DataFrame(data, index=index, columns=list(COLUMNS))

    def params(self, model: RollingCalibrated, at) -> tuple[float, float]:
        """``(a, b)`` for the bar opening at ``at`` scored by ``model``."""
        grid = (pd.Timestamp(at).value // self.block_len) * self.block_len
        key = (id(model), grid)
        if key != self._key:
            self._ab = model.block_params(self.frame(), grid)
            self._key = key
        return self._ab


def is_rolling(model) -> bool:
    """True when ``model`` (a bundle wrapper or a schedule) calibrates in rolling mode."""
    return isinstance(model, RollingCalibrated) or getattr(getattr(model, "ccfg", None), "mode", None) == "rolling"


def calibration_config_of(meta: dict) -> CalibrationConfig:
    """The calibration section a bundle or schedule was trained with (static when absent)."""
    section = (meta.get("config") or {}).get("calibration") or {}
    return CalibrationConfig.model_validate(section)


def with_calibration(bundle, ccfg: CalibrationConfig | None = None):
    """The bundle itself for static mode, wrapped in :class:`RollingCalibrated` for rolling."""
    ccfg = ccfg or calibration_config_of(bundle.meta)
    return RollingCalibrated(bundle, ccfg) if ccfg.mode == "rolling" else bundle
