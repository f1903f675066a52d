"""Online Platt scaling (ONS) and calibeating by tracking: causal (P at bar t unchanged when
later bars are appended; a label counts only once its horizon has closed; never the training
span), the ONS step and projection are what they claim, OPS follows a drifting base rate, and
tracking outputs the mean known outcome of the forecast's bin, hedging is Foster's forecaster."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.synthetic import synthetic_ohlcv
from models.bundle import load_bundle
from models.calibration import Calibrator, sigmoid
from models.online_calibration import (
    OnlineConfig,
    OnsPlatt,
    hedging,
    known_at_ns,
    model_online_scores,
    online_probabilities,
    project,
    training_end,
)
from models.recalibration import fit_platt

STATIC = Calibrator("platt", {"a": 1.0, "b": 0.0})
BAR = 900 * 10**9
H = 8


def _series(n=3000, seed=0, drift=(-2.0, -0.5)):
    rng = np.random.default_rng(seed)
    index = pd.date_range("2024-01-01 05:30", periods=n, freq="15min", tz="UTC").as_unit("ns")
    z = rng.normal(0, 1, n)
    y = (rng.random(n) < sigmoid(1.5 * z + np.linspace(*drift, n))).astype(float)
    return index, z, y


def _online(index, z, y, cfg=OnlineConfig(), fitted_until=None, static=STATIC):
    return online_probabilities(index, z, y, H, "15m", static, fitted_until, cfg)


def test_ons_step_is_the_newton_step_of_its_regularised_hessian():
    cfg = OnlineConfig()
    ons = OnsPlatt(0.5, -1.0, cfg)
    z, y = 1.7, 1.0
    x = np.array([z, 1.0])
    g = (sigmoid(np.array([0.5 * z - 1.0]))[0] - y) * x
    a_mat = 100.0 * np.eye(2) + np.outer(g, g)   # A_0 = I / (gamma D)^2 = 100 I
    expected = np.array([0.5, -1.0]) - np.linalg.solve(a_mat, g) / 0.1
    ons.update(z, y)
    np.testing.assert_allclose(ons.theta, expected, rtol=1e-12)
    np.testing.assert_allclose(ons.a_inv, np.linalg.inv(a_mat), rtol=1e-10)


def test_projection_is_the_a_norm_nearest_point_of_the_ball():
    a_mat = np.array([[5.0, 1.5], [1.5, 1.0]])
    theta = np.array([30.0, -12.0])
    p = project(theta, a_mat, 10.0)
    assert np.linalg.norm(p) == pytest.approx(10.0, rel=1e-9)
    angles = np.linspace(0, 2 * np.pi, 20001)
    circle = 10.0 * np.column_stack([np.cos(angles), np.sin(angles)])
    d = np.einsum("ij,jk,ik->i", circle - theta, a_mat, circle - theta)
    dp = (p - theta) @ a_mat @ (p - theta)
    assert dp <= d.min() + 1e-6
    inside = np.array([3.0, 4.0])
    np.testing.assert_array_equal(project(inside, a_mat, 10.0), inside)


def test_ops_converges_to_the_maximum_likelihood_platt_fit_on_stationary_data():
    index, z, y = _series(30000, seed=5, drift=(-1.0, -1.0))
    ops, _, _ = _online(index, z, y)
    a_ml, b_ml = fit_platt(z, y)
    late = slice(25000, 30000)
    diff = np.abs(ops[late] - sigmoid(a_ml * z[late] + b_ml))
    # ONS keeps moving with each label (steps ~ 1 / (gamma n)): close to the fit, not on it
    assert diff.mean() < 0.01 and diff.max() < 0.05


def test_appending_bars_never_changes_an_earlier_p():
    index, z, y = _series()
    cfg = OnlineConfig(min_bin=20)
    full = _online(index, z, y, cfg)
    ops, tops, hops = full
    assert np.mean(np.abs(tops - ops) > 1e-9) > 0.5   # tracking really replaces OPS on most bars
    assert np.mean(np.abs(hops - ops) > 1e-9) > 0.5   # ... and so does hedging
    for cut in (700, 1234, 2001):
        z2, y2 = z.copy(), y.copy()
        z2[cut:] = np.random.default_rng(cut).normal(0, 3, len(z) - cut)
        y2[cut:] = 1.0 - y2[cut:]
        for p, p2, p3 in zip(full, _online(index, z2, y2, cfg), _online(index[:cut], z[:cut], y[:cut], cfg)):
            np.testing.assert_array_equal(p[:cut], p2[:cut])
            np.testing.assert_array_equal(p[:cut], p3)


@pytest.mark.parametrize("t", [400, 1111, 2500])
def test_a_label_counts_only_once_its_horizon_has_closed(t):
    index, z, y = _series(3000, seed=2)
    cfg = OnlineConfig(bins=1, min_bin=5)   # one bin: every known outcome moves the tracked mean
    ops, tops, hops = _online(index, z, y, cfg)
    known_at = known_at_ns(index, H, "15m")
    s_unknown = int(np.searchsorted(known_at, index.asi8[t], side="right"))
    assert s_unknown == t - H + 1           # ts[s] + 8 bars > ts[t]: not known at t
    y2 = y.copy()
    y2[s_unknown:] = 1.0 - y2[s_unknown:]   # flip every label still open at t
    ops2, tops2, hops2 = _online(index, z, y2, cfg)
    assert ops2[t] == ops[t] and tops2[t] == tops[t] and hops2[t] == hops[t]
    y3 = y.copy()
    y3[s_unknown - 1] = 1.0 - y3[s_unknown - 1]   # its horizon closed exactly at t: used
    ops3, tops3, _ = _online(index, z, y3, cfg)
    assert ops3[t] != ops[t] and tops3[t] != tops[t]
    assert ops3[t - 1] == ops[t - 1] and tops3[t - 1] == tops[t - 1]   # ... and not one bar earlier


def test_the_networks_training_span_is_never_used_and_the_start_is_the_static_calibrator():
    index, z, y = _series(3000, seed=4)
    cut = int(index.asi8[1500])
    static = Calibrator("platt", {"a": 1.3, "b": -1.1})
    full = _online(index, z, y, fitted_until=cut, static=static)
    ops = full[0]
    y2 = y.copy()
    y2[:1501] = 1.0 - y2[:1501]
    for p, p2 in zip(full, _online(index, z, y2, fitted_until=cut, static=static)):
        np.testing.assert_array_equal(p, p2)
    # nothing is known before the first label after the span closes: the static calibrator
    first_update = 1501 + H   # bar 1501's label is known from the open of bar 1509
    np.testing.assert_allclose(ops[:first_update], static(z[:first_update]), rtol=1e-12)
    assert ops[first_update] != pytest.approx(static(z[first_update:first_update + 1])[0], rel=1e-9)


def test_ops_and_tracking_follow_a_drifting_base_rate():
    index, z, y = _series(6000, seed=3)
    static = Calibrator.fit(z[:1500], y[:1500], "platt")
    ops, tops, _ = _online(index, z, y, static=static)
    late = slice(4500, 6000)
    gap_static = abs(static(z[late]).mean() - y[late].mean())
    assert abs(ops[late].mean() - y[late].mean()) < gap_static / 2
    assert abs(tops[late].mean() - y[late].mean()) < gap_static / 2


def test_tracking_outputs_the_mean_known_outcome_of_the_forecasts_bin():
    index, z, y = _series(3000, seed=7)
    cfg = OnlineConfig(bins=10, min_bin=30)
    ops, tops, _ = _online(index, z, y, cfg)
    known_at = known_at_ns(index, H, "15m")
    bins = np.clip((ops * 10).astype(int), 0, 9)
    checked = 0
    for t in range(100, 3000, 37):
        past = (known_at <= index.asi8[t]) & (bins == bins[t])
        if past.sum() >= 30:
            assert tops[t] == pytest.approx(y[past].mean(), abs=1e-12)
            checked += 1
        else:
            assert tops[t] == ops[t]
    assert checked > 40


def test_bundle_scores_are_causal_and_start_at_the_training_span_end(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    frame = synthetic_ohlcv(3000, seed=11, gaps={1800: 10})   # the frame the bundle was trained on
    end = training_end(bundle)
    assert end is not None
    full = model_online_scores(bundle, frame)
    ops = full[0]
    after = frame.index.asi8 > end
    assert all(np.isfinite(p[after]).mean() > 0.95 for p in full)
    # P does not depend on how far before the training-span end the frame starts ...
    first_after = int(np.argmax(after))
    lo = first_after - bundle.history_bars
    assert lo > 0
    for p, p_late in zip(full, model_online_scores(bundle, frame.iloc[lo:])):
        np.testing.assert_array_equal(p[lo:], p_late)
    # ... nor on bars appended after it
    cut = len(frame) - 300
    for p, p_cut in zip(full, model_online_scores(bundle, frame.iloc[:cut])):
        np.testing.assert_array_equal(p[:cut], p_cut)
    # OPS has moved away from the static calibrator by the end of the frame
    logit = bundle.predict_logit(frame).to_numpy()
    assert np.nanmean(np.abs(ops[-500:] - bundle.calibrate(logit[-500:]))) > 1e-4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rolling_platt_fit_does_not_diverge_on_a_narrow_inverted_logit_range(seed):
    """Found by the OPS comparison: on a real fold (BTC 2024-08, AUC 0.44) the rolling refit's
    undamped Newton sent b to 1e8 (ECE 0.50, log loss 13.7). Logits of a narrow range whose
    ranking is inverted reproduce it; the damped fit reaches the maximum likelihood."""
    rng = np.random.default_rng(seed)
    z = rng.normal(1.5, 0.4, 1500)
    y = (rng.random(1500) < sigmoid(-0.6 * z - 1.0)).astype(float)
    a, b = fit_platt(z, y)
    ref = Calibrator.fit(z, y, "platt").params

    def nll(a, b):
        u = a * z + b
        return float(np.sum(np.logaddexp(0.0, u) - y * u))

    assert abs(a) < 5 and abs(b) < 5
    assert nll(a, b) <= nll(ref["a"], ref["b"]) + 1e-6


def test_hedging_is_fosters_forecaster_per_bin_and_calibrated_on_known_outcomes():
    rng = np.random.default_rng(8)
    n = 20000
    ts = np.arange(n, dtype=np.int64) * BAR
    known_at = ts + H * BAR
    forecast = np.full(n, 0.15)                 # one bin, a miscalibrated forecast
    y = (rng.random(n) < 0.32).astype(float)    # true rate 0.32
    cfg = OnlineConfig(bins=10, min_bin=0)      # shown from the first bar: every pick is visible
    hops = hedging(ts, known_at, forecast, y, np.ones(n, bool), cfg, seed=3)
    assert set(np.round(hops[2000:] * 10, 9)) <= {3.0, 4.0}   # it hedges between 0.3 and 0.4 ...
    assert abs(hops[2000:].mean() - 0.32) < 0.01                # ... and is calibrated on average
    # each pick is Foster's: deficits recomputed from scratch at a bar give the same grid point
    u = np.random.default_rng(3).random(n)
    picks = np.round(hops * 10).astype(int)
    for t in (40, 777, 5000, 19999):
        known = np.flatnonzero(known_at <= ts[t])
        d = np.zeros(11)
        np.add.at(d, picks[known], y[known] - picks[known] / 10)
        i = int(np.flatnonzero((d[:-1] >= 0) & (d[1:] <= 0))[0])
        expected = i if d[i] == d[i + 1] else (i if u[t] < -d[i + 1] / (d[i] - d[i + 1]) else i + 1)
        assert picks[t] == expected
