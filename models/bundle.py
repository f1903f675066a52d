"""The model bundle: the only way to score bars with a trained TCN.

A bundle is a directory written by ``nts train``::

    final_model.pt   state_dict only (``torch.load(weights_only=True)``)
    bundle.json      format version, features (names + definitions hash + config), window,
                     model spec, normalisation stats, calibrator, label config, spans, data
                     sha256, config, seed, package versions, metrics, learning curves,
                     sha256 of final_model.pt
    reliability.png, learning_curves.png, report.html

Scoring has one code path: raw features -> :class:`~models.dataset.Normaliser` ->
windows -> :meth:`ModelBundle._forward` (eval mode, ``torch.inference_mode``) -> calibrator.
``predict_proba`` (batch, 1024 windows per forward) and ``score_features`` /
``score_window`` (one window) go through it, so they agree to float rounding.

Threads: ``torch.set_num_threads`` is process-global. Scoring sets it only for the
duration of a call and restores the previous value afterwards: batch scoring uses
``bundle.threads`` (``training.threads`` of the config the bundle was trained with),
single-window scoring uses 1 thread (faster for one small window, no pool wake-up).
Training code is never affected.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch

from core.config import FeatureConfig, LabelConfig
from core.errors import BundleError, DataError
from core.ohlcv import segment_ids
from models.calibration import Calibrator
from models.dataset import Normaliser, check_frame, feature_matrix, valid_window_mask, window_view
from models.tcn import build_tcn

FORMAT_VERSION = 1
WEIGHTS_FILE = "final_model.pt"
META_FILE = "bundle.json"
# 128 windows keep each layer's activations (128 x 64 ch x 64 steps x 4 B = 2 MiB) in cache:
# measured ~33k windows/s on 2 cores vs ~16k/s at 1,024 (the conv kernels are memory-bound there).
SCORE_BATCH = 128
# score_window computes features on the last min_bars + HISTORY_PAD bars only: the recursive
# features (EWMA span 96, Wilder RSI) forget their start within ~1,000 bars ((1 - 2/97)^1024
# < 1e-9), so the result matches a full-history computation far below 1e-6.
HISTORY_PAD = 1024


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` intra-op threads, then restore the previous setting."""
    prev = torch.get_num_threads()
    if n != prev:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != prev:
            torch.set_num_threads(prev)


def _ts(value) -> pd.Timestamp:
    return pd.Timestamp(value).tz_convert("UTC") if pd.Timestamp(value).tz else pd.Timestamp(value, tz="UTC")


