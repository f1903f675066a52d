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
``predict_proba`` (batch, ``SCORE_BATCH`` windows per forward) and ``score_features`` /
``score_window`` (one window) go through it, so they agree to float rounding.

Threads: ``torch.set_num_threads`` is process-global. Scoring sets it only for the
duration of a call and restores the previous value afterwards: batch scoring runs
``bundle.threads`` worker threads (``training.threads`` of the config the bundle was trained
with, at most the CPU count), each scoring whole batches with one intra-op thread;
single-window scoring uses 1 thread (faster for one small window, no pool wake-up).
Training code is never affected.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from pydantic import ValidationError

from core.config import FeatureConfig, LabelConfig, ModelConfig
from core.errors import BundleError, ConfigError, DataError
from core.files import write_text_atomic
from core.ohlcv import segment_ids
from core.timeframes import timeframe_seconds
from models.calibration import Calibrator
from models.dataset import (
    Normaliser,
    check_frame,
    feature_matrix,
    valid_window_mask,
    window_view,
)
from models.features import FEATURE_NAMES, feature_definitions_hash, memory_bars, warmup_bars
from models.tcn import build_tcn

FORMAT_VERSION = 1
WEIGHTS_FILE = "final_model.pt"
META_FILE = "bundle.json"
# 128 windows keep each layer's activations (128 x 64 ch x 64 steps x 4 B = 2 MiB) in cache:
# measured ~33k windows/s on 2 cores vs ~16k/s at 1,024 (the conv kernels are memory-bound there).
SCORE_BATCH = 128


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
        # min_bars: the least history that gives a probability at all (features finite over one
        # window); history_bars: the history after which P no longer depends on where the
        # history starts (every engine feeds this much warm-up: one warm-up everywhere).
        self.min_bars = warmup_bars(self.feature_cfg) + self.window - 1
        self.history_bars = max(self.min_bars, memory_bars(self.feature_cfg) + self.window)
        try:
            # both inside the try: a model spec the network code refuses and weights that do
            # not fit it are the same problem for the caller (a bundle that cannot be used)
            self.net = build_tcn(meta["model"], n_features=len(FEATURE_NAMES))
            self.net.load_state_dict(state_dict, strict=True)
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            where = path or "bundle"
            first = (str(exc).splitlines() or [""])[0][:160]
            raise BundleError(f"{where}: the model in bundle.json cannot be built or the weights do not fit it "
                              f"({exc.__class__.__name__}: {first})") from None
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
        starts = range(0, len(ends), batch)

        def score(i: int) -> None:
            chunk = ends[i:i + batch]
            out[i:i + len(chunk)] = self._forward(view[chunk - self.window + 1])

        workers = min(self.threads, os.cpu_count() or 1, max(1, len(starts)))
        # One intra-op thread per batch and one batch per worker thread (torch releases the GIL
        # inside its kernels): measured more robust than intra-op threading on a busy machine,
        # where OpenMP's spinning threads collapse when a core is taken. The batch boundaries
        # do not depend on the worker count, so the logits are the same for any count.
        with torch_threads(1):
            if workers <= 1:
                for i in starts:
                    score(i)
            else:
                with ThreadPoolExecutor(workers, thread_name_prefix="nts-score") as pool:
                    list(pool.map(score, starts))
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
        """Calibrated P of the LAST bar of ``bars`` (trailing candles; features computed here on
        the last :attr:`history_bars` of them). NaN when there is not enough history or the
        last window crosses a gap."""
        check_frame(bars, "score_window bars")
        if len(bars) < self.min_bars:
            return float("nan")
        tail = bars.iloc[-self.history_bars:]  # older bars cannot move P (see history_bars)
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
    write_text_atomic(directory / META_FILE, json.dumps(meta, indent=2, allow_nan=True))
    return meta


def _bad(meta_path: Path, field: str, problem: str) -> BundleError:
    return BundleError(f"{meta_path}: field '{field}': {problem}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# Keys every format-1 bundle stores per config section. A missing one would silently take the
# current default (e.g. another label horizon), so it is refused; keys added to the config
# classes later are not listed and fall back to their defaults in older bundles.
_SECTION_KEYS = {
    "feature_config": ("return_lag_long", "realized_vol_window", "ewma_vol_fast_span", "ewma_vol_slow_span",
                       "momentum_window", "rsi_window", "volume_z_window", "sma_fast", "sma_slow"),
    "label_config": ("profit", "stop", "horizon", "tie"),
    "model": ("window", "channels", "kernel_size", "dilations", "dropout", "head_units", "head_dropout"),
}


def _section(meta: dict, key: str, model: type, meta_path: Path):
    """Validate one stored config section through its typed config class (one line on failure)."""
    value = meta.get(key)
    if not isinstance(value, dict):
        raise _bad(meta_path, key, f"expected an object, got {type(value).__name__}")
    for name in _SECTION_KEYS[key]:
        if name not in value:
            raise _bad(meta_path, f"{key}.{name}", "missing")
    try:
        return model.model_validate(value)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(x) for x in (key, *first["loc"]))
        raise _bad(meta_path, loc, first["msg"]) from None


