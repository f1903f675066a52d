"""Sequence mode (``model.context: sequence``): config, network, numpy engine, streaming step,
training batches, bundle round trip. Causality: a bar's logit/probability never changes when
later bars are appended, and depends on nothing before its ``input_bars`` rows."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from core.config import ModelConfig, load_config
from core.errors import BundleError, ConfigError
from core.synthetic import synthetic_ohlcv
from models.bundle import load_bundle
from models.sequence_scorer import SequenceNet, input_bars, receptive_field, stretch_starts
from models.sequence_train import CHUNK_BARS, SequenceBatches, chunk_rows
from models.tcn import TCN, SequenceTCN, build_tcn, count_parameters
from models.train import train_bundle

SPEC = ModelConfig(context="sequence")
IB = input_bars(SPEC)


def _net(seed: int = 0) -> SequenceTCN:
    torch.manual_seed(seed)
    net = build_tcn(SPEC, n_features=12).eval()
    # larger biases than the default init, so ReLUs are neither all on nor all off
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.3)
    return net


def _engine(net: torch.nn.Module) -> SequenceNet:
    return SequenceNet({k: v.numpy() for k, v in net.state_dict().items()}, SPEC)


def _rows(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 12)).astype(np.float32)


def test_config_context_default_and_refusal():
    assert load_config(None).model.context == "window"
    assert load_config(None, ["model.context=sequence"]).model.context == "sequence"
    with pytest.raises(ConfigError, match=r"'model.context'.*'window' or 'sequence'"):
        load_config(None, ["model.context=seq"])


def test_same_architecture_as_window_mode():
    seq, win = build_tcn(SPEC, 12), build_tcn(ModelConfig(), 12)
    assert isinstance(seq, SequenceTCN) and type(win) is TCN
    assert list(seq.state_dict()) == list(win.state_dict())
    assert count_parameters(seq) == count_parameters(win) == 58401
    assert IB == 64 + receptive_field(3, (1, 2, 4, 8)) - 1 == 124


def test_torch_sequence_net_is_causal():
    net = _net()
    x = torch.from_numpy(_rows(400))
    with torch.no_grad():
        short = net(x[None, :250])[0]
        long = net(x[None])[0]
    assert torch.allclose(short, long[:250], atol=1e-6)
    # and a later change moves later logits (the check can fail)
    y = x.clone()
    y[300] += 5
    with torch.no_grad():
        moved = net(y[None])[0]
    assert torch.equal(moved[:300], long[:300]) and not torch.allclose(moved[300:], long[300:])


def test_numpy_engine_matches_torch_and_depends_on_input_bars_only():
    net = _net(1)
    eng = _engine(net)
    x = _rows(1500, 2)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)[None])[0].double().numpy()
    full = eng.full_pass(x)
    assert np.max(np.abs(full - ref)) < 1e-5
    # a scored logit is a function of its own input_bars rows: a pass over only those rows gives it
    for t in (IB - 1, 700, 1499):
        assert abs(eng.full_pass(x[t - IB + 1:t + 1])[-1] - full[t]) < 1e-5
    # appending bars never changes earlier logits
    assert np.max(np.abs(eng.full_pass(x[:900]) - full[:900])) < 1e-6


def test_stretches_break_at_gaps_and_non_finite_rows():
    eng = _engine(_net(2))
    x = _rows(700, 3)
    x[300] = np.nan                      # a warm-up row after a gap
    seg = np.zeros(700, dtype=np.int64)
    seg[500:] = 1                        # a gap between rows 499 and 500 with finite rows both sides
    starts = stretch_starts(x, seg)
    assert starts[299] == 0 and starts[300] == -1 and starts[301] == 301 and starts[500] == 500
    ends = np.arange(700)
    z = eng.logits(x, ends, seg)
    scored = np.flatnonzero(np.isfinite(z))
    expect = np.r_[IB - 1:300, 301 + IB - 1:500, 500 + IB - 1:700]
    assert np.array_equal(scored, expect)
    # after the gap the logits are those of a pass that starts there (no history across it)
    assert np.max(np.abs(z[500 + IB - 1:] - eng.full_pass(x[500:])[IB - 1:])) < 1e-6


def test_streaming_step_equals_full_pass():
    eng = _engine(_net(3))
    x = _rows(900, 4)
    x[400] = np.nan
    step = eng.stepper()
    streamed = np.array([step.push(r) for r in x])
    batch = eng.logits(x, np.arange(900))
    assert np.array_equal(np.isfinite(streamed), np.isfinite(batch))
    ok = np.isfinite(batch)
    assert ok.sum() == 900 - 1 - 2 * (IB - 1)
    assert np.max(np.abs(streamed[ok] - batch[ok])) < 1e-6


def test_training_chunks_cover_each_sample_once_and_match_the_full_pass():
    n = 3000
    positions = np.r_[300:900, 1000:1400, 1405:2600]
    rows, mask = chunk_rows(positions, CHUNK_BARS, IB - 1, n)
    assert mask.sum() == len(positions)
    chunk_bars = rows[:, IB - 1:][mask]
    assert np.array_equal(np.sort(chunk_bars), positions)
    net = _net(4)
    x = _rows(n, 5)
    labels = np.random.default_rng(0).integers(0, 2, n).astype(np.float64)
    batches = SequenceBatches(torch.from_numpy(x), labels, positions, SPEC, batch_size=256)
    with torch.no_grad():
        z, y = batches.forward(net, torch.arange(len(rows)))
        full = net(torch.from_numpy(x)[None])[0]
    assert np.array_equal(y.numpy(), labels[chunk_bars].astype(np.float32))
    assert torch.allclose(z, full[torch.from_numpy(chunk_bars)], atol=1e-5)
    assert np.max(np.abs(batches.logits(net, positions) - full.numpy()[positions])) < 1e-5


@pytest.fixture(scope="module")
def seq_bundle(tmp_path_factory):
    frame = synthetic_ohlcv(2600, seed=21, gaps={1500: 6})
    cfg = load_config(None, ["model.context=sequence", "training.epochs=1", "training.batch_size=128",
                             "training.threads=1"])
    out = tmp_path_factory.mktemp("seq") / "bundle"
    train_bundle(frame, cfg, out, progress=False)
    return out, frame


def test_bundle_records_context_and_scores_causally(seq_bundle):
    path, frame = seq_bundle
    meta = json.loads((path / "bundle.json").read_text())
    assert meta["model"]["context"] == "sequence" and meta["input_bars"] == IB
    b = load_bundle(path)
    assert b.context == "sequence" and b.min_bars == 97 + IB - 1
    p = b.predict_proba(frame).to_numpy()
    first = np.flatnonzero(np.isfinite(p))[0]
    assert first == b.min_bars - 1
    # no value depends on a later bar: scoring a prefix gives the same probabilities
    cut = 1300
    q = b.predict_proba(frame.iloc[:cut]).to_numpy()
    assert np.array_equal(np.isfinite(q), np.isfinite(p[:cut]))
    assert np.nanmax(np.abs(q - p[:cut])) < 1e-9
    # the bars after the gap wait for a full input span of their own stretch
    g = int(np.flatnonzero(np.diff(frame.index.asi8) > 15 * 60 * 10**9)[0]) + 1  # first bar after the gap
    assert not np.isfinite(p[g:g + b.min_bars - 1]).any() and np.isfinite(p[g + b.min_bars - 1])


def test_bar_scorer_streams_sequence_bundle(seq_bundle):
    path, frame = seq_bundle
    b = load_bundle(path)
    batch = b.predict_proba(frame).to_numpy()
    s = b.stream()
    assert s.step is not None
    bars = frame[["open", "high", "low", "close", "volume"]].to_numpy()
    streamed = np.array([s.update(ts, *row)[1] for ts, row in zip(frame.index, bars)])
    assert np.array_equal(np.isfinite(streamed), np.isfinite(batch))
    assert np.nanmax(np.abs(streamed - batch)) < 1e-6
    # prime (restart) from the last history_bars bars gives the same P as the full stream
    p_primed = b.stream().prime(frame.iloc[-b.history_bars:])[1]
    assert abs(p_primed - batch[-1]) < 1e-6
    assert abs(b.score_window(frame.iloc[:2000]) - batch[1999]) < 1e-6


def test_tampered_sequence_weights_refused(seq_bundle, tmp_path):
    path, _ = seq_bundle
    copy = tmp_path / "b"
    shutil.copytree(path, copy)
    data = bytearray((copy / "sequence_weights.npz").read_bytes())
    data[-40] ^= 1
    (copy / "sequence_weights.npz").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sequence_weights.npz: sha256 differs"):
        load_bundle(copy)


def test_bundle_without_context_is_window_mode(tiny_bundle):
    meta = json.loads((tiny_bundle / "bundle.json").read_text())
    assert "context" not in meta["model"] or meta["model"]["context"] == "window"
    b = load_bundle(tiny_bundle)
    assert b.context == "window" and b.input_bars == b.window and b.sequence_net is None
    assert b.stream().step is None


def test_window_graph_signature_unchanged():
    """A graph exported before sequence mode recorded no context; window specs still match it."""
    from models.scorer import model_signature

    sig = json.loads(model_signature(ModelConfig(), 64, 12))
    assert "context" not in sig["model"]
    assert json.loads(model_signature(SPEC, 64, 12))["model"]["context"] == "sequence"


def test_pieces_and_threads_do_not_change_logits(monkeypatch):
    import models.sequence_scorer as ss

    eng = _engine(_net(5))
    x = _rows(1200, 6)
    x[500] = np.nan
    whole = np.r_[np.full(IB - 1, np.nan), eng.full_pass(x[:500])[IB - 1:],
                  np.full(IB, np.nan), eng.full_pass(x[501:])[IB - 1:]]
    monkeypatch.setattr(ss, "PIECE", 97)  # many pieces, a ragged last one
    one = eng.logits(x, np.arange(1200), threads=1)
    two = eng.logits(x, np.arange(1200), threads=2)
    assert np.array_equal(one, two, equal_nan=True)
    assert np.array_equal(np.isfinite(one), np.isfinite(whole))
    assert np.nanmax(np.abs(one - whole)) < 1e-6
    # a subset of bars gets the same logits as the whole history
    some = np.array([IB - 1, 300, 499, 501 + IB - 1, 1199])
    assert np.array_equal(eng.logits(x, some), one[some])


def test_onnx_batch_engine_matches_numpy_step(seq_bundle):
    path, frame = seq_bundle
    b = load_bundle(path)
    from models.dataset import feature_matrix

    norm = b.normaliser.transform(feature_matrix(frame, b.feature_cfg, b.timeframe))
    ends = np.arange(len(frame))
    ort_z = b.logits_for_features(feature_matrix(frame, b.feature_cfg, b.timeframe), ends)
    np_z = b.sequence_net.logits(norm, ends)
    assert np.array_equal(np.isfinite(ort_z), np.isfinite(np_z))
    assert np.nanmax(np.abs(ort_z - np_z)) < 1e-5


def test_windows_path_equals_batch_path(seq_bundle):
    """logits_for_windows (explain) scores (B, input_bars, F) windows like the batch path."""
    path, frame = seq_bundle
    b = load_bundle(path)
    from models.dataset import feature_matrix, window_view

    feats = feature_matrix(frame, b.feature_cfg, b.timeframe)
    z = b.predict_logit(frame).to_numpy()
    ends = np.flatnonzero(np.isfinite(z))[::50]
    view = window_view(b.normaliser.transform(feats), b.input_bars)
    got = b.logits_for_windows(view[ends - b.input_bars + 1])
    assert np.max(np.abs(got - z[ends])) < 1e-5
