"""Lookahead check of a strategy's hooks: does a value at bar t change when later bars arrive?

Paper and live evaluate the hooks over the trailing history, backtest and sweep once over the
whole span (:mod:`strategies.hooks`); both give the same numbers only when every hook is
causal. :func:`check_lookahead` evaluates each hook over growing prefixes of the bars
(``bars[:k]`` for a set of prefix ends k, as a live session sees them) and compares every
value with the one the whole span gives; a bar whose value differs is a :class:`Peek`.

Each hook is checked on its own inputs: ``signal`` and ``entry_allowed`` on the prefix of the
bars and probabilities, ``target_weight`` on the prefix of the whole span's signal (so a peeking
``signal`` is not blamed on ``target_weight``). Hooks run through the one safe call path
(:func:`strategies.hooks.call_hook`), so a failing hook is reported as the user's error.

It also verifies the strategy's declared ``hook_lookback`` (:func:`check_lookback`): paper and
live evaluate the hooks over that many trailing bars only, so at sampled bars the hooks are
evaluated on exactly those bars and each value is compared with the whole history's; a
difference is a :class:`LookbackMiss` (the declaration is too short). A strategy that overrides
a hook without declaring one is told so (the whole history on every bar, slower every bar).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from core.config import Config
from core.errors import DataError, NtsError
from core.policy import Policy
from models.features import compute_features
from models.labels import policy_widths
from models.prob_cache import cached_scores
from strategies.hooks import allowed_array, declared_lookback, hook_bars, hook_instance, signal_array, weight_array
from strategies.registry import resolve_strategy

# Values closer than this (relative, and absolute near 0) count as equal: a rolling sum
# recomputed over another length may differ in the last bits, a peek does not.
RTOL = 1e-9
ATOL = 1e-12


class LookaheadError(NtsError):
    """A strategy hook uses bars after the one it decides for."""


class LookbackError(NtsError):
    """A strategy's hooks need more trailing bars than its ``hook_lookback`` declares."""


@dataclass(frozen=True)
class Peek:
    """One hook value that changed when later bars were appended."""

    hook: str
    bar: int                    # position of the bar in the checked bars
    time: pd.Timestamp
    on_prefix: float            # value with the bars up to ``prefix_end`` only
    on_full: float              # value with every bar
    prefix_end: int             # the prefix held bars 0 .. prefix_end

    def line(self) -> str:
        """One line for the report."""
        return (f"hook {self.hook}() at bar {self.bar} ({self.time}): {self.on_prefix:g} with bars up to "
                f"bar {self.prefix_end}, {self.on_full:g} once later bars are appended")


@dataclass(frozen=True)
class LookbackMiss:
    """One hook value that differs when only the declared trailing bars are given."""

    hook: str
    bar: int                    # position of the bar in the checked bars
    time: pd.Timestamp
    on_window: float            # value with the trailing ``lookback`` bars only
    on_full: float              # value with every bar up to it
    lookback: int

    def line(self) -> str:
        """One line for the report."""
        return (f"hook {self.hook}() at bar {self.bar} ({self.time}): {self.on_window:g} from its trailing "
                f"{self.lookback} bars, {self.on_full:g} from the whole history")