def _number_list(meta_path: Path, field: str, value, n: int | None) -> np.ndarray:
    """A list of finite numbers (of length ``n`` when given) as float64."""
    if not isinstance(value, list) or not all(_is_number(v) for v in value):
        raise _bad(meta_path, field, "expected a list of numbers")
    if n is not None and len(value) != n:
        raise _bad(meta_path, field, f"{len(value)} values, expected {n}")
    arr = np.asarray(value, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise _bad(meta_path, field, "holds a non-finite value")
    return arr


def _check_normaliser(meta: dict, meta_path: Path, n_features: int) -> None:
    d = meta.get("normaliser")
    if not isinstance(d, dict):
        raise _bad(meta_path, "normaliser", "expected an object with mean and std")
    _number_list(meta_path, "normaliser.mean", d.get("mean"), n_features)
    std = _number_list(meta_path, "normaliser.std", d.get("std"), n_features)
    if (std <= 0).any():
        raise _bad(meta_path, "normaliser.std", "holds a value <= 0")


def _check_calibrator(meta: dict, meta_path: Path) -> None:
    d = meta.get("calibrator")
    if not isinstance(d, dict):
        raise _bad(meta_path, "calibrator", "expected an object with kind and params")
    kind = d.get("kind")
    params = d.get("params")
    if kind not in ("platt", "isotonic"):
        raise _bad(meta_path, "calibrator.kind", f"{kind!r:.40} (expected platt or isotonic)")
    if not isinstance(params, dict):
        raise _bad(meta_path, "calibrator.params", "expected an object")
    if kind == "platt":
        for k in ("a", "b"):
            v = params.get(k)
            if not _is_number(v) or not np.isfinite(v):
                raise _bad(meta_path, f"calibrator.params.{k}", "platt needs a finite number")
        return
    x = _number_list(meta_path, "calibrator.params.x", params.get("x"), None)
    y = _number_list(meta_path, "calibrator.params.y", params.get("y"), len(x) if len(x) else None)
    if len(x) == 0:
        raise _bad(meta_path, "calibrator.params.x", "isotonic needs at least one breakpoint")
    if np.any(np.diff(x) < 0):
        raise _bad(meta_path, "calibrator.params.x", "breakpoints must be non-decreasing")
    if ((y < 0) | (y > 1)).any():
        raise _bad(meta_path, "calibrator.params.y", "probabilities must lie in [0, 1]")


def _check_spans(meta: dict, meta_path: Path) -> None:
    spans = meta.get("spans")
    if not isinstance(spans, dict):
        raise _bad(meta_path, "spans", "expected an object")
    for name in ("training", "test"):
        if name not in spans:
            raise _bad(meta_path, f"spans.{name}", "missing")
    for name, value in spans.items():
        if not isinstance(value, list) or len(value) != 2 or not all(isinstance(v, str) for v in value):
            raise _bad(meta_path, f"spans.{name}", "expected [first, last] ISO timestamps")
        try:
            a, b = _ts(value[0]), _ts(value[1])
        except (ValueError, TypeError, OverflowError):
            raise _bad(meta_path, f"spans.{name}", f"not a timestamp pair ({value!r:.80})") from None
        if pd.isna(a) or pd.isna(b) or a > b:
            raise _bad(meta_path, f"spans.{name}", f"not an ordered timestamp pair ({value!r:.80})")


def validate_meta(meta, meta_path: Path) -> None:
    """Check every field of bundle.json that loading and scoring use; BundleError (one line naming
    the file and the field) on the first problem.

    Checked: format version; feature names, feature/label/model config sections (through the typed
    config classes, so the same ranges as a config file) and the feature definitions hash; the
    timeframe; window == model.window == config.model.window; threads; normaliser mean/std (one
    finite value per feature, std > 0); calibrator kind and its parameters; spans (ordered
    timestamp pairs, training and test present); the weights' sha256 field.
    """
    if not isinstance(meta, dict):
        raise BundleError(f"{meta_path}: not a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{meta_path}: format version {version!r}, this code reads version {FORMAT_VERSION}")
    names = meta.get("feature_names")
    if not isinstance(names, list):
        raise _bad(meta_path, "feature_names", "expected a list of names")
    if tuple(names) != tuple(FEATURE_NAMES):
        raise BundleError(f"{meta_path}: feature set {list(names)} differs from this code's {list(FEATURE_NAMES)}")
    fcfg = _section(meta, "feature_config", FeatureConfig, meta_path)
    if meta.get("feature_hash") != feature_definitions_hash(fcfg):
        raise BundleError(f"{meta_path}: feature definitions hash differs from this code's "
                          f"(features were built differently; retrain the model)")
    _section(meta, "label_config", LabelConfig, meta_path)
    mcfg = _section(meta, "model", ModelConfig, meta_path)
    timeframe = meta.get("timeframe")
    try:
        timeframe_seconds(timeframe)
    except ConfigError:
        raise _bad(meta_path, "timeframe", f"{timeframe!r:.40} is not a timeframe such as 15m") from None
    window = meta.get("window")
    if not _is_int(window):
        raise _bad(meta_path, "window", f"expected an integer, got {window!r:.40}")
    config = meta.get("config")
    config_model = config.get("model") if isinstance(config, dict) else None
    model_window = config_model.get("window") if isinstance(config_model, dict) else None
    if not _is_int(model_window):
        raise _bad(meta_path, "config.model.window", f"expected an integer, got {model_window!r:.40}")
    if window != model_window or window != mcfg.window:
        raise BundleError(f"{meta_path}: window {window} differs from the model config's "
                          f"{model_window if window != model_window else mcfg.window}")
    threads = meta.get("threads", 1)
    # the same range as training.threads: a huge count makes OpenMP abort the process (no
    # exception to turn into one line), so it must never reach torch.set_num_threads
    if not _is_int(threads) or not 1 <= threads <= 256:
        raise _bad(meta_path, "threads", f"expected an integer from 1 to 256, got {threads!r:.40}")
    _check_normaliser(meta, meta_path, len(FEATURE_NAMES))
    _check_calibrator(meta, meta_path)
    _check_spans(meta, meta_path)
    sha = meta.get("weights_sha256")
    if not isinstance(sha, str) or len(sha) != 64:
        raise _bad(meta_path, "weights_sha256", "expected a 64-character hex digest")


def load_bundle(path: str | Path, expected_window: int | None = None) -> ModelBundle:
    """Load a bundle directory (or its ``final_model.pt``) after checking it fits this code.

    Refuses with one-line BundleError naming the file (and the field): missing files, bundle.json
    that is not valid JSON or has a missing/invalid field (see :func:`validate_meta`), another
    format version, another feature set (names or definitions hash), a window that differs from
    the model spec or from ``expected_window``, weights whose sha256 differs from the one recorded
    (tampered or truncated) or that do not load into the network bundle.json describes.
    """
    p = Path(path)
    if p.is_dir() and p.suffix == ".pt":
        raise BundleError(f"{p}: is a folder, expected the weights file {WEIGHTS_FILE} (or give the bundle folder)")
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
    if not weights.is_file():
        raise BundleError(f"{weights}: is not a file (a folder?); the bundle is damaged")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        # ValueError covers json.JSONDecodeError and UnicodeDecodeError
        raise BundleError(f"{meta_path}: unreadable, not valid JSON ({exc.__class__.__name__})") from None
    validate_meta(meta, meta_path)
    window = meta["window"]
    if expected_window is not None and int(expected_window) != window:
        raise BundleError(f"{meta_path}: bundle window {window} differs from the expected {expected_window}")
    try:
        digest = sha256_file(weights)
    except OSError as exc:
        raise BundleError(f"{weights}: cannot read ({exc.strerror or exc.__class__.__name__})") from None
    if digest != meta["weights_sha256"]:
        raise BundleError(f"{weights}: sha256 differs from bundle.json (tampered or truncated weights)")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise BundleError(f"{weights}: cannot load weights ({exc.__class__.__name__})") from None
    if not isinstance(state, dict):
        raise BundleError(f"{weights}: not a state_dict")
    try:
        return ModelBundle(meta, state, path=directory)
    except BundleError:
        raise
    except Exception as exc:  # anything validate_meta did not foresee still ends as one line
        first = (str(exc).splitlines() or [""])[0][:160]
        raise BundleError(f"{meta_path}: cannot build the model ({exc.__class__.__name__}: {first})") from None
