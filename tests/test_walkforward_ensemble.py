"""Seed ensembles inside walk-forward schedules (``model.ensemble: K`` with ``--walk-forward``):
each fold is a K-member ensemble trained only before its validity span, its members' mean
logit goes through the fold's one calibrator, ModelSchedule scores with it (batch == stream,
appending bars changes nothing earlier, fold id per bar, no torch on the trading path), an
extension never mixes K values, and Dask-parallel folds equal sequential ones."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.config import load_config
from core.errors import DataError
from core.ohlcv import write_ohlcv_csv
from core.synthetic import synthetic_ohlcv
from models.bundle import load_bundle
from models.calibration import Calibrator
from models.ensemble import EnsembleModel, is_ensemble
from models.schedule import ModelSchedule, load_model
from models.streaming import BarScorer
from models.universe import SymbolInput
from models.walkforward import build_schedule

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["model.window=16", "model.channels=[8,8]", "model.dilations=[1,2]", "model.head_units=8",
         "training.batch_size=128", "training.threads=1", "training.epochs=1", "training.train_window=20D",
         "training.step=10D"]
CUT = 4800  # 3 folds of 10 days on the first 4,800 bars; the 4th needs the whole frame


def cfg_k(k: int):
    return load_config(None, SMALL + [f"model.ensemble={k}"])


def _inputs(frame):
    return [SymbolInput("SYN/USDT", "mem.csv", frame, None)]


@pytest.fixture(scope="module")
def frame():
    return synthetic_ohlcv(6000, seed=3, gaps={3000: 5})


@pytest.fixture(scope="module")
def ens(frame, tmp_path_factory):
    out = tmp_path_factory.mktemp("wfe") / "wf"
    return out, build_schedule(_inputs(frame.iloc[:CUT]), cfg_k(2), out)


def test_each_fold_is_a_seed_ensemble_trained_before_its_span(ens):
    out, result = ens
    folds = result.schedule["folds"]
    assert result.schedule["ensemble"] == 2 and len(folds) == 3
    for fold in folds:
        folder = out / fold["bundle"]
        assert is_ensemble(folder)
        rec = fold["ensemble"]
        assert rec["k"] == 2 and [m["seed"] for m in rec["members"]] == [42, 43]
        assert len({m["weights_sha256"] for m in rec["members"]}) == 2
        start = pd.Timestamp(fold["valid_from"])
        tree = json.loads((folder / "ensemble.json").read_text())
        for m, member_metrics in zip(rec["members"], rec["member_test"]):
            b = load_bundle(folder / m["path"])
            assert b.training_span[1] < start and b.test_span[0] >= start  # purge: nothing of the span
            # the ensemble code's member logits line up with the member's own test samples: the same
            # calibration rule on the same validation logits gives the member's own test AUC
            assert member_metrics["calibrated"]["auc"] == pytest.approx(b.meta["metrics"]["test"]["auc"], abs=1e-9)
        assert fold["metrics"]["test"]["tcn"]["calibrated"] == tree["metrics"]["test"]["ensemble"]["calibrated"]
        assert fold["calibrator"] == tree["calibrator"]
        assert fold["weights_sha256"] == EnsembleModel(folder).meta["weights_sha256"]
        assert "baseline" in fold["metrics"]["test"] and fold["per_symbol"]["test"]["SYN/USDT"]["TCN calibrated"]


def test_schedule_scores_each_bar_with_its_folds_mean_logit_and_calibrator(ens, frame):
    out, result = ens
    data = frame.iloc[:CUT]
    sched = load_model(out)
    assert isinstance(sched, ModelSchedule)
    prob = sched.predict_proba(data).to_numpy()
    ids = sched.model_ids(data.index)
    for fold in result.schedule["folds"]:
        mask = ids == fold["name"]
        members = [load_bundle(out / fold["bundle"] / m["path"]) for m in fold["ensemble"]["members"]]
        z = np.mean([m.predict_logit(data).to_numpy() for m in members], axis=0)
        want = Calibrator.from_dict(fold["calibrator"])(z)
        ok = mask & np.isfinite(want)
        assert ok.sum() > 500
        np.testing.assert_allclose(prob[ok], want[ok], atol=1e-5)
    assert np.isnan(prob[ids == ""]).all()
    np.testing.assert_array_equal(sched.predict_proba(data.iloc[:4000]).to_numpy(), prob[:4000])
    # the streaming scorer (paper, live) across the fold boundary: the same P to float32 rounding
    boundary = int(data.index.searchsorted(pd.Timestamp(result.schedule["folds"][1]["valid_from"])))
    scorer = BarScorer(sched)
    first = boundary - 100
    scorer.prime(data.iloc[first - sched.history_bars:first])
    got = [scorer.update(ts, *row)[1] for ts, row in zip(data.index[first:boundary + 100],
                                                          data.to_numpy()[first:boundary + 100])]
    np.testing.assert_allclose(got, prob[first:boundary + 100], atol=1e-5, rtol=0)


def test_extension_refuses_another_k_and_keeps_the_schedule(ens, frame):
    out, _ = ens
    before = (out / "schedule.json").read_bytes()
    for k in (1, 3):
        with pytest.raises(DataError, match=rf"model.ensemble=2, this run asks for model.ensemble={k}; a schedule "
                                            "never mixes K values"):
            build_schedule(_inputs(frame), cfg_k(k), out)
    assert (out / "schedule.json").read_bytes() == before


def test_dask_folds_equal_sequential_folds_and_extension_trains_only_the_new_fold(ens, frame, tmp_path):
    distributed = pytest.importorskip("distributed")
    from models.walkforward import dask_fold_mapper

    _, seq = ens
    out = tmp_path / "wf"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        par = build_schedule(_inputs(frame.iloc[:CUT]), cfg_k(2), out, mapper=dask_fold_mapper(client), engine="dask")
    for key in ("weights_sha256", "calibrator", "ensemble"):
        a = [f[key] if key != "ensemble" else [m["weights_sha256"] for m in f[key]["members"]]
             for f in par.schedule["folds"]]
        b = [f[key] if key != "ensemble" else [m["weights_sha256"] for m in f[key]["members"]]
             for f in seq.schedule["folds"]]
        assert a == b, key
    more = build_schedule(_inputs(frame), cfg_k(2), out)
    assert more.trained == ["fold_20240220"] and more.schedule["folds"][3]["ensemble"]["k"] == 2
    kept = [f["weights_sha256"] for f in more.schedule["folds"][:3]]
    assert kept == [f["weights_sha256"] for f in seq.schedule["folds"]]


_CHILD = """
import sys
from click.testing import CliRunner
from cli.main import cli
res = CliRunner().invoke(cli, ["backtest", "--model", sys.argv[1], "--data", sys.argv[2], "--output", sys.argv[3],
                               "--quiet", "--start", sys.argv[4], "--set", "strategy.center=0.3",
                               "--set", "strategy.deadband=0"])
