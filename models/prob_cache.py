"""Score once: calibrated probabilities cached per (bundle, bars), so a second backtest or any
sweep of the same bundle and data skips the network.

Key (all of it must match; anything else is a miss):

* the bundle's scoring identity: sha256 of the weights file and of the ONNX graph that scores
  them (the scorer: a P cached by another engine or graph is never mixed in) plus the parts of
  bundle.json that shape a probability (feature names and config, window, timeframe,
  normaliser, calibrator);
* the bars: sha256 over the bar open times and the float64 open/high/low/close/volume columns
  of exactly the frame scored (so a span and its warm-up are part of it: a different start
  is different data);
* the first and last bar time and the bar count, kept readable in the entry.

An entry is one ``.npz`` file in the cache folder (``NTS_CACHE_DIR``, default ``cache/`` in
the working folder, git-ignored), written atomically. An entry that cannot be read, whose
stored key differs, whose arrays have the wrong length or dtype, or whose checksum over the
arrays does not match is ignored and rebuilt -- never trusted.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.files import atomic_path

log = logging.getLogger("nts.cache")

CACHE_FORMAT = 2  # 2: the scorer (ONNX graph sha256) is part of the key; torch-scored entries miss
DEFAULT_DIR = "cache"


def default_cache_dir() -> Path:
    """``NTS_CACHE_DIR`` or ``cache/`` in the current folder."""
    return Path(os.environ.get("NTS_CACHE_DIR", DEFAULT_DIR))


def bundle_identity(bundle: Any) -> str:
    """sha256 over everything of a bundle that determines its probabilities."""
    meta = bundle.meta
    payload = {
        "weights": meta.get("weights_sha256"),
        "scorer": getattr(bundle, "scorer_id", None),
        "features": [list(bundle.feature_names), meta.get("feature_config"), meta.get("feature_definitions_hash")],
        "window": bundle.window, "timeframe": bundle.timeframe,
        "normaliser": meta.get("normaliser"), "calibrator": meta.get("calibrator"),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def frame_sha256(frame: pd.DataFrame) -> str:
    """sha256 of the bar times and OHLCV columns of ``frame`` (float64, C order)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(pd.DatetimeIndex(frame.index).as_unit("ns").asi8).tobytes())
    for col in ("open", "high", "low", "close", "volume"):
        h.update(np.ascontiguousarray(frame[col].to_numpy(dtype=np.float64)).tobytes())
    return h.hexdigest()


def _key(bundle: Any, frame: pd.DataFrame) -> dict[str, Any]:
    idx = frame.index
    return {
        "format": CACHE_FORMAT,
        "bundle": bundle_identity(bundle),
        "data_sha256": frame_sha256(frame),
        "first": str(idx[0]) if len(idx) else None,
        "last": str(idx[-1]) if len(idx) else None,
        "bars": int(len(frame)),
        "history_bars": int(getattr(bundle, "history_bars", 0)),
    }


def _arrays_sha(logit: np.ndarray, prob: np.ndarray) -> str:
    return hashlib.sha256(logit.tobytes() + prob.tobytes()).hexdigest()


def _entry_path(cache_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:40]
    return cache_dir / f"prob-{digest}.npz"


def _read(path: Path, key: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached arrays, or None when the entry is missing, unreadable or not this key's."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            stored = json.loads(str(npz["key"]))
            logit, prob = npz["logit"], npz["prob"]
            checksum = str(npz["sha256"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, EOFError) as exc:
        log.warning("probability cache entry %s unreadable (%s): rebuilding", path, exc.__class__.__name__)
        return None
    n = key["bars"]
    ok = (stored == key and logit.dtype == np.float64 and prob.dtype == np.float64
          and logit.shape == (n,) and prob.shape == (n,) and checksum == _arrays_sha(logit, prob))
    if not ok:
        log.warning("probability cache entry %s does not match its key or checksum: rebuilding", path)
        return None
    return logit, prob


def _write(path: Path, key: dict[str, Any], logit: np.ndarray, prob: np.ndarray) -> None:
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, key=np.array(json.dumps(key, sort_keys=True)), logit=logit, prob=prob,
                         sha256=np.array(_arrays_sha(logit, prob)))
    except OSError as exc:  # a cache that cannot be written only costs time, never the run
        log.warning("probability cache entry %s not written (%s)", path, exc)


def _score(model: Any, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(logit, P) per bar: a schedule or a rolling-calibrated bundle scores per bar time
    (``score_frame``); a plain bundle is logits then its calibrator."""
    if hasattr(model, "score_frame"):
        return model.score_frame(frame)
    logit = model.predict_logit(frame).to_numpy()
    return logit, model.calibrate(logit)


def cached_scores(bundle: Any, frame: pd.DataFrame, cache_dir: str | Path | None = None
                  ) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(logit, prob, hit)`` for every bar of ``frame`` (NaN where no full window exists).

    With ``cache_dir`` None the network always runs (no cache). Otherwise a valid entry is
    returned as it is (``hit`` True) and a missing or invalid one is rebuilt and stored.
    """
    if cache_dir is None:
        logit, prob = _score(bundle, frame)
        return logit, prob, False
    cache_dir = Path(cache_dir)
    key = _key(bundle, frame)
    path = _entry_path(cache_dir, key)
    found = _read(path, key)
    if found is not None:
        return found[0], found[1], True
    logit, prob = _score(bundle, frame)
    logit = np.ascontiguousarray(logit, dtype=np.float64)
    prob = np.ascontiguousarray(prob, dtype=np.float64)
    _write(path, key, logit, prob)
    return logit, prob, False
