"""A walk-forward schedule of bundles, scored like one bundle: :class:`ModelSchedule`.

``schedule.json`` (written by ``models.walkforward``) maps validity spans to bundles. Bar t is
scored by the bundle of the fold whose span holds t's open time: fold k covers
``[valid_from_k, valid_from_k+1)``, and the last fold stays valid after its span until a later
fold exists (it was trained only on bars before its own span, so it never saw those bars
either). Bars before the first span get no probability (NaN): no bundle is valid there, and a
later bundle is never used for an earlier bar.

The schedule offers the bundle's scoring surface (``predict_logit``, ``predict_proba``,
``score_frame``, ``score_window``, ``score_features(window, at=...)``, ``meta``, ``window``,
``timeframe``, ``feature_cfg``, ``label_cfg``, ``min_bars``, ``history_bars``,
``training_span``, ``test_span``) so engines take either; :func:`load_model` returns a bundle
or a schedule for a path. :meth:`ModelSchedule.model_ids` names the fold used per bar (for the
decision journal). Each fold's bars are scored on a sub-frame that starts
``history_bars`` bars before the fold's first bar, so a bar's P depends on its own bundle and
on bars up to itself only. A fold trained with ``model.ensemble: K`` is a seed ensemble
(:class:`models.ensemble.EnsembleModel`: mean member logit, the fold's one calibrator), scored
the same way. The schedule imports no torch: bundles do the scoring.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from core.config import CalibrationConfig, FeatureConfig, LabelConfig
from core.errors import BundleError
from core.files import OutputKind
from models.bundle import load_bundle
from models.ensemble import EnsembleModel, is_ensemble
from models.recalibration import ROLLING_FIT, calibration_config_of, with_calibration

SCHEDULE_FILE = "schedule.json"
OUTPUT_KIND = OutputKind("schedule", files=(SCHEDULE_FILE,), signature='"schedule_format"')
_FOLD_KEYS = ("name", "bundle", "valid_from", "valid_until", "training_span", "weights_sha256")


def _ts(value) -> pd.Timestamp:
    t = pd.Timestamp(value)
    return t.tz_convert("UTC") if t.tz else t.tz_localize("UTC")


def read_schedule_json(path: str | Path) -> dict:
    """Parse and check schedule.json (one-line BundleError naming the file and field)."""
    path = Path(path)
    try:
        tree = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise BundleError(f"{path}: unreadable, not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(tree, dict) or tree.get("schedule_format") != 1:
        raise BundleError(f"{path}: not a schedule this code reads (schedule_format 1)")
    folds = tree.get("folds")
    if not isinstance(folds, list) or not folds:
        raise BundleError(f"{path}: field 'folds': expected a non-empty list")
    for k, fold in enumerate(folds):
        missing = [key for key in _FOLD_KEYS if not isinstance(fold, dict) or key not in fold]
        if missing:
            raise BundleError(f"{path}: field 'folds[{k}].{missing[0]}': missing")
    starts = [_ts(f["valid_from"]) for f in folds]
    if any(b <= a for a, b in zip(starts, starts[1:])):
        raise BundleError(f"{path}: field 'folds': validity spans are not in increasing order")
    return tree


class ModelSchedule:
    """Bundles of a walk-forward schedule, each scoring the bars of its validity span."""

    def __init__(self, directory: str | Path, calibration: CalibrationConfig | None = None) -> None:
        """``calibration`` overrides the mode the schedule was trained with (static vs rolling
        comparisons); by default the schedule's config decides."""
        self.path = Path(directory)
        self.schedule = read_schedule_json(self.path / SCHEDULE_FILE)
        self.folds = self.schedule["folds"]
        self.names = [f["name"] for f in self.folds]
        self.starts = pd.DatetimeIndex([_ts(f["valid_from"]) for f in self.folds]).as_unit("ns")
        cfg = self.schedule.get("config") or {}
        self.ccfg = calibration or calibration_config_of(self.schedule)
        self._bundles: dict[int, object] = {}
        first = self.bundle(0)
        self.feature_names = first.feature_names
        self.window = first.window
        self.timeframe = first.timeframe
        self.feature_cfg: FeatureConfig = first.feature_cfg
        self.label_cfg: LabelConfig = first.label_cfg
        self.threads = first.threads
        self.min_bars = first.min_bars
        self.history_bars = first.history_bars  # the rolling wrapper's, when rolling
        self.input_bars = first.input_bars  # rows one logit reads (model.context: sequence reads more)
        blob = json.dumps(self.folds, sort_keys=True, default=str).encode()
        self.meta = {"kind": "schedule", "config": cfg, "label_config": first.meta.get("label_config"),
                     "feature_names": list(self.feature_names), "feature_config": first.meta.get("feature_config"),
                     "window": self.window, "timeframe": self.timeframe, "folds": self.folds,
                     # the probability cache's identity: every fold's weights, calibrator and span
                     "weights_sha256": hashlib.sha256(blob).hexdigest(), "normaliser": None,
                     "calibrator": {"kind": "schedule", **self.ccfg.model_dump(mode="json"),
                                    **({"fit": ROLLING_FIT} if self.ccfg.mode == "rolling" else {})}}

    # ----------------------------------------------------------------- bundles
    def bundle(self, k: int):
        """The (loaded once) bundle of fold ``k``, wrapped for rolling calibration when configured."""
        if k not in self._bundles:
            fold = self.folds[k]
            b = _load_fold_model(self.path / fold["bundle"])
            if b.meta.get("weights_sha256") != fold["weights_sha256"]:
                raise BundleError(f"{self.path / fold['bundle']}: weights differ from schedule.json's record")
            if k and b.window != self.window:
                raise BundleError(f"{self.path / fold['bundle']}: window {b.window} differs from the schedule's")
            self._bundles[k] = with_calibration(b, self.ccfg)
        return self._bundles[k]

    def fold_positions(self, index: pd.DatetimeIndex) -> np.ndarray:
        """Fold number per bar (-1 before the first validity span)."""
        return self.starts.searchsorted(pd.DatetimeIndex(index).as_unit("ns"), side="right") - 1

    def model_ids(self, index: pd.DatetimeIndex) -> np.ndarray:
        """Fold name per bar ("" where no bundle is valid) -- the model id to journal per decision."""
        k = self.fold_positions(index)
        names = np.array([""] + self.names, dtype=object)
        return names[k + 1]

    def for_time(self, ts) -> object | None:
        """The bundle valid at bar open time ``ts`` (None before the first span)."""
        k = int(self.fold_positions(pd.DatetimeIndex([_ts(ts)]))[0])
        return self.bundle(k) if k >= 0 else None

    @property
    def training_span(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        """The first fold's training span: every later bar is out of sample for its own bundle."""
        a, b = self.folds[0]["training_span"]
        return _ts(a), _ts(b)

    @property
    def test_span(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        """First validity start .. last validity end (the out-of-sample span of the schedule)."""
        return _ts(self.folds[0]["valid_from"]), _ts(self.folds[-1]["valid_until"])

    # ----------------------------------------------------------------- scoring
    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        """Refused: each fold has its own calibrator (use score_frame / predict_proba)."""
        raise BundleError("a schedule calibrates with each fold's own calibrator: use score_frame or predict_proba")

    def score_frame(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """``(logit, P)`` per bar of ``frame``, each from the bundle valid at that bar."""
        logit = np.full(len(frame), np.nan)
        prob = np.full(len(frame), np.nan)
        k_of = self.fold_positions(frame.index)
        for k in np.unique(k_of[k_of >= 0]):
            pos = np.flatnonzero(k_of == k)
            a, b = int(pos[0]), int(pos[-1]) + 1
            bundle = self.bundle(int(k))
            lo = max(0, a - bundle.history_bars)
            sub = frame.iloc[lo:b]
            if hasattr(bundle, "score_frame"):
                z, p = bundle.score_frame(sub)
            else:
                z = bundle.predict_logit(sub).to_numpy()
                p = bundle.calibrate(z)
            logit[a:b] = z[a - lo:]
            prob[a:b] = p[a - lo:]
        return logit, prob

    def predict_logit(self, frame: pd.DataFrame) -> pd.Series:
        """Raw logit per bar from the bundle valid at that bar (NaN before the first span)."""
        return pd.Series(self.score_frame(frame)[0], index=frame.index, name="logit")

    def predict_proba(self, frame: pd.DataFrame) -> pd.Series:
        """Calibrated P per bar from the bundle valid at that bar (NaN before the first span)."""
        return pd.Series(self.score_frame(frame)[1], index=frame.index, name="prob")

    def score_window(self, bars: pd.DataFrame) -> float:
        """P of the last bar of ``bars`` with the bundle valid at its time."""
        bundle = self.for_time(bars.index[-1])
        return float("nan") if bundle is None else bundle.score_window(bars)

    def score_features(self, window: np.ndarray, at=None, stream=None) -> tuple[float, float]:
        """(logit, P) of one raw feature window with the bundle valid at ``at`` (the last fold when
        None: the newest bundle, for a live bar after the schedule's last span start). In rolling
        mode ``stream`` (:class:`models.recalibration.RollingStream`) holds the trailing bars."""
        bundle = self.bundle(len(self.folds) - 1) if at is None else self.for_time(at)
        if bundle is None:
            return float("nan"), float("nan")
        if stream is not None:
            return bundle.score_features(window, at=at, stream=stream)
        return bundle.score_features(window)


def _load_fold_model(path: Path):
    """A fold's model: a bundle, or a seed ensemble (``model.ensemble: K`` folds)."""
    return EnsembleModel(path) if is_ensemble(path) else load_bundle(path)


def model_ids_of(model, index: pd.DatetimeIndex) -> np.ndarray:
    """Id of the model that scores each bar of ``index`` (what journals and trade lists name per
    decision): a schedule's fold name ("" before its first span); for a bundle or an ensemble
    its folder name (the folder of a ``final_model.pt``); "" for a model without a path."""
    if isinstance(model, ModelSchedule):
        return model.model_ids(index)
    path = getattr(model, "path", None)
    name = "" if not path else (Path(path).parent.name if Path(path).suffix == ".pt" else Path(path).name)
    return np.full(len(index), name, dtype=object)


def model_id_at(model, ts) -> str:
    """:func:`model_ids_of` for one bar open time ``ts``."""
    return str(model_ids_of(model, pd.DatetimeIndex([_ts(ts)]))[0])


def is_schedule(path: str | Path) -> bool:
    """True when ``path`` is a folder holding schedule.json."""
    return (Path(path) / SCHEDULE_FILE).is_file()


def load_model(path: str | Path):
    """A bundle (static or rolling calibration, as it was trained), a seed ensemble
    (:class:`models.ensemble.EnsembleModel`) or a :class:`ModelSchedule`."""
    if is_schedule(path):
        return ModelSchedule(path)
    if is_ensemble(path):  # rolling as its members were trained, on the ensemble's mean logit
        return with_calibration(EnsembleModel(path))
    return with_calibration(load_bundle(path))

