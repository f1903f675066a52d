"""Training of seed ensembles (``model.ensemble: K``); scoring lives in :mod:`models.ensemble`.

The data are prepared and split ONCE; member k is an ordinary bundle trained on that same
split with ``training.seed + k``, written to ``members/m<k>/``: for one candle file by
``models.train.train_bundle`` (:func:`train_ensemble`), for pooled symbols with spans by time
(a walk-forward fold) by ``models.universe.train_pooled_bundle``
(:func:`train_pooled_ensemble`) -- both the one training path. ONE calibrator
(``training.calibration``) is fitted on the members' mean raw logits over the validation
span (:func:`train_members`, shared by both). Test metrics for the ensemble and for every
member (each calibrated the same way on its own validation logits), and each member's
training time, go into ``ensemble.json``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from core.config import Config
from core.errors import DataError
from core.files import check_output_dir, output_dir, write_text_atomic
from models.bundle import load_bundle
from models.calibration import Calibrator, sigmoid
from models.dataset import prepare
from models.ensemble import ENSEMBLE_FILE, OUTPUT_KIND
from models.features import warmup_bars
from models.metrics import all_metrics
from models.splits import Split, cap_train, purged_kfold_splits, walk_forward_split
from models.train import check_eval_spans, train_bundle
from models.universe import SymbolInput, TimeSpans, per_symbol_metrics, train_pooled_bundle


def _split(data, cfg: Config, max_samples):
    tcfg = cfg.training
    if tcfg.split == "walk_forward":
        split = walk_forward_split(data.samples, cfg.labels.horizon, tcfg.embargo, tcfg.val_fraction,
                                   tcfg.test_fraction)
    else:  # the most recent fold, as a single bundle keeps
        split = list(purged_kfold_splits(data.samples, cfg.labels.horizon, tcfg.embargo, tcfg.folds,
                                         min_bars=warmup_bars(cfg.features) + cfg.model.window - 1))[-1]
    split = cap_train(split, max_samples if max_samples is not None else tcfg.max_samples)
    check_eval_spans(split, data.labels)
    return split


def member_cfg(cfg: Config, k: int) -> Config:
    """Member ``k``'s config: ``training.seed + k``, one network."""
    c = cfg.model_copy(deep=True)
    c.training.seed = (cfg.training.seed + k) % (2**32)
    c.model.ensemble = 1
    return c


# train_one(member config, member folder) -> the member's TrainResult
TrainOne = Callable[[Config, Path], object]
# logits_of(member folder) -> raw logit per position of the prepared data (split positions)
LogitsOf = Callable[[Path], np.ndarray]


def train_members(cfg: Config, folder: Path, split: Split, labels: np.ndarray, train_one: TrainOne,
                  logits_of: LogitsOf, t0: float) -> tuple[dict, np.ndarray]:
    """Train ``cfg.model.ensemble`` members into ``folder/members/m<k>`` and fit the ensemble
    calibrator on their mean validation logits; ``(ensemble.json tree, mean test logits)``."""
    y_val, y_test = labels[split.val], labels[split.test]
    members, val_z, test_z, seconds = [], [], [], []
    for k in range(int(cfg.model.ensemble)):
        t_k = time.perf_counter()
        c = member_cfg(cfg, k)
        result = train_one(c, folder / "members" / f"m{k}")
        seconds.append(round(time.perf_counter() - t_k, 2))
        z = logits_of(folder / "members" / f"m{k}")
        val_z.append(z[split.val])
        test_z.append(z[split.test])
        members.append({"path": f"members/m{k}", "seed": c.training.seed,
                        "weights_sha256": result.meta["weights_sha256"], "seconds": seconds[-1],
                        "best_epoch": result.meta["training"]["best_epoch"]})
    mean_val, mean_test = np.mean(val_z, axis=0), np.mean(test_z, axis=0)
    cal = Calibrator.fit(mean_val, y_val, cfg.training.calibration)
    member_test = []
    for z_v, z_t in zip(val_z, test_z):
        own = Calibrator.fit(z_v, y_val, cfg.training.calibration)  # same calibration rule per member
        member_test.append({"calibrated": all_metrics(y_test, own(z_t)), "raw": all_metrics(y_test, sigmoid(z_t))})
    tree = {"ensemble_format": 1, "k": len(members), "members": members, "calibrator": cal.to_dict(),
            "metrics": {"test": {"ensemble": {"calibrated": all_metrics(y_test, cal(mean_test)),
                                              "raw": all_metrics(y_test, sigmoid(mean_test))},
                                 "members": member_test}},
            "seconds": {"members": seconds, "total": round(time.perf_counter() - t0, 2)}}
    return tree, mean_test


