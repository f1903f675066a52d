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
sigma -> barrier width      :func:`barrier_width`                   :func:`barrier_widths_of`
width -> break-even centre  :func:`breakeven_center`                :func:`breakeven_centers`
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
* **Barriers**: long ``(ref * (1 + profit_t), ref * (1 - stop_t))``, short
  ``(ref * (1 - profit_t), ref * (1 + stop_t))`` as (take profit, stop), with
  ``profit_t = profit * width_t`` and ``stop_t = stop * width_t``. The barrier width
  ``width_t`` is a per-bar input beside the volatility forecast: 1 with ``labels.scale:
  fixed`` (``profit``/``stop`` are the fixed fractions, exactly as before), and with
  ``labels.scale: vol`` the labeller's ``sigma_t * sqrt(horizon)`` of the decision bar
  (:func:`barrier_width`; ``profit``/``stop`` are then the multiples ``vol_profit`` /
  ``vol_stop``), so the traded barriers equal the labelled ones at the decision bar. They
  are set once, at entry, for the life of the trade. A volatility-scaled entry needs a
  finite positive width and a profit width above the round-trip taker fee (else no entry).
* **Break-even centre** (``center: breakeven``): fixed barriers, one number,
  :func:`breakeven_probability`; volatility-scaled barriers, per bar,
  ``(stop_t + 2 fee) / (profit_t + stop_t)`` (:func:`breakeven_center`; NaN -- no signal --
  where the profit width does not cover the fee).

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
BARRIER_SCALES = ("fixed", "vol")
# Smallest profit/stop multiple a volatility-scaled barrier takes from a user (sweep grid, /predict
# overrides): below it the number is a fraction of the price written for fixed barriers.
MIN_MULTIPLE = 0.05


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


@kernel(inline=True)
def breakeven_center(profit: float, stop: float, fee_rate: float) -> float:
    """:func:`breakeven_probability` of one bar's barrier widths, NaN instead of a refusal
    where it is undefined (a profit width not above the round-trip fee, a non-positive or
    missing width): such a bar gets no signal, hence no entry."""
    if not (profit > 2.0 * fee_rate and stop > 0.0):  # NaN fails too
        return math.nan
    return (stop + 2.0 * fee_rate) / (profit + stop)


@kernel(inline=True)
def barriers_usable(profit: float, stop: float, min_profit: float) -> bool:
    """True when a bar's barrier widths (``profit``/``stop`` already times the bar's width) can
    be traded: ``min_profit`` -inf (fixed barriers) always; else (volatility-scaled, ``min_profit``
    = the round-trip taker fee) a known width whose profit exceeds it (NaN fails)."""
    return min_profit == -math.inf or (profit > min_profit and stop > 0.0)


@kernel(inline=True)
def barrier_width(sigma: float, horizon: int) -> float:
    """The volatility-scaled barrier width of a bar: ``sigma_t * sqrt(horizon)``, ``sigma_t`` the
    EWMA volatility of 1-bar log returns (span ``labels.vol_span``) -- the labeller's
    definition (:func:`models.labels.barrier_widths` computes it over bars with this rule)."""
    return sigma * math.sqrt(float(horizon))


