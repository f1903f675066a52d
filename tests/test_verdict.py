"""The sweep verdict in the five common situations, on generated return series (T bars x N
rows, net of costs): all rows flat, all rows lose, pure noise, a planted strong edge, a noisy
genuine edge. Each test asserts the verdict's class and its key words."""
from __future__ import annotations

import math

import numpy as np
import pytest

from sweeps.overfit import (
    block_moments,
    deflated_sharpe,
    effective_trials,
    expected_max_sharpe,
    moments_stats,
    overfitting_report,
    pbo_cscv,
    probabilistic_sharpe,
    row_groups,
)

PPY = 35040.0  # 15-minute bars per year
T = 16000
BLOCKS, FOLDS = 16, 4


def all_flat() -> np.ndarray:
    """24 rows that never trade."""
    return np.zeros((T, 24))


def all_lose() -> np.ndarray:
    """12 flat rows and 36 rows in the market 30% of the bars, each trade losing its costs."""
    rng = np.random.default_rng(1)
    active = rng.random((T, 36)) < 0.3
    r = np.where(active, rng.normal(-0.0002, 0.002, (T, 36)), 0.0)
    return np.hstack([np.zeros((T, 12)), r])


def pure_noise() -> np.ndarray:
    """64 independent zero-mean rows and 8 duplicates of them (same trades)."""
    r = np.random.default_rng(2).normal(0.0, 0.002, (T, 64))
    return np.hstack([r, r[:, :8]])


def planted_edge() -> np.ndarray:
    """63 noise rows and one (row 17) with a per-bar Sharpe of 0.08 (about 15 a year)."""
    r = np.random.default_rng(3).normal(0.0, 0.002, (T, 64))
    r[:, 17] += 0.002 * 0.08
    return r


def noisy_edge() -> np.ndarray:
    """96 variants of one genuine but noisy signal -- a shared return stream (correlation 0.81),
    a small edge that varies by variant (some variants lose), own noise -- and 24 flat rows."""
    rng = np.random.default_rng(0)
    common = rng.normal(0.0, 0.002, T)
    own = rng.normal(0.0, 0.002, (T, 96))
    edge = 0.002 * rng.normal(0.010, 0.012, 96)
    r = edge + 0.9 * common[:, None] + math.sqrt(1 - 0.81) * own
    return np.hstack([r, np.zeros((T, 24))])


def _report(returns: np.ndarray):
    return overfitting_report(block_moments(returns, BLOCKS), PPY, blocks=BLOCKS, folds=FOLDS)


def test_all_rows_flat():
    rep = _report(all_flat())
    assert rep.verdict_class == "no_trades" and rep.best_row == -1 and rep.n_flat == 24 and rep.n_trading == 0
    assert rep.verdict.startswith("No row traded: all 24 rows stayed flat")
    assert "luck" not in rep.verdict and "PBO" not in rep.verdict and rep.cautions == ()
    assert math.isnan(rep.pbo) and math.isnan(rep.dsr)


def test_all_rows_lose():
    r = all_lose()
    assert (r[:, 12:].mean(axis=0) < 0).all()  # the situation: every trading row loses
    rep = _report(r)
    assert rep.verdict_class == "no_edge" and rep.best_row >= 12  # a flat row is never "best"
    assert rep.verdict.startswith("No row that trades beats staying flat after costs")
    assert "12 of the 48 rows never traded (flat)" in rep.verdict
    assert "staying flat is better" in rep.verdict and "more data is needed" not in rep.verdict
    assert rep.sharpe < 0 and rep.n_trading == 36 and rep.cautions == ()


def test_pure_noise():
    rep = _report(pure_noise())
    assert rep.verdict_class == "luck" and rep.dsr < 0.95 and 0.2 <= rep.pbo <= 0.8
    assert "not distinguishable from the best of" in rep.verdict and rep.verdict.endswith("Treat this row as luck.")
    assert rep.n_duplicates == 8 and rep.n_trading == 64 and "8 of the 72 rows repeat another row's trades exactly" in rep.verdict
    assert 50 <= rep.n_trials <= 64  # uncorrelated rows: about one trial each


def test_planted_strong_edge():
    rep = _report(planted_edge())
    assert rep.verdict_class == "edge" and rep.best_row == 17 and rep.dsr >= 0.95 and rep.pbo < 0.2
    assert "above what the best of" in rep.verdict and "real edge" in rep.verdict
    assert "made money on the next fold in 3 of 3 steps" in rep.verdict


def test_noisy_genuine_edge():
    r = noisy_edge()
    m = block_moments(r, BLOCKS)
    sr = moments_stats(m).sharpe
    assert (sr > 0).sum() >= 80  # the situation: most of the 96 trading rows win ...
    rep = overfitting_report(m, PPY, blocks=BLOCKS, folds=FOLDS)
    assert len(rep.fold_oos_sharpe) == 3 and min(rep.fold_oos_sharpe) > 0  # ... and every walk-forward fold
    assert deflated_sharpe(m).dsr < 0.95  # counting every row as an independent trial calls it luck
    assert rep.verdict_class == "edge" and rep.dsr >= 0.95 and rep.pbo < 0.2
    assert rep.n_trials < 40 and rep.avg_correlation > 0.5  # correlated variants: far fewer than 96 trials
    assert "real edge" in rep.verdict and "24 of the 120 rows never traded (flat)" in rep.verdict


