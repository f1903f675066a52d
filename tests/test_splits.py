"""Walk-forward and purged k-fold splits: no trained-on label window reaches a held-out span."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import DataError
from models.splits import cap_train, purged_kfold_splits, walk_forward_split


def _assert_clear(train: np.ndarray, held: np.ndarray, horizon: int, embargo: int) -> None:
    """Every label window [t, t+h] of `train` stays >= embargo bars away from held-out cover [a, b+h]."""
    if len(held) == 0 or len(train) == 0:
        return
    a, b = held[0], held[-1] + horizon
    lo, hi = train, train + horizon
    overlaps = (lo <= b) & (hi >= a)
    assert not overlaps.any(), f"label windows of {train[overlaps][:5]} overlap [{a}, {b}]"
    too_close = ((hi < a) & (a - hi <= embargo)) | ((lo > b) & (lo - b <= embargo))
    assert not too_close.any(), f"samples {train[too_close][:5]} inside the embargo around [{a}, {b}]"


def test_walk_forward_order_sizes_and_purge():
    samples = np.arange(200, 10200)  # 10,000 labelled positions
    s = walk_forward_split(samples, horizon=8, embargo=8, val_fraction=0.15, test_fraction=0.15)
    assert s.train[-1] < s.val[0] < s.val[-1] < s.test[0]
    assert len(s.test) == 1500
    assert 1500 - 16 <= len(s.val) <= 1500 and 7000 - 16 <= len(s.train) <= 7000
    _assert_clear(s.train, s.val, 8, 8)
    _assert_clear(s.train, s.test, 8, 8)
    _assert_clear(s.val, s.test, 8, 8)
    # exactly horizon + embargo bars dropped before each later span, not more
    assert s.val[0] - s.train[-1] == 8 + 8 + 1 and s.test[0] - s.val[-1] == 8 + 8 + 1


def test_purge_works_with_timestamps_across_a_gap():
    """Positions with a hole (unlabelled bars around a data gap) are still purged by bar position."""
    samples = np.r_[np.arange(100, 3000), np.arange(3020, 6000)]
    s = walk_forward_split(samples, horizon=12, embargo=20, val_fraction=0.2, test_fraction=0.2)
    for a, b in ((s.train, s.val), (s.train, s.test), (s.val, s.test)):
        _assert_clear(a, b, 12, 20)


def test_embargo_below_horizon_is_refused():
    with pytest.raises(ValueError, match="embargo"):
        walk_forward_split(np.arange(1000), horizon=8, embargo=4)


def test_too_few_samples_is_refused():
    with pytest.raises(DataError, match="too few"):
        walk_forward_split(np.arange(5), horizon=8, embargo=8)


def test_cap_train_keeps_most_recent():
    s = walk_forward_split(np.arange(5000), horizon=8, embargo=8)
    c = cap_train(s, 100)
    assert np.array_equal(c.train, s.train[-100:]) and np.array_equal(c.test, s.test)


def test_purged_kfold_every_fold_clean_and_each_sample_tested_once():
    samples = np.arange(50, 6050)
    folds = list(purged_kfold_splits(samples, horizon=8, embargo=10, folds=5, min_bars=160))
    assert len(folds) == 5
    assert np.array_equal(np.sort(np.concatenate([f.test for f in folds])), samples)
    for f in folds:
        assert len(np.intersect1d(f.train, f.test)) == 0 and len(np.intersect1d(f.train, f.val)) == 0
        _assert_clear(f.train, f.test, 8, 10)
        _assert_clear(f.train, f.val, 8, 10)
        _assert_clear(f.val, f.test, 8, 10)
    # middle folds train on data both before and after the test fold
    mid = folds[2]
    assert mid.train.min() < mid.test.min() and mid.train.max() > mid.test.max()


@settings(max_examples=60, deadline=None)
@given(n=st.integers(200, 3000), horizon=st.integers(1, 30), extra=st.integers(0, 30), seed=st.integers(0, 10**6),
       val=st.floats(0.05, 0.4), test=st.floats(0.05, 0.4))
def test_walk_forward_never_trains_on_held_out_label_windows(n, horizon, extra, seed, val, test):
    rng = np.random.default_rng(seed)
    samples = np.sort(rng.choice(n * 3, size=n, replace=False))
    try:
        s = walk_forward_split(samples, horizon, horizon + extra, val, test)
    except DataError:
        return
    _assert_clear(s.train, s.val, horizon, horizon + extra)
    _assert_clear(s.train, s.test, horizon, horizon + extra)
    _assert_clear(s.val, s.test, horizon, horizon + extra)
    assert set(s.train) | set(s.val) | set(s.test) <= set(samples)


def _assert_inputs_clear_after(kept: np.ndarray, held: np.ndarray, horizon: int, min_bars: int) -> None:
    """No sample after a held-out span has an input bar (window + warm-up: [t - min_bars + 1, t])
    inside that span's cover [a, b + horizon]."""
    if len(held) == 0 or len(kept) == 0:
        return
    a, b = held[0], held[-1] + horizon
    after = kept[kept > held[-1]]
    first_input = after - min_bars + 1
    inside = first_input <= b
    assert not inside.any(), f"samples {after[inside][:5]} have input bars inside held-out cover [{a}, {b}]"


@pytest.mark.parametrize("min_bars", [1, 160, 500])
def test_purged_kfold_embargo_after_a_held_out_span_covers_the_input_window(min_bars):
    samples = np.arange(200, 12200)
    horizon, embargo = 8, 10
    folds = list(purged_kfold_splits(samples, horizon=horizon, embargo=embargo, folds=5, min_bars=min_bars))
    for f in folds:
        for kept in (f.train, f.val):
            _assert_inputs_clear_after(kept, f.test, horizon, min_bars)
        _assert_inputs_clear_after(f.train, f.val, horizon, min_bars)
        _assert_clear(f.train, f.test, horizon, embargo)
        _assert_clear(f.train, f.val, horizon, embargo)
        _assert_clear(f.val, f.test, horizon, embargo)
    # the gap after a test fold is exactly max(embargo, min_bars) beyond its cover, not more;
    # the gap before it stays horizon + embargo
    mid = folds[2]
    after = mid.train[mid.train > mid.test[-1]]
    assert after[0] - (mid.test[-1] + horizon) == max(embargo, min_bars) + 1
    before = mid.train[mid.train < mid.val[0]]
    assert mid.val[0] - before[-1] == horizon + embargo + 1
    # fold 0: validation is the fold AFTER the test fold, so it gets the long embargo too
    f0 = folds[0]
    assert f0.val[0] > f0.test[-1] and f0.val[0] - (f0.test[-1] + horizon) == max(embargo, min_bars) + 1


def test_walk_forward_is_unchanged_by_the_input_window():
    """Walk-forward spans are ordered (nothing kept after a held-out span): only horizon + embargo
    separates them, whatever the window."""
    s = walk_forward_split(np.arange(200, 10200), horizon=8, embargo=8)
    assert s.train[-1] < s.val[0] and s.val[-1] < s.test[0]
    assert s.val[0] - s.train[-1] == s.test[0] - s.val[-1] == 8 + 8 + 1
