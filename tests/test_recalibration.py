"""Causal rolling recalibration: P at bar t never changes when later bars are appended, only
labels whose horizon has ended are used, the fit recovers a drifting base rate, and the
static calibrator is the fallback when too few labels are known."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.config import CalibrationConfig, LabelConfig, load_config
from core.errors import BundleError
from core.synthetic import synthetic_ohlcv
from models.calibration import Calibrator, sigmoid
from models.recalibration import (
    RollingCalibrated,
    fit_platt,
    known_labels,
    rolling_params,
    rolling_probabilities,
)
from models.schedule import load_model
from models.train import train_bundle

CCFG = CalibrationConfig(mode="rolling", window_bars=400, refit_bars=24, min_samples=100)
STATIC = Calibrator("platt", {"a": 1.0, "b": 0.0})


def _series(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    index = pd.date_range("2024-01-01 05:30", periods=n, freq="15min", tz="UTC").as_unit("ns")
    z = rng.normal(0, 1, n)
    drift = np.linspace(-2.0, -0.5, n)          # the base rate drifts upwards
    y = (rng.random(n) < sigmoid(1.5 * z + drift)).astype(float)
    return index, z, y


def test_fit_platt_matches_maximum_likelihood():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.5, 20000)
    y = (rng.random(len(z)) < sigmoid(2.0 * z - 1.0)).astype(float)
    a, b = fit_platt(z, y)
    ref = Calibrator.fit(z, y, "platt").params  # sklearn's (lbfgs, C=1e6) near-maximum likelihood
    assert a == pytest.approx(ref["a"], abs=2e-3) and b == pytest.approx(ref["b"], abs=2e-3)

    def nll(a, b):
        p = sigmoid(a * z + b)
        return -np.sum(y * np.log(p) + (1 - y) * np.log(1 - p))

    assert nll(a, b) <= nll(ref["a"], ref["b"]) + 1e-9  # Newton reaches the maximum at least as well
    assert nll(a, b) < min(nll(a + 0.01, b), nll(a, b + 0.01), nll(a - 0.01, b), nll(a, b - 0.01))


def test_appending_bars_never_changes_an_earlier_p():
    index, z, y = _series()
    full = rolling_probabilities(index, z, y, 8, CCFG, "15m", STATIC)
    for cut in (700, 1234, 2001):
        # later bars appended = the same prefix with different (here: random) later values
        z2, y2 = z.copy(), y.copy()
        z2[cut:] = np.random.default_rng(cut).normal(0, 3, len(z) - cut)
        y2[cut:] = 1.0 - y2[cut:]
        other = rolling_probabilities(index, z2, y2, 8, CCFG, "15m", STATIC)
        np.testing.assert_array_equal(full[:cut], other[:cut])
        short = rolling_probabilities(index[:cut], z[:cut], y[:cut], 8, CCFG, "15m", STATIC)
        np.testing.assert_array_equal(full[:cut], short)


def test_only_labels_whose_horizon_ended_are_used():
    index, z, y = _series(1200)
    a, _ = rolling_params(index, z, y, 8, CCFG, "15m")
    t = 900
    block_start = int(np.flatnonzero((index.asi8 // (24 * 900 * 10**9)) == index.asi8[t] // (24 * 900 * 10**9))[0])
    grid = (index.asi8[t] // (24 * 900 * 10**9)) * (24 * 900 * 10**9)
    # the first label NOT yet known at the block's grid start: its horizon ends after the grid start
    first_unknown = int(np.searchsorted(index.asi8 + 8 * 900 * 10**9, grid, side="right"))
    y2 = y.copy()
    y2[first_unknown:] = 1.0 - y2[first_unknown:]   # flip every label not yet known
    a2, _ = rolling_params(index, z, y2, 8, CCFG, "15m")
    assert a[block_start] == a2[block_start] and np.isfinite(a[block_start])
    y3 = y.copy()
    y3[first_unknown - 1] = 1.0 - y3[first_unknown - 1]  # the last known label does count
    a3, _ = rolling_params(index, z, y3, 8, CCFG, "15m")
    assert a3[block_start] != a[block_start]


def test_the_networks_training_span_is_never_used():
    index, z, y = _series(3000, seed=4)
    cut = int(index.asi8[1500])
    a, _ = rolling_params(index, z, y, 8, CCFG, "15m", fitted_until=cut)
    y2 = y.copy()
    y2[:1501] = 1.0 - y2[:1501]
    a2, _ = rolling_params(index, z, y2, 8, CCFG, "15m", fitted_until=cut)
    np.testing.assert_array_equal(a, a2)
    assert np.isnan(a[:1500 + CCFG.min_samples]).all() and np.isfinite(a[-1000:]).all()


def test_rolling_follows_a_drifting_base_rate_and_falls_back_when_few_labels():
    index, z, y = _series(6000, seed=3)
    static = Calibrator.fit(z[:1500], y[:1500], "platt")
    rolled = rolling_probabilities(index, z, y, 8, CCFG, "15m", static)
    late = slice(4500, 6000)
    # the static calibrator under-forecasts the later, higher base rate; the rolling one follows it
    gap_static = abs(static(z[late]).mean() - y[late].mean())
    gap_rolling = abs(rolled[late].mean() - y[late].mean())
    assert gap_rolling < gap_static / 2
    # before min_samples labels are known the static calibrator is used
    a, _ = rolling_params(index, z, y, 8, CCFG, "15m")
    first_fit = int(np.flatnonzero(np.isfinite(a))[0])
    np.testing.assert_array_equal(rolled[:first_fit], static(z[:first_fit]))
    assert first_fit >= CCFG.min_samples + 8  # min_samples labels whose 8-bar horizon has ended


def test_known_labels_have_no_label_without_full_horizon():
    frame = synthetic_ohlcv(300, seed=2, gaps={150: 3})
    lab = known_labels(frame, LabelConfig(), "15m")
    assert np.isnan(lab[-8:]).all() and np.isnan(lab[143:151]).all() and np.isfinite(lab[:140]).all()


@pytest.fixture(scope="module")
def rolling_bundle(tmp_path_factory):
    frame = synthetic_ohlcv(3000, seed=11, gaps={1800: 10})
    cfg = load_config(None, ["model.window=16", "model.channels=[8,8]", "model.dilations=[1,2]",
                             "model.head_units=8", "training.epochs=1", "training.batch_size=128",
                             "training.threads=1", "calibration.mode=rolling", "calibration.window_bars=300",
                             "calibration.refit_bars=24", "calibration.min_samples=100"])
    out = tmp_path_factory.mktemp("rb") / "b"
    train_bundle(frame, cfg, out, progress=False)
    return out, synthetic_ohlcv(2500, seed=12, start="2024-03-01")


def test_rolling_bundle_is_causal_on_bars(rolling_bundle):
    out, frame = rolling_bundle
    model = load_model(out)
    assert isinstance(model, RollingCalibrated)
    full = model.predict_proba(frame).to_numpy()
    part = model.predict_proba(frame.iloc[:1700]).to_numpy()
    np.testing.assert_array_equal(full[:1700], part)
    assert np.isfinite(full[-500:]).all()
    # rolling fits are in use on most of the frame (not only the static fallback)
    static = model.inner.predict_proba(frame).to_numpy()
    assert np.mean(np.abs(full[1000:] - static[1000:]) > 1e-9) > 0.9
    # score_window on the trailing bars gives the batch value of the last bar
    assert model.score_window(frame.iloc[:2000]) == pytest.approx(full[1999], abs=1e-6)
    with pytest.raises(BundleError, match="score_window"):
        model.score_features(np.zeros((16, 12)))
    with pytest.raises(BundleError):
        model.calibrate(np.zeros(3))


# --------------------------------------------------------------- calibration.mode at trade time
ROLLING_RUN = ["calibration.mode=rolling", "calibration.window_bars=300", "calibration.refit_bars=24",
               "calibration.min_samples=100"]


def test_run_config_rolling_recalibrates_a_static_bundle_causally(fast_bundle):
    """``--set calibration.mode=rolling`` on a run (RunSpec: backtest, sweep, paper, live, server)
    puts causal rolling Platt on top of a bundle trained static: P at bar t is unchanged when
    later bars are appended, the refits are really in use, and the stream equals the batch."""
    from models.streaming import BarScorer
    from strategies.runspec import RunSpec

    frame = synthetic_ohlcv(3000, seed=12, start="2024-03-01")
    plain = RunSpec.build(load_config(None), model=fast_bundle)
    assert not isinstance(plain.bundle, RollingCalibrated)  # the default run keeps the trained (static) mode
    cfg = load_config(None, ROLLING_RUN)
    spec = RunSpec.build(cfg, model=fast_bundle)
    model = spec.bundle
    assert isinstance(model, RollingCalibrated) and model.ccfg == cfg.calibration
    assert spec.warmup > plain.warmup  # the rolling window's history is fed before the first traded bar
    full = model.predict_proba(frame).to_numpy()
    for cut in (1200, 2000, 2700):
        np.testing.assert_array_equal(model.predict_proba(frame.iloc[:cut]).to_numpy(), full[:cut])
    static = plain.bundle.predict_proba(frame).to_numpy()
    ok = np.isfinite(full)
    assert ok.sum() > 2000 and np.mean(np.abs(full[ok] - static[ok]) > 1e-4) > 0.5
    scorer = BarScorer(model)
    first = model.history_bars + 10
    scorer.prime(frame.iloc[:first])
    got = [scorer.update(ts, *row)[1] for ts, row in zip(frame.index[first:], frame.to_numpy()[first:])]
    np.testing.assert_allclose(got, full[first:], atol=1e-5, rtol=0)


def test_backtest_cli_honours_calibration_mode_rolling(fast_bundle, tmp_path):
    import json

    from click.testing import CliRunner

    from cli.main import cli
    from core.ohlcv import write_ohlcv_csv

    data = tmp_path / "syn_usdt_15m.csv"
    write_ohlcv_csv(synthetic_ohlcv(3000, seed=12, start="2024-03-01"), data)
    runs = {}
    for name, sets in (("static", []), ("rolling", ROLLING_RUN)):
        args = ["backtest", "--model", str(fast_bundle), "--data", str(data), "--output", str(tmp_path / name),
                "--quiet", "--start", "2024-03-10"] + [x for s in sets for x in ("--set", s)]
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, res.output
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())["run"]
    assert runs["static"]["calibration"] == "static" and runs["rolling"]["calibration"] == "rolling"
    assert runs["static"]["signal"]["p_max"] != runs["rolling"]["signal"]["p_max"]


def test_run_config_rolling_is_refused_for_a_sequence_bundle():
    """Its streaming scorer (the one-step state) calibrates statically: one line, not a silent mix."""
    from types import SimpleNamespace

    from core.errors import ConfigError
    from models.loading import with_run_calibration

    seq = SimpleNamespace(meta={"model": {"context": "sequence"}})
    with pytest.raises(ConfigError, match="calibration.mode=rolling: not available for a model.context=sequence"):
        with_run_calibration(seq, CCFG)
    assert with_run_calibration(seq, CalibrationConfig()) is seq  # static: the model as trained


def test_the_probability_cache_key_of_rolling_p_names_the_fit(fast_bundle, monkeypatch):
    """Rolling P cached before a change of fit_platt must miss: the fit's version is part of the
    cache identity (static P keeps its key)."""
    import models.recalibration as rc
    from models.bundle import load_bundle
    from models.prob_cache import bundle_identity

    fast_bundle = load_bundle(fast_bundle)
    ccfg = CalibrationConfig(mode="rolling", window_bars=600, refit_bars=24, min_samples=100)
    static_key = bundle_identity(fast_bundle)
    key = bundle_identity(RollingCalibrated(fast_bundle, ccfg))
    monkeypatch.setattr(rc, "ROLLING_FIT", "another-fit")
    assert bundle_identity(RollingCalibrated(fast_bundle, ccfg)) != key
    assert bundle_identity(fast_bundle) == static_key != key
