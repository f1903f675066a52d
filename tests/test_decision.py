"""The one decision step (core.decision.decide): each rule of its sequence on hand-made states,
and the shape every engine relies on (small named records, few parameters, compiled lazily)."""
from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

import core.decision as D
import core.simulator as S
import sweeps.kernel as K
from core.policy import Policy
from core.risk import ALLOW, HALT, R_DRAWDOWN, R_KILL, R_LEVERAGE, REDUCE

RULES = D.rules_of(Policy.default().replace(max_hold=8, limit_tif_bars=2, limit_confidence=0.5, profit=0.01,
                                            stop=0.005).to_array())
NAN = math.nan


def _state(position=0.0, equity=10_000.0, close=100.0, held=-1, entry_open=False, entry_alive=False, entry_age=0,
           closing=False, closing_alive=False, take_profit=NAN, stop=NAN) -> D.SymbolState:
    return D.SymbolState(position, equity, close, held, entry_open, entry_alive, entry_age, closing, closing_alive,
                         take_profit, stop)


def _sig(p=0.8, s=0.6, w=0.5, allowed=True, in_window=True) -> D.BarSignal:
    return D.BarSignal(p, s, w, allowed, in_window)


ALLOWED = D.Gate(ALLOW, 0, False, False, 0.95)


def test_rules_of_reads_the_policy_row():
    assert RULES == D.Rules(8, 2, 0.5, 0.01, 0.005, False)
    assert D.rules_of(Policy.default().replace(tie="profit").to_array()).tp_first


@pytest.mark.parametrize("stop, kind, reason", [(False, D.K_RISK, R_DRAWDOWN), (True, D.K_KILL, R_KILL)])
def test_a_breaker_flattens_and_closes_once(stop, kind, reason):
    gate = D.Gate(HALT, reason, True, stop, 0.0)
    a = D.decide(gate, _state(position=3.0), _sig(), RULES)
    assert a.mask == D.A_FLATTEN | D.A_CLOSE | (D.A_STOP if stop else 0) and a.kind == kind and a.why == reason
    # a close already working is not doubled; flat, only the working orders are cancelled
    assert D.decide(gate, _state(position=3.0, closing=True, closing_alive=True), _sig(), RULES).mask & D.A_CLOSE == 0
    assert D.decide(gate, _state(), _sig(), RULES).mask == D.A_FLATTEN | (D.A_STOP if stop else 0)


def test_leverage_cut_shrinks_to_the_cap_and_replaces_the_exits():
    gate = D.Gate(REDUCE, R_LEVERAGE, False, False, 0.5)
    a = D.decide(gate, _state(position=-80.0, equity=10_000.0, close=150.0, held=2, take_profit=140.0, stop=155.0),
                 _sig(), RULES)
    target = 0.5 * 10_000.0 / 150.0
    assert a.mask == D.A_REDUCE and not a.long
    assert a.cut == pytest.approx(80.0 - target) and a.keep == pytest.approx(target)  # buy back the excess
    assert (a.take_profit, a.stop) == (140.0, 155.0)
    # already under the cap: nothing
    assert D.decide(gate, _state(position=-10.0, close=150.0), _sig(), RULES).mask == 0


def test_time_exit_after_max_hold_bars_unless_a_close_is_in_flight():
    assert D.decide(ALLOWED, _state(position=1.0, held=7), _sig(), RULES).mask == 0
    a = D.decide(ALLOWED, _state(position=1.0, held=8), _sig(), RULES)
    assert a.mask == D.A_FLATTEN | D.A_CLOSE and a.kind == D.K_TIME
    assert D.decide(ALLOWED, _state(position=1.0, held=9, closing=True), _sig(), RULES).mask == 0
    assert D.decide(ALLOWED, _state(position=1.0, held=-1), _sig(), RULES).mask == 0  # entry bar not known yet
    # a cut and a time exit on the same bar: both, the cut first (the flatten cancels it)
    cut = D.decide(D.Gate(REDUCE, R_LEVERAGE, False, False, 0.1), _state(position=90.0, held=8), _sig(), RULES)
    assert cut.mask == D.A_REDUCE | D.A_FLATTEN | D.A_CLOSE and cut.kind == D.K_TIME


def test_a_working_limit_entry_expires_after_its_time_in_force():
    assert D.decide(ALLOWED, _state(entry_open=True, entry_alive=True, entry_age=1), _sig(), RULES).mask == 0
    assert D.decide(ALLOWED, _state(entry_open=True, entry_alive=True, entry_age=2), _sig(), RULES).mask == \
        D.A_CANCEL_ENTRY
    assert D.decide(ALLOWED, _state(entry_open=True, entry_alive=False, entry_age=5), _sig(), RULES).mask == 0


def test_entry_sizes_caps_and_brackets():
    a = D.decide(D.Gate(ALLOW, 0, False, False, 0.3), _state(equity=10_000.0, close=200.0), _sig(s=0.6, w=0.5), RULES)
    assert a.mask == D.A_DECIDED | D.A_ENTER and a.long and a.limit  # |s| 0.6 >= 0.5: limit at the close
    assert a.weight == 0.3 and a.size == pytest.approx(0.3 * 10_000.0 / 200.0) and a.price == 200.0
    assert (a.take_profit, a.stop) == pytest.approx((202.0, 199.0)) and not a.tp_first
    short = D.decide(ALLOWED, _state(close=200.0), _sig(s=-0.4, w=-0.2), RULES)
    assert not short.long and not short.limit and (short.take_profit, short.stop) == pytest.approx((198.0, 201.0))
    # a zero weight is a decision (counted), not an entry
    assert D.decide(ALLOWED, _state(), _sig(w=0.0), RULES).mask == D.A_DECIDED


@pytest.mark.parametrize("gate, sig", [(D.Gate(HALT, 5, False, False, 0.0), _sig()), (ALLOWED, _sig(allowed=False)),
                                       (ALLOWED, _sig(in_window=False))], ids=["halt", "hook", "window"])
def test_no_entry_and_no_count_when_blocked(gate, sig):
    assert D.decide(gate, _state(), sig, RULES).mask == 0


def test_signal_statistics():
    st = D.new_signal_stats()
    for p, s, w in ((0.8, 0.6, 0.5), (NAN, 0.0, 0.0), (0.4, -0.2, 0.0)):
        D.count_decision(st, p, s, w)
    assert D.signal_stats_dict(st) == {"decisions": 3, "scored": 2, "p_max": 0.8, "positive_signal": 1,
                                       "past_deadband": 1}


def test_compiled_step_equals_its_python_source():
    # the compiled function ModelStrategy, the simulator and the sweep call is this source
    for gate, st, sig in ((ALLOWED, _state(), _sig()), (D.Gate(REDUCE, R_LEVERAGE, False, False, 0.5),
                                                         _state(position=90.0, held=8, take_profit=1.0), _sig())):
        fast, slow = D.decide(gate, st, sig, RULES), D.decide.py_func(gate, st, sig, RULES)
        assert tuple(np.nan_to_num(fast)) == tuple(np.nan_to_num(slow))


def test_no_function_on_the_path_takes_more_than_ten_positional_parameters():
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    for module in (D, S, K):
        for name, fn in vars(module).items():
            py = getattr(fn, "py_func", fn)
            if inspect.isfunction(py) and py.__module__ == module.__name__:
                params = inspect.signature(py).parameters.values()
                assert sum(p.kind in positional for p in params) <= 10, f"{module.__name__}.{name}"
