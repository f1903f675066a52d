"""torch -> ONNX: the graph the scorer runs, exported from the final weights (training side only).

:func:`export_onnx` builds the network from the bundle's model spec, loads the weights and
exports it with torch's dynamo exporter (``torch.onnx.export(dynamo=True)``, opset 18,
``optimize=True``), with a dynamic batch axis, input ``windows (B, window, F)`` float32 and
output ``logit (B,)``.

Why the dynamo exporter and not the legacy TorchScript one: the legacy graph keeps every
causal pad as a ConstantOfShape/Concat/Reshape/Slice/Transpose/Cast/Pad chain (well over a
hundred nodes for the default network); the dynamo exporter's optimiser folds each pad into
its Conv's asymmetric ``pads`` (32 nodes: Transpose, 10 Conv, ReLU/Add, ReduceMean, 2 Gemm,
Squeeze), and the legacy exporter is deprecated in torch 2.9+. Both gave the same logits (within
3e-8 of torch) and byte-identical files on repeated exports of the same weights, so the
file's sha256 is a stable identity of the weights it came from.

Every export is checked before it is returned: ONNX Runtime's logits of fixed pseudo-random
windows must match torch's within :data:`EXPORT_TOLERANCE`, else ExportError. Nothing on the
trading path imports this module (it imports torch): a bundle from before ONNX gets its
``model.onnx`` once from ``nts bundle export`` (:func:`export_into_bundle`).

Sequence mode (``model.context: sequence``): the graph maps stretches ``windows (B, T, F)``
to ``logit (B, T)`` with dynamic batch AND time axes (checked the same way on stretches of
``3 * input_bars`` rows). Trading scores sequence bundles with the numpy engine
(:mod:`models.sequence_scorer`, faster here); the graph is the exported reference.

The graph's metadata (key ``nts.model``) records the model spec, window and feature count it
was exported from; loading refuses a bundle.json that describes another network.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import torch

from core.config import ModelConfig
from core.errors import NtsError
from core.files import atomic_path, write_text_atomic
from models.bundle import META_FILE, read_meta, resolve_bundle_dir, sha256_bytes
from models.scorer import INPUT_NAME, ONNX_FILE, OUTPUT_NAME, SPEC_KEY, OnnxScorer, model_signature
from models.sequence_scorer import input_bars
from models.tcn import build_tcn

OPSET = 18
EXPORTER = f"torch.onnx dynamo, opset {OPSET}"
# ORT vs torch, float32 logits of the check windows (the bar is 1e-5 on real candles)
EXPORT_TOLERANCE = 1e-5
# node metadata the exporter fills with "File \"/abs/path/models/tcn.py\", line ..."
STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"
_CHECK_WINDOWS = 64


class ExportError(NtsError):
    """The network could not be exported, or the exported graph does not score like torch."""


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter warns about the torchvision ops it skips and about deprecations through
    ``warnings`` and torch's loggers: noise for a user of ``nts train``."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def reference_network(model_spec, state_dict: dict, n_features: int) -> torch.nn.Module:
    """The torch network (eval mode) of a model spec and its weights: the reference scorer."""
    net = build_tcn(model_spec, n_features=n_features)
    net.load_state_dict(state_dict, strict=True)
    return net.eval()


def check_windows(window: int, n_features: int) -> np.ndarray:
    """Fixed pseudo-random normalised windows the export check scores in both engines."""
    return np.random.default_rng(20240601).standard_normal((_CHECK_WINDOWS, window, n_features)).astype(np.float32)


def _is_sequence(model_spec) -> bool:
    get = model_spec.get if isinstance(model_spec, dict) else (lambda k, d=None: getattr(model_spec, k, d))
    return get("context", "window") == "sequence"


def export_onnx(model_spec, state_dict: dict, window: int, n_features: int) -> bytes:
    """The serialised ONNX graph of the network with these weights (checked against torch)."""
    net = reference_network(model_spec, state_dict, n_features)
    sequence = _is_sequence(model_spec)
    steps = 3 * input_bars(model_spec) if sequence else window
    example = (torch.zeros(2, steps, n_features),)
    axes = {0: torch.export.Dim("batch")}
    if sequence:
        axes[1] = torch.export.Dim("time", min=2)
    with tempfile.TemporaryDirectory(prefix="nts-onnx-") as tmp, _quiet_exporter(), torch.no_grad():
        path = os.path.join(tmp, "model.onnx")
        try:
            program = torch.onnx.export(net, example, dynamo=True, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], opset_version=OPSET, optimize=True,
                                        dynamic_shapes=(axes,), verbose=False)
            program.save(path, external_data=False)
        except Exception as exc:  # the exporter raises many types
            first = (str(exc).splitlines() or [""])[0][:160]
            raise ExportError(f"ONNX export failed ({exc.__class__.__name__}: {first})") from None
        graph = onnx.load(path)
    _drop_source_locations(graph.graph)
    # record the network the graph computes (checked against bundle.json on load)
    entry = graph.metadata_props.add()
    entry.key, entry.value = SPEC_KEY, model_signature(model_spec, window, n_features)
    data = graph.SerializeToString()
    x = check_windows(steps, n_features)
    with torch.inference_mode():
        ref = net(torch.from_numpy(x)).double().numpy()
    scorer = OnnxScorer(data)
    got = scorer.session.run(None, {INPUT_NAME: x})[0].astype(np.float64) if sequence else scorer.logits(x)
    diff = float(np.max(np.abs(got - ref)))
    if not diff <= EXPORT_TOLERANCE:
        raise ExportError(f"the exported graph's logits differ from torch's by {diff:.3g} "
                          f"(tolerance {EXPORT_TOLERANCE:g})")
    return data


def _drop_source_locations(graph: onnx.GraphProto) -> None:
    """Remove the exporter's per-node Python stack traces: they name the absolute path of the
    checkout that trained the model (a local path in every shared bundle, and bytes that
    differ between two checkouts of the same code). The other node metadata stays."""
    for node in graph.node:
        keep = [m for m in node.metadata_props if m.key != STACK_TRACE_KEY]
        if len(keep) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(keep)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _drop_source_locations(sub)


def export_bytes_for_bundle(meta: dict, weights: Path) -> bytes:
    """Export the graph of an existing bundle (its bundle.json ``meta`` and weights file)."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    spec = ModelConfig.model_validate(meta["model"])
    return export_onnx(spec, state, int(meta["window"]), len(meta["feature_names"]))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (core.files.atomic_path)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def serialise_weights(state_dict: dict) -> bytes:
    """``torch.save`` bytes of a state_dict (detached CPU copies)."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().clone() for k, v in state_dict.items()}, buf)
    return buf.getvalue()


def export_into_bundle(path: str | Path, overwrite: bool = False) -> tuple[Path, str, bool]:
    """Give an existing bundle its ``model.onnx`` (``nts bundle export``): checked as on load
    (bundle.json fields, weights sha256), exported and checked against torch, written atomically,
    then bundle.json rewritten atomically with ``onnx_sha256`` and the exporter. Returns (graph
    path, its sha256, whether it was written). A bundle that already records a graph is left
    alone; a ``model.onnx`` that bundle.json does not record is replaced only with ``overwrite``."""
    directory, weights = resolve_bundle_dir(path)
    meta = read_meta(directory, weights)
    target = directory / ONNX_FILE
    if meta.get("onnx_sha256"):
        return target, meta["onnx_sha256"], False
    if target.exists() and not overwrite:
        raise ExportError(f"{target}: exists but bundle.json does not record it; pass --overwrite to replace it")
    data = export_bytes_for_bundle(meta, weights)
    write_bytes_atomic(target, data)
    meta = {**meta, "onnx_sha256": sha256_bytes(data),
            "scorer": {"engine": "onnxruntime", "exporter": EXPORTER, "exported_after_training": True}}
    write_text_atomic(directory / META_FILE, json.dumps(meta, indent=2, allow_nan=True))
    return target, meta["onnx_sha256"], True
