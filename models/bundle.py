"""The model bundle: the only way to score bars with a trained TCN. No torch here.

A bundle is a directory written by ``nts train``::

    model.onnx       the network as an ONNX graph (exported from the final weights at the end
                     of training, checked against torch): what every engine scores with
    final_model.pt   the same weights as a torch state_dict (training, explain, re-export)
    bundle.json      format version, features (names + definitions hash + config), window,
                     model spec, normalisation stats, calibrator, label config, spans, data
                     sha256, config, seed, package versions, metrics, learning curves,
                     sha256 of final_model.pt and of model.onnx
    reliability.png, learning_curves.png, report.html

Scoring has one code path: raw features -> :class:`~models.dataset.Normaliser` -> windows ->
:class:`models.scorer.OnnxScorer` (ONNX Runtime) -> calibrator. ``predict_proba`` (batch, fixed
chunks on ``bundle.threads`` worker threads) and ``score_features`` / ``score_window`` (one
window; ``score_window`` keeps a :class:`models.streaming.BarScorer` and feeds it only the bars
it has not seen) go through it, so they agree to float32 rounding, and the logits are the same
for any thread count.

A bundle written before ONNX (no ``onnx_sha256`` in bundle.json) is refused with one line that
names the fix: ``nts bundle export PATH`` exports its weights once into the bundle (that
command imports torch; loading and scoring never do).
"""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import ValidationError

from core.config import FeatureConfig, LabelConfig, ModelConfig
from core.errors import BundleError, ConfigError, DataError, NtsError
from core.ohlcv import COLUMNS, checked_bars, segment_ids
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
from models.scorer import CHUNK, INPUT_NAME, ONNX_FILE, OnnxScorer, model_signature
from models.sequence_scorer import WEIGHTS_FILE as SEQUENCE_WEIGHTS_FILE
from models.sequence_scorer import SequenceNet, SequenceStep, input_bars, weights_from_bytes
from models.streaming import BarScorer

FORMAT_VERSION = 1
WEIGHTS_FILE = "final_model.pt"
META_FILE = "bundle.json"
SCORE_BATCH = CHUNK  # the fixed chunk of batch scoring (name kept for callers)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def _ts(value) -> pd.Timestamp:
    return pd.Timestamp(value).tz_convert("UTC") if pd.Timestamp(value).tz else pd.Timestamp(value, tz="UTC")


