"""Shared fixtures: generated candles everywhere, the real candles when ../shared/data exists."""
from __future__ import annotations

from pathlib import Path

import pytest

from core.synthetic import synthetic_ohlcv

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
