"""Seed ensembles (``model.ensemble: K``): K networks, logits averaged before calibration.

Training (:mod:`models.ensemble_train`): the data are prepared and split ONCE; member k is an
ordinary bundle (the one training path: ``train_bundle``, or ``train_pooled_bundle`` for a
walk-forward fold) trained on that same split with ``training.seed + k``, written to
``members/m<k>/``. The ensemble's logit is the
mean of the members' raw logits; ONE calibrator (``training.calibration``) is fitted on the
mean logits of the validation span -- the members' own calibrators are not used. Test
metrics are reported for the ensemble and for every member, with each member's training
time, so the gain and its cost sit side by side in ``ensemble.json``.

Scoring (:class:`EnsembleModel`) offers the bundle's surface (``predict_logit``,
``predict_proba``, ``calibrate``, ``score_features``, ``score_window``, ``meta``, spans,
``window``, ``min_bars``, ``history_bars`` ...); :func:`models.schedule.load_model` returns it
for a folder holding ``ensemble.json``, and a walk-forward fold trained with ``model.ensemble: K``
is such a folder (:class:`models.schedule.ModelSchedule` loads it). ``nts train`` with several
``--data`` files and no ``--walk-forward`` still trains one network (it refuses K > 1).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import BundleError
from core.files import OutputKind
from models.bundle import load_bundle
from models.calibration import Calibrator

ENSEMBLE_FILE = "ensemble.json"
OUTPUT_KIND = OutputKind("ensemble", files=(ENSEMBLE_FILE,), signature='"ensemble_format"')


class EnsembleModel:
    """K member bundles scored together: mean raw logit, then the ensemble's calibrator."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory)
        try:
            self.tree = json.loads((self.path / ENSEMBLE_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise BundleError(f"{self.path / ENSEMBLE_FILE}: unreadable ({exc.__class__.__name__})") from None
        if not isinstance(self.tree, dict) or self.tree.get("ensemble_format") != 1 or not self.tree.get("members"):
            raise BundleError(f"{self.path / ENSEMBLE_FILE}: not an ensemble this code reads (ensemble_format 1)")
        self.members = [load_bundle(self.path / m["path"]) for m in self.tree["members"]]
        for m, rec in zip(self.members, self.tree["members"]):
            if m.meta["weights_sha256"] != rec["weights_sha256"]:
                raise BundleError(f"{self.path / rec['path']}: weights differ from ensemble.json's record")
        first = self.members[0]
        for name in ("feature_names", "window", "timeframe", "feature_cfg", "label_cfg", "threads", "min_bars",
                     "history_bars", "input_bars", "training_span", "test_span"):
            setattr(self, name, getattr(first, name))
        self.calibrator = Calibrator.from_dict(self.tree["calibrator"])
        self.meta = {**first.meta, "calibrator": self.tree["calibrator"], "ensemble": self.tree,
                     "weights_sha256": ensemble_weights_sha256(self.tree["members"])}

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        """Ensemble calibrator on mean logits."""
        return self.calibrator(np.asarray(logits, dtype=np.float64))

    def predict_logit(self, frame: pd.DataFrame) -> pd.Series:
        """Mean of the members' raw logits per bar."""
        z = np.mean([m.predict_logit(frame).to_numpy() for m in self.members], axis=0)
        return pd.Series(z, index=frame.index, name="logit")

    def predict_proba(self, frame: pd.DataFrame) -> pd.Series:
        """Calibrated P per bar."""
        return pd.Series(self.calibrate(self.predict_logit(frame).to_numpy()), index=frame.index, name="prob")

    def score_features(self, window: np.ndarray) -> tuple[float, float]:
        """(mean logit, P) of one raw feature window."""
        z = float(np.mean([m.score_features(window)[0] for m in self.members]))
        return z, float(self.calibrate(np.array([z]))[0])

    def score_window(self, bars: pd.DataFrame) -> float:
        """P of the last bar of ``bars``."""
        tail = bars.iloc[-self.history_bars:]
        if len(tail) < self.min_bars:
            return float("nan")
        return float(self.predict_proba(tail).to_numpy()[-1])


def ensemble_weights_sha256(members: list[dict]) -> str:
    """The ensemble's identity: sha256 over its members' weight hashes, in member order."""
    shas = "".join(rec["weights_sha256"] for rec in members)
    return hashlib.sha256(shas.encode()).hexdigest()


def is_ensemble(path: str | Path) -> bool:
    """True when ``path`` is a folder holding ensemble.json."""
    return (Path(path) / ENSEMBLE_FILE).is_file()
