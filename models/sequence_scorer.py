"""Sequence mode scoring without torch: the causal pass over a whole stretch, and one step at a time.

A sequence-mode bundle (``model.context: sequence``, trained by :mod:`models.sequence_train`)
runs the TCN's residual blocks causally over each contiguous stretch of finite feature rows
and gives bar t the head applied to the mean of the stack's outputs ``t - window + 1 .. t``.

**Which bars get a score (the one rule).** Bar t of a stretch starting at row s is scored
only when ``t - s >= window + receptive_field - 2``: then every pooled output has its full
receptive field inside the stretch, no zero padding reaches it, and the logit is a function
of the :func:`input_bars` = ``window + receptive_field - 1`` normalised rows ending at t and
nothing else (no later bar, no earlier bar, not where the history starts). A stretch is a
run of rows whose 12 features are all finite; the features restart their warm-up (NaN) after
every gap in the candles, so a stretch never crosses a gap (``seg`` splits it too when given).

**Engines.** Batch scoring (backtest, sweep, training's reported metrics) runs the exported
dynamic-time ONNX graph on ONNX Runtime, one thread per piece (:meth:`SequenceNet.logits`
cuts stretches into fixed pieces; the bundle passes its ORT pass as ``run``); the streaming
step is numpy (an ORT call per bar costs more than the whole step). Both use the same float32
weights (``model.onnx``, and ``sequence_weights.npz`` with its sha256 in bundle.json), and
training checks numpy vs torch and ORT vs torch within 1e-5 before writing the bundle.
Measured per bar on this project's 2-core machine (one pass over 5k-70k rows):
ONNX Runtime 9.7-12.8 us whether the machine was quiet or at load 12; the numpy pass
(:meth:`SequenceNet.full_pass`, one GEMM per kernel tap) 4.1 us quiet with one BLAS thread
but 22-97 us at load 12 (its BLAS threads collapse when the cores are taken, the finding
of models.scorer for intra-op threads). ORT is the steadier choice on a shared machine.

**Streaming** (:class:`SequenceStep`): each conv keeps a ring of its last
``(k - 1) * d + 1`` inputs, the top of the stack a ring of its last ``window`` outputs; one
new bar costs one matrix-vector product per conv. It equals :meth:`SequenceNet.full_pass`
within float32 rounding (tests: 1e-6 on logits).
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from core.errors import BundleError
from core.worker_pool import run_each

WEIGHTS_FILE = "sequence_weights.npz"
# Scored bars per piece of batch scoring (module docstring): small enough to stay in cache and
# to give worker threads whole pieces, large enough that the input_bars - 1 rows of history
# each piece recomputes cost ~3%.
PIECE = 4096


def receptive_field(kernel_size: int, dilations: Sequence[int]) -> int:
    """Bars one output of the residual stack sees: 1 + sum over blocks of 2 convs * (k - 1) * d
    (the same formula as :func:`models.tcn.receptive_field`; this module imports no torch)."""
    return 1 + sum(2 * (int(kernel_size) - 1) * int(d) for d in dilations)


def input_bars(model_spec: Any) -> int:
    """Rows one sequence-mode logit depends on: ``window + receptive_field - 1``."""
    get = (lambda k: model_spec[k]) if isinstance(model_spec, dict) else (lambda k: getattr(model_spec, k))
    return int(get("window")) + receptive_field(get("kernel_size"), get("dilations")) - 1


def weights_to_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The ``.npz`` bytes of float32 weight arrays (no pickle), keys = the torch state_dict's."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v, dtype=np.float32) for k, v in sorted(arrays.items())})
    return buf.getvalue()


def weights_from_bytes(data: bytes, where: str) -> dict[str, np.ndarray]:
    """Inverse of :func:`weights_to_bytes`; BundleError (one line) when unreadable."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: np.asarray(npz[k], dtype=np.float32) for k in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise BundleError(f"{where}: not a readable weights archive ({exc.__class__.__name__})") from None


@dataclass
class _Conv:
    """A causal dilated conv as ``k`` per-tap matrices (oldest tap first) plus a bias."""

    taps: np.ndarray      # (k, Cin, Cout)
    flat: np.ndarray      # (k * Cin, Cout): the taps stacked for the one-step product
    bias: np.ndarray      # (Cout,)
    dilation: int

    @property
    def span(self) -> int:
        return (self.taps.shape[0] - 1) * self.dilation + 1


@dataclass
class _Block:
    conv1: _Conv
    conv2: _Conv
    res_w: np.ndarray | None   # (Cin, Cout) 1x1 residual conv, None = identity
    res_b: np.ndarray | None


