"""Overfitting statistics: PSR, DSR, PBO by CSCV, all from block moments."""
from __future__ import annotations

import itertools
import json
import math
import statistics
import time

import numpy as np
import pytest
from scipy import stats

from core.errors import ConfigError, DataError
from sweeps.overfit import (
    EULER_GAMMA,
    block_edges,
    block_moments,
    deflated_sharpe,
    expected_max_sharpe,
    merge_blocks,
    moments_stats,
    overfitting_report,
    pbo_cscv,
    probabilistic_sharpe,
    sharpe,
    sharpe_ratio,
)


def _psr_direct(sr, n, g3, g4, bench):
    """The PSR formula evaluated with scipy, independently of the module."""
    return stats.norm.cdf((sr - bench) * math.sqrt(n - 1) / math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr**2))


def _emax_direct(n, v):
    return math.sqrt(v) * ((1 - EULER_GAMMA) * stats.norm.ppf(1 - 1 / n)
                           + EULER_GAMMA * stats.norm.ppf(1 - 1 / (n * math.e)))


def _fat_tailed(t, n, seed):
    rng = np.random.default_rng(seed)
    return 0.01 * rng.standard_t(4, size=(t, n)) + rng.normal(0.0005, 0.0005, size=n)


# --------------------------------------------------------------------------- moments
def test_block_edges_follow_array_split():
    edges = block_edges(103, 16)
    sizes = [len(b) for b in np.array_split(np.arange(103), 16)]
    assert list(np.diff(edges)) == sizes and edges[0] == 0 and edges[-1] == 103
    with pytest.raises(DataError, match="cannot fill 16 blocks"):
        block_edges(15, 16)


