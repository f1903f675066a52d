"""Reference event simulator of the whole strategy: one compiled pass over the bars.

:func:`simulate_kernel` runs :class:`strategies.base.ModelStrategy` on backtrader's broker
(:class:`strategies.bt_broker.BacktestBroker`) over arrays in numba: the same bar loop (broker
phase, then the strategy's decision on the bar's close), the same order book semantics
(submission queue with backtrader's cash check, pending queue tried once per bar in order,
bracket children, OCO groups, cancels, notifications one bar later), the same fill arithmetic
(``_try_exec_market/_limit/_stop``, ``_slip_up/_slip_down`` with slip_open, slip_match and
slip_limit as :func:`strategies.bt_broker.make_broker` sets them, cash and commission updates,
``Position.update``, the value formula) and the fill rules of :mod:`core.costs`.

The strategy is *not* re-implemented: each bar the kernel asks the risk gate
(:func:`core.risk.risk_step`) and the one decision step (:func:`core.decision.decide`) that
``ModelStrategy.next`` calls, and applies the actions to its book (:func:`apply_actions`), so
the only code that exists twice is the fill mechanics, and ``tests/test_simulator_parity.py``
guards exactly that seam (trade for trade). The hooks' values (P, signal, weight, entry
allowed) come in per bar (:class:`Signals`), evaluated once over the bars by
:func:`strategies.hooks.evaluate_hooks`, so a subclass's vectorised hooks run here as they
run in ``nts backtest``.

Shape for a sweep: the kernel takes small named records of arrays (:class:`Bars`,
:class:`Signals`, :class:`Span`, :class:`Outputs`), a policy row from
:meth:`core.policy.Policy.to_array` and a risk row from :func:`core.risk.risk_vector`, writes
into caller-allocated buffers, allocates only a small fixed order book, holds no Python
objects and releases the GIL; a loop over parameter rows (threads, or ``numba.prange``) calls it with
per-row buffers (:func:`allocate_buffers`).

Deliberate differences from ``nts backtest`` (each has a test):

* **Kill switch**: backtrader's strategy polls a file each bar; the kernel takes
  ``kill_bar``, the first bar index at which the switch is on (-1: never).
* **Order refs**: the ``ref`` column numbers the kernel's own orders 1, 2, ...; backtrader's
  refs are a process-wide counter.

Everything else is meant to be identical, bit for bit where the arithmetic allows (the
parity test finds 0.0 differences): fills (time, side, size, price, fee, kind, order
type), trades, per-bar equity/cash/position, risk trips (time, breaker, reason, values) and
the signal statistics. The fills table carries three extra columns (``bar``: index of the
fill's time stamp, ``exec_bar``: bar the broker executed it on -- they differ for
cheat-on-close market fills --, ``maker``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from core.config import RiskConfig
from core.decision import (  # noqa: F401  (KINDS and K_* re-exported: the fills' kind codes)
    A_CANCEL_ENTRY,
    A_CLOSE,
    A_DECIDED,
    A_ENTER,
    A_FLATTEN,
    A_REDUCE,
    A_STOP,
    KINDS,
    K_ENTRY,
    K_KILL,
    K_RISK,
    K_STOP,
    K_TAKE_PROFIT,
    K_TIME,
    BarSignal,
    Gate,
    SymbolState,
    count_decision,
    decide,
    rules_of,
)
from core.jit import kernel
from core.policy import POLICY_VECTOR, Policy
from core.risk import (
    ALLOW,
    DAY_NS,
    EPOCH_ORDINAL,
    RISK_STATE,
    REDUCE,
    RISK_VECTOR,
    Trip,
    new_risk_state,
    risk_step,
    risk_vector,
    trip_records,
    weight_cap,
)
from core.trades import FILL_COLUMNS, round_trips

# ----------------------------------------------------------------------------- vocabulary
# Order types: backtrader's Order.ExecTypes numbering.
MARKET, LIMIT, STOP = 0, 2, 3
ORDER_TYPES = {MARKET: "Market", LIMIT: "Limit", STOP: "Stop"}
# Order status: backtrader's Order.Status numbering (alive = status <= PARTIAL).
CREATED, SUBMITTED, ACCEPTED, PARTIAL, COMPLETED, CANCELED, EXPIRED, MARGIN, REJECTED = range(9)

# Parameter rows (names of Policy.to_array() / risk_vector() columns -> index).
_P = {name: i for i, name in enumerate(POLICY_VECTOR)}
_R = {name: i for i, name in enumerate(RISK_VECTOR)}
P_CENTER, P_TARGET_VOL, P_DEADBAND, P_MAX_POSITION = _P["center"], _P["target_vol"], _P["deadband"], _P["max_position"]
P_ALLOW_SHORT, P_LIMIT_CONF, P_TIF, P_PROFIT = _P["allow_short"], _P["limit_confidence"], _P["limit_tif_bars"], _P["profit"]
P_STOP, P_TIE_PROFIT, P_MAX_HOLD, P_TAKER = _P["stop"], _P["tie_profit"], _P["max_hold"], _P["taker_fee"]
P_MAKER, P_SLIP, P_BAR_NS = _P["maker_fee"], _P["slippage"], _P["bar_ns"]
R_MAX_POSITION, R_MAX_LEVERAGE, R_MAX_DRAWDOWN = _R["max_position"], _R["max_leverage"], _R["max_drawdown"]
R_MAX_VOLATILITY, R_DAILY_LOSS = _R["max_volatility"], _R["daily_loss"]

# Output buffers.
FILL_FIELDS: tuple[str, ...] = ("time_bar", "exec_bar", "side", "size", "price", "fee", "kind", "maker", "order_type",
                                "ref")
F_TIME_BAR, F_EXEC_BAR, F_SIDE, F_SIZE, F_PRICE, F_FEE, F_KIND, F_MAKER, F_TYPE, F_REF = range(len(FILL_FIELDS))
EQUITY_FIELDS: tuple[str, ...] = ("equity", "cash", "position")
TRIP_FIELDS: tuple[str, ...] = ("bar", "mask", "equity", "position_value", "realised_vol", "drawdown", "day_loss",
                                "peak", "day_start_equity")
STAT_FIELDS: tuple[str, ...] = ("decisions", "scored", "p_max", "positive_signal", "past_deadband",
                                "stopped_by_kill_switch", "saw_probability", "fills_overflow", "trips_overflow")
S_DECISIONS, S_SCORED, S_PMAX, S_POSITIVE, S_PAST_DB, S_STOPPED, S_SAW_P, S_FILL_OVF, S_TRIP_OVF = range(
    len(STAT_FIELDS))

# ----------------------------------------------------------------------------- order book layout
MAX_ORDERS = 32      # slots; a strategy has at most ~8 orders alive or referenced at once
QCAP = 64            # capacity of each queue
# int columns of the book
OI_USED, OI_TYPE, OI_BUY, OI_STATUS, OI_ACTIVE, OI_PARENT, OI_KIND, OI_OCO, OI_OCOL, OI_REF, OI_CBAR = range(11)
OI_PC_ALIVE, OI_PC_HEAD, OI_PC_N, OI_PC0, OI_NOTES = 11, 12, 13, 14, 18  # OI_PC0..OI_PC0+3: children queue
N_OI = 19
# float columns of the book
OF_SIZE, OF_REM, OF_PRICE, OF_PCLOSE, OF_EXSIZE, OF_EXPRICE, OF_EXCOMM = range(7)
N_OF = 7
# queues
Q_SUB, Q_PEND, Q_ACT, Q_NOTE = range(4)
# broker scalars
B_CASH, B_POS, B_PPRICE, B_VALUE = range(4)
# strategy state (ints)
SI_ENTRY, SI_EXIT0, SI_EXIT1, SI_NEXITS, SI_CLOSING, SI_CUT, SI_SUBMIT_BAR, SI_ENTRY_BAR, SI_ENTRY_T, SI_REF = range(10)
N_SI = 10


# ----------------------------------------------------------------------------- records
class Bars(NamedTuple):
    """The bars of one run (C-contiguous float64 arrays, ``t_ns`` int64 open times in ns UTC)."""

    t_ns: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    rvol: np.ndarray     # realised daily volatility (the risk manager's input)


class Signals(NamedTuple):
    """The strategy hooks' values per bar (:class:`strategies.hooks.HookArrays` as arrays)."""

    prob: np.ndarray     # float64: calibrated P (NaN: none)
    signal: np.ndarray   # float64: s
    weight: np.ndarray   # float64: target weight before the risk cap
    allowed: np.ndarray  # bool: entry_allowed


