"""CCXTStore's retry policy through the real ccxt.binance client against the replay exchange:
reads are retried on transient failures only; an order is sent once and, when its answer is
lost, looked up by client id before anything else is sent (exactly one order exists)."""
from __future__ import annotations

import logging

import pandas as pd
import pytest

from brokers.ccxt_store import CCXTStore, ExchangeRefused
from brokers.exchange import RetriesExhausted
from venues.replay import ReplayExchange
from core.synthetic import synthetic_ohlcv

pytestmark = pytest.mark.timeout(60)

KEY, SECRET = "store-test-key-Hq62p", "store-test-secret-Lx09z"
KEY_ENV, SECRET_ENV = "NTS_STORE_TEST_KEY", "NTS_STORE_TEST_SECRET"
SYM = "BTC/USDT"


@pytest.fixture
def venue(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    frame = synthetic_ohlcv(100, seed=2, start="2024-03-01")
    ex = ReplayExchange(frame, start=frame.index[50] + pd.Timedelta("1min"), api_key=KEY, api_secret=SECRET).start()
    waits: list[float] = []
    store = CCXTStore("binance", url=ex.url, api_key_env=KEY_ENV, secret_env=SECRET_ENV, require_keys=True,
                      retries=4, backoff_s=0.5, sleep=waits.append)
    store.exchange.enableRateLimit = False
    store.load_markets()
    yield ex, store, waits
    ex.stop()


def order_posts(ex) -> list[str]:
    return [r.outcome for r in ex.requests_to("/api/v3/order") if r.method == "POST"]


def test_lost_answer_after_the_exchange_accepted_the_order(venue):
    ex, store, waits = venue
    assert store.has_keys
    ex.inject("drop_after", path="/api/v3/order", method="POST")
    order = store.submit(SYM, "limit", "buy", 0.01, 20000.0, "nts-test-e0")
    assert order["clientOrderId"] == "nts-test-e0" and order["status"] == "open"
    assert len(ex.orders) == 1 and order_posts(ex) == ["fault:drop_after"]  # found, never sent again
    assert store.stats.retries == 1 and waits == []


def test_429_storm_on_submit_is_looked_up_then_sent_once(venue):
    ex, store, waits = venue
    ex.inject("status", status=429, retry_after=8, times=3, path="/api/v3/order", method="POST")
    order = store.submit(SYM, "market", "buy", 0.01, None, "nts-test-e1")
    assert order["status"] == "closed" and len(ex.orders) == 1
    assert order_posts(ex) == ["fault:429", "fault:429", "fault:429", "200"]
    lookups = [r for r in ex.requests_to("/api/v3/order") if r.method == "GET"]
    assert len(lookups) == 3  # one lookup by client id before each re-send
    assert waits == [8.0, 8.0, 8.0]  # Retry-After honoured on the order path too


def test_final_refusal_is_not_retried(venue):
    ex, store, waits = venue
    with pytest.raises(ExchangeRefused, match="nts-test-e2 refused: InsufficientFunds"):
        store.submit(SYM, "limit", "buy", 10.0, 20000.0, "nts-test-e2")  # 200,000 USDT > 10,000
    assert order_posts(ex) == ["400"] and len(ex.orders) == 0 and store.stats.retries == 0


def test_reads_retry_transient_errors_and_give_up_in_one_redacted_line(venue, caplog):
    ex, store, waits = venue
    ex.inject("status", status=503, times=2, path="/api/v3/time")
    assert store.fetch_time() == ex.now_ms and store.stats.retries == 2
    ex.inject("status", status=502, times=10, path="/api/v3/account")
    with caplog.at_level(logging.WARNING), pytest.raises(RetriesExhausted) as err:
        store.read("fetch_balance", store.exchange.fetch_balance)
    assert "gave up after 5 attempts" in str(err.value) and "\n" not in str(err.value)
    text = str(err.value) + caplog.text
    assert KEY not in text and SECRET not in text
    with pytest.raises(ExchangeRefused, match="unknown symbol|refused"):
        store.fetch_ohlcv("ETH/USDT", "15m", limit=2)


def test_the_per_exchange_seam_names_its_capabilities_and_refuses_unknown_venues_for_orders():
    from brokers.exchange import make_exchange
    from brokers.exchanges import VENUES, venue_for
    from core.errors import ConfigError

    binance = venue_for(make_exchange("binance"))
    caps = binance.caps
    assert caps.oco_lists and caps.ban_status == 418 and 429 in caps.refused_statuses
    assert -1021 in caps.clock_error_codes and caps.max_client_id == 36 and set(VENUES) == {"binance"}
    kraken = make_exchange("kraken")
    assert venue_for(kraken) is None  # candles only: no venue module needed
    with pytest.raises(ConfigError, match="live trading is supported on binance only"):
        venue_for(kraken, need_orders=True)
    store = CCXTStore(exchange=kraken, sleep=lambda s: None)
    with pytest.raises(ConfigError, match="no venue module for kraken"):
        store.find_order("BTC/USD", "nts-x-e0")
