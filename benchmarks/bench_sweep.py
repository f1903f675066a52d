"""Sweep speed and memory: a 1,000-row grid over the real candles vs one backtrader run.

Usage: .venv/bin/python benchmarks/bench_sweep.py [--model artifacts/tcn_v1] [--bars N] [--rows 1000]

Over the real BTC/USDT candles when ``../shared/data`` exists (85,189 bars), else 100,000
generated bars. The whole data span is swept (``allow_in_sample``: only time is measured
here, the figures are not a result). The grid crosses take profit, stop, max hold, deadband
and centre; the centres sit inside the model's probability range so that rows really trade
(a grid of flat rows would time nothing). Probabilities come from the cache: a first call
scores the network once (reported), every row after that reuses it.

Prints: the time of one ``run_backtest`` (backtrader) on the same span with the cache filled,
the sweep's time (first run, then the steady state), the ratio sweep / one backtrader run
(goal <= 0.15 for 1,000 rows), rows/s and bar-rows/s (goal >= 100 M) with the CPU time the
process spent, the memory: the peak of Python/numpy allocations during the sweep
(tracemalloc) and the process's peak resident set (``resource.getrusage``) against its size
before the sweep (goal: growth <= 200 MB), and the compile time of the kernels measured in
two fresh processes over an empty cache folder (:mod:`core.jit`): the first compiles, the
second loads the first's cache (goal <= 1 s).
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numba
import numpy as np

from _timing import ROOT, bench_bundle, bench_frame  # puts the repository on sys.path
from core.config import load_config  # noqa: E402
from strategies.backtest import run_backtest  # noqa: E402
from sweeps.engine import axis_defaults, prepare_span, run_sweep  # noqa: E402
from sweeps.grid import load_grid  # noqa: E402


def rss_mb() -> float:
    """Current resident set size (MB), from /proc (Linux)."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def max_rss_mb() -> float:
    """Peak resident set size of this process so far (MB; ru_maxrss is in kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


COMPILE_PROBE = """
import time
t0 = time.perf_counter()
import numpy as np
from core.config import RiskConfig
from core.policy import Policy
from core.simulator import RunOptions, simulate
from core.synthetic import synthetic_ohlcv
from sweeps.kernel import KernelInputs, run_chunk
from core.risk import risk_vector
t1 = time.perf_counter()
f = synthetic_ohlcv(400, seed=1, vol=0.003)
n = len(f)
p = np.random.default_rng(0).uniform(0.3, 1.0, n)
pol = Policy.default()
simulate(pol, RiskConfig(), f, p, np.full(n, 0.5), np.full(n, 0.01), 10000.0, RunOptions(start=10))
arr = {c: np.ascontiguousarray(f[c].to_numpy()) for c in ("open", "high", "low", "close")}
k = KernelInputs(f.index.asi8.copy(), arr["open"], arr["high"], arr["low"], arr["close"], p, np.full(n, 0.5),
                 np.full(n, 0.01), 10, 10, n - 1, 10000.0, False, risk_vector(RiskConfig()),
                 np.array([0, 100, 200, 300, n - 11]), np.array([0, n - 11]))
s = pol.signals(p)
k = k.with_hooks(s, pol.target_weights(s, np.full(n, 0.5)), np.ones(n, dtype=bool))
run_chunk(k, np.column_stack([np.stack([pol.to_array()] * 2), np.zeros(2)]))
print(f"{t1 - t0:.2f} {time.perf_counter() - t1:.2f}")
"""


def compile_seconds() -> tuple[tuple[float, float], tuple[float, float]]:
    """(import, first calls) seconds of two fresh processes over one empty cache folder: the
    first compiles every kernel, the second loads them from the first's cache."""
    cache = tempfile.mkdtemp(prefix="nts-bench-numba-")
    env = {**os.environ, "NTS_NUMBA_CACHE": cache, "PYTHONPATH": str(ROOT)}
    out = []
    for _ in range(2):
        res = subprocess.run([sys.executable, "-c", COMPILE_PROBE], env=env, capture_output=True, text=True,
                             check=True, cwd=ROOT)
        a, b = res.stdout.split()[-2:]
        out.append((float(a), float(b)))
    return out[0], out[1]


