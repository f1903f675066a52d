"""Shared fixtures: generated candles everywhere, the real candles when ../shared/data exists."""
from __future__ import annotations

import os
from pathlib import Path

# One intra-op thread per test process (set before anything imports torch; inherited by the CLI
# subprocesses the tests start). `make test` runs 2 xdist workers on 2 cores: torch's default of
# one OpenMP thread per core gave each worker 2 threads, and on a busy machine a parallel region
# waits (spinning) for a descheduled thread (test_training's fit_network tests, which train
# outside train_bundle's 1-thread scope, took 3-30 s for the same 3 fits depending on load).
# Results do not depend on it: tests that compare runs compare runs of the same setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from core.synthetic import synthetic_ohlcv
from fixtures.bundle_cache import cached_bundle

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


def _train(frame_fn, overrides):
    """Trainer for fixtures.bundle_cache: ``frame_fn()`` bars, default config plus ``overrides``."""
    def train(out: Path) -> None:
        from core.config import load_config
        from models.train import train_bundle

        train_bundle(frame_fn(), load_config(None, overrides), out, progress=False)
    return train


TINY = ["training.epochs=2", "training.batch_size=128", "training.threads=1"]
FAST = ["training.epochs=1", "training.batch_size=128", "training.threads=1", "model.window=32",
        "features.ewma_vol_fast_span=12", "features.ewma_vol_slow_span=24",
        "features.rsi_window=8", "features.volume_z_window=48"]


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A model bundle trained end to end (2 epochs, default network) on 3,000 generated bars
    with one 10-bar gap; returns the bundle directory (this session's own copy). Trained once
    per code version and shared by the xdist workers (tests/fixtures/bundle_cache.py)."""
    return cached_bundle("tiny", f"synthetic_ohlcv(3000, seed=11, gaps={{1800: 10}}) {TINY}",
                         _train(lambda: synthetic_ohlcv(3000, seed=11, gaps={1800: 10}), TINY),
                         tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture(scope="session")
def fast_bundle(tmp_path_factory) -> Path:
    """A bundle with short feature memories (warm-up ~360 bars instead of 1,391) and a 32-bar
    window, for the tests that start many sessions: each start feeds the whole warm-up through
    the streaming path, so this keeps starts cheap. 1 epoch on 2,500 generated bars (seed 13);
    cached like ``tiny_bundle``. The live, paper, clock, ban and protection tests all use this one
    (each used to train its own twin per module). A test module that defines its own
    ``fast_bundle`` overrides it."""
    return cached_bundle("fast", f"synthetic_ohlcv(2500, seed=13) {FAST}",
                         _train(lambda: synthetic_ohlcv(2500, seed=13), FAST),
                         tmp_path_factory.mktemp("bundles") / "fast")


# Files whose tests take the longest (per-file CPU and wall, 2026-12-04, testspeed2's report):
# started first so that under `--dist loadfile` no worker picks one of them up last while the
# other idles. test_live and test_paper_session lead: besides their CPU they wait on real clocks
# (SIGKILL/restart tests of `nts live` / `nts paper` subprocesses on an accelerated replay clock,
# 1.5-3 min wall each file), and those waits overlap best with the other worker's CPU work.
HEAVY_FIRST = ("test_live.py", "test_paper_session.py", "test_walkforward.py", "test_walkforward_ensemble.py",
               "test_sweep.py",
               "test_simulator_parity.py", "test_training.py", "test_runspec.py", "test_multisymbol.py",
               "test_server_session.py", "test_backtest_cli.py", "test_scorer.py", "test_server.py")


def pytest_collection_modifyitems(config, items):
    """Run the heavy files first; the order inside a file is kept (a stable sort by file rank)."""
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
