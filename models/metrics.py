"""Probability-forecast metrics: AUC, log loss, Brier score, expected calibration error, and the
reliability diagram (matplotlib, Agg backend, written atomically)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from core.files import atomic_path

_EPS = 1e-12


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC; NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, dtype=float)
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, np.asarray(p, dtype=float)))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy with probabilities clipped to [1e-12, 1 - 1e-12]."""
    y = np.asarray(y, dtype=float)
    p = np.clip(np.asarray(p, dtype=float), _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared error of the probability."""
    return float(np.mean((np.asarray(p, dtype=float) - np.asarray(y, dtype=float)) ** 2))


def reliability_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin on [0, 1]: mean predicted P, observed frequency, count (NaN where empty)."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    idx = np.clip((p * n_bins).astype(int), 0, n_bins - 1)  # p == 1 falls into the last bin
    count = np.bincount(idx, minlength=n_bins).astype(float)
    sum_p = np.bincount(idx, weights=p, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sum_p / count, sum_y / count, count


def ece(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error: sum over bins of (count/N) * |mean P - observed frequency|."""
    mp, freq, count = reliability_bins(y, p, n_bins)
    used = count > 0
    return float(np.sum(count[used] / count.sum() * np.abs(mp[used] - freq[used])))


def all_metrics(y: np.ndarray, p: np.ndarray) -> dict:
    """The four headline figures plus base rate, mean P and sample count."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    return {"auc": auc(y, p), "log_loss": log_loss(y, p), "brier": brier(y, p), "ece": ece(y, p),
            "base_rate": float(y.mean()) if len(y) else float("nan"),
            "mean_p": float(p.mean()) if len(p) else float("nan"), "n": int(len(y))}


def save_png_atomic(fig, path: str | Path, dpi: int = 110) -> None:
    """Save a matplotlib figure through a temp file + rename."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")


def reliability_diagram(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path,
                        title: str = "Reliability (test span)", n_bins: int = 10) -> None:
    """Plot observed frequency vs mean predicted P for each named (y, p) pair, plus histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, axh) = plt.subplots(2, 1, figsize=(6.5, 7.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect")
    edges = np.linspace(0, 1, n_bins + 1)
    for name, (y, p) in curves.items():
        mp, freq, count = reliability_bins(y, p, n_bins)
        used = count > 0
        ax.plot(mp[used], freq[used], marker="o", label=f"{name} (ECE {ece(y, p, n_bins):.3f})")
        axh.hist(np.asarray(p, dtype=float), bins=edges, histtype="step", label=name)
    ax.set_ylabel("observed frequency of label 1")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    axh.set_xlabel("predicted probability")
    axh.set_ylabel("count")
    axh.set_yscale("log")
    save_png_atomic(fig, path)
    plt.close(fig)


def learning_curves_png(history: Sequence[Mapping[str, float]], path: str | Path) -> None:
    """Train/validation loss and validation AUC per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    a1.plot(ep, [h["train_loss"] for h in history], marker="o", label="train loss")
    a1.plot(ep, [h["val_loss"] for h in history], marker="o", label="validation loss")
    a1.set_xlabel("epoch")
    a1.set_ylabel("weighted BCE")
    a1.legend()
    a2.plot(ep, [h["train_auc"] for h in history], marker="o", label="train AUC")
    a2.plot(ep, [h["val_auc"] for h in history], marker="o", label="validation AUC")
    a2.set_xlabel("epoch")
    a2.set_ylabel("AUC")
    a2.legend()
    save_png_atomic(fig, path)
    plt.close(fig)
