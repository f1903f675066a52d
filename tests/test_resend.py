"""Issue 18, category 1: a lost order answer is never followed by a blind resend.

Every answer-lost fault of the replay exchange (the order accepted but the answer dropped,
answered 5xx after it executed, accepted only after the client's timeout, or never
received at all) combined with every lookup outcome (found at once, "does not exist" for
the first 1 or 3 lookups, never found by client id but shown by the open orders or by the
newest trades, lookups that fail). The real ccxt.binance client talks to the replay
exchange on 127.0.0.1. Invariant: exactly one order per client id on the exchange, the id
is sent again only when the order never arrived, and never when the lookups fail.
"""
from __future__ import annotations

import time

import pandas as pd
import pytest

from brokers.ccxt_store import CCXTStore, OrderInDoubt
from core.synthetic import synthetic_ohlcv
from venues.replay import ReplayExchange

pytestmark = pytest.mark.timeout(120)

KEY, SECRET = "resend-test-key-Hq62p", "resend-test-secret-Lx09z"
KEY_ENV, SECRET_ENV = "NTS_RESEND_TEST_KEY", "NTS_RESEND_TEST_SECRET"
SYM = "BTC/USDT"
WINDOW_S = 1.0       # the in-flight window (the real one is Binance's recvWindow + 1 s)
SLOW_S = 0.6         # a "slow" order is accepted this long after the client gave up

#: fault -> (inject kwargs, does the order reach the exchange?)
FAULTS = {
    "drop_after": (dict(kind="drop_after"), True),
    "status_after_503": (dict(kind="status_after", status=503), True),
    "status_after_unknown": (dict(kind="status_after", status=400,
                                  body={"code": -1007, "msg": "Timeout waiting for response from backend server. "
                                                              "Send status unknown; execution status unknown."}),
                             True),
    "slow": (dict(kind="slow", delay_s=SLOW_S), True),
    "drop": (dict(kind="drop"), False),
    "status_503": (dict(kind="status", status=503), False),
}
LOOKUPS = ["visible", "hidden_1", "hidden_3", "hidden_always_resting", "hidden_always_filled", "lookups_fail"]


@pytest.fixture
def venue(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    frame = synthetic_ohlcv(100, seed=2, start="2024-03-01")
    ex = ReplayExchange(frame, start=frame.index[50] + pd.Timedelta("1min"), api_key=KEY, api_secret=SECRET).start()
    store = CCXTStore("binance", url=ex.url, api_key_env=KEY_ENV, secret_env=SECRET_ENV, require_keys=True,
                      retries=3, backoff_s=0.0, timeout_ms=400, sleep=time.sleep, inflight_lookups=4,
                      inflight_step_s=0.05, inflight_window_s=WINDOW_S)
    store.exchange.enableRateLimit = False
    store.load_markets()
    yield ex, store
    ex.stop()


def posts(ex, path="/api/v3/order") -> list:
    return [r for r in ex.requests_to(path) if r.method == "POST"]


@pytest.mark.parametrize("lookup", LOOKUPS)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_lost_answer_times_lookup_outcome(venue, fault, lookup):
    ex, store = venue
    kwargs, arrives = FAULTS[fault]
    last = float(ex._last(ex.markets["BTCUSDT"], ex.now_ms)[0])
    resting = lookup == "hidden_always_resting"
    otype, price = ("limit", round(last * 0.9, 2)) if resting else ("market", None)
    ex.inject(path="/api/v3/order", method="POST", **kwargs)
    if lookup.startswith("hidden_") and lookup[7:].isdigit():
        ex.inject("hidden", times=int(lookup[7:]))
    elif lookup.startswith("hidden_always"):
        ex.inject("hidden", times=10_000)
    elif lookup == "lookups_fail":
        ex.inject("status", status=503, times=10_000, path="/api/v3/order", method="GET")
    cid = "nts-resend-e0"
    if lookup == "lookups_fail":
        with pytest.raises(OrderInDoubt, match="may or may not be on the exchange"):
            store.submit(SYM, otype, "buy", 0.01, price, cid)
        time.sleep(SLOW_S + 0.2 if fault == "slow" else 0)
        assert len(posts(ex)) == 1, "never sent again while the lookups fail"
        assert len(ex.orders) == (1 if arrives else 0)
        return
    order = store.submit(SYM, otype, "buy", 0.01, price, cid)
    time.sleep(SLOW_S + 0.2 if fault == "slow" else 0)  # a late arrival would show now
    cids = [o.client_order_id for o in ex.orders.values()]
    assert cids == [cid], f"exactly one order on the exchange, got {cids}"
    assert order["clientOrderId"] == cid
    n_posts = len(posts(ex))
    assert n_posts == (1 if arrives else 2), "sent again only when the first never arrived"
    gets = [r for r in ex.requests_to("/api/v3/order") if r.method == "GET" and "origClientOrderId" in r.params]
    if not arrives or lookup.startswith("hidden"):
        assert len(gets) >= min(4, 1 + int(lookup[7:]) if lookup[7:].isdigit() else 4), \
            "repeated lookups before deciding"
    held = float(ex.balance("BTC")[0]) + float(ex.balance("BTC")[1])
    assert held <= 0.01 + 1e-12, "never twice the position"


@pytest.mark.parametrize("fault", ["drop_after", "status_after_503", "drop"])
@pytest.mark.parametrize("hidden", [0, 2, 10_000])
def test_oco_list_lost_answer(venue, fault, hidden):
    """An OCO exit list whose answer is lost: looked up by its list id (hidden: "does not
    exist"), then by its legs in the open orders; placed exactly once."""
    ex, store = venue
    store.submit(SYM, "market", "buy", 0.01, None, "nts-resend-e1")
    last = float(ex._last(ex.markets["BTCUSDT"], ex.now_ms)[0])
    free = float(ex.balance("BTC")[0])
    amount = store.amount_to_precision(SYM, free)
    kwargs, arrives = FAULTS[fault]
    ex.inject(path="/api/v3/orderList/oco", method="POST", **kwargs)
    if hidden:
        ex.inject("hidden", lists=True, times=hidden)
    store.submit_oco(SYM, "sell", amount, store.price_to_precision(SYM, last * 0.97),
                     store.price_to_precision(SYM, last * 1.03), "nts-resend-s0.oco", "nts-resend-s0", "nts-resend-t0")
    assert len(ex.order_lists) == 1
    assert len(posts(ex, "/api/v3/orderList/oco")) == (1 if arrives else 2)
    assert sorted(o.client_order_id for o in ex.open_orders()) == ["nts-resend-s0", "nts-resend-t0"]
