"""Labelling speed: numba-compiled triple barrier vs the plain Python loop, same run.

Usage: .venv/bin/python benchmarks/bench_labels.py [--bars 100000] [--repeat 7]

Data: 100,000 generated bars (one gap), and the real BTC/USDT 15m candles when
``../shared/data`` exists. Both implementations are run in full (no scaling from a
subset). Three levels are timed, best of ``--repeat`` runs each:

* core:      the labelling itself on prepared inputs (high, low, close, timestamps):
             the compiled kernel vs the Python loop over lists (its fastest form: list
             indexing beats numpy scalars); both include the gap check;
* arrays:    plus input validation and conversion (``label_arrays`` vs
             ``reference_label_arrays``);
* table:     the public functions that return the event table (``triple_barrier_events``
             vs ``label_events_reference``); building the pandas table is a fixed cost
             shared by both, so this ratio is the smallest.

The numba compile time (first call, or loading its on-disk cache) is reported apart.
Both must give identical events or the script exits 1. Target: core ratio >= 100x.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pandas as pd

from _timing import REAL, best_of  # puts the repository on sys.path
from core.config import LabelConfig  # noqa: E402
from core.ohlcv import load_ohlcv  # noqa: E402
from core.synthetic import synthetic_ohlcv  # noqa: E402
from core.timeframes import timeframe_seconds  # noqa: E402
from models import labels as L  # noqa: E402

TARGET = 100.0


def python_core(high: list, low: list, close: list, ts: list, cfg: LabelConfig, span_ns: int) -> list:
    """The reference loop body, run on prepared lists (same code path as the reference)."""
    return L._reference_loop(high, low, close, ts, cfg.profit, cfg.stop, cfg.horizon, cfg.tie == "stop", span_ns)


def bench(name: str, frame: pd.DataFrame, cfg: LabelConfig, repeat: int) -> float:
    """Time the three levels on one frame, check equality, print a block; return core ratio."""
    tf = "15m"
    high, low, close, ts = L._arrays(frame, name)
    lists = (high.tolist(), low.tolist(), close.tolist(), ts.tolist())
    span_ns = cfg.horizon * timeframe_seconds(tf) * 1_000_000_000
    args = (float(cfg.profit), float(cfg.stop), int(cfg.horizon), cfg.tie == "stop")

    def fast_core():
        return L._label_kernel(high, low, close, ts, span_ns, *args)

    rep_slow = max(1, repeat // 2)
    t_core_fast = best_of(fast_core, repeat)
    t_core_slow = best_of(lambda: python_core(*lists, cfg, span_ns), rep_slow)
    t_arr_fast = best_of(lambda: L.label_arrays(frame, cfg, tf), repeat)
    t_arr_slow = best_of(lambda: L.reference_label_arrays(frame, cfg, tf), rep_slow)
    t_tab_fast = best_of(lambda: L.triple_barrier_events(frame, cfg, tf), repeat)
    t_tab_slow = best_of(lambda: L.label_events_reference(frame, cfg, tf), rep_slow)

    fast_ev = L.triple_barrier_events(frame, cfg, tf)
    slow_ev = L.label_events_reference(frame, cfg, tf)
    try:
        pd.testing.assert_frame_equal(fast_ev, slow_ev, check_exact=True)
    except AssertionError as exc:
        print(f"{name}: MISMATCH between vectorised and reference events: {exc}")
        sys.exit(1)
    s = L.label_summary(fast_ev)
    print(f"\n{name}: {len(frame):,} bars, {s['labelled']:,} labelled, base rate {s['base_rate']:.4f}; "
          f"events identical: yes")
    print(f"  {'level':<8}{'compiled':>12}{'python loop':>14}{'ratio':>9}")
    for level, fast, slow in (("core", t_core_fast, t_core_slow), ("arrays", t_arr_fast, t_arr_slow),
                              ("table", t_tab_fast, t_tab_slow)):
        print(f"  {level:<8}{fast * 1e3:>10.2f}ms{slow * 1e3:>12.1f}ms{slow / fast:>8.0f}x")
    ratio = t_core_slow / t_core_fast
    verdict = "meets" if ratio >= TARGET else "BELOW"
    print(f"  labelling speed ratio (core): {ratio:.0f}x -> {verdict} the {TARGET:.0f}x target")
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=100_000, help="generated bars (default 100,000)")
    ap.add_argument("--repeat", type=int, default=7, help="timed runs per measurement (best kept)")
    opts = ap.parse_args()
    cfg = LabelConfig()
    print(f"barriers: profit {cfg.profit}, stop {cfg.stop}, horizon {cfg.horizon}, tie {cfg.tie}")

    small = synthetic_ohlcv(100, seed=0)
    t0 = time.perf_counter()
    L.triple_barrier_events(small, cfg)
    print(f"numba compile / cache load (first call, not in the timings): {time.perf_counter() - t0:.2f}s")

    # BTC-like 15m volatility (0.25% per bar) so that exits are spread over the horizon.
    gen = synthetic_ohlcv(opts.bars, seed=1, vol=0.0025, gaps={opts.bars // 2: 3})
    ratios = [bench("generated", gen, cfg, opts.repeat)]
    if REAL.exists():
        ratios.append(bench("real BTC/USDT 15m", load_ohlcv(REAL), cfg, opts.repeat))
    else:
        print(f"\n(real candles not found at {REAL}; skipped)")
    print(f"\nsummary: core speed ratio {' / '.join(f'{r:.0f}x' for r in ratios)} "
          f"({'all meet' if min(ratios) >= TARGET else 'not all meet'} the {TARGET:.0f}x target)")


if __name__ == "__main__":
    main()
