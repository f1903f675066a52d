"""Online Platt scaling (OPS), calibeating by tracking (TOPS) and by hedging (HOPS), evaluation only.

Gupta & Ramdas, "Online Platt Scaling with Calibeating" (ICML 2023). Compared by
``models.schedule_report`` with the static calibrator and rolling Platt refits
(``models.recalibration``); not a trading-time ``calibration.mode``.

**OPS.** ``P_t = sigmoid(a_t z_t + b_t)`` on the features ``x = (z, 1)`` (``z`` the network's
logit). ``theta = (a, b)`` starts at the bundle's static Platt calibrator (an isotonic bundle
starts at ``(1, 0)``: plain ``sigmoid(z)``, which is what its isotonic map reads) and is updated
by the Online Newton Step for the logistic loss, one update per label:

* ``g = (sigmoid(theta . x_s) - y_s) x_s`` (the gradient at the CURRENT theta: with delayed
  labels the theta that forecast bar s is long gone);
* ``A <- A + g g^T`` with ``A_0 = I / (gamma D)^2``;
* ``theta <- Proj_A(theta - A^{-1} g / gamma)``, ``Proj_A`` the projection in the ``A`` norm onto
  the ball ``|theta| <= radius`` (solved by bisection on its Lagrange multiplier).

Choices (the paper's published defaults, as far as we could establish them): ``gamma = 0.1``,
``D = 1`` (so ``A_0 = 100 I``: the first steps are at most about a tenth of a plain gradient
step, which keeps the static start), ``radius = 100`` (far from binding: real Platt
parameters are of order 1). No forgetting: ``A`` grows with every label, so late steps shrink
like ``1/n`` and OPS drifts more slowly than the 30-day rolling window (README: measured).

**Which labels, when.** The same rule as rolling recalibration: the label of bar s (from
:func:`models.recalibration.known_labels`) is used at bar t only when ``ts[s] + horizon * bar
<= ts[t]`` (its whole horizon has closed; an early barrier touch is not used). Updates are
applied in bar order. Bars of the network's own training span (``fitted_until``) are never
used (their logits are in-sample); the validation span after it is (the static calibrator was
fitted there, so OPS passes over it as a warm-up). ``P_t`` uses the theta after every update
known at t and nothing later: appending bars never changes an earlier P. The online state
starts at the frame's first bar, so a frame must start before the end of the training span
(``history_bars`` earlier, so its first usable bar has a logit) for P not to depend on where
it starts; :func:`online_scores` cuts frames that way.

**TOPS (calibeating by tracking).** The OPS forecast is binned into ``bins`` equal-width bins
of [0, 1]. At bar t the output is the mean outcome of the known, usable past bars whose OPS
forecast fell into the same bin as ``P_ops(t)``, once that bin holds ``min_bin`` of them;
below that the OPS forecast itself.

**HOPS (calibeating by hedging).** Per OPS bin, a separate Foster (1999) calibrated forecaster
on the grid ``0, 1/m, .., 1`` (``m = bins``): with ``d_i`` the sum of ``y - i/m`` over the known
outcomes of the bars that bin forecast ``i/m``, it picks the first ``i`` with ``d_i >= 0 >=
d_{i+1}`` and forecasts ``i/m`` with probability ``-d_{i+1} / (d_i - d_{i+1})``, else
``(i+1)/m``. The draw is one uniform per bar from a seeded generator in bar order (so the
forecast is reproducible and appending bars never changes an earlier one). Below ``min_bin``
known outcomes in the bin, the OPS forecast (the bin's forecaster runs, and learns from its
own picks, from the first bar). HOPS is randomised and forecasts on a 0.1 grid:
it targets calibration, not log loss or Brier.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.timeframes import timeframe_seconds
from models.calibration import Calibrator
from models.recalibration import known_labels


@dataclass(frozen=True)
class OnlineConfig:
    """ONS and tracking settings (module docstring)."""

    gamma: float = 0.1       # ONS step: theta moves by A^{-1} g / gamma
    diameter: float = 1.0    # D of A_0 = I / (gamma D)^2
    radius: float = 100.0    # |(a, b)| <= radius (generalised projection)
    bins: int = 10           # tracking bins on [0, 1]
    min_bin: int = 30        # known outcomes a bin needs before tracking replaces OPS


def _sigmoid(u: float) -> float:
    return 1.0 / (1.0 + math.exp(-u)) if u >= 0 else math.exp(u) / (1.0 + math.exp(u))


def project(theta: np.ndarray, a_mat: np.ndarray, radius: float) -> np.ndarray:
    """``argmin_x (x - theta)^T A (x - theta)`` over ``|x| <= radius`` (``A`` positive definite):
    ``x(lam) = (A + lam I)^{-1} A theta`` with ``lam >= 0`` found by bisection on ``|x| = radius``."""
    if float(theta @ theta) <= radius * radius:
        return theta
    eye = np.eye(len(theta))
    at = a_mat @ theta

    def point(lam: float) -> np.ndarray:
        return np.linalg.solve(a_mat + lam * eye, at)

    lo, hi = 0.0, 1.0
    while np.linalg.norm(point(hi)) > radius:
        hi *= 2.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.linalg.norm(point(mid)) > radius else (lo, mid)
    return point(hi)


class OnsPlatt:
    """Platt parameters updated by the Online Newton Step for the logistic loss."""

    def __init__(self, a: float, b: float, cfg: OnlineConfig) -> None:
        self.theta = np.array([a, b], dtype=np.float64)
        self.cfg = cfg
        self.a_mat = np.eye(2) / (cfg.gamma * cfg.diameter) ** 2
        self.a_inv = np.eye(2) * (cfg.gamma * cfg.diameter) ** 2

    def update(self, z: float, y: float) -> None:
        """One ONS step on the logistic loss of (logit ``z``, outcome ``y``)."""
        x = np.array([z, 1.0])
        g = (_sigmoid(float(self.theta @ x)) - y) * x
        self.a_mat += np.outer(g, g)
        ag = self.a_inv @ g  # Sherman-Morrison keeps A^{-1} current without a solve
        self.a_inv -= np.outer(ag, ag) / (1.0 + float(g @ ag))
        step = self.theta - (self.a_inv @ g) / self.cfg.gamma
        self.theta = project(step, self.a_mat, self.cfg.radius)


def start_params(calibrator: Calibrator) -> tuple[float, float]:
    """OPS start: the static Platt ``(a, b)``; ``(1, 0)`` for an isotonic calibrator."""
    if calibrator.kind == "platt":
        return float(calibrator.params["a"]), float(calibrator.params["b"])
    return 1.0, 0.0


def usable_bars(index: pd.DatetimeIndex, logits: np.ndarray, labels: np.ndarray,
                fitted_until: int | None) -> np.ndarray:
    """Bars whose label may update the calibrators: finite logit and label, after the training span."""
    usable = np.isfinite(logits) & np.isfinite(labels)
    if fitted_until is not None:
        usable &= pd.DatetimeIndex(index).as_unit("ns").asi8 > fitted_until
    return usable


def known_at_ns(index: pd.DatetimeIndex, horizon: int, timeframe: str) -> np.ndarray:
    """Per bar, the time (ns) from which its label is known: open time + ``horizon`` bars."""
    bar = timeframe_seconds(timeframe) * 1_000_000_000
    return pd.DatetimeIndex(index).as_unit("ns").asi8 + horizon * bar


def ops_probabilities(ts: np.ndarray, known_at: np.ndarray, logits: np.ndarray, labels: np.ndarray,
                      usable: np.ndarray, start: tuple[float, float], cfg: OnlineConfig) -> np.ndarray:
    """OPS P per bar (NaN where the logit is NaN); bar t sees the labels known at ``ts[t]``."""
    ons = OnsPlatt(start[0], start[1], cfg)
    queue = np.flatnonzero(usable)  # in bar order, which is known-time order
    nxt = 0
    out = np.full(len(ts), np.nan)
    for t in range(len(ts)):
        while nxt < len(queue) and known_at[queue[nxt]] <= ts[t]:
            s = queue[nxt]
            ons.update(float(logits[s]), float(labels[s]))
            nxt += 1
        if np.isfinite(logits[t]):
            out[t] = _sigmoid(float(ons.theta[0] * logits[t] + ons.theta[1]))
    return out


def tracking(ts: np.ndarray, known_at: np.ndarray, forecast: np.ndarray, labels: np.ndarray,
             usable: np.ndarray, cfg: OnlineConfig) -> np.ndarray:
    """Calibeating by tracking: per bar, the mean known outcome of ``forecast``'s bin (module
    docstring); ``forecast`` itself while the bin holds fewer than ``cfg.min_bin`` outcomes."""
    bin_of = np.clip(np.nan_to_num(forecast * cfg.bins, nan=0.0).astype(int), 0, cfg.bins - 1)
    queue = np.flatnonzero(usable & np.isfinite(forecast))
    count = np.zeros(cfg.bins)
    total = np.zeros(cfg.bins)
    nxt = 0
    out = forecast.astype(np.float64, copy=True)
    for t in range(len(ts)):
        while nxt < len(queue) and known_at[queue[nxt]] <= ts[t]:
            s = queue[nxt]
            count[bin_of[s]] += 1
            total[bin_of[s]] += labels[s]
            nxt += 1
        k = bin_of[t]
        if np.isfinite(forecast[t]) and count[k] >= cfg.min_bin:
            out[t] = total[k] / count[k]
    return out


def _foster_pick(d: np.ndarray, u: float) -> int:
    """Grid index Foster's forecaster picks for deficits ``d`` (``d[0] >= 0 >= d[-1]``) and draw ``u``."""
    i = int(np.flatnonzero((d[:-1] >= 0) & (d[1:] <= 0))[0])
    denom = d[i] - d[i + 1]
    if denom == 0:
        return i
    return i if u < -d[i + 1] / denom else i + 1