@dataclass(frozen=True)
class LookbackReport:
    """What :func:`check_lookback` found (``lookback`` None: not declared, nothing checked)."""

    lookback: int | None
    sampled: int                          # bars whose value was recomputed on their window
    misses: tuple[LookbackMiss, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every sampled value equals the whole history's."""
        return not self.misses

    def hooks(self) -> list[str]:
        """Names of the hooks whose value differed, in the order first found."""
        return list(dict.fromkeys(m.hook for m in self.misses))

    def summary(self, strategy: str) -> str:
        """The one line the check prints about the lookback."""
        if self.lookback is None:
            return (f"note: {strategy} declares no hook_lookback for its hooks: paper and live evaluate them over "
                    "the whole history on every bar (slower with every bar); declare the bars they look back as "
                    "the class attribute hook_lookback")
        if not self.sampled:
            return (f"note: hook_lookback = {self.lookback} is not shorter than the bars checked: not verified "
                    "(give more --bars)")
        if self.ok:
            return (f"ok: hook_lookback = {self.lookback}: the trailing {self.lookback} bars give the whole "
                    f"history's values at {self.sampled} sampled bars")
        return (f"strategy {strategy}: hook_lookback = {self.lookback} is too short: "
                + ", ".join(f"{h}()" for h in self.hooks())
                + f" changed at {len(self.misses)} of {self.sampled} sampled bars when given only the trailing "
                f"{self.lookback} bars")


@dataclass(frozen=True)
class LookaheadReport:
    """What :func:`check_lookahead` found."""

    strategy: str
    bars: int
    prefixes: int
    peeks: tuple[Peek, ...]
    capped: bool = False                  # more peeks existed than were kept (max_peeks)
    first: pd.Timestamp | None = None     # first and last bar checked
    last: pd.Timestamp | None = None
    probabilities: str = ""               # where P came from ("the model ..." or "synthetic ...")
    lookback: LookbackReport | None = None  # the declared hook_lookback's check (check_strategy)

    @property
    def ok(self) -> bool:
        """True when no hook value changed."""
        return not self.peeks

    def hooks(self) -> list[str]:
        """Names of the hooks that peek, in the order first found."""
        return list(dict.fromkeys(p.hook for p in self.peeks))


def prefix_ends(n: int, prefixes: int, min_bars: int = 2) -> np.ndarray:
    """Up to ``prefixes`` prefix lengths, evenly spaced in ``[min_bars, n - 1]`` (the full
    length itself is the reference)."""
    lo = max(1, min(min_bars, n - 1))
    if n - 1 < lo:
        return np.array([], dtype=np.int64)
    return np.unique(np.linspace(lo, n - 1, max(1, prefixes)).round().astype(np.int64))


def _hook_values(hooks: Any, bars: pd.DataFrame, prob: np.ndarray, fvol: np.ndarray,
                 signal: np.ndarray | None) -> dict[str, np.ndarray]:
    """The three hooks over ``bars``; ``target_weight`` reads ``signal`` when given (else the
    signal just computed)."""
    known = ~np.isnan(prob)
    s = signal_array(hooks, prob, bars)
    allowed = allowed_array(hooks, bars)
    w = weight_array(hooks, s if signal is None else signal, fvol, bars, known)
    return {"signal": s, "entry_allowed": allowed.astype("float64"), "target_weight": w}


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    both_nan = np.isnan(a) & np.isnan(b)
    close = np.isclose(a, b, rtol=RTOL, atol=ATOL)
    return ~(close | both_nan)


def check_lookahead(hooks: Any, bars: pd.DataFrame, prob: np.ndarray, fvol: np.ndarray, *, prefixes: int = 100,
                    min_bars: int = 2, max_peeks: int = 1000) -> LookaheadReport:
    """Evaluate ``hooks`` (an instance from :func:`strategies.hooks.hook_instance`) on the
    whole of ``bars`` and on ``prefixes`` growing prefixes of it; every (hook, bar) whose
    value on a prefix differs from the whole span's is reported once (the shortest prefix
    that shows it), at most ``max_peeks`` of them. ``prob``/``fvol``: per-bar inputs aligned
    with ``bars`` (causal themselves: the probability's lookahead test is the indicator's)."""
    prob = np.ascontiguousarray(prob, dtype="float64")
    fvol = np.ascontiguousarray(fvol, dtype="float64")
    full = _hook_values(hooks, bars, prob, fvol, None)
    seen: dict[tuple[str, int], Peek] = {}
    capped = False
    ends = prefix_ends(len(bars), prefixes, min_bars)
    for k in ends:
        k = int(k)
        part = _hook_values(hooks, bars.iloc[:k], prob[:k], fvol[:k], full["signal"][:k])
        for name, values in part.items():
            for i in np.flatnonzero(_changed(values, full[name][:k])):
                key = (name, int(i))
                if key in seen:
                    continue
                if len(seen) >= max_peeks:
                    capped = True
                    continue
                seen[key] = Peek(hook=name, bar=int(i), time=bars.index[int(i)], on_prefix=float(values[i]),
                                 on_full=float(full[name][i]), prefix_end=k - 1)
    peeks = tuple(sorted(seen.values(), key=lambda p: (p.bar, p.hook)))
    return LookaheadReport(strategy=type(hooks).__qualname__, bars=len(bars), prefixes=len(ends), peeks=peeks,
                           capped=capped,
                           first=bars.index[0] if len(bars) else None, last=bars.index[-1] if len(bars) else None)


def check_lookback(hooks: Any, bars: pd.DataFrame, prob: np.ndarray, fvol: np.ndarray, lookback: int | None, *,
                   samples: int = 100, max_misses: int = 1000) -> LookbackReport:
    """Verify ``lookback`` (the declared ``hook_lookback`` of ``hooks``): at up to ``samples``
    bars t evenly spaced among those with more than ``lookback`` bars before them, evaluate the
    hooks on bars ``t - lookback + 1 .. t`` only (as paper and live do) and compare the value of
    bar t with the whole span's (``target_weight`` on the whole span's signal, as in
    :func:`check_lookahead`, so each hook answers for itself)."""
    if lookback is None:
        return LookbackReport(None, 0)
    prob = np.ascontiguousarray(prob, dtype="float64")
    fvol = np.ascontiguousarray(fvol, dtype="float64")
    n = len(bars)
    if n <= lookback:
        return LookbackReport(lookback, 0)
    full = _hook_values(hooks, bars, prob, fvol, None)
    ends = np.unique(np.linspace(lookback, n - 1, max(1, samples)).round().astype(np.int64))
    misses: list[LookbackMiss] = []
    for t in ends:
        t = int(t)
        a = t - lookback + 1
        part = _hook_values(hooks, bars.iloc[a:t + 1], prob[a:t + 1], fvol[a:t + 1], full["signal"][a:t + 1])
        for name, values in part.items():
            if _changed(values[-1:], full[name][t:t + 1])[0] and len(misses) < max_misses:
                misses.append(LookbackMiss(hook=name, bar=t, time=bars.index[t], on_window=float(values[-1]),
                                           on_full=float(full[name][t]), lookback=lookback))
    return LookbackReport(lookback, len(ends), tuple(misses))


def neutral_probabilities(n: int, center: float, seed: int = 0) -> np.ndarray:
    """A fixed pseudo-random P per bar around ``center`` (half-way to 0 and 1 at most): hook
    inputs with both signs of signal when no model is given. Bar t's value never depends on
    how many bars follow (one draw per bar, in order)."""
    rng = np.random.default_rng(seed)
    return center + rng.uniform(-0.5, 0.5, n) * min(center, 1.0 - center)


def check_strategy(strategy: Any, frame: pd.DataFrame, cfg: Config, bundle: Any = None, *, bars: int = 2000,
                   prefixes: int = 100, cache_dir: Any = None) -> LookaheadReport:
    """:func:`check_lookahead` of ``strategy`` (name, ``module:Class``, ``file.py:Class`` or
    class) on the last ``bars`` bars of ``frame``: P from ``bundle`` when given (else
    :func:`neutral_probabilities`), the volatility forecast the engines use, the policy of
    ``cfg`` (and the bundle); its ``lookback`` holds :func:`check_lookback` of the declared
    ``hook_lookback`` at ``prefixes`` sampled bars."""
    cls = resolve_strategy(strategy)
    if bars < 3:
        raise DataError(f"--bars {bars}: the check needs at least 3 bars")
    data = frame.iloc[-bars:]
    if len(data) < 3:
        raise DataError(f"only {len(data)} bars of data: the check needs at least 3")
    policy = Policy.from_config(cfg, bundle)
    if bundle is not None:
        prob = cached_scores(bundle, data, cache_dir)[1]
        source = f"the model {getattr(bundle, 'path', '')} (NaN in its warm-up)"
    else:
        prob = neutral_probabilities(len(data), policy.center)
        source = "synthetic, around the policy's centre (give --model for the bundle's)"
    features = bundle.feature_cfg if bundle is not None else cfg.features
    fvol = policy.forecast_vols(compute_features(data, features, timeframe=policy.timeframe)["ewma_vol_fast"].to_numpy())
    hooks = hook_instance(cls, policy)
    data = hook_bars(data, policy_widths(data, policy), policy)  # barrier_width column when vol-scaled
    report = check_lookahead(hooks, data, prob, fvol, prefixes=prefixes)
    lookback = check_lookback(hooks, data, prob, fvol, declared_lookback(hooks), samples=prefixes)
    return dataclasses.replace(report, probabilities=source, lookback=lookback)