@kernel
def barrier_widths_of(sigma: np.ndarray, horizon: int) -> np.ndarray:
    """:func:`barrier_width` over an array of volatilities."""
    out = np.empty(sigma.shape[0])
    for i in range(sigma.shape[0]):
        out[i] = barrier_width(sigma[i], horizon)
    return out


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
def signals_at_centers(p: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """:func:`signal_from_probability` with a per-bar centre; a NaN centre gives 0 (no signal)."""
    out = np.empty(p.shape[0])
    for i in range(p.shape[0]):
        c = centers[i]
        out[i] = 0.0 if c != c else signal_from_probability(p[i], c)
    return out


@kernel
def breakeven_centers(width: np.ndarray, profit: float, stop: float, fee_rate: float) -> np.ndarray:
    """:func:`breakeven_center` of every bar's widths ``profit * width_t``, ``stop * width_t``."""
    out = np.empty(width.shape[0])
    for i in range(width.shape[0]):
        out[i] = breakeven_center(profit * width[i], stop * width[i], fee_rate)
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
    if lab.scale == "vol":
        return (f"scale=vol vol_profit={lab.vol_profit:g} vol_stop={lab.vol_stop:g} vol_span={lab.vol_span} "
                f"horizon={lab.horizon} tie={lab.tie}")
    return f"profit={lab.profit:g} stop={lab.stop:g} horizon={lab.horizon} tie={lab.tie}"


def traded_labels(cfg: Config, bundle: Any = None, barriers: str = "bundle") -> tuple[LabelConfig, str]:
    """The barrier settings the strategy trades and where they come from (``"bundle"`` or
    ``"config"``).

    With a model bundle the model predicts the bundle's label event, so the default
    (``barriers="bundle"``) trades ``bundle.label_cfg`` and refuses (ConfigError, one line
    naming both) a ``cfg.labels`` that differs from it; ``barriers="config"`` is the explicit
    opt-in to trade ``cfg.labels`` anyway. Without a bundle: ``cfg.labels``. Both barrier
    rules are traded (``labels.scale: fixed`` percentages, ``vol`` multiples of the bar's
    volatility over the horizon; see the module docstring).
    """
    if barriers not in BARRIER_SOURCES:
        raise ConfigError(f"barriers must be one of {', '.join(BARRIER_SOURCES)} (got {barriers!r})")
    bundle_labels = getattr(bundle, "label_cfg", None) if bundle is not None else None
    chosen = cfg.labels if bundle_labels is None or barriers == "config" else bundle_labels
    if bundle_labels is None or barriers == "config":
        return cfg.labels, "config"
    if bundle_labels.model_dump() != cfg.labels.model_dump():
        raise ConfigError(f"config labels ({_labels_text(cfg.labels)}) differ from the bundle's training labels "
                          f"({_labels_text(bundle_labels)}): the model predicts the bundle's barriers; align labels.* "
                          "or pass --barriers config (barriers='config') to trade the config's")
    return bundle_labels, "bundle"


def _scalar_center(profit: float, stop: float, fee_rate: float, scaled: bool) -> float:
    """The one-number break-even centre: of the fixed barriers after fees; of volatility-scaled
    barriers, their fee-free limit ``stop / (profit + stop)`` (the traded centre is then per
    bar, :meth:`Policy.centers`; this number only names the ratio)."""
    return breakeven_probability(profit, stop, 0.0 if scaled else fee_rate)


# ----------------------------------------------------------------------------- the policy

# Column order of Policy.to_array(): the parameter row the reference kernel (and a sweep
# over many rows) reads. Append only; core.simulator indexes it by these names.
POLICY_VECTOR = ("center", "target_vol", "deadband", "max_position", "allow_short", "limit_confidence",
                 "limit_tif_bars", "profit", "stop", "tie_profit", "max_hold", "taker_fee", "maker_fee",
                 "slippage", "bar_ns", "vol_scaled", "per_bar_center")


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
    # barrier rule (labels.scale): "fixed" -> profit/stop are fractions of the entry price;
    # "vol" -> multiples of the bar's width sigma_t * sqrt(barrier_horizon), sigma_t the EWMA
    # vol of span vol_span (see barrier_width); the centre is then per bar when breakeven
    barrier_scale: Literal["fixed", "vol"] = "fixed"
    barrier_horizon: int = 8      # labels.horizon (the width's sqrt(horizon); not the time exit)
    vol_span: int = 20            # labels.vol_span

    def __post_init__(self) -> None:
        for name in ("center", "target_vol", "deadband", "max_position", "limit_confidence", "profit", "stop",
                     "taker_fee", "maker_fee", "slippage_bps", "ann_factor"):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                raise ConfigError(f"policy.{name} must be finite (got {value})")
            object.__setattr__(self, name, value)
        for name in ("limit_tif_bars", "max_hold", "barrier_horizon", "vol_span"):
            value = getattr(self, name)
            if int(value) != value or int(value) < 1:
                raise ConfigError(f"policy.{name} must be a positive integer (got {value!r})")
            object.__setattr__(self, name, int(value))
        object.__setattr__(self, "allow_short", bool(self.allow_short))
        object.__setattr__(self, "breakeven_center", bool(self.breakeven_center))
        if self.barrier_scale not in BARRIER_SCALES:
            raise ConfigError(f"policy.barrier_scale must be one of {', '.join(BARRIER_SCALES)} "
                              f"(got {self.barrier_scale!r})")
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
        scaled = lab.scale == "vol"
        profit, stop = (lab.vol_profit, lab.vol_stop) if scaled else (lab.profit, lab.stop)
        center = _scalar_center(profit, stop, ex.taker_fee, scaled) if breakeven else float(s.center)
        return cls(center=center, target_vol=s.target_vol, deadband=s.deadband,
                   max_position=min(s.max_position, cfg.risk.max_position), allow_short=s.allow_short,
                   limit_confidence=s.limit_confidence, limit_tif_bars=s.limit_tif_bars,
                   profit=profit, stop=stop, tie=lab.tie,
                   max_hold=s.max_hold if s.max_hold is not None else lab.horizon,
                   taker_fee=ex.taker_fee, maker_fee=ex.maker_fee, slippage_bps=ex.slippage_bps,
                   timeframe=timeframe, ann_factor=annualisation_factor(timeframe), breakeven_center=breakeven,
                   barrier_scale=lab.scale, barrier_horizon=lab.horizon, vol_span=lab.vol_span)

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
        resolve = bool({"profit", "stop", "taker_fee", "breakeven_center", "barrier_scale"} & set(changes))
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
            new = dataclasses.replace(new, center=_scalar_center(new.profit, new.stop, new.taker_fee, new.vol_scaled))
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
    def vol_scaled(self) -> bool:
        """True when the barriers are multiples of the bar's volatility width (``labels.scale: vol``)."""
        return self.barrier_scale == "vol"

    @property
    def per_bar_center(self) -> bool:
        """True when the centre is re-derived on every bar (break-even of volatility-scaled barriers)."""
        return self.breakeven_center and self.vol_scaled

    def describe_barriers(self) -> str:
        """One line naming the traded barrier rule (every report that shows barriers says it)."""
        if self.vol_scaled:
            return (f"volatility-scaled: take profit +{self.profit:g} x, stop -{self.stop:g} x sigma_t*sqrt("
                    f"{self.barrier_horizon}) (EWMA vol span {self.vol_span}) of the decision bar")
        return f"fixed: take profit +{self.profit:.3%}, stop -{self.stop:.3%} of the entry price"

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
                  "allow_short": float(self.allow_short), "vol_scaled": float(self.vol_scaled),
                  # a per-bar break-even row holds its fee-free ratio as "center": this column keeps it
                  # apart from a row whose numeric centre equals that ratio
                  "per_bar_center": float(self.per_bar_center)}
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

    def barrier_prices(self, ref: float, long: bool, width: float = 1.0) -> tuple[float, float]:
        """(take_profit, stop) around ``ref`` (:func:`barrier_prices`) for the bar's barrier
        ``width`` (1 for fixed barriers; NaN prices where a scaled width is unknown)."""
        return barrier_prices(float(ref), bool(long), self.profit * float(width), self.stop * float(width))

    def usable_width(self, width: float) -> bool:
        """True when an entry may be opened at a bar of barrier ``width`` (:func:`barriers_usable`)."""
        w = float(width)
        return bool(barriers_usable(self.profit * w, self.stop * w, self.min_profit_width))

    @property
    def min_profit_width(self) -> float:
        """The profit width an entry must exceed: 2 x taker fee (volatility-scaled), -inf (fixed)."""
        return 2.0 * self.taker_fee if self.vol_scaled else -math.inf

    def centers(self, width: np.ndarray | None) -> np.ndarray | None:
        """The per-bar centres of a break-even, volatility-scaled policy over the bars' widths
        (:func:`breakeven_centers`); None when the centre is one number (:attr:`center`)."""
        if not self.per_bar_center:
            return None
        if width is None:
            raise ConfigError("a break-even centre of volatility-scaled barriers is per bar: pass the bars' "
                              "barrier widths (bars['barrier_width'] in a hook)")
        return breakeven_centers(np.ascontiguousarray(width, dtype="float64"), self.profit, self.stop,
                                 self.taker_fee)

    # ------------------------------------------------------------ the rules (vectorised)
    def signals(self, p: np.ndarray, width: np.ndarray | None = None) -> np.ndarray:
        """:meth:`signal` over an array; with a per-bar centre (:meth:`centers`) the bars'
        barrier ``width`` is required."""
        p = np.ascontiguousarray(p, dtype="float64")
        centers = self.centers(width)
        if centers is None:
            return signals_from_probabilities(p, self.center)
        return signals_at_centers(p, centers)

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
