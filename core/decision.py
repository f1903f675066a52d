"""The one decision step of the strategy: bar state in, a short list of actions out.

Every engine runs the same per-bar sequence through :func:`decide`, a pure compiled function:
backtrader's :class:`strategies.base.ModelStrategy` (backtest, paper, live) turns the actions
into backtrader orders, the reference simulator and the sweep (:mod:`core.simulator`) apply
them to their own order book. Only the fill mechanics exist twice (the two engines), and the
parity tests hold those equal trade for trade.

The sequence (first matching rule wins):

1. **Risk flatten** (the gate says ``flatten``: kill switch, drawdown, daily loss, no equity):
   cancel every working order and close the position at market (kind ``kill`` for the kill
   switch, else ``risk``), unless a close is already working; the kill switch also stops the
   run once nothing is left.
2. **Leverage cut** (gate ``reduce``, a position open): cut the position to
   ``max_weight x equity / close`` with a market order, re-placing its barrier exits as one
   OCO pair of the new size (skipped when the cut is <= 1e-12 or would not shrink it).
3. **Time exit** (a position open, its entry bar known, no close in flight): after
   ``max_hold`` bars of clock time, flatten with kind ``time``. A position open ends the step.
4. **Limit entry expiry** (an entry working): cancel it (with its barrier children) once it
   has worked ``limit_tif_bars`` bars. An entry tracked ends the step.
5. **Entry** (flat, gate ``allow``, inside the entry window, the strategy's ``entry_allowed``
   hook true): the weight ``w`` (the ``target_weight`` hook's value capped at the gate's
   ``max_weight``) is counted in the signal statistics; ``w != 0`` opens ``|w| x equity /
   close`` units with a limit at the close when ``|s| >= limit_confidence`` (else market) and
   its take profit and stop around that close, the first child winning a tie bar.

The state is split for a later multi-symbol portfolio: :class:`Gate` is portfolio-level (the
risk manager's answer on the whole account), :class:`SymbolState` and :class:`BarSignal` are
per symbol, so a portfolio is a loop of :func:`decide` over symbols under one gate.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from core.jit import kernel
from core.policy import POLICY_VECTOR, barrier_prices, barriers_usable, use_limit
from core.risk import ALLOW, REDUCE, cap_weight

# Order kinds (the ``kind`` tag of every order and fill).
KINDS: tuple[str, ...] = ("entry", "take_profit", "stop", "time", "risk", "kill")
K_ENTRY, K_TAKE_PROFIT, K_STOP, K_TIME, K_RISK, K_KILL = range(len(KINDS))

# Action bits of Actions.mask, applied in this order.
A_FLATTEN = 1        # cancel every working order of the symbol
A_CLOSE = 2          # close the position at market (kind Actions.kind)
A_STOP = 4           # kill switch: end the run once flat with nothing working
A_REDUCE = 8         # leverage cut (Actions.cut) with exits re-placed (Actions.keep)
A_CANCEL_ENTRY = 16  # cancel the working entry and its barrier children
A_ENTER = 32         # new bracket (Actions.long/size/limit/price/take_profit/stop/tp_first)
A_DECIDED = 64       # an entry decision was taken: count it in the signal statistics
ACTION_NAMES: tuple[str, ...] = ("flatten", "close", "stop", "reduce", "cancel_entry", "enter", "decided")

# Why (Actions.why): the risk reasons are core.risk.REASONS codes; the strategy's own are below.
WHY_TIME, WHY_TIF, WHY_SIGNAL = 100, 101, 102

# Signal statistics slots (count_decision).
SIGNAL_STATS: tuple[str, ...] = ("decisions", "scored", "p_max", "positive_signal", "past_deadband")
N_SIGNAL_STATS = len(SIGNAL_STATS)


class Gate(NamedTuple):
    """The portfolio-level risk gate of this bar (:func:`core.risk.risk_step`'s answer)."""

    action: int          # core.risk ALLOW / REDUCE / HALT
    reason: int          # core.risk.REASONS code
    flatten: bool        # close everything now
    stop: bool           # kill switch: end the run
    max_weight: float    # cap on |weight| of a new position (and the leverage cut's target)


class SymbolState(NamedTuple):
    """One symbol's position and working orders as the strategy tracks them."""

    position: float      # signed size
    equity: float        # account value (sizing and the leverage cut)
    close: float         # this bar's close: entry reference price
    held: int            # bars of clock time since the entry bar, -1 while unknown
    entry_open: bool     # an entry is tracked (working, or filled with its trade open)
    entry_alive: bool    # ... and still working
    entry_age: int       # bars since the entry was submitted
    closing: bool        # a time/risk exit is tracked
    closing_alive: bool  # ... and still working
    take_profit: float   # price of the position's take-profit exit (NaN: none)
    stop: float          # price of its stop exit (NaN: none)


class BarSignal(NamedTuple):
    """The strategy hooks' values on this bar (:func:`strategies.hooks.evaluate_hooks`)."""

    p: float             # calibrated P (NaN: none)
    s: float             # signal in [-1, 1]
    w: float             # target weight before the gate's cap
    allowed: bool        # entry_allowed hook
    in_window: bool      # inside the span's entry window (bar <= last entry bar)
    width: float = 1.0   # barrier width factor of the bar (1.0: fixed barriers)


class Rules(NamedTuple):
    """The policy fields the step reads (:func:`rules_of` a :meth:`core.policy.Policy.to_array` row)."""

    max_hold: int
    limit_tif_bars: int
    limit_confidence: float
    profit: float
    stop: float
    tp_first: bool       # tie rule: the take profit is submitted first (wins a bar touching both)
    # a bar's profit width must exceed this for an entry: 2 x taker fee for volatility-scaled
    # barriers (core.policy.barriers_usable), -inf for fixed ones (no check)
    min_profit_width: float = -math.inf


class Actions(NamedTuple):
    """What to do on this bar: :data:`A_* <A_FLATTEN>` bits in ``mask`` and their arguments."""

    mask: int
    kind: int            # kind of the close order (K_TIME, K_RISK, K_KILL)
    why: int             # risk reason code or WHY_*
    cut: float           # signed size of the leverage cut order (+ buy, - sell)
    keep: float          # size of the re-placed exits after the cut
    long: bool           # side of the new entry (or of the position whose exits are re-placed)
    size: float          # size of the new entry
    limit: bool          # entry as a limit at ``price`` (else market)
    price: float         # entry reference price (the close)
    take_profit: float   # barrier prices of the new entry / re-placed exits (NaN: none)
    stop: float
    tp_first: bool       # exit submission order
    weight: float        # the capped weight of an entry decision (signal statistics)


_P = {name: i for i, name in enumerate(POLICY_VECTOR)}
_MAX_HOLD, _TIF, _LIMIT_CONF = _P["max_hold"], _P["limit_tif_bars"], _P["limit_confidence"]
_PROFIT, _STOP, _TIE_PROFIT = _P["profit"], _P["stop"], _P["tie_profit"]
_VOL_SCALED, _TAKER = _P["vol_scaled"], _P["taker_fee"]
_NO_MIN = -math.inf


@kernel
def rules_of(prm: np.ndarray) -> Rules:
    """The step's :class:`Rules` of a policy row (:data:`core.policy.POLICY_VECTOR`)."""
    return Rules(int(prm[_MAX_HOLD]), int(prm[_TIF]), prm[_LIMIT_CONF], prm[_PROFIT], prm[_STOP],
                 prm[_TIE_PROFIT] != 0.0, 2.0 * prm[_TAKER] if prm[_VOL_SCALED] != 0.0 else _NO_MIN)


@kernel
def _actions(mask: int, kind: int, why: int, tp_first: bool) -> Actions:
    nan = math.nan
    return Actions(mask, kind, why, 0.0, 0.0, False, 0.0, False, nan, nan, nan, tp_first, 0.0)


@kernel
def leverage_cut(g: Gate, st: SymbolState, rules: Rules) -> Actions:
    """Rule 2 (see the module docstring): the cut to ``g.max_weight``; mask 0 when none is needed."""
    pos = st.position
    target = math.copysign(g.max_weight * st.equity / st.close, pos)
    excess = pos - target
    if abs(excess) <= 1e-12 or abs(target) >= abs(pos):
        return _actions(0, K_RISK, g.reason, rules.tp_first)
    return Actions(A_REDUCE, K_RISK, g.reason, -excess, abs(target), pos > 0, 0.0, False, math.nan,
                   st.take_profit, st.stop, rules.tp_first, 0.0)


@kernel
def _entry(g: Gate, st: SymbolState, sig: BarSignal, rules: Rules) -> Actions:
    """Rule 5 (see the module docstring)."""
    w = cap_weight(sig.w, g.max_weight)
    mask = A_DECIDED
    size = abs(w) * st.equity / st.close
    long = w > 0
    profit = rules.profit * sig.width
    stop = rules.stop * sig.width
    tp, sl = barrier_prices(st.close, long, profit, stop)
    limit = use_limit(abs(sig.s), rules.limit_confidence)
    if w != 0.0 and size > 0 and barriers_usable(profit, stop, rules.min_profit_width):
        mask |= A_ENTER
    return Actions(mask, K_ENTRY, WHY_SIGNAL, 0.0, 0.0, long, size, limit, st.close, tp, sl, rules.tp_first, w)


@kernel
def decide(g: Gate, st: SymbolState, sig: BarSignal, rules: Rules) -> Actions:
    """The strategy's decision on one bar's close (rules 1-5 of the module docstring)."""
    pos = st.position
    if g.flatten:
        mask = A_FLATTEN | (A_CLOSE if pos != 0 and not st.closing_alive else 0) | (A_STOP if g.stop else 0)
        return _actions(mask, K_KILL if g.stop else K_RISK, g.reason, rules.tp_first)
    if pos != 0:
        out = _actions(0, K_TIME, WHY_TIME, rules.tp_first)
        if g.action == REDUCE:
            out = leverage_cut(g, st, rules)
        if st.held >= 0 and not st.closing and st.held >= rules.max_hold:
            return Actions(out.mask | A_FLATTEN | A_CLOSE, K_TIME, WHY_TIME, out.cut, out.keep, out.long, out.size,
                           out.limit, out.price, out.take_profit, out.stop, out.tp_first, out.weight)
        return out
    if st.entry_open:
        if st.entry_alive and st.entry_age >= rules.limit_tif_bars:
            return _actions(A_CANCEL_ENTRY, K_ENTRY, WHY_TIF, rules.tp_first)
        return _actions(0, K_ENTRY, WHY_TIF, rules.tp_first)
    if g.action != ALLOW or not sig.in_window or not sig.allowed:
        return _actions(0, K_ENTRY, g.reason, rules.tp_first)
    return _entry(g, st, sig, rules)


@kernel
def count_decision(stats: np.ndarray, p: float, s: float, w: float) -> None:
    """Add one entry decision to the signal statistics (slots :data:`SIGNAL_STATS`): why a run
    trades as much as it does, counted on the flat bars where an entry was allowed."""
    stats[0] += 1.0
    if p == p:  # not NaN
        stats[1] += 1.0
        if not stats[2] >= p:
            stats[2] = p
    if s > 0:
        stats[3] += 1.0
    if w != 0.0:
        stats[4] += 1.0


def new_signal_stats() -> np.ndarray:
    """Fresh signal statistics (``p_max`` NaN until a probability is seen)."""
    out = np.zeros(N_SIGNAL_STATS)
    out[2] = math.nan
    return out


def signal_stats_dict(stats: np.ndarray) -> dict[str, float | int]:
    """The statistics as the report's dict (counts as ints, ``p_max`` a float)."""
    return {k: (float(v) if k == "p_max" else int(v)) for k, v in zip(SIGNAL_STATS, stats.tolist())}
