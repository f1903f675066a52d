"""The trading policy: one frozen parameter set and the pure rules every engine applies.

:class:`Policy` is built once from the typed config (and the model bundle) by
:meth:`Policy.from_config`; nothing downstream re-reads ``cfg.strategy``/``cfg.labels`` or
repeats their defaults. The rules are functions of it, each in two forms:

==========================  ======================================  ==========================================
rule                        scalar (``next()``, paper, live, server) vectorised (sweep; same numbers)
==========================  ======================================  ==========================================
P -> signal s               :func:`signal_from_probability`         :func:`signals_from_probabilities`
ewma vol -> forecast        :func:`annualised_vol`                  :func:`annualised_vols`
s, forecast -> weight w     :func:`weight_from_signal`              :func:`weights_from_signals`
confidence -> limit?        :func:`use_limit`                       :func:`use_limits`
ref price -> barriers       :func:`barrier_prices`                  :func:`barrier_prices_array`
==========================  ======================================  ==========================================

The scalar forms are numba functions (:func:`core.jit.kernel`: compiled on first use, cached): backtrader's :class:`strategies.base.ModelStrategy`
calls them from Python, the reference simulator (:mod:`core.simulator`) calls the very same
compiled code inside its kernel, and the vectorised forms are compiled loops over them, so
no engine re-implements a rule. Definitions:

* **Signal**: ``s = (p - c) / (1 - c)`` for ``p >= c`` and ``(p - c) / c`` below, clipped to
  [-1, 1] (``c = 0.5`` gives ``2p - 1``); NaN P -> 0 (no probability, no opinion). The
  centre ``c`` is ``strategy.center`` or, with ``"breakeven"``, the barriers' break-even
  probability after a round trip of taker fees (:func:`breakeven_probability`).
* **Forecast volatility**: ``ewma_vol_fast x sqrt(bars per year)`` (``sqrt(35040)`` for 15m),
  a fraction per year.
* **Weight**: ``r = (target_vol / forecast) * s``; ``|r| < deadband`` -> 0;
  ``w = clip(r, -1, 1) * max_position``; ``w < 0`` -> 0 unless ``allow_short``; a missing,
  non-finite or non-positive forecast -> 0 (cannot size without it).
* **Order type**: a limit order at the signal close when ``|s| >= limit_confidence``, else market.
* **Barriers**: long ``(ref * (1 + profit), ref * (1 - stop))``, short
  ``(ref * (1 - profit), ref * (1 + stop))`` as (take profit, stop).

How orders fill is stated in :mod:`core.costs`; the risk manager's caps and breakers are :mod:`core.risk`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from core.config import Config, LabelConfig
from core.costs import Costs
from core.errors import ConfigError
from core.jit import kernel
from core.timeframes import bars_per_year, timeframe_seconds

BARRIER_SOURCES = ("bundle", "config")
TIES = ("stop", "profit")


# ----------------------------------------------------------------------------- break-even

def breakeven_probability(profit: float, stop: float, fee_rate: float = 0.0) -> float:
    """Win probability at which a barrier trade has zero expected net return.

    A trade wins ``profit`` or loses ``stop`` (fractions of the entry price) and pays
    ``fee_rate`` on entry and on exit, counted additively as ``2 * fee_rate`` of the entry
    notional. Assuming every trade ends at one of the two barriers (time exits ignored):
    ``p * (profit - 2f) - (1 - p) * (stop + 2f) = 0``  =>  ``p = (stop + 2f) / (profit + stop)``.
    With +0.8% / -0.4% and no fees that is 1/3. Refuses (ConfigError) barriers whose
    profit does not cover the round-trip fee, where no win rate breaks even.
    """
    if not (profit > 0 and stop > 0 and fee_rate >= 0):
        raise ConfigError(f"breakeven_probability: need profit > 0, stop > 0, fee_rate >= 0 "
                          f"(got {profit}, {stop}, {fee_rate})")
    if 2.0 * fee_rate >= profit:
        raise ConfigError(f"profit barrier {profit} does not cover the round-trip fee {2.0 * fee_rate}: "
                          "no win rate breaks even")
    return (stop + 2.0 * fee_rate) / (profit + stop)


# ----------------------------------------------------------------------------- scalar rules (njit)

@kernel(inline=True)
def signal_from_probability(p: float, center: float) -> float:
    """Map a probability to s in [-1, 1] with s = 0 at ``center``:
    ``(p - c) / (1 - c)`` above the centre, ``(p - c) / c`` below (c = 0.5 gives 2p - 1).
    NaN in, 0 out (no probability = no opinion)."""
    if p != p:  # NaN
        return 0.0
    if p >= center:
        s = (p - center) / (1.0 - center)
    else:
        s = (p - center) / center
    return max(-1.0, min(1.0, s))


@kernel(inline=True)
def annualised_vol(ewma_vol: float, ann_factor: float) -> float:
    """Per-bar EWMA volatility (``ewma_vol_fast``) as an annualised fraction:
    ``ewma_vol * ann_factor`` with ``ann_factor = sqrt(bars per year)``."""
    return ewma_vol * ann_factor


@kernel(inline=True)
def weight_from_signal(s: float, forecast_vol: float, target_vol: float, deadband: float,
                       max_position: float, allow_short: bool) -> float:
    """Vol-scaled weight: r = (target_vol / forecast_vol) * s; |r| < deadband -> 0;
    w = clip(r, -1, 1) * max_position; w < 0 -> 0 unless ``allow_short``.
    Both vols are annualised fractions (0.5 = 50% per year); a missing or non-positive
    forecast gives 0 (cannot size without it)."""
    if not (forecast_vol > 0) or s != s or not math.isfinite(forecast_vol):
        return 0.0
    r = (target_vol / forecast_vol) * s
    if abs(r) < deadband:
        return 0.0
    w = max(-1.0, min(1.0, r)) * max_position
    if w < 0 and not allow_short:
        return 0.0
    return w


@kernel(inline=True)
def use_limit(confidence: float, limit_confidence: float) -> bool:
    """Limit order at the signal close when ``confidence >= limit_confidence``, market otherwise."""
    return confidence >= limit_confidence


@kernel(inline=True)
def barrier_prices(ref: float, long: bool, profit: float, stop: float) -> tuple[float, float]:
    """(take_profit, stop) prices around the reference price ``ref``."""
    if long:
        return ref * (1.0 + profit), ref * (1.0 - stop)
    return ref * (1.0 - profit), ref * (1.0 + stop)


# ----------------------------------------------------------------------------- vectorised rules

@kernel
def signals_from_probabilities(p: np.ndarray, center: float) -> np.ndarray:
    """:func:`signal_from_probability` over an array."""
    out = np.empty(p.shape[0])
    for i in range(p.shape[0]):
        out[i] = signal_from_probability(p[i], center)
    return out


@kernel
def annualised_vols(ewma_vol: np.ndarray, ann_factor: float) -> np.ndarray:
    """:func:`annualised_vol` over an array."""
    out = np.empty(ewma_vol.shape[0])
    for i in range(ewma_vol.shape[0]):
        out[i] = annualised_vol(ewma_vol[i], ann_factor)
    return out


@kernel
def weights_from_signals(s: np.ndarray, forecast_vol: np.ndarray, target_vol: float, deadband: float,
                         max_position: float, allow_short: bool) -> np.ndarray:
    """:func:`weight_from_signal` over arrays of signals and forecasts (same length)."""
    out = np.empty(s.shape[0])
    for i in range(s.shape[0]):
        out[i] = weight_from_signal(s[i], forecast_vol[i], target_vol, deadband, max_position, allow_short)
    return out


@kernel
def use_limits(confidence: np.ndarray, limit_confidence: float) -> np.ndarray:
    """:func:`use_limit` over an array (bool array)."""
    out = np.empty(confidence.shape[0], dtype=np.bool_)
    for i in range(confidence.shape[0]):
        out[i] = use_limit(confidence[i], limit_confidence)
    return out


@kernel
def barrier_prices_array(ref: np.ndarray, long: np.ndarray, profit: float,
                         stop: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`barrier_prices` over arrays of reference prices and sides (bool, True = long)."""
    tp = np.empty(ref.shape[0])
    sl = np.empty(ref.shape[0])
    for i in range(ref.shape[0]):
        tp[i], sl[i] = barrier_prices(ref[i], long[i], profit, stop)
    return tp, sl


