"""The model bundle: loading, refusals, and one scoring path (batch == streaming)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.errors import BundleError, DataError
from core.synthetic import synthetic_ohlcv
from models.features import FEATURE_NAMES, StreamingFeatures, warmup_bars
from models.bundle import load_bundle


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def bars():
    """Bars the model never saw (other seed), with a 3-bar gap after bar 700; the second stretch
    (1,799 bars) is longer than the tail score_window computes features on."""
    return synthetic_ohlcv(2500, seed=99, gaps={700: 3}, start="2024-03-01")


@pytest.fixture
def copy_bundle(tiny_bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(tiny_bundle, dst)
    return dst


def test_loads_from_directory_or_weights_path(tiny_bundle, bundle):
    b2 = load_bundle(tiny_bundle / "final_model.pt")
    assert b2.meta == bundle.meta
    assert bundle.window == 64 and bundle.timeframe == "15m"
    assert bundle.min_bars == warmup_bars(bundle.feature_cfg) + 64 - 1 == 160
    assert bundle.label_cfg.horizon == 8
    assert tuple(bundle.meta["feature_names"]) == FEATURE_NAMES
    state = torch.load(tiny_bundle / "final_model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert sum(v.numel() for v in state.values()) == bundle.meta["parameters"] == 58401
    assert bundle.scorer_id == bundle.meta["onnx_sha256"] == hashlib.sha256(
        (tiny_bundle / "model.onnx").read_bytes()).hexdigest()


def test_spans_are_ordered(bundle):
    tr_a, tr_b = bundle.training_span
    te_a, te_b = bundle.test_span
    assert tr_a < tr_b < te_a < te_b
    assert te_a - tr_b >= pd.Timedelta(minutes=15 * 8)  # purge + embargo between them


def test_predict_proba_nan_only_without_a_full_window(bundle, bars):
    p = bundle.predict_proba(bars)
    assert p.index.equals(bars.index)
    vals = p.to_numpy()
    n_pre = 701
    # first stretch: NaN until min_bars bars exist; second stretch restarts warm-up after the gap
    assert np.isnan(vals[: bundle.min_bars - 1]).all()
    assert np.isfinite(vals[bundle.min_bars - 1: n_pre]).all()
    assert np.isnan(vals[n_pre: n_pre + bundle.min_bars - 1]).all()
    assert np.isfinite(vals[n_pre + bundle.min_bars - 1:]).all()
    assert ((vals[np.isfinite(vals)] > 0) & (vals[np.isfinite(vals)] < 1)).all()
    logit = bundle.predict_logit(bars)
    np.testing.assert_allclose(bundle.calibrate(logit.to_numpy()), vals, rtol=0, atol=1e-12)


def test_batch_window_and_streaming_scores_agree(bundle, bars):
    p = bundle.predict_proba(bars)
    lg = bundle.predict_logit(bars)
    checks = [bundle.min_bars - 1, 300, 700, 701 + bundle.min_bars - 1, 1000, len(bars) - 1]
    assert len(bars) - 701 > bundle.history_bars  # the last check scores a truncated tail
    for t in checks:
        assert abs(bundle.score_window(bars.iloc[: t + 1]) - p.iloc[t]) < 1e-6, t
    # streaming features -> score_features gives the same numbers bar by bar
    sf = StreamingFeatures(bundle.feature_cfg, bundle.timeframe)
    rows = np.array([sf.update(ts, *row) for ts, row in zip(bars.index, bars.to_numpy())])
    for t in checks:
        logit, prob = bundle.score_features(rows[t - 63: t + 1])
        assert abs(prob - p.iloc[t]) < 1e-6 and abs(logit - lg.iloc[t]) < 1e-5, t


def test_not_enough_history_is_nan(bundle, bars):
    assert np.isnan(bundle.score_window(bars.iloc[: bundle.min_bars - 1]))
    assert np.isfinite(bundle.score_window(bars.iloc[: bundle.min_bars]))
    # last window straddles the gap after bar 700
    assert np.isnan(bundle.score_window(bars.iloc[: 710]))
    assert np.isfinite(bundle.score_features(np.zeros((64, 12)))).all()
    assert np.isnan(bundle.score_features(np.full((64, 12), np.nan))[1])
    with pytest.raises(DataError, match=r"\(64, 12\)"):
        bundle.score_features(np.zeros((63, 12)))


def test_predict_refuses_non_candles(bundle, bars):
    with pytest.raises(DataError, match="missing column"):
        bundle.predict_proba(bars.drop(columns="volume"))
    with pytest.raises(DataError, match="sorted"):
        bundle.predict_proba(bars.iloc[::-1])


def _edit_meta(path, **changes):
    meta = json.loads((path / "bundle.json").read_text())
    for dotted, value in changes.items():
        node = meta
        keys = dotted.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    (path / "bundle.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("changes, message", [
    ({"format_version": 99}, "format version 99"),
    ({"feature_hash": "0" * 64}, "feature definitions hash"),
    ({"feature_names": list(FEATURE_NAMES[:11]) + ["other"]}, "feature set"),
    ({"feature_config__rsi_window": 10}, "feature definitions hash"),
    ({"window": 32}, "window 32"),
])
def test_refuses_mismatched_bundle(copy_bundle, changes, message):
    _edit_meta(copy_bundle, **changes)
    with pytest.raises(BundleError, match=message) as exc:
        load_bundle(copy_bundle)
    assert "\n" not in str(exc.value)


def test_refuses_expected_window_mismatch(tiny_bundle):
    with pytest.raises(BundleError, match="expected 32"):
        load_bundle(tiny_bundle, expected_window=32)


def test_refuses_tampered_and_truncated_weights(copy_bundle):
    w = copy_bundle / "final_model.pt"
    raw = bytearray(w.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    w.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="tampered or truncated"):
        load_bundle(copy_bundle)
    w.write_bytes(bytes(raw[: len(raw) // 3]))
    with pytest.raises(BundleError, match="tampered or truncated"):
        load_bundle(copy_bundle / "final_model.pt")


def test_refuses_missing_pieces(copy_bundle, tmp_path):
    with pytest.raises(BundleError, match="no bundle.json"):
        load_bundle(tmp_path)
    (copy_bundle / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="unreadable"):
        load_bundle(copy_bundle)
    (copy_bundle / "final_model.pt").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(copy_bundle)


def test_bundle_contents(tiny_bundle, bundle):
    for name in ("final_model.pt", "model.onnx", "bundle.json", "reliability.png", "learning_curves.png",
                 "report.html"):
        assert (tiny_bundle / name).stat().st_size > 0, name
    m = bundle.meta
    for key in ("normaliser", "calibrator", "label_config", "spans", "config", "seed", "versions", "metrics",
                "history", "feature_hash", "weights_sha256", "onnx_sha256"):
        assert key in m, key
    assert len(m["normaliser"]["mean"]) == 12
    assert m["calibrator"]["kind"] == "platt"
    for span in ("val", "test"):
        for model in ("tcn", "baseline"):
            for kind in ("raw", "calibrated"):
                assert set(m["metrics"][span][model][kind]) >= {"auc", "log_loss", "brier", "ece"}
    html = (tiny_bundle / "report.html").read_text()
    assert "reliability.png" in html and "baseline" in html
    assert m["scorer"]["engine"] == "onnxruntime" and "onnxruntime" in m["versions"]


def test_scoring_never_imports_or_touches_torch(bundle, bars):
    before = torch.get_num_threads()
    bundle.threads = 2
    bundle.score_window(bars.iloc[:400])
    bundle.predict_proba(bars.iloc[:400])
    assert torch.get_num_threads() == before
    bundle.threads = 1


def test_score_window_is_incremental_and_equals_a_cold_call(bundle, bars):
    """Consecutive calls (the server scoring each new bar) feed only the new bar to the kept
    stream; their P equals a cold call on the same bars and the batch path."""
    p = bundle.predict_proba(bars).to_numpy()
    h = bundle.history_bars
    start = 701 + h + 5  # a full history_bars tail inside the second stretch
    got = [bundle.score_window(bars.iloc[:t + 1]) for t in range(start, start + 40)]
    assert bundle._window_seen is not None and len(bundle._window_seen[0]) == h
    for k, t in enumerate(range(start, start + 40)):
        assert abs(got[k] - p[t]) < 1e-6, t
    # a cold call on the same bars (another bundle instance: no kept stream) gives the same P
    cold = load_bundle(bundle.path)
    for t in (start, start + 39):
        assert abs(cold.score_window(bars.iloc[:t + 1]) - got[t - start]) < 1e-12
    # non-consecutive calls (a jump back, a changed earlier bar) are scored cold, not from the stream
    assert abs(bundle.score_window(bars.iloc[:start - 300]) - p[start - 301]) < 1e-6
    edited = bars.iloc[:start + 41].copy()
    edited.iloc[-10, edited.columns.get_loc("volume")] *= 3.0
    expected = cold.predict_proba(edited).to_numpy()[-1]
    bundle.score_window(bars.iloc[:start + 40])
    assert abs(bundle.score_window(edited) - expected) < 1e-6
    assert abs(expected - p[start + 40]) > 1e-9  # the edit does move P: the check above means something


def test_tampered_graph_and_pre_onnx_bundle_are_refused(copy_bundle):
    graph = copy_bundle / "model.onnx"
    raw = bytearray(graph.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    graph.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="model.onnx: sha256 differs"):
        load_bundle(copy_bundle)
    graph.unlink()
    with pytest.raises(BundleError, match="model.onnx is missing"):
        load_bundle(copy_bundle)
    meta = json.loads((copy_bundle / "bundle.json").read_text())
    del meta["onnx_sha256"]
    (copy_bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="nts bundle export") as exc:
        load_bundle(copy_bundle)
    assert "\n" not in str(exc.value)


def test_bundle_export_gives_an_old_bundle_its_graph(copy_bundle, tiny_bundle, bars):
    """``nts bundle export`` on a bundle from before ONNX: the same graph as training exported
    (byte for byte: the export is deterministic), recorded in bundle.json, and a second run is a no-op."""
    from click.testing import CliRunner

    from cli.main import cli

    meta = json.loads((copy_bundle / "bundle.json").read_text())
    del meta["onnx_sha256"], meta["scorer"]
    (copy_bundle / "bundle.json").write_text(json.dumps(meta))
    (copy_bundle / "model.onnx").unlink()
    res = CliRunner().invoke(cli, ["bundle", "export", str(copy_bundle)])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output
    assert (copy_bundle / "model.onnx").read_bytes() == (tiny_bundle / "model.onnx").read_bytes()
    b = load_bundle(copy_bundle)
    np.testing.assert_array_equal(b.predict_logit(bars.iloc[:500]).to_numpy(),
                                  load_bundle(tiny_bundle).predict_logit(bars.iloc[:500]).to_numpy())
    res = CliRunner().invoke(cli, ["bundle", "export", str(copy_bundle)])
    assert res.exit_code == 0 and "nothing to do" in res.output, res.output


def test_exported_graph_names_no_local_path(tiny_bundle):
    """The exporter's per-node stack traces (absolute source paths of the checkout that trained
    the model) are dropped: a shared bundle carries no local path."""
    data = (tiny_bundle / "model.onnx").read_bytes()
    root = str(Path(__file__).resolve().parents[1]).encode()
    assert root not in data and b"pkg.torch.onnx.stack_trace" not in data
    assert b"pkg.torch.onnx.class_hierarchy" in data  # the rest of the node metadata stays


# ------------------------------------------------- damaged bundle.json: one line naming file + field

@pytest.mark.parametrize("changes, field", [
    ({"normaliser__mean": [0.0] * 11}, "normaliser.mean"),
    ({"normaliser__std": [1.0] * 11 + [float("nan")]}, "normaliser.std"),
    ({"normaliser__std": [1.0] * 11 + [0.0]}, "normaliser.std"),
    ({"normaliser__mean": "zeros"}, "normaliser.mean"),
    ({"normaliser": None}, "normaliser"),
    ({"calibrator__params": {}}, "calibrator.params.a"),
    ({"calibrator": {"kind": "platt"}}, "calibrator.params"),
    ({"calibrator__kind": "beta"}, "calibrator.kind"),
    ({"calibrator": {"kind": "isotonic", "params": {"x": [0.1, 0.5], "y": [0.2]}}}, "calibrator.params.y"),
    ({"calibrator": {"kind": "isotonic", "params": {"x": [0.5, 0.1], "y": [0.2, 0.3]}}}, "calibrator.params.x"),
    ({"calibrator": {"kind": "isotonic", "params": {"x": [], "y": []}}}, "calibrator.params.x"),
    ({"spans__training": "garbage"}, "spans.training"),
    ({"spans__training": ["garbage", "2024-01-01T00:00:00+00:00"]}, "spans.training"),
    ({"spans__test": ["2024-02-01T00:00:00+00:00", "2024-01-01T00:00:00+00:00"]}, "spans.test"),
    ({"spans": {"training": ["2024-01-01", "2024-01-02"]}}, "spans.test"),
    ({"model__channels": [32, 32, 64]}, "model"),
    ({"model__kernel_size": "3"}, "model.kernel_size"),
    ({"model__dropout": 1.5}, "model.dropout"),
    ({"label_config__horizon": 0}, "label_config.horizon"),
    ({"label_config__tie": "coin"}, "label_config.tie"),
    ({"label_config": [1, 2]}, "label_config"),
    ({"feature_config__sma_fast": "five"}, "feature_config.sma_fast"),
    ({"feature_config__unknown": 1}, "feature_config.unknown"),
    ({"timeframe": "fortnightly"}, "timeframe"),
    ({"window": "64"}, "window"),
    ({"config__model": None}, "config.model.window"),
    ({"threads": 0}, "threads"),
    ({"weights_sha256": None}, "weights_sha256"),
    ({"onnx_sha256": "abc"}, "onnx_sha256"),
    ({"onnx_sha256": 5}, "onnx_sha256"),
    ({"feature_names": "all"}, "feature_names"),
])
def test_damaged_bundle_json_is_one_line_naming_the_field(copy_bundle, changes, field):
    _edit_meta(copy_bundle, **changes)
    with pytest.raises(BundleError) as exc:
        load_bundle(copy_bundle)
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(copy_bundle / "bundle.json") in msg and f"field '{field}'" in msg, msg


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2, 3]", b"\xff\xfe\x00garbage", b"", b"null"])
def test_bundle_json_that_is_not_a_json_object(copy_bundle, content):
    (copy_bundle / "bundle.json").write_bytes(content)
    with pytest.raises(BundleError, match="bundle.json: (unreadable|not a JSON object)") as exc:
        load_bundle(copy_bundle)
    assert "\n" not in str(exc.value)


def test_valid_spec_that_the_weights_do_not_fit(copy_bundle):
    # a model section that validates but describes another network: state_dict does not load
    _edit_meta(copy_bundle, model__channels=[16, 16, 16, 16])
    with pytest.raises(BundleError, match="model in bundle.json does not fit the graph") as exc:
        load_bundle(copy_bundle)
    assert "\n" not in str(exc.value)


def test_backtest_cli_prints_one_line_for_a_damaged_bundle(copy_bundle, tmp_path):
    from click.testing import CliRunner

    from cli.main import cli
    from core.ohlcv import write_ohlcv_csv

    data = tmp_path / "bars.csv"
    write_ohlcv_csv(synthetic_ohlcv(400, seed=5, start="2030-01-01"), data)
    _edit_meta(copy_bundle, model__channels=[32, 32, 64])
    res = CliRunner().invoke(cli, ["backtest", "--model", str(copy_bundle), "--data", str(data),
                                   "--output", str(tmp_path / "out"), "--quiet"])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error:") and "field 'model'" in lines[0], res.output


def _leaves(node, path=()):
    """Every (path, value) below node, containers included (so whole sections get replaced too)."""
    yield path, node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield from _leaves(v, path + (k,))


def test_any_junk_in_a_loaded_field_is_a_bundle_error_or_loads(copy_bundle):
    """Replace every field that loading/scoring reads with junk: the outcome is a load or a
    one-line BundleError, never another exception."""
    original = json.loads((copy_bundle / "bundle.json").read_text())
    used = ("format_version", "feature_names", "feature_hash", "feature_config", "timeframe", "window",
            "model", "label_config", "threads", "normaliser", "calibrator", "spans", "weights_sha256",
            "onnx_sha256")
    junk = [None, "x", -1, 1e308, [], {}]
    paths = [p for key in used for p, _ in _leaves(original[key], (key,))]
    paths += [("config",), ("config", "model"), ("config", "model", "window")]
    refused = 0
    for path in paths:
        for value in junk:
            meta = json.loads(json.dumps(original))
            node = meta
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = value
            (copy_bundle / "bundle.json").write_text(json.dumps(meta))
            try:
                load_bundle(copy_bundle)
            except BundleError as exc:
                assert "\n" not in str(exc)
                refused += 1
    assert refused > len(paths) * 4  # nearly every junk value is refused


@pytest.mark.parametrize("section, key", [("label_config", "horizon"), ("model", "channels"),
                                          ("feature_config", "rsi_window")])
def test_missing_config_key_is_refused_not_defaulted(copy_bundle, section, key):
    meta = json.loads((copy_bundle / "bundle.json").read_text())
    del meta[section][key]
    (copy_bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=f"field '{section}.{key}': missing"):
        load_bundle(copy_bundle)
