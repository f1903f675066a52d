"""Permutation importance of a bundle's TCN on a span of labelled bars (default: its test span).

For each of the 12 features, the feature's whole 64-bar history is swapped between
samples (a random permutation of the samples, the same for every time step), which
breaks its link to the label while keeping its distribution and its time structure.
For each lag block (bars t-0..t-7, t-8..t-15, t-16..t-31, t-32..t-63 with the default
window) all 12 features of those bars are swapped between samples. Importance = drop
of AUC and rise of log loss (calibrated P) vs the unpermuted windows, mean and std over
``repeats`` permutations. Scoring goes through the bundle's own scorer (ONNX Runtime), the
numbers every engine trades with.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from core.errors import DataError
from core.files import OutputKind, output_dir
from core.ohlcv import segment_ids
from models.bundle import ModelBundle
from models.dataset import (
    check_frame,
    feature_matrix,
    sample_positions,
    valid_window_mask,
    window_view,
)
from models.labels import triple_barrier_events
from models.metrics import auc, log_loss


OUTPUT_KIND = OutputKind("explain", files=("importance.csv", "importance.md", "importance.png"),
                         signature="kind,name,auc_drop")


def lag_blocks(window: int) -> list[tuple[int, int]]:
    """Disjoint lag ranges [a, b) (0 = the bar t itself): 0-8, 8-16, 16-32, 32-window (those that fit)."""
    edges = [0] + [e for e in (8, 16, 32) if e < window] + [window]
    return list(zip(edges[:-1], edges[1:]))


def _score(bundle: ModelBundle, windows: np.ndarray) -> np.ndarray:
    return bundle.calibrate(bundle.logits_for_windows(windows))


def explain_samples(bundle: ModelBundle, frame: pd.DataFrame, span: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Normalised windows ``(n, window, F)`` and labels of the labelled bars in ``span`` (test|all)."""
    check_frame(frame, "explain data")
    feats = feature_matrix(frame, bundle.feature_cfg, bundle.timeframe)
    labels = triple_barrier_events(frame, bundle.label_cfg, timeframe=bundle.timeframe)["label"].to_numpy(float)
    span_bars = getattr(bundle, "input_bars", bundle.window)  # rows one logit reads (sequence mode: more)
    valid = valid_window_mask(feats, segment_ids(frame.index, bundle.timeframe), span_bars)
    ends = sample_positions(valid, labels)
    if span == "test":
        a, b = bundle.test_span
        ts = frame.index[ends]
        ends = ends[(ts >= a) & (ts <= b)]
        if len(ends) == 0:
            raise DataError(f"no labelled bars of the data fall in the bundle's test span {a} .. {b} "
                            f"(pass the file the bundle was trained on, or --span all)")
    elif span != "all":
        raise DataError(f"unknown span {span!r} (expected test or all)")
    y = labels[ends]
    if len(np.unique(y)) < 2:
        raise DataError(f"the {len(ends)} labelled bars in the span hold only one class; importance is undefined")
    view = window_view(bundle.normaliser.transform(feats), span_bars)
    return np.ascontiguousarray(view[ends - span_bars + 1]), y


def permutation_importance(bundle: ModelBundle, frame: pd.DataFrame, span: str = "test", repeats: int = 3,
                           seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Table of importance per feature and per lag block (see module docstring)."""
    x, y = explain_samples(bundle, frame, span)
    base_p = _score(bundle, x)
    base_auc, base_ll = auc(y, base_p), log_loss(y, base_p)
    rng = np.random.default_rng(seed)
    w = x.shape[1]  # the window (input_bars in sequence mode)
    groups = [("feature", name, (slice(None), i)) for i, name in enumerate(bundle.feature_names)]
    groups += [("lag_block", f"t-{a}..t-{b - 1}", (slice(w - b, w - a), slice(None))) for a, b in lag_blocks(w)]
    rows = []
    bar = tqdm(total=len(groups) * repeats, desc="permutation importance", disable=not progress, file=sys.stderr)
    for kind, name, (tsl, fsl) in groups:
        drops, rises = [], []
        for _ in range(repeats):
            perm = rng.permutation(len(x))
            xp = x.copy()
            xp[:, tsl, fsl] = x[perm][:, tsl, fsl]
            p = _score(bundle, xp)
            drops.append(base_auc - auc(y, p))
            rises.append(log_loss(y, p) - base_ll)
            bar.update(1)
        rows.append({"kind": kind, "name": name, "auc_drop": float(np.mean(drops)), "auc_drop_std": float(np.std(drops)),
                     "log_loss_rise": float(np.mean(rises)), "log_loss_rise_std": float(np.std(rises))})
    bar.close()
    table = pd.DataFrame(rows)
    table.attrs.update({"base_auc": base_auc, "base_log_loss": base_ll, "n": int(len(y)), "span": span,
                        "repeats": repeats})
    return table


def write_explain_outputs(table: pd.DataFrame, output: str | Path, inputs: tuple | list = (),
                          overwrite: bool = False) -> dict[str, Path]:
    """Write importance.csv, importance.md and importance.png as the folder ``output``, built
    beside it and renamed into place (:func:`core.files.output_dir`: an existing folder is
    replaced only when it is an nts explain output; ``inputs`` - data file, bundle - are never
    inside it). Returns the final paths."""
    with output_dir(output, OUTPUT_KIND, inputs=inputs, overwrite=overwrite) as tmp:
        _write_explain_files(table, tmp)
    out = Path(output)
    return {"csv": out / "importance.csv", "md": out / "importance.md", "png": out / "importance.png"}


def _write_explain_files(table: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = table.attrs
    paths = {"csv": out / "importance.csv", "md": out / "importance.md", "png": out / "importance.png"}
    paths["csv"].write_text(table.to_csv(index=False, float_format="%.6f"))
    head = (f"Permutation importance on the {a['span']} span: {a['n']:,} labelled bars, {a['repeats']} repeats; "
            f"unpermuted AUC {a['base_auc']:.4f}, log loss {a['base_log_loss']:.4f}.\n\n")
    lines = ["| kind | name | AUC drop | ± | log-loss rise | ± |", "|---|---|---|---|---|---|"]
    for r in table.sort_values(["kind", "auc_drop"], ascending=[True, False]).itertuples():
        lines.append(f"| {r.kind} | {r.name} | {r.auc_drop:.4f} | {r.auc_drop_std:.4f} | {r.log_loss_rise:.5f} | "
                     f"{r.log_loss_rise_std:.5f} |")
    paths["md"].write_text(head + "\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [3, 1.3]})
    for ax, kind in zip(axes, ("feature", "lag_block")):
        part = table[table["kind"] == kind].sort_values("auc_drop")
        ax.barh(part["name"], part["auc_drop"], xerr=part["auc_drop_std"], color="tab:blue")
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_xlabel("AUC drop when permuted")
        ax.set_title("per feature" if kind == "feature" else "per lag block")
    fig.suptitle(f"Permutation importance ({a['span']} span, base AUC {a['base_auc']:.3f})")
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=110, format="png", bbox_inches="tight")
    plt.close(fig)
