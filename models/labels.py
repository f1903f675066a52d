"""Triple-barrier labels as an event table shared by training, strategies and sweeps.

Definition (parameters from ``cfg.labels``; defaults in brackets):

* Entry at ``close[t]``. Profit barrier ``U = close[t] * (1.0 + profit)`` [0.008], stop
  barrier ``D = close[t] * (1.0 - stop)`` [0.004], both computed exactly with these
  float64 expressions.
* Walk ``h = 1 .. horizon`` [8] over the following bars. Bar ``t+h`` touches the profit
  barrier when ``high[t+h] >= U`` and the stop when ``low[t+h] <= D``; equality counts as
  a touch. The first bar that touches decides: ``profit`` (label 1) or ``stop`` (label 0).
  If that bar touches both, ``cfg.tie`` decides: ``"stop"`` (default, conservative: the
  intrabar order is unknown, assume the worst) or ``"profit"``.
* If nothing is touched by ``t+horizon`` the exit is ``time`` (label 0) at
  ``close[t+horizon]``.
* Bars without a full horizon (the last ``horizon`` bars) and bars whose horizon crosses a
  data gap (``timestamp[t+horizon] - timestamp[t] != horizon * timeframe``) get no label:
  ``label``/``exit_offset``/``exit_price``/``gross_return`` NaN and ``exit_kind`` "".
  That holds even if a barrier is touched before the gap, so that labelled bars never
  depend on missing data.
* ``scale: vol`` (``labels.scale``) replaces the fixed percentages by per-bar ones:
  ``U = close[t] * (1 + vol_profit * w_t)``, ``D = close[t] * (1 - vol_stop * w_t)`` with
  ``w_t = sigma_t * sqrt(horizon)`` and ``sigma_t`` the causal EWMA volatility forecast of bar t
  (:func:`vol_barrier_factors`); bars in its warm-up get no label. Same kernel, same rules.
* ``exit_price`` is the barrier price for profit/stop exits (no gap-through fill at the
  open is modelled) and ``close[t+horizon]`` for time exits; ``gross_return`` is
  ``exit_price / close[t] - 1`` before fees.
"""
from __future__ import annotations

import math
from pathlib import Path

import numba
import numpy as np
import pandas as pd

from core.config import FeatureConfig, LabelConfig
from core.errors import DataError
from core.files import atomic_path, check_output_file
from core.ohlcv import checked_bars
from core.policy import Policy, barrier_width, barrier_widths_of
from core.policy import breakeven_probability  # noqa: F401  (re-exported: the formula lives in core)
from core.timeframes import timeframe_seconds
from models.features import FEATURE_NAMES, MEMORY_TOLERANCE, StreamingFeatures, compute_features

EVENT_COLUMNS: tuple[str, ...] = ("label", "exit_offset", "exit_kind", "exit_price", "gross_return")
EXIT_KINDS: tuple[str, ...] = ("profit", "stop", "time")

_KIND_NAMES = ["", "profit", "stop", "time"]  # index = kind code; code 0 = unlabelled
_SIGMA_COL = FEATURE_NAMES.index("ewma_vol_fast")


def _cfg(cfg: LabelConfig | None) -> LabelConfig:
    return cfg if cfg is not None else LabelConfig()


