"""``/predict``: candles in, the decision ``nts backtest`` makes on the last of them out.

One pipeline, nothing re-implemented here:

* the bars are checked by the file loader's own rules (:func:`core.ohlcv.validate_ohlcv`:
  NaN/inf, non-positive prices, high < low, negative volume, duplicate, unsorted, off-grid
  or impossible times) plus two refusals of this endpoint: gaps and fewer bars than the one
  warm-up (:func:`strategies.backtest.warmup_bars_for`);
* features by :func:`models.dataset.feature_matrix`, logit and calibrated P by the bundle's
  :meth:`~models.bundle.ModelBundle.score_features` (the streaming path of paper/live);
* signal, forecast volatility, weight (deadband, clip, max position), order type and
  barrier prices by the :class:`core.policy.Policy` rules; the weight capped by the
  :class:`core.risk.RiskManager` -- exactly the calls :class:`strategies.base.ModelStrategy`
  makes on a flat bar (``risk.cap_weight(target_weight(signal(p)))``, ``use_limit(|s|)``,
  ``barrier_prices(close, w > 0)``).

What it does not know: breakers and positions are session state, so the answer is the
decision of a flat account with no breaker tripped (a session's own decisions are in its
journal: ``/api/v1/status``, ``/api/v1/bars``).
"""
from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from core.errors import ConfigError, DataError
from core.ohlcv import DataReport, validate_ohlcv
from models.dataset import feature_matrix
from models.features import FEATURE_NAMES
from server.setup import ServeSetup

#: most windows one /predict/batch call may carry
MAX_BATCH = 16
_VOL_COL = FEATURE_NAMES.index("ewma_vol_fast")
_MAX_MS = 2 ** 53  # beyond any candle; keeps pandas' ns range safe


class Bar(BaseModel):
    """One candle, as a row of nts's candle CSV: open time and OHLCV."""

    model_config = ConfigDict(extra="forbid")
    timestamp: int | str = Field(description="Bar open time: epoch milliseconds or ISO-8601 (UTC; a time "
                                             "without an offset is read as UTC)", examples=[1704067200000])
    open: float = Field(examples=[42000.0])
    high: float = Field(examples=[42100.0])
    low: float = Field(examples=[41900.0])
    close: float = Field(examples=[42050.0])
    volume: float = Field(examples=[12.5])


class PolicyOverrides(BaseModel):
    """Policy fields this request trades with instead of the server's (the rest stay)."""

    model_config = ConfigDict(extra="forbid")
    center: float | Literal["breakeven"] | None = Field(None, description="P with zero edge, in (0, 1), "
                                                                          "or 'breakeven'")
    target_vol: float | None = Field(None, gt=0, le=100, description="annualised volatility target")
    deadband: float | None = Field(None, ge=0, le=100)
    max_position: float | None = Field(None, gt=0, le=1, description="cap on |weight| (the risk cap still applies)")
    allow_short: bool | None = None
    limit_confidence: float | None = Field(None, ge=0, le=1)
    profit: float | None = Field(None, gt=0, lt=1, description="take-profit distance, a fraction of the price")
    stop: float | None = Field(None, gt=0, lt=1, description="stop distance, a fraction of the price")


class PredictRequest(BaseModel):
    """Trailing candles of one market (oldest first, contiguous, at least the warm-up)."""

    model_config = ConfigDict(extra="forbid")
    bars: list[Bar] = Field(description="contiguous candles, oldest first; the last one is scored")
    policy: PolicyOverrides | None = None


class BatchItem(PredictRequest):
    """One window of a batch; ``symbol`` is only echoed back."""

    symbol: str | None = Field(None, max_length=40)


class BatchRequest(BaseModel):
    """Several symbols or windows in one call (each answered as by /predict)."""

    model_config = ConfigDict(extra="forbid")
    items: list[BatchItem] = Field(min_length=1, max_length=MAX_BATCH)


class Barriers(BaseModel):
    """Exit prices of a position opened at the scored close."""

    take_profit: float | None
    stop: float | None


class Prediction(BaseModel):
    """The decision on the last bar (see the module docstring for what each number is)."""

    model_id: str
    bar_time: str = Field(description="open time of the scored bar, ISO-8601 UTC")
    bar_time_ms: int
    close: float
    probability: float | None = Field(description="calibrated P(profit barrier first); null: no score")
    logit: float | None
    signal: float = Field(description="s in [-1, 1], 0 at the policy's centre")
    forecast_vol: float | None = Field(description="annualised volatility forecast (fraction per year)")
    target_weight: float = Field(description="weight of equity after deadband, clip, max position and risk cap")
    side: Literal["buy", "sell"] | None = Field(description="entry side; null: no position")
    order_type: Literal["limit", "market"] | None
    barriers: Barriers
    center: float
    bars_used: int


class BatchResult(Prediction):
    """A batch answer: the prediction and the item's symbol."""

    symbol: str | None = None


