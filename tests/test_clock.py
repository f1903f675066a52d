"""Issue 18, category 3: the host clock ahead of the exchange's.

The replay exchange checks signed requests' timestamps against its own clock (here the
host's minus a skew, so the host is ahead, as in the report: -1021 "1000ms ahead of the
server's time"). The store measures the offset, signs with the exchange's time, re-syncs on
-1021; a live session starts, trades and reports the offset in nts status.
"""
from __future__ import annotations

import time

import pandas as pd
import pytest
from click.testing import CliRunner

from brokers.ccxt_store import CCXTStore
from cli.main import cli
from core.synthetic import synthetic_ohlcv
from venues.replay import ReplayExchange
from test_live import KEY, KEY_ENV, SECRET, SECRET_ENV, _keys, calm_frame, make_cfg, ms, run_live, venue, warm  # noqa: F401

pytestmark = pytest.mark.timeout(180)
SYM = "BTC/USDT"


@pytest.fixture
def skewed(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    skew = {"ms": 1500}  # the host is this far ahead of the exchange
    frame = synthetic_ohlcv(100, seed=2, start="2024-03-01")
    ex = ReplayExchange(frame, start=frame.index[50] + pd.Timedelta("1min"), api_key=KEY, api_secret=SECRET,
                        auth_clock=lambda: int(time.time() * 1000) - skew["ms"]).start()
    store = CCXTStore("binance", url=ex.url, api_key_env=KEY_ENV, secret_env=SECRET_ENV, require_keys=True,
                      retries=2, backoff_s=0.0, sleep=lambda s: None)
    store.exchange.enableRateLimit = False
    store.load_markets()
    yield ex, store, skew
    ex.stop()


def test_signed_requests_work_with_the_host_clock_ahead(skewed):
    ex, store, skew = skewed
    bal = store.balance()  # -1021 at first: the store re-syncs and asks again
    assert bal["USDT"]["free"] == pytest.approx(10000.0)
    assert store.stats.clock_syncs == 1 and abs(store.time_offset_ms - 1500) < 300
    refused = [r for r in ex.requests_to("/api/v3/account") if "code -1021" in r.note]
    assert len(refused) == 1


def test_a_clock_that_drifts_mid_session_is_re_synced_and_an_order_sent_once(skewed):
    ex, store, skew = skewed
    assert abs(store.sync_clock() - 1500) < 300
    skew["ms"] = 4000  # the host jumps further ahead
    order = store.submit(SYM, "market", "buy", 0.01, None, "nts-clock-e0")
    assert order["status"] == "closed" and len(ex.orders) == 1
    assert store.stats.clock_syncs == 2 and abs(store.time_offset_ms - 4000) < 300
    posts = [r for r in ex.requests_to("/api/v3/order") if r.method == "POST"]
    assert [("code -1021" in r.note) for r in posts] == [True, False]  # refused unexecuted, then placed


@pytest.mark.timeout(240)
def test_live_session_starts_with_the_host_clock_ahead_and_status_reports_the_offset(tmp_path, fast_bundle, warm):
    cfg = make_cfg(tmp_path)
    frame = calm_frame(warm, 30)
    s = frame.index[warm + 5]
    with venue(frame, s + pd.Timedelta("1min"), auth_clock=lambda: int(time.time() * 1000) - 1200) as ex:
        res = run_live(fast_bundle, cfg, tmp_path / "c.db", ex, max_bars=4)
    assert res.bars == 4
    assert any("clock        host +1" in line for line in res.lines)
    r = CliRunner().invoke(cli, ["status", "--state", str(tmp_path / "c.db")])
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("clock"))
    assert 900 < int(line.split()[2]) < 1500, line