@pytest.mark.parametrize("subset", [list(range(16)), [0, 3, 5, 11], [7], [1, 2]])
def test_moment_path_equals_direct_computation(subset):
    r = _fat_tailed(1003, 7, seed=1)
    m = block_moments(r, 16)
    assert m.shape == (7, 16, 5)
    st = moments_stats(m[:, subset])
    parts = np.array_split(r, 16, axis=0)
    x = np.concatenate([parts[b] for b in subset], axis=0)
    np.testing.assert_array_equal(st.count, len(x))
    np.testing.assert_allclose(st.mean, x.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(st.std, x.std(axis=0, ddof=1), rtol=1e-10)
    np.testing.assert_allclose(st.skew, stats.skew(x, axis=0, bias=True), rtol=1e-10)
    np.testing.assert_allclose(st.kurt, stats.kurtosis(x, axis=0, fisher=False, bias=True), rtol=1e-10)
    np.testing.assert_allclose(st.sharpe, x.mean(axis=0) / x.std(axis=0, ddof=1), rtol=1e-10)
    np.testing.assert_allclose(st.sharpe, sharpe_ratio(x), rtol=1e-10)


def test_nan_returns_are_skipped_and_inf_refused():
    r = _fat_tailed(400, 3, seed=2)
    r[[5, 17, 300], 1] = np.nan
    m = block_moments(r, 4)
    assert m[1, :, 0].sum() == 397 and m[0, :, 0].sum() == 400
    col = r[:, 1][~np.isnan(r[:, 1])]
    st = moments_stats(m)
    assert st.sharpe[1] == pytest.approx(col.mean() / col.std(ddof=1), rel=1e-10)
    assert sharpe_ratio(r[:, 1]) == pytest.approx(st.sharpe[1], rel=1e-10)
    r[9, 2] = np.inf
    with pytest.raises(DataError, match="inf at period 9, row 2"):
        block_moments(r, 4)


def test_zero_variance_and_short_rows():
    r = np.zeros((40, 3))
    r[:, 1] = 0.001  # constant non-zero return: Sharpe undefined
    r[:, 2] = np.linspace(-0.01, 0.01, 40)
    st = moments_stats(block_moments(r, 4))
    assert st.sharpe[0] == 0.0 and st.skew[0] == 0.0 and st.kurt[0] == 3.0  # never traded
    assert math.isnan(st.sharpe[1]) and math.isnan(st.skew[1])
    assert math.isfinite(st.sharpe[2])
    assert sharpe_ratio(r[:, 0]) == 0.0 and math.isnan(sharpe_ratio(r[:, 1]))
    one = moments_stats(block_moments(np.array([0.01, np.nan, np.nan]), 1))
    assert math.isnan(one.sharpe[0]) and one.count[0] == 1
    assert sharpe(0.0, 0.0) == 0.0 and math.isnan(sharpe(0.01, 0.0)) and sharpe(0.01, 0.02) == 0.5


def test_merge_blocks_equals_coarser_moments():
    r = _fat_tailed(640, 5, seed=3)
    np.testing.assert_allclose(merge_blocks(block_moments(r, 32), 16), block_moments(r, 16), rtol=1e-12)
    with pytest.raises(ConfigError, match="does not divide"):
        merge_blocks(block_moments(r, 32), 12)


# --------------------------------------------------------------------------- PSR / DSR
def test_psr_matches_the_formula_evaluated_with_scipy():
    got = probabilistic_sharpe(0.1, 250, -0.5, 5.0, 0.02)
    assert got == pytest.approx(_psr_direct(0.1, 250, -0.5, 5.0, 0.02), rel=1e-12)
    arr = probabilistic_sharpe(np.array([0.05, -0.03]), np.array([100, 1000]), 0.3, 4.0)
    want = [_psr_direct(0.05, 100, 0.3, 4.0, 0.0), _psr_direct(-0.03, 1000, 0.3, 4.0, 0.0)]
    np.testing.assert_allclose(arr, want, rtol=1e-12)


def test_psr_is_one_half_when_sr_equals_benchmark_and_nan_for_short_samples():
    assert probabilistic_sharpe(0.07, 500, -1.2, 9.0, 0.07) == 0.5
    assert math.isnan(probabilistic_sharpe(0.07, 2, 0.0, 3.0))
    assert math.isnan(probabilistic_sharpe(np.nan, 100, 0.0, 3.0))
    assert probabilistic_sharpe(0.05, 100, 0.0, 3.0) > probabilistic_sharpe(0.05, 100, 0.0, 12.0)  # fat tails widen


def test_expected_max_sharpe():
    assert expected_max_sharpe(10, 0.01) == pytest.approx(_emax_direct(10, 0.01), rel=1e-12)
    assert expected_max_sharpe(1, 0.01) == 0.0 and expected_max_sharpe(50, 0.0) == 0.0
    vals = [expected_max_sharpe(n, 0.01) for n in (2, 10, 100, 1000)]
    assert all(a < b for a, b in itertools.pairwise(vals))
    assert math.isnan(expected_max_sharpe(5, math.nan))
    with pytest.raises(DataError, match="n_trials"):
        expected_max_sharpe(0, 0.01)


def test_dsr_is_psr_against_the_expected_maximum():
    r = _fat_tailed(2000, 20, seed=4)
    m = block_moments(r, 16)
    ds = deflated_sharpe(m)
    srs = r.mean(axis=0) / r.std(axis=0, ddof=1)
    best = int(np.argmax(srs))
    g3 = stats.skew(r[:, best], bias=True)
    g4 = stats.kurtosis(r[:, best], fisher=False, bias=True)
    emax = _emax_direct(20, np.var(srs, ddof=1))
    assert ds.row == best and ds.n_trials == 20 and ds.n_obs == 2000
    assert ds.expected_max == pytest.approx(emax, rel=1e-9)
    assert ds.psr == pytest.approx(_psr_direct(srs[best], 2000, g3, g4, 0.0), rel=1e-9)
    assert ds.dsr == pytest.approx(_psr_direct(srs[best], 2000, g3, g4, emax), rel=1e-9)
    assert ds.dsr < ds.psr


def test_dsr_falls_as_the_number_of_trials_grows():
    m = block_moments(_fat_tailed(2000, 20, seed=5), 16)
    dsrs = [deflated_sharpe(m, n_trials=n).dsr for n in (1, 2, 10, 100, 1000)]
    assert all(a > b for a, b in itertools.pairwise(dsrs))
    single = deflated_sharpe(m[:1])
    assert single.n_trials == 1 and single.expected_max == 0.0 and single.dsr == single.psr


def test_dsr_zero_variance_nan_rows_and_short_samples():
    r = _fat_tailed(300, 3, seed=6)
    r[:, 0] = 0.002  # constant: undefined Sharpe, never chosen, not a trial
    ds = deflated_sharpe(block_moments(r, 4))
    assert ds.row in (1, 2) and ds.n_trials == 2
    same = np.repeat(_fat_tailed(300, 1, seed=7), 3, axis=1)  # V = 0: nothing to deflate
    ds = deflated_sharpe(block_moments(same, 4))
    assert ds.trial_variance == 0.0 and ds.dsr == ds.psr and ds.row == 0
    short = deflated_sharpe(block_moments(np.array([[0.01, 0.02], [-0.01, 0.0]]), 1))
    assert math.isnan(short.psr) and math.isnan(short.dsr)
    with pytest.raises(DataError, match="no row has a defined Sharpe"):
        deflated_sharpe(block_moments(np.full((10, 2), 0.001), 2))


# --------------------------------------------------------------------------- PBO by CSCV
HAND = [  # 8 periods x 4 rows, S = 4 blocks of 2 periods
    [0.010, -0.004, 0.003, 0.001],
    [-0.006, 0.007, -0.002, 0.004],
    [0.004, 0.002, 0.008, -0.005],
    [-0.002, -0.009, 0.001, 0.006],
    [0.007, 0.005, -0.006, -0.001],
    [-0.003, 0.001, 0.004, 0.002],
    [0.005, -0.002, -0.007, 0.009],
    [-0.008, 0.006, 0.002, -0.003],
]


def test_pbo_on_a_hand_enumerated_example():
    blocks = [[0, 1], [2, 3], [4, 5], [6, 7]]
    combos = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]  # the C(4, 2) in-sample sets

    def sr(periods, j):
        x = [HAND[t][j] for t in periods]
        return statistics.mean(x) / statistics.stdev(x)

    lambdas, chosen, is_sr, oos_sr = [], [], [], []
    for c in combos:
        ins = [t for b in c for t in blocks[b]]
        oos = [t for b in range(4) if b not in c for t in blocks[b]]
        s_in = [sr(ins, j) for j in range(4)]
        s_out = [sr(oos, j) for j in range(4)]
        best = max(range(4), key=lambda j: s_in[j])
        rank = 1 + sum(1 for j in range(4) if s_out[j] < s_out[best])
        w = rank / (4 + 1)
        lambdas.append(math.log(w / (1 - w)))
        chosen.append(best)
        is_sr.append(s_in[best])
        oos_sr.append(s_out[best])
    res = pbo_cscv(block_moments(np.array(HAND), 4))
    assert res.n_splits == 6 and res.n_valid == 6
    assert list(res.chosen) == chosen == [2, 3, 3, 0, 3, 1]
    np.testing.assert_allclose(res.logits, lambdas, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.is_sharpe, is_sr, rtol=1e-10)
    np.testing.assert_allclose(res.oos_sharpe, oos_sr, rtol=1e-10)
    assert res.pbo == sum(1 for x in lambdas if x <= 0) / 6 == 4 / 6
    assert res.prob_oos_loss == sum(1 for x in oos_sr if x < 0) / 6
    slope, intercept = np.polyfit(is_sr, oos_sr, 1)
    assert res.slope == pytest.approx(slope, rel=1e-9) and res.intercept == pytest.approx(intercept, rel=1e-9)


