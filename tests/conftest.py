"""Shared fixtures: generated candles everywhere, the real candles when ../shared/data exists."""
from __future__ import annotations

from pathlib import Path

import pytest

from core.synthetic import synthetic_ohlcv

@pytest.fixture(autouse=True, scope="session")
def _logs_in_a_temp_dir(tmp_path_factory):
    """CLI commands log to logs/ and cache probabilities in cache/; keep both out of the working tree."""
    import os

    os.environ["NTS_LOG_DIR"] = str(tmp_path_factory.mktemp("logs"))
    os.environ["NTS_CACHE_DIR"] = str(tmp_path_factory.mktemp("prob-cache"))  # never the working tree's cache/


REAL_CANDLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "btc_usdt_15m.csv.gz"


@pytest.fixture(scope="session")
def real_candles_path() -> Path:
    """Path of the real BTC/USDT 15m candles; the test is skipped when the folder is absent."""
    if not REAL_CANDLES.exists():
        pytest.skip(f"real candles not present at {REAL_CANDLES}")
    return REAL_CANDLES


@pytest.fixture(scope="session")
def real_candles(real_candles_path):
    """The real candles as a canonical frame (loaded once per session)."""
    from core.ohlcv import load_ohlcv

    return load_ohlcv(real_candles_path)


@pytest.fixture
def candles():
    """3,000 generated bars with one 10-bar gap after bar 1,500."""
    return synthetic_ohlcv(3000, seed=7, gaps={1500: 10})


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A model bundle trained end to end (2 epochs, default network) on 3,000 generated bars
    with one 10-bar gap; returns the bundle directory. Takes a few seconds, once per session."""
    from core.config import load_config
    from models.train import train_bundle

    frame = synthetic_ohlcv(3000, seed=11, gaps={1800: 10})
    cfg = load_config(None, ["training.epochs=2", "training.batch_size=128", "training.threads=1"])
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    train_bundle(frame, cfg, out, progress=False)
    return out
