"""Training-side pieces of sequence mode (``model.context: sequence``): batches of contiguous
chunks, the weights file, and the export check. Imports torch (training only).

**Batches.** Window mode copies one ``window``-bar window per labelled bar. Sequence mode cuts
the bars of the training span on a fixed grid into chunks of :data:`CHUNK_BARS` consecutive
bars; one chunk is fed with its :func:`models.sequence_scorer.input_bars` - 1 bars of
history before it (the burn-in), so one forward pass over ``CHUNK_BARS + burn_in`` rows gives
the logit of every bar of the chunk, each computed exactly as the full pass computes it
(a scored logit depends only on its ``input_bars`` rows). The loss is taken over the bars of
the chunk that are training samples (the same purged/embargoed sample set as window mode);
``training.batch_size // CHUNK_BARS`` chunks (shuffled each epoch) make one optimiser step,
so a step still sees about ``batch_size`` labelled bars. Rows whose features are not finite
(warm-up after a gap) enter as 0: they only reach bars that are not samples (those need
``input_bars`` finite rows of their own stretch), but a NaN would poison the gradients.

Per labelled bar the stack runs over ``(CHUNK_BARS + burn_in) / CHUNK_BARS`` time steps
(187 / 64 = 2.9 with the defaults) instead of ``window`` (64): about 22x less convolution.
"""
from __future__ import annotations

import numpy as np
import torch

from core.errors import NtsError
from models.onnx_export import reference_network
from models.sequence_scorer import SequenceNet, input_bars, weights_to_bytes

CHUNK_BARS = 64        # labelled bars per training chunk
EVAL_CHUNK_BARS = 4096  # bars per chunk of the per-epoch validation pass (no gradients)
# numpy engine vs torch, float32 logits (the same bar as the ONNX export check)
SEQUENCE_TOLERANCE = 1e-5


def chunk_rows(positions: np.ndarray, chunk: int, burn_in: int, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunks on a fixed grid covering ``positions`` (sorted bar positions of an ``n_rows``
    matrix): ``(rows, mask)`` with rows ``(n_chunks, burn_in + chunk)`` the input row numbers
    (clipped to ``[0, n_rows - 1]``: a row before 0 only reaches bars that are not samples, a
    row past the end only bars after it) and mask ``(n_chunks, chunk)`` True at the chunk's bars
    that are in ``positions``."""
    pos = np.asarray(positions, dtype=np.int64)
    first = int(pos[0])
    cid = (pos - first) // chunk
    ids, inv = np.unique(cid, return_inverse=True)
    starts = first + ids * chunk                                  # first bar of each chunk
    rows = np.clip(starts[:, None] + np.arange(-burn_in, chunk)[None, :], 0, n_rows - 1)
    mask = np.zeros((len(ids), chunk), dtype=bool)
    mask[inv, pos - starts[inv]] = True
    return rows, mask


class SequenceBatches:
    """Training batches and evaluation logits of sequence mode (see module docstring); the
    same interface as :class:`models.train.WindowBatches`."""

    def __init__(self, norm: torch.Tensor, labels: np.ndarray, train: np.ndarray, model_spec, batch_size: int) -> None:
        self.norm = torch.nan_to_num(norm, nan=0.0, posinf=0.0, neginf=0.0)
        self.y_all = torch.from_numpy(np.nan_to_num(labels, nan=0.0).astype(np.float32))
        self.burn_in = input_bars(model_spec) - 1
        rows, mask = chunk_rows(train, CHUNK_BARS, self.burn_in, len(norm))
        self.rows = torch.from_numpy(rows)
        self.mask = torch.from_numpy(mask)
        self.per_batch = max(1, int(batch_size) // CHUNK_BARS)

    def plan(self, gen: torch.Generator) -> list[torch.Tensor]:
        """This epoch's batches: shuffled chunk numbers, ``per_batch`` at a time."""
        perm = torch.randperm(len(self.rows), generator=gen)
        return [perm[i:i + self.per_batch] for i in range(0, len(perm), self.per_batch)]

    def forward(self, net: torch.nn.Module, chunks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, targets) of the training bars of these chunks, one pass per chunk."""
        rows = self.rows[chunks]
        z = net(self.norm[rows])[:, self.burn_in:]
        mask = self.mask[chunks]
        return z[mask], self.y_all[rows[:, self.burn_in:][mask]]

    @torch.no_grad()
    def logits(self, net: torch.nn.Module, positions: np.ndarray) -> np.ndarray:
        """Eval-mode logits (float64) of the bars ``positions`` (validation loss per epoch)."""
        was_training = net.training
        net.eval()
        rows, mask = chunk_rows(positions, EVAL_CHUNK_BARS, self.burn_in, len(self.norm))
        out = np.empty(len(positions), dtype=np.float64)
        k = 0
        for r, m in zip(torch.from_numpy(rows), torch.from_numpy(mask)):
            z = net(self.norm[r][None])[0, self.burn_in:][m]
            out[k:k + len(z)] = z.double().numpy()
            k += len(z)
        net.train(was_training)
        return out


def sequence_weights(model_spec, state_dict: dict, n_features: int) -> bytes:
    """The numpy engine's weights file (``sequence_weights.npz``) of these torch weights, checked:
    the numpy pass over fixed pseudo-random stretches must give torch's logits within
    :data:`SEQUENCE_TOLERANCE`, else NtsError."""
    arrays = {k: v.detach().cpu().numpy() for k, v in state_dict.items()}
    data = weights_to_bytes(arrays)
    net = reference_network(model_spec, state_dict, n_features)
    x = np.random.default_rng(20240601).standard_normal((2, 3 * input_bars(model_spec), n_features))
    x = x.astype(np.float32)
    with torch.inference_mode():
        ref = net(torch.from_numpy(x)).double().numpy()
    engine = SequenceNet(arrays, model_spec)
    diff = max(float(np.max(np.abs(engine.full_pass(xi) - ri))) for xi, ri in zip(x, ref))
    if not diff <= SEQUENCE_TOLERANCE:
        raise NtsError(f"the numpy sequence engine's logits differ from torch's by {diff:.3g} "
                       f"(tolerance {SEQUENCE_TOLERANCE:g})")
    return data
