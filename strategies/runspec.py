"""One run specification for every engine: :class:`RunSpec`, built once, read by all.

``RunSpec.build`` resolves everything a run needs, in one place and in the order of the
cheapest refusal first: the strategy class (:func:`strategies.registry.resolve_strategy`),
the model bundle (:func:`models.loading.as_bundle`; ``calibration.mode: rolling`` in the run
config puts causal rolling recalibration on top of it: :func:`models.loading.with_run_calibration`),
the traded barriers
(:func:`core.policy.traded_labels`), the costs, the policy with the strategy's overrides, the
one warm-up (:func:`warmup_bars_for`) and -- when bars are given -- the span and the bars fed
(:func:`resolve_span`). Backtest (:func:`strategies.backtest.run_backtest`) and sweep
(:func:`sweeps.engine.prepare_span`) read the same object; paper and live build one without
bars (their history comes from the exchange) and read the rest of it.

Span rules: the run covers the bars whose open time is in ``[start, end)`` (UTC;
:mod:`core.dates`: a date alone as ``end`` includes that whole day). Bars before ``start``
are fed only as warm-up (features, the model window, the volatility window). Without
``start`` the span begins right after the bundle's training span; a span that overlaps the
training span is refused (:class:`InSampleError`) unless ``allow_in_sample``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd

from core.config import Config, LabelConfig
from core.costs import Costs
from core.dates import parse_span
from core.errors import DataError, NtsError
from core.policy import Policy, traded_labels
from core.risk import RiskManager
from models.features import memory_bars
from models.labels import width_memory_bars
from models.loading import as_bundle, with_run_calibration
from strategies.base import POLICY_FIELDS, apply_overrides
from strategies.hooks import hook_instance
from strategies.registry import resolve_strategy


class InSampleError(NtsError):
    """The requested span overlaps the bars the model was trained on."""


def resolve_span(frame: pd.DataFrame, bundle: Any, start: Any = None, end: Any = None,
                 allow_in_sample: bool = False) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The first and last bar of ``frame`` whose open time is in ``[start, end)`` (the one date
    rule of :mod:`core.dates`: ``end="2024-10-31"`` includes that day's last bar; a full
    timestamp ends the span at that instant); see the module docstring for the defaults."""
    if len(frame) == 0:
        raise DataError("backtest data is empty")
    idx = frame.index
    t_start, t_end = parse_span(start, end)
    train = getattr(bundle, "training_span", None) if bundle is not None else None
    if t_start is None:
        t_start = idx[0]
        if train is not None and not allow_in_sample:
            t_start = max(t_start, train[1] + pd.Timedelta(seconds=1))
    first = idx.searchsorted(t_start, side="left")
    last = len(idx) - 1 if t_end is None else idx.searchsorted(t_end, side="left") - 1  # end is exclusive
    if t_end is None:
        t_end = idx[-1]
    empty = first >= len(idx) or last < first
    refuse_oos = train is not None and not allow_in_sample and start is None
    if empty and refuse_oos and end is not None and t_end <= train[1]:
        where = "inside" if t_end >= train[0] else "before"
        raise InSampleError(f"--end {t_end} falls {where} the bundle's training span ({train[0]} .. {train[1]}): "
                            "no out-of-sample bars up to it (give a later --end, or --allow-in-sample)")
    if empty and refuse_oos:
        raise InSampleError(f"the data ends ({idx[-1]}) before the bundle's training span does ({train[1]}): "
                            "no out-of-sample bars to backtest (give newer data, or --allow-in-sample)")
    if empty:
        raise DataError(f"no bars in the backtest span {t_start} .. {t_end} (data covers {idx[0]} .. {idx[-1]})")
    s, e = idx[first], idx[last]
    if train is not None and not allow_in_sample and s <= train[1] and e >= train[0]:
        raise InSampleError(f"backtest span {s} .. {e} overlaps the bundle's training span {train[0]} .. {train[1]}; "
                            "refusing to report in-sample results (use --allow-in-sample to run it anyway)")
    return s, e