def annualisation_factor(timeframe: str) -> float:
    """``sqrt(bars per year)`` of a timeframe (``sqrt(35040)`` for 15m)."""
    return math.sqrt(bars_per_year(timeframe))


# ----------------------------------------------------------------------------- barriers traded

def _labels_text(lab: LabelConfig) -> str:
    return f"profit={lab.profit:g} stop={lab.stop:g} horizon={lab.horizon} tie={lab.tie}"


def traded_labels(cfg: Config, bundle: Any = None, barriers: str = "bundle") -> tuple[LabelConfig, str]:
    """The barrier settings the strategy trades and where they come from (``"bundle"`` or
    ``"config"``).

    With a model bundle the model predicts the bundle's label event, so the default
    (``barriers="bundle"``) trades ``bundle.label_cfg`` and refuses (ConfigError, one line
    naming both) a ``cfg.labels`` that differs from it; ``barriers="config"`` is the explicit
    opt-in to trade ``cfg.labels`` anyway. Without a bundle: ``cfg.labels``.
    """
    if barriers not in BARRIER_SOURCES:
        raise ConfigError(f"barriers must be one of {', '.join(BARRIER_SOURCES)} (got {barriers!r})")
    bundle_labels = getattr(bundle, "label_cfg", None) if bundle is not None else None
    chosen = cfg.labels if bundle_labels is None or barriers == "config" else bundle_labels
    if getattr(chosen, "scale", "fixed") != "fixed":
        # the policy and every simulator trade fixed percentages; a volatility-scaled model's
        # label event is another question, so it is refused rather than traded wrongly
        raise ConfigError("volatility-scaled barriers (labels.scale: vol) are not traded yet: the policy's exits "
                          "are fixed percentages; train with labels.scale: fixed to trade the model")
    if bundle_labels is None or barriers == "config":
        return cfg.labels, "config"
    if bundle_labels.model_dump() != cfg.labels.model_dump():
        raise ConfigError(f"config labels ({_labels_text(cfg.labels)}) differ from the bundle's training labels "
                          f"({_labels_text(bundle_labels)}): the model predicts the bundle's barriers; align labels.* "
                          "or pass --barriers config (barriers='config') to trade the config's")
    return bundle_labels, "bundle"


