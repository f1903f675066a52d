"""The 12 features: causality, batch == streaming, independent reference values, gaps."""
from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest

from core.config import FeatureConfig
from core.errors import DataError
from core.synthetic import synthetic_ohlcv
from models.features import (
    FEATURE_NAMES,
    StreamingFeatures,
    compute_features,
    feature_definitions_hash,
    warmup_bars,
)

COLS = ["open", "high", "low", "close", "volume"]


def stream_all(frame: pd.DataFrame, cfg: FeatureConfig | None = None) -> np.ndarray:
    sf = StreamingFeatures(cfg)
    arrays = [frame[c].to_numpy() for c in COLS]
    return np.array([sf.update(ts, *vals) for ts, *vals in zip(frame.index, *arrays)])


def assert_same(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> None:
    assert a.shape == b.shape
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, equal_nan=True)


def test_names_shape_dtype(candles):
    feats = compute_features(candles)
    assert tuple(feats.columns) == FEATURE_NAMES == (
        "log_returns_1", "log_returns_5", "realized_vol_20", "ewma_vol_fast", "ewma_vol_slow",
        "momentum_20", "rsi_14", "volume_zscore", "spread", "sma_crossover",
        "time_of_day_sin", "day_of_week_sin")
    assert feats.index.equals(candles.index)
    assert (feats.dtypes == "float64").all()
    # After warm-up in each stretch everything is finite (no NaN leaks from the middle).
    assert np.isfinite(feats.iloc[200:1400].to_numpy()).all()


@pytest.mark.parametrize("n,k", [(97, 1), (150, 500), (1500, 3), (1505, 7), (1511, 200), (2999, 1)])
def test_causality_prefix(candles, n, k):
    """Features of bars[:n] equal the first n rows of features of bars[:n+k]."""
    short = compute_features(candles.iloc[:n]).to_numpy()
    long = compute_features(candles.iloc[: n + k]).to_numpy()[:n]
    assert_same(short, long, rtol=0, atol=1e-12)


def test_future_bars_cannot_move_the_past(candles):
    """Rewriting every bar after n leaves rows <= n unchanged."""
    n = 2000
    altered = candles.copy()
    altered.iloc[n:, :4] *= 1.5
    altered.iloc[n:, 4] *= 0.1
    a = compute_features(candles).to_numpy()[:n]
    b = compute_features(altered).to_numpy()[:n]
    assert_same(a, b, rtol=0, atol=1e-12)


def test_batch_equals_streaming_generated():
    frame = synthetic_ohlcv(2500, seed=11, gaps={700: 1, 1800: 30})
    # A stretch of equal volumes exercises the zero-std rule of volume_zscore in both paths.
    frame.iloc[1000:1200, 4] = 12.5
    batch = compute_features(frame).to_numpy()
    streamed = stream_all(frame)
    assert_same(batch, streamed, rtol=1e-9, atol=1e-9)
    assert (batch[1199, 7] == 0.0) and (streamed[1199, 7] == 0.0)


def test_batch_equals_streaming_nondefault_cfg():
    cfg = FeatureConfig(return_lag_long=3, realized_vol_window=7, ewma_vol_fast_span=5,
                        ewma_vol_slow_span=33, momentum_window=9, rsi_window=6,
                        volume_z_window=12, sma_fast=2, sma_slow=11)
    frame = synthetic_ohlcv(600, seed=3, gaps={250: 2})
    assert_same(compute_features(frame, cfg).to_numpy(), stream_all(frame, cfg), rtol=1e-9, atol=1e-9)


def test_batch_equals_streaming_real(real_candles):
    """All 85k real bars, including both gaps (14,166 and 5 bars)."""
    batch = compute_features(real_candles).to_numpy()
    streamed = stream_all(real_candles)
    assert_same(batch, streamed, rtol=1e-9, atol=1e-9)
    assert np.isfinite(batch[warmup_bars() - 1:]).mean() > 0.99