class Span(NamedTuple):
    """Where the run decides: ``start`` first bar of decisions and risk checks, ``end`` last bar
    that may open a position, ``kill_bar`` first bar with the kill switch on (-1 never)."""

    start: int
    end: int
    kill_bar: int
    cash: float
    coc: bool            # cheat-on-close


class Outputs(NamedTuple):
    """Caller-allocated output buffers (:func:`allocate_buffers`), written in place by
    :func:`simulate_kernel`: ``fills`` (rows of :data:`FILL_FIELDS`; more fills than rows are
    counted, flagged in ``stats`` and not stored), ``equity`` (per bar: equity, cash, position
    after the bar), ``trips`` (rows of :data:`TRIP_FIELDS`), ``stats`` (:data:`STAT_FIELDS`),
    ``risk_state`` (:data:`core.risk.RISK_STATE`, updated; pass a fresh one from
    :func:`core.risk.new_risk_state`)."""

    fills: np.ndarray       # [rows, FILL_FIELDS]
    equity: np.ndarray      # [bars, EQUITY_FIELDS]
    trips: np.ndarray       # [rows, TRIP_FIELDS]
    stats: np.ndarray       # [STAT_FIELDS]
    risk_state: np.ndarray  # core.risk.RISK_STATE (fresh from new_risk_state())


class Book(NamedTuple):
    """backtrader's broker and order book over small arrays, plus the strategy's order refs."""

    oi: np.ndarray   # int64 [MAX_ORDERS, N_OI]
    of: np.ndarray   # float64 [MAX_ORDERS, N_OF]
    qd: np.ndarray   # int64 [4, QCAP] queues
    qn: np.ndarray   # int64 [4] queue lengths
    nst: np.ndarray  # int64 [QCAP] status of each queued notification
    bk: np.ndarray   # float64 [4] cash, position, position price, value
    si: np.ndarray   # int64 [N_SI] the strategy's orders (entry, exits, closing, cut) and entry bar/time


@kernel
def new_book(cash: float) -> Book:
    """An empty book with ``cash``."""
    bk = np.zeros(4)
    bk[B_CASH] = cash
    bk[B_VALUE] = cash
    si = np.zeros(N_SI, dtype=np.int64)
    _reset_trade(si)
    return Book(np.zeros((MAX_ORDERS, N_OI), dtype=np.int64), np.zeros((MAX_ORDERS, N_OF)),
                np.zeros((4, QCAP), dtype=np.int64), np.zeros(4, dtype=np.int64), np.zeros(QCAP, dtype=np.int64),
                bk, si)


# ----------------------------------------------------------------------------- queues
@kernel
def _q_append(qd, qn, q, x):
    if qn[q] >= QCAP:
        raise RuntimeError("simulator queue full")
    qd[q, qn[q]] = x
    qn[q] += 1


@kernel
def _q_index(qd, qn, q, x):
    for k in range(qn[q]):
        if qd[q, k] == x:
            return k
    return -1


@kernel
def _q_delete(qd, qn, q, k):
    for j in range(k, qn[q] - 1):
        qd[q, j] = qd[q, j + 1]
    qn[q] -= 1


@kernel
def _q_remove(qd, qn, q, x):
    """deque.remove: True when ``x`` was in queue ``q``."""
    k = _q_index(qd, qn, q, x)
    if k < 0:
        return False
    _q_delete(qd, qn, q, k)
    return True


@kernel
def _q_popleft(qd, qn, q):
    if qn[q] == 0:
        raise RuntimeError("simulator queue empty")
    x = qd[q, 0]
    _q_delete(qd, qn, q, 0)
    return x


# ----------------------------------------------------------------------------- notifications
@kernel
def _notify(b, x):
    """Queue a status notification for the strategy (delivered before its next decision).
    Submitted/Accepted notifications are dropped: ModelStrategy ignores them."""
    status = b.oi[x, OI_STATUS]
    if status == SUBMITTED or status == ACCEPTED:
        return
    b.nst[b.qn[Q_NOTE]] = status
    _q_append(b.qd, b.qn, Q_NOTE, x)
    b.oi[x, OI_NOTES] += 1


# ----------------------------------------------------------------------------- backtrader arithmetic
@kernel
def _pos_update(size, price, dsize, dprice):
    """backtrader ``Position.update``: (new size, new price, opened, closed)."""
    oldsize = size
    size = size + dsize
    if size == 0:
        return size, 0.0, 0.0, dsize
    if oldsize == 0:
        return size, dprice, dsize, 0.0
    if oldsize > 0:
        if dsize > 0:
            return size, (price * oldsize + dsize * dprice) / size, dsize, 0.0
        if size > 0:
            return size, price, 0.0, dsize
        return size, dprice, size, -oldsize
    if dsize < 0:
        return size, (price * oldsize + dsize * dprice) / size, dsize, 0.0
    if size < 0:
        return size, price, 0.0, dsize
    return size, dprice, size, -oldsize


