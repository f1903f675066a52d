"""TCNProbability: runonce (batch) and next (streaming) give the same lines -- the lookahead
test -- on real and generated candles, including a data gap; feature lines likewise."""
from __future__ import annotations

import backtrader as bt
import numpy as np
import pandas as pd
import pytest

from core.synthetic import synthetic_ohlcv
from indicators.bt_features import FeatureLines, RealisedVol, VolForecast
from models.features import FEATURE_NAMES, compute_features
from indicators.tcn_indicator import TCNProbability
from models.bundle import load_bundle
from strategies.backtest import frame_feed
from core.timeframes import bars_per_year
from core.risk import realised_daily_vol


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


class _Probe(bt.Strategy):
    params = (("bundle", None), ("features", False))

    def __init__(self):
        self.tcn = TCNProbability(self.data, bundle=self.p.bundle) if self.p.bundle is not None else None
        if self.p.features:
            self.feats = FeatureLines(self.data)
            self.vol = VolForecast(self.data)
            self.rvol = RealisedVol(self.data, window=96)
        self.seen = 0

    def next(self):
        self.seen += 1


def _run(frame, runonce, **params):
    cerebro = bt.Cerebro(stdstats=False, runonce=runonce, preload=True)
    cerebro.adddata(frame_feed(frame))
    cerebro.addstrategy(_Probe, **params)
    return cerebro.run()[0]


def _line(line) -> np.ndarray:
    return np.frombuffer(line.array, dtype="float64").copy()


def _assert_modes_equal(bundle, frame):
    batch = _run(frame, True, bundle=bundle)
    stream = _run(frame, False, bundle=bundle)
    pb, ps = _line(batch.tcn.prob), _line(stream.tcn.prob)
    lb, ls = _line(batch.tcn.logit), _line(stream.tcn.logit)
    assert len(pb) == len(ps) == len(frame)
    assert np.array_equal(np.isnan(pb), np.isnan(ps))
    assert np.isfinite(pb).sum() > 0.8 * len(frame) - 2 * bundle.min_bars
    np.testing.assert_allclose(pb, ps, atol=1e-6, rtol=0, equal_nan=True)
    np.testing.assert_allclose(lb, ls, atol=1e-5, rtol=0, equal_nan=True)
    # ...and both equal the bundle's own batch scoring of the same bars
    np.testing.assert_allclose(pb, bundle.predict_proba(frame).to_numpy(), atol=1e-12, equal_nan=True)
    # minimum period: the strategy's next() starts once the model can score
    assert batch.seen == len(frame) - bundle.min_bars + 1
    return pb


def test_batch_equals_streaming_on_real_candles(bundle, real_candles):
    # ~3,000 real bars around the 5-bar gap after 2023-03-24 12:30
    gap_at = real_candles.index.get_loc(pd.Timestamp("2023-03-24 12:30", tz="UTC"))
    frame = real_candles.iloc[gap_at - 1500:gap_at + 1500]
    pb = _assert_modes_equal(bundle, frame)
    # the window never spans the gap: NaN for min_bars - 1 bars after it, then scored again
    after = 1501  # slice position 1500 is the last bar before the gap
    assert np.isnan(pb[after:after + bundle.min_bars - 1]).all()
    assert np.isfinite(pb[after + bundle.min_bars - 1])


def test_one_incremental_path_for_paper_and_server(bundle, real_candles):
    """The indicator's next() (paper/live) and score_window (the server) are the same BarScorer:
    on real candles the live-mode lines equal a BarScorer fed the bars directly (bit for bit) and
    consecutive score_window calls (primed from history_bars, then one bar a call) to 1e-9."""
    frame = real_candles.iloc[-(bundle.history_bars + 400):]
    stream = _run(frame, False, bundle=bundle)
    lines = _line(stream.tcn.prob)
    direct = bundle.stream()
    got = np.array([direct.update(ts, *row)[1] for ts, row in zip(frame.index, frame.to_numpy())])
    np.testing.assert_array_equal(got, lines)
    server = load_bundle(bundle.path)
    calls = [server.score_window(frame.iloc[:t + 1]) for t in range(len(frame) - 300, len(frame))]
    np.testing.assert_allclose(calls, lines[-300:], rtol=0, atol=1e-9)
    assert np.isfinite(calls).all()


def test_batch_equals_streaming_on_generated_candles(bundle):
    frame = synthetic_ohlcv(1200, seed=123, gaps={600: 4}, start="2024-06-01")
    pb = _assert_modes_equal(bundle, frame)
    assert np.isnan(pb[:bundle.min_bars - 1]).all() and np.isfinite(pb[bundle.min_bars - 1])


def test_no_lookahead_future_bars_do_not_change_past_values(bundle):
    frame = synthetic_ohlcv(900, seed=5)
    full = _line(_run(frame, True, bundle=bundle).tcn.prob)
    cut = _line(_run(frame.iloc[:600], True, bundle=bundle).tcn.prob)
    np.testing.assert_allclose(full[:600], cut, atol=1e-12, equal_nan=True)


def test_feature_lines_batch_equal_streaming_and_the_library():
    frame = synthetic_ohlcv(700, seed=3, gaps={300: 2})
    batch = _run(frame, True, features=True)
    stream = _run(frame, False, features=True)
    ref = compute_features(frame)
    for name in FEATURE_NAMES:
        b, s = _line(getattr(batch.feats.lines, name)), _line(getattr(stream.feats.lines, name))
        np.testing.assert_allclose(b, ref[name].to_numpy(), atol=1e-12, equal_nan=True)
        np.testing.assert_allclose(s, b, atol=1e-9, rtol=1e-9, equal_nan=True)
    vol_expected = ref["ewma_vol_fast"].to_numpy() * np.sqrt(bars_per_year("15m"))
    np.testing.assert_allclose(_line(batch.vol.vol), vol_expected, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(_line(stream.vol.vol), vol_expected, rtol=1e-9, equal_nan=True)
    rv = realised_daily_vol(frame["close"].to_numpy(), 96, index=frame.index)
    assert np.isnan(rv[301:301 + 96]).all() and np.isfinite(rv[301 + 96:]).all()  # restarts after the gap
    np.testing.assert_allclose(_line(batch.rvol.vol), rv, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(_line(stream.rvol.vol), rv, rtol=1e-9, equal_nan=True)