def grid_overrides(prob: np.ndarray, rows: int) -> list[str]:
    """Axes whose product is ``rows`` (1,000 by default), centres inside the P range."""
    q = np.nanquantile(prob, [0.05, 0.15, 0.3, 0.5])
    centres = ",".join(f"{c:.4f}" for c in q)
    base = ["profit=0.004,0.006,0.008,0.010,0.012", "stop=0.002,0.003,0.004,0.005,0.006", "max_hold=8,16",
            "deadband=0,0.05,0.1,0.2,0.3", f"center={centres}", "limit_confidence=0.5"]
    if rows != 1000:  # scale the deadband axis for other sizes (1000 = 5 * 5 * 2 * 5 * 4)
        n = max(1, rows // 200)
        base[3] = "deadband=" + ",".join(f"{x:g}" for x in np.round(np.linspace(0, 0.6, n), 4))
    return base + ["blocks=16", "folds=4"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "artifacts" / "tcn_v1"), help="bundle directory")
    ap.add_argument("--bars", type=int, default=None, help="use only the last N bars")
    ap.add_argument("--rows", type=int, default=1000)
    args = ap.parse_args()

    frame, source = bench_frame(args.bars)
    bundle = bench_bundle(args.model)
    cfg = load_config()
    cache = Path(tempfile.mkdtemp(prefix="nts-bench-cache-"))
    start = frame.index[0]

    t0 = time.perf_counter()
    data = prepare_span(bundle, frame, cfg, start=start, allow_in_sample=True, cache_dir=cache, blocks=16, folds=4)
    t_score = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = prepare_span(bundle, frame, cfg, start=start, allow_in_sample=True, cache_dir=cache, blocks=16, folds=4)
    t_cached = time.perf_counter() - t0
    k = data.inputs
    grid = load_grid(None, grid_overrides(k.prob[k.start:], args.rows), axis_defaults(data))
    n_bars = k.last - k.first + 1
    print(f"bars: {len(frame):,} ({source}); span {n_bars:,} bars; grid {grid.size:,} rows; numba threads "
          f"{numba.get_num_threads()}")
    print(f"score once (network, empty cache): {t_score:.2f} s; again from the cache: {t_cached:.2f} s")

    # one backtrader run on the same span, P from the cache, a row of the grid
    mid = grid.combinations().iloc[grid.size // 2]
    bt_cfg = load_config(None, [f"strategy.center={mid['center']}", f"strategy.deadband={mid['deadband']}",
                                f"strategy.max_hold={int(mid['max_hold'])}", f"labels.profit={mid['profit']}",
                                f"labels.stop={mid['stop']}", f"strategy.limit_confidence={mid['limit_confidence']}"])
    t0 = time.perf_counter()
    bt = run_backtest(bundle, frame, bt_cfg, start=start, allow_in_sample=True, progress=False, prob_cache=cache,
                      barriers="config")
    t_bt = time.perf_counter() - t0

    rss0, peak0 = rss_mb(), max_rss_mb()
    t0 = time.perf_counter()
    first = run_sweep(data, grid)
    t_first = time.perf_counter() - t0
    peak1 = max_rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    res = run_sweep(data, grid)
    t_sweep, c_sweep = time.perf_counter() - t0, time.process_time() - c0
    t_sim = res.seconds["simulate"]
    assert np.array_equal(first.raw, res.raw)
    tracemalloc.start()
    run_sweep(data, grid)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    (imp_cold, cold), (imp_warm, warm) = compile_seconds()

    row = grid.size // 2
    same = abs(res.table.at[row, "final_equity"] / bt.metrics["strategy"]["end_equity"] - 1)
    trades = res.table["trades"]
    bar_rows = grid.size * n_bars
    print(f"one backtrader run (run_backtest, cached P): {t_bt:8.2f} s  ({bt.metrics['strategy']['trades']:,} trades; "
          f"the sweep's row {row}: {int(trades[row]):,} trades, final equity rel. diff {same:.1e})")
    print(f"sweep, first run in this process: {t_first:8.2f} s (kernels from the cache or compiled)")
    print(f"sweep, {grid.size:,} rows: {t_sweep:8.2f} s = {t_sweep / t_bt:.3f}x one backtrader run (goal <= 0.15; "
          f"{grid.size * t_bt / t_sweep:,.0f}x faster per row); split {res.seconds}")
    print(f"kernel: {t_sim:.2f} s for {bar_rows / 1e6:,.1f} M bar-rows = {bar_rows / t_sim / 1e6:,.1f} M bar-rows/s "
          f"(goal >= 100 M), {grid.size / t_sim:,.1f} rows/s; whole sweep {bar_rows / t_sweep / 1e6:,.1f} M bar-rows/s, "
          f"process CPU {c_sweep:.2f} s on {numba.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f}")
    print(f"trades per row: median {int(trades.median()):,}, max {int(trades.max()):,}")
    print(f"compile (fresh processes, empty cache): first {cold:.2f} s (+{imp_cold:.2f} s imports), "
          f"second process {warm:.2f} s (+{imp_warm:.2f} s imports; goal <= 1 s)")
    print(f"memory: tracemalloc peak during a sweep {traced_peak / 2**20:,.1f} MB (Python/numpy allocations); "
          f"process peak RSS {max(peak0, peak1):,.0f} MB ({rss0:,.0f} MB before the sweep, peak after the first sweep "
          f"{peak1:,.0f} MB: +{max(0.0, peak1 - rss0):,.0f} MB at most for the sweep; goal <= 200 MB)")
    groups = res.kernel_inputs.signal.shape[0]
    print(f"no bars x rows matrix: the largest per-row output is moments {res.moments.shape} "
          f"= {res.moments.nbytes / 2**20:.1f} MB; hook groups {groups} x {len(k.close):,} bars "
          f"= {groups * len(k.close) * 17 / 2**20:.1f} MB; per-thread buffers "
          f"{n_bars * 2 * 10 * 8 / 2**20 + n_bars * 3 * 8 / 2**20:.1f} MB")

if __name__ == "__main__":
    main()