class ModelBundle:
    """A loaded bundle: the ONNX scorer, normaliser, calibrator and metadata.

    ``onnx`` is the serialised graph (bytes) of the network; ``threads`` (settable) is the
    number of worker threads of batch scoring and does not change any number."""

    def __init__(self, meta: dict, onnx: bytes, path: Path | None = None,
                 sequence_weights: bytes | None = None) -> None:
        self.meta = meta
        self.path = path
        self.feature_names = tuple(meta["feature_names"])
        self.window = int(meta["window"])
        self.timeframe = str(meta["timeframe"])
        self.feature_cfg = FeatureConfig(**meta["feature_config"])
        self.label_cfg = LabelConfig(**meta["label_config"])
        self.normaliser = Normaliser.from_dict(meta["normaliser"])
        self.calibrator = Calibrator.from_dict(meta["calibrator"])
        spec = ModelConfig.model_validate(meta["model"])
        # window: one window per bar; sequence: one causal pass per stretch (models.sequence_scorer)
        self.context = spec.context
        self.sequence_net: SequenceNet | None = None
        # input_bars: the feature rows one logit depends on (window + receptive field - 1 in sequence mode)
        self.input_bars = input_bars(spec) if self.context == "sequence" else self.window
        if self.context == "sequence":
            if sequence_weights is None:
                raise BundleError(f"{path or 'bundle'}: a sequence-mode bundle needs {SEQUENCE_WEIGHTS_FILE}")
            where_w = f"{path / SEQUENCE_WEIGHTS_FILE}" if path else SEQUENCE_WEIGHTS_FILE
            self.sequence_net = SequenceNet(weights_from_bytes(sequence_weights, where_w), spec, where_w)
        # min_bars: the least history that gives a probability at all (features finite over one
        # input span); history_bars: the history after which P no longer depends on where the
        # history starts (every engine feeds this much warm-up: one warm-up everywhere).
        self.min_bars = warmup_bars(self.feature_cfg) + self.input_bars - 1
        self.history_bars = max(self.min_bars, memory_bars(self.feature_cfg) + self.input_bars)
        self.scorer_id = sha256_bytes(onnx + (sequence_weights or b""))
        where = f"{path / ONNX_FILE}" if path else ONNX_FILE
        self.scorer = OnnxScorer(onnx, threads=int(meta.get("threads", 1)), where=where)
        self._check_graph(where)
        self._window_lock = threading.Lock()
        self._window_stream: BarScorer | None = None
        self._window_seen: tuple[np.ndarray, np.ndarray] | None = None

    def _check_graph(self, where: str) -> None:
        """The graph must be the network bundle.json describes (its recorded signature), take this
        bundle's (window, features) windows and give one logit each."""
        expected = model_signature(ModelConfig.model_validate(self.meta["model"]), self.window,
                                   len(self.feature_names))
        if self.scorer.signature != expected:
            raise BundleError(f"{where}: the model in bundle.json does not fit the graph (it was exported from "
                              f"another network spec, window or feature count)")
        if self.context == "sequence":  # the graph maps (B, T, F) stretches to (B, T) logits
            x = np.zeros((1, self.input_bars, len(self.feature_names)), dtype=np.float32)
            try:
                shape = self.scorer.session.run(None, {self.scorer.session.get_inputs()[0].name: x})[0].shape
            except Exception as exc:
                first = (str(exc).splitlines() or [""])[0][:160]
                raise BundleError(f"{where}: the graph does not score a stretch ({exc.__class__.__name__}: "
                                  f"{first})") from None
            if tuple(shape) != (1, self.input_bars):
                raise BundleError(f"{where}: the graph gives {tuple(shape)} logits for a "
                                  f"(1, {self.input_bars}) stretch")
            return
        try:
            out = self.scorer.logits(np.zeros((2, self.window, len(self.feature_names)), dtype=np.float32))
        except NtsError:
            raise
        except Exception as exc:
            first = (str(exc).splitlines() or [""])[0][:160]
            raise BundleError(f"{where}: the graph does not score ({self.window}, {len(self.feature_names)}) "
                              f"windows ({exc.__class__.__name__}: {first})") from None
        if out.shape != (2,):
            raise BundleError(f"{where}: the graph gives {out.shape} logits for 2 windows")

    @property
    def threads(self) -> int:
        """Worker threads of batch scoring (settable; the logits are the same for any count)."""
        return self.scorer.threads

    @threads.setter
    def threads(self, n: int) -> None:
        self.scorer.threads = n

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

    def logits_for_windows(self, windows: np.ndarray) -> np.ndarray:
        """Logits (float64) of normalised ``(B, input_bars, F)`` windows: the one network path
        (in sequence mode, the last logit of one pass over each window)."""
        if self.sequence_net is not None:  # (B, T) logits of each window's pass; the last step is the bar's
            x = np.asarray(windows)
            out = np.empty(len(x), dtype=np.float64)
            for i in range(0, len(x), CHUNK):
                chunk = np.ascontiguousarray(x[i:i + CHUNK], dtype=np.float32)
                out[i:i + CHUNK] = self.scorer.session.run(None, {INPUT_NAME: chunk})[0][:, -1]
            return out
        return self.scorer.logits(windows)

    def _sequence_pass(self, rows: np.ndarray) -> np.ndarray:
        """Sequence mode's batch engine: logits of one piece of a stretch ``(T, F)`` through the
        exported dynamic-time graph on ONNX Runtime (chosen over the numpy pass for batches: see
        models.sequence_scorer)."""
        x = np.ascontiguousarray(rows, dtype=np.float32)[None]
        return np.asarray(self.scorer.session.run(None, {INPUT_NAME: x})[0][0], dtype=np.float64)

    def _features(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        check_frame(frame, "bundle input")
        feats = feature_matrix(frame, self.feature_cfg, self.timeframe)
        # a bar is scored iff its input_bars rows are finite and in one stretch (both modes)
        valid = valid_window_mask(feats, segment_ids(frame.index, self.timeframe), self.input_bars)
        return feats, valid

    def logits_for_features(self, feats: np.ndarray, ends: np.ndarray, seg: np.ndarray | None = None) -> np.ndarray:
        """Logits of the bars at positions ``ends`` of a raw feature matrix (batched). Sequence
        mode: one causal pass per stretch (``seg``: segment ids, splitting stretches at gaps)."""
        if self.sequence_net is not None:
            return self.sequence_net.logits(self.normaliser.transform(feats), ends, seg, run=self._sequence_pass,
                                            threads=self.threads)
        view = window_view(self.normaliser.transform(feats), self.window)
        ends = np.asarray(ends, dtype=np.int64)
        out = np.empty(len(ends), dtype=np.float64)
        # gather one slab of chunks at a time: never a copy of every window at once
        slab = CHUNK * 64
        for i in range(0, len(ends), slab):
            out[i:i + slab] = self.scorer.logits(view[ends[i:i + slab] - self.window + 1])
        return out

    def predict_logit(self, frame: pd.DataFrame) -> pd.Series:
        """Raw network logit for every bar with a full valid window (NaN elsewhere); index = frame.index."""
        feats, valid = self._features(frame)
        out = np.full(len(frame), np.nan)
        ends = np.flatnonzero(valid)
        if len(ends):
            seg = segment_ids(frame.index, self.timeframe) if self.sequence_net is not None else None
            out[ends] = self.logits_for_features(feats, ends, seg)
        return pd.Series(out, index=frame.index, name="logit")

    def predict_proba(self, frame: pd.DataFrame) -> pd.Series:
        """Calibrated P(profit barrier first) for every bar with a full valid window, NaN elsewhere."""
        logit = self.predict_logit(frame)
        return pd.Series(self.calibrate(logit.to_numpy()), index=frame.index, name="prob")

    def score_features(self, window: np.ndarray) -> tuple[float, float]:
        """(logit, calibrated P) for one RAW ``(input_bars, 12)`` feature array (e.g. from
        ``StreamingFeatures``; input_bars = window in window mode); ``(nan, nan)`` if any value
        is not finite."""
        arr = np.asarray(window, dtype=np.float64)
        if arr.shape != (self.input_bars, len(self.feature_names)):
            raise DataError(f"score_features: expected a ({self.input_bars}, {len(self.feature_names)}) array, "
                            f"got {arr.shape}")
        if not np.isfinite(arr).all():
            return float("nan"), float("nan")
        if self.sequence_net is not None:
            logit = float(self.sequence_net.full_pass(self.normaliser.transform(arr))[-1])
        else:
            logit = self.scorer.logit_one(self.normaliser.transform(arr))
        return logit, float(self.calibrate(np.array([logit]))[0])

    def stream(self) -> BarScorer:
        """A new incremental scorer of one bar stream (paper, live, the server)."""
        return BarScorer(self)

    def sequence_stepper(self) -> SequenceStep | None:
        """Sequence mode: a fresh one-step state of the network (:class:`BarScorer` feeds it
        normalised rows); None in window mode."""
        return None if self.sequence_net is None else self.sequence_net.stepper()

    def normalise_row(self, row: np.ndarray) -> np.ndarray:
        """One raw feature row normalised like every batch row (float32)."""
        return self.normaliser.transform(np.asarray(row, dtype=np.float64)[None])[0]

    def score_window(self, bars: pd.DataFrame) -> float:
        """Calibrated P of the LAST bar of ``bars`` (trailing candles). NaN when there is not
        enough history or the last window crosses a gap.

        Incremental: the bundle keeps one :class:`BarScorer`. When ``bars`` holds more than
        :attr:`history_bars` bars and all but its last bar end with the :attr:`history_bars`
        bars the stream consumed last time (the server scoring each new bar), only the new bar
        is fed. Otherwise the stream is primed from the last :attr:`history_bars` bars (older
        bars cannot move P; see ``history_bars``). Both give the same P to ~1e-12."""
        missing = [c for c in COLUMNS if not isinstance(bars, pd.DataFrame) or c not in bars.columns]
        if missing or not isinstance(bars.index, pd.DatetimeIndex):
            check_frame(bars, "score_window bars")  # raises the one-line DataError
        h = self.history_bars
        tail = bars.iloc[-(h + 1):]
        ts = tail.index.as_unit("ns").asi8 if tail.index.tz is not None else \
            tail.index.tz_localize("UTC").as_unit("ns").asi8
        vals = tail[list(COLUMNS)].to_numpy(dtype=np.float64)
        with self._window_lock:
            seen = self._window_seen
            stream = self._window_stream
            if (stream is not None and seen is not None and len(tail) == h + 1
                    and np.array_equal(ts[:-1], seen[0]) and np.array_equal(vals[:-1], seen[1])):
                o, hi, lo, c, v = vals[-1].tolist()
                prob = stream.update(tail.index[-1], o, hi, lo, c, v)[1]
            else:
                checked_bars(bars, COLUMNS, "score_window bars")
                stream = self._window_stream = BarScorer(self)
                self._window_seen = None  # until the prime succeeded
                prob = stream.prime(tail.iloc[-h:])[1]
            self._window_seen = (ts[-h:], vals[-h:])
        if len(bars) < self.min_bars:
            return float("nan")
        return float(prob)


# ------------------------------------------------------------------- save / load

def bundle_files(directory: Path, meta: dict, weights: bytes, onnx: bytes,
                 sequence_weights: bytes | None = None) -> dict:
    """Write final_model.pt, model.onnx (and a sequence-mode bundle's sequence_weights.npz) and
    bundle.json (with their sha256) into ``directory``."""
    directory = Path(directory)
    (directory / WEIGHTS_FILE).write_bytes(weights)
    (directory / ONNX_FILE).write_bytes(onnx)
    meta = dict(meta)
    meta["weights_sha256"] = sha256_bytes(weights)
    meta["onnx_sha256"] = sha256_bytes(onnx)
    if sequence_weights is not None:
        (directory / SEQUENCE_WEIGHTS_FILE).write_bytes(sequence_weights)
        meta["sequence_weights_sha256"] = sha256_bytes(sequence_weights)
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, allow_nan=True))
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
    timestamp pairs, training and test present); the weights' and the ONNX graph's sha256 fields
    (the latter absent in bundles from before ONNX).
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
    # the same range as training.threads and the scorer's worker pool
    if not _is_int(threads) or not 1 <= threads <= 256:
        raise _bad(meta_path, "threads", f"expected an integer from 1 to 256, got {threads!r:.40}")
    _check_normaliser(meta, meta_path, len(FEATURE_NAMES))
    _check_calibrator(meta, meta_path)
    _check_spans(meta, meta_path)
    sequence = mcfg.context == "sequence"
    for field, required in (("weights_sha256", True), ("onnx_sha256", False),
                            ("sequence_weights_sha256", sequence)):
        sha = meta.get(field)
        if sha is None and not required:
            continue  # a bundle from before ONNX (refused on load with the fix, see _read_onnx), or a window-mode bundle
        if not isinstance(sha, str) or len(sha) != 64:
            raise _bad(meta_path, field, "expected a 64-character hex digest")


