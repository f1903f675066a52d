"""Score once, sweep many: the grid run by the reference simulator across rows in parallel.

Pipeline of :func:`run_sweep`:

1. :func:`prepare_span` -- once per data span, from the run's
   :class:`~strategies.runspec.RunSpec` (the span rules and the one warm-up of ``nts
   backtest``, so a span overlapping the bundle's training span is refused the same way),
   the calibrated P from the probability cache (:func:`models.prob_cache.cached_scores`), the
   annualised volatility forecast (:meth:`core.policy.Policy.forecast_vols` of ``ewma_vol_fast``)
   and the realised daily volatility of the risk manager (:func:`core.risk.realised_daily_vol`):
   exactly the inputs backtrader's indicators compute on the same bars. The network never runs
   again for the grid.
2. :func:`policy_rows` -- one policy row (:data:`core.policy.POLICY_VECTOR`) per combination,
   derived by :meth:`core.policy.Policy.replace` (a ``breakeven`` centre follows each row's
   barriers and taker fee by the policy's own rule).
3. :func:`hook_groups` -- the strategy class's vectorised hooks (default
   :class:`strategies.tcn.TCNStrategy`'s) evaluated once per group of rows that agree on the
   policy fields the hooks read (:data:`HOOK_POLICY_FIELDS`), so a subclass such as
   :class:`strategies.examples.NightOnly` is swept with its own hooks.
4. :func:`run_rows` -- a threaded driver over the rows (one compiled, GIL-free slice of rows
   per numba thread). Every row runs :func:`core.simulator.simulate_kernel` (the strategy
   itself: the one decision step of :mod:`core.decision`, brackets with the tie rule, time
   exit, limit time-in-force, risk breakers, fills and fees -- nothing of it is
   re-implemented here) into buffers owned by its thread (equity
   ``n_bars x 3``, fills, trips: allocated once per thread slice, reused row after row), and
   reduces them on the spot to per-row metrics, per-block return moments for
   :mod:`sweeps.overfit` and per-fold figures for the walk-forward. Nothing of size
   bars x rows is ever held; rows go in chunks (``chunk``) so a progress bar can move and Dask
   (:mod:`sweeps.distributed`) can ship them as tasks.
5. Statistics across the grid (:func:`sweeps.overfit.overfitting_report`) and the
   walk-forward table (:func:`walk_forward`).

Metric conventions are :mod:`strategies.metrics`' (per-bar simple returns of the equity from
the span's first bar, Sharpe ddof 1 x sqrt(bars per year), Sortino over all bars, CAGR over
calendar years of 365 days, exposure = share of bars ending with a position, turnover =
traded notional / mean equity, trades = closed round trips as :func:`core.trades.round_trips`
groups them); the parity test holds the sweep to ``run_backtest``'s numbers.

**One barrier set was trained.** The bundle's model predicts its own label event (its profit,
stop and horizon). Rows with other barriers reuse those probabilities: they sweep the *exit
rule*, not the model. Each row therefore carries the label base rate of its own barriers on the
span and their break-even probability after fees, so a reader can see how far a row's barriers
are from what the probabilities mean (:func:`label_base_rates`).

**Walk-forward** (``folds`` = F): the span's returns are cut into F contiguous folds of whole
CSCV blocks; fold k's best row (highest Sharpe in fold k, the in-sample span) is scored on
fold k + 1 (its out-of-sample span), for k = 0 .. F - 2. Fold figures are slices of each row's
one run over the whole span -- the same returns CSCV splits -- so a position or a breaker
state carried across a fold boundary is kept, as it would be in live trading.

The numba driver itself lives in :mod:`sweeps.kernel` (light imports, for Dask workers).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.config import Config, LabelConfig, RiskConfig
from core.errors import ConfigError, DataError
from core.policy import POLICY_VECTOR, Policy, breakeven_centers, breakeven_probability
from core.risk import realised_daily_vol, risk_vector
from core.simulator import KINDS, RunOptions, SimResult, as_signals, simulate
from core.timeframes import bars_per_year
from models.features import compute_features
from models.labels import label_arrays, policy_widths
from models.prob_cache import cached_scores, frame_sha256
from strategies.hooks import evaluate_hooks, hook_instance
from strategies.runspec import RunSpec, Span
from strategies.metrics import buy_and_hold, equity_metrics
from strategies.tcn import TCNStrategy
from sweeps.grid import AXES, Grid
from sweeps.kernel import (
    FD_END,
    FD_MAXDD,
    FD_START,
    FD_TRADES,
    FOLD_FIELDS,  # noqa: F401  (re-exported: the layout of SweepResult.folds)
    N_RAW,  # noqa: F401  (re-exported)
    R_BARS,
    R_DOWN,
    R_EXPO,
    R_FEES,
    R_FINAL,
    R_HOLD,
    R_MAXDD,
    R_MEAN,
    R_MEANEQ,
    R_NOTIONAL,
    R_OPEN,
    R_OVF,
    R_START,
    R_STD,
    R_STOPPED,
    R_TRADES,
    R_TRIPS,
    R_WINS,
    RAW_FIELDS,  # noqa: F401  (re-exported: the layout of SweepResult.raw)
    RAW_KIND0,
    KernelInputs,
    chunk_bounds,
    concat_parts,
    run_chunk,
)
from sweeps.overfit import OverfitReport, block_edges, moments_stats, overfitting_report

# Columns of results.csv after the axes (see SweepResult.table).
METRIC_COLUMNS: tuple[str, ...] = (
    "total_return", "cagr", "sharpe", "sortino", "max_drawdown", "trades", "win_rate", "avg_hold_bars",
    "exposure", "turnover", "fees", "final_equity", "open_trades", "exits_take_profit", "exits_stop",
    "exits_time", "exits_risk", "risk_trips", "base_rate", "breakeven_p", "trained_barriers",
)
EXIT_RULE_NOTE = (
    "The model was trained for one barrier set ({trained}). Rows with other take-profit, stop or max-hold "
    "values reuse its probabilities: they sweep the exit rule, not the model. Read each row's label base rate "
    "(share of bars whose own barriers hit the take profit first, on this span) and break-even probability "
    "(the win rate its barriers need after fees) beside its results."
)
DEFAULT_CHUNK = 64
# Policy fields the default hooks read (VectorHooks: signal and target_weight). Rows that agree
# on them share the hooks' values; a strategy whose hooks read other policy fields names them
# in a class attribute ``hook_policy_fields``.
HOOK_POLICY_FIELDS: tuple[str, ...] = ("center", "target_vol", "deadband", "max_position", "allow_short",
                                       "ann_factor")

Mapper = Callable[["KernelInputs", np.ndarray, Callable[[int], None] | None], tuple[np.ndarray, ...]]


# ----------------------------------------------------------------------------- inputs, once per span
@dataclass(frozen=True)
class SweepData:
    """One data span scored once: the fed bars, the kernel inputs and what produced them."""

    frame: pd.DataFrame      # bars fed: warm-up + span
    inputs: KernelInputs
    policy: Policy           # the base policy (bundle barriers, cfg strategy/execution/risk caps)
    risk_cfg: RiskConfig
    center_setting: Any      # cfg.strategy.center as written (a number or "breakeven")
    span: tuple[pd.Timestamp, pd.Timestamp]
    timeframe: str
    trained_labels: LabelConfig | None
    bundle_info: dict[str, Any]
    data_sha256: str         # sha256 of the fed bars (models.prob_cache.frame_sha256)
    prob_source: str
    seconds: float

    @property
    def span_index(self) -> pd.DatetimeIndex:
        """Bar times of the span (first .. last)."""
        return self.frame.index[self.inputs.first:self.inputs.last + 1]

    @property
    def span_close(self) -> pd.Series:
        """Closes of the span."""
        return self.frame["close"].iloc[self.inputs.first:self.inputs.last + 1]


def prepare_span(spec: RunSpec | Any, frame: pd.DataFrame | None = None, cfg: Config | None = None, *,
                 blocks: int = 16, folds: int = 1, **build: Any) -> SweepData:
    """Score the span of the run ``spec`` (a :class:`~strategies.runspec.RunSpec` built with
    bars: ``nts backtest``'s span rules, warm-up, policy and costs) once for a sweep.

    Also callable as ``prepare_span(bundle, frame, cfg, start=..., end=..., cache_dir=...,
    allow_in_sample=..., barriers=..., coc=...)`` (:func:`sweep_spec` builds the spec).
    Refused like ``run_backtest`` (InSampleError, DataError): a span overlapping the bundle's
    training span (unless allowed), too little history for the model, a span with no
    probability, and additionally a span with fewer returns than ``blocks``.
    """
    if not isinstance(spec, RunSpec):
        spec = sweep_spec(spec, frame, cfg, **build)
    t0 = time.perf_counter()
    span, policy, bundle = spec.require_span(), spec.policy, spec.bundle
    data = span.frame
    # backtrader calls the strategy's next() only once the TCN indicator's window is full
    # (its minperiod is min_bars): earlier bars are prenext, no decision, no risk check.
    decide_from = max(span.first, int(getattr(bundle, "min_bars", 0)) - 1)
    _logit, prob, hit = cached_scores(bundle, data, spec.prob_cache)
    if not np.isfinite(prob[decide_from:]).any():
        raise DataError(f"no bar of the span {span.start} .. {span.end} has a model probability ({len(data)} bars "
                        "fed incl. warm-up; too little history after the data's start or a gap?): nothing to sweep")
    feats = compute_features(data, bundle.feature_cfg, timeframe=policy.timeframe)
    fvol = policy.forecast_vols(feats["ewma_vol_fast"].to_numpy())
    rvol = realised_daily_vol(data["close"].to_numpy(), spec.cfg.risk.vol_window_bars, policy.timeframe,
                              index=data.index)
    edges, fold_edges = _block_edges(span, blocks, folds)
    arr = {c: np.ascontiguousarray(data[c].to_numpy(dtype=np.float64)) for c in ("open", "high", "low", "close")}
    inputs = KernelInputs(
        t_ns=np.ascontiguousarray(pd.DatetimeIndex(data.index).as_unit("ns").asi8), open=arr["open"],
        high=arr["high"], low=arr["low"], close=arr["close"], prob=np.ascontiguousarray(prob, dtype=np.float64),
        fvol=np.ascontiguousarray(fvol, dtype=np.float64), rvol=np.ascontiguousarray(rvol, dtype=np.float64),
        first=span.first, start=decide_from, last=len(data) - 1, cash=float(spec.cfg.execution.cash),
        coc=spec.coc, risk=risk_vector(spec.cfg.risk), return_edges=np.ascontiguousarray(edges, dtype=np.int64),
        fold_edges=np.ascontiguousarray(fold_edges, dtype=np.int64),
        width=np.ascontiguousarray(policy_widths(data, policy), dtype=np.float64) if policy.vol_scaled else None)
    return SweepData(frame=data, inputs=inputs, policy=policy, risk_cfg=spec.cfg.risk,
                     center_setting=spec.cfg.strategy.center, span=(span.start, span.end), timeframe=policy.timeframe,
                     trained_labels=getattr(bundle, "label_cfg", None), bundle_info=_bundle_info(spec),
                     data_sha256=frame_sha256(data),
                     prob_source="probability cache (network skipped)" if hit else "scored by the network",
                     seconds=time.perf_counter() - t0)


def _block_edges(span: Span, blocks: int, folds: int) -> tuple[np.ndarray, np.ndarray]:
    """Return-block edges of the overfitting statistics and the walk-forward fold edges."""
    n_returns = len(span.frame) - 1 - span.first
    if n_returns < blocks:
        raise DataError(f"the span {span.start} .. {span.end} has {n_returns} bar returns, fewer than the {blocks} "
                        "blocks of the overfitting statistics: give a longer span or fewer blocks")
    edges = block_edges(n_returns, blocks)
    f = folds if folds >= 1 else 1
    if blocks % f:
        raise ConfigError(f"folds: {f} must divide blocks ({blocks}) so each fold is whole blocks")
    return edges, edges[:: blocks // f].copy()


def _bundle_info(spec: RunSpec) -> dict[str, Any]:
    """What the report records about the bundle."""
    bundle = spec.bundle
    meta = getattr(bundle, "meta", {}) or {}
    train = getattr(bundle, "training_span", None)
    return {"path": str(getattr(bundle, "path", "") or ""), "weights_sha256": meta.get("weights_sha256"),
            "training_span": [str(x) for x in train] if train is not None else None,
            "labels": bundle.label_cfg.model_dump() if getattr(bundle, "label_cfg", None) is not None else None,
            "timeframe": spec.policy.timeframe, "history_bars": int(getattr(bundle, "history_bars", 0)),
            "min_bars": int(getattr(bundle, "min_bars", 0))}


def sweep_spec(bundle: Any, frame: pd.DataFrame, cfg: Config, *, start: Any = None, end: Any = None,
               cache_dir: str | Path | None = None, **build: Any) -> RunSpec:
    """The :class:`RunSpec` of the older call ``prepare_span(bundle, frame, cfg, ...)``;
    other keywords go to :meth:`RunSpec.build` (``allow_in_sample``, ``barriers``, ``coc``,
    ``strategy``)."""
    return RunSpec.build(cfg, model=bundle, data=frame, span=(start, end), prob_cache=cache_dir, **build)


def axis_defaults(data_or_policy: SweepData | Policy, center: Any = None) -> dict[str, Any]:
    """The one value per grid axis that ``nts backtest`` trades: the policy's (so profit, stop
    and max hold are the bundle's barriers, not ``cfg.labels``), with ``center`` as written in
    the config (``"breakeven"`` stays a word, so each row re-derives it)."""
    if isinstance(data_or_policy, SweepData):
        policy, center = data_or_policy.policy, data_or_policy.center_setting
    else:
        policy = data_or_policy
    return {"profit": policy.profit, "stop": policy.stop, "max_hold": policy.max_hold, "deadband": policy.deadband,
            "center": center if center is not None else policy.center, "limit_confidence": policy.limit_confidence,
            "taker_fee": policy.taker_fee, "maker_fee": policy.maker_fee, "slippage_bps": policy.slippage_bps}


# ----------------------------------------------------------------------------- policy rows
def row_policy(base: Policy, combo: dict[str, Any]) -> Policy:
    """The policy of one grid combination: ``base`` with the row's axes replaced (the policy
    keeps its derived fields -- a break-even centre -- consistent)."""
    changes = {k: (v if k == "center" and v == "breakeven" else (int(v) if k == "max_hold" else float(v)))
               for k, v in combo.items() if k in AXES}
    try:
        return base.replace(**changes)
    except ConfigError as exc:
        shown = ", ".join(f"{k}={v}" for k, v in changes.items())
        raise ConfigError(f"grid row ({shown}): {exc}") from None


def policy_rows(base: Policy, combos: pd.DataFrame) -> np.ndarray:
    """``[n_rows, len(POLICY_VECTOR)]`` policy rows of the combinations, via :func:`row_policy`.

    The policy is built once per distinct combination of the axes that derive other fields
    (the centre, its barriers and fee, slippage); the plain axes are then copied by column,
    so a million-row grid costs one policy per distinct centre, not per row.
    """
    derived = ["profit", "stop", "center", "taker_fee", "slippage_bps"]
    plain = {"max_hold": "max_hold", "deadband": "deadband", "limit_confidence": "limit_confidence",
             "maker_fee": "maker_fee"}
    out = np.empty((len(combos), len(POLICY_VECTOR)))
    keys = combos[derived].astype(object).apply(tuple, axis=1)
    for key, idx in keys.groupby(keys).groups.items():
        sample = dict(zip(derived, key))
        out[np.asarray(combos.index.get_indexer(idx))] = row_policy(base, sample).to_array()
    col = {name: i for i, name in enumerate(POLICY_VECTOR)}
    for axis, name in plain.items():
        values = combos[axis].to_numpy(dtype=np.float64)
        out[:, col[name]] = values
    # the copied columns must be what the policy itself would hold (validation in one place)
    for k in np.unique(np.linspace(0, len(combos) - 1, min(len(combos), 8)).astype(int)):
        want = row_policy(base, combos.iloc[int(k)].to_dict()).to_array()
        if not np.array_equal(want, out[k]):
            raise AssertionError(f"policy row {k} differs from Policy.replace")  # a new POLICY_VECTOR column
    return out


def hook_groups(data: SweepData, base: Policy, combos: pd.DataFrame, params: np.ndarray,
                strategy_cls: type = TCNStrategy, strategy_params: dict[str, Any] | None = None
                ) -> tuple[KernelInputs, np.ndarray]:
    """The strategy hooks' values per hook group and each row's group.

    Rows are grouped by the resolved policy fields the hooks read (``strategy_cls.hook_policy_fields``,
    default :data:`HOOK_POLICY_FIELDS`); each group's hooks run once
    (:func:`strategies.hooks.evaluate_hooks` on :func:`strategies.hooks.hook_instance` of the
    group's first row policy) over the fed bars. Returns the inputs carrying
    ``signal/weight/allowed[groups, bars]`` and the group index of every row."""
    fields = tuple(getattr(strategy_cls, "hook_policy_fields", HOOK_POLICY_FIELDS))
    if per_bar_rows(base, combos).any():  # the default signal's centre follows each row's multiples and fee per bar
        fields = (*fields, "profit", "stop", "taker_fee", "per_bar_center")
    cols = [POLICY_VECTOR.index(f) for f in fields if f in POLICY_VECTOR]
    extra = [f for f in fields if f not in POLICY_VECTOR]  # not swept: the same in every row
    keys = params[:, cols] if cols else np.zeros((len(params), 1))
    _, first_rows, group = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    k = data.inputs
    out = []
    for row in first_rows:
        policy = row_policy(base, combos.iloc[int(row)].to_dict())
        if extra and any(getattr(policy, f) != getattr(base, f) for f in extra):
            raise AssertionError(f"hook field(s) {extra} differ between rows")
        out.append(evaluate_hooks(hook_instance(strategy_cls, policy, strategy_params), data.frame, k.prob, k.fvol,
                                  k.width))
    inputs = k.with_hooks(np.stack([h.signal for h in out]), np.stack([h.weight for h in out]),
                          np.stack([h.allowed for h in out]))
    return inputs, group.reshape(-1).astype(np.float64)


def run_rows(inputs: KernelInputs, params: np.ndarray, chunk: int = DEFAULT_CHUNK,
             progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run every row in chunks in this process (all cores through numba's threads)."""
    parts = []
    for lo, hi in chunk_bounds(params.shape[0], chunk):
        parts.append(run_chunk(inputs, params[lo:hi]))
        if progress is not None:
            progress(hi - lo)
    return concat_parts(parts, inputs, params.shape[0])


# ----------------------------------------------------------------------------- per-row context
def per_bar_rows(base: Policy, combos: pd.DataFrame) -> np.ndarray:
    """Rows whose centre is per bar: volatility-scaled barriers and ``center: breakeven``
    (:attr:`core.policy.Policy.per_bar_center` of each row's policy), whatever the base centre."""
    if not base.vol_scaled:
        return np.zeros(len(combos), dtype=bool)
    return (combos["center"].astype(object) == "breakeven").to_numpy(dtype=bool)


@dataclass(frozen=True)
class PerBarCenters:
    """The break-even centres of the per-bar rows over the span's decision bars."""

    median: np.ndarray   # per row: its median centre over the decision bars (NaN: not a per-bar row, or none)
    lowest: np.ndarray   # per decision bar: the lowest centre of any per-bar row (NaN: none covers the fee)


def per_bar_centers(data: SweepData, combos: pd.DataFrame, params: np.ndarray) -> PerBarCenters | None:
    """:class:`PerBarCenters` of the grid (None when no row's centre is per bar): each distinct
    (profit, stop, taker fee) of the per-bar rows through :func:`core.policy.breakeven_centers`
    on the traded widths of the decision bars -- the centres the rows' signals use."""
    rows = per_bar_rows(data.policy, combos)
    if not rows.any():
        return None
    k = data.inputs
    width = np.ascontiguousarray(k.width[k.start:k.last + 1], dtype=np.float64)
    cols = [POLICY_VECTOR.index(f) for f in ("profit", "stop", "taker_fee")]
    keys, group = np.unique(params[rows][:, cols], axis=0, return_inverse=True)
    medians = np.full(len(keys), math.nan)
    lowest = np.full(len(width), math.nan)
    for j, (profit, stop, fee) in enumerate(keys):
        c = breakeven_centers(width, float(profit), float(stop), float(fee))
        if np.isfinite(c).any():
            medians[j] = float(np.nanmedian(c))
            lowest = np.fmin(lowest, c)
    median = np.full(len(combos), math.nan)
    median[np.flatnonzero(rows)] = medians[group.reshape(-1)]
    return PerBarCenters(median=median, lowest=lowest)


def label_base_rates(data: SweepData, combos: pd.DataFrame) -> np.ndarray:
    """Label base rate of each row's own barriers on the span: the share of labelled span bars
    whose triple barrier (the row's profit, stop, max hold as horizon, the traded tie rule; the
    labeller of :mod:`models.labels`) hits the take profit first. Computed once per distinct
    barrier set. Volatility-scaled rows label the trade the kernel simulates: their multiples
    of the traded width (``sigma_t * sqrt(trained horizon)``, :attr:`KernelInputs.width`) with
    ``max_hold`` bars as the time exit only (not ``sqrt(max_hold)`` in the width)."""
    span = data.frame.iloc[data.inputs.first:data.inputs.last + 1]
    out = np.empty(len(combos))
    keys = combos[["profit", "stop", "max_hold"]].apply(tuple, axis=1)
    for (profit, stop, hold), idx in keys.groupby(keys).groups.items():
        labels = row_labels(data.policy, float(profit), float(stop), int(hold))
        if data.policy.vol_scaled:  # the traded widths of the fed bars (warm-up included)
            code = label_arrays(data.frame, labels, data.timeframe,
                                width=data.inputs.width)[0][data.inputs.first:data.inputs.last + 1]
        else:
            code, _, _ = label_arrays(span, labels, data.timeframe)
        labelled = int((code > 0).sum())
        out[combos.index.get_indexer(idx)] = float((code == 1).sum()) / labelled if labelled else math.nan
    return out


def row_labels(policy: Policy, profit: float, stop: float, hold: int) -> LabelConfig:
    """The label event of a row's barriers (``max_hold`` as the horizon, the traded tie rule):
    fixed percentages, or -- for a volatility-scaled policy -- the multiples ``profit``/``stop``
    (span ``vol_span``); label those with the traded widths (``label_arrays(..., width=)``):
    this config's own width would use ``sqrt(max_hold)``, the trade keeps the trained horizon's."""
    if policy.vol_scaled:
        return LabelConfig(scale="vol", vol_profit=profit, vol_stop=stop, vol_span=policy.vol_span, horizon=hold,
                           tie=policy.tie)
    return LabelConfig(profit=profit, stop=stop, horizon=hold, tie=policy.tie)


def median_width(data: SweepData) -> float:
    """Median barrier width over the span's bars (1.0 for fixed barriers; NaN when none is known)."""
    k = data.inputs
    if k.width is None:
        return 1.0
    w = k.width[k.first:k.last + 1]
    return float(np.median(w[np.isfinite(w)])) if np.isfinite(w).any() else math.nan


def breakeven_ps(combos: pd.DataFrame, width: float = 1.0) -> np.ndarray:
    """Break-even win probability of each row's barriers after a round trip of its taker fee
    (:func:`core.policy.breakeven_probability`); NaN where the profit does not cover the fees.
    For volatility-scaled rows (multiples) it is taken at ``width``, the span's median width
    (the traded centre is per bar)."""
    out = np.empty(len(combos))
    for k, (p, s, f) in enumerate(zip(combos["profit"], combos["stop"], combos["taker_fee"])):
        try:
            out[k] = breakeven_probability(float(p) * width, float(s) * width, float(f))
        except ConfigError:
            out[k] = math.nan
    return out


def row_names(combos: pd.DataFrame, swept: Sequence[str]) -> list[str]:
    """Short row labels from the swept axes, e.g. ``#12 profit=0.01 stop=0.004 deadband=0.3``."""
    axes = [a for a in AXES if a in swept and a in combos.columns] or ["deadband"]
    return [f"#{i} " + " ".join(f"{a}={_short(v)}" for a, v in zip(axes, vals))
            for i, vals in enumerate(combos[axes].itertuples(index=False, name=None))]


def _short(v: Any) -> str:
    return v if isinstance(v, str) else f"{v:g}"


# ----------------------------------------------------------------------------- results
@dataclass
class WalkForward:
    """Fold-by-fold choice of the best in-sample row and how it did on the next fold."""

    table: pd.DataFrame   # one row per in-sample -> out-of-sample step
    summary: dict[str, Any]


@dataclass
class SweepResult:
    """A finished sweep: per-row table, moments, fold figures, statistics across the grid."""

    grid: Grid
    data: SweepData
    table: pd.DataFrame           # one row per combination: axes, metrics, base rate, break-even P
    params: np.ndarray            # policy rows (POLICY_VECTOR)
    raw: np.ndarray               # kernel slots (RAW_FIELDS)
    moments: np.ndarray           # [n_rows, blocks, 5] per-bar return moments
    folds: np.ndarray             # [n_rows, folds, FOLD_FIELDS]
    overfit: OverfitReport
    walk_forward: WalkForward | None
    names: list[str]
    buy_and_hold: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    engine: str = "numba threads (single process)"
    strategy_cls: type = TCNStrategy                  # whose hooks the rows ran
    kernel_inputs: KernelInputs | None = None         # data.inputs with the hook groups' values
    kernel_rows: np.ndarray | None = None             # params + hook group (what the mapper ran)
    strategy_params: dict[str, Any] | None = None     # its params (beyond the policy)

    @property
    def top(self) -> pd.DataFrame:
        """The ``grid.top`` best rows by Sharpe (rows without one last)."""
        return self.table.sort_values("sharpe", ascending=False, na_position="last", kind="stable").head(self.grid.top)

    @property
    def top_trading(self) -> pd.DataFrame:
        """The ``grid.top`` best rows by Sharpe among the rows that traded at least once."""
        traded = self.table[(self.table["trades"] > 0) | (self.table["open_trades"] > 0)]
        return traded.sort_values("sharpe", ascending=False, na_position="last", kind="stable").head(self.grid.top)

    @property
    def flat_rows(self) -> int:
        """Rows that never held a position (no trade, nothing open at the end)."""
        return int(((self.table["trades"] == 0) & (self.table["open_trades"] == 0)).sum())

    def warnings(self) -> list[str]:
        """Plain-words cautions the verdict alone does not give (shown beside it)."""
        out = []
        n, flat = len(self.table), self.flat_rows
        if flat:
            out.append(self._flat_warning(flat))
        out += list(self.overfit.cautions)  # e.g. ties that raised the PBO (sweeps.overfit decides)
        return out

    def _flat_warning(self, flat: int) -> str:
        """Why rows may stay flat: the highest P against the lowest centre swept -- for rows
        whose centre is per bar, the lowest per-bar centre and P's best margin over its own bar's."""
        k = self.data.inputs
        p = k.prob[k.start:k.last + 1]
        p_max = float(np.nanmax(p)) if np.isfinite(p).any() else math.nan
        text = f"{flat:,} of {len(self.table):,} rows never traded: the highest P on the span is {p_max:.3f}"
        per_bar = per_bar_rows(self.data.policy, self.table)
        if not per_bar.all():
            lowest = float(np.nanmin(self.table["center_used"].to_numpy()[~per_bar]))
            text += f" and the lowest centre swept is {lowest:.3f}"
        centers = per_bar_centers(self.data, self.table, self.params)
        if centers is not None and np.isfinite(centers.lowest).any():
            margin = p - centers.lowest
            best = float(np.nanmax(margin)) if np.isfinite(margin).any() else math.nan
            text += (f"{'; for' if not per_bar.all() else ';'} the rows with a per-bar break-even centre "
                     f"((stop_t + 2 fee) / (profit_t + stop_t) of each bar's volatility-scaled barriers) the lowest "
                     f"centre on any bar is {float(np.nanmin(centers.lowest)):.3f}, and P minus the lowest centre "
                     f"of its own bar is at most {best:+.3f}")
        elif centers is not None:
            text += ("; for the rows with a per-bar break-even centre no bar of the span has a profit width above "
                     "the round-trip taker fee (no centre, no entry)")
        return text + (" (a row enters only where P is above its centre by enough to pass its deadband after "
                       "volatility scaling).")

    def row_policy(self, row: int) -> Policy:
        """The policy of sweep row ``row`` (checked against the row the kernel ran)."""
        combo = {a: self.table.at[row, a] for a in AXES}
        policy = row_policy(self.data.policy, combo)
        if not np.array_equal(policy.to_array(), self.params[row]):
            raise AssertionError(f"row {row}: policy differs from the swept row")
        return policy

    def simulate_row(self, row: int) -> SimResult:
        """Re-run one row with :func:`core.simulator.simulate` for its fills, trades and equity
        (the tables ``run_backtest`` reports; the report's vectorbt portfolios are built from them)."""
        return simulate_row(self.data, self.row_policy(row), self.strategy_cls, self.strategy_params)


def simulate_row(data: SweepData, policy: Policy, strategy_cls: type = TCNStrategy,
                 strategy_params: dict[str, Any] | None = None) -> SimResult:
    """One full simulation on the sweep's inputs (same bars, P, vol and span as every row) with
    ``strategy_cls``'s hooks."""
    k = data.inputs
    h = evaluate_hooks(hook_instance(strategy_cls, policy, strategy_params), data.frame, k.prob, k.fvol, k.width)
    return simulate(policy, data.risk_cfg, data.frame, k.prob, k.fvol, k.rvol, k.cash,
                    RunOptions(start=k.start, end=k.last, coc=k.coc), signals=as_signals(h.prob, h.signal, h.weight, h.allowed), width=k.width)


def metrics_table(raw: np.ndarray, data: SweepData, moments: np.ndarray | None = None) -> pd.DataFrame:
    """Per-row metrics (strategies.metrics conventions) from the kernel's raw slots.

    One deliberate difference: a row whose every return is exactly 0 (it never held a
    position) has Sharpe and Sortino 0, where ``nts backtest`` reports n/a -- the convention of
    :mod:`sweeps.overfit`, so the table ranks rows exactly as the DSR/PBO verdict does (doing
    nothing ranks above losing money)."""
    ann = math.sqrt(bars_per_year(data.timeframe))
    idx = data.span_index
    years = (idx[-1] - idx[0]).total_seconds() / (365.0 * 86400.0) if len(idx) > 1 else math.nan
    start, final = raw[:, R_START], raw[:, R_FINAL]
    with np.errstate(divide="ignore", invalid="ignore"):
        total = final / start - 1.0
        growth = np.where(final > 0, final / start, np.nan)
        cagr = np.where(final > 0, growth ** (1.0 / years) - 1.0, -1.0) if years > 0 else np.full(len(raw), np.nan)
        sharpe = np.where(raw[:, R_STD] > 0, raw[:, R_MEAN] / raw[:, R_STD] * ann, np.nan)
        sortino = np.where(raw[:, R_DOWN] > 0, raw[:, R_MEAN] / raw[:, R_DOWN] * ann, np.nan)
        trades = raw[:, R_TRADES]
        win = np.where(trades > 0, raw[:, R_WINS] / trades, np.nan)
        hold = np.where(trades > 0, raw[:, R_HOLD] / trades, np.nan)
        turnover = np.where(raw[:, R_MEANEQ] > 0, raw[:, R_NOTIONAL] / raw[:, R_MEANEQ], np.nan)
    if moments is not None:
        flat = moments[:, :, 2].sum(axis=1) == 0.0  # sum of r^2 over the span: every return exactly 0
        sharpe = np.where(flat, 0.0, sharpe)
        sortino = np.where(flat, 0.0, sortino)
    kind = {k: raw[:, RAW_KIND0 + i] for i, k in enumerate(KINDS)}
    return pd.DataFrame({
        "total_return": total, "cagr": cagr, "sharpe": sharpe, "sortino": sortino,
        "max_drawdown": raw[:, R_MAXDD], "trades": trades.astype(np.int64), "win_rate": win, "avg_hold_bars": hold,
        "exposure": raw[:, R_EXPO] / raw[:, R_BARS], "turnover": turnover, "fees": raw[:, R_FEES],
        "final_equity": final, "open_trades": raw[:, R_OPEN].astype(np.int64),
        "exits_take_profit": kind["take_profit"].astype(np.int64), "exits_stop": kind["stop"].astype(np.int64),
        "exits_time": kind["time"].astype(np.int64), "exits_risk": (kind["risk"] + kind["kill"]).astype(np.int64),
        "risk_trips": raw[:, R_TRIPS].astype(np.int64),
    })


def walk_forward(moments: np.ndarray, folds: np.ndarray, data: SweepData, names: Sequence[str],
                 n_folds: int) -> WalkForward | None:
    """Fold k's best row in sample (highest Sharpe over fold k; ties to the lowest row, rows
    without a Sharpe never chosen) scored on fold k + 1. None with fewer than 2 folds."""
    if n_folds < 2:
        return None
    ann = math.sqrt(bars_per_year(data.timeframe))
    s = moments.shape[1]
    per = s // n_folds
    sr = np.stack([moments_stats(moments[:, f * per:(f + 1) * per]).sharpe for f in range(n_folds)], axis=1) * ann
    edges = data.inputs.fold_edges
    idx = data.span_index
    with np.errstate(divide="ignore", invalid="ignore"):
        ret = folds[:, :, FD_END] / folds[:, :, FD_START] - 1.0
    rows = []
    for k in range(n_folds - 1):
        ins = np.where(np.isfinite(sr[:, k]), sr[:, k], -np.inf)
        if not np.isfinite(ins).any():
            continue
        best = int(np.argmax(ins))
        oos = sr[:, k + 1]
        valid = np.isfinite(oos)
        rank = float((oos[valid] < oos[best]).sum() + 0.5 * ((oos[valid] == oos[best]).sum() - 1) + 1) / valid.sum() \
            if valid.any() and np.isfinite(oos[best]) else math.nan
        rows.append({
            "fold": k + 1,
            "in_sample": f"{idx[edges[k]]:%Y-%m-%d} .. {idx[edges[k + 1]]:%Y-%m-%d}",
            "out_of_sample": f"{idx[edges[k + 1]]:%Y-%m-%d} .. {idx[edges[k + 2]]:%Y-%m-%d}",
            "row": best, "name": names[best],
            "is_sharpe": float(sr[best, k]), "is_return": float(ret[best, k]),
            "is_max_drawdown": float(folds[best, k, FD_MAXDD]), "is_trades": int(folds[best, k, FD_TRADES]),
            "oos_sharpe": float(oos[best]), "oos_return": float(ret[best, k + 1]),
            "oos_max_drawdown": float(folds[best, k + 1, FD_MAXDD]), "oos_trades": int(folds[best, k + 1, FD_TRADES]),
            "oos_rank_pct": rank,  # share of rows at or below the chosen one out of sample (1 = best)
            "oos_best_sharpe": float(np.nanmax(oos)) if valid.any() else math.nan,
            "oos_median_sharpe": float(np.nanmedian(oos)) if valid.any() else math.nan,
            "first_bar": int(edges[k + 1]), "last_bar": int(edges[k + 2]),
        })
    table = pd.DataFrame(rows)
    if table.empty:
        return WalkForward(table=table, summary={"steps": 0})
    chained = float(np.prod(1.0 + table["oos_return"].to_numpy()) - 1.0)
    summary = {
        "steps": int(len(table)),
        "mean_is_sharpe": float(table["is_sharpe"].mean()), "mean_oos_sharpe": float(table["oos_sharpe"].mean()),
        "oos_return_chained": chained,
        "oos_losing_folds": int((table["oos_return"] < 0).sum()),
        "mean_oos_rank_pct": float(table["oos_rank_pct"].mean()),
        "fold_rule": "fold k's best in-sample Sharpe row, scored on fold k+1 (slices of one run per row)",
    }
    return WalkForward(table=table, summary=summary)


def _check_grid_fits(data: SweepData, grid: Grid) -> None:
    """ConfigError when the span was prepared for other block or fold counts than the grid's."""
    if data.inputs.return_edges.shape[0] - 1 != grid.blocks:
        raise ConfigError(f"the span was prepared for {data.inputs.return_edges.shape[0] - 1} blocks, the grid "
                          f"has {grid.blocks}")
    if data.inputs.fold_edges.shape[0] - 1 != grid.folds:
        raise ConfigError(f"the span was prepared for {data.inputs.fold_edges.shape[0] - 1} folds, the grid "
                          f"has {grid.folds}")


def _trained_barriers(table: pd.DataFrame, trained: LabelConfig | None) -> pd.Series | bool:
    """Per row: True where its barriers and horizon are the ones the bundle was trained on."""
    if trained is None:
        return False
    t_profit, t_stop = (trained.vol_profit, trained.vol_stop) if trained.scale == "vol" else (trained.profit,
                                                                                             trained.stop)
    return (table["profit"] == t_profit) & (table["stop"] == t_stop) & (table["max_hold"] == trained.horizon)


def _row_table(data: SweepData, combos: pd.DataFrame, params: np.ndarray, raw: np.ndarray, moments: np.ndarray,
               names: list[str]) -> pd.DataFrame:
    """The per-row table: the grid's axes, the metrics, base rate, break-even P, whether the
    row trades the trained barriers and the centre it used, named ``names``."""
    table = combos.copy()
    table = pd.concat([table, metrics_table(raw, data, moments)], axis=1)
    table["base_rate"] = label_base_rates(data, combos)
    table["breakeven_p"] = breakeven_ps(combos, median_width(data))
    table["trained_barriers"] = _trained_barriers(table, data.trained_labels)
    table["center_used"] = params[:, POLICY_VECTOR.index("center")]
    centers = per_bar_centers(data, combos, params)
    if centers is not None:  # a per-bar centre: its median over the decision bars (not the policy's one number)
        table["center_used"] = np.where(per_bar_rows(data.policy, combos), centers.median, table["center_used"])
    table.insert(0, "name", names)
    table.index.name = "row"
    return table


def run_sweep(data: SweepData, grid: Grid, chunk: int = DEFAULT_CHUNK, mapper: Mapper | None = None,
              progress: Callable[[int], None] | None = None, engine: str | None = None,
              strategy_cls: type = TCNStrategy, strategy_params: dict[str, Any] | None = None) -> SweepResult:
    """Run every combination of ``grid`` on ``data`` and compute the statistics across it.

    ``mapper(inputs, rows, progress) -> (raw, moments, folds)`` runs the kernel rows (policy
    row + hook group; default: in this process, :func:`run_rows`;
    :func:`sweeps.distributed.dask_mapper` on a cluster). ``strategy_cls``'s vectorised hooks
    (and ``strategy_params``) give each row's signal, weight and entry permission
    (:func:`hook_groups`).
    """
    t0 = time.perf_counter()
    _check_grid_fits(data, grid)
    combos = grid.combinations()
    params = policy_rows(data.policy, combos)
    inputs, group = hook_groups(data, data.policy, combos, params, strategy_cls, strategy_params)
    rows = np.ascontiguousarray(np.column_stack([params, group]))
    t_rows = time.perf_counter()
    if mapper is None:
        raw, moments, folds = run_rows(inputs, rows, chunk, progress)
    else:
        raw, moments, folds = mapper(inputs, rows, progress)
    t_sim = time.perf_counter()
    if raw[:, R_OVF].any():
        raise RuntimeError("sweep: a row's fill buffer overflowed")  # sized 2 x bars + 16, as core.simulator's
    if raw[:, R_STOPPED].any():
        raise RuntimeError("sweep: a row stopped early")  # only the kill switch stops a run; sweeps never pass one
    names = row_names(combos, grid.swept)
    table = _row_table(data, combos, params, raw, moments, names)
    ppy = bars_per_year(data.timeframe)
    report = overfitting_report(moments, ppy, names=names, blocks=grid.blocks, folds=grid.folds)
    wf = walk_forward(moments, folds, data, names, grid.folds)
    bh = equity_metrics(buy_and_hold(data.span_close, data.inputs.cash), data.timeframe)
    t_end = time.perf_counter()
    seconds = {"score": round(data.seconds, 3), "policy_rows": round(t_rows - t0, 3),
               "simulate": round(t_sim - t_rows, 3), "statistics": round(t_end - t_sim, 3)}
    return SweepResult(grid=grid, data=data, table=table, params=params, raw=raw, moments=moments, folds=folds,
                       overfit=report, walk_forward=wf, names=names, buy_and_hold=bh, seconds=seconds,
                       engine=engine or "numba threads (single process)", strategy_cls=strategy_cls,
                       strategy_params=strategy_params, kernel_inputs=inputs, kernel_rows=rows)
