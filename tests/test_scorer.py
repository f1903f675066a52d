"""The one scorer (ONNX Runtime) against the reference (torch): logits, AUC, thread counts,
and the training report's metrics computed by the scorer that trades."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.config import load_config
from core.synthetic import synthetic_ohlcv
from models.bundle import load_bundle
from models.calibration import sigmoid
from models.dataset import prepare, window_view
from models.labels import triple_barrier_events
from models.metrics import all_metrics, auc
from models.onnx_export import reference_network
from models.scorer import CHUNK, OnnxScorer
from models.splits import walk_forward_split


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def reference(tiny_bundle, bundle):
    state = torch.load(tiny_bundle / "final_model.pt", map_location="cpu", weights_only=True)
    return reference_network(bundle.meta["model"], state, len(bundle.feature_names))


def torch_logits(net, bundle, frame) -> np.ndarray:
    """The reference: the same features, normaliser and windows, scored by the torch network."""
    feats, valid = bundle._features(frame)
    ends = np.flatnonzero(valid)
    view = window_view(bundle.normaliser.transform(feats), bundle.window)
    out = np.full(len(frame), np.nan)
    with torch.inference_mode():
        for i in range(0, len(ends), 1024):
            chunk = ends[i:i + 1024]
            out[chunk] = net(torch.from_numpy(np.ascontiguousarray(view[chunk - bundle.window + 1]))).double().numpy()
    return out


def test_ort_equals_torch_on_real_candles(bundle, reference, real_candles):
    """ORT vs torch logits within 1e-5 on 20,000 real bars, and the same labels' AUC to 1e-6."""
    frame = real_candles.iloc[-20_000:]
    ort_logit = bundle.predict_logit(frame).to_numpy()
    ref_logit = torch_logits(reference, bundle, frame)
    assert np.array_equal(np.isnan(ort_logit), np.isnan(ref_logit))
    ok = np.isfinite(ref_logit)
    assert ok.sum() > 19_000
    diff = np.abs(ort_logit[ok] - ref_logit[ok])
    assert diff.max() < 1e-5, diff.max()
    labels = triple_barrier_events(frame, bundle.label_cfg, timeframe=bundle.timeframe)["label"].to_numpy(float)
    sel = ok & np.isfinite(labels)
    a_ort, a_ref = auc(labels[sel], ort_logit[sel]), auc(labels[sel], ref_logit[sel])
    assert 0.3 < a_ort < 0.7 and abs(a_ort - a_ref) < 1e-6, (a_ort, a_ref)
    p_ort, p_ref = bundle.calibrate(ort_logit[sel]), bundle.calibrate(ref_logit[sel])
    assert np.abs(p_ort - p_ref).max() < 1e-5


def test_any_thread_count_gives_the_same_logits(bundle):
    frame = synthetic_ohlcv(CHUNK * 9 + 300, seed=21, start="2024-02-01")
    results = []
    for n in (1, 2, 3, 7):
        bundle.threads = n
        results.append(bundle.predict_logit(frame).to_numpy())
    bundle.threads = 1
    for r in results[1:]:
        np.testing.assert_array_equal(results[0], r)  # bit for bit, not within a tolerance
    assert np.isfinite(results[0]).sum() > CHUNK * 8


def test_threads_are_validated(bundle):
    for bad in (0, -1, 257, 1.5, "2", True):
        with pytest.raises(ValueError, match="threads"):
            bundle.threads = bad
    assert bundle.threads == 1


def test_one_window_equals_its_batch_row(bundle):
    x = np.random.default_rng(3).standard_normal((CHUNK + 5, bundle.window, 12)).astype(np.float32)
    batch = bundle.scorer.logits(x)
    one = np.array([bundle.scorer.logit_one(w) for w in x[:20]])
    assert np.abs(one - batch[:20]).max() < 1e-5


def test_bad_graph_is_one_line():
    from core.errors import BundleError

    with pytest.raises(BundleError, match="ONNX Runtime cannot load") as exc:
        OnnxScorer(b"not a graph")
    assert "\n" not in str(exc.value)


def test_report_metrics_come_from_the_trading_scorer(tiny_bundle, bundle, reference):
    """bundle.json's test metrics equal the ones this bundle's scorer gives on the same spans
    (exactly), and the torch reference gives the same AUC to 1e-6."""
    cfg = load_config(None, ["training.epochs=2", "training.batch_size=128", "training.threads=1"])
    frame = synthetic_ohlcv(3000, seed=11, gaps={1800: 10})  # the conftest's training data
    data = prepare(frame, cfg)
    t = cfg.training
    split = walk_forward_split(data.samples, cfg.labels.horizon, t.embargo, t.val_fraction, t.test_fraction)
    y = data.labels[split.test]
    logits = bundle.logits_for_features(data.features, split.test)
    stored = bundle.meta["metrics"]["test"]["tcn"]
    assert all_metrics(y, sigmoid(logits)) == stored["raw"]
    assert all_metrics(y, bundle.calibrate(logits)) == stored["calibrated"]
    ref = torch_logits(reference, bundle, frame)[split.test]
    assert abs(auc(y, ref) - stored["raw"]["auc"]) < 1e-6