def _read_sequence_weights(meta: dict, directory: Path) -> bytes | None:
    """A sequence-mode bundle's sequence_weights.npz checked against bundle.json (None in window mode)."""
    if meta.get("model", {}).get("context", "window") != "sequence":
        return None
    return _verified_bytes(directory / SEQUENCE_WEIGHTS_FILE, meta["sequence_weights_sha256"], "weights")


def _read_onnx(meta: dict, directory: Path) -> bytes:
    """model.onnx checked against bundle.json's sha256."""
    if meta.get("onnx_sha256") is None:
        raise BundleError(f"{directory}: a bundle from before ONNX (bundle.json records no model.onnx): run "
                          f"'nts bundle export {directory}' once to add it")
    path = directory / ONNX_FILE
    if not path.is_file():
        raise BundleError(f"{directory}: {ONNX_FILE} is missing (bundle.json records its sha256)")
    return _verified_bytes(path, meta["onnx_sha256"], "graph")


def _verified_bytes(path: Path, sha256: str, what: str) -> bytes:
    """The bytes of ``path``, refused (one line naming the file) unless it can be read and its
    sha256 is the one bundle.json records; ``what`` names the content in the refusal."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot read ({exc.strerror or exc.__class__.__name__})") from None
    if sha256_bytes(data) != sha256:
        raise BundleError(f"{path}: sha256 differs from bundle.json (tampered or truncated {what})")
    return data


def resolve_bundle_dir(path: str | Path) -> tuple[Path, Path]:
    """(bundle directory, weights file) of a bundle directory or its ``final_model.pt``."""
    p = Path(path)
    if p.is_dir() and p.suffix == ".pt":
        raise BundleError(f"{p}: is a folder, expected the weights file {WEIGHTS_FILE} (or give the bundle folder)")
    if p.is_dir():
        directory = p
    elif p.name == WEIGHTS_FILE or p.suffix == ".pt":
        directory = p.parent
    else:
        raise BundleError(f"{p}: not a bundle directory or {WEIGHTS_FILE}")
    return directory, (p if p.suffix == ".pt" else directory / WEIGHTS_FILE)


def read_meta(directory: Path, weights: Path, expected_window: int | None = None) -> dict:
    """bundle.json validated (:func:`validate_meta`), with the weights file's sha256 checked."""
    meta_path = directory / META_FILE
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
    _verified_bytes(weights, meta["weights_sha256"], "weights")
    return meta