def hedging(ts: np.ndarray, known_at: np.ndarray, forecast: np.ndarray, labels: np.ndarray,
            usable: np.ndarray, cfg: OnlineConfig, seed: int = 0) -> np.ndarray:
    """Calibeating by hedging (module docstring): per bar, the grid value Foster's forecaster of
    ``forecast``'s bin picks; ``forecast`` itself while the bin holds fewer than ``cfg.min_bin``
    known outcomes."""
    m = cfg.bins
    bin_of = np.clip(np.nan_to_num(forecast * cfg.bins, nan=0.0).astype(int), 0, cfg.bins - 1)
    draws = np.random.default_rng(seed).random(len(ts))
    deficit = np.zeros((cfg.bins, m + 1))
    count = np.zeros(cfg.bins)
    picked = np.zeros(len(ts), dtype=int)
    queue = np.flatnonzero(usable & np.isfinite(forecast))
    nxt = 0
    out = forecast.astype(np.float64, copy=True)
    for t in range(len(ts)):
        while nxt < len(queue) and known_at[queue[nxt]] <= ts[t]:
            s = queue[nxt]
            deficit[bin_of[s], picked[s]] += labels[s] - picked[s] / m
            count[bin_of[s]] += 1
            nxt += 1
        if not np.isfinite(forecast[t]):
            continue
        k = bin_of[t]
        picked[t] = _foster_pick(deficit[k], draws[t])
        if count[k] >= cfg.min_bin:
            out[t] = picked[t] / m
    return out


