"""Generated candles for tests, demos and benchmarks (a seeded random walk, valid OHLC)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from core.timeframes import timeframe_seconds


def synthetic_ohlcv(
    n: int = 2000,
    seed: int = 0,
    start: str = "2024-01-01",
    timeframe: str = "15m",
    vol: float = 0.004,
    drift: float = 0.0,
    gaps: dict[int, int] | None = None,
    price: float = 30000.0,
) -> pd.DataFrame:
    """Canonical OHLCV frame of ``n`` bars from a seeded log-random walk.

    ``gaps`` maps a bar position to a number of bars removed after it, so that the
    result has real missing bars (timestamps jump) while staying on the grid.
    """
    rng = np.random.default_rng(seed)
    step = pd.Timedelta(seconds=timeframe_seconds(timeframe))
    rets = rng.normal(drift, vol, n)
    close = price * np.exp(np.cumsum(rets))
    open_ = np.r_[price, close[:-1]] * np.exp(rng.normal(0, vol * 0.05, n))
    wick_hi = np.abs(rng.normal(0, vol * 0.6, n))
    wick_lo = np.abs(rng.normal(0, vol * 0.6, n))
    high = np.maximum(open_, close) * np.exp(wick_hi)
    low = np.minimum(open_, close) * np.exp(-wick_lo)
    volume = rng.lognormal(mean=3.0, sigma=0.5, size=n)
    offsets = np.arange(n, dtype=np.int64)
    for pos, missing in sorted((gaps or {}).items()):
        offsets[pos + 1:] += int(missing)
    index = pd.DatetimeIndex(pd.Timestamp(start, tz="UTC") + offsets * step, name="timestamp").as_unit("ns")
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=index)


def main(argv: list[str] | None = None) -> None:
    """``python -m core.synthetic --bars N --output FILE``: write generated candles as CSV."""
    import argparse

    from core.ohlcv import write_ohlcv_csv

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--bars", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", required=True)
    args = ap.parse_args(argv)
    write_ohlcv_csv(synthetic_ohlcv(args.bars, seed=args.seed), args.output)
    print(f"wrote {args.bars:,} generated bars to {args.output}")


if __name__ == "__main__":
    main()
