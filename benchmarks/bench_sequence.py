"""Window mode vs sequence mode (``model.context``) on the real BTC candles, side by side.

    nice -n 10 .venv/bin/python benchmarks/bench_sequence.py [--epochs 6] [--folds 3] [--threads 2]

Both modes get the SAME data, the SAME sample set and splits (the bars with a full sequence-mode
input span, ``window + receptive_field - 1`` = 124 bars; purge and embargo as configured), the
same seed, labels, pos_weight, early stopping and Platt calibration (``models.train.train_bundle``,
the one training path). Printed per mode:

* test AUC, log loss, ECE (calibrated) of the main walk-forward split (train / val / the most
  recent 15% as test), and, with ``--folds K`` > 1, the same for K-1 earlier walk-forward
  splits (prefixes of the samples; their test spans do not overlap): mean and spread;
* training wall time (fit seconds, labelled samples per second, epochs run);
* scoring every bar of the file: features + network (``predict_logit``) and the network
  alone (``logits_for_features`` on precomputed features), best of 3; sequence mode also
  times ONNX Runtime on its exported dynamic-time graph (the engine not chosen);
* one streaming decision: ``BarScorer.update`` (features + network + calibration) and the
  network step alone, median and p99 over 2,000 consecutive bars after a prime.

``--epochs`` caps the epochs (early stopping may end sooner) so the run fits a shared 2-core
machine: the time figures compare the two modes at the same cap. The 1-minute load average
is printed with every phase (the machine is shared; times swing with it).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from core.config import load_config
from core.ohlcv import load_ohlcv, segment_ids
from models.bundle import load_bundle
from models.dataset import feature_matrix, prepare
from models.sequence_scorer import input_bars, stretch_starts
from models.scorer import session_options
from models.splits import walk_forward_split
from models.train import train_bundle

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "btc_usdt_15m.csv.gz"


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


REPEATS = 3
THREADS = 2


def best_of(fn, n: int | None = None) -> float:
    times = []
    for _ in range(n or REPEATS):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def config(context: str, args):
    return load_config(None, [f"model.context={context}", f"training.threads={args.threads}",
                              f"training.epochs={args.epochs}", f"training.seed={args.seed}"])


def splits(frame, args) -> list:
    """The main walk-forward split last; earlier ones on prefixes of the samples (0.7, 0.85)."""
    cfg = config("sequence", args)
    data = prepare(frame, cfg, window=input_bars(cfg.model))
    s, t = data.samples, cfg.training
    shares = [0.7, 0.85, 1.0][-args.folds:] if args.folds > 1 else [1.0]
    return [walk_forward_split(s[:int(round(len(s) * f))], cfg.labels.horizon, t.embargo, t.val_fraction,
                               t.test_fraction) for f in shares]


def train(frame, context: str, split, args, out: Path) -> dict:
    cfg = config(context, args)
    load_before = load()
    res = train_bundle(frame, cfg, out, progress=False, split=split, overwrite=True, max_samples=args.max_samples)
    m, tr = res.meta["metrics"]["test"], res.meta["training"]
    return {"auc": m["auc"], "log_loss": m["log_loss_calibrated"], "ece": m["ece_calibrated"],
            "auc_baseline": m["baseline"]["calibrated"]["auc"], "fit_s": tr["fit_seconds"],
            "samples_per_s": tr["train_samples_per_s"], "epochs": len(res.meta["history"]),
            "best_epoch": tr["best_epoch"], "n_test": res.meta["samples"]["test"],
            "wall_s": res.meta["wall_seconds"], "load": f"{load_before}->{load()}"}


def scoring(frame, path: Path) -> dict:
    b = load_bundle(path)
    b.threads = max(1, min(2, THREADS))
    feats = feature_matrix(frame, b.feature_cfg, b.timeframe)
    seg = segment_ids(frame.index, b.timeframe)
    ends = np.flatnonzero(np.isfinite(b.predict_logit(frame).to_numpy()))
    out = {"load": load(), "bars": len(frame), "scored": int(len(ends)),
           "predict_logit_s": best_of(lambda: b.predict_logit(frame)),
           "network_s": best_of(lambda: b.logits_for_features(feats, ends, seg))}
    if b.sequence_net is not None:  # the engine not chosen: ONNX Runtime on the dynamic-time graph
        sess = ort.InferenceSession(str(path / "model.onnx"), session_options(), providers=["CPUExecutionProvider"])
        norm = b.normaliser.transform(feats)
        first = stretch_starts(norm, seg)
        pieces = [(int(s), int(np.flatnonzero(first == s)[-1]) + 1) for s in np.unique(first[first >= 0])]

        def run_ort() -> None:
            for a, e in pieces:
                sess.run(None, {"windows": norm[None, a:e]})
        out["onnxruntime_network_s"] = best_of(run_ort)
    return out


def streaming(frame, path: Path, n: int = 2000) -> dict:
    b = load_bundle(path)
    bars = frame[["open", "high", "low", "close", "volume"]].to_numpy()
    start = len(frame) - n
    s = b.stream()
    s.prime(frame.iloc[start - b.history_bars:start])
    upd, net = [], []
    for i in range(start, len(frame)):
        t = time.perf_counter()
        s.update(frame.index[i], *bars[i])
        upd.append(time.perf_counter() - t)
    # the network alone, on the same bars' normalised rows: one step (sequence) or one window
    norm = b.normaliser.transform(feature_matrix(frame.iloc[start - b.history_bars:], b.feature_cfg, b.timeframe))
    first = len(norm) - n
    if b.sequence_net is not None:
        probe = b.sequence_net.stepper()
        for r in norm[:first]:
            probe.push(r)
    for i in range(first, len(norm)):
        if b.sequence_net is not None:
            t = time.perf_counter()
            probe.push(norm[i])
        else:
            w = np.ascontiguousarray(norm[i - b.window + 1:i + 1])
            t = time.perf_counter()
            b.scorer.logit_one(w)
        net.append(time.perf_counter() - t)
    ms = lambda xs, q: float(np.percentile(xs, q) * 1e3)  # noqa: E731
    return {"load": load(), "update_median_ms": ms(upd, 50), "update_p99_ms": ms(upd, 99),
            "network_median_ms": ms(net, 50), "network_p99_ms": ms(net, 99)}


def show(results: dict) -> None:
    w, s = results["window"], results["sequence"]
    rows = [("test AUC (main split)", "auc", "{:.4f}"), ("test log loss (calibrated)", "log_loss", "{:.4f}"),
            ("test ECE (calibrated)", "ece", "{:.4f}"), ("baseline test AUC", "auc_baseline", "{:.4f}"),
            ("epochs run (best)", None, None), ("fit seconds", "fit_s", "{:.1f}"),
            ("labelled samples/s", "samples_per_s", "{:.0f}"), ("load during training", "load", "{}")]
    print(f"\n{'':34s}{'window':>20s}{'sequence':>20s}")
    for label, key, fmt in rows:
        if key is None:
            a, b = (f"{r['train'][-1]['epochs']} ({r['train'][-1]['best_epoch']})" for r in (w, s))
        else:
            a, b = (fmt.format(r["train"][-1][key]) for r in (w, s))
        print(f"{label:34s}{a:>20s}{b:>20s}")
    if len(w["train"]) == len(s["train"]) > 1:
        for key in ("auc", "log_loss", "ece"):
            cells = []
            for r in (w, s):
                v = [f[key] for f in r["train"]]
                cells.append(f"{statistics.mean(v):.4f}±{statistics.stdev(v):.4f}")
            print(f"{'folds ' + key + ' mean±sd (' + str(len(w['train'])) + ')':34s}{cells[0]:>20s}{cells[1]:>20s}")
        for r, name in ((w, "window"), (s, "sequence")):
            print(f"  {name} per fold AUC: " + ", ".join(f"{f['auc']:.4f}" for f in r["train"]))
    for label, part, key, fmt in (("score all bars: features+net (s)", "scoring", "predict_logit_s", "{:.3f}"),
                                  ("score all bars: network only (s)", "scoring", "network_s", "{:.3f}"),
                                  ("  (load)", "scoring", "load", "{}"),
                                  ("decision: BarScorer.update med ms", "streaming", "update_median_ms", "{:.3f}"),
                                  ("decision: BarScorer.update p99 ms", "streaming", "update_p99_ms", "{:.3f}"),
                                  ("decision: network med ms", "streaming", "network_median_ms", "{:.4f}"),
                                  ("decision: network p99 ms", "streaming", "network_p99_ms", "{:.4f}"),
                                  ("  (load)", "streaming", "load", "{}")):
        print(f"{label:34s}{fmt.format(w[part][key]):>20s}{fmt.format(s[part][key]):>20s}")
    if "onnxruntime_network_s" in s["scoring"]:
        print(f"sequence mode on ONNX Runtime (1 thread, not chosen): {s['scoring']['onnxruntime_network_s']:.3f} s")
    ratio = w["train"][-1]["fit_s"] / s["train"][-1]["fit_s"]
    per_sample = s["train"][-1]["samples_per_s"] / w["train"][-1]["samples_per_s"]
    print(f"training: sequence {ratio:.1f}x less fit time, {per_sample:.1f}x the samples/s (goal >= 5x); "
          f"scoring network {w['scoring']['network_s'] / s['scoring']['network_s']:.1f}x faster")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REAL))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--folds", type=int, default=1, choices=(1, 2, 3))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-samples", type=int, default=None,
                    help="train on the most recent N training samples only (time-bound runs on a loaded machine)")
    ap.add_argument("--repeats", type=int, default=3, help="scoring runs per figure (the best is kept)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--modes", default="window,sequence")
    ap.add_argument("--json", default="reports/bench_sequence.json")
    args = ap.parse_args()
    global REPEATS, THREADS
    REPEATS, THREADS = args.repeats, args.threads
    torch.set_num_threads(args.threads)
    frame = load_ohlcv(args.data)
    print(f"{len(frame):,} bars from {args.data}; torch threads {args.threads}; epochs cap {args.epochs}; "
          f"training samples cap {args.max_samples}; "
          f"load {load()}; {os.cpu_count()} cores")
    folds = splits(frame, args)[::-1]  # the main split first: its figures come out first
    modes = args.modes.split(",")
    results: dict = {m: {"train": []} for m in modes}
    out_json = Path(args.json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nts-bench-seq-") as tmp:
        for k, split in enumerate(folds):
            for context in modes:
                out = Path(tmp) / f"{context}_{k}"
                results[context]["train"].append(train(frame, context, split, args, out))
                print(f"{context} split {k + 1}/{len(folds)}: {json.dumps(results[context]['train'][-1])}", flush=True)
                if k == 0:
                    results[context]["scoring"] = scoring(frame, out)
                    results[context]["streaming"] = streaming(frame, out)
                    print(f"{context}: {json.dumps(results[context]['scoring'])} "
                          f"{json.dumps(results[context]['streaming'])}", flush=True)
                out_json.write_text(json.dumps(results, indent=2))
    for r in results.values():
        r["train"] = r["train"][::-1]  # oldest split first, the main split last (as show() reads it)
    out_json.write_text(json.dumps(results, indent=2))
    if len(results) == 2:
        show(results)


if __name__ == "__main__":
    main()
