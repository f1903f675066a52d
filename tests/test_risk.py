"""RiskManager: each breaker trips exactly once on a hand-built path, and the kill switch."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from core.config import RiskConfig
from core.synthetic import synthetic_ohlcv
from core.risk import RiskManager, realised_daily_vol

T0 = pd.Timestamp("2024-03-01 00:00", tz="UTC")
STEP = pd.Timedelta(minutes=15)


def _run(rm: RiskManager, equity, vol=None, pos=None, t0=T0, step=STEP):
    """Feed a path bar by bar; return the decisions."""
    out = []
    for i, eq in enumerate(equity):
        v = math.nan if vol is None else vol[i]
        p = 0.0 if pos is None else pos[i]
        out.append(rm.check(t0 + i * step, float(eq), float(p), v))
    return out


def _held_equity(prices, cash=0.0, units=1.0):
    """Equity of a constant position of ``units`` through a hand-built price path."""
    return cash + units * np.asarray(prices, dtype=float)


def test_drawdown_breaker_trips_once_halts_and_flattens(tmp_path):
    rm = RiskManager(RiskConfig(), kill_switch_file=tmp_path / "KILL")
    # 100 -> 120 (peak), down to 97 (19.2% drawdown: below the 20% limit), then 95 (20.8%),
    # then a recovery to 130 that must not lift the halt. One point per day, so no single
    # UTC day loses 5% and only the drawdown breaker can trip.
    prices = np.r_[np.linspace(100, 120, 10), np.linspace(119, 97, 12), [95.0, 94.0], np.linspace(100, 130, 10)]
    day = pd.Timedelta(days=1)
    dec = _run(rm, _held_equity(prices), step=day)
    first_halt = next(i for i, d in enumerate(dec) if d.action == "halt")
    assert prices[first_halt] == 95.0  # not at 97 (19.2%), exactly when 20% is crossed
    assert all(d.allow for d in dec[:first_halt])
    assert all(d.action == "halt" and d.flatten and not d.stop for d in dec[first_halt:])
    assert [t.breaker for t in rm.trips] == ["drawdown"]
    assert rm.trips[0].values["drawdown"] == pytest.approx(1 - 95 / 120)
    assert rm.trips[0].time == (T0 + first_halt * day).tz_convert(None).isoformat()


def test_drawdown_threshold_is_configurable(tmp_path):
    rm = RiskManager(RiskConfig(max_drawdown=0.5), kill_switch_file=tmp_path / "KILL")
    dec = _run(rm, _held_equity([100, 120, 95, 70]), step=pd.Timedelta(days=1))
    assert all(d.allow for d in dec) and rm.trips == []


def test_daily_loss_halts_until_next_utc_day(tmp_path):
    rm = RiskManager(RiskConfig(), kill_switch_file=tmp_path / "KILL")
    # Start at 20:00 UTC: 16 bars to midnight. Day 1 loses 4% (no trip); day 2 starts at
    # 96 and loses 6% intraday (trip), then recovers in the same day (still halted);
    # day 3 allows trading again.
    t0 = pd.Timestamp("2024-03-01 20:00", tz="UTC")
    day1 = np.linspace(100, 96, 16)
    day2 = np.r_[np.linspace(96, 90.5, 40), np.linspace(90.5, 97, 56)]
    day3 = np.linspace(97, 96, 20)
    eq = np.r_[day1, day2, day3]
    dec = _run(rm, eq, t0=t0)
    assert all(d.allow for d in dec[:16])
    halted = [i for i, d in enumerate(dec) if d.action == "halt"]
    assert halted, "a 6% intraday loss must trip the daily-loss breaker"
    first = halted[0]
    assert 1 - eq[first] / 96 > 0.05 and 1 - eq[first - 1] / 96 <= 0.05
    assert halted == list(range(first, 16 + 96))  # halted for the rest of day 2 only
    assert all(d.flatten for d in dec[first:112])
    assert all(d.allow for d in dec[112:])
    assert [t.breaker for t in rm.trips] == ["daily_loss"]


def test_daily_loss_measured_from_day_start_not_from_session_start(tmp_path):
    rm = RiskManager(RiskConfig(max_drawdown=0.9), kill_switch_file=tmp_path / "KILL")
    # Four days losing 4% each: 15% in all, but never 5% within one UTC day.
    eq = np.concatenate([np.linspace(100 * 0.96**d, 100 * 0.96**(d + 1), 96) for d in range(4)])
    dec = _run(rm, eq)
    assert all(d.allow for d in dec)
    assert rm.trips == []


def test_realised_daily_vol_definition():
    rng = np.random.default_rng(3)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 300)))
    vol = realised_daily_vol(close, window=96, timeframe="15m")
    assert np.isnan(vol[:96]).all() and np.isfinite(vol[96:]).all()
    r = np.diff(np.log(close))
    assert vol[200] == pytest.approx(np.std(r[200 - 96:200], ddof=1) * math.sqrt(96))
    # 1h bars: 24 bars a day
    assert realised_daily_vol(close, 24, "1h")[50] == pytest.approx(np.std(r[26:50], ddof=1) * math.sqrt(24))


def test_volatility_breaker_trips_once_and_blocks_entries_without_flattening(tmp_path):
    rm = RiskManager(RiskConfig(), kill_switch_file=tmp_path / "KILL")
    rng = np.random.default_rng(0)
    # Calm (0.2% per bar ~ 2%/day), a violent spell (2% per bar ~ 20%/day), calm again.
    r = np.r_[rng.normal(0, 0.002, 300), rng.normal(0, 0.02, 60), rng.normal(0, 0.002, 400)]
    close = 100 * np.exp(np.cumsum(r))
    vol = realised_daily_vol(close, rm.cfg.vol_window_bars)
    eq = np.full(len(close), 1000.0)  # flat account: only the market's volatility matters
    dec = _run(rm, eq, vol=vol)
    halted = np.array([d.action == "halt" for d in dec])
    assert np.array_equal(halted, np.nan_to_num(vol) > 0.10)
    assert halted.any() and not halted[-1]
    assert not any(d.flatten for d in dec)
    assert [t.breaker for t in rm.trips] == ["volatility"]
    assert rm.trips[0].values["realised_vol"] > 0.10


def test_kill_switch_flattens_and_stops(tmp_path):
    kill = tmp_path / "KILL"
    rm = RiskManager(RiskConfig(), kill_switch_file=kill)
    dec = [rm.check(T0 + i * STEP, 1000.0, 500.0, 0.02) for i in range(5)]
    assert all(d.allow for d in dec)
    kill.write_text("stop")
    d = rm.check(T0 + 5 * STEP, 1000.0, 500.0, 0.02)
    assert d.action == "halt" and d.flatten and d.stop
    kill.unlink()  # once killed, the session stays killed
    assert rm.check(T0 + 6 * STEP, 1000.0, 0.0, 0.02).stop
    assert [t.breaker for t in rm.trips] == ["kill_switch"]


def test_leverage_reduce_and_weight_cap(tmp_path):
    rm = RiskManager(RiskConfig(max_position=0.95, max_leverage=1.0), kill_switch_file=tmp_path / "KILL")
    assert rm.cap_weight(1.4) == pytest.approx(0.95)
    assert rm.cap_weight(-3.0) == pytest.approx(-0.95)
    assert rm.cap_weight(0.5) == pytest.approx(0.5)
    assert rm.check(T0, 1000.0, 990.0, 0.02).action == "allow"
    d = rm.check(T0 + STEP, 1000.0, -1200.0, 0.02)
    assert d.action == "reduce" and d.max_weight == pytest.approx(0.95)
    tight = RiskManager(RiskConfig(max_position=0.95, max_leverage=0.5), kill_switch_file=tmp_path / "KILL")
    assert tight.cap_weight(0.9) == pytest.approx(0.5)


def test_state_round_trip_keeps_halts(tmp_path):
    rm = RiskManager(RiskConfig(), kill_switch_file=tmp_path / "KILL")
    _run(rm, [100, 120, 90], step=pd.Timedelta(days=1))
    other = RiskManager(RiskConfig(), kill_switch_file=tmp_path / "KILL")
    other.load_state(rm.state_dict())
    assert other.check(T0 + 10 * STEP, 130.0, 0.0, 0.01).action == "halt"
    assert [t.breaker for t in other.trips] == ["drawdown"]


def test_realised_vol_never_spans_a_gap():
    # A 30% jump across a 50-bar gap is not a 15-minute return: it must not reach the window.
    frame = synthetic_ohlcv(400, seed=5, vol=0.001, gaps={199: 50})
    frame.iloc[200:, :4] *= 1.3
    close = frame["close"].to_numpy()
    with_gaps = realised_daily_vol(close, 96, index=frame.index)
    assert np.isnan(with_gaps[200:296]).all()            # window restarts after the gap
    assert np.nanmax(with_gaps) < 0.02                     # ~0.1% per bar x sqrt(96) ~ 1%/day
    naive = realised_daily_vol(close, 96)                  # without timestamps the jump shows
    assert np.nanmax(naive) > 0.2


def test_realised_vol_streaming_equals_batch_bit_for_bit():
    """A live session computes the last bar's value from its trailing window alone: it must be
    the very number the batch definition gives that bar (each window computed on its own)."""
    from core.synthetic import synthetic_ohlcv

    frame = synthetic_ohlcv(900, seed=3, gaps={400: 5})
    close = frame["close"].to_numpy()
    batch = realised_daily_vol(close, 96, "15m", index=frame.index)
    first = int(np.flatnonzero(np.diff(frame.index.asi8) != 900 * 10**9)[0]) + 1  # first bar after the gap
    for t in (200, first - 1, first + 95, first + 96, 899):
        tail = frame.iloc[t - 96: t + 1]
        value = realised_daily_vol(tail["close"].to_numpy(), 96, "15m", index=tail.index)[-1]
        assert (np.isnan(value) and np.isnan(batch[t])) or value == batch[t], t
    assert np.isnan(batch[first + 95]) and np.isfinite(batch[first + 96])  # restarts after the gap
    ref = pd.Series(np.r_[np.nan, np.diff(np.log(close))]).rolling(96).std().to_numpy() * np.sqrt(96)
    np.testing.assert_allclose(batch[:first], ref[:first], rtol=1e-12)  # the textbook rolling std
