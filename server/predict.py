"""``/predict``: candles in, the decision ``nts backtest`` makes on the last of them out.

One pipeline, nothing re-implemented here:

* the bars are checked by the file loader's own rules (:func:`core.ohlcv.validate_ohlcv`:
  NaN/inf, non-positive prices, high < low, negative volume, duplicate, unsorted, off-grid
  or impossible times) plus two refusals of this endpoint: gaps and fewer bars than the one
  warm-up (:func:`strategies.backtest.warmup_bars_for`);
* features, logit and calibrated P by :class:`models.streaming.BarScorer` -- the path paper
  and live score every bar with (primed from the warm-up: :meth:`BarScorer.prime`; equal to
  the batch features to 1e-9, tested);
* signal, weight (vol scaling, deadband, clip, max position) and entry permission by the
  served strategy's own vectorised hooks (:func:`strategies.hooks.evaluate_hooks` on the
  instance :meth:`strategies.runspec.RunSpec.hooks` gives, the policy of the server's
  RunSpec) over the bars they look back on: the scored bar alone for per-bar hooks (the
  defaults), else the strategy's declared ``hook_lookback`` bars ending at it, the earlier
  ones with their P and forecast from :mod:`server.hook_trail` (a request then carries the
  warm-up plus ``hook_lookback - 1`` bars: :attr:`ServeSetup.min_bars`), the weight capped
  by the :class:`core.risk.RiskManager`; order type and barrier prices by the
  :class:`core.policy.Policy` rules -- what :class:`strategies.base.ModelStrategy` reads on a
  flat bar (``risk.cap_weight(w)``, ``use_limit(|s|)``, ``barrier_prices(close, w >= 0, width)``,
  the width of volatility-scaled barriers from :func:`models.labels.policy_widths` over the
  request's bars, the centre per bar when it is their break-even).

Bars come as rows (``bars``: one object per candle) or as columns (``columns``: one array per
field, several times cheaper to parse for a 1,400-bar warm-up); both are refused by the same
checks with one line naming the field and the row.

What it does not know: breakers and positions are session state, so the answer is the
decision of a flat account with no breaker tripped (a session's own decisions are in its
journal: ``/api/v1/status``, ``/api/v1/bars``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.errors import ConfigError, DataError
from core.policy import MIN_MULTIPLE
from core.ohlcv import DataReport, validate_ohlcv
from models.features import FEATURE_NAMES
from models.labels import policy_widths
from models.streaming import BarScorer
from server.hook_trail import HookTrail, trail_of
from server.setup import ServeSetup
from server.window_cache import WindowCache
from strategies.hooks import evaluate_hooks

#: most windows one /predict/batch call may carry
MAX_BATCH = 16
_VOL_COL = FEATURE_NAMES.index("ewma_vol_fast")
_COLUMNS = pd.Index(["open", "high", "low", "close", "volume"])  # built once: a label index costs ~50 us
_MAX_MS = np.iinfo(np.int64).max // 1_000_000  # the last epoch ms pandas can hold in ns (year 2262)


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
    profit: float | None = Field(None, gt=0, le=100, description=(
        "take-profit distance: a fraction of the price (below 1) with fixed barriers; with volatility-scaled "
        "barriers (labels.scale: vol) a multiple (>= 0.05) of the bar's width sigma_t*sqrt(horizon); "
        "GET /model policy.barrier_rule says which"))
    stop: float | None = Field(None, gt=0, le=100, description="stop distance, in the same unit as profit")


class Columns(BaseModel):
    """Candles as one array per field (same length, oldest first): the cheap body format."""

    model_config = ConfigDict(extra="forbid")
    timestamp: list[int | str] = Field(description="bar open times: epoch ms or ISO-8601 (UTC)")
    open: list[float]
    high: list[float]
    low: list[float]
    close: list[float]
    volume: list[float]


class CandlesBody(BaseModel):
    """Candles as rows (``bars``) or as columns (``columns``): exactly one of the two."""

    model_config = ConfigDict(extra="forbid")
    bars: list[Bar] | None = Field(None, description="contiguous candles, oldest first; the last one is scored")
    columns: Columns | None = Field(None, description="the same candles as one array per field (faster to parse)")

    @model_validator(mode="after")
    def _one_format(self) -> "CandlesBody":
        if (self.bars is None) == (self.columns is None):
            raise ValueError("send the candles either as 'bars' (rows) or as 'columns' (arrays), exactly one")
        return self

    @property
    def where(self) -> str:
        """The body field the candles came in (named by refusals)."""
        return "bars" if self.bars is not None else "columns"


class PredictRequest(CandlesBody):
    """Trailing candles of one market (oldest first, contiguous, at least the warm-up)."""

    policy: PolicyOverrides | None = None


class BatchItem(PredictRequest):
    """One window of a batch; ``symbol`` is only echoed back."""

    symbol: str | None = Field(None, max_length=40)


class BatchRequest(BaseModel):
    """Several symbols or windows in one call (each answered as by /predict)."""

    model_config = ConfigDict(extra="forbid")
    items: list[BatchItem] = Field(min_length=1, max_length=MAX_BATCH)


class Barriers(BaseModel):
    """Exit prices of a position opened at the scored close (prices: the barrier rule and the
    bar's width that set them are ``Prediction.barrier_width`` and ``GET /model``)."""

    take_profit: float | None = Field(description="take-profit price")
    stop: float | None = Field(description="stop price")


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
    barrier_width: float | None = Field(None, description=(
        "volatility-scaled barriers: the scored bar's width sigma_t*sqrt(horizon), of which the policy's profit "
        "and stop are multiples (take profit = close*(1 +/- profit*width)); null: fixed barriers (profit and stop "
        "are fractions of the price) or no width yet (no entry)"))
    center: float | None = Field(description="P with zero edge on this bar (per bar with a break-even centre of "
                                             "volatility-scaled barriers; null where this bar's profit width does not "
                                             "cover the round-trip fee: no signal, no entry)")
    bars_used: int
    entry_allowed: bool = Field(True, description="the strategy's entry_allowed hook on this bar (False: no entry)")


class BatchResult(Prediction):
    """A batch answer: the prediction and the item's symbol."""

    symbol: str | None = None


class BatchResponse(BaseModel):
    """Answers in the order of the items."""

    results: list[BatchResult]


def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _index(stamps: list[int | str], where: str) -> pd.DatetimeIndex:
    """UTC open times (all epoch ms or all ISO text; one line naming the row)."""
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
            return pd.DatetimeIndex(arr * 1_000_000, dtype="datetime64[ns, UTC]")
        return pd.DatetimeIndex(pd.to_datetime(stamps, utc=True, format="ISO8601"))
    except (ValueError, TypeError, OverflowError) as exc:
        for i, s in enumerate(stamps):  # find the row (only on the error path)
            try:
                pd.Timestamp(s)
            except (ValueError, TypeError, OverflowError):
                raise DataError(f"{where}: timestamp {str(s)[:40]!r} at row {i + 1} is not ISO-8601") from None
        raise DataError(f"{where}: timestamps are not ISO-8601 times ({exc.__class__.__name__})") from None


def checked_frame(stamps: list[int | str], values: np.ndarray, setup: ServeSetup, where: str,
                  min_bars: int) -> pd.DataFrame:
    """The canonical frame of ``stamps`` x ``values`` (n x OHLCV), refused (DataError, one line
    naming the row) by the file loader's rules (:func:`validate_ohlcv`), for a gap, or for
    fewer than ``min_bars`` bars."""
    if not stamps:
        raise DataError(f"{where}: no bars")
    frame = pd.DataFrame(values, index=_index(stamps, where), columns=_COLUMNS)
    frame, report = validate_ohlcv(frame, timeframe=setup.timeframe, report=DataReport(source=where))
    if report.gaps:
        g = report.gaps[0]
        row = int(frame.index.get_loc(g.after)) + 1
        raise DataError(f"{where}: gap of {g.missing} missing bars between row {row} ({g.after}) and row "
                        f"{row + 1} ({g.before}); send contiguous bars")
    if len(frame) < min_bars:
        raise DataError(f"{where}: {len(frame)} bars, {_needs(setup, min_bars)} ending at the bar to score")
    return frame


def _needs(setup: ServeSetup, min_bars: int) -> str:
    """What ``min_bars`` is made of, for the refusal of a request that carries fewer."""
    if min_bars <= setup.warmup_bars or setup.lookback is None:
        return f"the model needs at least {min_bars} (its warm-up)"
    return (f"strategy {setup.strategy} needs at least {min_bars}: the model's warm-up ({setup.warmup_bars}) and the "
            f"{setup.lookback - 1} bars before it that its hooks look back on (hook_lookback = {setup.lookback})")


def bars_frame(bars: list[Bar], setup: ServeSetup, where: str = "bars") -> pd.DataFrame:
    """The canonical frame of candle rows, checked as :func:`checked_frame` (at least
    :attr:`ServeSetup.min_bars`: the warm-up and the hooks' lookback)."""
    min_bars = setup.min_bars
    values = np.array([(b.open, b.high, b.low, b.close, b.volume) for b in bars], dtype=np.float64).reshape(-1, 5)
    return checked_frame([b.timestamp for b in bars], values, setup, where, min_bars)


def columns_frame(cols: Columns, setup: ServeSetup, where: str = "columns") -> pd.DataFrame:
    """The canonical frame of candle columns (equal lengths), checked as :func:`checked_frame`."""
    min_bars = setup.min_bars
    n = len(cols.timestamp)
    for name in ("open", "high", "low", "close", "volume"):
        if len(getattr(cols, name)) != n:
            raise DataError(f"{where}.{name}: {len(getattr(cols, name))} values, but {where}.timestamp has {n} "
                            "(every column holds one value per bar)")
    values = np.array([cols.open, cols.high, cols.low, cols.close, cols.volume], dtype=np.float64).T.reshape(-1, 5)
    return checked_frame(cols.timestamp, values, setup, where, min_bars)


def request_frame(body: CandlesBody, setup: ServeSetup, where: str = "") -> pd.DataFrame:
    """The checked frame of a request's candles (rows or columns); ``where`` prefixes the field."""
    name = f"{where}{body.where}"
    if body.bars is not None:
        return bars_frame(body.bars, setup, name)
    return columns_frame(body.columns, setup, name)


def effective_policy(setup: ServeSetup, overrides: PolicyOverrides | None):
    """The server's policy with this request's overrides (Policy.replace keeps it consistent)."""
    if overrides is None:
        return setup.policy
    changes: dict[str, Any] = overrides.model_dump(exclude_none=True)
    if not changes:
        return setup.policy
    if isinstance(changes.get("center"), float) and not 0.0 < changes["center"] < 1.0:
        raise ConfigError(f"policy.center must lie strictly between 0 and 1 (got {changes['center']})")
    for name in ("profit", "stop"):
        if name in changes:
            _check_barrier(setup.policy, name, float(changes[name]))
    return setup.policy.replace(**changes)


def _check_barrier(policy: Any, name: str, value: float) -> None:
    """Refuse a profit/stop override in the wrong unit for the served barrier rule (one line)."""
    if policy.vol_scaled and value < MIN_MULTIPLE:
        raise ConfigError(f"policy.{name}: {value:g} is read as a multiple of the bar's sigma_t*sqrt("
                          f"{policy.barrier_horizon}) (this model's barriers are volatility-scaled): give at least "
                          f"{MIN_MULTIPLE:g}, e.g. 1.4, not a fraction of the price")
    if not policy.vol_scaled and value >= 1.0:
        raise ConfigError(f"policy.{name}: {value:g} is a fraction of the price (this model's barriers are fixed): "
                          "it must be below 1")


@dataclass(frozen=True)
class Scored:
    """What the scoring stream says about one bar (before the decision)."""

    time: pd.Timestamp
    close: float
    logit: float
    p: float
    ewma_vol: float          # the bar's ewma_vol_fast feature (the volatility forecast's input)
    bars_used: int


def scored_bar(row: np.ndarray | None, time: pd.Timestamp, close: float, out: tuple[float, float],
               bars_used: int) -> Scored:
    """The :class:`Scored` of the bar (open ``time``, ``close``) a scorer just consumed with
    result ``out`` and feature ``row`` (None: no row yet)."""
    vol = float(row[_VOL_COL]) if row is not None else math.nan
    return Scored(time=time, close=float(close), logit=float(out[0]), p=float(out[1]), ewma_vol=vol,
                  bars_used=bars_used)


def decide_flat(setup: ServeSetup, policy: Any, scored: Scored, bar: pd.DataFrame,
                trail: HookTrail | None = None, widths: np.ndarray | None = None) -> Prediction:
    """The decision of a flat account on ``bar`` (the scored bar, one row): the served
    strategy's hooks (:func:`evaluate_hooks`) on it -- after the bars of ``trail`` when its
    hooks look back -- the risk cap, order type and barriers. ``widths``: the barrier widths
    of the bars up to the scored one (:func:`models.labels.policy_widths`; None: fixed barriers)."""
    vol = policy.forecast_vol(scored.ewma_vol)
    if trail is None:
        h = evaluate_hooks(setup.hooks(policy), bar, np.array([scored.p]), np.array([vol]),
                           None if widths is None else widths[-1:])
    else:
        bars, prob, fvol = trail.hook_inputs(int(bar.index.asi8[-1]), bar.to_numpy()[-1], scored.p, vol)
        h = evaluate_hooks(setup.hooks(policy), bars, prob, fvol, None if widths is None else widths[-len(bars):])
    s, allowed = float(h.signal[-1]), bool(h.allowed[-1])
    w = float(setup.risk.cap_weight(float(h.weight[-1])))
    width = 1.0 if widths is None else float(widths[-1])
    tp, sl = policy.barrier_prices(scored.close, w >= 0.0, width)
    enter = allowed and w != 0.0 and policy.usable_width(width)
    centers = policy.centers(np.array([width])) if widths is not None else None
    # a bar whose widths have no break-even (profit width within the round-trip fee) has no centre:
    # null, never the policy's fee-free ratio, which this bar's decision did not use
    center = float(policy.center) if centers is None else (float(centers[0]) if math.isfinite(centers[0]) else None)
    t = scored.time
    return Prediction(
        model_id=setup.model_id, bar_time=t.strftime("%Y-%m-%dT%H:%M:%SZ"), bar_time_ms=int(t.value // 1_000_000),
        close=scored.close, probability=_finite(scored.p), logit=_finite(scored.logit), signal=s,
        forecast_vol=_finite(vol), target_weight=w, side=("buy" if w > 0 else "sell") if enter else None,
        order_type=("limit" if policy.use_limit(abs(s)) else "market") if enter else None,
        barriers=Barriers(take_profit=_finite(tp), stop=_finite(sl)),
        barrier_width=None if widths is None else _finite(width), center=center,
        bars_used=scored.bars_used, entry_allowed=allowed)


def predict_frame(setup: ServeSetup, frame: pd.DataFrame, overrides: PolicyOverrides | None = None,
                  cache: WindowCache | None = None) -> Prediction:
    """The decision on the last bar of ``frame`` (a frame :func:`checked_frame` accepted): its
    last warm-up bars scored by a :class:`BarScorer` -- primed from them, or taken from
    ``cache`` when it consumed all but the last of them -- then :func:`decide_flat`, after the
    hooks' trail when the strategy's hooks look back (:func:`trail_of`, or the one ``cache``
    kept from a request one bar earlier)."""
    policy = effective_policy(setup, overrides)
    need = setup.min_bars  # refuses a strategy without a declared lookback
    if len(frame) < need:
        raise DataError(f"{len(frame)} bars, {_needs(setup, need)} ending at the bar to score")
    tail = frame.iloc[-setup.warmup_bars:]
    if cache is not None:
        out, row = cache.score(tail)
    else:
        scorer = BarScorer(setup.bundle)
        out = scorer.prime(tail)
        row = scorer.rows[-1] if len(scorer.rows) else None
    last = tail.iloc[-1:]
    scored = scored_bar(row, tail.index[-1], float(last["close"].iloc[0]), out, need)
    # volatility-scaled barriers: the batch widths over the bars the request carries
    widths = policy_widths(frame.iloc[-need:], policy) if policy.vol_scaled else None
    if need == len(tail):  # per-bar hooks (the defaults) see the scored bar alone: no frame of history
        return decide_flat(setup, policy, scored, last, widths=widths)
    window = frame.iloc[-need:]
    trail = cache.take_trail(window) if cache is not None else None
    if trail is None:
        trail = trail_of(setup.bundle, window, setup.lookback)
    pred = decide_flat(setup, policy, scored, last, trail, widths)
    if cache is not None:  # a window one bar later finds this trail with this bar in it
        trail.push(int(last.index.asi8[0]), last.to_numpy()[0], scored.p, policy.forecast_vol(scored.ewma_vol))
        cache.keep_trail(window, trail)
    return pred
