"""Walk-forward schedules: fold grid, causality of each fold's training, ModelSchedule scoring
with the bundle valid at each bar, extension (only new folds), refusals, Dask == sequential,
the CLI and a backtest over a schedule."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cli.main import cli
from core.config import load_config
from core.errors import BundleError, DataError
from core.ohlcv import write_ohlcv_csv
from core.synthetic import synthetic_ohlcv
from models.bundle import load_bundle
from models.schedule import ModelSchedule, load_model
from models.universe import SymbolInput
from models.walkforward import build_schedule, plan_folds

SMALL = ["model.window=16", "model.channels=[8,8]", "model.dilations=[1,2]", "model.head_units=8",
         "training.batch_size=128", "training.threads=1", "training.epochs=1", "training.train_window=20D",
         "training.step=10D"]


def small_cfg(*extra):
    return load_config(None, SMALL + list(extra))


@pytest.fixture(scope="module")
def frame():
    return synthetic_ohlcv(6000, seed=3, gaps={3000: 5})


@pytest.fixture(scope="module")
def schedule_dir(frame, tmp_path_factory):
    out = tmp_path_factory.mktemp("wf") / "wf"
    result = build_schedule([SymbolInput("SYN/USDT", "mem.csv", frame, None)], small_cfg(), out)
    return out, result


def test_plan_folds_cover_only_complete_spans():
    t = pd.Timestamp
    plans = plan_folds(t("2024-01-01 00:00", tz="UTC"), t("2024-02-20 23:45", tz="UTC"), "20D", "10D")
    assert [p.valid_from.strftime("%m-%d") for p in plans] == ["01-21", "01-31", "02-10"]
    assert all(p.valid_until - p.valid_from == pd.Timedelta(days=10) for p in plans)
    assert all(p.valid_from - p.train_from == pd.Timedelta(days=20) for p in plans)
    # one bar more completes the span 02-20 .. 03-01? no: it needs the bar opening 02-29 23:45
    assert len(plan_folds(t("2024-01-01", tz="UTC"), t("2024-02-29 23:30", tz="UTC"), "20D", "10D")) == 3
    assert len(plan_folds(t("2024-01-01", tz="UTC"), t("2024-02-29 23:45", tz="UTC"), "20D", "10D")) == 4
    monthly = plan_folds(t("2022-01-01 05:00", tz="UTC"), t("2022-04-30 23:45", tz="UTC"), "1M", "1M")
    assert [p.valid_from.strftime("%Y-%m-%d") for p in monthly] == ["2022-03-01", "2022-04-01"]


def test_each_fold_trains_only_before_its_validity_span(schedule_dir):
    out, result = schedule_dir
    folds = result.schedule["folds"]
    assert len(folds) == 4 and result.trained == [f["name"] for f in folds]
    for fold in folds:
        bundle = load_bundle(out / fold["bundle"])
        start = pd.Timestamp(fold["valid_from"])
        assert bundle.training_span[1] < start          # network, normaliser, calibrator, baseline
        assert pd.Timestamp(bundle.meta["spans"]["validation"][1]) < start
        assert bundle.test_span[0] >= start
        assert fold["training_sha256"] and fold["config_hash"]
        assert "auc" in fold["metrics"]["test"]["tcn"]["calibrated"]


def test_schedule_scores_each_bar_with_the_bundle_valid_then(schedule_dir, frame):
    out, result = schedule_dir
    sched = ModelSchedule(out)
    prob = sched.predict_proba(frame).to_numpy()
    ids = sched.model_ids(frame.index)
    first = pd.Timestamp(result.schedule["folds"][0]["valid_from"])
    before = frame.index < first
    assert np.isnan(prob[before]).all() and (ids[before] == "").all()
    folds = result.schedule["folds"]
    for k, fold in enumerate(folds):
        own = load_bundle(out / fold["bundle"]).predict_proba(frame).to_numpy()
        mask = ids == fold["name"]
        assert mask.any()
        # the last bundle stays valid after its span until a later fold exists
        until = pd.Timestamp(fold["valid_until"]) if k < len(folds) - 1 else frame.index[-1] + pd.Timedelta("1s")
        span = (frame.index >= pd.Timestamp(fold["valid_from"])) & (frame.index < until)
        assert np.array_equal(mask, span)
        ok = mask & np.isfinite(own)
        # the same bundle on a history that starts history_bars earlier: float32 network rounding only
        np.testing.assert_allclose(prob[ok], own[ok], atol=1e-5)
    # appending bars never changes an earlier bar's P (no later bundle reaches back)
    short = sched.predict_proba(frame.iloc[:4500]).to_numpy()
    np.testing.assert_array_equal(short, prob[:4500])
    assert isinstance(load_model(out), ModelSchedule)


def test_extension_trains_only_new_folds_and_keeps_old_ones(frame, tmp_path):
    out = tmp_path / "wf"
    cfg = small_cfg()
    r1 = build_schedule([SymbolInput("SYN/USDT", "a.csv", frame.iloc[:4800], None)], cfg, out)
    assert len(r1.trained) == 3
    r2 = build_schedule([SymbolInput("SYN/USDT", "a.csv", frame, None)], cfg, out)
    assert r2.trained == [r1.schedule["folds"][-1]["name"].replace("0210", "0220")]
    old = {f["name"]: f["weights_sha256"] for f in r1.schedule["folds"]}
    for f in r2.schedule["folds"][:3]:
        assert f["weights_sha256"] == old[f["name"]]
        assert load_bundle(out / f["bundle"]).meta["weights_sha256"] == old[f["name"]]
    assert [r["trained"] for r in r2.schedule["runs"]] == [r1.trained, r2.trained]
    r3 = build_schedule([SymbolInput("SYN/USDT", "a.csv", frame, None)], cfg, out)
    assert r3.trained == []
    with pytest.raises(DataError, match="another config"):
        build_schedule([SymbolInput("SYN/USDT", "a.csv", frame, None)], small_cfg("training.seed=1"), out)
    changed = frame.copy()
    changed.iloc[1000, changed.columns.get_loc("volume")] += 1.0
    with pytest.raises(DataError, match="differ in this data"):
        build_schedule([SymbolInput("SYN/USDT", "a.csv", changed, None)], cfg, out)
    assert json.loads((out / "schedule.json").read_text())["folds"] == r2.schedule["folds"]


def test_dask_folds_equal_sequential_folds(frame, tmp_path, schedule_dir):
    distributed = pytest.importorskip("distributed")
    from models.walkforward import dask_fold_mapper

    _, seq = schedule_dir
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        par = build_schedule([SymbolInput("SYN/USDT", "mem.csv", frame, None)], small_cfg(), tmp_path / "wf",
                             mapper=dask_fold_mapper(client), engine="dask")
    assert [f["weights_sha256"] for f in par.schedule["folds"]] == [f["weights_sha256"] for f in seq.schedule["folds"]]
    assert [f["calibrator"] for f in par.schedule["folds"]] == [f["calibrator"] for f in seq.schedule["folds"]]


def test_damaged_schedule_is_refused(schedule_dir, tmp_path):
    out, _ = schedule_dir
    bad = tmp_path / "bad"
    bad.mkdir()
    tree = json.loads((out / "schedule.json").read_text())
    del tree["folds"][1]["valid_from"]
    (bad / "schedule.json").write_text(json.dumps(tree))
    with pytest.raises(BundleError, match=r"folds\[1\]\.valid_from"):
        ModelSchedule(bad)


def test_cli_walk_forward_and_backtest_with_the_schedule(frame, tmp_path):
    data = tmp_path / "syn_usdt_15m.csv"
    write_ohlcv_csv(frame, data)
    out = tmp_path / "wf"
    args = ["train", "--walk-forward", "--train-window", "20D", "--step", "10D", "--data", str(data),
            "--output", str(out), "--quiet"] + [x for s in SMALL[:6] for x in ("--set", s)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "trained 4 of 4 folds" in res.output and "| fold_20240121 |" in res.output
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and "up to date" in again.output
    bad = CliRunner().invoke(cli, args[:3] + ["1X"] + args[4:])
    assert bad.exit_code != 0 and "not a length" in bad.output
    bt = CliRunner().invoke(cli, ["backtest", "--model", str(out), "--data", str(data), "--output",
                                  str(tmp_path / "bt"), "--quiet", "--start", "2024-01-21"])
    assert bt.exit_code == 0, bt.output
    metrics = json.loads((tmp_path / "bt" / "metrics.json").read_text())
    assert metrics["run"]["signal"]["scored"] > 3000


def test_indicator_streaming_equals_batch_with_a_schedule(schedule_dir, frame):
    """TCNProbability over a schedule: next() (paper/live) scores each bar with the bundle valid
    at its time, equal to the runonce pass (the lookahead test, across fold boundaries)."""
    import backtrader as bt

    from indicators.tcn_indicator import TCNProbability
    from strategies.backtest import frame_feed

    out, _ = schedule_dir
    sched = ModelSchedule(out)

    class Probe(bt.Strategy):
        def __init__(self):
            self.tcn = TCNProbability(self.data, bundle=sched)

    def run(runonce):
        cerebro = bt.Cerebro(stdstats=False, runonce=runonce, preload=True)
        cerebro.adddata(frame_feed(frame))
        cerebro.addstrategy(Probe)
        return np.frombuffer(cerebro.run()[0].tcn.prob.array, dtype="float64").copy()

    batch, stream = run(True), run(False)
    np.testing.assert_array_equal(np.isnan(batch), np.isnan(stream))
    assert np.isfinite(batch).sum() > 3500
    # the batch pass starts each fold's features history_bars earlier than the stream does:
    # equal within the features' memory tolerance
    np.testing.assert_allclose(batch, stream, atol=1e-5, rtol=0, equal_nan=True)


@pytest.mark.parametrize("extra, message", [
    (["--workers", "2"], "add --walk-forward"),
    (["--train-window", "6M"], "belong to --walk-forward"),
    (["--data", "y.csv", "--set", "model.ensemble=2"], "pooled symbols without --walk-forward"),
    (["--walk-forward", "--step", "0M"], "not a length"),
])
def test_cli_refuses_inconsistent_walk_forward_options(tmp_path, extra, message):
    res = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "x.csv"), "--output", str(tmp_path / "o"),
                                   *extra])
    assert res.exit_code != 0 and message in res.output and not (tmp_path / "o").exists()