def _conv(arrays: dict, name: str, dilation: int, where: str) -> _Conv:
    try:
        w, b = arrays[f"{name}.weight"], arrays[f"{name}.bias"]
    except KeyError as exc:
        raise BundleError(f"{where}: weight {exc.args[0]} is missing") from None
    taps = np.ascontiguousarray(np.transpose(w, (2, 1, 0)))  # (Cout, Cin, k) -> (k, Cin, Cout)
    return _Conv(taps, np.ascontiguousarray(taps.reshape(-1, taps.shape[2])), b.astype(np.float32), int(dilation))


def _causal_conv(x: np.ndarray, conv: _Conv) -> np.ndarray:
    """``(T, Cin) -> (T, Cout)``, zero left padding: one GEMM per tap."""
    k, _, cout = conv.taps.shape
    t = len(x)
    left = (k - 1) * conv.dilation
    xp = np.concatenate([np.zeros((left, x.shape[1]), np.float32), x]) if left else x
    out = np.empty((t, cout), np.float32)
    out[:] = conv.bias
    for j in range(k):
        out += xp[j * conv.dilation: j * conv.dilation + t] @ conv.taps[j]
    return out


class SequenceNet:
    """The sequence-mode network in numpy (float32): blocks, running mean of the last
    ``window`` outputs, head. Built from the bundle's weights and model spec."""

    def __init__(self, arrays: dict[str, np.ndarray], model_spec: Any, where: str = WEIGHTS_FILE) -> None:
        get = (lambda k: model_spec[k]) if isinstance(model_spec, dict) else (lambda k: getattr(model_spec, k))
        self.window = int(get("window"))
        self.input_bars = input_bars(model_spec)
        self.blocks: list[_Block] = []
        for i, d in enumerate(get("dilations")):
            p = f"blocks.{i}."
            res = arrays.get(p + "residual.weight")
            self.blocks.append(_Block(_conv(arrays, p + "conv1", d, where), _conv(arrays, p + "conv2", d, where),
                                      None if res is None else np.ascontiguousarray(res[:, :, 0].T),
                                      arrays.get(p + "residual.bias")))
        try:
            self.h_w, self.h_b = np.ascontiguousarray(arrays["head.0.weight"].T), arrays["head.0.bias"]
            self.o_w, self.o_b = np.ascontiguousarray(arrays["head.3.weight"][0]), float(arrays["head.3.bias"][0])
        except KeyError as exc:
            raise BundleError(f"{where}: weight {exc.args[0]} is missing") from None
        self.n_features = self.blocks[0].conv1.taps.shape[1]
        self.channels = self.blocks[-1].conv2.taps.shape[2]

    # ------------------------------------------------------------------ batch
    def stack(self, x: np.ndarray) -> np.ndarray:
        """Outputs of the residual stack ``(T, C)`` for normalised rows ``(T, F)`` of one stretch."""
        h = np.ascontiguousarray(x, dtype=np.float32)
        for b in self.blocks:
            o = np.maximum(_causal_conv(h, b.conv1), 0)
            o = np.maximum(_causal_conv(o, b.conv2), 0)
            res = h if b.res_w is None else h @ b.res_w + b.res_b
            h = np.maximum(o + res, 0)
        return h

    def full_pass(self, x: np.ndarray) -> np.ndarray:
        """Logit (float64) of every row of one stretch ``(T, F)``; rows before
        ``input_bars - 1`` are computed (zero padding) but are not scores (module docstring)."""
        h = self.stack(x)
        c = np.cumsum(np.concatenate([np.zeros((self.window, h.shape[1])), h.astype(np.float64)]), axis=0)
        pooled = ((c[self.window:] - c[:-self.window]) / self.window).astype(np.float32)
        z = np.maximum(pooled @ self.h_w + self.h_b, 0)
        return (z @ self.o_w + self.o_b).astype(np.float64)

    def logits(self, norm: np.ndarray, ends: np.ndarray, seg: np.ndarray | None = None,
               run: Callable[[np.ndarray], np.ndarray] | None = None, threads: int = 1) -> np.ndarray:
        """Logits of bars ``ends`` of a normalised ``(N, F)`` matrix; NaN for a bar without
        ``input_bars`` finite rows of its own stretch.

        Each stretch is cut into pieces of :data:`PIECE` scored bars on a grid fixed by the
        stretch's start, each run with its ``input_bars - 1`` rows of history (one causal pass
        per piece: 3% extra work at 4,096 bars); ``run`` (default :meth:`full_pass`) maps a
        piece's rows to their logits, ``threads`` workers run whole pieces, and a logit never
        depends on the thread count (the grid does not)."""
        ends = np.asarray(ends, dtype=np.int64)
        out = np.full(len(ends), np.nan)
        if not len(ends):
            return out
        run = run or self.full_pass
        burn = self.input_bars - 1
        start_of = stretch_starts(norm, seg)[ends]
        scored = (start_of >= 0) & (ends - start_of >= burn)
        sel = np.flatnonzero(scored)
        # piece id of every scored bar: (stretch start, k-th PIECE after its first scored bar)
        piece = (ends[sel] - start_of[sel] - burn) // PIECE
        keys = np.unique(np.stack([start_of[sel], piece], axis=1), axis=0)

        def score(key: np.ndarray) -> None:
            s, k = int(key[0]), int(key[1])
            mine = sel[(start_of[sel] == s) & (piece == k)]
            lo = s + k * PIECE                        # first input row: burn rows before the piece's first bar
            out[mine] = run(norm[lo:int(ends[mine].max()) + 1])[ends[mine] - lo]

        run_each(score, keys, threads, "nts-seq")
        return out

    def stepper(self) -> "SequenceStep":
        """A fresh one-bar-at-a-time state (:class:`SequenceStep`)."""
        return SequenceStep(self)