class ModelBundle:
    """A loaded bundle: network in eval mode, normaliser, calibrator and metadata."""

    def __init__(self, meta: dict, state_dict: dict, path: Path | None = None) -> None:
        from indicators.features import FEATURE_NAMES, warmup_bars

        self.meta = meta
        self.path = path
        self.feature_names = tuple(meta["feature_names"])
        self.window = int(meta["window"])
        self.timeframe = str(meta["timeframe"])
        self.feature_cfg = FeatureConfig(**meta["feature_config"])
        self.label_cfg = LabelConfig(**meta["label_config"])
        self.normaliser = Normaliser.from_dict(meta["normaliser"])
        self.calibrator = Calibrator.from_dict(meta["calibrator"])
        self.threads = int(meta.get("threads", 1))
        self.min_bars = warmup_bars(self.feature_cfg) + self.window - 1
        self.net = build_tcn(meta["model"], n_features=len(FEATURE_NAMES))
        try:
            self.net.load_state_dict(state_dict, strict=True)
        except (RuntimeError, KeyError) as exc:
            where = path or "bundle"
            raise BundleError(f"{where}: weights do not fit the model in bundle.json "
                              f"({str(exc).splitlines()[0][:160]})") from None
        self.net.eval()

    # --------------------------------------------------------------- metadata
    @property
    def training_span(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        """First..last bar whose data the network or the calibrator was fit on (train + validation,
        window history and label horizons included)."""
        a, b = self.meta["spans"]["training"]
        return _ts(a), _ts(b)

    @property
    def test_span(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        """First..last bar of the out-of-sample test span (sample bars through their label horizon)."""
        a, b = self.meta["spans"]["test"]
        return _ts(a), _ts(b)

    # ---------------------------------------------------------------- scoring
    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities for raw network logits."""
        return self.calibrator(np.asarray(logits, dtype=np.float64))

    def _forward(self, windows: np.ndarray) -> np.ndarray:
        """Logits (float64) for normalised float32 windows ``(B, window, F)``: the one network path."""
        with torch.inference_mode():
            out = self.net(torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)))
        return out.double().numpy()

    def _features(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        check_frame(frame, "bundle input")
        feats = feature_matrix(frame, self.feature_cfg, self.timeframe)
        valid = valid_window_mask(feats, segment_ids(frame.index, self.timeframe), self.window)
        return feats, valid

    def logits_for_features(self, feats: np.ndarray, ends: np.ndarray, batch: int = SCORE_BATCH) -> np.ndarray:
        """Logits of the windows ending at positions ``ends`` of a raw feature matrix (batched)."""
        norm = self.normaliser.transform(feats)
        view = window_view(norm, self.window)
        out = np.empty(len(ends), dtype=np.float64)
        with torch_threads(self.threads):
            for i in range(0, len(ends), batch):
                chunk = ends[i:i + batch]
                out[i:i + len(chunk)] = self._forward(view[chunk - self.window + 1])
        return out

    def predict_logit(self, frame: pd.DataFrame) -> pd.Series:
        """Raw network logit for every bar with a full valid window (NaN elsewhere); index = frame.index."""
        feats, valid = self._features(frame)
        out = np.full(len(frame), np.nan)
        ends = np.flatnonzero(valid)
        if len(ends):
            out[ends] = self.logits_for_features(feats, ends)
        return pd.Series(out, index=frame.index, name="logit")

    def predict_proba(self, frame: pd.DataFrame) -> pd.Series:
        """Calibrated P(profit barrier first) for every bar with a full valid window, NaN elsewhere."""
        logit = self.predict_logit(frame)
        return pd.Series(self.calibrate(logit.to_numpy()), index=frame.index, name="prob")

    def score_features(self, window: np.ndarray) -> tuple[float, float]:
        """(logit, calibrated P) for one RAW ``(window, 12)`` feature array (e.g. from
        ``StreamingFeatures``); ``(nan, nan)`` if any value is not finite."""
        arr = np.asarray(window, dtype=np.float64)
        if arr.shape != (self.window, len(self.feature_names)):
            raise DataError(f"score_features: expected a ({self.window}, {len(self.feature_names)}) array, "
                            f"got {arr.shape}")
        if not np.isfinite(arr).all():
            return float("nan"), float("nan")
        with torch_threads(1):
            logit = float(self._forward(self.normaliser.transform(arr)[None])[0])
        return logit, float(self.calibrate(np.array([logit]))[0])

    def score_window(self, bars: pd.DataFrame) -> float:
        """Calibrated P of the LAST bar of ``bars`` (trailing candles; features computed here).
        NaN when there is not enough history or the last window crosses a gap."""
        check_frame(bars, "score_window bars")
        if len(bars) < self.min_bars:
            return float("nan")
        tail = bars.iloc[-(self.min_bars + HISTORY_PAD):]
        feats = feature_matrix(tail, self.feature_cfg, self.timeframe)
        seg = segment_ids(tail.index, self.timeframe)
        if seg[-1] != seg[-self.window]:
            return float("nan")
        return self.score_features(feats[-self.window:])[1]


# ------------------------------------------------------------------- save / load

def write_bundle_files(directory: Path, meta: dict, state_dict: dict) -> dict:
    """Write final_model.pt and bundle.json (with the weights' sha256) into ``directory``."""
    directory = Path(directory)
    weights = directory / WEIGHTS_FILE
    torch.save({k: v.detach().cpu().clone() for k, v in state_dict.items()}, weights)
    meta = dict(meta)
    meta["weights_sha256"] = sha256_file(weights)
    tmp = directory / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, allow_nan=True))
    os.replace(tmp, directory / META_FILE)
    return meta


def load_bundle(path: str | Path, expected_window: int | None = None) -> ModelBundle:
    """Load a bundle directory (or its ``final_model.pt``) after checking it fits this code.

    Refuses with one-line BundleError: missing files, unreadable bundle.json, another format
    version, another feature set (names or definitions hash), a window that differs from
    the model spec or from ``expected_window``, and weights whose sha256 differs from the
    one recorded (tampered or truncated) or that do not load.
    """
    from indicators.features import FEATURE_NAMES, feature_definitions_hash

    p = Path(path)
    if p.is_dir():
        directory = p
    elif p.name == WEIGHTS_FILE or p.suffix == ".pt":
        directory = p.parent
    else:
        raise BundleError(f"{p}: not a bundle directory or {WEIGHTS_FILE}")
    meta_path = directory / META_FILE
    weights = p if p.suffix == ".pt" else directory / WEIGHTS_FILE
    if not meta_path.exists():
        raise BundleError(f"{directory}: no {META_FILE} (not a model bundle, or an unfinished one)")
    if not weights.exists():
        raise BundleError(f"{directory}: weights file {weights.name} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{meta_path}: unreadable ({exc.__class__.__name__})") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{meta_path}: not a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{meta_path}: format version {version!r}, this code reads version {FORMAT_VERSION}")
    try:
        names = tuple(meta["feature_names"])
        fcfg = FeatureConfig(**meta["feature_config"])
        window = int(meta["window"])
        model_window = int(meta["config"]["model"]["window"])
        recorded_sha = meta["weights_sha256"]
        for key in ("timeframe", "normaliser", "calibrator", "label_config", "model", "spans"):
            meta[key]
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{meta_path}: missing or invalid field ({exc.__class__.__name__}: {exc})") from None
    if names != tuple(FEATURE_NAMES):
        raise BundleError(f"{meta_path}: feature set {list(names)} differs from this code's {list(FEATURE_NAMES)}")
    if meta.get("feature_hash") != feature_definitions_hash(fcfg):
        raise BundleError(f"{meta_path}: feature definitions hash differs from this code's "
                          f"(features were built differently; retrain the model)")
    if window != model_window:
        raise BundleError(f"{meta_path}: window {window} differs from the model config's {model_window}")
    if expected_window is not None and int(expected_window) != window:
        raise BundleError(f"{meta_path}: bundle window {window} differs from the expected {expected_window}")
    if sha256_file(weights) != recorded_sha:
        raise BundleError(f"{weights}: sha256 differs from bundle.json (tampered or truncated weights)")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise BundleError(f"{weights}: cannot load weights ({exc.__class__.__name__})") from None
    if not isinstance(state, dict):
        raise BundleError(f"{weights}: not a state_dict")
    return ModelBundle(meta, state, path=directory)
