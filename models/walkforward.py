"""Walk-forward schedules: ``nts train --walk-forward --train-window 12M --step 1M``.

Folds. Validity spans start on the calendar grid (``--start`` or the first month / day start
after the earliest bar + ``train_window``) and last ``step``: fold k is valid for bars with
open time in ``[start_k, start_k+1)``. Its bundle (network, normaliser, calibrator, baseline)
is trained with ``models.universe.train_pooled_bundle`` on the samples with open time in
``[start_k - train_window, start_k)`` (the validation span is the most recent
``training.val_fraction`` of them) and tested on the samples of its validity span, with the
usual purge and embargo between the three spans. Nothing at or after ``start_k`` reaches the
network, normaliser, calibrator or baseline: only the test metrics look at the span.

Seed ensembles (``model.ensemble: K > 1``): each fold is a K-member ensemble
(``models.ensemble_train.train_pooled_ensemble``: the same split for every member, seeds
``training.seed + k``, mean logits before ONE calibrator fitted on the validation span);
its folder holds ``ensemble.json`` + ``members/m<k>/`` and its schedule entry an ``ensemble``
record (per-member seed, weights, seconds and test metrics beside the ensemble's). A schedule
never mixes K values: extending one with another ``model.ensemble`` is refused.

A fold is trained once the data cover its whole validity span. Each fold gets a slice of
every input (``history_bars`` of warm-up before its training window, ``horizon`` bars after
its validity span for the test labels); the slice's sha256 is recorded, so extending a
schedule with a longer file (only new folds are trained) refuses data that changed under an
existing fold, and a different config (``config_hash``) is refused too.

Jobs. Each fold is an independent :class:`FoldJob` run by :func:`run_fold`: in sequence by
default, or on Dask (``mapper`` from :func:`dask_fold_mapper`, the sweeps' ``--workers`` /
``--scheduler`` option). Training is seeded and runs ``training.threads`` threads in every
job, so the bundles are identical either way (a test compares the weights' sha256).

Output: ``schedule.json`` (format, config, config hash, train window, step, ensemble K, inputs, and per
fold: validity span, training span, bundle folder, slice sha256 per input, test metrics)
and ``folds/<name>/`` bundles; built in a temp folder and renamed into place
(``core.files.output_dir``), so an interrupted run never leaves a complete-looking schedule.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from core.config import Config, config_to_dict, parse_period
from core.errors import DataError
from core.files import check_output_dir, output_dir, write_text_atomic
from core.timeframes import timeframe_seconds
from models.bundle import load_bundle
from models.ensemble import ensemble_weights_sha256
from models.ensemble_train import train_pooled_ensemble
from models.features import memory_bars, warmup_bars
from models.prob_cache import frame_sha256
from models.schedule import OUTPUT_KIND, SCHEDULE_FILE, read_schedule_json
from models.universe import SymbolInput, TimeSpans, label_scale_text, train_pooled_bundle

log = logging.getLogger("nts.walkforward")

SCHEDULE_FORMAT = 1
# config sections that shape a bundle (a schedule is extended only under the same ones)
_MODEL_SECTIONS = ("data", "features", "labels", "model", "training", "calibration")


def config_hash(cfg: Config) -> str:
    """sha256 over the config sections that shape the bundles (not strategy, risk, costs, broker)."""
    tree = config_to_dict(cfg)
    blob = json.dumps({k: tree[k] for k in _MODEL_SECTIONS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def period_offset(text: str) -> pd.DateOffset:
    """``"12M"`` -> ``DateOffset(months=12)`` (D, W, M, Y)."""
    n, unit = parse_period(text)
    return {"D": pd.DateOffset(days=n), "W": pd.DateOffset(weeks=n), "M": pd.DateOffset(months=n),
            "Y": pd.DateOffset(years=n)}[unit]


def _grid_ceil(t: pd.Timestamp, unit: str) -> pd.Timestamp:
    """The first month start (M, Y) or UTC midnight (D, W) at or after ``t``."""
    day = t.normalize()
    if unit in ("M", "Y"):
        first = day.replace(day=1)
        return first if first == t else first + pd.DateOffset(months=1)
    return day if day == t else day + pd.Timedelta(days=1)


@dataclass(frozen=True)
class FoldPlan:
    """One fold: training window ``[train_from, valid_from)``, validity ``[valid_from, valid_until)``."""

    name: str
    train_from: pd.Timestamp
    valid_from: pd.Timestamp
    valid_until: pd.Timestamp


def plan_folds(first_bar: pd.Timestamp, last_bar: pd.Timestamp, train_window: str, step: str,
               start: pd.Timestamp | None = None, bar: pd.Timedelta = pd.Timedelta(minutes=15)) -> list[FoldPlan]:
    """Every fold whose validity span the data cover completely (its last bar, which opens one
    bar before the span's end, is at or before ``last_bar``)."""
    window, stride = period_offset(train_window), period_offset(step)
    first = pd.Timestamp(start) if start is not None else _grid_ceil(first_bar + window, parse_period(step)[1])
    if first.tz is None:
        first = first.tz_localize("UTC")
    plans, k = [], 0
    while first + stride * (k + 1) - bar <= last_bar:
        a = first + stride * k
        plans.append(FoldPlan(f"fold_{a:%Y%m%d}", a - window, a, first + stride * (k + 1)))
        k += 1
    return plans


@dataclass
class FoldJob:
    """Everything one fold's training needs (picklable for Dask)."""

    plan: FoldPlan
    inputs: list[SymbolInput]
    cfg: Config
    output: str
    epochs: int | None = None
    max_samples: int | None = None


def _slice(inp: SymbolInput, lo: pd.Timestamp, hi_bars_after: int, until: pd.Timestamp, back: int) -> SymbolInput:
    """Bars of one input from ``back`` bars before ``lo`` to ``hi_bars_after`` bars after ``until``."""
    idx = inp.frame.index
    a = max(0, int(idx.searchsorted(lo)) - back)
    b = min(len(idx), int(idx.searchsorted(until)) + hi_bars_after)
    return SymbolInput(inp.symbol, inp.path, inp.frame.iloc[a:b], inp.sha256)


def fold_job(plan: FoldPlan, inputs: Sequence[SymbolInput], cfg: Config, folder: Path,
             epochs: int | None, max_samples: int | None) -> FoldJob:
    """The job of one fold: each input cut to the bars the fold may use (module docstring)."""
    back = max(warmup_bars(cfg.features) + cfg.model.window - 1, memory_bars(cfg.features) + cfg.model.window)
    sliced = [_slice(i, plan.train_from, cfg.labels.horizon, plan.valid_until, back) for i in inputs]
    sliced = [s for s in sliced if len(s.frame)]
    if not sliced:
        raise DataError(f"{plan.name}: no input has bars in {plan.train_from} .. {plan.valid_until}")
    return FoldJob(plan, sliced, cfg, str(folder / plan.name), epochs, max_samples)


def _ns(t: pd.Timestamp) -> int:
    return int(pd.Timestamp(t).as_unit("ns").value)


def run_fold(job: FoldJob) -> dict:
    """Train one fold's bundle, or its seed ensemble when ``model.ensemble > 1`` (the one
    training path, spans by time), and return its schedule entry."""
    t0 = time.perf_counter()
    p = job.plan
    try:
        spans = TimeSpans(cuts=_cuts(job), test_end=_ns(p.valid_until), train_start=_ns(p.train_from), name=p.name)
        kw = dict(spans=spans, epochs=job.epochs, max_samples=job.max_samples, progress=False)
        if job.cfg.model.ensemble > 1:
            meta, extra = _ensemble_meta(train_pooled_ensemble(job.inputs, job.cfg, job.output, **kw), job.output)
        else:
            meta, extra = train_pooled_bundle(job.inputs, job.cfg, job.output, **kw).meta, {}
    except DataError as exc:
        raise DataError(f"{p.name} (valid {p.valid_from:%Y-%m-%d} .. {p.valid_until:%Y-%m-%d}): {exc}") from None
    return {
        "name": p.name, "bundle": f"folds/{p.name}",
        "valid_from": p.valid_from.isoformat(), "valid_until": p.valid_until.isoformat(),
        "train_from": p.train_from.isoformat(), "training_span": meta["spans"]["training"],
        "test_span": meta["spans"]["test"], "weights_sha256": meta["weights_sha256"],
        "calibrator": meta["calibrator"],
        "inputs": [{**i.describe(), "slice_sha256": frame_sha256(i.frame)} for i in job.inputs],
        "samples": meta["samples"], "metrics": {"test": meta["metrics"]["test"]},
        "per_symbol": meta.get("per_symbol", {}), "best_epoch": meta["training"]["best_epoch"],
        **extra, "wall_seconds": round(time.perf_counter() - t0, 2),
    }


def _ensemble_meta(tree: dict, folder: str) -> tuple[dict, dict]:
    """A seed-ensemble fold seen as one bundle's meta (spans and samples of its members, which
    share one split; the ensemble's weights identity, calibrator and TCN test metrics; the
    baseline's from member 0) and the fold entry's ``ensemble`` record (K, per-member seed,
    weights, seconds and test metrics: the gain and its cost side by side)."""
    first = load_bundle(Path(folder) / tree["members"][0]["path"]).meta
    ens = tree["metrics"]["test"]["ensemble"]
    raw, cal = ens["raw"], ens["calibrated"]
    test = {**first["metrics"]["test"], "auc": cal["auc"], "brier_raw": raw["brier"], "brier_calibrated": cal["brier"],
            "ece_raw": raw["ece"], "ece_calibrated": cal["ece"], "log_loss_raw": raw["log_loss"],
            "log_loss_calibrated": cal["log_loss"], "tcn": {"raw": raw, "calibrated": cal}}
    meta = {**first, "weights_sha256": ensemble_weights_sha256(tree["members"]), "calibrator": tree["calibrator"],
            "metrics": {"test": test}, "per_symbol": tree["per_symbol"],
            "training": {"best_epoch": [m["best_epoch"] for m in tree["members"]]}}
    record = {"k": tree["k"], "members": tree["members"], "member_test": tree["metrics"]["test"]["members"],
              "seconds": tree["seconds"]}
    return meta, {"ensemble": record}


def _cuts(job: FoldJob) -> tuple[int, int]:
    """Validation and test start times: the test span starts at ``valid_from``; the validation
    span is the most recent ``val_fraction`` of the bars (all symbols) of the training window."""
    p = job.plan
    times = []
    for inp in job.inputs:
        idx = inp.frame.index
        times.append(idx[(idx >= p.train_from) & (idx < p.valid_from)])
    all_t = pd.DatetimeIndex(sorted(pd.DatetimeIndex([]).append(times))) if times else pd.DatetimeIndex([])
    if len(all_t) < 10:
        raise DataError(f"{p.name}: the training window {p.train_from} .. {p.valid_from} holds {len(all_t)} bars")
    n_val = max(1, int(round(len(all_t) * job.cfg.training.val_fraction)))
    return _ns(all_t[len(all_t) - n_val]), _ns(p.valid_from)


Mapper = Callable[[Callable[[FoldJob], dict], list[FoldJob]], list[dict]]


def sequential_mapper(fn: Callable[[FoldJob], dict], jobs: list[FoldJob]) -> list[dict]:
    """Run the fold jobs one after the other in this process."""
    return [fn(job) for job in jobs]


def dask_fold_mapper(client) -> Mapper:
    """Run the fold jobs as Dask tasks on ``client`` (results in fold order)."""

    def mapper(fn: Callable[[FoldJob], dict], jobs: list[FoldJob]) -> list[dict]:
        futures = [client.submit(fn, job, pure=False) for job in jobs]
        return [f.result() for f in futures]  # re-raises a fold's error here

    return mapper


@dataclass
class ScheduleResult:
    """Where the schedule went, what it holds and which folds this run trained."""

    path: Path
    schedule: dict
    trained: list[str]
    wall_seconds: float


def _training_sha(job: FoldJob) -> dict[str, str]:
    """sha256 per symbol of the bars of a fold's slice that open before its validity span (what
    its bundle learned from); an extension must find them unchanged."""
    out = {}
    for inp in job.inputs:
        part = inp.frame[inp.frame.index < job.plan.valid_from]
        out[inp.symbol] = frame_sha256(part)
    return out


def _existing(output: str | Path) -> dict | None:
    path = Path(output) / SCHEDULE_FILE
    return read_schedule_json(path) if path.is_file() else None


def _check_extension(old: dict, cfg: Config, train_window: str, step: str, plans: list[FoldPlan],
                     jobs_by_name: dict[str, FoldJob], where: str) -> None:
    k_old = int(((old.get("config") or {}).get("model") or {}).get("ensemble", 1))
    if k_old != cfg.model.ensemble:  # before the config hash: name the one difference that matters
        raise DataError(f"{where}: its folds were trained with model.ensemble={k_old}, this run asks for "
                        f"model.ensemble={cfg.model.ensemble}; a schedule never mixes K values: set "
                        f"model.ensemble={k_old} or write a new schedule folder")
    if old["config_hash"] != config_hash(cfg):
        raise DataError(f"{where}: was trained with another config (config_hash differs); write a new schedule "
                        "folder or use the same config")
    if (old["train_window"], old["step"]) != (train_window, step):
        raise DataError(f"{where}: was trained with train window {old['train_window']} and step {old['step']}, "
                        f"not {train_window} and {step}")
    names = {p.name for p in plans}
    for fold in old["folds"]:
        if fold["name"] not in names:
            raise DataError(f"{where}: fold {fold['name']} is not on this data's fold grid (the data start earlier "
                            "or end before it?); write a new schedule folder")
        now = _training_sha(jobs_by_name[fold["name"]])
        if now != fold["training_sha256"]:
            raise DataError(f"{where}: the bars {fold['name']} was trained on differ in this data "
                            "(sha256 of its training slice); write a new schedule folder")


def build_schedule(inputs: list[SymbolInput], cfg: Config, output: str | Path, *, start=None,
                   epochs: int | None = None, max_samples: int | None = None, mapper: Mapper | None = None,
                   engine: str = "sequential", overwrite: bool = False) -> ScheduleResult:
    """Train (or extend) a walk-forward schedule in ``output`` (module docstring)."""
    t0 = time.perf_counter()
    paths = [i.path for i in inputs]
    check_output_dir(output, OUTPUT_KIND, inputs=paths, overwrite=overwrite)
    tw, step = cfg.training.train_window, cfg.training.step
    old = _existing(output)
    if old is not None and start is None and old["folds"]:
        start = pd.Timestamp(old["folds"][0]["valid_from"])  # keep the existing grid
    bar = pd.Timedelta(seconds=timeframe_seconds(cfg.data.timeframe))
    first_bar = min(i.frame.index[0] for i in inputs)
    last_bar = max(i.frame.index[-1] for i in inputs)
    plans = plan_folds(first_bar, last_bar, tw, step, start, bar)
    if not plans:
        raise DataError(f"the data ({first_bar} .. {last_bar}) do not cover a {tw} training window and one full "
                        f"{step} validity span")
    folds_dir = Path(output) / "folds"
    jobs = {p.name: fold_job(p, inputs, cfg, folds_dir, epochs, max_samples) for p in plans}
    done: dict[str, dict] = {}
    if old is not None:
        _check_extension(old, cfg, tw, step, plans, jobs, str(output))
        done = {f["name"]: f for f in old["folds"]}
    new = [p for p in plans if p.name not in done]
    if old is not None and not new:
        return ScheduleResult(Path(output), old, [], round(time.perf_counter() - t0, 2))
    with output_dir(output, OUTPUT_KIND, inputs=paths, overwrite=overwrite) as tmp:
        if done:
            shutil.copytree(Path(output) / "folds", tmp / "folds")
        todo = [fold_job(p, inputs, cfg, tmp / "folds", epochs, max_samples) for p in new]
        log.info("walk-forward: %d folds to train (%s), %d kept", len(todo), engine, len(done))
        entries = (mapper or sequential_mapper)(run_fold, todo)
        for job, entry in zip(todo, entries):
            entry["training_sha256"] = _training_sha(job)
            entry["config_hash"] = config_hash(cfg)
        folds = sorted([*done.values(), *entries], key=lambda f: f["valid_from"])
        wall = round(time.perf_counter() - t0, 2)
        runs = (old or {}).get("runs", []) + [{"utc": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
                                               "trained": [e["name"] for e in entries], "engine": engine,
                                               "wall_seconds": wall}]
        schedule = {
            "schedule_format": SCHEDULE_FORMAT, "timeframe": cfg.data.timeframe, "train_window": tw, "step": step,
            "ensemble": int(cfg.model.ensemble),
            "config_hash": config_hash(cfg), "config": config_to_dict(cfg), "label_scale": label_scale_text(cfg),
            "inputs": [i.describe() for i in inputs], "folds": folds, "runs": runs,
        }
        write_text_atomic(tmp / SCHEDULE_FILE, json.dumps(schedule, indent=2, allow_nan=True))
    return ScheduleResult(Path(output), schedule, [e["name"] for e in entries], wall)