def test_pbo_ties_are_deterministic():
    same = np.repeat(_fat_tailed(160, 1, seed=8), 5, axis=1)  # 5 identical rows
    res = pbo_cscv(block_moments(same, 8))
    assert (res.chosen == 0).all()  # lowest index wins in sample
    np.testing.assert_array_equal(res.omega, 0.5)  # mid-rank out of sample
    assert (res.logits == 0).all() and res.pbo == 1.0  # lambda = 0 counts as overfit


def test_pbo_rows_without_a_sharpe_are_never_chosen():
    r = _fat_tailed(320, 4, seed=9)
    r[:, 2] = 0.05  # a huge constant return: undefined Sharpe
    res = pbo_cscv(block_moments(r, 8))
    assert not (res.chosen == 2).any() and res.n_valid == res.n_splits == 70


def test_pbo_of_pure_noise_is_near_one_half():
    # One seed's PBO swings widely (its 12,870 splits share the same data), so average seeds.
    pbos = [pbo_cscv(block_moments(np.random.default_rng(s).normal(0, 0.01, (2000, 100)), 16)).pbo for s in range(8)]
    assert 0.35 <= float(np.mean(pbos)) <= 0.65


def test_pbo_of_a_planted_edge_is_near_zero():
    r = np.random.default_rng(10).normal(0, 0.01, (2000, 100))
    r[:, 37] += 0.003  # a real edge over the whole span
    res = pbo_cscv(block_moments(r, 16))
    assert res.pbo < 0.1 and (res.chosen == 37).mean() > 0.9 and res.prob_oos_loss < 0.1