@kernel(inline=True)
def _value(cash, size, pprice, close):
    """backtrader ``BackBroker._get_value`` for one stock-like position (leverage 1, shortcash)."""
    dvalue = size * close
    unrealized = size * (close - pprice) * 1.0
    pos_value = 0.0
    if dvalue > 0:
        dvalue -= unrealized
        pos_value += dvalue / 1.0
        pos_value += unrealized
    else:
        pos_value += dvalue
    return cash + pos_value


@kernel
def _slip_up(pmax, price, slip):
    """``_slip_up`` with slip_perc = ``slip``, slip_match on, slip_out off (0: no slippage)."""
    if slip == 0.0:
        return price
    pslip = price * (1 + slip)
    if pslip <= pmax:
        return pslip
    return pmax


@kernel
def _slip_down(pmin, price, slip):
    if slip == 0.0:
        return price
    pslip = price * (1 - slip)
    if pslip >= pmin:
        return pslip
    return pmin


@kernel
def _fee_rate(oi, x, prm):
    """Maker fee for limit orders, taker for every other type (core.costs)."""
    return prm[P_MAKER] if oi[x, OI_TYPE] == LIMIT else prm[P_TAKER]


# ----------------------------------------------------------------------------- order book operations
@kernel
def _ococheck(b, x):
    """``BackBroker._ococheck``: dissolve ``x``'s OCO group, cancelling its other pending members
    (backtrader walks the pending queue from the back)."""
    oi, qd, qn = b.oi, b.qd, b.qn
    leader = oi[x, OI_OCO]
    if oi[leader, OI_OCOL] == 0:
        return
    oi[leader, OI_OCOL] = 0
    for k in range(qn[Q_PEND] - 1, -1, -1):
        o = qd[Q_PEND, k]
        if o >= 0 and oi[o, OI_OCO] == leader:  # o < 0: the pass's sentinel
            _q_delete(qd, qn, Q_PEND, k)
            oi[o, OI_STATUS] = CANCELED
            _notify(b, o)


@kernel
def _cancel_one(b, x):
    """``BacktestBroker.cancel(order, bracket=True)``: reaches the submission queue too."""
    if not _q_remove(b.qd, b.qn, Q_SUB, x):
        if not _q_remove(b.qd, b.qn, Q_PEND, x):
            return False
    b.oi[x, OI_STATUS] = CANCELED
    _notify(b, x)
    _ococheck(b, x)
    return True


@kernel
def _drop_children(b, x):
    """``_bracketize(order, cancel=True)`` (or a child's execution): cancel what is left of
    the bracket group and forget it."""
    oi = b.oi
    pref = oi[x, OI_PARENT] if oi[x, OI_PARENT] >= 0 else x
    if oi[pref, OI_PC_ALIVE] == 0:
        return
    while oi[pref, OI_PC_HEAD] < oi[pref, OI_PC_N]:
        y = oi[pref, OI_PC0 + oi[pref, OI_PC_HEAD]]
        oi[pref, OI_PC_HEAD] += 1
        _cancel_one(b, y)
    oi[pref, OI_PC_ALIVE] = 0


@kernel
def _cancel(b, x):
    """Strategy.cancel -> ``BacktestBroker.cancel(order)``: the order and its bracket."""
    if _cancel_one(b, x):
        _drop_children(b, x)
        return True
    return False


@kernel
def _parent_done(b, x, bar_open):
    """``BacktestBroker._bracketize`` for an executed order: activate its bracket children on
    this bar -- except the take profit of a limit entry filled mid-bar (next bar)."""
    oi, of = b.oi, b.of
    pref = oi[x, OI_PARENT] if oi[x, OI_PARENT] >= 0 else x
    if pref != x:
        return False  # a child: the caller drops the group
    mid_bar = False
    if oi[x, OI_TYPE] == LIMIT:
        mid_bar = bar_open > of[x, OF_PRICE] if oi[x, OI_BUY] == 1 else bar_open < of[x, OF_PRICE]
    if oi[x, OI_PC_ALIVE] != 0 and oi[x, OI_PC_HEAD] < oi[x, OI_PC_N]:
        oi[x, OI_PC_HEAD] += 1  # the parent itself
        for k in range(oi[x, OI_PC_HEAD], oi[x, OI_PC_N]):
            child = oi[x, OI_PC0 + k]
            if mid_bar and oi[child, OI_TYPE] == LIMIT:
                _q_append(b.qd, b.qn, Q_ACT, child)
            else:
                oi[child, OI_ACTIVE] = 1
    return True


@kernel
def _alloc(b):
    """A free book slot: dead, no undelivered notification, not waiting for activation, not
    referenced by the strategy, and no live order pointing at it (as parent or OCO leader)."""
    oi, si = b.oi, b.si
    for s in range(MAX_ORDERS):
        if oi[s, OI_USED] == 0:
            return s
    for s in range(MAX_ORDERS):
        if oi[s, OI_STATUS] <= PARTIAL or oi[s, OI_NOTES] > 0 or _q_index(b.qd, b.qn, Q_ACT, s) >= 0:
            continue
        if s == si[SI_ENTRY] or s == si[SI_CLOSING] or s == si[SI_CUT]:
            continue
        if (si[SI_NEXITS] > 0 and s == si[SI_EXIT0]) or (si[SI_NEXITS] > 1 and s == si[SI_EXIT1]):
            continue
        linked = False
        for o in range(MAX_ORDERS):
            if o != s and oi[o, OI_USED] == 1 and oi[o, OI_STATUS] <= PARTIAL and (
                    oi[o, OI_PARENT] == s or oi[o, OI_OCO] == s):
                linked = True
                break
        if not linked:
            return s
    raise RuntimeError("simulator order book full")


