"""The 12 causal features: one definition, a batch entry point and a streaming one.

Every value at bar ``t`` uses bars ``<= t`` of the same contiguous stretch only.

Definitions (defaults of ``configs/default.yaml`` in brackets; ``r_t`` = log_returns_1;
``i`` = position of the bar inside its contiguous stretch, 0 for the first bar;
"first finite at" is that position, so warm-up rows are ``i`` below it):

====================  ======================================================================  ===============
name                  exact definition                                                        first finite at
====================  ======================================================================  ===============
log_returns_1         ln(close_t / close_{t-1})                                                i = 1
log_returns_5         ln(close_t / close_{t-L}) [L = return_lag_long = 5]                      i = L
realized_vol_20       sample std (ddof=1) of r over the last W bars incl. t [W = 20]           i = W
ewma_vol_fast         sqrt(E_t), E = EWMA of r^2, recursive (pandas ``adjust=False``),         i = S_f
                      alpha = 2/(S+1) [S_f = 20], E seeded with the first r^2 of the stretch;
                      NaN until S squared returns have been seen (``ta`` EMAIndicator)
ewma_vol_slow         same with S_s [96]                                                       i = S_s
momentum_20           close_t / close_{t-M} - 1 [M = 20] (``ta`` ROCIndicator / 100)          i = M
rsi_14                ``ta`` RSIIndicator(window=N) [N = 14]: Wilder smoothing (alpha = 1/N,   i = N - 1
                      recursive) of gains/losses of close, both seeded with 0 on the first
                      bar of the stretch; RSI = 100 - 100/(1 + avg_gain/avg_loss), 100 when
                      avg_loss == 0
volume_zscore         (v_t - mean_V) / std_V, mean and sample std (ddof=1) of volume over the  i = V - 1
                      last V bars incl. t [V = 96]; 0 when all V volumes are equal
spread                (high_t - low_t) / close_t                                               i = 0
sma_crossover         SMA_fast(close) / SMA_slow(close) - 1 [5, 20] (``ta`` SMAIndicator)      i = slow - 1
time_of_day_sin       sin(2*pi*minute_of_day/1440), minute_of_day = 60*hour + minute of the    i = 0
                      bar OPEN time in UTC
day_of_week_sin       sin(2*pi*weekday/7), weekday of the bar OPEN time in UTC, Monday = 0     i = 0
====================  ======================================================================  ===============

Gap policy: each contiguous stretch (``core.ohlcv.segment_ids``) is computed
independently, as if the data started fresh after the gap. No feature ever spans
missing bars and the warm-up restarts after every gap, so e.g. ``log_returns_1`` of the
first bar after a gap is NaN instead of a return over 30 minutes. Warm-up values are
NaN; they are never filled (downstream code drops them explicitly).

With the defaults all 12 features are finite from position 96 of a stretch on, so
``warmup_bars() == 97``.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import deque

import numpy as np
import pandas as pd
import ta

from core.config import FeatureConfig
from core.errors import DataError
from core.ohlcv import COLUMNS, checked_bars, segment_ids
from core.timeframes import timeframe_seconds

FEATURE_NAMES: tuple[str, ...] = (
    "log_returns_1",
    "log_returns_5",
    "realized_vol_20",
    "ewma_vol_fast",
    "ewma_vol_slow",
    "momentum_20",
    "rsi_14",
    "volume_zscore",
    "spread",
    "sma_crossover",
    "time_of_day_sin",
    "day_of_week_sin",
)

# Bump whenever a definition above changes: bundles store the hash and refuse a mismatch.
FEATURE_DEFINITIONS_VERSION = "nts-features-v1 (per-stretch gap policy, ta 0.11 RSI/EMA/ROC/SMA)"

_N = len(FEATURE_NAMES)
_TWO_PI = 2.0 * math.pi


def _cfg(cfg: FeatureConfig | None) -> FeatureConfig:
    return cfg if cfg is not None else FeatureConfig()


def warmup_bars(cfg: FeatureConfig | None = None) -> int:
    """Bars from the start of a stretch until all 12 features are finite.

    Equals the position of the first all-finite row plus one (97 with the defaults).
    """
    c = _cfg(cfg)
    first_finite = max(
        1,                                   # log_returns_1
        c.return_lag_long,                   # log_returns_5
        c.realized_vol_window,               # needs W returns, the first one at i = 1
        c.ewma_vol_fast_span,                # min_periods = span squared returns
        c.ewma_vol_slow_span,
        c.momentum_window,
        c.rsi_window - 1,                    # ta seeds gains/losses with 0 on bar 0
        c.volume_z_window - 1,
        c.sma_slow - 1,
    )
    return first_finite + 1


# Seed weight the recursive features may keep of the bars before a history starts: with
# 1e-12 even a seed 1e4 times today's squared return moves a volatility feature by < 1e-8
# relative, far below what can change a calibrated probability at 1e-6.
MEMORY_TOLERANCE = 1e-12


def memory_bars(cfg: FeatureConfig | None = None, tol: float = MEMORY_TOLERANCE) -> int:
    """Bars after which every recursive feature has forgotten its start to ``tol``.

    The EWMA volatilities and Wilder's RSI are recursive: their value at bar ``t`` keeps a
    weight ``(1 - alpha)^k`` of the state ``k`` bars back, so two histories that start at
    different bars agree only once that weight is negligible. The slowest decay decides
    (``ewma_vol_slow``, alpha = 2/97, with the defaults: 1,327 bars at 1e-12). The rolling
    features (windows of at most a few hundred bars) forget exactly within
    :func:`warmup_bars`, which this also covers.
    """
    c = _cfg(cfg)
    alphas = [_ewma_alpha(c.ewma_vol_fast_span), _ewma_alpha(c.ewma_vol_slow_span), 1.0 / c.rsi_window]
    slowest = min(alphas)
    return max(warmup_bars(c), int(math.ceil(math.log(tol) / math.log1p(-slowest))))


def feature_definitions_hash(cfg: FeatureConfig | None = None) -> str:
    """sha256 over the feature names, the definitions version and the parameters.

    A model bundle stores it and refuses bars whose features were built differently.
    """
    c = _cfg(cfg)
    payload = {
        "names": list(FEATURE_NAMES),
        "version": FEATURE_DEFINITIONS_VERSION,
        "params": c.model_dump(mode="json"),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


# ----------------------------------------------------------------------------- batch

def _ewma_alpha(span: int) -> float:
    # Same arithmetic as pandas' span -> com -> alpha so batch and streaming agree bit for bit.
    com = (span - 1) / 2.0
    return 1.0 / (1.0 + com)


def _stretch_features(close: pd.Series, high: pd.Series, low: pd.Series, volume: pd.Series,
                      c: FeatureConfig, out: np.ndarray) -> None:
    """Fill columns 0..9 of ``out`` (rows of one contiguous stretch), vectorised."""
    r1 = np.log(close / close.shift(1))
    out[:, 0] = r1.to_numpy()
    out[:, 1] = np.log(close / close.shift(c.return_lag_long)).to_numpy()
    out[:, 2] = r1.rolling(c.realized_vol_window, min_periods=c.realized_vol_window).std(ddof=1).to_numpy()
    r2 = r1 * r1
    out[:, 3] = np.sqrt(ta.trend.EMAIndicator(r2, window=c.ewma_vol_fast_span).ema_indicator().to_numpy())
    out[:, 4] = np.sqrt(ta.trend.EMAIndicator(r2, window=c.ewma_vol_slow_span).ema_indicator().to_numpy())
    out[:, 5] = ta.momentum.ROCIndicator(close, window=c.momentum_window).roc().to_numpy() / 100.0
    out[:, 6] = ta.momentum.RSIIndicator(close, window=c.rsi_window).rsi().to_numpy()
    w = c.volume_z_window
    roll = volume.rolling(w, min_periods=w)
    mean, std = roll.mean().to_numpy(), roll.std(ddof=1).to_numpy()
    constant = (roll.max() == roll.min()).to_numpy()  # std 0: no deviation, z defined as 0
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (volume.to_numpy() - mean) / std
    out[:, 7] = np.where(constant, 0.0, z)
    out[:, 8] = ((high - low) / close).to_numpy()
    fast = ta.trend.SMAIndicator(close, window=c.sma_fast).sma_indicator().to_numpy()
    slow = ta.trend.SMAIndicator(close, window=c.sma_slow).sma_indicator().to_numpy()
    out[:, 9] = fast / slow - 1.0


def compute_features(frame: pd.DataFrame, cfg: FeatureConfig | None = None,
                     timeframe: str = "15m") -> pd.DataFrame:
    """The 12 features of every bar of a canonical OHLCV frame (batch, vectorised).

    Returns a float64 frame with the same index as ``frame`` and columns
    ``FEATURE_NAMES``; warm-up rows are NaN. Each contiguous stretch between gaps is
    computed independently (see the module docstring for every definition).
    Raises DataError for missing columns, a non-datetime or non-increasing index,
    non-finite values, and (like :meth:`StreamingFeatures.update`) a non-positive
    open/high/low/close or a negative volume.
    """
    c = _cfg(cfg)
    idx, data = checked_bars(frame, COLUMNS, "compute_features")

    n = len(frame)
    out = np.full((n, _N), np.nan, dtype="float64")
    high, low, close, volume = (pd.Series(data[:, k]) for k in range(1, 5))
    seg = segment_ids(idx, timeframe)
    bounds = np.flatnonzero(np.diff(seg)) + 1
    starts = np.r_[0, bounds].astype(int)
    ends = np.r_[bounds, n].astype(int)
    for s, e in zip(starts, ends):
        if e > s:
            sl = slice(s, e)
            # out[sl] is a view: the stretch writes its rows in place.
            _stretch_features(close.iloc[sl].reset_index(drop=True), high.iloc[sl].reset_index(drop=True),
                              low.iloc[sl].reset_index(drop=True), volume.iloc[sl].reset_index(drop=True),
                              c, out[sl])
    # Calendar features are pointwise, so they need no per-stretch treatment.
    minute = (idx.hour * 60 + idx.minute).to_numpy(dtype="float64")
    out[:, 10] = np.sin(_TWO_PI * minute / 1440.0)
    out[:, 11] = np.sin(_TWO_PI * idx.day_of_week.to_numpy(dtype="float64") / 7.0)
    return pd.DataFrame(out, index=frame.index, columns=list(FEATURE_NAMES))


# ------------------------------------------------------------------------- streaming

class StreamingFeatures:
    """The same 12 features, one closed bar at a time (paper/live, backtrader ``next()``).

    ``update()`` costs O(window) per bar: ring buffers for the rolling windows (the
    rolling std is recomputed over the buffer with a two-pass formula, so no error
    accumulates over long sessions) and recursive state for the EWMA and Wilder
    averages. A bar whose open time is not exactly one timeframe after the previous
    one starts a new stretch (state reset, warm-up restarts), as in the batch version.
    A bar that is not after the previous one is refused with DataError.
    """

    def __init__(self, cfg: FeatureConfig | None = None, timeframe: str = "15m") -> None:
        self.cfg = _cfg(cfg)
        self.timeframe = timeframe
        self._step_ns = timeframe_seconds(timeframe) * 1_000_000_000
        c = self.cfg
        self._alpha_fast = _ewma_alpha(c.ewma_vol_fast_span)
        self._alpha_slow = _ewma_alpha(c.ewma_vol_slow_span)
        self._alpha_rsi = 1.0 / c.rsi_window
        self._close_len = max(c.return_lag_long, c.momentum_window, c.sma_slow) + 1
        self.reset()

    def reset(self) -> None:
        """Forget everything, including the last timestamp."""
        self._last_ns: int | None = None
        self._reset_stretch()

    def _reset_stretch(self) -> None:
        c = self.cfg
        self._i = 0  # position of the next bar inside its stretch
        self._closes: deque[float] = deque(maxlen=self._close_len)
        self._returns: deque[float] = deque(maxlen=c.realized_vol_window)
        self._volumes: deque[float] = deque(maxlen=c.volume_z_window)
        self._ew_fast = self._ew_slow = 0.0
        self._n_r2 = 0
        self._gain = self._loss = 0.0

    def prime(self, frame: pd.DataFrame) -> None:
        """Set the state :meth:`update` would have after the bars of ``frame``, without making a
        feature row per bar (a restart or a cold server call: ~1 us a bar instead of ~40 us).

        Only the last contiguous stretch of ``frame`` matters (a gap resets the state); the
        recursions run in the same order with the same arithmetic as :meth:`update`, so a primed
        stream continues bit for bit like one fed every bar. DataError for a frame
        :func:`core.ohlcv.checked_bars` refuses (the same rules as :meth:`update`)."""
        idx, data = checked_bars(frame, COLUMNS, "StreamingFeatures.prime")
        self.reset()
        if len(idx) == 0:
            return
        seg = segment_ids(idx, self.timeframe)
        first = int(np.searchsorted(seg, seg[-1]))  # segment ids never decrease
        closes = data[first:, 3].tolist()
        c = self.cfg
        af, asl, ar = self._alpha_fast, self._alpha_slow, self._alpha_rsi
        ew_fast = ew_slow = gain_avg = loss_avg = 0.0
        prev = closes[0]
        returns: deque[float] = deque(maxlen=c.realized_vol_window)
        for k in range(1, len(closes)):
            close = closes[k]
            r = math.log(close / prev)
            returns.append(r)
            r2 = r * r
            if k == 1:
                ew_fast = ew_slow = r2
            else:
                ew_fast = (1.0 - af) * ew_fast + af * r2
                ew_slow = (1.0 - asl) * ew_slow + asl * r2
            diff = close - prev
            gain, loss = (diff if diff > 0 else 0.0), (-diff if diff < 0 else 0.0)
            gain_avg = (1.0 - ar) * gain_avg + ar * gain
            loss_avg = (1.0 - ar) * loss_avg + ar * loss
            prev = close
        self._i = len(closes)
        self._closes.extend(closes[-self._close_len:])
        self._returns = returns
        self._volumes.extend(data[first:, 4][-c.volume_z_window:].tolist())
        self._ew_fast, self._ew_slow, self._n_r2 = ew_fast, ew_slow, len(closes) - 1
        self._gain, self._loss = gain_avg, loss_avg
        self._last_ns = int(idx.asi8[-1])

    @property
    def bars_in_stretch(self) -> int:
        """Bars seen since the last reset or gap."""
        return self._i

    @staticmethod
    def _sample_std(values: deque) -> float:
        n = len(values)
        mean = sum(values) / n
        return math.sqrt(sum((x - mean) * (x - mean) for x in values) / (n - 1))

    def update(self, ts: pd.Timestamp, open: float, high: float, low: float, close: float,
               volume: float) -> np.ndarray:
        """Feed one closed bar (``ts`` = its open time); return its 12 features (NaN in warm-up)."""
        t = self._accept(ts, open, high, low, close, volume)
        out = np.full(_N, np.nan)
        i = self._i
        if i >= 1:
            out[0] = self._step_returns(close)
        # else: first bar of a stretch; gains/losses are seeded with 0 (ta's definition)
        self._closes.append(close)
        self._volumes.append(volume)
        self._window_features(out, i, close, volume)
        out[8] = (high - low) / close
        out[10] = math.sin(_TWO_PI * (t.hour * 60 + t.minute) / 1440.0)
        out[11] = math.sin(_TWO_PI * t.weekday() / 7.0)
        self._i = i + 1
        return out

    def _accept(self, ts: pd.Timestamp, open: float, high: float, low: float, close: float,
                volume: float) -> pd.Timestamp:
        """Check the bar (finite, prices > 0, volume >= 0, after the previous bar) and note its
        time (UTC, returned); a gap starts a fresh stretch."""
        t = pd.Timestamp(ts)
        t = t.tz_localize("UTC") if t.tz is None else t.tz_convert("UTC")
        t_ns = t.as_unit("ns").value
        vals = (open, high, low, close, volume)
        if not all(math.isfinite(v) for v in vals) or min(open, high, low, close) <= 0 or volume < 0:
            raise DataError(f"StreamingFeatures: invalid bar at {t}: open={open} high={high} low={low} "
                            f"close={close} volume={volume} (prices must be > 0, volume >= 0)")
        if self._last_ns is not None:
            if t_ns <= self._last_ns:
                raise DataError(f"StreamingFeatures: bar {t} is not after the previous bar "
                                f"{pd.Timestamp(self._last_ns, tz='UTC')}")
            if t_ns - self._last_ns != self._step_ns:
                self._reset_stretch()  # gap: start fresh, exactly like a new stretch in batch
        self._last_ns = t_ns
        return t

    def _step_returns(self, close: float) -> float:
        """Advance the return-based running state (return window, EWMA variances, RSI
        averages) by ``close`` against the previous close; return the log return."""
        prev = self._closes[-1]
        r = math.log(close / prev)
        self._returns.append(r)
        r2 = r * r
        if self._n_r2 == 0:
            self._ew_fast = self._ew_slow = r2
        else:
            self._ew_fast = (1.0 - self._alpha_fast) * self._ew_fast + self._alpha_fast * r2
            self._ew_slow = (1.0 - self._alpha_slow) * self._ew_slow + self._alpha_slow * r2
        self._n_r2 += 1
        diff = close - prev
        gain, loss = (diff if diff > 0 else 0.0), (-diff if diff < 0 else 0.0)
        self._gain = (1.0 - self._alpha_rsi) * self._gain + self._alpha_rsi * gain
        self._loss = (1.0 - self._alpha_rsi) * self._loss + self._alpha_rsi * loss
        return r

    def _window_features(self, out: np.ndarray, i: int, close: float, volume: float) -> None:
        """The features that need a full window (bar ``i`` of the stretch, its close and volume
        already appended) into ``out``; left NaN while their window is short."""
        c = self.cfg
        closes = self._closes
        if i >= c.return_lag_long:
            out[1] = math.log(close / closes[-1 - c.return_lag_long])
        if i >= c.realized_vol_window:
            out[2] = self._sample_std(self._returns)
        if self._n_r2 >= c.ewma_vol_fast_span:
            out[3] = math.sqrt(self._ew_fast)
        if self._n_r2 >= c.ewma_vol_slow_span:
            out[4] = math.sqrt(self._ew_slow)
        if i >= c.momentum_window:
            past = closes[-1 - c.momentum_window]
            out[5] = ((close - past) / past * 100.0) / 100.0  # ta's ROC arithmetic
        if i >= c.rsi_window - 1:
            out[6] = 100.0 if self._loss == 0 else 100.0 - 100.0 / (1.0 + self._gain / self._loss)
        if i >= c.volume_z_window - 1:
            vols = self._volumes
            if max(vols) == min(vols):
                out[7] = 0.0
            else:
                mean = sum(vols) / len(vols)
                out[7] = (volume - mean) / self._sample_std(vols)
        if i >= c.sma_slow - 1:
            buf = list(closes)
            fast = sum(buf[-c.sma_fast:]) / c.sma_fast
            slow = sum(buf[-c.sma_slow:]) / c.sma_slow
            out[9] = fast / slow - 1.0
