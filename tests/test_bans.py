"""Issue 18, category 2: one retry policy for every request kind; a 418 is an IP ban.

Through the real ccxt.binance client against the replay exchange: a 429 with Retry-After
is waited out as told on the order path as on reads; a 418 (Binance's IP ban, which grows
when hit again) stops every request for the ban's time (the store's only wait is the ban),
tells its listeners (the live broker journals an ALERT), and an entry hit by it is not sent
after it; in a live session the bar's entry is skipped and trading resumes a bar later.
"""
from __future__ import annotations

import pandas as pd
import pytest

from brokers.ccxt_store import CCXTStore, ExchangeRefused
from core.synthetic import synthetic_ohlcv
from venues.replay import ReplayExchange
from live_faults import (  # noqa: F401  (fixtures)
    KEY,
    KEY_ENV,
    SECRET,
    SECRET_ENV,
    _keys,
    calm_frame,
    fault_session,
    warm,
)

pytestmark = pytest.mark.timeout(120)
SYM = "BTC/USDT"


@pytest.fixture
def replay(monkeypatch):
    frame = synthetic_ohlcv(100, seed=2, start="2024-03-01")
    ex = ReplayExchange(frame, start=frame.index[50] + pd.Timedelta("1min"), api_key=KEY, api_secret=SECRET).start()
    waits: list[float] = []
    store = CCXTStore("binance", url=ex.url, api_key_env=KEY_ENV, secret_env=SECRET_ENV, require_keys=True,
                      retries=4, backoff_s=1.0, sleep=waits.append, inflight_step_s=0.0, inflight_window_s=0.0)
    store.exchange.enableRateLimit = False
    store.load_markets()
    bans: list[float] = []
    store.ban_listeners.append(lambda msg, seconds: bans.append(seconds))
    yield ex, store, waits, bans
    ex.stop()


def posts(ex) -> list[str]:
    return [r.outcome for r in ex.requests_to("/api/v3/order") if r.method == "POST"]


def test_429_retry_after_is_honoured_on_orders_and_reads_alike(replay):
    ex, store, waits, bans = replay
    ex.inject("status", status=429, retry_after=8, times=1, path="/api/v3/order", method="POST")
    ex.inject("status", status=429, retry_after=8, times=1, path="/api/v3/account")
    store.submit(SYM, "market", "buy", 0.01, None, "nts-ban-e0")
    store.balance()
    assert waits == [8.0, 8.0] and bans == []
    assert posts(ex) == ["fault:429", "200"] and len(ex.orders) == 1


def test_two_418_bans_stop_everything_for_their_whole_time(replay):
    ex, store, waits, bans = replay
    ex.inject("status", status=418, retry_after=30, times=1, path="/api/v3/order", method="POST")
    ex.inject("status", status=418, retry_after=90, times=1, path="/api/v3/order", method="POST")  # grown
    order = store.submit(SYM, "market", "buy", 0.01, None, "nts-ban-x0")
    assert order["status"] == "closed" and len(ex.orders) == 1
    assert waits == [30.0, 90.0], "each ban waited out in full, never 1 s / 2 s backoff"
    assert bans == [30.0, 90.0] and store.stats.bans == 2 and store.entries_blocked
    assert posts(ex) == ["fault:418", "fault:418", "200"]


def test_a_418_on_a_read_is_a_ban_too(replay):
    ex, store, waits, bans = replay
    ex.inject("status", status=418, retry_after=45, times=1, path="/api/v3/myTrades")
    store.recent_trades(SYM)
    assert waits == [45.0] and bans == [45.0]


def test_an_entry_hit_by_a_ban_is_not_sent_after_it(replay):
    ex, store, waits, bans = replay
    ex.inject("status", status=418, retry_after=20, times=1, path="/api/v3/order", method="POST")
    with pytest.raises(ExchangeRefused, match="IP ban"):
        store.submit(SYM, "market", "buy", 0.01, None, "nts-ban-e1", entry=True)
    assert posts(ex) == ["fault:418"] and len(ex.orders) == 0 and waits == [20.0]


@pytest.mark.timeout(240)
def test_live_session_halts_entries_during_a_ban_alerts_and_resumes(tmp_path, fast_bundle, warm):
    def ban(ex):
        ex.inject("status", status=418, retry_after=60, times=1, path="/api/v3/order", method="POST")

    res, v, ex = fault_session(tmp_path, fast_bundle, warm, ban, bars=39, frame=calm_frame(warm, 50), db="b.db")
    bans = [r for r in ex.requests if r.outcome == "fault:418"]
    kinds = [ev["kind"] for ev in v["events"]]
    assert len(bans) == 1 and "ip_ban" in kinds and "ban_lifted" in kinds
    alert = next(ev for ev in v["events"] if ev["kind"] == "ip_ban")
    assert alert["message"].startswith("ALERT") and "60s" in alert["message"]
    first = next(i for i in v["intents"] if i.role == "entry")
    assert first.status == "rejected", "the entry hit by the ban was not sent after it"
    assert any(i.role == "entry" and i.status == "closed" for i in v["intents"]), "trading resumed after the ban"
    assert res.store["bans"] == 1 and v["summary"]["halted"] is False
