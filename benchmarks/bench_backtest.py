"""Backtest speed: a full TCNStrategy backtest vs a plain SMA(5/20) crossover, same bars, one run.

Usage: .venv/bin/python benchmarks/bench_backtest.py [--model artifacts/tcn_v1] [--bars N] [--repeats 2]

Both runs use the same feed class (strategies.backtest.FrameFeed), broker and cost model,
backtrader runonce mode, over the real BTC/USDT candles when ``../shared/data`` exists
(85,189 bars), else 100,000 generated bars. The TCN run is the library's ``run_backtest``
with everything a user gets (batch TCN scoring in ``once()``, features for the vol forecast,
realised vol, risk checks, analyzers); it is the whole span: ``--allow-in-sample`` semantics,
since only time is measured here. Without ``--model`` a small bundle is trained on generated
bars first (same network size as the default; training time is not counted).
Prints best-of-``repeats`` wall times (SMA, first and cached TCN runs interleaved round by
round) and the ratios TCN / SMA for a first run (empty probability cache; goal <= 2.2x in
window mode) and a second run (cache filled by the first; goal <= 1.0x), the CPU seconds of
the same runs, then the split: the batch scoring alone (ONNX Runtime, windows/s), and the same
pipeline fed a precomputed probability.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import backtrader as bt

from _timing import bench_bundle, bench_frame, best_of, timed  # puts the repository on sys.path
from core.config import load_config  # noqa: E402
from core.costs import Costs  # noqa: E402
from models.bundle import load_bundle  # noqa: E402
from strategies.backtest import frame_feed, run_backtest  # noqa: E402
from strategies.base import ModelStrategy  # noqa: E402
from strategies.bt_broker import apply_costs  # noqa: E402


class SmaCross(bt.Strategy):
    """Baseline: long 95% of equity while SMA(5) > SMA(20), flat otherwise."""

    def __init__(self) -> None:
        self.cross = bt.indicators.CrossOver(bt.indicators.SMA(self.data.close, period=5),
                                             bt.indicators.SMA(self.data.close, period=20))

    def next(self) -> None:
        if self.cross[0] > 0 and not self.position:
            self.buy(size=0.95 * self.broker.getvalue() / self.data.close[0])
        elif self.cross[0] < 0 and self.position:
            self.close()


class PrecomputedP(ModelStrategy):
    """The same pipeline with P read from a precomputed ``prob`` column (no network in the run)."""

    def make_probability(self):
        return self.data.prob


def run_sma(frame, cfg) -> None:
    """The SMA(5/20) crossover backtest over ``frame`` (same feed, costs and runonce mode)."""
    cerebro = bt.Cerebro(stdstats=False, runonce=True, preload=True)
    cerebro.adddata(frame_feed(frame))
    apply_costs(cerebro, Costs.from_config(cfg), cash=cfg.execution.cash)
    cerebro.addstrategy(SmaCross)
    cerebro.run()


def run_tcn(frame, cfg, bundle, cache_dir: Path) -> dict:
    """The library's TCN backtest over the whole of ``frame``; its metrics."""
    res = run_backtest(bundle, frame, cfg, start=frame.index[0], allow_in_sample=True, progress=False,
                       prob_cache=cache_dir)
    return res.metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="bundle directory or final_model.pt")
    ap.add_argument("--bars", type=int, default=None, help="use only the last N bars")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    cfg = load_config()
    frame, source = bench_frame(args.bars)
    # a --model that is not a bundle is refused (bench_bundle alone would train one instead)
    bundle = load_bundle(args.model) if args.model else bench_bundle(None)
    print(f"bars: {len(frame):,} ({source}); bundle window {bundle.window}, min_bars {bundle.min_bars}, "
          f"scoring threads {bundle.threads}, history_bars {bundle.history_bars}")

    # Interleaved rounds (SMA, first TCN run, cached TCN run), so a change of the machine's load
    # during the benchmark hits every kind of run alike. First run: an empty probability cache
    # (the network scores every window); cached run: the cache the round's first run left.
    # each run: (metrics, wall seconds, CPU seconds)
    sma_runs, tcn_runs, cached_runs = [], [], []
    for _ in range(args.repeats):
        cache = Path(tempfile.mkdtemp(prefix="nts-bench-cache-"))
        sma_runs.append(timed(lambda: run_sma(frame, cfg)))
        tcn_runs.append(timed(lambda: run_tcn(frame, cfg, bundle, cache)))
        cached_runs.append(timed(lambda: run_tcn(frame, cfg, bundle, cache)))
    assert all(r[0]["run"]["probabilities"].startswith("probability cache") for r in cached_runs)
    _, sma, sma_cpu = min(sma_runs, key=lambda r: r[1])
    m, tcn, tcn_cpu = min(tcn_runs, key=lambda r: r[1])
    _, cached, cached_cpu = min(cached_runs, key=lambda r: r[1])
    m = m["strategy"]
    probs = {}
    score = best_of(lambda: probs.__setitem__("p", bundle.predict_proba(frame)), args.repeats)
    with_p = frame.assign(prob=probs["p"].to_numpy())
    pipe = best_of(lambda: run_backtest(None, with_p, cfg, strategy=PrecomputedP, start=frame.index[0],
                                        progress=False), args.repeats)
    print(f"SMA(5/20) crossover backtest : {sma:8.2f} s  ({len(frame) / sma:,.0f} bars/s)")
    print(f"TCN strategy full backtest   : {tcn:8.2f} s  ({len(frame) / tcn:,.0f} bars/s; "
          f"{m['trades']} trades)")
    print(f"TCN backtest, cached P       : {cached:8.2f} s  (second run: probability cache, no network)")
    print(f"ratio TCN / SMA, first run   : {tcn / sma:8.2f}x  (goal <= 2.2x, window mode)")
    print(f"ratio TCN / SMA, cached run  : {cached / sma:8.2f}x  (goal <= 1.0x)")
    print(f"  CPU seconds of the same runs (all threads): SMA {sma_cpu:.2f}, first {tcn_cpu:.2f} "
          f"({tcn_cpu / sma_cpu:.2f}x), cached {cached_cpu:.2f} ({cached_cpu / sma_cpu:.2f}x)")
    print(f"  of which: batch TCN scoring (bundle.predict_proba, {len(frame):,} bars, ONNX Runtime on "
          f"{bundle.threads} worker threads): {score:.2f} s = {len(frame) / score:,.0f} bars/s")
    print(f"  same pipeline with precomputed P (no network): {pipe:.2f} s = {pipe / sma:.2f}x SMA")


if __name__ == "__main__":
    main()
