"""ModelStrategy.state_dict / load_state: a run saved after bar k and resumed on a fresh
cerebro from bar k+1 (same broker cash and position, working orders re-submitted) makes the
same fills, trades and equity as the uninterrupted run -- mid-trade, with a limit entry
working, a time exit or a risk cut in flight, and a take profit waiting for activation."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from core.config import load_config
from core.synthetic import synthetic_ohlcv
from core.trades import round_trips
from strategies.backtest import run_backtest

from bt_helpers import LineStrategy, loose_risk, with_lines


class _Saver(LineStrategy):
    """Records state_dict() after every decision from trade_start on, with the number of fills
    the run had made by then (what the resumed run must not repeat)."""

    runs: list["_Saver"] = []

    def __init__(self) -> None:
        super().__init__()
        self.saved: dict[pd.Timestamp, tuple[dict, int]] = {}
        _Saver.runs.append(self)

    def next(self) -> None:
        super().next()
        if self._start_num is not None and self.data.datetime[0] < self._start_num:
            return
        state = self.state_dict()
        self.saved[pd.Timestamp(state["time"])] = (state, len(self.analyzers.fills._rows))  # fills so far


def _scenarios(saved: dict) -> dict[str, pd.Timestamp]:
    """The first bar of each kind of state worth restoring (not too close to the end)."""
    found: dict[str, pd.Timestamp] = {}
    times = sorted(saved)[:-40]
    for t in times:
        st = saved[t][0]
        roles = [o["role"] for o in st["orders"]]
        kinds = {
            "open_with_exits": st["trade"] and st["trade"]["entry_time"] and roles == ["exit", "exit"]
            and all(o["active"] for o in st["orders"]),
            "limit_entry_working": roles[:1] == ["entry"] and st["orders"][0]["exectype"] == "Limit"
            and st["orders"][0]["bars_working"] >= 1,
            "market_entry_submitted": roles[:1] == ["entry"] and st["orders"][0]["exectype"] == "Market",
            "time_exit_in_flight": "closing" in roles,
            "take_profit_waiting": roles == ["exit", "exit"] and not all(o["active"] for o in st["orders"]),
            "risk_cut_in_flight": "cut" in roles,
        }
        for name, hit in kinds.items():
            if hit and name not in found:
                found[name] = t
    return found


def _run(frame, cfg, tmp_path, start=None, state=None, coc=False, **kw):
    _Saver.runs.clear()
    kwargs = {"risk": loose_risk(tmp_path), **kw}
    if state is not None:
        kwargs["state"] = state
    res = run_backtest(None, frame, cfg, strategy=_Saver, start=start, coc=coc, progress=False,
                       strategy_kwargs=kwargs)
    return res, _Saver.runs[-1]


def _resume_and_compare(frame, cfg, tmp_path, full, saver, when: pd.Timestamp, coc: bool, **kw):
    state, n_fills = saver.saved[when]
    state = json.loads(json.dumps(state))  # JSON round trip, as a journal stores it
    nxt = frame.index[frame.index.get_loc(when) + 1]
    res, resumed = _run(frame, cfg, tmp_path, start=nxt, state=state, coc=coc, **kw)
    # the resumed broker holds the saved cash and position from its first bar on
    assert res.equity["cash"].iloc[0] == pytest.approx(full.equity["cash"].loc[nxt], rel=1e-12)
    assert res.equity["position"].iloc[0] == full.equity["position"].loc[nxt]
    # the fills after the save point, fill for fill
    after = full.fills.iloc[n_fills:].reset_index(drop=True)
    mine = res.fills.reset_index(drop=True)
    cols = ["time", "side", "kind", "order_type"]
    assert len(after) == len(mine) > 0
    assert (after[cols] == mine[cols]).all().all()
    for col in ("price", "size", "commission"):
        np.testing.assert_allclose(mine[col], after[col], rtol=1e-12)
    # equity bar for bar from k+1, hence the same final equity
    np.testing.assert_allclose(res.equity["equity"], full.equity["equity"].loc[nxt:], rtol=1e-12)
    # the trades of (fills before the save) + (fills of the resumed run) are the full run's trades
    glued = round_trips(pd.concat([full.fills.iloc[:n_fills], res.fills], ignore_index=True), frame.index,
                        last_close=float(frame["close"].iloc[-1]))
    pd.testing.assert_frame_equal(glued.drop(columns=["entry_bar", "exit_bar"]),
                                  full.trades.drop(columns=["entry_bar", "exit_bar", "model_id"], errors="ignore"), rtol=1e-12)
    assert resumed.risk.state_dict()["trips"] == saver.risk.state_dict()["trips"]
    assert resumed.signal_stats == pytest.approx(saver.signal_stats, nan_ok=True)
    return len(after)


@pytest.mark.parametrize("coc", [False, True], ids=["next_open", "coc"])
def test_resume_long_only_mid_trade_and_with_orders_working(tmp_path, coc):
    frame = synthetic_ohlcv(1400, seed=12, vol=0.004)
    prob = np.random.default_rng(2).uniform(0.55, 1.0, len(frame))
    cfg = load_config(overrides=["execution.maker_fee=0.0005"])
    kw = dict(limit_confidence=0.75, limit_tif_bars=3)
    full, saver = _run(with_lines(frame, prob, 0.5), cfg, tmp_path, coc=coc, **kw)
    assert len(full.trades) > 50
    found = _scenarios(saver.saved)
    expected = {"open_with_exits", "limit_entry_working", "market_entry_submitted", "time_exit_in_flight",
                "take_profit_waiting"}
    assert expected <= set(found), sorted(found)
    for name in sorted(expected):
        assert _resume_and_compare(with_lines(frame, prob, 0.5), cfg, tmp_path, full, saver, found[name], coc,
                                   **kw) > 0, name


def test_resume_with_a_risk_cut_in_flight(tmp_path):
    # A short of 95% of equity while the price rises: the leverage limit cuts it (reduce_to:
    # a market cut plus re-placed OCO exits) -- saved right after the cut was decided.
    r = np.r_[np.zeros(120), np.full(60, np.log(1.06) / 60), np.zeros(200)]
    close = 100.0 * np.exp(np.cumsum(r))
    idx = pd.date_range("2024-03-04", periods=len(close), freq="15min", tz="UTC", name="timestamp")
    open_ = np.r_[100.0, close[:-1]]
    frame = pd.DataFrame({"open": open_, "high": np.maximum(open_, close) * 1.0001,
                          "low": np.minimum(open_, close) * 0.9999, "close": close, "volume": 1.0}, index=idx)
    prob = np.full(len(frame), np.nan)
    prob[100] = 0.02
    cfg = load_config(overrides=["data.market=margin", "strategy.allow_short=true"])
    kw = dict(limit_confidence=2.0, profit=0.5, stop=0.5, max_hold=150)
    data = with_lines(frame, prob, 0.25)
    full, saver = _run(data, cfg, tmp_path, **kw)
    assert (full.fills["kind"] == "risk").sum() >= 1
    found = _scenarios(saver.saved)
    assert "risk_cut_in_flight" in found
    state = saver.saved[found["risk_cut_in_flight"]][0]
    assert [o["role"] for o in state["orders"]] == ["cut", "exit", "exit"]
    assert state["trade"]["reference_price"] == pytest.approx(frame["close"].iloc[100])
    assert state["trade"]["stop"] == pytest.approx(frame["close"].iloc[100] * 1.5)
    assert _resume_and_compare(data, cfg, tmp_path, full, saver, found["risk_cut_in_flight"], False, **kw) > 0


def test_state_dict_is_json_and_names_the_trade(tmp_path):
    frame = synthetic_ohlcv(400, seed=4, vol=0.003)
    full, saver = _run(with_lines(frame, 0.9, 0.5), load_config(), tmp_path, limit_confidence=2.0, max_hold=50,
                       profit=0.5, stop=0.5)
    t = next(t for t, (st, _) in sorted(saver.saved.items()) if st["trade"] and st["trade"]["entry_time"])
    state = saver.saved[t][0]
    assert json.loads(json.dumps(state)) == json.loads(json.dumps(state, default=str))  # nothing but JSON types
    assert set(state) == {"version", "time", "broker", "trade", "orders", "risk", "signal_stats",
                          "stopped_by_kill_switch", "saw_probability"}
    trade = state["trade"]
    ref = trade["reference_price"]
    assert (trade["take_profit"], trade["stop"]) == pytest.approx((ref * 1.5, ref * 0.5))
    entry = full.fills[full.fills["kind"] == "entry"].iloc[0]
    assert state["broker"]["position"]["size"] == pytest.approx(entry["size"])
    assert {o["kind"] for o in state["orders"]} == {"stop", "take_profit"}
    assert all(o["side"] == "sell" and o["size"] == pytest.approx(entry["size"]) for o in state["orders"])
    assert state["risk"]["day"] is not None and state["signal_stats"]["decisions"] >= 1
    with pytest.raises(ValueError, match="version"):
        saver.load_state({**state, "version": 99})