def warmup_bars_for(bundle: Any, cfg: Config) -> int:
    """Bars of history every engine feeds before the first traded bar (the one warm-up):
    the bundle's :attr:`~models.bundle.ModelBundle.history_bars` (after which P no longer
    depends on where the history starts), at least the risk manager's volatility window, the
    volatility forecast's memory (without a bundle: the config's features) and, for
    volatility-scaled barriers (the bundle's or the config's), the barrier width's memory."""
    features = bundle.feature_cfg if bundle is not None else cfg.features
    labels = [lab for lab in (getattr(bundle, "label_cfg", None), cfg.labels) if lab is not None and lab.scale == "vol"]
    return max(bundle.history_bars if bundle is not None else 0, cfg.risk.vol_window_bars + 1,
               memory_bars(features), *(width_memory_bars(lab.vol_span) for lab in labels))


@dataclass(frozen=True)
class Span:
    """The bars a backtest or sweep runs on: warm-up + span, and where the span starts."""

    frame: pd.DataFrame      # bars fed (warm-up, then the span)
    start: pd.Timestamp      # first bar of the span
    end: pd.Timestamp        # last bar of the span
    first: int               # position of ``start`` in ``frame``
    in_sample: bool          # the span overlaps the bundle's training span (allowed explicitly)

    @property
    def warmup_bars(self) -> int:
        """Bars fed before the span."""
        return self.first


def _fed_span(frame: pd.DataFrame, bundle: Any, cfg: Config, warm: int, start: Any, end: Any,
              allow_in_sample: bool) -> Span:
    s, e = resolve_span(frame, bundle, start, end, allow_in_sample)
    i0 = max(0, int(frame.index.searchsorted(s)) - warm)
    i1 = int(frame.index.searchsorted(e, side="right"))
    data = frame.iloc[i0:i1]
    min_bars = int(getattr(bundle, "min_bars", 0) or 0)
    if bundle is not None and len(data) < min_bars + 1:
        raise DataError(f"only {len(data)} bars up to the span end {e} (warm-up + span); the model needs at least "
                        f"{min_bars + 1} (bundle min_bars {min_bars} + 1): give more history or a later end")
    in_sample = False
    if bundle is not None:
        a, b = bundle.training_span
        in_sample = bool(s <= b and e >= a)
    return Span(frame=data, start=s, end=e, first=int(data.index.searchsorted(s)), in_sample=in_sample)