def _arrays(frame: pd.DataFrame, who: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """high, low, close and ns timestamps of a frame, refusing what cannot be labelled."""
    idx, data = checked_bars(frame, ("high", "low", "close"), who)
    ts = idx.asi8
    return data[:, 0], data[:, 1], data[:, 2], ts


def _kind_strings(code: np.ndarray) -> pd.api.extensions.ExtensionArray | np.ndarray:
    """Kind codes -> pandas' default string column; decoding a dictionary array in pyarrow is
    ~10x faster than converting 100k Python strings."""
    try:
        import pyarrow as pa

        arr = pa.DictionaryArray.from_arrays(pa.array(code.astype(np.int32)), pa.array(_KIND_NAMES))
        return pd.array(arr.dictionary_decode(), dtype=pd.Series([""]).dtype)
    except ImportError:  # pragma: no cover - pyarrow is a dependency, kept as a fallback
        return np.array(_KIND_NAMES, dtype=object)[code]


def _to_frame(index: pd.Index, code: np.ndarray, offset: np.ndarray, price: np.ndarray,
              close: np.ndarray) -> pd.DataFrame:
    labelled = code > 0
    label = np.where(labelled, (code == 1).astype("float64"), np.nan)
    offset = np.where(labelled, offset.astype("float64"), np.nan)
    price = np.where(labelled, price, np.nan)
    return pd.DataFrame({
        "label": label,
        "exit_offset": offset,
        "exit_kind": _kind_strings(code),
        "exit_price": price,
        "gross_return": price / close - 1.0,
    }, index=index)


@numba.njit(cache=True, nogil=True)
def _label_kernel(high: np.ndarray, low: np.ndarray, close: np.ndarray, ts: np.ndarray, span_ns: int,
                  profit: float, stop: float, horizon: int, tie_stop: bool):
    """Fixed-percentage barriers: :func:`_barrier_kernel` with the same factor on every bar."""
    n = close.shape[0]
    return _barrier_kernel(high, low, close, ts, span_ns, np.full(n, 1.0 + profit), np.full(n, 1.0 - stop),
                           horizon, tie_stop)


@numba.njit(cache=True, nogil=True)
def _barrier_kernel(high: np.ndarray, low: np.ndarray, close: np.ndarray, ts: np.ndarray, span_ns: int,
                    up: np.ndarray, dn: np.ndarray, horizon: int, tie_stop: bool):
    """Compiled labelling: (kind code int8, exit offset int32, exit price) per bar.

    Kind codes: 0 unlabelled, 1 profit, 2 stop, 3 time; offset and price are meaningful
    only where the code is > 0. Bar t has a full, gap-free horizon when
    ``ts[t + horizon] - ts[t] == span_ns`` (timestamps strictly increasing, on the grid).
    Instead of walking each bar's horizon with early exits (branchy, as the Python
    reference does), it makes one branch-free pass per step h = horizon .. 1 over all bars,
    keeping the smallest touching h, which the compiler vectorises. Same float64 barrier
    arithmetic as the reference (no fastmath), so the results are identical.
    """
    n = close.shape[0]
    code = np.zeros(n, dtype=np.int8)
    offset = np.zeros(n, dtype=np.int32)
    price = np.empty(n)
    m = n - horizon
    for t in range(max(m, 0), n):
        price[t] = np.nan
    if m <= 0:
        return code, offset, price
    never = horizon + 1
    # narrow ints keep the passes below in cache (horizon <= 1000 by config)
    first_p = np.full(m, never, dtype=np.int32)  # first step touching the profit barrier
    first_s = np.full(m, never, dtype=np.int32)  # first step touching the stop barrier
    for h in range(horizon, 0, -1):  # descending: the last write is the smallest h
        hi = high[h:h + m]
        lo = low[h:h + m]
        h32 = np.int32(h)
        for t in range(m):
            first_p[t] = h32 if hi[t] >= close[t] * up[t] else first_p[t]
            first_s[t] = h32 if lo[t] <= close[t] * dn[t] else first_s[t]
    tie_profit = not tie_stop
    ts_end = ts[horizon:]
    for t in range(m):  # branch-free selection
        p = first_p[t]
        s = first_s[t]
        # profit strictly first, or on the same bar as the stop when ties go to profit
        is_p = (p < s) | ((p == s) & (p != never) & tie_profit)
        is_s = (not is_p) & (s != never)
        kind = 1 if is_p else (2 if is_s else 3)
        # a bar without a finite barrier (no volatility forecast yet) gets no label
        known = (ts_end[t] - ts[t] == span_ns) & np.isfinite(up[t]) & np.isfinite(dn[t])
        code[t] = kind if known else 0
        offset[t] = p if is_p else (s if is_s else horizon)
        price[t] = close[t] * up[t] if is_p else (close[t] * dn[t] if is_s else close[t + horizon])
    return code, offset, price


def label_arrays(frame: pd.DataFrame, cfg: LabelConfig | None = None, timeframe: str = "15m",
                 width: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The labelling itself as arrays: kind code (int8: 0 none, 1 profit, 2 stop, 3 time),
    exit offset (int32) and exit price per bar (offset and price meaningful only where the
    code is > 0). :func:`triple_barrier_events` wraps it in a table. ``width`` (``scale: vol``
    only): the per-bar widths to put the barriers at instead of ``sigma_t * sqrt(cfg.horizon)``
    -- a traded width whose horizon differs from the time exit ``cfg.horizon`` (a sweep row
    whose max hold is not the trained horizon)."""
    c = _cfg(cfg)
    high, low, close, ts = _arrays(frame, "triple_barrier_events")
    span_ns = c.horizon * timeframe_seconds(timeframe) * 1_000_000_000
    if c.scale == "vol":
        up, dn = vol_barrier_factors(frame, c, timeframe, width)
        return _barrier_kernel(high, low, close, ts, span_ns, up, dn, int(c.horizon), c.tie == "stop")
    return _label_kernel(high, low, close, ts, span_ns, float(c.profit), float(c.stop), int(c.horizon),
                         c.tie == "stop")


def width_feature_config(vol_span: int) -> FeatureConfig:
    """The feature config whose ``ewma_vol_fast`` is the barriers' ``sigma_t`` (span ``vol_span``):
    batch (:func:`barrier_widths`) and streaming (:class:`indicators.bt_features.BarrierWidth`,
    a :class:`models.features.StreamingFeatures` on it) read the same definition."""
    return FeatureConfig(ewma_vol_fast_span=int(vol_span))


def barrier_widths(frame: pd.DataFrame, horizon: int, vol_span: int, timeframe: str = "15m") -> np.ndarray:
    """Per bar the volatility-scaled barrier width ``w_t = sigma_t * sqrt(horizon)``
    (:func:`core.policy.barrier_width`), ``sigma_t`` the causal EWMA volatility of 1-bar log
    returns (the ``ewma_vol_fast`` feature's definition with span ``vol_span``: NaN in its
    warm-up and again after every gap). The labeller and every trading engine use it."""
    sigma = compute_features(frame, width_feature_config(vol_span), timeframe)["ewma_vol_fast"]
    return barrier_widths_of(np.ascontiguousarray(sigma.to_numpy(dtype=np.float64)), int(horizon))


class StreamingWidth:
    """:func:`barrier_widths` one closed bar at a time (paper/live ``next()``, server bar
    streams): a :class:`models.features.StreamingFeatures` on :func:`width_feature_config`,
    whose ``ewma_vol_fast`` is ``sigma_t``, then :func:`core.policy.barrier_width`. Equal to
    the batch widths of the same bars (to 1e-12; tested)."""

    def __init__(self, horizon: int, vol_span: int, timeframe: str = "15m") -> None:
        self.horizon = int(horizon)
        self._stream = StreamingFeatures(width_feature_config(vol_span), timeframe)

    @classmethod
    def of_policy(cls, policy: Policy) -> "StreamingWidth":
        """The width stream of a volatility-scaled ``policy`` (its horizon, span, timeframe)."""
        return cls(policy.barrier_horizon, policy.vol_span, policy.timeframe)

    def prime(self, history: pd.DataFrame) -> None:
        """Start from the state after the bars of ``history`` (:meth:`StreamingFeatures.prime`)."""
        self._stream.prime(history)

    def update(self, ts: pd.Timestamp, open: float, high: float, low: float, close: float,
               volume: float) -> float:
        """Feed one closed bar (``ts`` = its open time); its width (NaN in the warm-up)."""
        row = self._stream.update(ts, open, high, low, close, volume)
        return float(barrier_width(float(row[_SIGMA_COL]), self.horizon))


def width_memory_bars(vol_span: int, tol: float = MEMORY_TOLERANCE) -> int:
    """Bars after which the barrier width has forgotten where its history started (to ``tol``):
    the EWMA of span ``vol_span`` keeps a weight ``(1 - alpha)^k`` of the state ``k`` bars back
    (as :func:`models.features.memory_bars` for the features). With fewer bars before it a
    bar's width depends on where the bars begin: a request, a stream or a restart then differs
    from the backtest's width at that bar."""
    alpha = 2.0 / (int(vol_span) + 1.0)
    return max(int(vol_span) + 1, int(math.ceil(math.log(tol) / math.log1p(-alpha))))


def policy_widths(frame: pd.DataFrame, policy: Policy) -> np.ndarray:
    """The barrier width of every bar of ``frame`` that ``policy`` trades: 1.0 for fixed
    barriers, :func:`barrier_widths` with the policy's horizon and span for scaled ones."""
    if not policy.vol_scaled:
        return np.ones(len(frame))
    return barrier_widths(frame, policy.barrier_horizon, policy.vol_span, policy.timeframe)


def vol_barrier_factors(frame: pd.DataFrame, cfg: LabelConfig, timeframe: str = "15m",
                        width: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``labels.scale: vol``: per bar ``(1 + vol_profit * w_t, 1 - vol_stop * w_t)`` with
    ``w_t`` of :func:`barrier_widths` (NaN in its warm-up, where the bar gets no label), or the
    given ``width`` (one per bar of ``frame``)."""
    if width is None:
        width = barrier_widths(frame, cfg.horizon, cfg.vol_span, timeframe)
    elif len(width) != len(frame):
        raise ValueError(f"vol_barrier_factors: {len(width)} widths for {len(frame)} bars")
    return 1.0 + cfg.vol_profit * width, 1.0 - cfg.vol_stop * width


def describe_barriers(cfg: LabelConfig) -> str:
    """One line saying how the barriers are set (every report of label-based figures shows it)."""
    if cfg.scale == "vol":
        return (f"volatility-scaled barriers: profit +{cfg.vol_profit:g} x, stop -{cfg.vol_stop:g} x "
                f"sigma_t*sqrt({cfg.horizon}) (EWMA vol span {cfg.vol_span}), horizon {cfg.horizon} bars")
    return f"fixed barriers: profit +{cfg.profit:g}, stop -{cfg.stop:g}, horizon {cfg.horizon} bars"


def triple_barrier_events(frame: pd.DataFrame, cfg: LabelConfig | None = None,
                          timeframe: str = "15m") -> pd.DataFrame:
    """Event table of the triple barrier for every bar (numba-compiled, see ``_label_kernel``).

    Returns a frame indexed like ``frame`` with columns ``label`` (1.0 / 0.0 / NaN),
    ``exit_offset`` (1..horizon, NaN when unlabelled), ``exit_kind`` ("profit", "stop",
    "time" or ""), ``exit_price`` and ``gross_return``. See the module docstring for the
    exact rules (touch on equality, tie rule, gaps).
    """
    code, offset, price = label_arrays(frame, cfg, timeframe)
    return _to_frame(frame.index, code, offset, price, frame["close"].to_numpy(dtype="float64"))


def _reference_loop(high: list, low: list, close: list, ts: list, profit: float, stop: float,
                    horizon: int, tie_stop: bool, span_ns: int) -> tuple[list, list, list]:
    """The rules as a plain Python loop over lists: walk h = 1..horizon, stop at the first touch."""
    n = len(close)
    code = [0] * n
    offset = [0] * n
    price = [float("nan")] * n
    for t in range(n):
        if t + horizon >= n or ts[t + horizon] - ts[t] != span_ns:
            continue  # no full horizon, or it crosses a gap
        up = close[t] * (1.0 + profit)
        dn = close[t] * (1.0 - stop)
        kind, off, px = 3, horizon, close[t + horizon]
        for h in range(1, horizon + 1):
            touch_p = high[t + h] >= up
            touch_s = low[t + h] <= dn
            if touch_p and touch_s:
                if tie_stop:
                    kind, px = 2, dn
                else:
                    kind, px = 1, up
                off = h
                break
            if touch_s:
                kind, off, px = 2, h, dn
                break
            if touch_p:
                kind, off, px = 1, h, up
                break
        code[t], offset[t], price[t] = kind, off, px
    return code, offset, price


def reference_label_arrays(frame: pd.DataFrame, cfg: LabelConfig | None = None,
                           timeframe: str = "15m") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plain Python loop over lists, written straight from the rules (the baseline)."""
    c = _cfg(cfg)
    high, low, close, ts = _arrays(frame, "label_events_reference")
    span_ns = c.horizon * timeframe_seconds(timeframe) * 1_000_000_000
    code, offset, price = _reference_loop(high.tolist(), low.tolist(), close.tolist(), ts.tolist(),
                                          c.profit, c.stop, c.horizon, c.tie == "stop", span_ns)
    return np.array(code, dtype=np.int64), np.array(offset, dtype=np.int64), np.array(price, dtype="float64")


def label_events_reference(frame: pd.DataFrame, cfg: LabelConfig | None = None,
                           timeframe: str = "15m") -> pd.DataFrame:
    """The same event table as :func:`triple_barrier_events` from the plain Python loop
    (:func:`reference_label_arrays`); used by the tests and the speed benchmark."""
    code, offset, price = reference_label_arrays(frame, cfg, timeframe)
    return _to_frame(frame.index, code, offset, price, frame["close"].to_numpy(dtype="float64"))


def label_summary(events: pd.DataFrame) -> dict:
    """Counts and shares of an event table (what ``nts labels`` prints).

    Keys: ``rows``, ``labelled``, ``unlabelled``, ``positives``, ``base_rate`` (share of
    1s among labelled bars), ``counts`` / ``shares`` / ``mean_gross_return`` per exit kind,
    ``mean_exit_offset`` and ``mean_gross_return_all``.
    """
    missing = [c for c in EVENT_COLUMNS if c not in events.columns]
    if missing:
        raise DataError(f"label_summary: not an event table (missing {', '.join(missing)})")
    lab = events[events["label"].notna()]
    n_lab = len(lab)
    counts = {k: int((lab["exit_kind"] == k).sum()) for k in EXIT_KINDS}
    nan = float("nan")
    return {
        "rows": int(len(events)),
        "labelled": n_lab,
        "unlabelled": int(len(events) - n_lab),
        "positives": int((lab["label"] == 1.0).sum()),
        "base_rate": float(lab["label"].mean()) if n_lab else nan,
        "counts": counts,
        "shares": {k: (counts[k] / n_lab if n_lab else nan) for k in EXIT_KINDS},
        "mean_gross_return": {
            k: (float(lab.loc[lab["exit_kind"] == k, "gross_return"].mean()) if counts[k] else nan)
            for k in EXIT_KINDS
        },
        "mean_exit_offset": float(lab["exit_offset"].mean()) if n_lab else nan,
        "mean_gross_return_all": float(lab["gross_return"].mean()) if n_lab else nan,
    }


# The header write_events_csv writes: how a labels table nts wrote is recognised.
EVENTS_HEADER = "timestamp,label,exit_offset,exit_kind,exit_price,gross_return"


def is_events_csv(path: str | Path) -> bool:
    """True when ``path`` is a labels table written by :func:`write_events_csv`."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.readline(len(EVENTS_HEADER) + 3).rstrip("\r\n") == EVENTS_HEADER
    except (OSError, ValueError):
        return False


def write_events_csv(events: pd.DataFrame, path: str | Path, inputs: tuple | list = (),
                     overwrite: bool = False) -> Path:
    """``nts labels --output FILE``: the event table as CSV (epoch-ms ``timestamp`` of the
    entry bar, then the columns of :func:`triple_barrier_events`; unlabelled bars kept with
    empty cells), written atomically. ``path`` may not be an input; an existing file is
    replaced only when it is a labels table nts wrote, or with ``overwrite``."""
    if not str(path).endswith(".csv"):
        raise DataError(f"{path}: the labels table is written as CSV: give a name ending in .csv")
    check_output_file(path, inputs=inputs, overwrite=overwrite, is_own=is_events_csv, what="labels table")
    out = events.copy()
    out.insert(0, "timestamp", pd.DatetimeIndex(events.index).as_unit("ns").asi8 // 1_000_000)
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False)
    return Path(path)
