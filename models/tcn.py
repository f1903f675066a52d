"""The seed's Temporal Convolutional Network: causal dilated residual blocks -> pooled -> one logit.

Input ``(batch, window, n_features)`` (time-major like the feature frame); output one logit per
window. Design choices (stated, not hidden):

* No weight normalisation: plain ``nn.Conv1d``. It keeps the state_dict a flat set of
  weight/bias tensors (loadable with ``torch.load(weights_only=True)`` and countable by hand),
  and AdamW + residual connections train this small network without it.
* Causal padding: each conv is left-padded by ``(k - 1) * d`` zeros, so output step ``i``
  depends on input steps ``<= i`` only (tested in ``tests/test_tcn.py``).
* Residual path: a 1x1 conv where the channel count changes, the identity elsewhere.

Exact size with the defaults (12 features, channels 32/32/64/64, kernel 3, head 32): 58,401
parameters (see :func:`count_parameters`); the seed's "about 47k" undercounts the spec.
Receptive field: ``1 + sum_b 2 * (k - 1) * d_b`` = 61 bars for k=3, d=1,2,4,8.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn


class CausalConv1d(nn.Conv1d):
    """Conv1d that left-pads ``(kernel_size - 1) * dilation`` zeros: output i sees inputs <= i."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, padding=0)
        self._left = (kernel_size - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, T)
        return super().forward(nn.functional.pad(x, (self._left, 0)))


class TemporalBlock(nn.Module):
    """Two causal dilated convs (ReLU + dropout after each) plus a residual connection."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.conv1 = CausalConv1d(in_ch, out_ch, kernel_size, dilation)
        self.conv2 = CausalConv1d(out_ch, out_ch, kernel_size, dilation)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)
        self.residual = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop1(torch.relu(self.conv1(x)))
        out = self.drop2(torch.relu(self.conv2(out)))
        res = x if self.residual is None else self.residual(x)
        return torch.relu(out + res)


class TCN(nn.Module):
    """TCN classifier: residual blocks -> global average pool over time -> Dense+ReLU+Dropout -> logit."""

    def __init__(
        self,
        n_features: int = 12,
        channels: Sequence[int] = (32, 32, 64, 64),
        kernel_size: int = 3,
        dilations: Sequence[int] = (1, 2, 4, 8),
        dropout: float = 0.1,
        head_units: int = 32,
        head_dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if len(channels) != len(dilations):
            raise ValueError("channels and dilations must have the same length")
        blocks = []
        in_ch = n_features
        for out_ch, d in zip(channels, dilations):
            blocks.append(TemporalBlock(in_ch, out_ch, kernel_size, d, dropout))
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Linear(in_ch, head_units), nn.ReLU(), nn.Dropout(head_dropout), nn.Linear(head_units, 1)
        )
        self.kernel_size = kernel_size
        self.dilations = tuple(dilations)

    def conv_features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the residual stack, ``(B, C, T)`` for input ``(B, T, F)`` (used by the causality test)."""
        return self.blocks(x.transpose(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B,)`` for windows ``(B, T, F)``."""
        pooled = self.conv_features(x).mean(dim=2)
        return self.head(pooled).squeeze(-1)


class SequenceTCN(TCN):
    """Sequence mode (``model.context: sequence``): the same blocks and head (same state_dict
    keys, same parameter count) run causally over a contiguous stretch ``(B, T, F)``; the logit
    of step t is the head applied to the mean of the stack's outputs ``t - window + 1 .. t``.

    The running mean is a difference of float64 cumulative sums (exact enough over 85k steps,
    and one add per step instead of ``window``). Steps before ``window + receptive_field - 2``
    of a stretch still see the zero padding; :mod:`models.sequence_scorer` never scores them, so a
    scored logit depends only on the ``window + receptive_field - 1`` input rows ending at it.
    """

    def __init__(self, window: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.window = int(window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, T)`` for stretches ``(B, T, F)``."""
        h = self.conv_features(x).to(torch.float64)                      # (B, C, T)
        c = torch.cumsum(nn.functional.pad(h, (self.window, 0)), dim=2)  # c[t + window] = sum h[..t]
        pooled = (c[:, :, self.window:] - c[:, :, :-self.window]) / self.window
        return self.head(pooled.to(x.dtype).transpose(1, 2)).squeeze(-1)


def build_tcn(model_cfg, n_features: int) -> TCN:
    """Construct the network from a ``ModelConfig`` (or a dict with the same keys): a
    :class:`SequenceTCN` when its ``context`` is ``sequence``."""
    get = (lambda k: model_cfg[k]) if isinstance(model_cfg, dict) else (lambda k: getattr(model_cfg, k))
    try:
        context = get("context")
    except (KeyError, AttributeError):
        context = "window"  # a spec from before sequence mode
    cls, extra = (SequenceTCN, {"window": int(get("window"))}) if context == "sequence" else (TCN, {})
    return cls(
        **extra,
        n_features=n_features,
        channels=list(get("channels")),
        kernel_size=int(get("kernel_size")),
        dilations=list(get("dilations")),
        dropout=float(get("dropout")),
        head_units=int(get("head_units")),
        head_dropout=float(get("head_dropout")),
    )


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def expected_parameters(n_features: int, channels: Sequence[int], kernel_size: int, head_units: int) -> int:
    """Closed-form parameter count of the spec (weights + biases), independent of the module code."""
    total = 0
    in_ch = n_features
    for out_ch in channels:
        total += in_ch * out_ch * kernel_size + out_ch      # conv1
        total += out_ch * out_ch * kernel_size + out_ch     # conv2
        if in_ch != out_ch:
            total += in_ch * out_ch + out_ch                # 1x1 residual conv
        in_ch = out_ch
    total += in_ch * head_units + head_units + head_units + 1  # Dense + logit
    return total


def receptive_field(kernel_size: int, dilations: Sequence[int]) -> int:
    """Bars one output step can see: 1 + sum over blocks of 2 convs * (k - 1) * d."""
    return 1 + sum(2 * (kernel_size - 1) * d for d in dilations)


def gather_windows(norm: torch.Tensor, ends: torch.Tensor, window: int) -> torch.Tensor:
    """Copy the windows ending at bars ``ends`` from a normalised ``(N, F)`` tensor: ``(B, window, F)``."""
    offsets = torch.arange(-window + 1, 1, dtype=ends.dtype, device=ends.device)
    return norm[ends.unsqueeze(1) + offsets]


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` intra-op threads, then restore the previous setting (training only:
    ``torch.set_num_threads`` is process-global)."""
    prev = torch.get_num_threads()
    if n != prev:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != prev:
            torch.set_num_threads(prev)
