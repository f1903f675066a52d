"""One warm-up (the bundle's history_bars) and the probability cache (score once)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.config import load_config
from core.synthetic import synthetic_ohlcv
from models.bundle import load_bundle
from models.features import memory_bars
from models.prob_cache import cached_scores
from strategies.backtest import run_backtest, warmup_bars_for


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


def _first_bar_error(bundle, frame, warm: int, starts) -> float:
    """Largest |P(first bar of a span, fed `warm` bars of history) - P(full history)|."""
    full = bundle.predict_proba(frame).to_numpy()
    errs = []
    for s in starts:
        part = bundle.predict_proba(frame.iloc[s - warm: s + 1]).to_numpy()
        errs.append(abs(part[-1] - full[s]))
    return max(errs)


def test_bundle_states_its_history(bundle, tiny_bundle):
    assert bundle.history_bars == memory_bars(bundle.feature_cfg) + bundle.window
    assert bundle.history_bars > bundle.min_bars
    meta = json.loads((tiny_bundle / "bundle.json").read_text())
    assert meta["history_bars"] == bundle.history_bars
    cfg = load_config(None)
    assert warmup_bars_for(bundle, cfg) == max(bundle.history_bars, cfg.risk.vol_window_bars + 1)


def test_first_bar_of_a_span_equals_full_history(bundle):
    frame = synthetic_ohlcv(4200, seed=5)
    starts = [2000, 2900, 4100]
    assert _first_bar_error(bundle, frame, warm_for(bundle), starts) < 1e-6
    # the old warm-up (min_bars) does depend on where the history starts: the check can fail
    assert _first_bar_error(bundle, frame, bundle.min_bars, starts) > 1e-6


def warm_for(bundle) -> int:
    return warmup_bars_for(bundle, load_config(None))


@pytest.mark.realdata
def test_first_bar_of_a_span_equals_full_history_real(bundle, real_candles):
    frame = real_candles.iloc[-9000:]
    assert frame.index.to_series().diff().iloc[1:].nunique() == 1  # one stretch (no gap)
    assert _first_bar_error(bundle, frame, warm_for(bundle), [3000, 6000, 8999]) < 1e-6


def test_score_window_uses_the_same_history(bundle):
    frame = synthetic_ohlcv(3000, seed=8)
    full = bundle.predict_proba(frame).to_numpy()
    assert abs(bundle.score_window(frame) - full[-1]) < 1e-6
    assert abs(bundle.score_window(frame.iloc[-bundle.history_bars:]) - full[-1]) < 1e-6


def test_cache_hit_returns_the_same_numbers(bundle, tmp_path):
    frame = synthetic_ohlcv(1500, seed=3)
    logit, prob, hit = cached_scores(bundle, frame, tmp_path)
    assert not hit and len(list(tmp_path.glob("prob-*.npz"))) == 1
    logit2, prob2, hit2 = cached_scores(bundle, frame, tmp_path)
    assert hit2
    np.testing.assert_array_equal(prob, prob2)
    np.testing.assert_array_equal(logit, logit2)
    np.testing.assert_array_equal(prob, bundle.predict_proba(frame).to_numpy())


def test_cache_key_covers_data_and_span(bundle, tmp_path):
    frame = synthetic_ohlcv(1500, seed=3)
    cached_scores(bundle, frame, tmp_path)
    _, _, hit = cached_scores(bundle, frame.iloc[1:], tmp_path)  # another start: another key
    assert not hit
    changed = frame.copy()
    changed.iloc[700, changed.columns.get_loc("close")] *= 1.0001  # one price differs
    _, prob, hit = cached_scores(bundle, changed, tmp_path)
    assert not hit
    np.testing.assert_array_equal(prob, bundle.predict_proba(changed).to_numpy())
    assert len(list(tmp_path.glob("prob-*.npz"))) == 3


@pytest.mark.parametrize("damage", ["truncate", "garbage", "tamper"])
def test_damaged_cache_entry_is_rebuilt_not_trusted(bundle, tmp_path, damage):
    frame = synthetic_ohlcv(1500, seed=4)
    _, prob, _ = cached_scores(bundle, frame, tmp_path)
    (entry,) = tmp_path.glob("prob-*.npz")
    if damage == "truncate":
        entry.write_bytes(entry.read_bytes()[:300])
    elif damage == "garbage":
        entry.write_bytes(b"not a numpy archive")
    else:  # a well-formed archive whose probabilities were altered: the checksum catches it
        with np.load(entry) as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays["prob"] = np.where(np.isnan(arrays["prob"]), np.nan, 0.99)
        with open(entry, "wb") as fh:
            np.savez(fh, **arrays)
    _, prob2, hit = cached_scores(bundle, frame, tmp_path)
    assert not hit
    np.testing.assert_array_equal(prob, prob2)
    _, _, hit3 = cached_scores(bundle, frame, tmp_path)  # rebuilt entry is valid again
    assert hit3


def test_backtest_second_run_skips_the_network(bundle, tmp_path, monkeypatch):
    frame = synthetic_ohlcv(3600, seed=21, start="2025-01-01")
    cfg = load_config(None, ["strategy.center=0.3", "strategy.deadband=0.0"])
    kw = dict(allow_in_sample=True, progress=False, prob_cache=tmp_path / "cache", start=frame.index[2000])
    first = run_backtest(bundle, frame, cfg, **kw)
    assert first.metrics["run"]["probabilities"] == "scored by the network"
    calls = []
    monkeypatch.setattr(type(bundle), "predict_logit", lambda self, f: calls.append(1) or None)
    second = run_backtest(bundle, frame, cfg, **kw)
    assert calls == [] and second.metrics["run"]["probabilities"] == "probability cache (network skipped)"
    assert first.metrics["strategy"] == second.metrics["strategy"]
    assert len(first.trades) > 0 and first.trades.equals(second.trades)


def test_batch_scoring_is_the_same_for_any_worker_count(bundle, monkeypatch):
    frame = synthetic_ohlcv(1200, seed=6)
    monkeypatch.setattr(bundle, "threads", 1)
    one = bundle.predict_logit(frame).to_numpy()
    monkeypatch.setattr(bundle, "threads", 2)
    two = bundle.predict_logit(frame).to_numpy()
    assert np.isfinite(one).sum() > 900
    np.testing.assert_array_equal(one, two)  # same batches, same numbers, bit for bit
