"""Time-ordered train / validation / test splits with purging and an embargo.

Samples are bar positions t (a sample's label depends on bars ``[t, t + horizon]``).
A held-out span with samples ``a .. b`` covers bars ``[a, b + horizon]``. A sample t of
another span is kept only if its label window stays clear of that cover by ``embargo``
more bars on either side:

    keep t  iff  t + horizon < a - embargo   or   t > b + horizon + embargo

So between an earlier and a later span there are at least ``horizon + embargo`` bars that
belong to neither (purge + embargo). Positions are row numbers of the candle frame; labels
never cross a gap in the data, so counting rows across a gap only removes more, never less.

* :func:`walk_forward_split`: train (oldest) -> validation -> test (most recent), shares of
  the labelled samples; validation is purged against test, train against both. The spans
  are ordered, so only the purge BEFORE each later span matters: no kept sample lies after
  a held-out span, and the symmetric ``embargo`` above is all it needs.
* :func:`purged_kfold_splits`: k contiguous folds; each fold is the test span once, the
  fold before it (the one after it for fold 0) is validation, the rest train, purged
  against both. Here samples DO lie after a held-out span, and a sample's input reaches
  back ``min_bars - 1`` bars (window - 1 plus the feature warm-up,
  ``warmup_bars + window - 1`` = the bundle's ``min_bars``). So the embargo AFTER a held-out
  span is ``max(embargo, min_bars)`` bars: a kept sample t satisfies
  ``t - (min_bars - 1) > b + horizon``, i.e. no input bar (warm-up included) of a training or
  validation sample lies inside a held-out span's cover. (The recursive EWMA features have
  an infinitely long, geometrically fading memory; ``min_bars`` is the warm-up after which
  every feature is defined, the standard cut.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from core.errors import DataError


@dataclass
class Split:
    """Sample positions of each span (sorted int64 arrays)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    name: str = "walk_forward"

    def summary(self) -> dict:
        """Counts and first/last positions per span (for logs and bundle.json)."""
        out = {"name": self.name}
        for k in ("train", "val", "test"):
            a = getattr(self, k)
            out[k] = {"n": int(len(a)), "first": int(a[0]) if len(a) else None, "last": int(a[-1]) if len(a) else None}
        return out


def cover(span: np.ndarray, horizon: int) -> tuple[int, int]:
    """Bars whose data the labels of a contiguous span of samples use: ``[first, last + horizon]``."""
    return int(span[0]), int(span[-1]) + int(horizon)


def purge(candidates: np.ndarray, held_out: list[np.ndarray], horizon: int, embargo: int,
          embargo_after: int | None = None) -> np.ndarray:
    """Drop candidates whose label window ``[t, t + horizon]`` comes within ``embargo`` bars of
    any held-out span's cover before it, or that start within ``embargo_after`` bars (default
    ``embargo``) after it (see module docstring)."""
    after = embargo if embargo_after is None else int(embargo_after)
    keep = np.ones(len(candidates), dtype=bool)
    for span in held_out:
        if len(span) == 0:
            continue
        a, b = cover(span, horizon)
        keep &= (candidates + horizon < a - embargo) | (candidates > b + after)
    return candidates[keep]


def _check(samples: np.ndarray, horizon: int, embargo: int) -> np.ndarray:
    s = np.asarray(samples, dtype=np.int64)
    if s.ndim != 1 or (len(s) > 1 and np.any(np.diff(s) <= 0)):
        raise ValueError("samples must be strictly increasing bar positions")
    if embargo < horizon:
        raise ValueError(f"embargo ({embargo}) must be >= the label horizon ({horizon})")
    return s


def walk_forward_split(samples: np.ndarray, horizon: int, embargo: int, val_fraction: float = 0.15,
                       test_fraction: float = 0.15) -> Split:
    """Oldest samples train, then validation, then the most recent as the out-of-sample test."""
    s = _check(samples, horizon, embargo)
    n = len(s)
    n_test = int(round(n * test_fraction))
    n_val = int(round(n * val_fraction))
    if n_test < 1 or n_val < 1 or n - n_test - n_val < 1:
        raise DataError(f"too few labelled samples ({n}) for train/validation/test spans (val_fraction "
                        f"{val_fraction:g} -> {n_val}, test_fraction {test_fraction:g} -> {n_test}): give more candles "
                        "or larger fractions")
    test = s[n - n_test:]
    val = purge(s[n - n_test - n_val: n - n_test], [test], horizon, embargo)
    train = purge(s[: n - n_test - n_val], [val, test], horizon, embargo)
    if len(train) == 0 or len(val) == 0:
        empty = "training" if len(train) == 0 else "validation"
        raise DataError(f"too few labelled samples ({n}) left after purging and embargo: the {empty} span is "
                        f"empty (val_fraction {val_fraction:g} -> {n_val} before purging); give more candles or a "
                        "larger fraction")
    return Split(train=train, val=val, test=test, name="walk_forward")


def purged_kfold_splits(samples: np.ndarray, horizon: int, embargo: int, folds: int = 5, *,
                        min_bars: int) -> Iterator[Split]:
    """k contiguous folds; fold i is the test span, its neighbour the validation span.

    ``min_bars``: bars one sample's input reaches back, warm-up included (``warmup_bars +
    window - 1``, the bundle's ``min_bars``). Samples after a held-out span are embargoed for
    ``max(embargo, min_bars)`` bars past its cover so their inputs never contain its bars;
    before a held-out span the usual ``embargo`` applies.
    """
    s = _check(samples, horizon, embargo)
    if min_bars < 1:
        raise ValueError(f"min_bars ({min_bars}) must be >= 1")
    if folds < 3 or len(s) < 3 * folds:
        raise DataError(f"too few labelled samples ({len(s)}) for {folds} folds")
    after = max(int(embargo), int(min_bars))
    parts = np.array_split(s, folds)
    for i in range(folds):
        test = parts[i]
        j = i - 1 if i > 0 else i + 1
        val = purge(parts[j], [test], horizon, embargo, after)
        others = [p for k, p in enumerate(parts) if k not in (i, j)]
        train = purge(np.concatenate(others), [val, test], horizon, embargo, after)
        if len(train) == 0 or len(val) == 0:
            raise DataError(f"too few labelled samples ({len(s)}) left in fold {i} after purging and embargo")
        yield Split(train=train, val=val, test=test, name=f"purged_kfold_{i}")


def cap_train(split: Split, max_samples: int | None) -> Split:
    """Keep only the most recent ``max_samples`` training samples (quick runs)."""
    if max_samples is None or len(split.train) <= max_samples:
        return split
    return Split(train=split.train[-int(max_samples):], val=split.val, test=split.test, name=split.name)
