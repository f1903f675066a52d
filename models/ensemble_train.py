"""Training of seed ensembles (``model.ensemble: K``); scoring lives in :mod:`models.ensemble`.

The data are prepared and split ONCE; member k is an ordinary bundle
(``models.train.train_bundle``, the one training path) trained on that same split with
``training.seed + k``, written to ``members/m<k>/``. ONE calibrator (``training.calibration``)
is fitted on the members' mean raw logits over the validation span. Test metrics for the
ensemble and for every member (each calibrated the same way on its own validation logits),
and each member's training time, go into ``ensemble.json``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

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
from models.splits import cap_train, purged_kfold_splits, walk_forward_split
from models.train import check_eval_spans, train_bundle


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


def _member_cfg(cfg: Config, k: int) -> Config:
    c = cfg.model_copy(deep=True)
    c.training.seed = (cfg.training.seed + k) % (2**32)
    c.model.ensemble = 1
    return c


def train_ensemble(frame: pd.DataFrame, cfg: Config, output: str | Path, data_path=None, epochs=None,
                   max_samples=None, progress: bool = True, overwrite: bool = False) -> dict:
    """Train ``cfg.model.ensemble`` members and the ensemble calibrator into ``output``."""
    t0 = time.perf_counter()
    k_members = int(cfg.model.ensemble)
    check_output_dir(output, OUTPUT_KIND, inputs=[data_path], overwrite=overwrite)
    data = prepare(frame, cfg)
    if len(data.samples) < 50:
        raise DataError(f"only {len(data.samples)} labelled samples with a full window; need more candles")
    split = _split(data, cfg, max_samples)
    y_val, y_test = data.labels[split.val], data.labels[split.test]
    with output_dir(output, OUTPUT_KIND, inputs=[data_path], overwrite=overwrite) as tmp:
        members, val_z, test_z, seconds = [], [], [], []
        for k in range(k_members):
            t_k = time.perf_counter()
            result = train_bundle(frame, _member_cfg(cfg, k), tmp / "members" / f"m{k}", data_path=data_path,
                                  epochs=epochs, max_samples=max_samples, progress=progress, prepared=data,
                                  split=split)
            seconds.append(round(time.perf_counter() - t_k, 2))
            z = load_bundle(tmp / "members" / f"m{k}").predict_logit(frame).to_numpy()
            val_z.append(z[split.val])
            test_z.append(z[split.test])
            members.append({"path": f"members/m{k}", "seed": _member_cfg(cfg, k).training.seed,
                            "weights_sha256": result.meta["weights_sha256"], "seconds": seconds[-1]})
        mean_val, mean_test = np.mean(val_z, axis=0), np.mean(test_z, axis=0)
        cal = Calibrator.fit(mean_val, y_val, cfg.training.calibration)
        member_test = []
        for z_v, z_t in zip(val_z, test_z):
            own = Calibrator.fit(z_v, y_val, cfg.training.calibration)  # same calibration rule per member
            member_test.append({"calibrated": all_metrics(y_test, own(z_t)), "raw": all_metrics(y_test, sigmoid(z_t))})
        tree = {"ensemble_format": 1, "k": k_members, "members": members, "calibrator": cal.to_dict(),
                "metrics": {"test": {"ensemble": {"calibrated": all_metrics(y_test, cal(mean_test)),
                                                  "raw": all_metrics(y_test, sigmoid(mean_test))},
                                     "members": member_test}},
                "seconds": {"members": seconds, "total": round(time.perf_counter() - t0, 2)}}
        write_text_atomic(tmp / ENSEMBLE_FILE, json.dumps(tree, indent=2, allow_nan=True))
    return tree
