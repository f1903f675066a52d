"""Triple-barrier event table: vectorised == brute-force reference, tie rule, horizon, gaps."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli.main import cli
from core.config import LabelConfig, load_config
from core.errors import ConfigError, DataError
from core.ohlcv import write_ohlcv_csv
from core.synthetic import synthetic_ohlcv
from models.labels import (
    EVENT_COLUMNS,
    breakeven_probability,
    label_events_reference,
    label_summary,
    triple_barrier_events,
    vol_barrier_factors,
)

STEP = pd.Timedelta("15min")


def bars(close, high=None, low=None, start="2024-01-01", missing_after: dict[int, int] | None = None):
    """Frame from explicit closes; high/low default to the close (no wick)."""
    close = np.asarray(close, dtype=float)
    high = close.copy() if high is None else np.asarray(high, dtype=float)
    low = close.copy() if low is None else np.asarray(low, dtype=float)
    offsets = np.arange(len(close))
    for pos, k in (missing_after or {}).items():
        offsets[pos + 1:] += k
    idx = pd.DatetimeIndex(pd.Timestamp(start, tz="UTC") + offsets * STEP, name="timestamp")
    return pd.DataFrame({"open": close, "high": high, "low": low, "close": close, "volume": 1.0}, index=idx)


def row(ev: pd.DataFrame, t: int) -> tuple:
    r = ev.iloc[t]
    return r["label"], r["exit_offset"], r["exit_kind"], r["exit_price"]


# ---------------------------------------------------------------- the rules, one by one

def test_profit_first_and_stop_first():
    c = np.full(12, 100.0)
    high, low = c.copy(), c.copy()
    high[3] = 100.9            # bar 0: profit at h=3 (barrier 100.8)
    low[5] = 99.5              # ... stop only later
    ev = triple_barrier_events(bars(c, high, low))
    assert row(ev, 0) == (1.0, 3.0, "profit", 100.0 * (1.0 + 0.008))
    assert ev["gross_return"].iloc[0] == pytest.approx(0.008, abs=1e-15)
    # bar 3 itself: stop at h=2 (bar 5), nothing higher afterwards
    assert row(ev, 3) == (0.0, 2.0, "stop", 100.0 * (1.0 - 0.004))
    assert ev["gross_return"].iloc[3] == pytest.approx(-0.004, abs=1e-15)


@pytest.mark.parametrize("tie,expected", [("stop", (0.0, 2.0, "stop", 99.6)), ("profit", (1.0, 2.0, "profit", 100.8))])
def test_tie_bar_touching_both(tie, expected):
    c = np.full(12, 100.0)
    high, low = c.copy(), c.copy()
    high[2], low[2] = 101.0, 99.0  # one wide bar touches both barriers of bar 0
    ev = triple_barrier_events(bars(c, high, low), LabelConfig(tie=tie))
    lab, off, kind, px = row(ev, 0)
    assert (lab, off, kind) == expected[:3]
    assert px == pytest.approx(expected[3], rel=1e-15)
    pd.testing.assert_frame_equal(ev, label_events_reference(bars(c, high, low), LabelConfig(tie=tie)))


def test_horizon_end_and_time_exit():
    c = 100.0 + 0.01 * np.arange(20)  # drifts up by far less than the barriers
    high, low = c.copy(), c.copy()
    high[9] = 200.0  # bar 1: touched exactly at h=8 -> profit; bar 0: at h=9 -> outside horizon
    ev = triple_barrier_events(bars(c, high, low))
    lab, off, kind, px = row(ev, 0)
    assert (lab, off, kind) == (0.0, 8.0, "time") and px == c[8]
    assert ev["gross_return"].iloc[0] == pytest.approx(c[8] / c[0] - 1, rel=1e-12)
    assert row(ev, 1)[:3] == (1.0, 8.0, "profit")
    # horizon of 3: bar 0 times out at close[3]
    ev3 = triple_barrier_events(bars(c, high, low), LabelConfig(horizon=3))
    assert row(ev3, 0) == (0.0, 3.0, "time", c[3])


def test_last_bars_without_full_horizon_are_unlabelled():
    ev = triple_barrier_events(bars(np.full(30, 50.0)))
    assert ev["label"].iloc[:22].notna().all()
    tail = ev.iloc[22:]
    assert tail["label"].isna().all() and tail["exit_offset"].isna().all()
    assert tail["exit_price"].isna().all() and tail["gross_return"].isna().all()
    assert (tail["exit_kind"] == "").all()
    # fewer bars than the horizon: nothing labelled, no crash; and an empty frame
    assert triple_barrier_events(bars(np.full(5, 50.0)))["label"].isna().all()
    empty = triple_barrier_events(bars(np.zeros(0)))
    assert len(empty) == 0 and tuple(empty.columns) == EVENT_COLUMNS


def test_exact_barrier_equality_counts_as_touch():
    c = np.full(12, 100.0)
    up, dn = 100.0 * (1.0 + 0.008), 100.0 * (1.0 - 0.004)
    high, low = c.copy(), c.copy()
    high[4] = up
    assert row(triple_barrier_events(bars(c, high, low)), 0)[:3] == (1.0, 4.0, "profit")
    high[4] = np.nextafter(up, 0.0)  # one ulp below: not a touch
    assert row(triple_barrier_events(bars(c, high, low)), 0)[2] == "time"
    high[4] = 100.0
    low[6] = dn
    assert row(triple_barrier_events(bars(c, high, low)), 0)[:3] == (0.0, 6.0, "stop")
    low[6] = np.nextafter(dn, 200.0)  # one ulp above: not a touch
    assert row(triple_barrier_events(bars(c, high, low)), 0)[2] == "time"


def test_horizon_crossing_a_gap_is_unlabelled():
    n, gap_after = 40, 19
    c = 100.0 + np.sin(np.arange(n))
    frame = bars(c, c * 1.01, c * 0.99, missing_after={gap_after: 3})
    ev = triple_barrier_events(frame)
    lab = ev["label"].notna().to_numpy()
    # t + 8 must stay within the stretch: t <= 11 before the gap, t in 20..31 after it
    expected = np.zeros(n, bool)
    expected[: gap_after - 8 + 1] = True
    expected[gap_after + 1: n - 8] = True
    np.testing.assert_array_equal(lab, expected)
    # bar 12 touches its profit barrier at h=1, before the gap, yet stays unlabelled
    assert frame["high"].iloc[13] >= frame["close"].iloc[12] * 1.008
    assert math.isnan(ev["label"].iloc[12])
    pd.testing.assert_frame_equal(ev, label_events_reference(frame))


# ------------------------------------------------------------- vectorised == reference

@st.composite
def random_case(draw):
    n = draw(st.integers(0, 80))
    seed = draw(st.integers(0, 2**32 - 1))
    horizon = draw(st.integers(1, 12))
    profit = draw(st.sampled_from([0.001, 0.004, 0.008, 0.02]))
    stop = draw(st.sampled_from([0.001, 0.004, 0.01]))
    tie = draw(st.sampled_from(["stop", "profit"]))
    gaps = draw(st.dictionaries(st.integers(0, max(n - 2, 0)), st.integers(1, 5), max_size=3))
    rng = np.random.default_rng(seed)
    vol = draw(st.sampled_from([0.001, 0.004, 0.01]))
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, vol, n)))
    open_ = np.r_[100.0, close[:-1]] if n else close
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, vol, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, vol, n)))
    # Plant exact barrier equalities (kept only where the bar stays a valid OHLC bar).
    for _ in range(draw(st.integers(0, 6)) if n > 1 else 0):
        t = int(rng.integers(0, n - 1))
        h = int(rng.integers(1, min(horizon, n - 1 - t) + 1))
        up, dn = close[t] * (1.0 + profit), close[t] * (1.0 - stop)
        if rng.random() < 0.5 and up >= max(open_[t + h], close[t + h]):
            high[t + h] = up
        elif dn <= min(open_[t + h], close[t + h]):
            low[t + h] = dn
    frame = bars(close, high, low, missing_after=gaps)
    frame["open"] = open_
    return frame, LabelConfig(profit=profit, stop=stop, horizon=horizon, tie=tie)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_case())
def test_vectorised_equals_reference_property(case):
    frame, cfg = case
    fast = triple_barrier_events(frame, cfg)
    ref = label_events_reference(frame, cfg)
    pd.testing.assert_frame_equal(fast, ref, check_exact=True)


def test_vectorised_equals_reference_generated_with_gaps():
    frame = synthetic_ohlcv(20000, seed=13, vol=0.003, gaps={5000: 1, 12000: 40})
    for cfg in (LabelConfig(), LabelConfig(tie="profit", horizon=20, profit=0.003, stop=0.003)):
        pd.testing.assert_frame_equal(triple_barrier_events(frame, cfg), label_events_reference(frame, cfg),
                                      check_exact=True)


def test_vectorised_equals_reference_real(real_candles):
    ev = triple_barrier_events(real_candles)
    pd.testing.assert_frame_equal(ev, label_events_reference(real_candles), check_exact=True)
    s = label_summary(ev)
    # 8 bars before each of the two gaps and the last 8 bars have no full horizon
    assert s["unlabelled"] == 24
    assert 0.0 < s["base_rate"] < 1.0


# ------------------------------------------------------------ break-even, summary, refusals

def test_breakeven_probability():
    assert breakeven_probability(0.008, 0.004) == pytest.approx(1 / 3, abs=1e-15)
    assert breakeven_probability(0.008, 0.004, 0.001) == pytest.approx(0.5, abs=1e-15)
    assert breakeven_probability(0.01, 0.01) == pytest.approx(0.5, abs=1e-15)
    # zero expected net return at the break-even probability, by the stated formula
    p, f = breakeven_probability(0.008, 0.004, 0.00075), 0.00075
    assert p * (0.008 - 2 * f) - (1 - p) * (0.004 + 2 * f) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ConfigError, match="does not cover the round-trip fee"):
        breakeven_probability(0.002, 0.004, 0.001)
    with pytest.raises(ConfigError):
        breakeven_probability(-0.01, 0.004)


def test_label_summary_counts():
    c = np.full(14, 100.0)
    high, low = c.copy(), c.copy()
    high[2] = 101.0   # bars 0,1 -> profit
    low[4] = 99.0     # bars 2,3 -> stop (bar 2 enters at 100 too)
    ev = triple_barrier_events(bars(c, high, low))
    s = label_summary(ev)
    assert s["rows"] == 14 and s["labelled"] == 6 and s["unlabelled"] == 8
    assert s["counts"] == {"profit": 2, "stop": 2, "time": 2}
    assert s["base_rate"] == pytest.approx(2 / 6)
    assert s["shares"]["stop"] == pytest.approx(1 / 3)
    assert s["mean_gross_return"]["profit"] == pytest.approx(0.008)
    assert s["mean_gross_return"]["time"] == pytest.approx(0.0)
    with pytest.raises(DataError, match="not an event table"):
        label_summary(ev.drop(columns=["exit_kind"]))


def test_refusals():
    frame = bars(np.full(20, 10.0))
    with pytest.raises(DataError, match="missing column"):
        triple_barrier_events(frame.drop(columns=["low"]))
    with pytest.raises(DataError, match="not strictly increasing"):
        triple_barrier_events(frame.iloc[::-1])
    bad = frame.copy()
    bad.iloc[4, 3] = np.nan
    with pytest.raises(DataError, match="non-finite close nan at row 5"):
        triple_barrier_events(bad)


# ------------------------------------------------------------------------------------ CLI

def test_cli_labels(tmp_path):
    frame = synthetic_ohlcv(3000, seed=21, gaps={1000: 2})
    path = tmp_path / "c.csv"
    write_ohlcv_csv(frame, path)
    res = CliRunner().invoke(cli, ["labels", "--data", str(path)])
    assert res.exit_code == 0, res.output
    s = label_summary(triple_barrier_events(frame))
    assert f"base rate:     {s['base_rate']:.4f}" in res.output
    assert f"labelled:      {s['labelled']:,} (16 without" in res.output
    assert "break-even P:  0.5000 after fees" in res.output and "0.3333 with zero fees" in res.output
    for kind in ("profit", "stop", "time"):
        assert f"{s['counts'][kind]:>9,}" in res.output
    res2 = CliRunner().invoke(cli, ["labels", "--data", str(path), "--set", "labels.profit=0.01",
                                    "--set", "execution.taker_fee=0"])
    assert res2.exit_code == 0 and "break-even P:  0.2857 after fees" in res2.output
    bad = CliRunner().invoke(cli, ["labels", "--data", str(tmp_path / "nope.csv")])
    assert bad.exit_code == 2 and "error:" in bad.output and "not found" in bad.output


def test_cli_labels_describes_volatility_scaled_barriers(tmp_path):
    """labels.scale: vol: the barriers line says how they are set (not the unused fixed
    percentages), the widths line gives their median and 5-95% range, and the break-even P is
    computed at the median widths and says so."""
    frame = synthetic_ohlcv(3000, seed=21)
    path = tmp_path / "c.csv"
    write_ohlcv_csv(frame, path)
    res = CliRunner().invoke(cli, ["labels", "--data", str(path), "--set", "labels.scale=vol"])
    assert res.exit_code == 0, res.output
    lc = load_config(None, ["labels.scale=vol"]).labels
    up, dn = vol_barrier_factors(frame, lc)
    ok = np.isfinite(up)
    profit, stop = float(np.median(up[ok] - 1)), float(np.median(1 - dn[ok]))
    assert "volatility-scaled barriers: profit +1.4 x, stop -0.7 x" in res.output and "+0.80%" not in res.output
    assert f"median profit +{profit * 100:.2f}%" in res.output and f"median stop -{stop * 100:.2f}%" in res.output
    be = breakeven_probability(profit, stop, 0.001)
    assert f"break-even P:  {be:.4f} after fees at the median widths" in res.output
    s = label_summary(triple_barrier_events(frame, lc))
    assert f"base rate:     {s['base_rate']:.4f}" in res.output
