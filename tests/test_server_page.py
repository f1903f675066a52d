"""The status page in a real browser: headless Chromium (Debian's package) loads / of a served
paper session over HTTP and takes a screenshot; skipped when /usr/bin/chromium is absent (the
httpx content test in test_server_session.py always runs)."""
from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import uvicorn
from matplotlib import image as mpimg

from brokers.ccxt_store import CCXTStore
from brokers.exchange import make_exchange
from core.config import load_config
from core.synthetic import synthetic_ohlcv
from models.bundle import load_bundle
from server.app import create_app
from server.auth import Auth
from server.host import SessionHost
from server.setup import build_setup
from strategies.backtest import warmup_bars_for
from venues.replay import ReplayExchange

CHROMIUM = Path("/usr/bin/chromium")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium not installed (apt-get install chromium)")
@pytest.mark.timeout(240)
def test_status_page_in_headless_chromium(tmp_path, tiny_bundle):
    cfg = load_config(None, ["strategy.center=0.3", "strategy.deadband=0", f"risk.kill_switch_file={tmp_path / 'K'}"])
    warm = warmup_bars_for(load_bundle(tiny_bundle), cfg)
    frame = synthetic_ohlcv(warm + 200, seed=4, start="2024-06-01")
    state = tmp_path / "page.db"
    with ReplayExchange(frame, start=frame.index[warm + 5] + pd.Timedelta("1min")) as ex:
        client = make_exchange("binance", url=ex.url, timeout_ms=5000)
        client.enableRateLimit = False
        host = SessionHost("paper", cfg, tiny_bundle, state, store=CCXTStore(exchange=client, sleep=lambda s: None),
                           sleep=lambda seconds: ex.advance(bars=1), max_bars=60)
        app = create_app(build_setup(cfg, tiny_bundle), Auth(None), host)
        port = _port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 180
            while host.thread is None or host.thread.is_alive():  # the session trades its 60 bars and stops
                assert time.monotonic() < deadline, "the session did not trade 60 bars"
                time.sleep(0.1)
            assert host.error is None and host.result.bars == 60
            shot = tmp_path / "status.png"
            url = f"http://127.0.0.1:{port}/"
            args = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,1400", f"--user-data-dir={tmp_path / 'profile'}"]
            subprocess.run([*args, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
            dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True)
        finally:
            server.should_exit = True
            thread.join(60)
    assert "Last decisions" in dom.stdout and "<polyline" in dom.stdout and "Working orders" in dom.stdout
    img = mpimg.imread(shot)
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    rgb = img[..., :3]
    blue = (rgb[..., 2] > 0.7) & (rgb[..., 0] < 0.4)          # the equity polyline's stroke
    assert blue.sum() > 200, "no equity curve drawn"
    assert (rgb.mean(axis=2) < 0.3).sum() > 2000, "no text drawn"
    assert np.unique(rgb.reshape(-1, 3), axis=0).shape[0] > 20
