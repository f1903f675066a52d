"""The schedule report compares static, rolling, OPS and TOPS calibrators per fold, overall
and per month, for a schedule and for a single bundle; its old table and keys are kept."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cli.main import cli
from core.config import load_config
from core.synthetic import synthetic_ohlcv
from models.metrics import all_metrics, ece
from models.online_calibration import model_online_scores
from models.recalibration import known_labels
from models.schedule import ModelSchedule
from models.schedule_report import CALIBRATORS, evaluate, to_markdown
from models.universe import SymbolInput
from models.walkforward import build_schedule

SMALL = ["model.window=16", "model.channels=[8,8]", "model.dilations=[1,2]", "model.head_units=8",
         "training.batch_size=128", "training.threads=1", "training.epochs=1", "training.train_window=20D",
         "training.step=10D", "calibration.window_bars=300", "calibration.refit_bars=24",
         "calibration.min_samples=100"]
OLD_HEAD = ("| symbol / fold | n | base_rate | auc | log_loss | brier | ece_static | ece_rolling | log_loss_rolling | "
            "mean_p_static | mean_p_rolling | baseline_auc | baseline_ece |")


@pytest.fixture(scope="module")
def sched(tmp_path_factory):
    frame = synthetic_ohlcv(6000, seed=3, gaps={3000: 5})
    root = tmp_path_factory.mktemp("rep")
    data = root / "syn_usdt_15m.csv"
    frame.rename_axis("timestamp").to_csv(data)
    build_schedule([SymbolInput("SYN/USDT", str(data), frame, None)], load_config(None, SMALL), root / "wf")
    return root / "wf", data, frame


def test_report_compares_the_calibrators_per_fold_overall_and_month(sched):
    path, data, frame = sched
    rep = evaluate(path, [str(data)])
    folds = ModelSchedule(path).folds
    assert [r["fold"] for r in rep["folds"]] == [f["name"] for f in folds]
    for row in rep["folds"] + [rep["overall"]["SYN/USDT"]]:
        for c in CALIBRATORS:
            assert 0 <= row[f"ece_{c}"] < 1
        for c in CALIBRATORS[1:]:
            assert np.isfinite(row[f"log_loss_{c}"]) and np.isfinite(row[f"brier_{c}"])
    assert {m["month"] for m in rep["monthly"]} == {"2024-01", "2024-02"}
    # the OPS column of each fold is that fold's bundle run from its own training-span end
    k_last = len(folds) - 1
    bundle = ModelSchedule(path).bundle(k_last)
    end = frame.index.searchsorted(pd.Timestamp(folds[k_last]["valid_until"]))
    ops, tops, _ = model_online_scores(bundle, frame.iloc[:end])
    start = frame.index.searchsorted(pd.Timestamp(folds[k_last]["valid_from"]))
    y = known_labels(frame, bundle.label_cfg, bundle.timeframe)[start:end]  # the report labels on the whole file
    ok = np.isfinite(y) & np.isfinite(ops[start:])
    last = rep["folds"][-1]
    assert last["n"] == int(ok.sum())
    assert last["ece_ops"] == pytest.approx(ece(y[ok], ops[start:][ok]), abs=1e-12)
    assert last["brier_tops"] == pytest.approx(all_metrics(y[ok], tops[start:][ok])["brier"], abs=1e-12)
    text = to_markdown(rep)
    assert OLD_HEAD in text   # the existing table is unchanged
    assert "| ece_static | ece_rolling | ece_ops | ece_tops |" in text and "| ECE OPS | mean P TOPS | ECE TOPS |" in text


def test_report_of_one_bundle_covers_its_test_span(sched, tmp_path):
    path, data, frame = sched
    fold = ModelSchedule(path).folds[0]
    rep = evaluate(path / fold["bundle"], [str(data)])
    assert len(rep["folds"]) == 1 and rep["folds"][0]["fold"] == (path / fold["bundle"]).name
    months = {m["month"] for m in rep["monthly"]}
    assert months and all(np.isfinite(m["ece_tops"]) for m in rep["monthly"])
    assert rep["folds"][0]["n"] > 500


def test_report_cli_refuses_a_folder_that_is_no_model_in_one_line(sched, tmp_path):
    _, data, _ = sched
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(cli, ["evaluate", "--model", str(tmp_path / "empty"), "--data", str(data),
                                   "--output", str(tmp_path / "out")])
    assert res.exit_code == 2
    err = res.output.strip()
    assert err.count("\n") == 0 and "neither a schedule" in err and str(tmp_path / "empty") in err
    assert not (tmp_path / "out").exists()
    res = CliRunner().invoke(cli, ["evaluate", "--model", str(sched[0]), "--data", str(data),
                                   "--output", str(tmp_path / "ok"), "--set", "execution.taker_fee=0.0005"])
    assert res.exit_code == 0, res.output
    # the schedule was trained with a 300-bar window; the run config's 2,880 is used and said so
    assert res.output.startswith("note: ") and "'window_bars': 300" in res.output.splitlines()[0]
    rep = json.loads((tmp_path / "ok" / "report.json").read_text())
    assert rep["calibration"]["window_bars"] == 2880
    assert rep["online"]["gamma"] == 0.1 and (tmp_path / "ok" / "report.md").read_text().startswith("Schedule")
    assert rep["round_trip_cost"] == pytest.approx(0.001)
    # every scored bar is in exactly one P bin; net = gross - round trip
    bins = rep["outcome_by_p"]["SYN/USDT"]["static"]
    assert sum(b["n"] for b in bins) == rep["overall"]["SYN/USDT"]["n"]
    full = [b for b in bins if b["n"]]
    assert all(b["mean_net"] == pytest.approx(b["mean_gross"] - 0.001) for b in full)
    # a folder of someone else's files is never replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    res = CliRunner().invoke(cli, ["evaluate", "--model", str(sched[0]), "--data", str(data),
                                   "--output", str(tmp_path / "mine"), "--overwrite"])
    assert res.exit_code == 2 and (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_report_of_a_seed_ensemble_schedule_and_of_one_ensemble_fold(tmp_path):
    """Ensemble folds (``model.ensemble: 2``) are scored like bundles: mean member logit, the
    fold's one calibrator as the static start of OPS."""
    frame = synthetic_ohlcv(4800, seed=3, gaps={3000: 5})
    data = tmp_path / "syn_usdt_15m.csv"
    frame.rename_axis("timestamp").to_csv(data)
    out = tmp_path / "wfe"
    build_schedule([SymbolInput("SYN/USDT", str(data), frame, None)],
                   load_config(None, SMALL + ["model.ensemble=2"]), out)
    rep = evaluate(out, [str(data)])
    assert len(rep["folds"]) == len(ModelSchedule(out).folds) >= 2
    assert all(np.isfinite(r[f"ece_{c}"]) for r in rep["folds"] for c in CALIBRATORS)
    sched = ModelSchedule(out)
    ens = sched.bundle(0)
    assert type(ens).__name__ == "EnsembleModel"
    one = evaluate(out / sched.folds[0]["bundle"], [str(data)])
    assert one["folds"][0]["n"] > 500 and np.isfinite(one["folds"][0]["ece_hops"])
    # OPS of an ensemble starts at the ensemble's own calibrator: equal to it on the first bars
    # after the training span (no label after it is known yet), different later
    ops = model_online_scores(ens, frame)[0]
    static = ens.predict_proba(frame).to_numpy()
    first = int(frame.index.searchsorted(pd.Timestamp(ens.meta["spans"]["train"][1]), side="right"))
    np.testing.assert_allclose(ops[first:first + 8], static[first:first + 8], rtol=1e-9)
    assert np.nanmax(np.abs(ops[first + 200:] - static[first + 200:])) > 1e-4
