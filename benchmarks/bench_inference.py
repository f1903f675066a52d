"""Inference speed of the one scorer (ONNX Runtime) against the torch reference, one run.

Usage: .venv/bin/python benchmarks/bench_inference.py [--model artifacts/tcn_v1] [--bars N] [--repeats 3]

1. **One window, network only**: ``OnnxScorer.logit_one`` vs the eager torch network (one
   thread, ``inference_mode``) on the same normalised window: median and p99 over ``--single``
   calls after a warm-up, plus ORT's thread CPU time (what the call costs without the time a
   loaded machine keeps the thread descheduled). Goal: ORT median <= 0.15 ms.
2. **Batch scoring** of every window of the real candles (85,189 bars when
   ``../shared/data`` exists, else 100,000 generated): ``bundle.predict_logit`` end to end
   (features + windows + network) and the network alone on the same windows, ORT with 1 and 2
   worker threads and torch with 2 intra-op threads; windows/s, GFLOP/s from the network's
   exact multiply-add count, and % of this machine's 2-thread float32 GEMM peak (torch.mm
   1024^3 on 2 threads, best of 5, measured in the same run).
3. **ORT vs torch**: max |logit difference| over every window and the AUC of both on the
   bundle's own triple-barrier labels of the same bars.

Without ``--model`` a bundle of the default network size is trained on generated bars first
(not timed). torch is imported here only as the reference.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from _timing import bench_bundle, bench_frame, best_of, timed  # puts the repository on sys.path
from models.bundle import load_bundle  # noqa: E402
from models.dataset import window_view  # noqa: E402
from models.labels import triple_barrier_events  # noqa: E402
from models.metrics import auc  # noqa: E402
from models.onnx_export import reference_network  # noqa: E402


def macs_per_window(model: dict, window: int, n_features: int) -> int:
    """Exact multiply-adds of one forward pass (convs over every step, 1x1 residuals, head)."""
    total, in_ch, k = 0, n_features, int(model["kernel_size"])
    for out_ch in model["channels"]:
        total += window * out_ch * in_ch * k + window * out_ch * out_ch * k
        if in_ch != out_ch:
            total += window * out_ch * in_ch
        in_ch = out_ch
    return total + in_ch * model["head_units"] + model["head_units"]


def gemm_peak_gflops(threads: int = 2, n: int = 1024) -> float:
    """Best-of-5 float32 GEMM rate of torch.mm on ``threads`` threads (GFLOP/s)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = best_of(lambda: torch.mm(a, b), 5)
    return 2 * n ** 3 / best / 1e9


def _pct(ns: list[int]) -> str:
    ms = np.asarray(ns, dtype=np.float64) / 1e6
    return f"median {np.median(ms):.3f} ms, p99 {np.percentile(ms, 99):.3f} ms"


def bench_single(bundle, net, x: np.ndarray, n: int) -> None:
    torch.set_num_threads(1)
    xt = torch.from_numpy(x[None])
    ort_ns, torch_ns, ort_cpu = [], [], []
    clock, cpu = time.perf_counter_ns, time.thread_time_ns
    with torch.inference_mode():
        for _ in range(200):
            bundle.scorer.logit_one(x)
            net(xt)
        for _ in range(n):
            c0 = cpu()
            t0 = clock()
            bundle.scorer.logit_one(x)
            t1 = clock()
            ort_cpu.append(cpu() - c0)
            net(xt)
            t2 = clock()
            ort_ns.append(t1 - t0)
            torch_ns.append(t2 - t1)
    print(f"one window, network only, ONNX Runtime : {_pct(ort_ns)}  (goal median <= 0.15 ms)")
    print(f"one window, network only, ORT CPU time : {_pct(ort_cpu)}  (excludes time spent descheduled)")
    print(f"one window, network only, torch eager  : {_pct(torch_ns)}")


