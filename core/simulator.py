"""Reference event simulator of the whole strategy: one compiled pass over the bars.

:func:`simulate_kernel` is :class:`strategies.base.ModelStrategy` on backtrader's broker
(:class:`strategies.bt_broker.BacktestBroker`) rewritten over arrays in numba: the same bar
loop (broker phase, then the strategy's decision on the bar's close), the same order book
semantics (submission queue with backtrader's cash check, pending queue tried once per bar
in order, bracket children, OCO groups, cancels, notifications one bar later), the same fill
arithmetic (``_try_exec_market/_limit/_stop``, ``_slip_up/_slip_down`` with slip_open,
slip_match and slip_limit as :func:`strategies.bt_broker.make_broker` sets them, cash and
commission updates, ``Position.update``, the value formula) and the fill rules of
:mod:`core.costs`. The trading rules are *not* re-implemented: the kernel calls the njit
functions of :mod:`core.policy` and :func:`core.risk.risk_step` that the backtrader strategy
calls, so the only code that exists twice is the fill mechanics, and
``tests/test_simulator_parity.py`` guards exactly that seam (trade for trade).

Shape for a sweep: the kernel takes plain arrays and scalars (a policy row from
:meth:`core.policy.Policy.to_array`, a risk row from :func:`core.risk.risk_vector`), writes
into caller-allocated output buffers and allocates only a small fixed order book, holds no
Python objects and releases the GIL; a ``numba.prange`` loop over parameter rows can call it
with per-row buffers (:func:`allocate_buffers`).

Deliberate differences from ``nts backtest`` (each has a test):

* **Kill switch**: backtrader's strategy polls a file each bar; the kernel takes
  ``kill_bar``, the first bar index at which the switch is on (-1: never).
* **Hooks**: the kernel runs ModelStrategy's default hooks. A subclass that overrides
  ``signal()``/``target_weight()``/... (e.g. ``NightOnly``) is simulated only through its
  inputs (``prob``, ``fvol``), not its code.
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
import re
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
import pandas as pd

from core.config import RiskConfig
from core.policy import (
    POLICY_VECTOR,
    Policy,
    barrier_prices,
    signal_from_probability,
    use_limit,
    weight_from_signal,
)
from core.risk import (
    ALLOW,
    DAY_NS,
    EPOCH_ORDINAL,
    REDUCE,
    RISK_STATE,
    RISK_VECTOR,
    Trip,
    cap_weight,
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
# Order kinds (the strategy's ``kind`` tag).
KINDS: tuple[str, ...] = ("entry", "take_profit", "stop", "time", "risk", "kill")
K_ENTRY, K_TAKE_PROFIT, K_STOP, K_TIME, K_RISK, K_KILL = range(len(KINDS))
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


# ----------------------------------------------------------------------------- compile signatures
# The internal helpers are compiled for one explicit signature each: called with literal
# constants (kinds, queue ids, flags) they would otherwise be specialised per literal value,
# multiplying the compile time. Arrays are C-contiguous (the kernel allocates them).
# Caching: numba's on-disk cache checks only the source file of the cached function, not of
# the functions it calls, so the functions that call the policy and risk rules of other
# modules (_order_for, _decide, simulate_kernel) are compiled per process (cache=False): a
# changed rule in core.policy/core.risk can never run from a stale cached kernel.
_TYPES = {"I2": "int64[:, ::1]", "F2": "float64[:, ::1]", "I1": "int64[::1]", "F1": "float64[::1]",
          "i8": "int64", "f8": "float64", "b1": "boolean"}


def _sig(text: str) -> str:
    return re.sub(r"\b(I2|F2|I1|F1|i8|f8|b1)\b", lambda m: _TYPES[m.group(1)], text)


# ----------------------------------------------------------------------------- queues
@numba.njit(_sig("void(I2, I1, i8, i8)"), cache=True, nogil=True)
def _q_append(qd, qn, q, x):
    if qn[q] >= QCAP:
        raise RuntimeError("simulator queue full")
    qd[q, qn[q]] = x
    qn[q] += 1


@numba.njit(_sig("i8(I2, I1, i8, i8)"), cache=True, nogil=True)
def _q_index(qd, qn, q, x):
    for k in range(qn[q]):
        if qd[q, k] == x:
            return k
    return -1


@numba.njit(_sig("void(I2, I1, i8, i8)"), cache=True, nogil=True)
def _q_delete(qd, qn, q, k):
    for j in range(k, qn[q] - 1):
        qd[q, j] = qd[q, j + 1]
    qn[q] -= 1


@numba.njit(_sig("b1(I2, I1, i8, i8)"), cache=True, nogil=True)
def _q_remove(qd, qn, q, x):
    """deque.remove: True when ``x`` was in queue ``q``."""
    k = _q_index(qd, qn, q, x)
    if k < 0:
        return False
    _q_delete(qd, qn, q, k)
    return True


@numba.njit(_sig("i8(I2, I1, i8)"), cache=True, nogil=True)
def _q_popleft(qd, qn, q):
    if qn[q] == 0:
        raise RuntimeError("simulator queue empty")
    x = qd[q, 0]
    _q_delete(qd, qn, q, 0)
    return x


# ----------------------------------------------------------------------------- notifications
@numba.njit(_sig("void(I2, I2, I1, I1, i8)"), cache=True, nogil=True)
def _notify(oi, qd, qn, nst, x):
    """Queue a status notification for the strategy (delivered before its next decision).
    Submitted/Accepted notifications are dropped: ModelStrategy ignores them."""
    status = oi[x, OI_STATUS]
    if status == SUBMITTED or status == ACCEPTED:
        return
    nst[qn[Q_NOTE]] = status
    _q_append(qd, qn, Q_NOTE, x)
    oi[x, OI_NOTES] += 1


# ----------------------------------------------------------------------------- backtrader arithmetic
@numba.njit(_sig("UniTuple(f8, 4)(f8, f8, f8, f8)"), cache=True, nogil=True)
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


@numba.njit(_sig("f8(f8, f8, f8, f8)"), cache=True, nogil=True)
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


@numba.njit(_sig("f8(f8, f8, f8)"), cache=True, nogil=True)
def _slip_up(pmax, price, slip):
    """``_slip_up`` with slip_perc = ``slip``, slip_match on, slip_out off (0: no slippage)."""
    if slip == 0.0:
        return price
    pslip = price * (1 + slip)
    if pslip <= pmax:
        return pslip
    return pmax


@numba.njit(_sig("f8(f8, f8, f8)"), cache=True, nogil=True)
def _slip_down(pmin, price, slip):
    if slip == 0.0:
        return price
    pslip = price * (1 - slip)
    if pslip >= pmin:
        return pslip
    return pmin


@numba.njit(_sig("f8(I2, i8, F1)"), cache=True, nogil=True)
def _fee_rate(oi, x, prm):
    """Maker fee for limit orders, taker for every other type (core.costs)."""
    return prm[P_MAKER] if oi[x, OI_TYPE] == LIMIT else prm[P_TAKER]


# ----------------------------------------------------------------------------- order book operations
@numba.njit(_sig("void(I2, I2, I1, I1, i8)"), cache=True, nogil=True)
def _ococheck(oi, qd, qn, nst, x):
    """``BackBroker._ococheck``: dissolve ``x``'s OCO group, cancelling its other pending members
    (backtrader walks the pending queue from the back)."""
    leader = oi[x, OI_OCO]
    if oi[leader, OI_OCOL] == 0:
        return
    oi[leader, OI_OCOL] = 0
    for k in range(qn[Q_PEND] - 1, -1, -1):
        o = qd[Q_PEND, k]
        if o >= 0 and oi[o, OI_OCO] == leader:  # o < 0: the pass's sentinel
            _q_delete(qd, qn, Q_PEND, k)
            oi[o, OI_STATUS] = CANCELED
            _notify(oi, qd, qn, nst, o)


@numba.njit(_sig("b1(I2, I2, I1, I1, i8)"), cache=True, nogil=True)
def _cancel_one(oi, qd, qn, nst, x):
    """``BacktestBroker.cancel(order, bracket=True)``: reaches the submission queue too."""
    if not _q_remove(qd, qn, Q_SUB, x):
        if not _q_remove(qd, qn, Q_PEND, x):
            return False
    oi[x, OI_STATUS] = CANCELED
    _notify(oi, qd, qn, nst, x)
    _ococheck(oi, qd, qn, nst, x)
    return True


@numba.njit(_sig("void(I2, I2, I1, I1, i8)"), cache=True, nogil=True)
def _drop_children(oi, qd, qn, nst, x):
    """``_bracketize(order, cancel=True)`` (or a child's execution): cancel what is left of
    the bracket group and forget it."""
    pref = oi[x, OI_PARENT] if oi[x, OI_PARENT] >= 0 else x
    if oi[pref, OI_PC_ALIVE] == 0:
        return
    while oi[pref, OI_PC_HEAD] < oi[pref, OI_PC_N]:
        y = oi[pref, OI_PC0 + oi[pref, OI_PC_HEAD]]
        oi[pref, OI_PC_HEAD] += 1
        _cancel_one(oi, qd, qn, nst, y)
    oi[pref, OI_PC_ALIVE] = 0


@numba.njit(_sig("b1(I2, I2, I1, I1, i8)"), cache=True, nogil=True)
def _cancel(oi, qd, qn, nst, x):
    """Strategy.cancel -> ``BacktestBroker.cancel(order)``: the order and its bracket."""
    if _cancel_one(oi, qd, qn, nst, x):
        _drop_children(oi, qd, qn, nst, x)
        return True
    return False


@numba.njit(_sig("b1(I2, F2, I2, I1, i8, f8)"), cache=True, nogil=True)
def _parent_done(oi, of, qd, qn, x, bar_open):
    """``BacktestBroker._bracketize`` for an executed order: activate its bracket children on
    this bar -- except the take profit of a limit entry filled mid-bar (next bar)."""
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
                _q_append(qd, qn, Q_ACT, child)
            else:
                oi[child, OI_ACTIVE] = 1
    return True


@numba.njit(_sig("i8(I2, I2, I1, I1)"), cache=True, nogil=True)
def _alloc(oi, qd, qn, si):
    """A free book slot: dead, no undelivered notification, not waiting for activation, not
    referenced by the strategy, and no live order pointing at it (as parent or OCO leader)."""
    for s in range(MAX_ORDERS):
        if oi[s, OI_USED] == 0:
            return s
    for s in range(MAX_ORDERS):
        if oi[s, OI_STATUS] <= PARTIAL or oi[s, OI_NOTES] > 0 or _q_index(qd, qn, Q_ACT, s) >= 0:
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


@numba.njit(_sig("i8(I2, F2, I2, I1, I1, i8, i8, b1, f8, f8, f8, i8, i8, i8, b1)"), cache=True, nogil=True)
def _new_order(oi, of, qd, qn, si, kind, otype, buy, size, price, close_i, bar, parent, oco, transmit):
    """Strategy.buy/sell -> ``BackBroker.buy/sell``: create, OCO-ize, queue in the bracket
    group and, with ``transmit``, submit the whole group (submission queue, in order)."""
    x = _alloc(oi, qd, qn, si)
    oi[x, :] = 0
    of[x, :] = 0.0
    oi[x, OI_USED] = 1
    oi[x, OI_TYPE] = otype
    oi[x, OI_BUY] = 1 if buy else 0
    oi[x, OI_STATUS] = CREATED
    oi[x, OI_PARENT] = parent
    oi[x, OI_ACTIVE] = 1 if parent < 0 else 0
    oi[x, OI_KIND] = kind
    si[SI_REF] += 1
    oi[x, OI_REF] = si[SI_REF]
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
            _q_append(qd, qn, Q_SUB, o)
    return x


@numba.njit(_sig("UniTuple(f8, 3)(I2, F2, i8, f8, f8, f8, F1)"), cache=True, nogil=True)
def _pseudo_execute(oi, of, x, cash, psize, pprice, prm):
    """``BackBroker._execute`` with ``ago=None``: the submission cash check at the order's
    created price on a clone of the position; returns (cash, size, price) after it."""
    size = of[x, OF_REM]
    price = of[x, OF_PRICE]
    rate = _fee_rate(oi, x, prm)
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


@numba.njit(_sig("i8(I2, F2, I2, I1, I1, F1, i8, f8, i8, i8, F1, F2, i8)"), cache=True, nogil=True)
def _execute(oi, of, qd, qn, nst, bk, x, price, time_bar, bar, prm, fills, nf):
    """``BackBroker._execute`` for a real fill at ``price``; returns the new fill count."""
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
            if nf < fills.shape[0]:
                fills[nf, F_TIME_BAR] = time_bar
                fills[nf, F_EXEC_BAR] = bar
                fills[nf, F_SIDE] = 1.0 if oi[x, OI_BUY] == 1 else -1.0
                fills[nf, F_SIZE] = of[x, OF_EXSIZE]
                fills[nf, F_PRICE] = of[x, OF_EXPRICE]
                fills[nf, F_FEE] = of[x, OF_EXCOMM]
                fills[nf, F_KIND] = oi[x, OI_KIND]
                fills[nf, F_MAKER] = 1.0 if oi[x, OI_TYPE] == LIMIT else 0.0
                fills[nf, F_TYPE] = oi[x, OI_TYPE]
                fills[nf, F_REF] = oi[x, OI_REF]
            nf += 1
        _notify(oi, qd, qn, nst, x)
        _ococheck(oi, qd, qn, nst, x)
    if popened != 0 and opened == 0:
        oi[x, OI_STATUS] = MARGIN
        _notify(oi, qd, qn, nst, x)
        _ococheck(oi, qd, qn, nst, x)
        _drop_children(oi, qd, qn, nst, x)
    return nf


@numba.njit(_sig("i8(I2, F2, I2, I1, I1, F1, i8, i8, f8, f8, f8, b1, F1, F2, i8)"), cache=True, nogil=True)
def _try_exec(oi, of, qd, qn, nst, bk, x, i, o_, h_, l_, coc, prm, fills, nf):
    """``BackBroker._try_exec`` for market, limit and stop orders on bar ``i``."""
    otype = oi[x, OI_TYPE]
    buy = oi[x, OI_BUY] == 1
    slip = prm[P_SLIP]
    plimit = of[x, OF_PRICE]  # created price: the limit or the stop trigger
    time_bar = i
    price = np.nan
    if otype == MARKET:
        if coc:
            exprice = of[x, OF_PCLOSE]
            time_bar = oi[x, OI_CBAR]
        elif i <= oi[x, OI_CBAR]:
            return nf  # can only execute after the creation bar
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
    if price != price:
        return nf  # not touched on this bar
    return _execute(oi, of, qd, qn, nst, bk, x, price, time_bar, i, prm, fills, nf)


@numba.njit(_sig("i8(I2, F2, I2, I1, I1, F1, i8, f8, f8, f8, f8, b1, F1, F2, i8)"), cache=True, nogil=True)
def _broker_next(oi, of, qd, qn, nst, bk, i, o_, h_, l_, c_, coc, prm, fills, nf):
    """``BackBroker.next`` on bar ``i``: activations, the submission check, one pass over the
    pending queue, the end-of-bar value. Returns the new fill count."""
    while qn[Q_ACT] > 0:
        oi[_q_popleft(qd, qn, Q_ACT), OI_ACTIVE] = 1
    # check_submitted: pseudo-execute in order against a running cash and position clone
    cash = bk[B_CASH]
    psize = bk[B_POS]
    pprice = bk[B_PPRICE]
    while qn[Q_SUB] > 0:
        x = _q_popleft(qd, qn, Q_SUB)
        parent = oi[x, OI_PARENT]
        if parent >= 0 and oi[parent, OI_PC_ALIVE] == 0:
            oi[x, OI_STATUS] = REJECTED  # _take_children: parent gone
            _notify(oi, qd, qn, nst, x)
            continue
        cash, psize, pprice = _pseudo_execute(oi, of, x, cash, psize, pprice, prm)
        if cash >= 0.0:
            oi[x, OI_STATUS] = ACCEPTED
            _q_append(qd, qn, Q_PEND, x)
            continue
        oi[x, OI_STATUS] = MARGIN
        _notify(oi, qd, qn, nst, x)
        _ococheck(oi, qd, qn, nst, x)
        _drop_children(oi, qd, qn, nst, x)
    # the pending queue, once, in order (orders re-queued now wait for the next bar)
    _q_append(qd, qn, Q_PEND, -1)
    while True:
        x = _q_popleft(qd, qn, Q_PEND)
        if x < 0:
            break
        if oi[x, OI_ACTIVE] == 0:
            _q_append(qd, qn, Q_PEND, x)
            continue
        nf = _try_exec(oi, of, qd, qn, nst, bk, x, i, o_, h_, l_, coc, prm, fills, nf)
        if oi[x, OI_STATUS] <= PARTIAL:
            _q_append(qd, qn, Q_PEND, x)
        elif oi[x, OI_STATUS] == COMPLETED:
            if not _parent_done(oi, of, qd, qn, x, o_):
                _drop_children(oi, qd, qn, nst, x)
    bk[B_VALUE] = _value(bk[B_CASH], bk[B_POS], bk[B_PPRICE], c_)
    return nf


# ----------------------------------------------------------------------------- strategy side
@numba.njit(_sig("void(I1)"), cache=True, nogil=True)
def _reset_trade(si):
    si[SI_ENTRY] = -1
    si[SI_NEXITS] = 0
    si[SI_EXIT0] = -1
    si[SI_EXIT1] = -1
    si[SI_ENTRY_BAR] = -1
    si[SI_CLOSING] = -1
    si[SI_CUT] = -1


@numba.njit(_sig("void(I2, I2, I1, I1, F1, I1, i8, I1)"), cache=True, nogil=True)
def _deliver(oi, qd, qn, nst, bk, si, i, t_ns):
    """ModelStrategy.notify_order over the notifications queued since its last decision."""
    for k in range(qn[Q_NOTE]):
        x = qd[Q_NOTE, k]
        status = nst[k]
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
        if status == COMPLETED and bk[B_POS] == 0:
            _reset_trade(si)
        elif si[SI_CLOSING] >= 0 and x == si[SI_CLOSING] and status != COMPLETED and bk[B_POS] != 0:
            si[SI_CLOSING] = -1
    qn[Q_NOTE] = 0


@numba.njit(_sig("b1(I2, i8)"), cache=True, nogil=True)
def _alive(oi, x):
    return x >= 0 and oi[x, OI_STATUS] <= PARTIAL


@numba.njit(_sig("void(I2, F2, I2, I1, I1, F1, I1, i8, f8, i8)"), cache=True, nogil=True)
def _flatten(oi, of, qd, qn, nst, bk, si, kind, close_i, bar):
    """ModelStrategy.flatten: cancel every working order, close the position at market."""
    for x in (si[SI_ENTRY], si[SI_CUT], si[SI_EXIT0] if si[SI_NEXITS] > 0 else -1,
              si[SI_EXIT1] if si[SI_NEXITS] > 1 else -1):
        if _alive(oi, x):
            _cancel(oi, qd, qn, nst, x)
    pos = bk[B_POS]
    if pos != 0 and not _alive(oi, si[SI_CLOSING]):
        si[SI_CLOSING] = _new_order(oi, of, qd, qn, si, kind, MARKET, pos < 0, abs(pos), 0.0, close_i, bar,
                                    -1, -1, True)


@numba.njit(_sig("void(I2, F2, I2, I1, I1, F1, I1, f8, f8, i8, b1)"), cache=True, nogil=True)
def _reduce_to(oi, of, qd, qn, nst, bk, si, max_weight, close_i, bar, tie_profit):
    """ModelStrategy.reduce_to: cut the position to ``max_weight`` of equity, re-placing its
    barrier exits as an OCO pair of the new size."""
    pos = bk[B_POS]
    target = math.copysign(max_weight * bk[B_VALUE] / close_i, pos)
    excess = pos - target
    if abs(excess) <= 1e-12 or abs(target) >= abs(pos):
        return
    have_tp = False
    have_sl = False
    tp = 0.0
    sl = 0.0
    for k in range(si[SI_NEXITS]):
        x = si[SI_EXIT0 + k]
        if oi[x, OI_KIND] == K_TAKE_PROFIT:
            have_tp = True
            tp = of[x, OF_PRICE]
        elif oi[x, OI_KIND] == K_STOP:
            have_sl = True
            sl = of[x, OF_PRICE]
    for k in range(si[SI_NEXITS]):
        x = si[SI_EXIT0 + k]
        if _alive(oi, x):
            _cancel(oi, qd, qn, nst, x)
    if _alive(oi, si[SI_CUT]):
        _cancel(oi, qd, qn, nst, si[SI_CUT])
    si[SI_CUT] = _new_order(oi, of, qd, qn, si, K_RISK, MARKET, excess < 0, abs(excess), 0.0, close_i, bar,
                            -1, -1, True)
    n = 0
    for j in range(2):
        kind = (K_TAKE_PROFIT if j == 0 else K_STOP) if tie_profit else (K_STOP if j == 0 else K_TAKE_PROFIT)
        if kind == K_TAKE_PROFIT and not have_tp:
            continue
        if kind == K_STOP and not have_sl:
            continue
        otype = STOP if kind == K_STOP else LIMIT
        price = sl if kind == K_STOP else tp
        oco = si[SI_EXIT0] if n > 0 else -1
        si[SI_EXIT0 + n] = _new_order(oi, of, qd, qn, si, kind, otype, pos < 0, abs(target), price, close_i, bar,
                                      -1, oco, True)
        n += 1
    si[SI_NEXITS] = n


@numba.njit(_sig("void(I2, F2, I2, I1, I1, f8, f8, f8, f8, i8, F1)"), cache=False, nogil=True)
def _order_for(oi, of, qd, qn, si, w, confidence, equity, close_i, bar, prm):
    """ModelStrategy.order_for: the entry (limit at the close or market) with its stop and
    take-profit children, submitted as one bracket (the first child wins a tie bar)."""
    ref = close_i
    size = abs(w) * equity / ref
    if size <= 0:
        return
    long = w > 0
    tp, sl = barrier_prices(ref, long, prm[P_PROFIT], prm[P_STOP])
    limit = use_limit(confidence, prm[P_LIMIT_CONF])
    entry = _new_order(oi, of, qd, qn, si, K_ENTRY, LIMIT if limit else MARKET, long, size, ref, close_i, bar,
                       -1, -1, False)
    tie_profit = prm[P_TIE_PROFIT] != 0.0
    first_kind = K_TAKE_PROFIT if tie_profit else K_STOP
    second_kind = K_STOP if tie_profit else K_TAKE_PROFIT
    c1 = _new_order(oi, of, qd, qn, si, first_kind, STOP if first_kind == K_STOP else LIMIT, not long, size,
                    sl if first_kind == K_STOP else tp, close_i, bar, entry, -1, False)
    c2 = _new_order(oi, of, qd, qn, si, second_kind, STOP if second_kind == K_STOP else LIMIT, not long, size,
                    sl if second_kind == K_STOP else tp, close_i, bar, entry, -1, True)
    si[SI_ENTRY] = entry
    si[SI_EXIT0] = c1
    si[SI_EXIT1] = c2
    si[SI_NEXITS] = 2
    si[SI_SUBMIT_BAR] = bar


# ----------------------------------------------------------------------------- the kernel
@numba.njit(cache=False, nogil=True)
def simulate_kernel(t_ns, open_, high, low, close, prob, fvol, rvol, start, end, kill_bar, cash, coc, prm, rsk,
                    fills, equity, trips, stats, risk_state):
    """One strategy run over the bars (see the module docstring); returns
    ``(n_fills, n_bars, n_trips)``.

    Inputs: ``t_ns`` bar open times (int64 ns, UTC), ``open_/high/low/close``, ``prob`` (P per
    bar, NaN = none), ``fvol`` (annualised vol forecast), ``rvol`` (realised daily vol),
    ``start``/``end`` (first bar index of decisions and risk checks; last bar index that may
    open a position), ``kill_bar`` (first bar with the kill switch on, -1 never), ``cash``,
    ``coc`` (cheat-on-close), ``prm`` (:meth:`Policy.to_array`), ``rsk`` (:func:`risk_vector`).
    Outputs written in place: ``fills`` (rows of :data:`FILL_FIELDS`; more fills than rows are
    counted, flagged in ``stats`` and not stored), ``equity`` (per bar: equity, cash,
    position after the bar), ``trips`` (rows of :data:`TRIP_FIELDS`), ``stats``
    (:data:`STAT_FIELDS`), ``risk_state`` (:data:`core.risk.RISK_STATE`, updated; pass a fresh
    one from :func:`core.risk.new_risk_state`).
    """
    n = close.shape[0]
    oi = np.zeros((MAX_ORDERS, N_OI), dtype=np.int64)
    of = np.zeros((MAX_ORDERS, N_OF))
    qd = np.zeros((4, QCAP), dtype=np.int64)
    qn = np.zeros(4, dtype=np.int64)
    nst = np.zeros(QCAP, dtype=np.int64)
    bk = np.zeros(4)
    bk[B_CASH] = cash
    bk[B_VALUE] = cash
    si = np.zeros(N_SI, dtype=np.int64)
    _reset_trade(si)
    si[SI_REF] = 0
    for k in range(stats.shape[0]):
        stats[k] = 0.0
    stats[S_PMAX] = np.nan

    center = prm[P_CENTER]
    target_vol = prm[P_TARGET_VOL]
    deadband = prm[P_DEADBAND]
    max_position = prm[P_MAX_POSITION]
    allow_short = prm[P_ALLOW_SHORT] != 0.0
    tif = int(prm[P_TIF])
    max_hold = int(prm[P_MAX_HOLD])
    tie_profit = prm[P_TIE_PROFIT] != 0.0
    bar_ns = np.int64(prm[P_BAR_NS])
    cap = weight_cap(rsk[R_MAX_POSITION], rsk[R_MAX_LEVERAGE])

    nf = 0
    nt = 0
    n_bars = n
    for i in range(n):
        nf = _broker_next(oi, of, qd, qn, nst, bk, i, open_[i], high[i], low[i], close[i], coc, prm, fills, nf)
        _deliver(oi, qd, qn, nst, bk, si, i, t_ns)
        stop_run = False
        if i >= start:
            stop_run, tripped = _decide(oi, of, qd, qn, nst, bk, si, i, t_ns, close[i], prob[i], fvol[i], rvol[i],
                                        end, kill_bar, prm, rsk, risk_state, center, target_vol, deadband,
                                        max_position, allow_short, tif, max_hold, tie_profit, bar_ns, cap, trips, nt,
                                        stats)
            if tripped:
                nt += 1
        equity[i, 0] = bk[B_VALUE]
        equity[i, 1] = bk[B_CASH]
        equity[i, 2] = bk[B_POS]
        if stop_run:
            n_bars = i + 1
            break
    if nf > fills.shape[0]:
        stats[S_FILL_OVF] = 1.0
    if nt > trips.shape[0]:
        stats[S_TRIP_OVF] = 1.0
    return min(nf, fills.shape[0]), n_bars, min(nt, trips.shape[0])


@numba.njit(_sig("Tuple((b1, b1))(I2, F2, I2, I1, I1, F1, I1, i8, I1, f8, f8, f8, f8, i8, i8, F1, F1, F1, f8, f8, f8, f8, b1, i8, i8, b1, i8, f8, F2, i8, F1)"), cache=False, nogil=True)
def _decide(oi, of, qd, qn, nst, bk, si, i, t_ns, close_i, p, fvol_i, rvol_i, end, kill_bar, prm, rsk, risk_state,
            center, target_vol, deadband, max_position, allow_short, tif, max_hold, tie_profit, bar_ns, cap,
            trips, nt, stats):
    """ModelStrategy.next on bar ``i`` (from ``trade_start`` on); returns (the run stops here,
    a breaker tripped: trip row ``nt`` written when it fits)."""
    if p == p:
        stats[S_SAW_P] = 1.0
    pos = bk[B_POS]
    equity = bk[B_VALUE]
    kill_now = kill_bar >= 0 and i >= kill_bar
    day = float(t_ns[i] // DAY_NS + EPOCH_ORDINAL)
    action, _reason, flatten, stop, max_weight, mask, drawdown, day_loss = risk_step(
        risk_state, day, equity, pos * close_i, rvol_i, kill_now, rsk[R_MAX_DRAWDOWN], rsk[R_DAILY_LOSS],
        rsk[R_MAX_VOLATILITY], rsk[R_MAX_LEVERAGE], cap)
    if mask != 0:
        if nt < trips.shape[0]:
            trips[nt, 0] = i
            trips[nt, 1] = mask
            trips[nt, 2] = equity
            trips[nt, 3] = pos * close_i
            trips[nt, 4] = rvol_i
            trips[nt, 5] = drawdown
            trips[nt, 6] = day_loss
            trips[nt, 7] = risk_state[0]
            trips[nt, 8] = risk_state[2]
    tripped = mask != 0
    if flatten:
        _flatten(oi, of, qd, qn, nst, bk, si, K_KILL if stop else K_RISK, close_i, i)
        if stop:
            stats[S_STOPPED] = 1.0
            if pos == 0 and qn[Q_PEND] == 0:
                return True, tripped
        return False, tripped
    if action == REDUCE and pos != 0:
        _reduce_to(oi, of, qd, qn, nst, bk, si, max_weight, close_i, i, tie_profit)
    if pos != 0:
        if si[SI_ENTRY_BAR] >= 0 and si[SI_CLOSING] < 0:
            held = (t_ns[i] - si[SI_ENTRY_T] + bar_ns // 2) // bar_ns
            if held >= max_hold:
                _flatten(oi, of, qd, qn, nst, bk, si, K_TIME, close_i, i)
        return False, tripped
    if si[SI_ENTRY] >= 0:  # a limit entry still working
        if _alive(oi, si[SI_ENTRY]) and i - si[SI_SUBMIT_BAR] >= tif:
            _cancel(oi, qd, qn, nst, si[SI_ENTRY])
        return False, tripped
    if action != ALLOW or i > end:
        return False, tripped
    s = signal_from_probability(p, center)
    w = cap_weight(weight_from_signal(s, fvol_i, target_vol, deadband, max_position, allow_short), cap)
    stats[S_DECISIONS] += 1.0
    if p == p:
        stats[S_SCORED] += 1.0
        if not stats[S_PMAX] >= p:
            stats[S_PMAX] = p
    if s > 0:
        stats[S_POSITIVE] += 1.0
    if w != 0.0:
        stats[S_PAST_DB] += 1.0
        _order_for(oi, of, qd, qn, si, w, abs(s), equity, close_i, i, prm)
    return False, tripped


# ----------------------------------------------------------------------------- Python side
def allocate_buffers(n_bars: int, fills: int | None = None, trips: int = 256) -> dict[str, np.ndarray]:
    """Output buffers for one kernel run over ``n_bars`` bars (a sweep allocates one set per
    row). ``fills`` defaults to ``2 * n_bars + 16``: every trade needs at least two bars."""
    return {
        "fills": np.zeros((fills if fills is not None else 2 * n_bars + 16, len(FILL_FIELDS))),
        "equity": np.full((n_bars, len(EQUITY_FIELDS)), np.nan),
        "trips": np.zeros((trips, len(TRIP_FIELDS))),
        "stats": np.zeros(len(STAT_FIELDS)),
        "risk_state": new_risk_state(),
    }


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


def simulate(policy: Policy, risk_cfg: RiskConfig, frame: pd.DataFrame, prob: Any, fvol: Any, rvol: Any,
             cash: float, start: Any = None, end: Any = None, coc: bool = False, kill_bar: int | None = None,
             kill_switch_file: str | None = None) -> SimResult:
    """Run :func:`simulate_kernel` on ``frame`` (canonical OHLCV, UTC index) and return the
    tables ``run_backtest`` reports.

    ``prob``/``fvol``/``rvol``: per-bar P, annualised vol forecast and realised daily vol
    (arrays aligned with ``frame``; feed exactly what the strategy sees). ``start``/``end``:
    bar indices or timestamps -- decisions from the first bar at or after ``start`` (give
    the first bar on which the strategy's ``next()`` runs: after its indicators' warm-up),
    entries up to the last bar at or before ``end``. ``kill_bar``: first bar index with the
    kill switch on; ``kill_switch_file`` only names it in the trip's reason.
    """
    idx = pd.DatetimeIndex(frame.index)
    idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    n = len(frame)
    arr = {c: np.ascontiguousarray(frame[c].to_numpy(dtype="float64")) for c in ("open", "high", "low", "close")}
    series = [np.ascontiguousarray(np.asarray(x, dtype="float64")) for x in (prob, fvol, rvol)]
    for name, x in zip(("prob", "fvol", "rvol"), series):
        if x.shape != (n,):
            raise ValueError(f"simulate: {name} has shape {x.shape}, the frame {n} bars")
    i0 = max(0, _bar_index(idx, start, "left", 0))
    i1 = _bar_index(idx, end, "right", n - 1)
    buf = allocate_buffers(n)
    t_ns = idx.as_unit("ns").asi8
    nf, n_bars, nt = simulate_kernel(t_ns, arr["open"], arr["high"], arr["low"], arr["close"], *series, i0, i1,
                                     -1 if kill_bar is None else int(kill_bar), float(cash), bool(coc),
                                     policy.to_array(), risk_vector(risk_cfg), buf["fills"], buf["equity"],
                                     buf["trips"], buf["stats"], buf["risk_state"])
    stats = buf["stats"]
    if stats[S_FILL_OVF] or stats[S_TRIP_OVF]:
        raise RuntimeError("simulate: output buffers overflowed")  # allocate_buffers sizes them for n bars
    f = buf["fills"][:nf]
    times = idx[f[:, F_TIME_BAR].astype(int)] if nf else pd.DatetimeIndex([], tz="UTC")
    fills = pd.DataFrame({
        "time": times, "side": np.where(f[:, F_SIDE] > 0, "buy", "sell"), "size": f[:, F_SIZE],
        "price": f[:, F_PRICE], "value": f[:, F_SIZE] * f[:, F_PRICE], "commission": f[:, F_FEE],
        "order_type": [ORDER_TYPES[int(k)] for k in f[:, F_TYPE]], "kind": [KINDS[int(k)] for k in f[:, F_KIND]],
        "ref": f[:, F_REF].astype(int), "bar": f[:, F_TIME_BAR].astype(int), "exec_bar": f[:, F_EXEC_BAR].astype(int),
        "maker": f[:, F_MAKER] != 0,
    }, columns=[*FILL_COLUMNS, "bar", "exec_bar", "maker"])
    eq = buf["equity"][:n_bars]
    equity = pd.DataFrame({"equity": eq[:, 0], "cash": eq[:, 1], "position": eq[:, 2],
                           "close": arr["close"][:n_bars]}, index=idx[:n_bars].rename("timestamp"))
    trades = round_trips(fills[list(FILL_COLUMNS)], idx[:n_bars], last_close=float(arr["close"][n_bars - 1]))
    trip_rows: list[Trip] = []
    for row in buf["trips"][:nt]:
        state = new_risk_state()
        state[0], state[2] = row[7], row[8]
        when = idx[int(row[0])].tz_convert(None).to_pydatetime().isoformat()
        trip_rows += trip_records(when, int(row[1]), risk_cfg, state, row[2], row[3], row[4], row[5], row[6],
                                  kill_switch_file)
    signal_stats = {"decisions": int(stats[S_DECISIONS]), "scored": int(stats[S_SCORED]), "p_max": float(stats[S_PMAX]),
                    "positive_signal": int(stats[S_POSITIVE]), "past_deadband": int(stats[S_PAST_DB])}
    return SimResult(fills=fills, trades=trades, equity=equity, risk_trips=[t.to_dict() for t in trip_rows],
                     signal_stats=signal_stats, stopped_by_kill_switch=bool(stats[S_STOPPED]), bars=int(n_bars),
                     risk_state=dict(zip(RISK_STATE, buf["risk_state"].tolist())))