@kernel
def _new_order(b, kind, otype, buy, size, price, at, parent, oco, transmit):
    """Strategy.buy/sell -> ``BackBroker.buy/sell``: create at ``at`` = (bar, close), OCO-ize,
    queue in the bracket group and, with ``transmit``, submit the whole group (in order)."""
    oi, of = b.oi, b.of
    bar, close_i = at
    x = _alloc(b)
    oi[x, :] = 0
    of[x, :] = 0.0
    oi[x, OI_USED] = 1
    oi[x, OI_TYPE] = otype
    oi[x, OI_BUY] = 1 if buy else 0
    oi[x, OI_STATUS] = CREATED
    oi[x, OI_PARENT] = parent
    oi[x, OI_ACTIVE] = 1 if parent < 0 else 0
    oi[x, OI_KIND] = kind
    b.si[SI_REF] += 1
    oi[x, OI_REF] = b.si[SI_REF]
    oi[x, OI_CBAR] = bar
    signed = size if buy else -size
    of[x, OF_SIZE] = signed
    of[x, OF_REM] = signed
    of[x, OF_PRICE] = close_i if otype == MARKET else price  # created.price (market: the close)
    of[x, OF_PCLOSE] = close_i
    if oco < 0:
        oi[x, OI_OCO] = x
        oi[x, OI_OCOL] = 1
    else:
        oi[x, OI_OCO] = oi[oco, OI_OCO]
    pref = parent if parent >= 0 else x
    if parent < 0:
        oi[x, OI_PC_ALIVE] = 1
    oi[pref, OI_PC0 + oi[pref, OI_PC_N]] = x
    oi[pref, OI_PC_N] += 1
    if transmit:
        for k in range(oi[pref, OI_PC_HEAD], oi[pref, OI_PC_N]):
            o = oi[pref, OI_PC0 + k]
            oi[o, OI_STATUS] = SUBMITTED
            _q_append(b.qd, b.qn, Q_SUB, o)
    return x


@kernel
def _pseudo_execute(b, x, cash, psize, pprice, prm):
    """``BackBroker._execute`` with ``ago=None``: the submission cash check at the order's
    created price on a clone of the position; returns (cash, size, price) after it."""
    size = b.of[x, OF_REM]
    price = b.of[x, OF_PRICE]
    rate = _fee_rate(b.oi, x, prm)
    psize, pprice, opened, closed = _pos_update(psize, pprice, size, price)
    if closed != 0:
        closedvalue = -closed * price
        closecash = closedvalue
        if closedvalue > 0:
            closecash /= 1.0
        cash += closecash + 0.0
        cash -= abs(closed) * price * rate
    if opened != 0:
        openedvalue = opened * price
        opencash = openedvalue
        if openedvalue > 0:
            opencash /= 1.0
        cash -= opencash
        cash -= abs(opened) * price * rate
    return cash, psize, pprice


@kernel
def _record_fill(b, x, when, fills, nf):
    """Write order ``x``'s completed fill as row ``nf`` (when it fits); ``when`` = (time bar, exec bar)."""
    oi, of = b.oi, b.of
    if nf < fills.shape[0]:
        fills[nf, F_TIME_BAR] = when[0]
        fills[nf, F_EXEC_BAR] = when[1]
        fills[nf, F_SIDE] = 1.0 if oi[x, OI_BUY] == 1 else -1.0
        fills[nf, F_SIZE] = of[x, OF_EXSIZE]
        fills[nf, F_PRICE] = of[x, OF_EXPRICE]
        fills[nf, F_FEE] = of[x, OF_EXCOMM]
        fills[nf, F_KIND] = oi[x, OI_KIND]
        fills[nf, F_MAKER] = 1.0 if oi[x, OI_TYPE] == LIMIT else 0.0
        fills[nf, F_TYPE] = oi[x, OI_TYPE]
        fills[nf, F_REF] = oi[x, OI_REF]
    return nf + 1


@kernel
def _execute(b, x, price, when, prm, fills, nf):
    """``BackBroker._execute`` for a real fill at ``price``; ``when`` = (time bar, exec bar).
    Returns the new fill count."""
    oi, of, bk = b.oi, b.of, b.bk
    size = of[x, OF_REM]
    rate = _fee_rate(oi, x, prm)
    pprice_orig = bk[B_PPRICE]
    _, _, opened, closed = _pos_update(bk[B_POS], bk[B_PPRICE], size, price)
    pnl = -closed * (price - pprice_orig) * 1.0
    cash = bk[B_CASH]
    closedcomm = 0.0
    if closed != 0:
        closedvalue = -closed * pprice_orig
        closecash = closedvalue
        if closedvalue > 0:
            closecash /= 1.0
        cash += closecash + pnl * 1.0
        closedcomm = abs(closed) * price * rate
        cash -= closedcomm
        cash += 0.0  # cashadjust: 0 for stock-like
        bk[B_CASH] = cash
    popened = opened
    openedcomm = 0.0
    if opened != 0:
        openedvalue = opened * price
        opencash = openedvalue
        if openedvalue > 0:
            opencash /= 1.0
        cash -= opencash
        openedcomm = abs(opened) * price * rate
        cash -= openedcomm
        if cash < 0.0:
            opened = 0.0
            openedcomm = 0.0
        else:
            bk[B_CASH] = cash
    execsize = closed + opened
    if execsize != 0:
        bk[B_POS], bk[B_PPRICE], _, _ = _pos_update(bk[B_POS], bk[B_PPRICE], execsize, price)
        # OrderData.addbit: cumulative executed size, average price and commission
        oldvalue = of[x, OF_EXSIZE] * of[x, OF_EXPRICE]
        of[x, OF_REM] -= execsize
        of[x, OF_EXSIZE] += execsize
        of[x, OF_EXPRICE] = (oldvalue + execsize * price) / of[x, OF_EXSIZE]
        of[x, OF_EXCOMM] += closedcomm + openedcomm
        if of[x, OF_REM] != 0:
            oi[x, OI_STATUS] = PARTIAL
        else:
            oi[x, OI_STATUS] = COMPLETED
            nf = _record_fill(b, x, when, fills, nf)
        _notify(b, x)
        _ococheck(b, x)
    if popened != 0 and opened == 0:
        oi[x, OI_STATUS] = MARGIN
        _notify(b, x)
        _ococheck(b, x)
        _drop_children(b, x)
    return nf


@kernel
def _fill_price(b, x, i, ohl, coc, slip):
    """``BackBroker._try_exec``'s price for order ``x`` on bar ``i`` with ``ohl`` = (open, high,
    low): (price or NaN when not touched, time bar of the fill)."""
    oi, of = b.oi, b.of
    o_, h_, l_ = ohl
    otype = oi[x, OI_TYPE]
    buy = oi[x, OI_BUY] == 1
    plimit = of[x, OF_PRICE]  # created price: the limit or the stop trigger
    time_bar = i
    price = np.nan
    if otype == MARKET:
        if coc:
            exprice = of[x, OF_PCLOSE]
            time_bar = oi[x, OI_CBAR]
        elif i <= oi[x, OI_CBAR]:
            return np.nan, i  # can only execute after the creation bar
        else:
            exprice = o_
        price = _slip_up(h_, exprice, slip) if buy else _slip_down(l_, exprice, slip)
    elif otype == LIMIT:
        if buy:
            if plimit >= o_:
                price = _slip_up(min(h_, plimit), o_, slip)
            elif plimit >= l_:
                price = plimit
        elif plimit <= o_:
            # backtrader floors a sell limit's slipped open at the limit itself (not at the low)
            price = _slip_down(plimit, o_, slip)
        elif plimit <= h_:
            price = plimit
    elif buy:  # STOP: a market order once touched
        if o_ >= plimit:
            price = _slip_up(h_, o_, slip)
        elif h_ >= plimit:
            price = _slip_up(h_, plimit, slip)
    elif o_ <= plimit:
        price = _slip_down(l_, o_, slip)
    elif l_ <= plimit:
        price = _slip_down(l_, plimit, slip)
    return price, time_bar