assert res.exit_code == 0, res.output
print("TORCH" if "torch" in sys.modules else "NO-TORCH")
"""


def test_backtest_on_an_ensemble_schedule_names_the_fold_and_never_imports_torch(ens, frame, tmp_path):
    out, result = ens
    data = tmp_path / "syn_usdt_15m.csv"
    write_ohlcv_csv(frame.iloc[:CUT], data)
    start = result.schedule["folds"][0]["valid_from"]
    res = subprocess.run([sys.executable, "-c", _CHILD, str(out), str(data), str(tmp_path / "bt"), start],
                         cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "NO-TORCH"
    trades = pd.read_csv(tmp_path / "bt" / "trades.csv")
    assert len(trades) > 3 and set(trades["model_id"]) <= {f["name"] for f in result.schedule["folds"]}
    assert trades["model_id"].nunique() >= 2


def test_run_config_rolling_recalibrates_every_ensemble_fold_causally(ens, frame):
    """``calibration.mode: rolling`` in the run config (RunSpec: every engine) on a schedule
    trained static: each fold's ensemble gets causal rolling Platt on its mean logit."""
    from models.recalibration import RollingCalibrated
    from strategies.runspec import RunSpec

    out, _ = ens
    data = frame.iloc[:CUT]
    rolling = ["calibration.mode=rolling", "calibration.window_bars=300", "calibration.refit_bars=24",
               "calibration.min_samples=100"]
    sched = RunSpec.build(load_config(None, SMALL + rolling), model=out).bundle
    assert isinstance(sched, ModelSchedule) and sched.ccfg.mode == "rolling"
    assert isinstance(sched.bundle(1), RollingCalibrated) and isinstance(sched.bundle(1).inner, EnsembleModel)
    full = sched.predict_proba(data).to_numpy()
    np.testing.assert_array_equal(sched.predict_proba(data.iloc[:4000]).to_numpy(), full[:4000])
    static = load_model(out).predict_proba(data).to_numpy()
    ok = np.isfinite(full) & np.isfinite(static)
    assert ok.sum() > 1500 and np.mean(np.abs(full[ok] - static[ok]) > 1e-4) > 0.5
