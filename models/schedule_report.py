"""Out-of-sample report of a walk-forward schedule (or of one bundle or seed ensemble): per fold
and overall, per symbol.

For every symbol file and every fold, the samples are the bars of the fold's validity span
with a full window and a label (the same definition as a bundle's test span). Each is scored
by the fold's bundle (the schedule), calibrated five ways -- the static calibrator fitted at
training; causal rolling Platt refits (``models.recalibration``, the config's ``calibration``
window and refit interval); online Platt scaling (OPS) and OPS calibeaten by tracking (TOPS)
and by hedging (HOPS) (``models.online_calibration``, evaluation only) -- and by the fold's logistic baseline (its
stored coefficients and calibrator). Figures: AUC, log loss, Brier, ECE (10 bins), mean P,
base rate, n for each calibrator; plus ECE per calendar month for each.

A bundle or ensemble folder (no ``schedule.json``) is reported as one fold, named by its
folder, over its own test span (``spans.test`` of bundle.json).

Beside the calibration figures, the report says what the probabilities are worth after fees
(:mod:`models.expectancy`): per symbol and P bin, the label's own barrier trade's mean gross and
net return, for the static and the rolling P.

``nts evaluate --model artifacts/wf_v1 --data btc.csv.gz [--data ...] --output reports/wf_v1``
writes ``report.md`` and ``report.json`` (:func:`evaluate`, :func:`to_markdown`).
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from core.config import CalibrationConfig
from core.errors import BundleError, DataError
from models.bundle import load_bundle
from models.calibration import Calibrator
from models.dataset import Normaliser, feature_matrix
from models.ensemble import EnsembleModel, is_ensemble
from models.expectancy import outcome_by_probability
from models.expectancy import to_markdown as outcome_markdown
from models.labels import triple_barrier_events
from models.metrics import all_metrics, ece
from models.online_calibration import OnlineConfig, online_scores, training_end
from models.recalibration import RollingCalibrated
from models.schedule import ModelSchedule, is_schedule
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


CALIBRATORS = ("static", "rolling", "ops", "tops", "hops")


def _single_model(path: Path):
    """The bundle or seed ensemble at ``path`` (scored with its static calibrator)."""
    return EnsembleModel(path) if is_ensemble(path) else load_bundle(path)


def _schedule_columns(path: Path, frame: pd.DataFrame, ccfg: CalibrationConfig) -> tuple[dict, np.ndarray]:
    """Per bar of ``frame`` scored by a schedule: fold id and the P of every calibrator and the
    baseline; plus the mask of bars the report keeps (inside a fold's validity span)."""
    static = ModelSchedule(path, calibration=CalibrationConfig(mode="static"))
    rolling = ModelSchedule(path, calibration=ccfg.model_copy(update={"mode": "rolling"}))
    ops, tops, hops = online_scores(static, frame)
    cols = {"fold": static.model_ids(frame.index), **_label_columns(frame, static),
            "static": static.score_frame(frame)[1], "rolling": rolling.score_frame(frame)[1], "ops": ops,
            "tops": tops, "hops": hops, "baseline": _fold_baseline(static, frame)}
    # the last fold is reported over its own validity span only (what the schedule tested)
    keep = (cols["fold"] != "") & (frame.index < pd.Timestamp(static.folds[-1]["valid_until"]))
    return cols, keep


def _model_columns(path: Path, frame: pd.DataFrame, ccfg: CalibrationConfig
                   ) -> tuple[dict, np.ndarray, pd.DatetimeIndex]:
    """:func:`_schedule_columns` for one bundle or ensemble: one fold (its folder name) over
    its own test span. The frame is cut ``history_bars`` of the rolling wrapper before the end
    of the network's training span: every P of the test span is then what the full file gives."""
    model = _single_model(path)
    rolling = RollingCalibrated(model, ccfg.model_copy(update={"mode": "rolling"}))
    end = training_end(model)
    if end is not None:
        first_after = int(frame.index.as_unit("ns").asi8.searchsorted(end, side="right"))
        frame = frame.iloc[max(0, first_after - rolling.history_bars):]
    test_from, test_to = model.test_span
    inside = (frame.index >= test_from) & (frame.index <= test_to)
    ops, tops, hops = online_scores(model, frame)
    cols = {"fold": np.where(inside, path.name, ""), **_label_columns(frame, model),
            "static": model.calibrate(model.predict_logit(frame).to_numpy()), "rolling": rolling.score_frame(frame)[1],
            "ops": ops, "tops": tops, "hops": hops, "baseline": baseline_probabilities(model, frame)}
    return cols, inside, frame.index


def _label_columns(frame: pd.DataFrame, model) -> dict[str, np.ndarray]:
    """Per bar, with the model's own barriers: the label (1/0, NaN where the horizon is
    incomplete or gapped) and the gross return of the label's barrier trade."""
    events = triple_barrier_events(frame, model.label_cfg, model.timeframe)
    return {"label": events["label"].to_numpy(dtype=float), "gross_return": events["gross_return"].to_numpy(dtype=float)}


def symbol_scores(path: Path, frame: pd.DataFrame, ccfg: CalibrationConfig) -> pd.DataFrame:
    """Per bar: fold, label, static / rolling / OPS / TOPS P, baseline P (rows without a sample
    dropped). ``path`` is a schedule, or a bundle or ensemble (one fold: its test span)."""
    if is_schedule(path):
        cols, keep = _schedule_columns(path, frame, ccfg)
        index = frame.index
    else:
        cols, keep, index = _model_columns(path, frame, ccfg)
    table = pd.DataFrame(cols, index=index)
    keep = keep & np.isfinite(table["label"]) & np.isfinite(table["static"])
    return table[keep]


def _figures(t: pd.DataFrame) -> dict:
    y = t["label"].to_numpy()
    s, b = (all_metrics(y, t[c].to_numpy()) for c in ("static", "baseline"))
    out = {"n": int(len(t)), "base_rate": s["base_rate"], "auc": s["auc"], "log_loss": s["log_loss"],
           "brier": s["brier"], "ece_static": s["ece"], "mean_p_static": s["mean_p"],
           "baseline_auc": b["auc"], "baseline_log_loss": b["log_loss"], "baseline_ece": b["ece"]}
    for name in CALIBRATORS[1:]:
        m = all_metrics(y, t[name].to_numpy())
        out.update({f"log_loss_{name}": m["log_loss"], f"brier_{name}": m["brier"], f"ece_{name}": m["ece"],
                    f"mean_p_{name}": m["mean_p"]})
    return out


def _month(symbol: str, month: str, part: pd.DataFrame) -> dict:
    y = part["label"].to_numpy()
    row = {"symbol": symbol, "month": month, "n": int(len(part)), "base_rate": float(y.mean())}
    for name in CALIBRATORS:
        row.update({f"mean_p_{name}": float(part[name].mean()), f"ece_{name}": ece(y, part[name])})
    return row


def _outcomes(t: pd.DataFrame, round_trip_cost: float) -> dict:
    """The barrier trade per P bin for the static and the rolling P (models.expectancy)."""
    return {name: outcome_by_probability(t[name].to_numpy(), t["label"].to_numpy(), t["gross_return"].to_numpy(),
                                         round_trip_cost) for name in ("static", "rolling")}


def evaluate(path: str | Path, data: list[str], ccfg: CalibrationConfig | None = None,
             round_trip_cost: float = 0.002) -> dict:
    """Figures per symbol x fold, per symbol overall, pooled overall, monthly ECE, and the
    barrier trade's return per P bin net of ``round_trip_cost`` (a fraction of the entry price)."""
    path = Path(path)
    meta = _meta(path)
    own = CalibrationConfig.model_validate((meta.get("config") or {}).get("calibration", {}))
    ccfg = ccfg or own
    inputs = load_inputs([(None, p) for p in data], meta["timeframe"])
    rows, overall, monthly, tables, outcomes = [], {}, [], [], {}
    for inp in inputs:
        t = symbol_scores(path, inp.frame, ccfg)
        if t.empty:
            raise DataError(f"{inp.path}: no labelled bar inside the model's test span(s) {path}")
        t.insert(0, "symbol", inp.symbol)
        tables.append(t)
        for fold, part in t.groupby("fold", sort=True):
            rows.append({"symbol": inp.symbol, "fold": fold, **_figures(part)})
        overall[inp.symbol] = _figures(t)
        outcomes[inp.symbol] = _outcomes(t, round_trip_cost)
        monthly += [_month(inp.symbol, m, part) for m, part in t.groupby(t.index.strftime("%Y-%m"))]
    pooled = _figures(pd.concat(tables)) if len(tables) > 1 else None
    return {"schedule": str(path), "label_scale": meta.get("label_scale"), "calibration": ccfg.model_dump(),
            "online": asdict(OnlineConfig()), "folds": rows, "overall": overall, "pooled": pooled, "monthly": monthly,
            "round_trip_cost": round_trip_cost, "outcome_by_p": outcomes, "note": _calibration_note(path, own, ccfg)}


def _calibration_note(path: Path, own: CalibrationConfig, used: CalibrationConfig) -> str | None:
    """A line when the rolling column's window, refit or minimum differ from the model's own."""
    own_d, used_d = own.model_dump(exclude={"mode"}), used.model_dump(exclude={"mode"})
    if own_d == used_d:
        return None
    return (f"note: {path} was trained with calibration {own_d}; the rolling column uses {used_d} "
            "(--set calibration.window_bars=... to change it)")


def _meta(path: Path) -> dict:
    """schedule.json, bundle.json or ensemble.json of ``path`` (timeframe, config, label scale)."""
    if is_schedule(path):
        return json.loads((path / "schedule.json").read_text())
    if not (path / "bundle.json").is_file() and not is_ensemble(path):
        raise BundleError(f"{path}: neither a schedule (schedule.json) nor a bundle or ensemble folder")
    model = _single_model(path)
    return {"timeframe": model.timeframe, "config": model.meta.get("config") or {},
            "label_scale": model.meta.get("label_scale")}


_COLS = (("n", "{:,}"), ("base_rate", "{:.4f}"), ("auc", "{:.4f}"), ("log_loss", "{:.4f}"), ("brier", "{:.4f}"),
         ("ece_static", "{:.4f}"), ("ece_rolling", "{:.4f}"), ("log_loss_rolling", "{:.4f}"),
         ("mean_p_static", "{:.4f}"), ("mean_p_rolling", "{:.4f}"), ("baseline_auc", "{:.4f}"),
         ("baseline_ece", "{:.4f}"))
# the calibrators side by side: ECE, log loss and Brier of each
_CAL_COLS = tuple((f"ece_{c}", "{:.4f}") for c in CALIBRATORS) + (("log_loss", "{:.4f}"),) + tuple(
    (f"log_loss_{c}", "{:.4f}") for c in CALIBRATORS[1:]) + (("brier", "{:.4f}"),) + tuple(
    (f"brier_{c}", "{:.4f}") for c in CALIBRATORS[1:])


def _row(label: str, d: dict, cols=_COLS) -> str:
    return f"| {label} | " + " | ".join(f.format(d[k]) for k, f in cols) + " |"


def _table(rep: dict, cols, head: str) -> list[str]:
    lines = ["| symbol / fold | " + " | ".join(head.format(k) for k, _ in cols) + " |", "|" + "---|" * (len(cols) + 1)]
    lines += [_row(f"{r['symbol']} {r['fold']}", r, cols) for r in rep["folds"]]
    lines += [_row(f"**{sym} all folds**", d, cols) for sym, d in rep["overall"].items()]
    if rep["pooled"]:
        lines.append(_row("**all symbols**", rep["pooled"], cols))
    return lines


def to_markdown(rep: dict) -> str:
    """The report as markdown tables."""
    onl = rep.get("online") or asdict(OnlineConfig())
    lines = [f"Schedule {rep['schedule']} ({rep['label_scale']}); rolling calibration: "
             f"{rep['calibration']['window_bars']} bars window, refit every {rep['calibration']['refit_bars']} bars.",
             "", *_table(rep, _COLS, "{}"), "",
             f"Calibrators compared (static, rolling Platt, online Platt scaling OPS: ONS gamma {onl['gamma']}, "
             f"TOPS: OPS calibeaten by tracking in {onl['bins']} bins once a bin holds {onl['min_bin']} known "
             f"outcomes, HOPS: OPS calibeaten by hedging, Foster's randomised forecaster per bin on a "
             f"1/{onl['bins']} grid; log_loss / brier without a suffix are the static calibrator's).", "",
             *_table(rep, _CAL_COLS, "{}"), "",
             "| symbol | month | n | base rate | mean P static | ECE static | mean P rolling | ECE rolling | "
             "mean P OPS | ECE OPS | mean P TOPS | ECE TOPS | mean P HOPS | ECE HOPS |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in rep["monthly"]:
        lines.append(f"| {m['symbol']} | {m['month']} | {m['n']:,} | {m['base_rate']:.4f} | " + " | ".join(
            f"{m['mean_p_' + c]:.4f} | {m['ece_' + c]:.4f}" for c in CALIBRATORS) + " |")
    for sym, by_cal in (rep.get("outcome_by_p") or {}).items():
        for name, rows in by_cal.items():
            lines += ["", f"{sym}, {name} P. " + outcome_markdown(rows, rep["round_trip_cost"]).rstrip("\n")]
    return "\n".join(lines) + "\n"