def load_bundle(path: str | Path, expected_window: int | None = None) -> ModelBundle:
    """Load a bundle directory (or its ``final_model.pt``) after checking it fits this code.

    Refuses with one-line BundleError naming the file (and the field): missing files, bundle.json
    that is not valid JSON or has a missing/invalid field (see :func:`validate_meta`), another
    format version, another feature set (names or definitions hash), a window that differs from
    the model spec or from ``expected_window``, weights or an ONNX graph whose sha256 differs from
    the one recorded (tampered or truncated), a graph ONNX Runtime cannot load or that does not
    score the bundle's windows, a bundle from before ONNX (no ``onnx_sha256``: run
    ``nts bundle export``).
    """
    directory, weights = resolve_bundle_dir(path)
    meta = read_meta(directory, weights, expected_window)
    meta_path = directory / META_FILE
    onnx = _read_onnx(meta, directory)
    sequence_weights = _read_sequence_weights(meta, directory)
    try:
        return ModelBundle(meta, onnx, path=directory, sequence_weights=sequence_weights)
    except BundleError:
        raise
    except Exception as exc:  # anything validate_meta did not foresee still ends as one line
        first = (str(exc).splitlines() or [""])[0][:160]
        raise BundleError(f"{meta_path}: cannot build the model ({exc.__class__.__name__}: {first})") from None