# ----------------------------------------------------------------------------- the policy

# Column order of Policy.to_array(): the parameter row the reference kernel (and a sweep
# over many rows) reads. Append only; core.simulator indexes it by these names.
POLICY_VECTOR = ("center", "target_vol", "deadband", "max_position", "allow_short", "limit_confidence",
                 "limit_tif_bars", "profit", "stop", "tie_profit", "max_hold", "taker_fee", "maker_fee",
                 "slippage", "bar_ns")


@dataclass(frozen=True)
class Policy:
    """Every number the trading rules use, resolved once (see the module docstring).

    Build it with :meth:`from_config`; change it with :meth:`replace` (which keeps derived
    fields consistent). Fractions throughout: ``profit=0.008`` is +0.8%, ``taker_fee=0.001``
    is 0.1% of notional, ``target_vol=0.5`` is 50% per year.
    """

    center: float                 # probability with zero edge (resolved; see breakeven_center)
    target_vol: float             # annualised volatility target
    deadband: float               # |r| below this -> no position
    max_position: float           # cap on |weight|: min(strategy.max_position, risk.max_position)
    allow_short: bool             # shorts only where the market permits them
    limit_confidence: float       # |s| >= this -> limit entry at the signal close, else market
    limit_tif_bars: int           # bars a limit entry stays working
    profit: float                 # take-profit distance from the entry reference price
    stop: float                   # stop distance
    tie: Literal["stop", "profit"]  # which barrier wins when one bar touches both
    max_hold: int                 # time exit, bars of clock time after the entry bar
    taker_fee: float              # market/stop fills, time and risk exits
    maker_fee: float              # limit fills (limit entries, take profits)
    slippage_bps: float           # adverse slippage, basis points (fill rules: core.costs)
    timeframe: str                # bar length, e.g. "15m"
    ann_factor: float             # sqrt(bars per year) of the timeframe
    breakeven_center: bool        # center was "breakeven": re-derived when barriers/fees change

    def __post_init__(self) -> None:
        for name in ("center", "target_vol", "deadband", "max_position", "limit_confidence", "profit", "stop",
                     "taker_fee", "maker_fee", "slippage_bps", "ann_factor"):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                raise ConfigError(f"policy.{name} must be finite (got {value})")
            object.__setattr__(self, name, value)
        for name in ("limit_tif_bars", "max_hold"):
            value = getattr(self, name)
            if int(value) != value or int(value) < 1:
                raise ConfigError(f"policy.{name} must be a positive integer (got {value!r})")
            object.__setattr__(self, name, int(value))
        object.__setattr__(self, "allow_short", bool(self.allow_short))
        object.__setattr__(self, "breakeven_center", bool(self.breakeven_center))
        if self.tie not in TIES:
            raise ConfigError(f"policy.tie must be one of {', '.join(TIES)} (got {self.tie!r})")
        if not 0.0 < self.center < 1.0:
            raise ConfigError(f"policy.center must lie strictly between 0 and 1 (got {self.center})")
        timeframe_seconds(self.timeframe)  # refuses an invalid timeframe

    # ------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: Config, bundle: Any = None, barriers: str = "bundle") -> "Policy":
        """The policy of ``cfg`` (and the model bundle): ``strategy.*`` by name; profit, stop
        and tie from :func:`traded_labels` (the bundle's labels when a bundle is given);
        ``max_hold`` = ``strategy.max_hold`` or, when null, the traded labels' horizon;
        ``max_position`` = min(strategy, risk); fees and slippage from ``execution``;
        the timeframe of the bundle (else ``data.timeframe``); ``center="breakeven"`` resolved
        with the traded barriers and the taker fee."""
        s = cfg.strategy
        lab, _ = traded_labels(cfg, bundle, barriers)
        timeframe = bundle.timeframe if bundle is not None else cfg.data.timeframe
        breakeven = s.center == "breakeven"
        ex = cfg.execution
        center = breakeven_probability(lab.profit, lab.stop, ex.taker_fee) if breakeven else float(s.center)
        return cls(center=center, target_vol=s.target_vol, deadband=s.deadband,
                   max_position=min(s.max_position, cfg.risk.max_position), allow_short=s.allow_short,
                   limit_confidence=s.limit_confidence, limit_tif_bars=s.limit_tif_bars,
                   profit=lab.profit, stop=lab.stop, tie=lab.tie,
                   max_hold=s.max_hold if s.max_hold is not None else lab.horizon,
                   taker_fee=ex.taker_fee, maker_fee=ex.maker_fee, slippage_bps=ex.slippage_bps,
                   timeframe=timeframe, ann_factor=annualisation_factor(timeframe), breakeven_center=breakeven)

    @classmethod
    def default(cls) -> "Policy":
        """The policy of the typed config's defaults (``Config()``)."""
        return cls.from_config(Config())

    def replace(self, **changes: Any) -> "Policy":
        """A copy with ``changes`` applied (``dataclasses.replace``) and the derived fields kept
        consistent: ``center="breakeven"`` is resolved; a break-even centre follows changed
        barriers or taker fee; ``ann_factor`` follows a changed timeframe."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown policy field(s): {', '.join(sorted(unknown))}")
        resolve = bool({"profit", "stop", "taker_fee", "breakeven_center"} & set(changes))
        if "center" in changes:
            if changes["center"] == "breakeven":
                changes["center"] = self.center  # placeholder, resolved below
                changes["breakeven_center"] = resolve = True
            else:
                changes.setdefault("breakeven_center", False)
        new = dataclasses.replace(self, **changes)
        if "timeframe" in changes and "ann_factor" not in changes:
            new = dataclasses.replace(new, ann_factor=annualisation_factor(new.timeframe))
        if new.breakeven_center and resolve:
            new = dataclasses.replace(new, center=breakeven_probability(new.profit, new.stop, new.taker_fee))
        return new

    def with_costs(self, costs: Costs) -> "Policy":
        """A copy trading ``costs`` (fees and slippage)."""
        return self.replace(taker_fee=costs.taker_fee, maker_fee=costs.maker_fee, slippage_bps=costs.slippage_bps)

    # ------------------------------------------------------------ derived values
    @property
    def costs(self) -> Costs:
        """Fees and slippage as the :class:`core.costs.Costs` every engine reads."""
        return Costs(self.taker_fee, self.maker_fee, self.slippage_bps)

    @property
    def slippage(self) -> float:
        """Slippage as a fraction of price (same expression as :attr:`Costs.slippage`)."""
        return self.slippage_bps / 1e4

    @property
    def tie_profit(self) -> bool:
        """True when the take profit wins a bar that touches both barriers."""
        return self.tie == "profit"

    @property
    def bar_ns(self) -> int:
        """Bar length in nanoseconds."""
        return timeframe_seconds(self.timeframe) * 1_000_000_000

    def to_array(self) -> np.ndarray:
        """The parameter row of the reference kernel, columns :data:`POLICY_VECTOR`."""
        values = {"tie_profit": float(self.tie_profit), "slippage": self.slippage, "bar_ns": float(self.bar_ns),
                  "allow_short": float(self.allow_short)}
        return np.array([values[k] if k in values else float(getattr(self, k)) for k in POLICY_VECTOR])

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (reports, journals)."""
        return dataclasses.asdict(self)

    # ------------------------------------------------------------ the rules (scalar)
    def signal(self, p: float) -> float:
        """s in [-1, 1] from P (:func:`signal_from_probability`)."""
        return signal_from_probability(float(p), self.center)

    def forecast_vol(self, ewma_vol: float) -> float:
        """Annualised forecast from ``ewma_vol_fast`` (:func:`annualised_vol`)."""
        return annualised_vol(float(ewma_vol), self.ann_factor)

    def target_weight(self, s: float, forecast_vol: float) -> float:
        """Weight of equity to hold (:func:`weight_from_signal`)."""
        return weight_from_signal(float(s), float(forecast_vol), self.target_vol, self.deadband, self.max_position,
                                  self.allow_short)

    def use_limit(self, confidence: float) -> bool:
        """Limit entry at the close for this confidence ``|s|`` (:func:`use_limit`)."""
        return bool(use_limit(float(confidence), self.limit_confidence))

    def barrier_prices(self, ref: float, long: bool) -> tuple[float, float]:
        """(take_profit, stop) around ``ref`` (:func:`barrier_prices`)."""
        return barrier_prices(float(ref), bool(long), self.profit, self.stop)

    # ------------------------------------------------------------ the rules (vectorised)
    def signals(self, p: np.ndarray) -> np.ndarray:
        """:meth:`signal` over an array."""
        return signals_from_probabilities(np.ascontiguousarray(p, dtype="float64"), self.center)

    def forecast_vols(self, ewma_vol: np.ndarray) -> np.ndarray:
        """:meth:`forecast_vol` over an array."""
        return annualised_vols(np.ascontiguousarray(ewma_vol, dtype="float64"), self.ann_factor)

    def target_weights(self, s: np.ndarray, forecast_vol: np.ndarray) -> np.ndarray:
        """:meth:`target_weight` over arrays."""
        return weights_from_signals(np.ascontiguousarray(s, dtype="float64"),
                                    np.ascontiguousarray(forecast_vol, dtype="float64"),
                                    self.target_vol, self.deadband, self.max_position, self.allow_short)

    def use_limits(self, confidence: np.ndarray) -> np.ndarray:
        """:meth:`use_limit` over an array."""
        return use_limits(np.ascontiguousarray(confidence, dtype="float64"), self.limit_confidence)

    def barrier_prices_array(self, ref: np.ndarray, long: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`barrier_prices` over arrays."""
        return barrier_prices_array(np.ascontiguousarray(ref, dtype="float64"),
                                    np.ascontiguousarray(long, dtype=np.bool_), self.profit, self.stop)
