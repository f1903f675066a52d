"""The one scorer: the bundle's network as an ONNX graph run by ONNX Runtime (no torch).

Every engine scores through :class:`OnnxScorer`: batch (backtest, sweep, the training
report's metrics) through :meth:`OnnxScorer.logits`, one window at a time (paper, live,
the server) through :meth:`OnnxScorer.logit_one`. torch trains the network and stays the
reference: ``models.onnx_export`` writes the graph from the final weights and checks it
against torch; the test suite holds ORT vs torch logits within 1e-5 on real candles.

Determinism. One ``InferenceSession`` with ONE intra-op thread, one inter-op thread and
sequential execution; a batch is cut into fixed chunks of :data:`CHUNK` windows and
``threads`` Python worker threads run whole chunks concurrently (``InferenceSession.run``
is thread-safe and releases the GIL). A window's logit therefore depends only on its chunk,
never on the thread count: any ``threads`` gives bit-identical logits (tested). A single
window is its own chunk of one; it agrees with the batch to float32 rounding (~1e-7).

Why not intra-op threads: measured on the 2-core machine, ORT's intra-op pool was slower
on these small convolutions than one thread per chunk, and on a loaded machine its
spinning threads collapse when a core is taken (the same finding as torch's OpenMP).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from core.errors import BundleError
from core.worker_pool import run_each

ONNX_FILE = "model.onnx"
INPUT_NAME = "windows"
OUTPUT_NAME = "logit"
# Windows per chunk: the batch boundaries every thread count shares. 128 windows keep each
# layer's activations (128 x 64 ch x 64 steps x 4 B = 2 MiB) in cache; measured fastest of
# 64/128/256/512 with one thread per chunk.
CHUNK = 128
MAX_THREADS = 256
# Key of the graph's metadata that records the network it was exported from (checked on load
# against bundle.json's model spec: a bundle.json edited to describe another network is refused).
SPEC_KEY = "nts.model"


def model_signature(model_spec: Any, window: int, n_features: int) -> str:
    """Canonical JSON of the network a graph computes: model spec (a ModelConfig or its dict),
    window and feature count."""
    spec = model_spec.model_dump(mode="json") if hasattr(model_spec, "model_dump") else dict(model_spec)
    if spec.get("context") == "window":
        spec.pop("context")  # graphs exported before sequence mode recorded no context
    return json.dumps({"model": spec, "window": int(window), "n_features": int(n_features)}, sort_keys=True)


def session_options() -> ort.SessionOptions:
    """One intra-op thread, one inter-op thread, sequential execution, all graph optimisations,
    and no spinning (an idle worker must not steal a core from backtrader or the journal)."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3  # errors only: ORT's warnings are not the user's business
    return so


class OnnxScorer:
    """Logits of normalised float32 windows ``(B, window, F)`` through ONNX Runtime.

    ``model`` is the serialised ONNX graph (bytes) or the path of a ``.onnx`` file; ``threads``
    is the number of worker threads of a batch (settable later, see :attr:`threads`).
    BundleError (one line) when ONNX Runtime cannot load the graph or its input/output are not
    ``windows`` -> ``logit``.
    """

    def __init__(self, model: bytes | str | Path, threads: int = 1, where: str = "model.onnx") -> None:
        src = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(src, session_options(), providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            first = (str(exc).splitlines() or [""])[0][:160]
            raise BundleError(f"{where}: ONNX Runtime cannot load the graph ({exc.__class__.__name__}: {first})") \
                from None
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
            raise BundleError(f"{where}: graph maps {inputs} -> {outputs}, expected ['{INPUT_NAME}'] -> "
                              f"['{OUTPUT_NAME}']")
        self.signature = self.session.get_modelmeta().custom_metadata_map.get(SPEC_KEY)
        self._outputs = [OUTPUT_NAME]  # naming the one output skips ORT's per-call output listing
        self._threads = 1
        self.threads = threads

    @property
    def threads(self) -> int:
        """Worker threads of a batch (1..256); the logits do not depend on it."""
        return self._threads

    @threads.setter
    def threads(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= int(n) <= MAX_THREADS:
            raise ValueError(f"scoring threads must be an integer from 1 to {MAX_THREADS}, got {n!r}")
        self._threads = int(n)

    def _run(self, windows: np.ndarray) -> np.ndarray:
        out = self.session.run(self._outputs, {INPUT_NAME: windows})[0]
        return np.asarray(out, dtype=np.float64).reshape(len(windows))

    def logits(self, windows: np.ndarray) -> np.ndarray:
        """Logits (float64) of ``(B, window, F)`` windows, in fixed chunks of :data:`CHUNK`."""
        x = np.asarray(windows)
        out = np.empty(len(x), dtype=np.float64)
        starts = range(0, len(x), CHUNK)

        def score(i: int) -> None:
            out[i:i + CHUNK] = self._run(np.ascontiguousarray(x[i:i + CHUNK], dtype=np.float32))

        run_each(score, starts, self._threads, "nts-score")
        return out

    def logit_one(self, window: np.ndarray) -> float:
        """Logit of one normalised ``(window, F)`` array (no pool: the streaming path)."""
        x = np.ascontiguousarray(window, dtype=np.float32)[None]
        return float(self.session.run(self._outputs, {INPUT_NAME: x})[0].reshape(-1)[0])