def bench_batch(bundle, net, frame, repeats: int, macs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    feats, valid = bundle._features(frame)
    ends = np.flatnonzero(valid)
    view = window_view(bundle.normaliser.transform(feats), bundle.window)
    windows = np.ascontiguousarray(view[ends - bundle.window + 1])
    peak = gemm_peak_gflops(2)
    n = len(ends)

    def report(name: str, secs: float, network_only: bool) -> None:
        rate = n / secs
        extra = ""
        if network_only:
            gf = rate * 2 * macs / 1e9
            extra = f", {gf:.1f} GFLOP/s = {100 * gf / peak:.0f}% of the 2-thread sgemm peak"
        print(f"{name:<46}: {secs:6.2f} s, {rate:9,.0f} windows/s{extra}")

    print(f"batch: {n:,} windows; {macs / 1e6:.2f} M multiply-adds a window; 2-thread sgemm peak "
          f"{peak:.1f} GFLOP/s (torch.mm 1024^3)")
    out = {}
    for threads in (1, 2):
        bundle.threads = threads
        runs = [timed(lambda: out.__setitem__("ort", bundle.scorer.logits(windows)))[1:] for _ in range(repeats)]
        secs, cpu_secs = min(runs)
        report(f"ORT network only, {threads} worker thread(s)", secs, True)
        # CPU seconds of the process: the rate a busy core reaches, whatever else the machine runs
        print(f"{'':<46}  CPU {cpu_secs:6.2f} s = {n / cpu_secs:,.0f} windows per CPU-second, "
              f"{n / cpu_secs * 2 * macs / 1e9:.1f} GFLOP/s a busy core")
    secs = best_of(lambda: out.__setitem__("proba", bundle.predict_proba(frame)), repeats)
    report("ORT predict_proba (features+windows+net), 2 thr", secs, False)
    torch.set_num_threads(2)

    def torch_all() -> None:
        res = np.empty(n)
        with torch.inference_mode():
            for i in range(0, n, 128):
                res[i:i + 128] = net(torch.from_numpy(windows[i:i + 128])).double().numpy()
        out["torch"] = res

    secs = best_of(torch_all, repeats)
    report("torch network only, 2 intra-op threads", secs, True)
    return ends, out["ort"], out["torch"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="bundle directory or final_model.pt")
    ap.add_argument("--bars", type=int, default=None, help="use only the last N bars")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--single", type=int, default=3000, help="single-window calls timed")
    args = ap.parse_args()
    frame, source = bench_frame(args.bars)
    # a --model that is not a bundle is refused (bench_bundle alone would train one instead)
    bundle = load_bundle(args.model) if args.model else bench_bundle(None)
    state = torch.load(Path(bundle.path) / "final_model.pt", map_location="cpu", weights_only=True)
    net = reference_network(bundle.meta["model"], state, len(bundle.feature_names))
    macs = macs_per_window(bundle.meta["model"], bundle.window, len(bundle.feature_names))
    print(f"bars: {len(frame):,} ({source}); torch {torch.__version__}; onnxruntime "
          f"{__import__('onnxruntime').__version__}")
    x = np.random.default_rng(0).standard_normal((bundle.window, len(bundle.feature_names))).astype(np.float32)
    bench_single(bundle, net, x, args.single)
    ends, ort_logit, torch_logit = bench_batch(bundle, net, frame, args.repeats, macs)
    labels = triple_barrier_events(frame, bundle.label_cfg, timeframe=bundle.timeframe)["label"].to_numpy(float)
    y = labels[ends]
    ok = np.isfinite(y)
    print(f"ORT vs torch on {len(ends):,} windows: max |logit diff| {np.max(np.abs(ort_logit - torch_logit)):.2e}; "
          f"AUC {auc(y[ok], ort_logit[ok]):.9f} vs {auc(y[ok], torch_logit[ok]):.9f} "
          f"(diff {abs(auc(y[ok], ort_logit[ok]) - auc(y[ok], torch_logit[ok])):.1e})")


if __name__ == "__main__":
    main()
