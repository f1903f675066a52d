"""Training pipeline: windows, normalisation on train only, seeds, early stopping, calibration,
metrics, baseline, atomic bundle writing and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from core.config import load_config
from core.ohlcv import segment_ids, write_ohlcv_csv
from core.synthetic import synthetic_ohlcv
from models import train as train_mod
from models.calibration import Calibrator, sigmoid
from models.dataset import Normaliser, prepare, valid_window_mask, window_view
from models.tcn import gather_windows
from models.metrics import brier, ece, log_loss, reliability_bins
from models.splits import walk_forward_split
from models.train import fit_network, resolve_pos_weight, train_bundle, weighted_bce

# a small network and window so that every training here takes well under a second or two
SMALL = ["model.window=16", "model.channels=[8,8]", "model.dilations=[1,2]", "model.head_units=8",
         "training.batch_size=128", "training.threads=1"]


@pytest.fixture(scope="module")
def frame():
    return synthetic_ohlcv(2500, seed=5, gaps={1200: 7})


def small_cfg(*extra):
    return load_config(None, SMALL + list(extra))


# ------------------------------------------------------------------ windows
def test_valid_window_mask_respects_gaps_and_nan():
    feats = np.ones((40, 3))
    feats[5, 1] = np.nan
    seg = np.r_[np.zeros(25, int), np.ones(15, int)]
    ok = valid_window_mask(feats, seg, 8)
    expected = np.zeros(40, bool)
    expected[13:25] = True      # after the NaN row at 5 leaves the window, before the gap
    expected[32:] = True        # 8 bars into the second stretch
    assert np.array_equal(ok, expected)


def test_window_view_is_a_view_and_gather_matches():
    norm = np.random.default_rng(0).normal(size=(300, 12)).astype(np.float32)
    view = window_view(norm, 64)
    assert np.shares_memory(view, norm) and view.shape == (237, 64, 12)
    ends = np.array([63, 100, 299])
    np.testing.assert_array_equal(view[ends - 63][1], norm[37:101])
    g = gather_windows(torch.from_numpy(norm), torch.from_numpy(ends), 64).numpy()
    np.testing.assert_array_equal(g, view[ends - 63])


def test_prepare_drops_rows_without_features_or_label(frame):
    cfg = small_cfg()
    data = prepare(frame, cfg)
    assert np.isfinite(data.labels[data.samples]).all()
    assert data.valid_window[data.samples].all()
    seg = segment_ids(frame.index)
    assert (seg[data.samples] == seg[data.samples - 15]).all()
    # no window may start before the first stretch's warm-up or cross the gap after bar 1200
    assert not np.isin(np.arange(1201, 1201 + 97 + 15 - 1), data.samples).any()


# --------------------------------------------------------------- calibration / metrics
def test_platt_recovers_known_parameters():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, 40000)
    y = (rng.random(len(z)) < sigmoid(2.0 * z - 1.0)).astype(float)
    cal = Calibrator.fit(z, y, "platt")
    assert cal.params["a"] == pytest.approx(2.0, abs=0.1) and cal.params["b"] == pytest.approx(-1.0, abs=0.1)
    back = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_allclose(back(z[:100]), sigmoid(cal.params["a"] * z[:100] + cal.params["b"]))


def test_isotonic_is_monotone_and_bounded():
    rng = np.random.default_rng(1)
    z = rng.normal(size=5000)
    y = (rng.random(5000) < sigmoid(z)).astype(float)
    cal = Calibrator.fit(z, y, "isotonic")
    grid = np.linspace(-6, 6, 200)
    p = cal(grid)
    assert (np.diff(p) >= 0).all() and p.min() >= 0 and p.max() <= 1
    assert abs(cal(z).mean() - y.mean()) < 0.01


def test_metrics_by_hand():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.05, 0.15, 0.55, 0.65, 0.95])
    assert brier(y, p) == pytest.approx(np.mean((p - y) ** 2))
    assert log_loss(y, p) == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    # bins: [0,.1) p=.05 y=0 ; [.1,.2) .15/0 ; [.5,.6) .55/1 ; [.6,.7) .65/1 ; [.9,1] .95/1
    expected = (0.05 + 0.15 + 0.45 + 0.35 + 0.05) / 5
    assert ece(y, p) == pytest.approx(expected)
    mp, freq, count = reliability_bins(y, np.array([0.0, 1.0, 1.0, 0.5, 0.5]))
    assert count[0] == 1 and count[9] == 2 and count[5] == 2


def test_pos_weight_auto_is_negatives_over_positives():
    assert resolve_pos_weight("auto", np.array([1, 0, 0, 0, 1, 0.0])) == 2.0
    assert resolve_pos_weight(1.5, np.array([1, 0.0])) == 1.5


# -------------------------------------------------------------------- training
def _fit(frame, seed, epochs=2, patience=3):
    cfg = small_cfg(f"training.seed={seed}", f"training.patience={patience}")
    data = prepare(frame, cfg)
    split = walk_forward_split(data.samples, 8, 8)
    norm_ = Normaliser.fit(data.features, split.train)
    norm = torch.from_numpy(norm_.transform(data.features))
    train_mod.set_seeds(seed)
    net = train_mod.build_tcn(cfg.model, 12)
    pw = resolve_pos_weight("auto", data.labels[split.train])
    res = fit_network(net, norm, data.labels, split, 16, cfg.training, epochs, pw, seed, progress=False)
    return res, net, norm, data, split, pw


def test_same_data_and_seed_give_same_weights(frame):
    a = _fit(frame, seed=3)[0].state_dict
    b = _fit(frame, seed=3)[0].state_dict
    c = _fit(frame, seed=4)[0].state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_early_stopping_restores_the_best_weights(frame):
    res, net, norm, data, split, pw = _fit(frame, seed=0, epochs=12, patience=1)
    losses = [h["val_loss"] for h in res.history]
    assert res.best_epoch == int(np.argmin(losses)) + 1
    assert res.stopped_early == (len(res.history) < 12)
    if res.stopped_early:
        assert len(res.history) == res.best_epoch + 1
    logits = train_mod.network_logits(net, norm, split.val, 16)
    assert weighted_bce(logits, data.labels[split.val], pw) == pytest.approx(losses[res.best_epoch - 1], rel=1e-6)


def test_train_bundle_end_to_end(frame, tmp_path):
    cfg = small_cfg("training.epochs=2")
    res = train_bundle(frame, cfg, tmp_path / "b", progress=False, max_samples=600)
    m = res.meta
    data = prepare(frame, cfg)
    split = walk_forward_split(data.samples, 8, 8)
    train = split.train[-600:]
    assert m["samples"]["train"] == 600 and m["split"]["train"]["first"] == train[0]
    # normaliser fitted on the rows of the training windows only
    rows = np.unique((train[:, None] + np.arange(-15, 1)).ravel())
    np.testing.assert_allclose(m["normaliser"]["mean"], data.features[rows].mean(axis=0), rtol=1e-9)
    # no trained-on label window reaches the validation or test spans
    assert m["split"]["train"]["last"] + 8 < m["split"]["val"]["first"] - 8
    assert m["split"]["val"]["last"] + 8 < m["split"]["test"]["first"] - 8
    # TCN and baseline scored on the same samples
    for span in ("val", "test"):
        ns = {m["metrics"][span][mdl][k]["n"] for mdl in ("tcn", "baseline") for k in ("raw", "calibrated")}
        assert ns == {m["samples"][span]}
    # calibration fitted on validation: calibrated mean P matches the validation base rate
    v = m["metrics"]["val"]["tcn"]["calibrated"]
    assert v["mean_p"] == pytest.approx(v["base_rate"], abs=0.01)
    assert not list(tmp_path.glob(".b.tmp-*"))


def test_purged_kfold_option(frame, tmp_path):
    cfg = small_cfg("training.epochs=1", "training.split=purged_kfold", "training.folds=3")
    m = train_bundle(frame, cfg, tmp_path / "k", progress=False).meta
    assert [c["split"]["name"] for c in m["cv"]] == ["purged_kfold_0", "purged_kfold_1", "purged_kfold_2"]
    assert m["split"]["name"] == "purged_kfold_2"
    # fold 0 validates on the fold AFTER its test fold: the embargo there covers the input
    # window plus the feature warm-up (min_bars), not only the label horizon
    f0 = m["cv"][0]["split"]
    horizon = cfg.labels.horizon
    assert m["min_bars"] == 97 + 16 - 1
    assert f0["val"]["first"] - (f0["test"]["last"] + horizon) > max(cfg.training.embargo, m["min_bars"])


def test_crash_while_writing_leaves_no_bundle(frame, tmp_path, monkeypatch):
    import models.train

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(models.train, "write_report", boom)  # the name train.py calls
    with pytest.raises(RuntimeError, match="disk full"):
        train_bundle(frame, small_cfg("training.epochs=1"), tmp_path / "b", progress=False)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------- CLI
def test_cli_train_and_explain(tmp_path):
    data = tmp_path / "c.csv"
    write_ohlcv_csv(synthetic_ohlcv(2000, seed=8), data)
    out = tmp_path / "bundle"
    r = CliRunner().invoke(cli, ["train", "--data", str(data), "--output", str(out), "--epochs", "1", "--quiet",
                                 *sum((["--set", s] for s in SMALL), [])])
    assert r.exit_code == 0, r.output
    assert "TCN calibrated" in r.output and (out / "bundle.json").exists()
    r = CliRunner().invoke(cli, ["explain", "--model", str(out / "final_model.pt"), "--data", str(data),
                                 "--output", str(tmp_path / "x"), "--repeats", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "x" / "importance.csv").read_text().splitlines()
    assert len(text) == 1 + 12 + 2  # header, 12 features, lag blocks 0-8 and 8-16 of a 16-bar window
    assert (tmp_path / "x" / "importance.png").stat().st_size > 0


def test_cli_refusals_are_one_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,open,high,low,close\n1,2,3,1,2\n")
    out = tmp_path / "never"
    r = CliRunner().invoke(cli, ["train", "--data", str(bad), "--output", str(out), "--quiet"])
    assert r.exit_code == 2 and "missing column(s) volume" in r.output
    assert not out.exists()
    r = CliRunner().invoke(cli, ["explain", "--model", str(tmp_path), "--data", str(bad)])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "no bundle.json" in r.output
    short = tmp_path / "short.csv"
    write_ohlcv_csv(synthetic_ohlcv(150, seed=1), short)
    r = CliRunner().invoke(cli, ["train", "--data", str(short), "--output", str(out), "--quiet"])
    assert r.exit_code == 2 and "labelled samples" in r.output and not out.exists()


@pytest.mark.realdata
def test_real_candles_windows_and_splits_respect_the_big_gap(real_candles):
    """On the real file no window crosses the 14,166-bar gap, and the walk-forward spans are purged."""
    cfg = load_config()
    data = prepare(real_candles, cfg)
    seg = segment_ids(real_candles.index)
    assert seg.max() == 2  # two gaps in the file
    assert (seg[data.samples] == seg[data.samples - 63]).all()
    first_after = np.flatnonzero(seg == 1)[0]
    assert not np.isin(np.arange(first_after, first_after + 96 + 63), data.samples).any()
    s = walk_forward_split(data.samples, 8, 8, 0.15, 0.15)
    assert s.train[-1] + 8 + 8 < s.val[0] and s.val[-1] + 8 + 8 < s.test[0]
    assert len(data.samples) > 80000


def test_single_class_validation_is_refused_clearly():
    from core.errors import DataError

    with pytest.raises(DataError, match="both classes"):
        Calibrator.fit(np.zeros(10), np.zeros(10))


# ------------------------------------------------------------------ seed ensembles
def test_seed_ensemble_averages_member_logits_before_one_calibrator(frame, tmp_path):
    from models.bundle import load_bundle
    from models.ensemble import EnsembleModel
    from models.ensemble_train import train_ensemble
    from models.schedule import load_model

    cfg = small_cfg("model.ensemble=3", "training.epochs=1")
    tree = train_ensemble(frame, cfg, tmp_path / "ens", progress=False)
    assert tree["k"] == 3 and len({m["weights_sha256"] for m in tree["members"]}) == 3
    assert [m["seed"] for m in tree["members"]] == [42, 43, 44]
    model = load_model(tmp_path / "ens")
    assert isinstance(model, EnsembleModel)
    members = [load_bundle(tmp_path / "ens" / m["path"]) for m in tree["members"]]
    z = np.mean([m.predict_logit(frame).to_numpy() for m in members], axis=0)
    np.testing.assert_array_equal(model.predict_logit(frame).to_numpy(), z)
    p = model.predict_proba(frame).to_numpy()
    cal = Calibrator.from_dict(tree["calibrator"])
    np.testing.assert_array_equal(p, cal(z))
    ok = np.flatnonzero(np.isfinite(z))
    assert model.score_window(frame.iloc[: ok[-1] + 1]) == pytest.approx(p[ok[-1]], abs=1e-5)
    assert set(tree["metrics"]["test"]["ensemble"]) == {"calibrated", "raw"}
    assert len(tree["metrics"]["test"]["members"]) == 3 and len(tree["seconds"]["members"]) == 3