def _prime_then_stream(frame: pd.DataFrame, k: int) -> np.ndarray:
    sf = StreamingFeatures()
    sf.prime(frame.iloc[:k])
    rest = frame.iloc[k:]
    return np.array([sf.update(ts, *vals) for ts, vals in zip(rest.index, rest[COLS].to_numpy())]).reshape(-1, 12)


@pytest.mark.parametrize("k", [0, 1, 2, 5, 21, 97, 700, 701, 702, 705, 1500, 2499])
def test_primed_stream_continues_bit_for_bit(k):
    """prime(bars[:k]) then update() per bar == update() on every bar (gaps at 700 and 1800)."""
    frame = synthetic_ohlcv(2500, seed=11, gaps={700: 1, 1800: 30})
    full = stream_all(frame)
    np.testing.assert_array_equal(_prime_then_stream(frame, k), full[k:])


def test_primed_stream_on_real_candles(real_candles):
    """Primed from 1,391 warm-up bars (or from the whole history before them), the stream
    continues exactly like the batch features of the whole span (to 1e-9, the batch tolerance)."""
    n = len(real_candles)
    frame = real_candles.iloc[n - 3000:]
    batch = compute_features(real_candles).to_numpy()[n - 1609:]
    for start in (n - 3000, 0):
        sf = StreamingFeatures()
        sf.prime(real_candles.iloc[start:n - 1609])
        rest = frame.iloc[-1609:]
        got = np.array([sf.update(ts, *v) for ts, v in zip(rest.index, rest[COLS].to_numpy())])
        assert_same(got, batch, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------- independent straightforward references

def _reference(frame: pd.DataFrame) -> np.ndarray:
    """Plain-Python loop over one stretch (no gaps), written from the stated definitions."""
    c = list(frame["close"]); h = list(frame["high"]); lo = list(frame["low"]); v = list(frame["volume"])
    n = len(c)
    out = np.full((n, 12), np.nan)
    r = [math.nan] + [math.log(c[t] / c[t - 1]) for t in range(1, n)]
    ew_f = ew_s = None
    gain_avg = loss_avg = 0.0
    for t in range(n):
        out[t, 0] = r[t]
        if t >= 5:
            out[t, 1] = math.log(c[t] / c[t - 5])
        if t >= 20:
            out[t, 2] = statistics.stdev(r[t - 19: t + 1])
        if t >= 1:
            x = r[t] ** 2
            ew_f = x if ew_f is None else (1 - 2 / 21) * ew_f + 2 / 21 * x
            ew_s = x if ew_s is None else (1 - 2 / 97) * ew_s + 2 / 97 * x
            if t >= 20:
                out[t, 3] = math.sqrt(ew_f)
            if t >= 96:
                out[t, 4] = math.sqrt(ew_s)
            d = c[t] - c[t - 1]
            gain_avg = gain_avg * 13 / 14 + max(d, 0.0) / 14
            loss_avg = loss_avg * 13 / 14 + max(-d, 0.0) / 14
        if t >= 20:
            out[t, 5] = c[t] / c[t - 20] - 1
        if t >= 13:
            out[t, 6] = 100.0 if loss_avg == 0 else 100 - 100 / (1 + gain_avg / loss_avg)
        if t >= 95:
            win = v[t - 95: t + 1]
            sd = statistics.stdev(win)
            out[t, 7] = 0.0 if sd == 0 else (v[t] - statistics.fmean(win)) / sd
        out[t, 8] = (h[t] - lo[t]) / c[t]
        if t >= 19:
            out[t, 9] = (sum(c[t - 4: t + 1]) / 5) / (sum(c[t - 19: t + 1]) / 20) - 1
        ts = frame.index[t].to_pydatetime()
        out[t, 10] = math.sin(2 * math.pi * (ts.hour * 60 + ts.minute) / 1440)
        out[t, 11] = math.sin(2 * math.pi * ts.weekday() / 7)
    return out


def test_each_feature_against_straightforward_reference():
    frame = synthetic_ohlcv(400, seed=5, start="2024-03-09 17:30")
    batch = compute_features(frame).to_numpy()
    ref = _reference(frame)
    for k, name in enumerate(FEATURE_NAMES):
        np.testing.assert_array_equal(np.isnan(batch[:, k]), np.isnan(ref[:, k]), err_msg=name)
        np.testing.assert_allclose(batch[:, k], ref[:, k], rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=name)


def test_calendar_features_known_values():
    idx = pd.DatetimeIndex(["2024-01-01 00:00", "2024-01-03 06:00", "2024-01-06 12:00", "2024-01-07 18:45"],
                           tz="UTC", name="timestamp")  # Mon, Wed, Sat, Sun
    frame = pd.DataFrame({"open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 1.0}, index=idx)
    f = compute_features(frame)
    np.testing.assert_allclose(f["time_of_day_sin"], [0.0, 1.0, 0.0, math.sin(2 * math.pi * 1125 / 1440)],
                               atol=1e-15)
    np.testing.assert_allclose(f["day_of_week_sin"], [0.0, math.sin(4 * math.pi / 7), math.sin(10 * math.pi / 7),
                                                      math.sin(12 * math.pi / 7)], atol=1e-15)


def test_rsi_converges_to_textbook_wilder():
    """ta's RSI seeds the Wilder averages with 0 on bar 0; the textbook seeds them with the
    mean of the first 14 changes. The gap decays like (13/14)^k: stated tolerances."""
    frame = synthetic_ohlcv(400, seed=9)
    rsi = compute_features(frame)["rsi_14"].to_numpy()
    d = np.diff(frame["close"].to_numpy())
    g, lo = np.maximum(d, 0), np.maximum(-d, 0)
    ag, al = g[:14].mean(), lo[:14].mean()
    wilder = np.full(len(frame), np.nan)
    wilder[14] = 100 - 100 / (1 + ag / al)
    for t in range(15, len(frame)):
        ag = (ag * 13 + g[t - 1]) / 14
        al = (al * 13 + lo[t - 1]) / 14
        wilder[t] = 100 - 100 / (1 + ag / al)
    assert np.nanmax(np.abs(rsi[96:] - wilder[96:])) < 0.5
    assert np.nanmax(np.abs(rsi[300:] - wilder[300:])) < 1e-6


# ----------------------------------------------------------------------------------- gaps

def test_gap_policy_restarts_each_stretch():
    gap_after = 1200
    frame = synthetic_ohlcv(1600, seed=2, gaps={gap_after: 2})  # two missing bars = 45 minutes
    feats = compute_features(frame)
    after = feats.iloc[gap_after + 1:]
    # The first bar after the gap has no 1-bar return (it would span 45 minutes).
    assert np.isnan(after["log_returns_1"].iloc[0])
    # Everything after the gap equals the features of that stretch computed alone.
    alone = compute_features(frame.iloc[gap_after + 1:])
    assert_same(after.to_numpy(), alone.to_numpy(), rtol=0, atol=0)
    # And the window features are NaN again for the warm-up of the new stretch.
    w = warmup_bars()
    assert after.iloc[: w - 1].isna().any(axis=1).all()
    assert np.isfinite(after.iloc[w - 1:].to_numpy()).all()
    # Without the gap the same bars would have a finite return: the NaN is the policy.
    no_gap = compute_features(synthetic_ohlcv(1600, seed=2))
    assert np.isfinite(no_gap["log_returns_1"].iloc[gap_after + 1])


def test_streaming_resets_on_gap_and_refuses_time_travel():
    frame = synthetic_ohlcv(300, seed=4, gaps={150: 1})
    sf = StreamingFeatures()
    rows = [sf.update(ts, *row) for ts, row in zip(frame.index, frame[COLS].to_numpy())]
    assert np.isnan(rows[151][0]) and np.isfinite(rows[150][0])
    assert sf.bars_in_stretch == 300 - 151
    last = frame.iloc[-1]
    with pytest.raises(DataError, match="not after the previous bar"):
        sf.update(frame.index[-1], *last[COLS])
    with pytest.raises(DataError, match="not after the previous bar"):
        sf.update(frame.index[-5], *last[COLS])
    with pytest.raises(DataError, match="invalid bar"):
        sf.update(frame.index[-1] + pd.Timedelta("15min"), 1.0, 1.0, 1.0, float("nan"), 1.0)
    sf.reset()
    assert sf.bars_in_stretch == 0
    first = sf.update(frame.index[0], *frame.iloc[0][COLS])  # accepted again after reset()
    assert np.isnan(first[0]) and np.isfinite(first[8])


# -------------------------------------------------------------------------- warm-up, hash, refusals

@pytest.mark.parametrize("cfg", [
    FeatureConfig(),
    FeatureConfig(ewma_vol_slow_span=30, volume_z_window=150),
    FeatureConfig(ewma_vol_slow_span=10, volume_z_window=10, rsi_window=40, ewma_vol_fast_span=5),
    FeatureConfig(ewma_vol_slow_span=10, volume_z_window=10, ewma_vol_fast_span=5, sma_slow=60),
    FeatureConfig(ewma_vol_slow_span=10, volume_z_window=10, ewma_vol_fast_span=5, return_lag_long=70),
])
def test_warmup_bars_is_exact(cfg):
    feats = compute_features(synthetic_ohlcv(400, seed=1), cfg).to_numpy()
    finite = np.isfinite(feats).all(axis=1)
    w = warmup_bars(cfg)
    assert not finite[: w - 1].any()
    assert finite[w - 1:].all()


def test_first_finite_position_of_each_feature():
    feats = compute_features(synthetic_ohlcv(300, seed=1)).to_numpy()
    first = [int(np.flatnonzero(np.isfinite(feats[:, k]))[0]) for k in range(12)]
    assert first == [1, 5, 20, 20, 96, 20, 13, 95, 0, 19, 0, 0]
    assert warmup_bars() == 97


def test_definitions_hash():
    h = feature_definitions_hash()
    assert len(h) == 64 and int(h, 16) >= 0
    assert h == feature_definitions_hash(FeatureConfig())
    assert h != feature_definitions_hash(FeatureConfig(rsi_window=15))


def test_refusals(candles):
    with pytest.raises(DataError, match="missing column"):
        compute_features(candles.drop(columns=["volume"]))
    swapped = candles.iloc[[0, 2, 1, 3]]
    with pytest.raises(DataError, match="not strictly increasing at row 3"):
        compute_features(swapped)
    bad = candles.copy()
    bad.iloc[10, 3] = np.inf
    with pytest.raises(DataError, match="non-finite close inf at row 11"):
        compute_features(bad)


@pytest.mark.parametrize("column, value", [("close", -5.0), ("close", 0.0), ("open", -1.0), ("high", 0.0),
                                           ("low", -0.01), ("volume", -3.0)])
def test_batch_refuses_invalid_bars_like_streaming(column, value):
    """A non-positive price (or negative volume) on one bar is refused by both paths with the
    same DataError, instead of NaN rows after warm-up in batch."""
    frame = synthetic_ohlcv(300, seed=6)
    frame.iloc[200, frame.columns.get_loc(column)] = value
    with pytest.raises(DataError, match=r"invalid bar at row 201 .*" + column + "=") as exc:
        compute_features(frame)
    assert "\n" not in str(exc.value)
    sf = StreamingFeatures()
    with pytest.raises(DataError, match="invalid bar"):
        for ts, *vals in zip(frame.index, *(frame[c].to_numpy() for c in COLS)):
            sf.update(ts, *vals)
    assert sf.bars_in_stretch == 200  # refused exactly at that bar


def test_batch_requires_the_open_column(candles):
    with pytest.raises(DataError, match="missing column.*open"):
        compute_features(candles.drop(columns=["open"]))
