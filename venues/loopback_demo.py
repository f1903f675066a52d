"""Demo: download candles from a loopback Binance with the real ccxt client, then resume.

    python -m venues.loopback_demo --output data/raw/demo_btc_usdt_15m.csv

Serves generated candles (``core.synthetic.synthetic_ohlcv``, deterministic) on
127.0.0.1, runs ``nts download`` against it (a subprocess with ``--exchange-url``, exactly
what a user types), then moves the exchange clock forward and downloads again with a
later ``--end`` to show the resume, and finally checks the file against what was served.
A 429 and a dropped connection are injected during the second run to show the retries.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

from venues.loopback import LoopbackExchange
from core.ohlcv import load_ohlcv
from core.synthetic import synthetic_ohlcv


def _nts_download(url: str, start: str, end: str, output: Path) -> None:
    cmd = [sys.executable, "-m", "cli.main", "download", "--exchange", "binance", "--symbol", "BTC/USDT",
           "--timeframe", "15m", "--start", start, "--end", end, "--output", str(output),
           "--exchange-url", url, "--set", "broker.backoff_s=0.05"]
    print("$ nts " + " ".join(cmd[3:]), flush=True)
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode != 0:
        raise SystemExit(proc.returncode)


def main(argv: list[str] | None = None) -> int:
    """Run the demo; exit 0 only when the downloaded file equals the served candles."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="data/raw/demo_btc_usdt_15m.csv")
    ap.add_argument("--bars", type=int, default=3000, help="generated bars served")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)

    output = Path(args.output)
    output.unlink(missing_ok=True)  # the demo shows a fresh download, then a resume
    candles = synthetic_ohlcv(args.bars, seed=args.seed, start="2024-01-01", gaps={args.bars // 2: 10})
    step = pd.Timedelta("15min")
    first_part = candles.index[int(len(candles) * 0.6)]
    with LoopbackExchange(candles, now=first_part + step / 3) as exchange:
        print(f"loopback Binance on {exchange.url}: {len(candles):,} generated 15m bars "
              f"{candles.index[0]} .. {candles.index[-1]}; exchange clock at {pd.Timestamp(exchange.now_ms, unit='ms')}"
              " (one bar still open)")
        _nts_download(exchange.url, "2024-01-01", "2030-01-01", output)
        rows_first = len(load_ohlcv(output))

        print("\n-- the exchange clock moves on; download again with a later --end (resume); "
              "one 429 and one dropped connection are injected")
        exchange.set_now(candles.index[-1] + 2 * step)
        exchange.reset_log()
        exchange.inject("status", status=429, retry_after=0.2, path="/api/v3/klines")
        exchange.inject("drop", path="/api/v3/klines")
        _nts_download(exchange.url, "2024-01-01", "2030-12-31", output)
        starts = [pd.Timestamp(int(r.params["startTime"]), unit="ms", tz="UTC")
                  for r in exchange.requests_to("/api/v3/klines")]
        print(f"resume requests (startTime): {', '.join(map(str, starts))}; "
              f"request outcomes: {[r.outcome for r in exchange.requests_to('/api/v3/klines')]}")
        served = exchange.closed_candles("BTC/USDT")

    got = load_ohlcv(output)
    same = got.index.equals(served.index) and (got.to_numpy() == served.to_numpy()).all()
    print(f"\nfile {output}: {len(got):,} bars ({rows_first:,} after the first run); "
          f"served closed bars: {len(served):,}; identical values and timestamps: {'YES' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
