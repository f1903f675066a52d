"""Helpers the benchmark scripts share: where the real candles are, which bars to time, a
best-of timer, a wall + CPU timer and a bundle to score with.

Not a benchmark itself (``make bench`` runs ``bench_*.py`` only). The scripts import it as
``from _timing import ...``: Python puts a script's own folder first on ``sys.path``.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the scripts run as files, from any folder
    sys.path.insert(0, str(ROOT))

from core.config import load_config  # noqa: E402
from core.ohlcv import load_ohlcv  # noqa: E402
from core.synthetic import synthetic_ohlcv  # noqa: E402

#: the real BTC/USDT 15m candles, beside the repository (absent on a fresh machine)
REAL = ROOT.parent / "shared" / "data" / "btc_usdt_15m.csv.gz"

T = TypeVar("T")


def best_of(fn: Callable[[], Any], repeat: int) -> float:
    """Shortest wall time of ``repeat`` calls (the run least disturbed by other processes)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def timed(fn: Callable[[], T]) -> tuple[T, float, float]:
    """``fn()``'s result, the wall seconds it took and the process CPU seconds (all threads:
    the rate a busy core reaches, whatever else the machine runs)."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def bench_frame(bars: int | None = None, generated: int = 100_000) -> tuple[Any, str]:
    """The candles to time and their source: the real candles when present, else
    ``generated`` bars with one 50-bar gap; only the last ``bars`` bars when given."""
    if REAL.exists():
        frame, source = load_ohlcv(REAL), f"real {REAL.name}"
    else:
        frame, source = synthetic_ohlcv(generated, seed=1, gaps={int(generated * 0.4): 50}), "generated"
    if bars:
        frame = frame.iloc[-bars:]
    return frame, source


def bench_bundle(model: str | Path | None) -> Any:
    """The bundle at ``model`` when it is one, else a small bundle trained here on generated
    bars (not timed; said on stdout)."""
    from models.bundle import load_bundle  # torch: only the scripts that score pay for it

    if model is not None and Path(model, "bundle.json").exists():
        return load_bundle(model)
    from models.train import train_bundle

    tmp = Path(tempfile.mkdtemp(prefix="nts-bench-")) / "bundle"
    print("training a small bundle on generated bars (not timed) ...", flush=True)
    cfg = load_config(None, ["training.epochs=1", "training.batch_size=256", "training.threads=2",
                             "training.max_samples=2000"])
    train_bundle(synthetic_ohlcv(4000, seed=11), cfg, tmp, progress=False)
    return load_bundle(tmp)