@kernel
def _check_submitted(b, prm):
    """``BackBroker.check_submitted``: pseudo-execute the submitted orders in order against a
    running cash and position clone; accepted ones join the pending queue."""
    oi, qd, qn, bk = b.oi, b.qd, b.qn, b.bk
    cash = bk[B_CASH]
    psize = bk[B_POS]
    pprice = bk[B_PPRICE]
    while qn[Q_SUB] > 0:
        x = _q_popleft(qd, qn, Q_SUB)
        parent = oi[x, OI_PARENT]
        if parent >= 0 and oi[parent, OI_PC_ALIVE] == 0:
            oi[x, OI_STATUS] = REJECTED  # _take_children: parent gone
            _notify(b, x)
            continue
        cash, psize, pprice = _pseudo_execute(b, x, cash, psize, pprice, prm)
        if cash >= 0.0:
            oi[x, OI_STATUS] = ACCEPTED
            _q_append(qd, qn, Q_PEND, x)
            continue
        oi[x, OI_STATUS] = MARGIN
        _notify(b, x)
        _ococheck(b, x)
        _drop_children(b, x)


@kernel
def _broker_next(b, i, ohlc, coc, prm, fills, nf):
    """``BackBroker.next`` on bar ``i`` (``ohlc`` its prices): activations, the submission
    check, one pass over the pending queue, the end-of-bar value. Returns the new fill count."""
    oi, qd, qn, bk = b.oi, b.qd, b.qn, b.bk
    o_, h_, l_, c_ = ohlc
    while qn[Q_ACT] > 0:
        oi[_q_popleft(qd, qn, Q_ACT), OI_ACTIVE] = 1
    if qn[Q_SUB] > 0:
        _check_submitted(b, prm)
    # the pending queue, once, in order (orders re-queued now wait for the next bar)
    _q_append(qd, qn, Q_PEND, -1)
    while True:
        x = _q_popleft(qd, qn, Q_PEND)
        if x < 0:
            break
        if oi[x, OI_ACTIVE] == 0:
            _q_append(qd, qn, Q_PEND, x)
            continue
        price, time_bar = _fill_price(b, x, i, (o_, h_, l_), coc, prm[P_SLIP])
        if price == price:
            nf = _execute(b, x, price, (time_bar, i), prm, fills, nf)
        if oi[x, OI_STATUS] <= PARTIAL:
            _q_append(qd, qn, Q_PEND, x)
        elif oi[x, OI_STATUS] == COMPLETED:
            if not _parent_done(b, x, o_):
                _drop_children(b, x)
    bk[B_VALUE] = _value(bk[B_CASH], bk[B_POS], bk[B_PPRICE], c_)
    return nf


# ----------------------------------------------------------------------------- strategy side
@kernel
def _reset_trade(si):
    si[SI_ENTRY] = -1
    si[SI_NEXITS] = 0
    si[SI_EXIT0] = -1
    si[SI_EXIT1] = -1
    si[SI_ENTRY_BAR] = -1
    si[SI_CLOSING] = -1
    si[SI_CUT] = -1


@kernel
def _deliver(b, i, t_ns):
    """ModelStrategy.notify_order over the notifications queued since its last decision."""
    oi, qd, qn, si = b.oi, b.qd, b.qn, b.si
    for k in range(qn[Q_NOTE]):
        x = qd[Q_NOTE, k]
        status = b.nst[k]
        oi[x, OI_NOTES] -= 1
        if si[SI_ENTRY] >= 0 and x == si[SI_ENTRY]:
            if status == COMPLETED:
                # the strategy has not advanced yet: the entry bar is the previous bar (the
                # signal bar of a market entry, the bar before the fill of a limit entry)
                si[SI_ENTRY_BAR] = i - 1
                si[SI_ENTRY_T] = t_ns[i - 1]
            elif status == CANCELED or status == MARGIN or status == REJECTED or status == EXPIRED:
                _reset_trade(si)
            continue
        if si[SI_CUT] >= 0 and x == si[SI_CUT] and status > PARTIAL:
            si[SI_CUT] = -1
        if status == COMPLETED and b.bk[B_POS] == 0:
            _reset_trade(si)
        elif si[SI_CLOSING] >= 0 and x == si[SI_CLOSING] and status != COMPLETED and b.bk[B_POS] != 0:
            si[SI_CLOSING] = -1
    qn[Q_NOTE] = 0


@kernel(inline=True)
def _alive(oi, x):
    return x >= 0 and oi[x, OI_STATUS] <= PARTIAL