@dataclass(frozen=True)
class RunSpec:
    """Everything a run is made of, resolved once (see the module docstring); frozen."""

    cfg: Config
    bundle: Any                          # loaded model bundle (None: a strategy that needs none)
    strategy_cls: type                   # resolved ModelStrategy subclass
    strategy_kwargs: Mapping[str, Any]   # the strategy's own params (policy fields already applied)
    policy: Policy                       # traded policy: config, bundle barriers, costs, overrides
    costs: Costs
    labels: LabelConfig                  # barriers traded
    barrier_source: str                  # "bundle" or "config"
    timeframe: str
    warmup: int                          # bars of history before the first traded bar
    coc: bool = False                    # cheat-on-close (market orders fill at the signal close)
    prob_cache: Path | None = None       # probability cache folder (None: always score)
    span: Span | None = None             # the bars of a backtest or sweep (None: paper/live)

    @classmethod
    def build(cls, cfg: Config, *, model: Any = None, data: pd.DataFrame | None = None, strategy: Any = "tcn",
              span: tuple[Any, Any] = (None, None), allow_in_sample: bool = False, barriers: str = "bundle",
              costs: Costs | None = None, coc: bool = False, prob_cache: str | Path | None = None,
              strategy_kwargs: Mapping[str, Any] | None = None) -> "RunSpec":
        """Resolve a run: ``model`` (bundle, folder or weights file; optional when the
        strategy takes no bundle), ``data`` (canonical OHLCV frame; None for paper/live),
        ``strategy`` (name, ``module:Class``, ``file.py:Class`` or class), ``span`` = (start,
        end). ``strategy_kwargs``: Policy fields (``center=0.4``) go into the policy, the
        rest are the strategy's params. Refusals are one-line NtsErrors, before any work."""
        strategy_cls = resolve_strategy(strategy)
        takes_bundle = "bundle" in strategy_cls.params._getkeys()
        bundle = as_bundle(model) if (takes_bundle or model is not None) else None
        # calibration.mode: rolling in the run config recalibrates any model causally (models.loading)
        bundle = with_run_calibration(bundle, cfg.calibration) if bundle is not None else None
        labels, source = traded_labels(cfg, bundle, barriers)  # refuses mismatched labels first
        costs = costs if costs is not None else Costs.from_config(cfg)
        kwargs = dict(strategy_kwargs or {})
        policy_kw = {k: kwargs.pop(k) for k in list(kwargs) if k in POLICY_FIELDS or k == "policy"}
        policy = apply_overrides({"policy": Policy.from_config(cfg, bundle, barriers).with_costs(costs)},
                                 policy_kw)["policy"]
        spec = cls(cfg=cfg, bundle=bundle, strategy_cls=strategy_cls, strategy_kwargs=MappingProxyType(kwargs),
                   policy=policy, costs=costs, labels=labels, barrier_source=source,
                   timeframe=bundle.timeframe if bundle is not None else cfg.data.timeframe,
                   warmup=warmup_bars_for(bundle, cfg), coc=bool(coc),
                   prob_cache=None if prob_cache is None else Path(prob_cache))
        return spec if data is None else spec.with_bars(data, span, allow_in_sample)

    def with_bars(self, data: pd.DataFrame, span: tuple[Any, Any] = (None, None),
                  allow_in_sample: bool = False) -> "RunSpec":
        """This spec on the bars of ``data`` over ``span`` = (start, end) (the span rules of the
        module docstring): a copy with :attr:`span` set; everything else stays as resolved."""
        fed = _fed_span(data, self.bundle, self.cfg, self.warmup, span[0], span[1], allow_in_sample)
        return dataclasses.replace(self, span=fed)

    @property
    def strategy_name(self) -> str:
        """``module:Class`` of the strategy (what reports and journals record)."""
        return f"{self.strategy_cls.__module__}:{self.strategy_cls.__qualname__}"

    @property
    def model_path(self) -> str | None:
        """The bundle's folder as text (None without a bundle)."""
        return None if self.bundle is None else str(getattr(self.bundle, "path", "") or "")

    def strategy_params(self, *, trade_start: Any = None, trade_end: Any = None, risk: RiskManager | None = None,
                        prob_cache: bool = True) -> dict[str, Any]:
        """backtrader params of the strategy: the policy, the bundle's feature config, a fresh
        :class:`RiskManager` on ``cfg.risk`` (or ``risk``), the trading window, the bundle and
        the probability cache where the class takes them (``prob_cache=False``: streaming
        engines score every bar), then the strategy's own params."""
        keys = self.strategy_cls.params._getkeys()
        params: dict[str, Any] = {
            "policy": self.policy,
            "feature_cfg": self.bundle.feature_cfg if self.bundle is not None else self.cfg.features,
            "risk": risk if risk is not None else RiskManager(self.cfg.risk),
            "trade_start": trade_start, "trade_end": trade_end,
        }
        if "bundle" in keys:
            params["bundle"] = self.bundle
        if "prob_cache" in keys:
            params["prob_cache"] = self.prob_cache if prob_cache else None
        params.update(self.strategy_kwargs)
        return params

    def hooks(self) -> Any:
        """An instance of the strategy on which its vectorised hooks run outside backtrader
        (:func:`strategies.hooks.hook_instance`; the sweep and the lookahead check use it)."""
        return hook_instance(self.strategy_cls, self.policy, dict(self.strategy_kwargs))

    def require_span(self) -> Span:
        """The span (a spec built with bars); one line otherwise."""
        if self.span is None:
            raise DataError("this run needs bars: build the RunSpec with data=")
        return self.span