def online_probabilities(index: pd.DatetimeIndex, logits: np.ndarray, labels: np.ndarray, horizon: int,
                         timeframe: str, calibrator: Calibrator, fitted_until: int | None,
                         cfg: OnlineConfig = OnlineConfig()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(P_ops, P_tops, P_hops)`` per bar of a frame scored by one model (module docstring)."""
    ts = pd.DatetimeIndex(index).as_unit("ns").asi8
    known_at = known_at_ns(index, horizon, timeframe)
    usable = usable_bars(index, logits, labels, fitted_until)
    p_ops = ops_probabilities(ts, known_at, logits, labels, usable, start_params(calibrator), cfg)
    return (p_ops, tracking(ts, known_at, p_ops, labels, usable, cfg),
            hedging(ts, known_at, p_ops, labels, usable, cfg))


def training_end(model) -> int | None:
    """End (ns) of a bundle's or ensemble's network training span (None when not recorded)."""
    train = (model.meta.get("spans") or {}).get("train")
    return int(pd.Timestamp(train[1]).as_unit("ns").value) if train else None


def model_online_scores(model, frame: pd.DataFrame, cfg: OnlineConfig = OnlineConfig()
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(P_ops, P_tops, P_hops)`` per bar of ``frame`` for one bundle or seed ensemble (static calibrator
    ``model.calibrator``). The online state starts ``history_bars`` before the end of the
    model's training span (or at the frame's start when that is later): bars before it get NaN."""
    fitted_until = training_end(model)
    lo = 0
    if fitted_until is not None:
        first_after = int(frame.index.as_unit("ns").asi8.searchsorted(fitted_until, side="right"))
        lo = max(0, first_after - int(model.history_bars))
    sub = frame.iloc[lo:]
    logits = model.predict_logit(sub).to_numpy().astype(np.float64)
    labels = known_labels(sub, model.label_cfg, model.timeframe)
    scores = online_probabilities(sub.index, logits, labels, model.label_cfg.horizon, model.timeframe,
                                  model.calibrator, fitted_until, cfg)
    pad = np.full(lo, np.nan)
    return tuple(np.r_[pad, p] for p in scores)


def online_scores(model, frame: pd.DataFrame, cfg: OnlineConfig = OnlineConfig()
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(P_ops, P_tops, P_hops)`` per bar of ``frame`` for a bundle, an ensemble or a schedule. A
    schedule (anything with ``fold_positions``) runs each fold's own OPS/TOPS from its own
    training-span end and keeps it for the bars of that fold's validity span."""
    if not hasattr(model, "fold_positions"):
        return model_online_scores(model, frame, cfg)
    out = tuple(np.full(len(frame), np.nan) for _ in range(3))
    k_of = model.fold_positions(frame.index)
    for k in np.unique(k_of[k_of >= 0]):
        pos = np.flatnonzero(k_of == k)
        a, b = int(pos[0]), int(pos[-1]) + 1
        for dst, src in zip(out, model_online_scores(model.bundle(int(k)), frame.iloc[:b], cfg)):
            dst[a:b] = src[a:]
    return out
