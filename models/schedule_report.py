"""Out-of-sample report of a walk-forward schedule: per fold and overall, per symbol.

For every symbol file and every fold, the samples are the bars of the fold's validity span
with a full window and a label (the same definition as a bundle's test span). Each is scored
by the fold's bundle (the schedule), calibrated two ways -- the static calibrator fitted at
training, and causal rolling Platt refits (``models.recalibration``, the config's
``calibration`` window and refit interval) -- and by the fold's logistic baseline (its stored
coefficients and calibrator). Figures: AUC, log loss, Brier, ECE (10 bins), mean P, base
rate, n; plus ECE per calendar month, static vs rolling.

``python -m models.schedule_report --model artifacts/wf_v1 --data btc.csv.gz [--data ...]
--output reports/wf_v1`` writes ``report.md`` and ``report.json``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from core.config import CalibrationConfig
from core.files import write_text_atomic
from models.calibration import Calibrator
from models.dataset import Normaliser, feature_matrix
from models.metrics import all_metrics, ece
from models.recalibration import known_labels
from models.schedule import ModelSchedule
from models.universe import load_inputs


def baseline_probabilities(bundle, frame: pd.DataFrame) -> np.ndarray:
    """The fold's logistic baseline, calibrated, per bar (NaN where a feature is missing)."""
    meta = bundle.meta["baseline"]
    norm = Normaliser.from_dict(bundle.meta["normaliser"])
    x = norm.transform(feature_matrix(frame, bundle.feature_cfg, bundle.timeframe)).astype(np.float64)
    z = x @ np.asarray(meta["coef"]) + float(meta["intercept"])
    return Calibrator.from_dict(meta["calibrator"])(z)


def _fold_baseline(static: ModelSchedule, frame: pd.DataFrame) -> np.ndarray:
    out = np.full(len(frame), np.nan)
    k_of = static.fold_positions(frame.index)
    for k in np.unique(k_of[k_of >= 0]):
        pos = np.flatnonzero(k_of == k)
        a, b = int(pos[0]), int(pos[-1]) + 1
        bundle = static.bundle(int(k))
        lo = max(0, a - bundle.history_bars)
        out[a:b] = baseline_probabilities(bundle, frame.iloc[lo:b])[a - lo:]
    return out


def symbol_scores(path: Path, frame: pd.DataFrame, ccfg: CalibrationConfig) -> pd.DataFrame:
    """Per bar: fold, label, static P, rolling P, baseline P (rows without a sample dropped)."""
    static = ModelSchedule(path, calibration=CalibrationConfig(mode="static"))
    rolling = ModelSchedule(path, calibration=ccfg.model_copy(update={"mode": "rolling"}))
    _, p_static = static.score_frame(frame)
    _, p_rolling = rolling.score_frame(frame)
    labels = known_labels(frame, static.label_cfg, static.timeframe)
    table = pd.DataFrame({"fold": static.model_ids(frame.index), "label": labels, "static": p_static,
                          "rolling": p_rolling, "baseline": _fold_baseline(static, frame)}, index=frame.index)
    # the last fold is reported over its own validity span only (what the schedule tested)
    end = pd.Timestamp(static.folds[-1]["valid_until"])
    keep = (table["fold"] != "") & np.isfinite(table["label"]) & np.isfinite(table["static"]) & (table.index < end)
    return table[keep]


def _figures(t: pd.DataFrame) -> dict:
    y = t["label"].to_numpy()
    s, r, b = (all_metrics(y, t[c].to_numpy()) for c in ("static", "rolling", "baseline"))
    return {"n": int(len(t)), "base_rate": s["base_rate"], "auc": s["auc"], "log_loss": s["log_loss"],
            "brier": s["brier"], "ece_static": s["ece"], "mean_p_static": s["mean_p"],
            "log_loss_rolling": r["log_loss"], "brier_rolling": r["brier"], "ece_rolling": r["ece"],
            "mean_p_rolling": r["mean_p"], "baseline_auc": b["auc"], "baseline_log_loss": b["log_loss"],
            "baseline_ece": b["ece"]}