def test_pbo_refusals():
    with pytest.raises(ConfigError, match="even number of blocks"):
        pbo_cscv(block_moments(_fat_tailed(100, 3, seed=11), 5))
    with pytest.raises(DataError, match="at least 2 rows"):
        pbo_cscv(block_moments(_fat_tailed(100, 1, seed=11), 4))
    with pytest.raises(DataError, match="shape"):
        pbo_cscv(np.zeros((3, 4)))


def test_pbo_speed_on_1000_rows_and_16_blocks():
    m = block_moments(np.random.default_rng(12).normal(0, 0.01, (320, 1000)), 16)
    t0 = time.perf_counter()
    res = pbo_cscv(m)
    elapsed = time.perf_counter() - t0
    assert res.n_splits == 12870 and res.logits.shape == (12870,)
    assert elapsed < 5.0, f"pbo_cscv took {elapsed:.2f}s on 1,000 rows x 16 blocks"  # ~0.3 s measured


# --------------------------------------------------------------------------- report
def test_report_of_noise_says_luck_and_is_json():
    m = block_moments(np.random.default_rng(1).normal(0, 0.01, (2000, 100)), 16)
    rep = overfitting_report(m, periods_per_year=35040, names=[f"row{i}" for i in range(100)])
    ds = deflated_sharpe(m)
    assert rep.best_row == ds.row and rep.best_name == f"row{ds.row}"
    assert rep.sharpe == pytest.approx(ds.sharpe * math.sqrt(35040))
    assert rep.expected_max_sharpe == pytest.approx(ds.expected_max * math.sqrt(35040))
    assert rep.dsr < 0.95 and rep.n_trials == 100 and rep.n_splits == 12870 and len(rep.logits) == 12870
    assert "not distinguishable" in rep.verdict and rep.verdict.endswith("Treat this row as luck.")
    assert f"row{ds.row}" in rep.verdict
    assert 2 <= rep.verdict.count(". ") + 1 <= 4
    d = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
    assert d["pbo"] == rep.pbo and len(d["logits"]) == 12870


def test_report_of_a_planted_edge_says_real():
    r = np.random.default_rng(2).normal(0, 0.01, (4000, 50))
    r[:, 3] += 0.003
    rep = overfitting_report(block_moments(r, 32), periods_per_year=35040)  # 32 fine blocks merged to 16
    assert rep.best_row == 3 and rep.dsr >= 0.95 and rep.pbo < 0.2 and rep.blocks == 16
    assert "real edge" in rep.verdict and "low" in rep.verdict


def test_report_with_one_row_has_no_pbo():
    r = _fat_tailed(500, 1, seed=13)
    rep = overfitting_report(block_moments(r - r.mean() + 0.001, 16), periods_per_year=365)
    assert rep.n_trials == 1 and rep.dsr == rep.psr and math.isnan(rep.pbo) and rep.logits == ()
    assert "one trial" in rep.verdict and rep.verdict_class in ("edge", "luck")
    assert json.loads(json.dumps(rep.to_dict(), allow_nan=False))["pbo"] is None
    losing = overfitting_report(block_moments(r - r.mean() - 0.001, 16), periods_per_year=365)
    assert losing.verdict_class == "no_edge" and "the only distinct row that trades (#0)" in losing.verdict


def test_report_refusals():
    m = block_moments(_fat_tailed(500, 3, seed=14), 16)
    with pytest.raises(ConfigError, match="periods_per_year"):
        overfitting_report(m, periods_per_year=0)
    with pytest.raises(ConfigError, match="even number of blocks"):
        overfitting_report(m, periods_per_year=365, blocks=7)
    with pytest.raises(DataError, match="names has 2 entries for 3 rows"):
        overfitting_report(m, periods_per_year=365, names=["a", "b"])