# --------------------------------------------------------------------------- the pieces
def test_row_groups_collapse_flat_rows_and_duplicates():
    r = np.random.default_rng(5).normal(0, 0.01, (400, 4))
    full = np.hstack([np.zeros((400, 2)), r, r[:, [1]], np.zeros((400, 1)), r[:, [0]]])
    g = row_groups(block_moments(full, 4))
    assert list(np.flatnonzero(g.flat)) == [0, 1, 7]
    assert list(g.trading) == [2, 3, 4, 5] and g.n_duplicates == 2
    assert g.first[6] == 3 and g.first[8] == 2 and g.first[7] == 0


def test_effective_trials_from_the_average_correlation():
    rng = np.random.default_rng(6)
    base = rng.normal(0, 0.01, (3200, 1))
    same = np.repeat(base, 10, axis=1) + rng.normal(0, 1e-6, (3200, 10))
    n_eff, rho = effective_trials(block_moments(same, 16))
    assert rho > 0.99 and n_eff < 1.1  # ten copies of one strategy are one trial
    indep = rng.normal(0, 0.01, (3200, 40))
    n_eff, rho = effective_trials(block_moments(indep, 16))
    assert abs(rho) < 0.05 and n_eff > 37
    # N_eff = rho + (1 - rho) N with rho the mean off-diagonal correlation of the block means
    m = block_moments(rng.normal(0, 0.01, (3200, 6)) + base, 16)
    means = m[:, :, 1] / m[:, :, 0]
    c = np.corrcoef(means)
    want = c[~np.eye(6, dtype=bool)].mean()
    n_eff, rho = effective_trials(m)
    assert rho == pytest.approx(want, rel=1e-9) and n_eff == pytest.approx(want + (1 - want) * 6, rel=1e-9)


def test_dsr_worked_example_of_bailey_and_lopez_de_prado():
    """Bailey & López de Prado (2014), section 'A numerical example': 100 trials, annualised
    Sharpe variance 1/2, 1,250 daily observations, skew -3, kurtosis 10, annualised SR 2.5:
    E[max SR] = 0.1132 per day and DSR = 0.9004."""
    emax = expected_max_sharpe(100, 0.5 / 250)
    assert emax == pytest.approx(0.1132, abs=1e-4)
    dsr = probabilistic_sharpe(2.5 / math.sqrt(250), 1250, -3.0, 10.0, emax)
    assert dsr == pytest.approx(0.9004, abs=1e-4)


def test_ties_caution_only_when_ties_raise_the_pbo():
    assert _report(planted_edge()).cautions == ()  # no ties: no caution
    assert _report(pure_noise()).cautions == ()  # duplicates are collapsed, so they do not tie
    # 8 rows that each trade in one block only: out of sample most of them are flat and level
    rng = np.random.default_rng(8)
    r = np.zeros((1600, 8))
    for i in range(8):
        r[200 * i:200 * i + 100, i] = rng.normal(0.0005, 0.01, 100)
    m = block_moments(r, 16)
    pb = pbo_cscv(m)
    rep = overfitting_report(m, PPY, blocks=16)
    assert pb.pbo > pb.pbo_untied + 0.05 and rep.n_trading == 8
    assert len(rep.cautions) == 1 and f"from {pb.pbo_untied:.2f}" in rep.cautions[0]


def _ranked(drift_scale: float, own: float) -> np.ndarray:
    """20 rows that share one noisy return stream, each with its own noise ``own`` (per bar;
    the shared stream's is 0.002) and a fixed drift: with little own noise the ranking holds
    out of sample (low PBO)."""
    rng = np.random.default_rng(9)
    common = rng.normal(0.0, 0.002, (T, 1))
    r = common + 0.002 * drift_scale * np.linspace(0.0, 1.0, 20) + rng.normal(0.0, own, (T, 20))
    return r - common.mean()  # the shared stream itself has mean 0


def test_a_stable_ranking_of_rows_not_above_zero_is_still_luck():
    rep = _report(_ranked(0.008, 0.0001))  # the best row's Sharpe is not even significantly above 0
    assert rep.pbo < 0.2 and rep.psr < 0.95 and rep.sharpe > 0, (rep.pbo, rep.psr)
    assert rep.verdict_class == "luck" and "more data is needed" not in rep.verdict


def test_a_stable_ranking_above_zero_but_within_luck_asks_for_more_data():
    rep = _report(_ranked(0.015, 0.001))  # significant against 0 (PSR >= 0.95), not against luck
    assert rep.pbo < 0.2 and rep.psr >= 0.95 and rep.dsr < 0.95, (rep.psr, rep.dsr)
    assert rep.verdict_class == "inconclusive" and rep.verdict.endswith("more data is needed.")


def test_ties_that_barely_move_the_pbo_earn_no_caution():
    from sweeps.overfit import _cautions

    assert _cautions({"pbo": 0.15, "pbo_untied": 0.14}) == ()  # +0.01, still 'low'
    assert len(_cautions({"pbo": 0.21, "pbo_untied": 0.19})) == 1  # crosses into 'moderate'
    assert len(_cautions({"pbo": 0.60, "pbo_untied": 0.52})) == 1  # +0.08
    assert _cautions({"pbo": 0.10, "pbo_untied": 0.10}) == ()  # ties did not raise it