def evaluate(path: str | Path, data: list[str], ccfg: CalibrationConfig | None = None) -> dict:
    """Figures per symbol x fold, per symbol overall, pooled overall, and monthly ECE."""
    path = Path(path)
    sched = json.loads((path / "schedule.json").read_text())
    ccfg = ccfg or CalibrationConfig.model_validate(sched["config"].get("calibration", {}))
    inputs = load_inputs([(None, p) for p in data], sched["timeframe"])
    rows, overall, monthly, tables = [], {}, [], []
    for inp in inputs:
        t = symbol_scores(path, inp.frame, ccfg)
        t.insert(0, "symbol", inp.symbol)
        tables.append(t)
        for fold, part in t.groupby("fold", sort=True):
            rows.append({"symbol": inp.symbol, "fold": fold, **_figures(part)})
        overall[inp.symbol] = _figures(t)
        for month, part in t.groupby(t.index.strftime("%Y-%m")):
            y = part["label"].to_numpy()
            monthly.append({"symbol": inp.symbol, "month": month, "n": int(len(part)), "base_rate": float(y.mean()),
                            "mean_p_static": float(part["static"].mean()), "ece_static": ece(y, part["static"]),
                            "mean_p_rolling": float(part["rolling"].mean()), "ece_rolling": ece(y, part["rolling"])})
    pooled = _figures(pd.concat(tables)) if len(tables) > 1 else None
    return {"schedule": str(path), "label_scale": sched.get("label_scale"), "calibration": ccfg.model_dump(),
            "folds": rows, "overall": overall, "pooled": pooled, "monthly": monthly}


_COLS = (("n", "{:,}"), ("base_rate", "{:.4f}"), ("auc", "{:.4f}"), ("log_loss", "{:.4f}"), ("brier", "{:.4f}"),
         ("ece_static", "{:.4f}"), ("ece_rolling", "{:.4f}"), ("log_loss_rolling", "{:.4f}"),
         ("mean_p_static", "{:.4f}"), ("mean_p_rolling", "{:.4f}"), ("baseline_auc", "{:.4f}"),
         ("baseline_ece", "{:.4f}"))


def _row(label: str, d: dict) -> str:
    return f"| {label} | " + " | ".join(f.format(d[k]) for k, f in _COLS) + " |"


def to_markdown(rep: dict) -> str:
    """The report as markdown tables."""
    head = "| symbol / fold | " + " | ".join(k for k, _ in _COLS) + " |"
    lines = [f"Schedule {rep['schedule']} ({rep['label_scale']}); rolling calibration: "
             f"{rep['calibration']['window_bars']} bars window, refit every {rep['calibration']['refit_bars']} bars.",
             "", head, "|" + "---|" * (len(_COLS) + 1)]
    for r in rep["folds"]:
        lines.append(_row(f"{r['symbol']} {r['fold']}", r))
    for sym, d in rep["overall"].items():
        lines.append(_row(f"**{sym} all folds**", d))
    if rep["pooled"]:
        lines.append(_row("**all symbols**", rep["pooled"]))
    lines += ["", "| symbol | month | n | base rate | mean P static | ECE static | mean P rolling | ECE rolling |",
              "|---|---|---|---|---|---|---|---|"]
    for m in rep["monthly"]:
        lines.append(f"| {m['symbol']} | {m['month']} | {m['n']:,} | {m['base_rate']:.4f} | {m['mean_p_static']:.4f} | "
                     f"{m['ece_static']:.4f} | {m['mean_p_rolling']:.4f} | {m['ece_rolling']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Command-line entry (see module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--output", required=True)
    args = ap.parse_args(argv)
    rep = evaluate(args.model, args.data)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "report.json", json.dumps(rep, indent=2, allow_nan=True, default=float))
    text = to_markdown(rep)
    write_text_atomic(out / "report.md", text)
    print(text)


if __name__ == "__main__":
    main()
