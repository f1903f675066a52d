"""ModelStrategy exits vs the label table, order types, breakers and kill switch in backtrader,
cost model, registry."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.config import LabelConfig, load_config
from core.costs import Costs
from core.errors import ConfigError
from core.synthetic import synthetic_ohlcv
from models.labels import triple_barrier_events
from strategies.backtest import run_backtest
from strategies.base import ModelStrategy
from strategies.registry import resolve_strategy

from bt_helpers import LineStrategy, loose_risk, with_lines

KIND = {"take_profit": "profit", "stop": "stop", "time": "time"}


def _parity(tmp_path, frame, tie):
    cfg = load_config(overrides=[f"labels.tie={tie}"])
    data = with_lines(frame, 0.9, 0.5)  # always bullish: enters whenever flat
    res = run_backtest(None, data, cfg, strategy=LineStrategy, costs=Costs.zero(), coc=True, progress=False,
                       strategy_kwargs={"risk": loose_risk(tmp_path), "limit_confidence": 2.0})
    events = triple_barrier_events(frame, LabelConfig(tie=tie))
    trades = res.trades[res.trades["status"] == "closed"]
    return res, events, trades


@pytest.mark.parametrize("tie", ["stop", "profit"])
def test_trades_match_label_events(tmp_path, tie):
    frame = synthetic_ohlcv(1500, seed=21, vol=0.003)
    res, events, trades = _parity(tmp_path, frame, tie)
    assert len(trades) > 100
    close = frame["close"].to_numpy()
    checked = 0
    for t in trades.itertuples():
        ev = events.iloc[t.entry_bar]
        if ev["exit_kind"] == "":  # no full horizon: only in the last `horizon` bars
            assert t.entry_bar >= len(frame) - 8
            continue
        checked += 1
        assert t.entry_price == pytest.approx(close[t.entry_bar], rel=1e-12)
        assert KIND[t.exit_kind] == ev["exit_kind"], f"trade entered at bar {t.entry_bar}"
        assert t.hold_bars == ev["exit_offset"], f"trade entered at bar {t.entry_bar}"
        if ev["exit_kind"] == "time":
            assert t.exit_price == pytest.approx(ev["exit_price"], rel=1e-12)
        else:
            # backtrader fills at the open when the bar gaps through the barrier; the label
            # books the barrier price: equal unless gapped, and never better than the barrier.
            o = frame["open"].iloc[t.exit_bar]
            gapped = (o >= ev["exit_price"]) if ev["exit_kind"] == "profit" else (o <= ev["exit_price"])
            if not gapped:
                assert t.exit_price == pytest.approx(ev["exit_price"], rel=1e-12)
    assert checked >= len(trades) - 3
    kinds = set(trades["exit_kind"])
    assert kinds == {"take_profit", "stop", "time"}


def test_tie_bar_goes_to_the_configured_side(tmp_path):
    frame = synthetic_ohlcv(300, seed=2, vol=0.003)
    # Bar 101 touches both barriers of an entry at close[100].
    c = frame["close"].iloc[100]
    frame.iloc[101, frame.columns.get_loc("high")] = c * 1.02
    frame.iloc[101, frame.columns.get_loc("low")] = c * 0.98
    frame.iloc[101, frame.columns.get_loc("open")] = c
    frame.iloc[101, frame.columns.get_loc("close")] = c
    prob = np.full(len(frame), np.nan)
    prob[100] = 0.9
    for tie, kind in (("stop", "stop"), ("profit", "take_profit")):
        cfg = load_config(overrides=[f"labels.tie={tie}"])
        res = run_backtest(None, with_lines(frame, prob, 0.5), cfg, strategy=LineStrategy, costs=Costs.zero(),
                           coc=True, progress=False,
                           strategy_kwargs={"risk": loose_risk(tmp_path), "limit_confidence": 2.0})
        assert len(res.trades) == 1
        t = res.trades.iloc[0]
        assert (t.entry_bar, t.exit_bar, t.exit_kind) == (100, 101, kind)


def test_limit_order_when_confident_market_otherwise(tmp_path):
    frame = synthetic_ohlcv(600, seed=4)
    cfg = load_config()
    common = dict(costs=Costs.from_config(cfg), progress=False)
    high = run_backtest(None, with_lines(frame, 0.9, 0.5), cfg, strategy=LineStrategy,
                        strategy_kwargs={"risk": loose_risk(tmp_path), "limit_confidence": 0.5}, **common)
    low = run_backtest(None, with_lines(frame, 0.7, 0.3), cfg, strategy=LineStrategy,
                       strategy_kwargs={"risk": loose_risk(tmp_path), "limit_confidence": 0.5}, **common)
    he = high.fills[high.fills["kind"] == "entry"]
    le = low.fills[low.fills["kind"] == "entry"]
    assert len(he) > 5 and len(le) > 5
    assert (he["order_type"] == "Limit").all()    # |s| = 0.8 >= 0.5
    assert (le["order_type"] == "Market").all()   # |s| = 0.4 < 0.5
    # limit entries fill at the signal close or better, maker fee; market pays taker + slippage
    closes = frame["close"]
    for f in he.itertuples():
        signal_close = closes.iloc[closes.index.get_loc(f.time) - 1]
        assert f.price <= signal_close * (1 + 1e-12)
        assert f.commission == pytest.approx(abs(f.value) * cfg.execution.maker_fee)


class _OrderLog(LineStrategy):
    """LineStrategy that records (bar, kind, status) of every order notification."""

    def __init__(self) -> None:
        super().__init__()
        self.order_log: list[tuple[int, str, str]] = []

    def notify_order(self, order) -> None:
        self.order_log.append((self._bar, order.info.get("kind", ""), order.getstatusname()))
        super().notify_order(order)


def test_limit_entry_expires_after_tif(tmp_path, monkeypatch):
    frame = synthetic_ohlcv(300, seed=8, vol=0.003)
    # Bars 50-52 (the 3 bars the limit works) gap up 5%; from bar 53 on the price is back
    # 3% below the start level: the buy limit at close[49] would fill at bar 53 had it not
    # been cancelled at the end of bar 52.
    ramp = np.r_[np.ones(50), np.full(3, 1.05), np.full(247, 0.97)]
    for col in ("open", "high", "low", "close"):
        frame[col] = frame[col] * ramp
    frame["low"] = np.minimum(frame["low"], frame[["open", "close"]].min(axis=1))
    frame["high"] = np.maximum(frame["high"], frame[["open", "close"]].max(axis=1))
    limit = frame["close"].iloc[49]
    assert (frame["low"].iloc[50:53] > limit).all()      # never touched while working
    assert (frame["low"].iloc[53:60] <= limit).any()     # touched again right after the TIF
    prob = np.full(len(frame), np.nan)
    prob[49] = 0.95
    cfg = load_config()
    captured = {}
    real_init = _OrderLog.__init__

    def keep(self):
        real_init(self)
        captured["strategy"] = self

    monkeypatch.setattr(_OrderLog, "__init__", keep)
    res = run_backtest(None, with_lines(frame, prob, 0.5), cfg, strategy=_OrderLog, progress=False,
                       strategy_kwargs={"risk": loose_risk(tmp_path), "limit_confidence": 0.5, "limit_tif_bars": 3})
    assert len(res.fills) == 0  # the limit expired unfilled and nothing else was signalled
    log = [(bar, status) for bar, kind, status in captured["strategy"].order_log if kind == "entry"]
    # submitted on the signal bar 49, cancelled in bar 52's next() (3 bars after submission)
    assert (49, "Submitted") in log and (49, "Accepted") in log
    assert [b for b, st in log if st == "Canceled"] == [52]
    assert all(st != "Completed" for _, st in log)


def _hold_path(n_flat: int, moves: np.ndarray, start: str = "2024-03-04") -> pd.DataFrame:
    """Hand-built candles: flat then the given per-bar log returns; tiny wicks."""
    r = np.r_[np.zeros(n_flat), moves]
    close = 100.0 * np.exp(np.cumsum(r))
    open_ = np.r_[100.0, close[:-1]]
    high = np.maximum(open_, close) * 1.0001
    low = np.minimum(open_, close) * 0.9999
    idx = pd.date_range(start, periods=len(close), freq="15min", tz="UTC", name="timestamp")
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": 1.0}, index=idx)


def _hold_run(tmp_path, frame, prob, **risk):
    """Wide barriers and a long hold, so only the risk manager can end a position."""
    cfg = load_config()
    return run_backtest(None, with_lines(frame, prob, 0.5), cfg, strategy=LineStrategy, costs=Costs.zero(),
                        progress=False,
                        strategy_kwargs={"risk": loose_risk(tmp_path, **risk), "limit_confidence": 2.0,
                                         "profit": 0.9, "stop": 0.9, "max_hold": 100000})


def test_drawdown_breaker_flattens_once_and_halts(tmp_path):
    # +10% over 2 days, then a slide of -35% over ~10 days (never 5% within a day).
    frame = _hold_path(100, np.r_[np.full(192, np.log(1.10) / 192), np.full(960, np.log(0.65) / 960), np.zeros(200)])
    res = _hold_run(tmp_path, frame, 0.95, max_drawdown=0.20, daily_loss=0.5)
    trips = [t["breaker"] for t in res.risk_trips]
    assert trips == ["drawdown"]
    assert res.trades["exit_kind"].tolist() == ["risk"]  # one position, flattened by the breaker
    eq = res.equity["equity"]
    dd_at_trip = 1 - eq.loc[:res.risk_trips[0]["time"]].iloc[-1] / eq.cummax().loc[:res.risk_trips[0]["time"]].iloc[-1]
    assert dd_at_trip > 0.20
    # halted: no entry after the flatten although the signal stays bullish
    assert (res.fills["kind"] == "entry").sum() == 1


def test_daily_loss_breaker_halts_until_next_day(tmp_path):
    # Day 1 (from 00:00): flat. At 10:00 a 7% drop over 2 hours; the rest of the day flat;
    # the next day the strategy may trade again.
    moves = np.r_[np.full(8, np.log(0.93) / 8), np.zeros(96 + 48)]
    frame = _hold_path(40, moves, start="2024-03-04 00:00")
    res = _hold_run(tmp_path, frame, 0.95, daily_loss=0.05)
    assert [t["breaker"] for t in res.risk_trips] == ["daily_loss"]
    trip_day = pd.Timestamp(res.risk_trips[0]["time"]).date()
    entries = res.fills[res.fills["kind"] == "entry"]
    assert res.trades["exit_kind"].iloc[0] == "risk"
    later = entries[entries["time"] > res.trades["exit_time"].iloc[0]]
    assert len(later) >= 1 and all(t.date() > trip_day for t in later["time"])


def test_volatility_breaker_blocks_entries(tmp_path):
    rng = np.random.default_rng(1)
    moves = np.r_[rng.normal(0, 0.002, 200), rng.normal(0, 0.03, 40), rng.normal(0, 0.002, 300)]
    frame = _hold_path(0, moves)
    cfg = load_config()
    res = run_backtest(None, with_lines(frame, 0.9, 0.5), cfg, strategy=LineStrategy, costs=Costs.zero(),
                       progress=False, strategy_kwargs={"risk": loose_risk(tmp_path, max_volatility=0.10),
                                                        "limit_confidence": 2.0})
    from core.risk import realised_daily_vol

    vol = pd.Series(realised_daily_vol(frame["close"].to_numpy(), 96), index=frame.index)
    assert [t["breaker"] for t in res.risk_trips] == ["volatility"]
    entries = res.fills[res.fills["kind"] == "entry"]
    # an entry fills at the open after its signal bar: the signal bar's vol must be below 10%
    signal_bars = [frame.index.get_loc(t) - 1 for t in entries["time"]]
    assert len(signal_bars) > 10
    assert not (vol.iloc[signal_bars] > 0.10).any()  # NaN (warm-up) = no vol check
    assert (vol > 0.10).sum() > 20  # the spell was long enough to matter


class _KillAt(LineStrategy):
    """Creates the kill-switch file at bar 150 (stands in for an operator)."""

    def next(self):
        if self._bar + 1 == 150:
            open(self.risk.kill_switch_file, "w").close()
        super().next()


def test_kill_switch_flattens_and_stops_the_run(tmp_path):
    frame = _hold_path(120, np.full(300, 0.0005))
    cfg = load_config()
    res = run_backtest(None, with_lines(frame, 0.95, 0.5), cfg, strategy=_KillAt, costs=Costs.zero(),
                       progress=False, strategy_kwargs={"risk": loose_risk(tmp_path), "limit_confidence": 2.0,
                                                        "profit": 0.9, "stop": 0.9, "max_hold": 100000})
    assert [t["breaker"] for t in res.risk_trips] == ["kill_switch"]
    assert res.trades["exit_kind"].tolist() == ["kill"]
    assert res.trades["status"].tolist() == ["closed"]
    assert res.metrics["run"]["stopped_by_kill_switch"]
    assert len(res.equity) < len(frame) - 100  # the run ended early


def test_costs_from_config_and_commission(tmp_path):
    cfg = load_config(overrides=["execution.taker_fee=0.002", "execution.maker_fee=0.0005",
                                 "execution.slippage_bps=10"])
    costs = Costs.from_config(cfg)
    assert (costs.taker_fee, costs.maker_fee, costs.slippage) == (0.002, 0.0005, 0.001)
    frame = synthetic_ohlcv(400, seed=9)
    res = run_backtest(None, with_lines(frame, 0.7, 0.3), cfg, strategy=LineStrategy, progress=False,
                       strategy_kwargs={"risk": loose_risk(tmp_path), "limit_confidence": 0.5})
    f = res.fills
    market = f[f["order_type"].isin(["Market", "Stop"])]
    limit = f[f["order_type"] == "Limit"]
    assert len(market) and len(limit)
    assert np.allclose(market["commission"], market["value"].abs() * 0.002)
    assert np.allclose(limit["commission"], limit["value"].abs() * 0.0005)
    # market entries pay slippage on the open (capped at the bar's high)
    ent = f[(f["kind"] == "entry") & (f["order_type"] == "Market")]
    opens = frame["open"].loc[ent["time"]].to_numpy()
    highs = frame["high"].loc[ent["time"]].to_numpy()
    assert np.allclose(ent["price"].to_numpy(), np.minimum(opens * 1.001, highs))
    assert res.metrics["strategy"]["fees_paid"] == pytest.approx(f["commission"].sum())


def test_registry_resolves_names_and_module_paths():
    from strategies.examples import NightOnly
    from strategies.tcn import TCNStrategy

    assert resolve_strategy("tcn") is TCNStrategy
    assert resolve_strategy("night_only") is NightOnly
    assert resolve_strategy("strategies.examples:NightOnly") is NightOnly
    for bad in ("nope", "strategies.examples:Missing", "no_such_module_xyz:Foo", "core.costs:Costs"):
        with pytest.raises(ConfigError):
            resolve_strategy(bad)


@pytest.mark.parametrize("bad", ["strategies.base:ModelStrategy", ModelStrategy, "backtrader:Strategy", "test_strategy:NoProbability"])
def test_registry_refuses_abstract_and_foreign_classes(bad):
    # the abstract base (or a subclass without make_probability) would raise NotImplementedError
    # deep inside backtrader; anything else is not a ModelStrategy: one line each
    with pytest.raises(ConfigError, match="make_probability|not a subclass") as err:
        resolve_strategy(bad)
    assert "\n" not in str(err.value)


class NoProbability(ModelStrategy):
    """A subclass that forgot make_probability."""

    def signal(self, p, bars):
        return 0.0 * p


def test_leverage_above_limit_is_reduced_without_flipping(tmp_path):
    # A short of 95% of equity while the price rises: |position| / equity passes 1.0 (max
    # leverage) after ~+3%, and the risk manager cuts it back to 95%, re-placing the exits.
    frame = _hold_path(120, np.r_[np.full(60, np.log(1.06) / 60), np.zeros(100)])
    cfg = load_config()
    prob = np.full(len(frame), np.nan)
    prob[100] = 0.02  # one short entry at the close of bar 100; vol 0.25 -> w clipped to -0.95
    res = run_backtest(None, with_lines(frame, prob, 0.25), cfg, strategy=LineStrategy, costs=Costs.zero(),
                       coc=True, progress=False,
                       strategy_kwargs={"risk": loose_risk(tmp_path), "limit_confidence": 2.0, "allow_short": True,
                                        "profit": 0.5, "stop": 0.5, "max_hold": 150})
    cuts = res.fills[res.fills["kind"] == "risk"]
    assert len(cuts) >= 1 and (cuts["side"] == "buy").all()
    eq = res.equity
    for cut in cuts.itertuples():
        # the cut fills at the close of the bar it was decided on (coc, no costs), so equity
        # is unchanged by it and the remaining short is 95% of that bar's equity
        row = eq.loc[cut.time]
        assert abs(row["position"] * row["close"]) / row["equity"] > 1.0
        assert abs((row["position"] + cut.size) * row["close"]) / row["equity"] == pytest.approx(0.95, rel=1e-9)
    # weight never beyond the limit by more than one bar's drift, and never flipped long
    w = eq["position"] * eq["close"] / eq["equity"]
    assert (eq["position"] <= 1e-12).all()
    assert w.min() > -1.01
    assert len(res.trades) == 1 and res.trades["exit_kind"].iloc[0] == "time"
    assert res.trades["exit_bar"].iloc[0] == 250


def _limit_fill_frame(bar_open: float, fill_low: float, fill_high: float) -> tuple[pd.DataFrame, float]:
    """Flat candles; bar 101 opens at ``bar_open`` x close[100] with the given low/high
    (multiples of close[100]); bar 102 reaches 1.01 x close[100] (above the take profit)."""
    frame = _hold_path(300, np.zeros(0))
    c = frame["close"].iloc[100]
    frame.iloc[101, :4] = [c * bar_open, c * fill_high, c * fill_low, c * 1.001]
    frame.iloc[102, :4] = [c * 1.001, c * 1.01, c * 1.0, c * 1.001]
    frame.iloc[103:, :4] = np.array([c * 1.001, c * 1.0011, c * 1.0009, c * 1.001])
    return frame, c


def _limit_run(tmp_path, frame):
    prob = np.full(len(frame), np.nan)
    prob[100] = 0.9  # |s| = 0.8 >= limit_confidence: buy limit at close[100]
    return run_backtest(None, with_lines(frame, prob, 0.5), load_config(), strategy=LineStrategy,
                        costs=Costs.zero(), progress=False,
                        strategy_kwargs={"risk": loose_risk(tmp_path), "limit_confidence": 0.5})


def test_mid_bar_limit_fill_takes_profit_from_the_next_bar_only(tmp_path):
    # Bar 101 opens 0.3% above the limit, trades down to it (fill mid-bar) and has a high
    # above the take profit -- which may have come before the fill: not booked on bar 101.
    frame, c = _limit_fill_frame(1.003, 0.999, 1.02)
    res = _limit_run(tmp_path, frame)
    entry = res.fills[res.fills["kind"] == "entry"]
    assert len(entry) == 1 and entry["order_type"].iloc[0] == "Limit"
    assert entry["time"].iloc[0] == frame.index[101] and entry["price"].iloc[0] == pytest.approx(c)
    assert len(res.trades) == 1
    t = res.trades.iloc[0]
    assert (t.exit_bar, t.exit_kind) == (102, "take_profit")
    assert t.exit_price == pytest.approx(c * 1.008)


def test_mid_bar_limit_fill_still_stops_on_the_fill_bar(tmp_path):
    # Same mid-bar fill, but bar 101 also trades through the stop: the stop acts at once.
    frame, c = _limit_fill_frame(1.003, 0.99, 1.02)
    t = _limit_run(tmp_path, frame).trades.iloc[0]
    assert (t.exit_bar, t.exit_kind) == (101, "stop")
    assert t.exit_price == pytest.approx(c * 0.996)


def test_limit_fill_at_the_open_keeps_same_bar_take_profit(tmp_path):
    # Bar 101 opens below the limit: filled at the open, the whole bar follows the fill.
    frame, c = _limit_fill_frame(0.9995, 0.9994, 1.02)
    res = _limit_run(tmp_path, frame)
    t = res.trades.iloc[0]
    assert res.fills["price"].iloc[0] == pytest.approx(c * 0.9995)
    assert (t.exit_bar, t.exit_kind) == (101, "take_profit")


class _CutThenClose(LineStrategy):
    """Decides a risk cut and a full close in the same next() (bar 103)."""

    def next(self) -> None:
        super().next()
        if self._bar == 103 and self.position.size:
            self.reduce_to(0.3)
            self.flatten("time")


def test_flatten_cancels_a_pending_cut_so_the_close_never_flips(tmp_path):
    # Flat at 100, then +2% from bar 130: exits that reduce_to re-placed at bar 103 (take
    # profit 100.8) would open a short there if the flatten in the same bar left them working.
    frame = _hold_path(130, np.r_[np.full(20, np.log(1.02) / 20), np.zeros(150)])
    prob = np.full(len(frame), np.nan)
    prob[100] = 0.9
    res = run_backtest(None, with_lines(frame, prob, 0.5), load_config(), strategy=_CutThenClose,
                       costs=Costs.zero(), coc=True, progress=False,
                       strategy_kwargs={"risk": loose_risk(tmp_path), "limit_confidence": 2.0, "max_hold": 50})
    f = res.fills
    entry = f[f["kind"] == "entry"]
    assert len(entry) == 1
    assert (f["kind"] == "risk").sum() == 0                       # the cut was cancelled, not filled
    close = f[f["kind"] == "time"]
    assert len(close) == 1 and close["size"].iloc[0] == pytest.approx(-entry["size"].iloc[0])
    assert (res.equity["position"].iloc[105:] == 0).all()         # flat afterwards, never short
    assert len(res.trades) == 1 and res.trades["status"].iloc[0] == "closed"


def test_cagr_uses_calendar_time_not_the_bar_count():
    from strategies.metrics import equity_metrics

    # 1,000 bars of 15m growing 10% in total, with a 30-day hole in the middle: 10.4 days
    # of bars, 40.4 calendar days from the first to the last bar.
    t = pd.date_range("2024-01-01", periods=1000, freq="15min", tz="UTC")
    t = t[:500].append(t[500:] + pd.Timedelta(days=30))
    eq = pd.Series(100.0 * 1.1 ** (np.arange(1000) / 999), index=t)
    years = (t[-1] - t[0]) / pd.Timedelta(days=365)
    m = equity_metrics(eq, "15m")
    assert m["cagr"] == pytest.approx(1.1 ** (1 / years) - 1, rel=1e-9)
    # without the hole: the same formula on the contiguous span
    flat = pd.Series(eq.to_numpy(), index=pd.date_range("2024-01-01", periods=1000, freq="15min", tz="UTC"))
    assert equity_metrics(flat, "15m")["cagr"] == pytest.approx(1.1 ** (365 * 96 / 999) - 1, rel=1e-9)


def test_time_exit_counts_clock_time_across_a_data_gap(tmp_path):
    # Entry at the close of bar 100; bars 103..152 are missing. Eight bars of clock time have
    # passed by the first bar after the gap, so the time exit is there, not 8 *rows* later.
    full = _hold_path(200, np.zeros(0))
    frame = full.drop(full.index[103:153])
    prob = np.full(len(frame), np.nan)
    prob[100] = 0.9
    cfg = load_config()
    res = run_backtest(None, with_lines(frame, prob, 0.5), cfg, strategy=LineStrategy, costs=Costs.zero(),
                       coc=True, progress=False,
                       strategy_kwargs={"risk": loose_risk(tmp_path), "limit_confidence": 2.0,
                                        "profit": 0.5, "stop": 0.5, "max_hold": 8})
    assert len(res.trades) == 1
    trade = res.trades.iloc[0]
    assert trade["exit_kind"] == "time"
    assert pd.Timestamp(trade["exit_time"]) == full.index[153]  # first bar after the gap


@pytest.mark.parametrize("p, positive", [(0.45, False), (0.9, True)])
def test_signal_stats_say_why_a_run_trades_or_not(tmp_path, p, positive):
    frame = _hold_path(300, np.zeros(0))
    res = run_backtest(None, with_lines(frame, p, 0.5), load_config(), strategy=LineStrategy, costs=Costs.zero(),
                       coc=True, progress=False, strategy_kwargs={"risk": loose_risk(tmp_path), "limit_confidence": 2.0})
    sig = res.metrics["run"]["signal"]
    assert sig["decisions"] > 0 and sig["scored"] == sig["decisions"] and sig["p_max"] == pytest.approx(p)
    if positive:
        # every flat bar open to an entry produced one; entries equal the decisions that passed
        assert sig["positive_signal"] == sig["past_deadband"] == sig["decisions"]
        assert (res.fills["kind"] == "entry").sum() == sig["past_deadband"]
    else:
        assert sig["positive_signal"] == sig["past_deadband"] == 0 and len(res.fills) == 0
