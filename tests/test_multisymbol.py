"""Several symbols in one training: windows never cross symbols or gaps, spans by time with
purge/embargo per symbol, symbols with different histories, per-symbol metrics and inputs in
bundle.json, the CLI (--data repeated, --universe) and a pooled walk-forward schedule."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cli.main import cli
from core.config import load_config
from core.errors import DataError
from core.ohlcv import write_ohlcv_csv
from core.synthetic import synthetic_ohlcv
from models.bundle import load_bundle
from models.dataset import prepare
from models.schedule import ModelSchedule
from models.universe import (
    SymbolInput,
    cap_train_by_time,
    pooled_cuts,
    prepare_pooled,
    symbol_from_name,
    time_split,
    train_pooled_bundle,
)
from models.walkforward import build_schedule

SMALL = ["model.window=16", "model.channels=[8,8]", "model.dilations=[1,2]", "model.head_units=8",
         "training.batch_size=128", "training.threads=1", "training.epochs=1"]


def small_cfg(*extra):
    return load_config(None, SMALL + list(extra))


@pytest.fixture(scope="module")
def inputs():
    # different volatility (base rates differ) and different histories: B starts late, C ends early
    a = synthetic_ohlcv(4000, seed=1, vol=0.004, gaps={2000: 6})
    b = synthetic_ohlcv(2500, seed=2, vol=0.006, start="2024-01-16", price=2000.0)
    c = synthetic_ohlcv(3000, seed=3, vol=0.003, price=0.5)
    return [SymbolInput("AAA/USDT", "aaa.csv", a, "a" * 64), SymbolInput("BBB/USDT", "bbb.csv", b, "b" * 64),
            SymbolInput("CCC/USDT", "ccc.csv", c, "c" * 64)]


def test_symbol_names_from_files():
    assert symbol_from_name("../shared/data/eth_usdt_15m.csv.gz") == "ETH/USDT"
    assert symbol_from_name("candles.csv") == "candles"


def test_pooled_preparation_keeps_symbols_apart(inputs):
    cfg = small_cfg()
    pooled = prepare_pooled(inputs, cfg)
    w = cfg.model.window
    offset = 0
    for k, inp in enumerate(inputs):
        own = prepare(inp.frame, cfg)
        rows = slice(offset, offset + len(inp.frame))
        np.testing.assert_array_equal(pooled.data.labels[rows], own.labels)
        np.testing.assert_array_equal(pooled.data.valid_window[rows], own.valid_window)
        np.testing.assert_array_equal(pooled.rows_of(k), own.samples + offset)
        offset += len(inp.frame)
    s = pooled.data.samples
    # every row of every sample's window belongs to the sample's symbol and stretch
    for lag in range(w):
        assert (pooled.symbol_id[s - lag] == pooled.symbol_id[s]).all()
        assert (pooled.data.seg[s - lag] == pooled.data.seg[s]).all()
    # stretch ids never repeat across symbols
    firsts = [pooled.data.seg[pooled.symbol_id == k] for k in range(3)]
    assert firsts[0].max() < firsts[1].min() and firsts[1].max() < firsts[2].min()


def test_time_split_cuts_every_symbol_at_the_same_times_and_purges_each(inputs):
    cfg = small_cfg()
    pooled = prepare_pooled(inputs, cfg)
    cut_val, cut_test = pooled_cuts(pooled, 0.15, 0.15)
    split = time_split(pooled, 8, 8, cut_val, cut_test)
    t = pooled.times
    assert (t[split.train] < cut_val).all() and (t[split.val] >= cut_val).all()
    assert (t[split.val] < cut_test).all() and (t[split.test] >= cut_test).all()
    for k in range(3):
        sym = lambda a: a[pooled.symbol_id[a] == k]  # noqa: E731
        tr, va, te = sym(split.train), sym(split.val), sym(split.test)
        if len(te) and len(va):
            assert va.max() + 8 < te.min() - 8          # purge + embargo, in the symbol's own rows
        if len(va) and len(tr):
            assert tr.max() + 8 < va.min() - 8
    # C ends before the test cut: it has no test samples, the others do
    assert len(split.test[pooled.symbol_id[split.test] == 2]) == 0
    assert len(split.test[pooled.symbol_id[split.test] == 1]) > 0
    capped = cap_train_by_time(split, pooled, 500)
    assert len(capped.train) == 500 and t[capped.train].min() >= np.sort(t[split.train])[-500]
    with pytest.raises(DataError, match="test span"):
        time_split(pooled, 8, 8, cut_val, int(t.max()) + 1)


@pytest.fixture(scope="module")
def pooled_bundle(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("pool") / "b"
    result = train_pooled_bundle(inputs, small_cfg(), out, progress=False)
    return out, result


def test_pooled_bundle_records_inputs_spans_and_per_symbol_metrics(pooled_bundle, inputs):
    out, result = pooled_bundle
    meta = json.loads((out / "bundle.json").read_text())
    assert [i["symbol"] for i in meta["inputs"]] == ["AAA/USDT", "BBB/USDT", "CCC/USDT"]
    assert meta["inputs"][1]["file"] == "bbb.csv" and meta["inputs"][1]["sha256"] == "b" * 64
    assert meta["inputs"][1]["start"] == inputs[1].frame.index[0].isoformat()
    per = meta["per_symbol"]["test"]
    pooled_n = meta["metrics"]["test"]["tcn"]["calibrated"]["n"]
    assert sum(per[s]["TCN calibrated"]["n"] for s in per if per[s].get("n", 1)) == pooled_n
    assert per["CCC/USDT"] == {"n": 0}
    assert "fixed barriers" in meta["label_scale"]
    bundle = load_bundle(out)
    # the training span by time ends before the test span starts
    assert bundle.training_span[1] < bundle.test_span[0]
    assert pd.Timestamp(meta["spans"]["test"][0]) >= inputs[1].frame.index[0]


def test_cli_pools_repeated_data_and_universe_files(inputs, tmp_path):
    paths = []
    for inp in inputs[:2]:
        p = tmp_path / f"{inp.symbol.split('/')[0].lower()}_usdt_15m.csv"
        write_ohlcv_csv(inp.frame, p)
        paths.append(p)
    sets = [x for s in SMALL for x in ("--set", s)]
    res = CliRunner().invoke(cli, ["train", "--data", str(paths[0]), "--data", str(paths[1]), "--output",
                                   str(tmp_path / "b1"), "--quiet", *sets])
    assert res.exit_code == 0, res.output
    assert "AAA/USDT: AUC" in res.output and "BBB/USDT: AUC" in res.output
    (tmp_path / "u.yaml").write_text(f"symbols:\n  X/USDT: {paths[0].name}\n  Y/USDT: {paths[1].name}\n")
    res = CliRunner().invoke(cli, ["train", "--universe", str(tmp_path / "u.yaml"), "--output",
                                   str(tmp_path / "b2"), "--quiet", *sets])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "b2" / "bundle.json").read_text())
    assert meta["symbols"] == ["X/USDT", "Y/USDT"]
    twice = CliRunner().invoke(cli, ["train", "--data", str(paths[0]), "--data", str(paths[0]), "--output",
                                     str(tmp_path / "b3"), *sets])
    assert twice.exit_code != 0 and "given twice" in twice.output and not (tmp_path / "b3").exists()


def test_pooled_walk_forward_schedule_scores_each_symbol(inputs, tmp_path):
    cfg = small_cfg("training.train_window=20D", "training.step=10D")
    result = build_schedule(inputs, cfg, tmp_path / "wf")
    folds = result.schedule["folds"]
    assert len(folds) >= 2
    for f in folds:
        assert {i["symbol"] for i in f["inputs"]} <= {"AAA/USDT", "BBB/USDT", "CCC/USDT"}
        assert all(i["slice_sha256"] for i in f["inputs"])
        assert pd.Timestamp(f["training_span"][1]) < pd.Timestamp(f["valid_from"])
    sched = ModelSchedule(tmp_path / "wf")
    p = sched.predict_proba(inputs[1].frame)
    assert np.isfinite(p[inputs[1].frame.index >= pd.Timestamp(folds[0]["valid_from"])]).mean() > 0.8


# ------------------------------------------------------------------ volatility-scaled barriers
def test_vol_scaled_barriers_follow_each_bars_forecast():
    from core.config import LabelConfig
    from models.features import compute_features
    from models.labels import label_arrays, vol_barrier_factors

    frame = synthetic_ohlcv(600, seed=9, gaps={300: 4})
    cfg = LabelConfig(scale="vol", vol_profit=1.5, vol_stop=0.8, horizon=6, vol_span=10)
    up, dn = vol_barrier_factors(frame, cfg)
    r = np.log(frame["close"]).diff().to_numpy()
    # independent EWMA (adjust=False, seeded with the first squared return, NaN for span-1 more)
    sig = np.full(len(frame), np.nan)
    alpha = 2.0 / (10 + 1)
    for lo, hi in ((1, 301), (302, 600)):
        e = r[lo] ** 2
        for i in range(lo, hi):
            e = e if i == lo else alpha * r[i] ** 2 + (1 - alpha) * e
            if i - lo >= 9:
                sig[i] = np.sqrt(e)
    np.testing.assert_allclose(up, 1 + 1.5 * sig * np.sqrt(6), rtol=1e-9, equal_nan=True)
    np.testing.assert_allclose(dn, 1 - 0.8 * sig * np.sqrt(6), rtol=1e-9, equal_nan=True)
    assert np.isfinite(compute_features(frame)["ewma_vol_fast"].to_numpy()[50:300]).all()
    code, offset, price = label_arrays(frame, cfg)
    close, high, low = (frame[c].to_numpy() for c in ("close", "high", "low"))
    assert (code[~np.isfinite(up)] == 0).all()         # no forecast yet -> no label
    for t in np.flatnonzero(code > 0)[::7]:
        h = int(offset[t])
        if code[t] == 1:
            assert high[t + h] >= close[t] * up[t] and price[t] == close[t] * up[t]
        if code[t] == 2:
            assert low[t + h] <= close[t] * dn[t] and price[t] == close[t] * dn[t]
        for j in range(1, h):
            assert high[t + j] < close[t] * up[t] and low[t + j] > close[t] * dn[t]


def test_vol_scaling_brings_base_rates_of_calm_and_wild_markets_together():
    from core.config import LabelConfig
    from models.labels import label_arrays

    frames = [synthetic_ohlcv(5000, seed=21, vol=v) for v in (0.002, 0.004, 0.008)]

    def rate(frame, cfg):
        code = label_arrays(frame, cfg)[0]
        return float(np.mean(code[code > 0] == 1))

    fixed = [rate(f, LabelConfig()) for f in frames]
    vol = [rate(f, LabelConfig(scale="vol")) for f in frames]
    # fixed percentages ask another question on each market (measured: 0.17 / 0.31 / 0.25);
    # barriers scaled by the vol forecast ask the same one (0.18 / 0.18 / 0.19)
    assert max(fixed) - min(fixed) > 0.1
    assert max(vol) - min(vol) < 0.01


def test_vol_scaled_models_are_labelled_and_traded_as_multiples(inputs, tmp_path):
    from core.policy import Policy, traded_labels

    cfg = small_cfg("labels.scale=vol")
    result = train_pooled_bundle(inputs[:2], cfg, tmp_path / "v", progress=False)
    assert result.meta["label_scale"].startswith("volatility-scaled barriers: profit +1.4 x")
    assert "volatility-scaled" in (tmp_path / "v" / "report.html").read_text()
    bundle = load_bundle(tmp_path / "v")
    labels, source = traded_labels(cfg, bundle)  # traded now (tests/test_vol_barriers.py: every engine)
    assert labels.scale == "vol" and source == "bundle"
    policy = Policy.from_config(cfg, bundle)
    assert policy.vol_scaled and (policy.profit, policy.stop) == (labels.vol_profit, labels.vol_stop)
