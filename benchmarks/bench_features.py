"""Feature speed: batch ``compute_features`` vs the per-bar ``StreamingFeatures``, same run.

Usage: .venv/bin/python benchmarks/bench_features.py [--bars 100000]

Prints the batch time over all bars (best of 3), the streaming time per bar (one full
pass), their ratio, and the largest |batch - streaming| difference after warm-up (the
test suite requires <= 1e-9 relative/absolute). Uses 100,000 generated bars with two gaps
and the real BTC/USDT candles when ``../shared/data`` exists.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pandas as pd
from tqdm import tqdm

from _timing import REAL, best_of  # puts the repository on sys.path
from core.ohlcv import load_ohlcv  # noqa: E402
from core.synthetic import synthetic_ohlcv  # noqa: E402
from models.features import StreamingFeatures, compute_features  # noqa: E402


def bench(name: str, frame: pd.DataFrame) -> None:
    """Time both entry points on one frame and print a block."""
    best = best_of(lambda: compute_features(frame), 3)
    batch = compute_features(frame).to_numpy()
    sf = StreamingFeatures()
    cols = [frame[c].to_numpy() for c in ("open", "high", "low", "close", "volume")]
    rows = np.empty_like(batch)
    t0 = time.perf_counter()
    for i, (ts, o, h, lo, c, v) in enumerate(tqdm(zip(frame.index, *cols), total=len(frame), desc=name,
                                                    file=sys.stderr, leave=False)):
        rows[i] = sf.update(ts, o, h, lo, c, v)
    t_stream = time.perf_counter() - t0
    same_nan = np.array_equal(np.isnan(batch), np.isnan(rows))
    diff = np.nanmax(np.abs(batch - rows) / np.maximum(1.0, np.abs(batch)))
    print(f"\n{name}: {len(frame):,} bars")
    print(f"  batch compute_features:  {best * 1e3:8.1f} ms total ({best / len(frame) * 1e6:.2f} us/bar)")
    print(f"  streaming update():      {t_stream * 1e3:8.1f} ms total ({t_stream / len(frame) * 1e6:.1f} us/bar)")
    print(f"  batch is {t_stream / best:.0f}x faster per bar; NaN pattern equal: {same_nan}; "
          f"max |diff| / max(1, |value|): {diff:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=100_000)
    opts = ap.parse_args()
    bench("generated", synthetic_ohlcv(opts.bars, seed=1, vol=0.0025, gaps={opts.bars // 3: 1, opts.bars // 2: 40}))
    if REAL.exists():
        bench("real BTC/USDT 15m", load_ohlcv(REAL))
    else:
        print(f"\n(real candles not found at {REAL}; skipped)")


if __name__ == "__main__":
    main()