def stretch_starts(norm: np.ndarray, seg: np.ndarray | None = None) -> np.ndarray:
    """Per row, the first row of its run of finite rows (within one ``seg`` id); -1 for a row
    that is not finite."""
    finite = np.isfinite(norm).all(axis=1)
    n = len(finite)
    new = finite.copy()
    if n:
        new[1:] &= ~finite[:-1] | ((seg[1:] != seg[:-1]) if seg is not None else False)
    first = np.where(new, np.arange(n), -1)
    first = np.maximum.accumulate(first) if n else first
    return np.where(finite, first, -1)


class _Ring:
    """The last ``size`` rows of a layer's input (zeros = the causal padding before a stretch)."""

    __slots__ = ("buf", "pos", "size")

    def __init__(self, size: int, width: int) -> None:
        self.size = size
        self.buf = np.zeros((2 * size, width), np.float32)  # doubled: the last `size` rows are one slice
        self.pos = 0

    def push(self, row: np.ndarray) -> None:
        self.buf[self.pos] = row
        self.buf[self.pos + self.size] = row
        self.pos = (self.pos + 1) % self.size

    def last(self) -> np.ndarray:
        """The last ``size`` rows, oldest first ``(size, width)``."""
        return self.buf[self.pos:self.pos + self.size]


class SequenceStep:
    """One sequence-mode logit per new normalised row, from cached activations (module docs)."""

    def __init__(self, net: SequenceNet) -> None:
        self.net = net
        self.rings = [(_Ring(b.conv1.span, b.conv1.taps.shape[1]), _Ring(b.conv2.span, b.conv2.taps.shape[1]))
                      for b in net.blocks]
        self.top = _Ring(net.window, net.channels)
        self.top_sum = np.zeros(net.channels, np.float64)  # running sum of the top ring (float64)
        self.count = 0

    def reset(self) -> None:
        """Forget the stretch (a gap, or a row that is not finite)."""
        for r1, r2 in self.rings:
            r1.buf[:] = 0
            r2.buf[:] = 0
        self.top.buf[:] = 0
        self.top_sum[:] = 0
        self.count = 0

    @staticmethod
    def _tap(ring: _Ring, conv: _Conv) -> np.ndarray:
        return conv.bias + ring.last()[::conv.dilation].reshape(-1) @ conv.flat

    def push(self, row: np.ndarray) -> float:
        """Feed one normalised row; its logit, NaN while the stretch is shorter than ``input_bars``
        or when the row is not finite (which starts a new stretch)."""
        x = np.asarray(row, dtype=np.float32)
        if not np.isfinite(x).all():
            self.reset()
            return math.nan
        for b, (r1, r2) in zip(self.net.blocks, self.rings):
            r1.push(x)
            o1 = np.maximum(self._tap(r1, b.conv1), 0)
            r2.push(o1)
            o2 = np.maximum(self._tap(r2, b.conv2), 0)
            res = x if b.res_w is None else x @ b.res_w + b.res_b
            x = np.maximum(o2 + res, 0)
        top = self.top
        self.top_sum += x                      # float64 accumulation
        self.top_sum -= top.buf[top.pos]       # the row this push overwrites leaves the window
        top.push(x)
        if top.pos == 0:  # once per window: the exact sum again (no drift however long the stream)
            self.top_sum = top.last().astype(np.float64).sum(axis=0)
        self.count += 1
        if self.count < self.net.input_bars:
            return math.nan
        pooled = (self.top_sum / self.net.window).astype(np.float32)
        z = np.maximum(pooled @ self.net.h_w + self.net.h_b, 0)
        return float(z @ self.net.o_w + self.net.o_b)