@kernel
def symbol_state(b, i, t_ns, close_i, bar_ns):
    """The decision step's :class:`core.decision.SymbolState` of the book on bar ``i``."""
    oi, of, si = b.oi, b.of, b.si
    tp = math.nan
    sl = math.nan
    for k in range(si[SI_NEXITS]):
        x = si[SI_EXIT0 + k]
        if oi[x, OI_KIND] == K_TAKE_PROFIT:
            tp = of[x, OF_PRICE]
        elif oi[x, OI_KIND] == K_STOP:
            sl = of[x, OF_PRICE]
    held = -1
    if si[SI_ENTRY_BAR] >= 0:
        held = (t_ns[i] - si[SI_ENTRY_T] + bar_ns // 2) // bar_ns
    return SymbolState(b.bk[B_POS], b.bk[B_VALUE], close_i, held, si[SI_ENTRY] >= 0, _alive(oi, si[SI_ENTRY]),
                       i - si[SI_SUBMIT_BAR], si[SI_CLOSING] >= 0, _alive(oi, si[SI_CLOSING]), tp, sl)


@kernel
def _submit_exits(b, a, at, parent):
    """The take profit and stop of ``a`` in its tie order: bracket children of ``parent`` (a new
    entry), or with ``parent`` < 0 a stand-alone OCO pair (re-placed after a cut)."""
    si = b.si
    size = a.size if parent >= 0 else a.keep
    n = 0
    for j in range(2):
        tp_now = (j == 0) == a.tp_first
        price = a.take_profit if tp_now else a.stop
        if price != price:
            continue  # no such exit
        oco = si[SI_EXIT0] if n > 0 and parent < 0 else -1
        last = j == 1 or parent < 0
        si[SI_EXIT0 + n] = _new_order(b, K_TAKE_PROFIT if tp_now else K_STOP, LIMIT if tp_now else STOP, not a.long,
                                      size, price, at, parent, oco, last)
        n += 1
    si[SI_NEXITS] = n


@kernel
def apply_actions(b, a, at):
    """Apply the decision step's actions to the book on ``at`` = (bar, close), in the order of
    :mod:`core.decision` (cut, flatten/close, cancel entry, enter), as ModelStrategy does."""
    si, oi = b.si, b.oi
    if a.mask & A_REDUCE:
        for k in range(si[SI_NEXITS]):
            if _alive(oi, si[SI_EXIT0 + k]):
                _cancel(b, si[SI_EXIT0 + k])
        if _alive(oi, si[SI_CUT]):
            _cancel(b, si[SI_CUT])  # a newer cut replaces one still in flight
        si[SI_CUT] = _new_order(b, K_RISK, MARKET, a.cut > 0, abs(a.cut), 0.0, at, -1, -1, True)
        _submit_exits(b, a, at, -1)
    if a.mask & A_FLATTEN:
        for x in (si[SI_ENTRY], si[SI_CUT], si[SI_EXIT0] if si[SI_NEXITS] > 0 else -1,
                  si[SI_EXIT1] if si[SI_NEXITS] > 1 else -1):
            if _alive(oi, x):
                _cancel(b, x)
        if a.mask & A_CLOSE:
            pos = b.bk[B_POS]
            si[SI_CLOSING] = _new_order(b, a.kind, MARKET, pos < 0, abs(pos), 0.0, at, -1, -1, True)
    if a.mask & A_CANCEL_ENTRY:
        _cancel(b, si[SI_ENTRY])
    if a.mask & A_ENTER:
        entry = _new_order(b, K_ENTRY, LIMIT if a.limit else MARKET, a.long, a.size, a.price, at, -1, -1, False)
        si[SI_ENTRY] = entry
        si[SI_EXIT0] = -1
        _submit_exits(b, a, at, entry)
        si[SI_SUBMIT_BAR] = at[0]


@kernel(inline=True)
def _quiet_bar(oi, of, qd, qn, h_, l_):
    """True when the broker phase of this bar can change nothing but the value: no order
    submitted, waiting for activation or to be notified, and every pending order active and
    out of this bar's range (a buy limit / sell stop below the low, a sell limit / buy stop
    above the high; a market order always fills). Most bars of a run are quiet: flat with
    nothing working, or a position whose exits the bar does not reach. Takes the book's
    arrays, not the record: it runs on every bar."""
    if qn[Q_SUB] != 0 or qn[Q_ACT] != 0 or qn[Q_NOTE] != 0:
        return False
    for k in range(qn[Q_PEND]):
        x = qd[Q_PEND, k]
        otype = oi[x, OI_TYPE]
        if otype == MARKET or oi[x, OI_ACTIVE] == 0:
            return False
        price = of[x, OF_PRICE]
        below = (otype == LIMIT) == (oi[x, OI_BUY] == 1)  # buy limit or sell stop: touched from above
        if (below and l_ <= price) or (not below and h_ >= price):
            return False
    return True


@kernel(inline=True)
def _nothing_to_decide(si, pos, g, held_short, allowed_now, idle):
    """True when the decision step would return no action and count nothing on this bar (or
    only actions that change nothing): the common case, checked on scalars
    (:func:`core.decision.decide` otherwise). ``held_short``: the entry bar is known and the
    position is younger than ``max_hold``; ``allowed_now``: inside the entry window and the
    entry_allowed hook true; ``idle``: no order pending or submitted (nothing to cancel)."""
    if g.flatten:
        return pos == 0 and idle and not g.stop  # a breaker's flatten with nothing to flatten
    if pos != 0:
        if g.action == REDUCE:
            return False
        return si[SI_ENTRY_BAR] < 0 or si[SI_CLOSING] >= 0 or held_short
    if si[SI_ENTRY] >= 0:
        return False
    return g.action != ALLOW or not allowed_now


@kernel
def _record_trip(trips, nt, values):
    """Trip row ``nt`` (when it fits) from ``values`` (:data:`TRIP_FIELDS` order)."""
    if nt < trips.shape[0]:
        for k in range(len(values)):
            trips[nt, k] = values[k]


@kernel
def _decide_and_apply(b, g, i, bars, sig, span, prm, stats, width):
    """The decision step on bar ``i`` and its actions on the book; True when the run stops here.
    ``width``: barrier widths per bar (None: 1.0, fixed barriers)."""
    p = sig.prob[i]
    close_i = bars.close[i]
    st = symbol_state(b, i, bars.t_ns, close_i, np.int64(prm[P_BAR_NS]))
    w_i = 1.0 if width is None else width[i]
    a = decide(g, st, BarSignal(p, sig.signal[i], sig.weight[i], sig.allowed[i], i <= span.end, w_i), rules_of(prm))
    if a.mask & A_DECIDED:
        count_decision(stats, p, sig.signal[i], a.weight)
    apply_actions(b, a, (i, close_i))
    if a.mask & A_STOP:
        stats[S_STOPPED] = 1.0
        return st.position == 0 and b.qn[Q_PEND] == 0
    return False


@kernel(inline=True)
def _reset_stats(stats):
    """Zero the run's counters; the P maximum starts unknown (NaN) until a bar has a P."""
    for k in range(stats.shape[0]):
        stats[k] = 0.0
    stats[S_PMAX] = np.nan


@kernel(inline=True)
def _record_equity(equity, i, bk):
    """Equity row ``i``: the book's value, cash and position after the bar."""
    equity[i, 0] = bk[B_VALUE]
    equity[i, 1] = bk[B_CASH]
    equity[i, 2] = bk[B_POS]


@kernel(inline=True)
def _run_counts(stats, fills, trips, nf, n_bars, nt):
    """The run's ``(fills stored, bars processed, trips stored)``; fills or trips beyond their
    buffer are flagged in ``stats`` (they were counted, not stored)."""
    if nf > fills.shape[0]:
        stats[S_FILL_OVF] = 1.0
    if nt > trips.shape[0]:
        stats[S_TRIP_OVF] = 1.0
    return min(nf, fills.shape[0]), n_bars, min(nt, trips.shape[0])


# ----------------------------------------------------------------------------- the kernel
@kernel
def simulate_kernel(bars, sig, span, prm, rsk, out, width=None):
    """One strategy run over the bars (see the module docstring); returns
    ``(n_fills, n_bars, n_trips)``.

    ``width``: the barrier width factor of every bar (:mod:`core.policy`; a float64 array of
    the bars' length), None for fixed barriers (1.0 on every bar).

    ``bars`` (:class:`Bars`), ``sig`` (:class:`Signals`: the hooks' P, s, w, allowed per bar),
    ``span`` (:class:`Span`), ``prm`` (:meth:`Policy.to_array`), ``rsk`` (:func:`risk_vector`);
    ``out``: the buffers written in place (:class:`Outputs`).
    """
    # Every array the per-bar loop reads is taken out of its record once, here: reading it
    # through a record on every bar costs reference counting per access.
    t_ns, open_, high, low, close, rvol = bars
    prob, signal, weight, allowed = sig
    fills, equity, trips, stats, risk_state = out
    n = close.shape[0]
    b = new_book(span.cash)
    oi, of, qd, qn, bk, si = b.oi, b.of, b.qd, b.qn, b.bk, b.si
    _reset_stats(stats)
    start, end, kill_bar = span.start, span.end, span.kill_bar
    cap = weight_cap(rsk[R_MAX_POSITION], rsk[R_MAX_LEVERAGE])
    max_dd, daily, max_vol, max_lev = rsk[R_MAX_DRAWDOWN], rsk[R_DAILY_LOSS], rsk[R_MAX_VOLATILITY], rsk[R_MAX_LEVERAGE]
    bar_ns = np.int64(prm[P_BAR_NS])
    max_hold = np.int64(prm[P_MAX_HOLD])
    nf = 0
    nt = 0
    n_bars = n
    for i in range(n):
        c_ = close[i]
        if _quiet_bar(oi, of, qd, qn, high[i], low[i]):
            bk[B_VALUE] = _value(bk[B_CASH], bk[B_POS], bk[B_PPRICE], c_)
        else:
            nf = _broker_next(b, i, (open_[i], high[i], low[i], c_), span.coc, prm, fills, nf)
            if qn[Q_NOTE] > 0:
                _deliver(b, i, t_ns)
        stop_run = False
        if i >= start:
            # the risk gate (ModelStrategy.next's risk.check)
            p = prob[i]
            if p == p:
                stats[S_SAW_P] = 1.0
            pos = bk[B_POS]
            value = bk[B_VALUE]
            day = float(t_ns[i] // DAY_NS + EPOCH_ORDINAL)
            action, reason, flatten, stop, max_weight, mask, drawdown, day_loss = risk_step(
                risk_state, day, value, pos * c_, rvol[i], kill_bar >= 0 and i >= kill_bar, max_dd, daily, max_vol,
                max_lev, cap)
            if mask != 0:
                _record_trip(trips, nt, (float(i), float(mask), value, pos * c_, rvol[i], drawdown, day_loss,
                                         risk_state[0], risk_state[2]))
                nt += 1
            g = Gate(action, reason, flatten, stop, max_weight)
            held_short = si[SI_ENTRY_BAR] >= 0 and (t_ns[i] - si[SI_ENTRY_T] + bar_ns // 2) // bar_ns < max_hold
            if _nothing_to_decide(si, pos, g, held_short, i <= end and allowed[i], qn[Q_PEND] == 0 and qn[Q_SUB] == 0):
                pass
            elif pos == 0 and si[SI_ENTRY] < 0 and not flatten and weight[i] == 0.0:
                count_decision(stats, p, signal[i], 0.0)  # an entry decision for no position: counted only
            else:
                stop_run = _decide_and_apply(b, g, i, bars, sig, span, prm, stats, width)
        _record_equity(equity, i, bk)
        if stop_run:
            n_bars = i + 1
            break
    return _run_counts(stats, fills, trips, nf, n_bars, nt)


# ----------------------------------------------------------------------------- Python side
def allocate_buffers(n_bars: int, fills: int | None = None, trips: int = 256) -> Outputs:
    """Output buffers for one kernel run over ``n_bars`` bars (a sweep allocates one set per
    row). ``fills`` defaults to ``2 * n_bars + 16``: every trade needs at least two bars."""
    return Outputs(fills=np.zeros((fills if fills is not None else 2 * n_bars + 16, len(FILL_FIELDS))),
                   equity=np.full((n_bars, len(EQUITY_FIELDS)), np.nan), trips=np.zeros((trips, len(TRIP_FIELDS))),
                   stats=np.zeros(len(STAT_FIELDS)), risk_state=new_risk_state())


def default_signals(policy: Policy, prob: Any, fvol: Any, width: Any = None) -> Signals:
    """The default hooks' values (:class:`strategies.hooks.VectorHooks`): the policy's signal
    (per-bar centre from ``width`` where the policy has one) and weight of every bar, every
    bar allowed."""
    p = np.ascontiguousarray(np.asarray(prob, dtype="float64"))
    s = policy.signals(p, None if width is None else np.asarray(width, dtype="float64"))
    return Signals(p, s, policy.target_weights(s, np.asarray(fvol, dtype="float64")), np.ones(len(p), dtype=np.bool_))


def as_signals(prob: Any, signal: Any, weight: Any, allowed: Any) -> Signals:
    """:class:`Signals` of per-bar arrays (e.g. the fields of a :class:`strategies.hooks.HookArrays`)."""
    return Signals(*(np.ascontiguousarray(np.asarray(x, dtype="float64")) for x in (prob, signal, weight)),
                   np.ascontiguousarray(np.asarray(allowed, dtype=np.bool_)))


def bars_of(frame: pd.DataFrame, rvol: Any) -> Bars:
    """:class:`Bars` of a canonical OHLCV frame (UTC index) and its realised daily volatility."""
    idx = pd.DatetimeIndex(frame.index)
    idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    arr = [np.ascontiguousarray(frame[c].to_numpy(dtype="float64")) for c in ("open", "high", "low", "close")]
    return Bars(np.ascontiguousarray(idx.as_unit("ns").asi8), *arr,
                np.ascontiguousarray(np.asarray(rvol, dtype="float64")))


@dataclass
class SimResult:
    """What one reference simulation produced (same tables as ``run_backtest``)."""

    fills: pd.DataFrame                 # FillLog columns (+ bar, exec_bar, maker)
    trades: pd.DataFrame                # core.trades.round_trips of the fills
    equity: pd.DataFrame                # per bar processed: equity, cash, position, close
    risk_trips: list[dict]              # Trip.to_dict() rows
    signal_stats: dict[str, Any]        # as ModelStrategy.signal_stats
    stopped_by_kill_switch: bool
    bars: int                           # bars processed (fewer than fed after a kill switch)
    risk_state: dict[str, float] = field(default_factory=dict)


def _bar_index(index: pd.DatetimeIndex, when: Any, side: str, default: int) -> int:
    if when is None:
        return default
    if isinstance(when, (int, np.integer)):
        return int(when)
    t = pd.Timestamp(when)
    t = t.tz_localize("UTC") if t.tz is None else t.tz_convert("UTC")
    k = int(index.searchsorted(t, side=side))
    return k if side == "left" else k - 1


@dataclass(frozen=True)
class RunOptions:
    """Where and how :func:`simulate` runs (the keywords of ``run_backtest`` it mirrors).

    ``start``/``end``: bar indices or timestamps -- decisions from the first bar at or after
    ``start`` (give the first bar on which the strategy's ``next()`` runs: after its
    indicators' warm-up), entries up to the last bar at or before ``end`` (None: the first /
    last bar). ``coc``: cheat-on-close fills. ``kill_bar``: first bar index with the kill
    switch on; ``kill_switch_file`` only names it in the trip's reason."""

    start: Any = None
    end: Any = None
    coc: bool = False
    kill_bar: int | None = None
    kill_switch_file: str | None = None


def simulate(policy: Policy, risk_cfg: RiskConfig, frame: pd.DataFrame, prob: Any, fvol: Any, rvol: Any,
             cash: float, run: RunOptions = RunOptions(), *, signals: Signals | None = None,
             width: Any = None) -> SimResult:
    """Run :func:`simulate_kernel` on ``frame`` (canonical OHLCV, UTC index) and return the
    tables ``run_backtest`` reports.

    ``prob``/``fvol``/``rvol``: per-bar P, annualised vol forecast and realised daily vol
    (arrays aligned with ``frame``; feed exactly what the strategy sees). ``run``: the span,
    fill timing and kill switch (:class:`RunOptions`). ``signals``: the strategy hooks' values
    per bar (:func:`as_signals` of :func:`strategies.hooks.evaluate_hooks`); default: the
    default hooks on ``prob`` and ``fvol``. ``width``: the barrier width per bar
    (:func:`models.labels.policy_widths`; required for a volatility-scaled policy, 1.0
    everywhere when omitted for fixed barriers).
    """
    if width is None and policy.vol_scaled:
        raise ValueError("simulate: a volatility-scaled policy needs the bars' barrier widths (width=...)")
    bars = bars_of(frame, rvol)
    width = None if width is None else np.ascontiguousarray(np.asarray(width, dtype="float64"))
    idx = pd.DatetimeIndex(bars.t_ns, tz="UTC")
    n = len(frame)
    sig = signals if signals is not None else default_signals(policy, prob, fvol, width)
    per_bar = [("rvol", bars.rvol), *zip(Signals._fields, sig)] + ([] if width is None else [("width", width)])
    for name, x in per_bar:
        if x.shape != (n,):
            raise ValueError(f"simulate: {name} has shape {x.shape}, the frame {n} bars")
    i0 = max(0, _bar_index(idx, run.start, "left", 0))
    i1 = _bar_index(idx, run.end, "right", n - 1)
    buf = allocate_buffers(n)
    span = Span(i0, i1, -1 if run.kill_bar is None else int(run.kill_bar), float(cash), bool(run.coc))
    nf, n_bars, nt = simulate_kernel(bars, sig, span, policy.to_array(), risk_vector(risk_cfg), buf, width)
    stats = buf.stats
    if stats[S_FILL_OVF] or stats[S_TRIP_OVF]:
        raise RuntimeError("simulate: output buffers overflowed")  # allocate_buffers sizes them for n bars
    fills = _fills_table(buf.fills[:nf], idx)
    eq = buf.equity[:n_bars]
    equity = pd.DataFrame({"equity": eq[:, 0], "cash": eq[:, 1], "position": eq[:, 2],
                           "close": bars.close[:n_bars]}, index=idx[:n_bars].rename("timestamp"))
    trades = round_trips(fills[list(FILL_COLUMNS)], idx[:n_bars], last_close=float(bars.close[n_bars - 1]))
    signal_stats = {"decisions": int(stats[S_DECISIONS]), "scored": int(stats[S_SCORED]), "p_max": float(stats[S_PMAX]),
                    "positive_signal": int(stats[S_POSITIVE]), "past_deadband": int(stats[S_PAST_DB])}
    return SimResult(fills=fills, trades=trades, equity=equity,
                     risk_trips=_trip_dicts(buf.trips[:nt], idx, risk_cfg, run.kill_switch_file),
                     signal_stats=signal_stats, stopped_by_kill_switch=bool(stats[S_STOPPED]), bars=int(n_bars),
                     risk_state=dict(zip(RISK_STATE, buf.risk_state.tolist())))


def _fills_table(f: np.ndarray, idx: pd.DatetimeIndex) -> pd.DataFrame:
    """The kernel's fill rows ``f`` as the FillLog table (+ bar, exec_bar, maker) on the bars ``idx``."""
    times = idx[f[:, F_TIME_BAR].astype(int)] if len(f) else pd.DatetimeIndex([], tz="UTC")
    return pd.DataFrame({
        "time": times, "side": np.where(f[:, F_SIDE] > 0, "buy", "sell"), "size": f[:, F_SIZE],
        "price": f[:, F_PRICE], "value": f[:, F_SIZE] * f[:, F_PRICE], "commission": f[:, F_FEE],
        "order_type": [ORDER_TYPES[int(k)] for k in f[:, F_TYPE]], "kind": [KINDS[int(k)] for k in f[:, F_KIND]],
        "ref": f[:, F_REF].astype(int), "bar": f[:, F_TIME_BAR].astype(int), "exec_bar": f[:, F_EXEC_BAR].astype(int),
        "maker": f[:, F_MAKER] != 0,
    }, columns=[*FILL_COLUMNS, "bar", "exec_bar", "maker"])


def _trip_dicts(rows: np.ndarray, idx: pd.DatetimeIndex, risk_cfg: RiskConfig,
                kill_switch_file: str | None) -> list[dict]:
    """The kernel's trip rows (:data:`TRIP_FIELDS`) as ``Trip.to_dict()`` rows, as the risk manager logs them."""
    trip_rows: list[Trip] = []
    for row in rows:
        state = new_risk_state()
        state[0], state[2] = row[7], row[8]
        when = idx[int(row[0])].tz_convert(None).to_pydatetime().isoformat()
        trip_rows += trip_records(when, int(row[1]), risk_cfg, state, row[2], row[3], row[4], row[5], row[6],
                                  kill_switch_file)
    return [t.to_dict() for t in trip_rows]