class BatchResponse(BaseModel):
    """Answers in the order of the items."""

    results: list[BatchResult]


def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _index(bars: list[Bar], where: str) -> pd.DatetimeIndex:
    """UTC open times of the bars (all epoch ms or all ISO text; one line naming the row)."""
    stamps = [b.timestamp for b in bars]
    kinds = {type(s) for s in stamps}
    if len(kinds) > 1:
        first = next(i for i, s in enumerate(stamps) if type(s) is not type(stamps[0]))
        raise DataError(f"{where}: row {first + 1} mixes timestamp kinds (use epoch ms or ISO-8601 for all rows)")
    try:
        if kinds == {int}:
            arr = np.asarray(stamps, dtype=np.int64)
            bad = (arr < 0) | (arr > _MAX_MS)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise DataError(f"{where}: timestamp {stamps[row]} at row {row + 1} is not an epoch-ms open time")
            return pd.DatetimeIndex(pd.to_datetime(arr, unit="ms", utc=True))
        return pd.DatetimeIndex(pd.to_datetime(stamps, utc=True, format="ISO8601"))
    except (ValueError, TypeError, OverflowError) as exc:
        for i, s in enumerate(stamps):  # find the row (only on the error path)
            try:
                pd.Timestamp(s)
            except (ValueError, TypeError, OverflowError):
                raise DataError(f"{where}: timestamp {str(s)[:40]!r} at row {i + 1} is not ISO-8601") from None
        raise DataError(f"{where}: timestamps are not ISO-8601 times ({exc.__class__.__name__})") from None


def bars_frame(bars: list[Bar], setup: ServeSetup, where: str = "bars") -> pd.DataFrame:
    """The canonical frame of ``bars``, refused (DataError, one line naming the row) by the file
    loader's rules, for a gap, or for fewer bars than the warm-up."""
    if not bars:
        raise DataError(f"{where}: no bars")
    idx = _index(bars, where)
    values = np.array([(b.open, b.high, b.low, b.close, b.volume) for b in bars], dtype=np.float64)
    frame = pd.DataFrame(values, index=idx, columns=["open", "high", "low", "close", "volume"])
    frame, report = validate_ohlcv(frame, timeframe=setup.timeframe, report=DataReport(source=where))
    if report.gaps:
        g = report.gaps[0]
        row = int(frame.index.get_loc(g.after)) + 1
        raise DataError(f"{where}: gap of {g.missing} missing bars between row {row} ({g.after}) and row "
                        f"{row + 1} ({g.before}); send contiguous bars")
    if len(frame) < setup.warmup_bars:
        raise DataError(f"{where}: {len(frame)} bars, the model needs at least {setup.warmup_bars} "
                        f"(its warm-up) ending at the bar to score")
    return frame


def effective_policy(setup: ServeSetup, overrides: PolicyOverrides | None):
    """The server's policy with this request's overrides (Policy.replace keeps it consistent)."""
    if overrides is None:
        return setup.policy
    changes: dict[str, Any] = overrides.model_dump(exclude_none=True)
    if not changes:
        return setup.policy
    if isinstance(changes.get("center"), float) and not 0.0 < changes["center"] < 1.0:
        raise ConfigError(f"policy.center must lie strictly between 0 and 1 (got {changes['center']})")
    return setup.policy.replace(**changes)


def predict_frame(setup: ServeSetup, frame: pd.DataFrame, overrides: PolicyOverrides | None = None) -> Prediction:
    """The decision on the last bar of ``frame`` (a frame :func:`bars_frame` accepted)."""
    policy = effective_policy(setup, overrides)
    bundle = setup.bundle
    tail = frame.iloc[-setup.warmup_bars:]
    feats = feature_matrix(tail, bundle.feature_cfg, bundle.timeframe)
    # input_bars: the rows one logit reads (the window, or window + receptive field - 1 in sequence mode)
    logit, p = bundle.score_features(feats[-getattr(bundle, "input_bars", bundle.window):])
    s = policy.signal(p)
    vol = policy.forecast_vol(float(feats[-1, _VOL_COL]))
    w = setup.risk.cap_weight(policy.target_weight(s, vol))
    close = float(tail["close"].iloc[-1])
    tp, sl = policy.barrier_prices(close, w >= 0.0)
    t = tail.index[-1]
    return Prediction(
        model_id=setup.model_id, bar_time=t.strftime("%Y-%m-%dT%H:%M:%SZ"), bar_time_ms=int(t.value // 1_000_000),
        close=close, probability=_finite(p), logit=_finite(logit), signal=float(s), forecast_vol=_finite(vol),
        target_weight=float(w), side=None if w == 0.0 else ("buy" if w > 0 else "sell"),
        order_type=None if w == 0.0 else ("limit" if policy.use_limit(abs(s)) else "market"),
        barriers=Barriers(take_profit=_finite(tp), stop=_finite(sl)), center=float(policy.center),
        bars_used=len(tail))