def train_ensemble(frame: pd.DataFrame, cfg: Config, output: str | Path, data_path=None, epochs=None,
                   max_samples=None, progress: bool = True, overwrite: bool = False) -> dict:
    """Train ``cfg.model.ensemble`` members and the ensemble calibrator into ``output``."""
    t0 = time.perf_counter()
    check_output_dir(output, OUTPUT_KIND, inputs=[data_path], overwrite=overwrite)
    data = prepare(frame, cfg)
    if len(data.samples) < 50:
        raise DataError(f"only {len(data.samples)} labelled samples with a full window; need more candles")
    split = _split(data, cfg, max_samples)

    def train_one(c: Config, path: Path):
        return train_bundle(frame, c, path, data_path=data_path, epochs=epochs, max_samples=max_samples,
                            progress=progress, prepared=data, split=split)

    with output_dir(output, OUTPUT_KIND, inputs=[data_path], overwrite=overwrite) as tmp:
        tree, _ = train_members(cfg, tmp, split, data.labels, train_one,
                                lambda path: load_bundle(path).predict_logit(frame).to_numpy(), t0)
        write_text_atomic(tmp / ENSEMBLE_FILE, json.dumps(tree, indent=2, allow_nan=True))
    return tree


def train_pooled_ensemble(inputs: Sequence[SymbolInput], cfg: Config, output: str | Path, *,
                          spans: TimeSpans, epochs: int | None = None, max_samples: int | None = None,
                          progress: bool = True) -> dict:
    """A seed ensemble of pooled bundles with spans by time (``spans``; a walk-forward fold): the inputs are
    prepared and split once (:func:`models.universe.pooled_split`), every member is
    ``train_pooled_bundle`` on that split. ``ensemble.json`` also holds the ensemble's test
    metrics per symbol (``per_symbol``)."""
    t0 = time.perf_counter()
    paths = [i.path for i in inputs]
    check_output_dir(output, OUTPUT_KIND, inputs=paths)
    pooled, split = spans.split(list(inputs), cfg, max_samples)

    def train_one(c: Config, path: Path):
        return train_pooled_bundle(list(inputs), c, path, epochs=epochs, max_samples=max_samples,
                                   progress=progress, prepared=(pooled, split))

    def logits_of(path: Path) -> np.ndarray:  # positions of the stack: the inputs one after the other
        member = load_bundle(path)
        return np.concatenate([member.predict_logit(i.frame).to_numpy() for i in inputs])

    with output_dir(output, OUTPUT_KIND, inputs=paths) as tmp:
        tree, mean_test = train_members(cfg, tmp, split, pooled.data.labels, train_one, logits_of, t0)
        y_test = pooled.data.labels[split.test]
        cal = Calibrator.from_dict(tree["calibrator"])
        curves = {"TCN raw": (y_test, sigmoid(mean_test)), "TCN calibrated": (y_test, cal(mean_test))}
        tree["per_symbol"] = {"test": per_symbol_metrics(SimpleNamespace(split=split, curves=curves), pooled)}
        write_text_atomic(tmp / ENSEMBLE_FILE, json.dumps(tree, indent=2, allow_nan=True))
    return tree
