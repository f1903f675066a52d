"""The replay exchange through the REAL ccxt.binance client: account, orders, fills, fees,
auth, the replay clock and faults; plus `nts exchange replay` as a subprocess."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from decimal import Decimal
from pathlib import Path

import ccxt
import pandas as pd
import pytest

from brokers.exchange import make_exchange, with_retries
from venues.replay import ReplayError, ReplayExchange, credentials_from_env
from core.errors import ConfigError
from core.ohlcv import write_ohlcv_csv

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
KEY = "replay-test-key-Zq81x"
SECRET = "replay-test-secret-Wm42v"
KEY_ENV, SECRET_ENV = "NTS_REPLAY_TEST_KEY", "NTS_REPLAY_TEST_SECRET"
SYM = "BTC/USDT"
TF = pd.Timedelta("15min")
TF_MS = 900_000
NOW = 20  # the bar that is open when a venue starts (1 minute after its open)


def flat_frame(overrides: dict[int, tuple[float, float, float, float]] | None = None, n: int = 60) -> pd.DataFrame:
    """``n`` flat bars at 100 (volume 10); ``overrides`` sets (open, high, low, close) by position."""
    rows = [(100.0, 100.0, 100.0, 100.0)] * n
    for i, ohlc in (overrides or {}).items():
        rows[i] = ohlc
    index = pd.DatetimeIndex(pd.Timestamp("2024-03-01", tz="UTC") + TF * pd.RangeIndex(n), name="timestamp")
    frame = pd.DataFrame(rows, index=index.as_unit("ns"), columns=["open", "high", "low", "close"])
    frame["volume"] = 10.0
    return frame


def t(i: int) -> int:
    """Open time (epoch ms) of bar ``i`` of flat_frame."""
    return int(pd.Timestamp("2024-03-01", tz="UTC").value // 1_000_000) + i * TF_MS


@pytest.fixture
def venue(monkeypatch, request):
    """Factory: a started replay exchange on ``flat_frame(overrides)`` and a ccxt client for it."""
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv(SECRET_ENV, SECRET)

    def make(overrides=None, key=KEY, secret=SECRET, **kwargs):
        kwargs.setdefault("start", t(NOW) + 60_000)
        kwargs.setdefault("maker_fee", 0.001)
        kwargs.setdefault("taker_fee", 0.002)
        ex = ReplayExchange(flat_frame(overrides), api_key=key, api_secret=secret, **kwargs).start()
        request.addfinalizer(ex.stop)
        return ex, client(ex)

    return make


def client(ex: ReplayExchange, timeout_ms: int = 3000) -> ccxt.Exchange:
    c = make_exchange("binance", url=ex.url, api_key_env=KEY_ENV, secret_env=SECRET_ENV, timeout_ms=timeout_ms)
    c.enableRateLimit = False  # 127.0.0.1 only; ccxt's throttle would just slow the tests
    return c


def free(c: ccxt.Exchange) -> dict[str, float]:
    return c.fetch_balance()["free"]


# ----- account, market and limit orders ---------------------------------------------------
def test_balance_and_reservations(venue):
    ex, c = venue()
    bal = c.fetch_balance()
    assert bal["USDT"] == {"free": 10000.0, "used": 0.0, "total": 10000.0} and bal["BTC"]["total"] == 0.0
    order = c.create_order(SYM, "limit", "buy", 1, 95)
    bal = c.fetch_balance()
    assert bal["USDT"]["free"] == 9905.0 and bal["USDT"]["used"] == 95.0  # qty * price reserved
    c.cancel_order(order["id"], SYM)
    assert c.fetch_balance()["USDT"] == {"free": 10000.0, "used": 0.0, "total": 10000.0}
    assert ex.balance("USDT") == (Decimal("10000"), Decimal("0"))


def test_market_orders_fill_at_the_current_bar_open_with_binance_style_fees(venue):
    ex, c = venue({NOW: (101.0, 103.0, 99.0, 102.0)})
    buy = c.create_order(SYM, "market", "buy", 1)
    assert buy["status"] == "closed" and buy["filled"] == 1 and buy["average"] == 101.0  # the open, not 102
    assert buy["fee"] == {"currency": "BTC", "cost": 0.002}  # taker rate, buyer pays in base
    sell = c.create_order(SYM, "market", "sell", 0.5)
    assert sell["average"] == 101.0 and sell["fee"] == {"currency": "USDT", "cost": 0.101}  # seller: quote
    by_cost = c.create_market_buy_order_with_cost(SYM, 50.5)  # quoteOrderQty: 50.5 / 101 = 0.5
    assert by_cost["filled"] == 0.5 and by_cost["cost"] == 50.5
    trades = c.fetch_my_trades(SYM)
    assert [(tr["side"], tr["amount"], tr["takerOrMaker"]) for tr in trades] == [
        ("buy", 1.0, "taker"), ("sell", 0.5, "taker"), ("buy", 0.5, "taker")]
    assert [tr["info"]["commissionAsset"] for tr in trades] == ["BTC", "USDT", "BTC"]
    assert trades[0]["timestamp"] == ex.now_ms and len({tr["id"] for tr in trades}) == 3
    bal = free(c)
    assert bal["BTC"] == pytest.approx(1 - 0.002 - 0.5 + 0.5 - 0.001, abs=1e-12)
    assert bal["USDT"] == pytest.approx(10000 - 101 + 50.5 - 0.101 - 50.5, abs=1e-9)


def test_limit_rests_then_fills_on_a_later_bar_at_the_limit_price(venue):
    # Bar 20 (open while the order is placed) dips to 90: that dip may have happened
    # before the order existed, so it must not fill. Bar 21 trades down to 98.5.
    ex, c = venue({NOW: (100.0, 100.0, 90.0, 100.0), NOW + 1: (100.0, 101.0, 98.5, 100.0)})
    order = c.create_order(SYM, "limit", "buy", 1, 99)
    assert order["status"] == "open" and order["filled"] == 0
    ex.set_now(t(NOW + 1))
    assert c.fetch_order(order["id"], SYM)["status"] == "open"  # bar 20 closed: its dip does not count
    ex.set_now(t(NOW + 2) - 1)
    assert c.fetch_order(order["id"], SYM)["status"] == "open"  # bar 21's range is known only at its close
    ex.set_now(t(NOW + 2))
    filled = c.fetch_order(order["id"], SYM)
    assert filled["status"] == "closed" and filled["average"] == 99.0 and filled["filled"] == 1
    (trade,) = c.fetch_my_trades(SYM)
    assert trade["price"] == 99.0 and trade["takerOrMaker"] == "maker" and trade["fee"]["cost"] == 0.001
    assert trade["timestamp"] == t(NOW + 2) - 1  # inside bar 21
    assert free(c)["USDT"] == 10000 - 99 and free(c)["BTC"] == pytest.approx(0.999)


def test_limit_fills_at_the_open_when_a_bar_opens_through_it(venue):
    ex, c = venue({NOW + 1: (97.0, 98.0, 96.0, 97.5)}, balances={"BTC": 1})
    buy = c.create_order(SYM, "limit", "buy", 1, 99)
    sell = c.create_order(SYM, "limit", "sell", 1, 101)
    ex.set_now(t(NOW + 1))  # bar 21 just opened at 97, below the buy limit
    got = c.fetch_order(buy["id"], SYM)
    assert got["status"] == "closed" and got["average"] == 97.0 and got["lastTradeTimestamp"] == t(NOW + 1)
    assert c.fetch_order(sell["id"], SYM)["status"] == "open"
    assert free(c)["USDT"] == 10000 - 97  # the 99 reserved was released, 97 paid


def test_marketable_limit_takes_at_the_last_price(venue):
    _, c = venue()
    order = c.create_order(SYM, "limit", "buy", 1, 105)
    assert order["status"] == "closed" and order["average"] == 100.0
    assert order["trades"][0]["fee"] == {"currency": "BTC", "cost": 0.002}  # immediate fill: taker


def test_stop_loss_limit_triggers_in_a_later_bar_and_fills_at_the_stop(venue):
    ex, c = venue({NOW + 1: (100.0, 100.0, 98.0, 99.0), NOW + 2: (99.0, 99.5, 95.0, 96.0)}, balances={"BTC": 1})
    stop = c.create_order(SYM, "limit", "sell", 1, 96.5, {"stopLossPrice": 97})
    sent = ex.requests_to("/api/v3/order")[-1].params
    assert sent["type"] == "STOP_LOSS_LIMIT" and sent["stopPrice"] == "97"
    got = c.fetch_order(stop["id"], SYM)
    assert got["status"] == "open" and got["triggerPrice"] == 97.0 and got["price"] == 96.5
    assert c.fetch_balance()["BTC"]["used"] == 1.0
    ex.set_now(t(NOW + 2))
    assert c.fetch_order(stop["id"], SYM)["status"] == "open"  # bar 21 stayed above the stop
    ex.set_now(t(NOW + 3))
    got = c.fetch_order(stop["id"], SYM)
    assert got["status"] == "closed" and got["average"] == 97.0  # limit 96.5 marketable at the trigger
    (trade,) = c.fetch_my_trades(SYM)
    assert trade["takerOrMaker"] == "taker" and trade["fee"] == {"currency": "USDT", "cost": pytest.approx(0.194)}
    with pytest.raises(ccxt.OrderImmediatelyFillable, match="Stop price would trigger immediately"):
        c.create_order(SYM, "limit", "buy", 1, 100, {"stopLossPrice": 95})  # a buy stop below the price


def test_take_profit_market_fills_at_the_open_when_the_bar_gaps_through(venue):
    ex, c = venue({NOW + 1: (104.0, 105.0, 103.0, 104.5)}, balances={"BTC": 1})
    tp = c.create_order(SYM, "market", "sell", 1, None, {"takeProfitPrice": 103})
    assert ex.requests_to("/api/v3/order")[-1].params["type"] == "TAKE_PROFIT"
    ex.advance(bars=1)
    got = c.fetch_order(tp["id"], SYM)
    assert got["status"] == "closed" and got["average"] == 104.0


def test_fetch_and_cancel_by_client_order_id_and_unknown_orders(venue):
    _, c = venue()
    placed = c.create_order(SYM, "limit", "buy", 0.5, 90, {"clientOrderId": "nts-entry-1"})
    assert placed["clientOrderId"] == "nts-entry-1"
    got = c.fetch_order(None, SYM, {"origClientOrderId": "nts-entry-1"})
    assert got["id"] == placed["id"] and got["status"] == "open"
    assert [o["id"] for o in c.fetch_open_orders(SYM)] == [placed["id"]]
    canceled = c.cancel_order(None, SYM, {"origClientOrderId": "nts-entry-1"})
    assert canceled["status"] == "canceled" and canceled["info"]["origClientOrderId"] == "nts-entry-1"
    assert c.fetch_open_orders(SYM) == []
    with pytest.raises(ccxt.OrderNotFound, match="Unknown order sent"):
        c.cancel_order(placed["id"], SYM)  # already canceled: -2011
    with pytest.raises(ccxt.OrderNotFound, match="Order does not exist"):
        c.fetch_order("999", SYM)  # -2013
    with pytest.raises(ccxt.OrderNotFound, match="Order does not exist"):
        c.fetch_order(None, SYM, {"origClientOrderId": "never-sent"})
    assert [o["status"] for o in c.fetch_orders(SYM)] == ["canceled"]


def test_duplicate_client_order_id_is_refused_while_the_order_is_open(venue):
    ex, c = venue()
    first = c.create_order(SYM, "limit", "buy", 0.5, 90, {"clientOrderId": "dup"})
    with pytest.raises(ccxt.InvalidOrder, match="Duplicate order sent"):
        c.create_order(SYM, "limit", "buy", 0.5, 91, {"clientOrderId": "dup"})
    assert len(ex.orders) == 1 and free(c)["USDT"] == 10000 - 45
    c.cancel_order(first["id"], SYM)
    second = c.create_order(SYM, "limit", "buy", 0.5, 91, {"clientOrderId": "dup"})  # closed ids may be reused
    assert c.fetch_order(None, SYM, {"origClientOrderId": "dup"})["id"] == second["id"]  # the newest


def test_partial_fills_come_one_piece_per_trading_bar_with_distinct_trade_ids(venue):
    dip = (100.0, 100.0, 98.0, 100.0)
    ex, c = venue({NOW + 1: dip, NOW + 2: (100.0, 100.5, 99.5, 100.0), NOW + 3: dip, NOW + 4: dip, NOW + 5: dip})
    ex.inject("partial", pieces=3)
    order = c.create_order(SYM, "limit", "buy", 0.3, 99)
    ex.set_now(t(NOW + 2))
    got = c.fetch_order(order["id"], SYM)
    assert got["status"] == "open" and got["filled"] == 0.1 and got["info"]["status"] == "PARTIALLY_FILLED"
    ex.set_now(t(NOW + 3))
    assert c.fetch_order(order["id"], SYM)["filled"] == 0.1  # bar 22 stayed above 99: no piece
    ex.set_now(t(NOW + 6))
    got = c.fetch_order(order["id"], SYM)
    assert got["status"] == "closed" and got["filled"] == pytest.approx(0.3) and got["average"] == 99.0
    trades = c.fetch_my_trades(SYM)
    assert len(trades) == 3 and len({tr["id"] for tr in trades}) == 3
    assert [tr["timestamp"] for tr in trades] == [t(NOW + 2) - 1, t(NOW + 4) - 1, t(NOW + 5) - 1]
    assert all(tr["order"] == order["id"] and tr["takerOrMaker"] == "maker" for tr in trades)
    later = c.fetch_my_trades(SYM, params={"fromId": trades[1]["id"]})
    assert [tr["id"] for tr in later] == [trades[1]["id"], trades[2]["id"]]
    since = c.fetch_my_trades(SYM, since=t(NOW + 4) - 1)
    assert [tr["id"] for tr in since] == [trades[1]["id"], trades[2]["id"]]
    with pytest.raises(ccxt.BadRequest, match="Combination of optional parameters invalid"):
        c.fetch_my_trades(SYM, since=t(NOW), params={"fromId": 1})


def test_time_in_force_ioc_fok_and_post_only(venue):
    ex, c = venue()
    assert c.create_order(SYM, "limit", "buy", 1, 95, {"timeInForce": "IOC"})["status"] == "expired"
    ex.inject("partial", pieces=2, times=2)
    ioc = c.create_order(SYM, "limit", "buy", 1, 101, {"timeInForce": "IOC"})
    assert ioc["status"] == "expired" and ioc["filled"] == 0.5  # took what it could, the rest expired
    fok = c.create_order(SYM, "limit", "buy", 1, 101, {"timeInForce": "FOK"})
    assert fok["status"] == "expired" and fok["filled"] == 0  # could not fill completely at once
    assert c.create_order(SYM, "limit", "buy", 1, 101, {"timeInForce": "FOK"})["status"] == "closed"
    with pytest.raises(ccxt.OrderImmediatelyFillable, match="immediately match and take"):
        c.create_order(SYM, "limit", "buy", 1, 101, {"postOnly": True})
    maker = c.create_order(SYM, "limit", "buy", 1, 99, {"postOnly": True})
    assert maker["status"] == "open" and ex.orders[int(maker["id"])].type == "LIMIT_MAKER"
    assert free(c)["USDT"] == pytest.approx(10000 - 50 - 100 - 99)


def test_insufficient_funds_are_refused_and_nothing_moves(venue):
    ex, c = venue()
    with pytest.raises(ccxt.InsufficientFunds):
        c.create_order(SYM, "limit", "buy", 200, 99)  # 19,800 USDT > 10,000
    with pytest.raises(ccxt.InsufficientFunds):
        c.create_order(SYM, "market", "sell", 1)  # no BTC
    assert ex.orders == {} and free(c)["USDT"] == 10000


def test_filter_refusals_and_ccxt_precision(venue):
    ex, c = venue()
    market = c.load_markets()[SYM]
    assert market["precision"]["price"] == 0.01 and market["precision"]["amount"] == 0.00001
    assert market["limits"]["cost"]["min"] == 5.0 and market["limits"]["amount"]["min"] == 0.00001
    with pytest.raises(ccxt.BadRequest, match="Filter failure: NOTIONAL"):
        c.create_order(SYM, "limit", "buy", 0.01, 99)  # 0.99 USDT < 5 USDT
    raw = {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC"}
    with pytest.raises(ccxt.InvalidOrder, match="LOT_SIZE"):
        c.private_post_order({**raw, "quantity": "0.100005", "price": "99"})  # off the 0.00001 step
    with pytest.raises(ccxt.InvalidOrder, match="PRICE_FILTER"):
        c.private_post_order({**raw, "quantity": "0.1", "price": "99.005"})  # off the 0.01 tick
    rounded = c.create_order(SYM, "limit", "buy", 0.100005, 99.004)  # ccxt rounds to the filters first
    assert rounded["amount"] == 0.1 and rounded["price"] == 99.0
    with pytest.raises(ccxt.BadRequest, match="Invalid orderType"):
        c.private_post_order({**raw, "type": "ICEBERG", "quantity": "1", "price": "99"})
    with pytest.raises(ccxt.BadRequest, match="Mandatory parameter 'timeInForce'"):
        c.private_post_order({**raw, "timeInForce": "", "quantity": "1", "price": "99"})
    assert len(ex.orders) == 1


def test_tickers_show_the_current_open_and_nothing_of_the_bar_to_come(venue):
    ex, c = venue({NOW - 1: (99.0, 99.5, 98.0, 99.0), NOW: (101.0, 150.0, 50.0, 120.0)})
    ticker = c.fetch_ticker(SYM)
    assert ticker["last"] == 101.0 and ticker["bid"] == ticker["ask"] == 101.0
    assert ticker["high"] == 101.0 and ticker["low"] == 98.0  # bar 20's 150 / 50 lie in the future
    assert c.fetch_tickers()[SYM]["last"] == 101.0
    assert c.public_get_ticker_price({"symbol": "BTCUSDT"})["price"] == "101.00000000"
    ex.advance(bars=1)
    assert c.fetch_ticker(SYM)["high"] == 150.0


# ----- authentication ---------------------------------------------------------------------
def _raw(ex: ReplayExchange, method: str, path: str, query: str = "", body: str = "",
         headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(f"{ex.url}{path}" + (f"?{query}" if query else ""), method=method,
                                 data=body.encode() if body else None, headers=headers or {})
    if body:
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _sign(text: str, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def test_bad_key_bad_signature_and_stale_timestamps_are_refused(venue, monkeypatch):
    ex, c = venue()
    monkeypatch.setenv(KEY_ENV, "not-the-key")
    with pytest.raises(ccxt.AuthenticationError, match="Invalid API-key"):
        client(ex).fetch_balance()  # -2015, HTTP 401
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv(SECRET_ENV, "not-the-secret")
    with pytest.raises(ccxt.AuthenticationError, match="Signature for this request is not valid"):
        client(ex).fetch_balance()  # -1022
    monkeypatch.setenv(SECRET_ENV, SECRET)
    stale = client(ex)
    stale.options["timeDifference"] = 30_000  # the client's clock 30 s behind; ccxt sends recvWindow 10 s
    with pytest.raises(ccxt.InvalidNonce, match="outside of the recvWindow"):
        stale.create_order(SYM, "limit", "buy", 1, 90)
    ahead = client(ex)
    ahead.options["timeDifference"] = -3_000
    with pytest.raises(ccxt.InvalidNonce, match="ahead of the server"):
        ahead.fetch_balance()
    wide = client(ex)
    wide.options["recvWindow"] = 70_000
    with pytest.raises(ccxt.ExchangeError, match="-1131"):
        wide.fetch_balance()
    assert ex.orders == {}
    assert c.fetch_balance()["USDT"]["free"] == 10000.0  # the right credentials still work


def test_signature_covers_query_and_body_as_binance_defines_it(venue):
    ex, _ = venue()
    ts = int(time.time() * 1000)
    query = "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC"
    body = f"quantity=1&price=90&recvWindow=5000&timestamp={ts}"
    hdr = {"X-MBX-APIKEY": KEY}
    status, answer = _raw(ex, "POST", "/api/v3/order", query, f"{body}&signature={_sign(query + body)}", hdr)
    assert status == 200 and answer["status"] == "NEW" and "fills" in answer  # LIMIT defaults to FULL
    status, answer = _raw(ex, "POST", "/api/v3/order", query, f"{body}&signature={_sign(query + '&' + body)}", hdr)
    assert (status, answer["code"]) == (400, -1022)
    q = f"timestamp={ts}"
    assert _raw(ex, "GET", "/api/v3/account", f"{q}&signature={_sign(q)}")[1]["code"] == -2014  # no key header
    status, answer = _raw(ex, "GET", "/api/v3/account", f"{q}&signature={_sign(q)}", headers={"X-MBX-APIKEY": "x"})
    assert (status, answer["code"]) == (401, -2015)
    assert _raw(ex, "GET", "/api/v3/account", f"signature={_sign('')}", headers=hdr)[1]["code"] == -1102
    q = f"timestamp={ts - 6000}"  # default recvWindow 5000 ms
    assert _raw(ex, "GET", "/api/v3/account", f"{q}&signature={_sign(q)}", headers=hdr)[1]["code"] == -1021


def test_request_log_and_errors_hold_no_secret(venue, monkeypatch):
    ex, c = venue()
    c.create_order(SYM, "limit", "buy", 1, 90, {"clientOrderId": "log-1"})
    c.fetch_order(None, SYM, {"origClientOrderId": "log-1"})
    messages = []
    for key_env, value in ((KEY_ENV, "wrong-key"), (SECRET_ENV, "wrong-secret")):
        monkeypatch.setenv(key_env, value)
        with pytest.raises(ccxt.AuthenticationError) as info:
            client(ex).create_order(SYM, "limit", "buy", 1, 90)
        messages.append(str(info.value))
        monkeypatch.setenv(KEY_ENV, KEY)
        monkeypatch.setenv(SECRET_ENV, SECRET)
    text = repr(ex.requests) + "".join(messages)
    for secret in (KEY, SECRET, "wrong-key", "wrong-secret"):
        assert secret not in text
    signed = [r for r in ex.requests if "signature" in r.params]
    assert len(signed) >= 4 and {r.params["signature"] for r in signed} == {"<redacted>"}
    assert [r.note for r in ex.requests if r.outcome in ("400", "401")] == ["code -2015", "code -1022"]


# ----- the replay clock -------------------------------------------------------------------
def test_a_bar_is_served_closed_only_after_its_close_time_manual_clock(venue):
    ex, c = venue({NOW: (101.0, 103.0, 99.0, 102.0)})
    assert c.fetch_time() == t(NOW) + 60_000 == ex.now_ms
    rows = c.fetch_ohlcv(SYM, "15m", limit=2)
    assert rows[0] == [t(NOW - 1), 100.0, 100.0, 100.0, 100.0, 10.0]
    assert rows[1] == [t(NOW), 101.0, 101.0, 101.0, 101.0, 0.0]  # open: only its opening print is known
    ex.set_now(t(NOW + 1) - 1)
    assert c.fetch_ohlcv(SYM, "15m", limit=1)[0] == [t(NOW), 101.0, 101.0, 101.0, 101.0, 0.0]
    ex.set_now(t(NOW + 1))
    rows = c.fetch_ohlcv(SYM, "15m", limit=2)
    assert rows[0] == [t(NOW), 101.0, 103.0, 99.0, 102.0, 10.0] and rows[1][0] == t(NOW + 1)
    assert ex.closed_candles(SYM).index[-1] == pd.Timestamp(t(NOW), unit="ms", tz="UTC")
    assert ex.advance(bars=2, seconds=30) == t(NOW + 3) + 30_000 == c.fetch_time()
    with pytest.raises(ValueError, match="only moves forward"):
        ex.set_now(t(NOW))


def test_accelerated_clock_runs_at_speed_and_serves_bars_as_they_close(venue):
    speed = 4500.0  # a 15-minute bar every 0.2 s of wall time
    ex, c = venue(start=t(NOW), speed=speed)
    wall0, clock0 = time.monotonic(), c.fetch_time()
    seen: set[int] = set()
    while time.monotonic() - wall0 < 1.0:
        before = ex.now_ms
        rows = c.fetch_ohlcv(SYM, "15m", limit=3)
        after = ex.now_ms
        *closed, current = rows
        assert current[0] <= after and current[0] + TF_MS > before  # the open bar contains now
        assert all(r[0] + TF_MS <= after for r in closed)
        seen.add(current[0])
        time.sleep(0.03)
    elapsed, clock1 = time.monotonic() - wall0, c.fetch_time()
    assert clock1 - clock0 == pytest.approx(elapsed * 1000 * speed, rel=0.25)
    assert len(seen) >= 3  # about five bars opened (and closed) during the second
    ex.set_speed(0)
    frozen = ex.now_ms
    time.sleep(0.05)
    assert ex.now_ms == frozen


def test_replay_start_and_speed_are_checked(venue):
    with pytest.raises(ReplayError, match="outside the data"):
        ReplayExchange(flat_frame(), start="2020-01-01")
    with pytest.raises(ReplayError, match="speed must be >= 0"):
        ReplayExchange(flat_frame(), speed=-1)
    ex, _ = venue()
    with pytest.raises(ReplayError, match="cannot listen on 127.0.0.1"):
        ReplayExchange(flat_frame(), port=int(ex.url.rsplit(":", 1)[1])).start()


def test_credentials_come_from_both_variables_or_neither(monkeypatch):
    monkeypatch.delenv("NTS_RP_K", raising=False)
    monkeypatch.delenv("NTS_RP_S", raising=False)
    assert credentials_from_env("NTS_RP_K", "NTS_RP_S") == (None, None)
    monkeypatch.setenv("NTS_RP_K", "k")
    with pytest.raises(ConfigError, match="NTS_RP_S is not set but NTS_RP_K is"):
        credentials_from_env("NTS_RP_K", "NTS_RP_S")
    monkeypatch.setenv("NTS_RP_S", "s")
    assert credentials_from_env("NTS_RP_K", "NTS_RP_S") == ("k", "s")


# ----- faults -----------------------------------------------------------------------------
def test_429_storm_is_ridden_out_with_retry_after(venue):
    ex, c = venue()
    ex.inject("status", status=429, retry_after=0.05, path="/api/v3/account", times=3)
    waits = []
    bal = with_retries(c.fetch_balance, retries=5, backoff_s=5.0, exchange=c, what="fetch_balance",
                       on_retry=lambda attempt, exc, delay: waits.append((type(exc).__name__, delay)))
    assert bal["USDT"]["free"] == 10000.0
    assert waits == [("DDoSProtection", 0.05)] * 3  # the server's Retry-After, not the 5 s backoff
    assert [r.outcome for r in ex.requests_to("/api/v3/account")] == ["fault:429"] * 3 + ["200"]


def test_5xx_on_an_order_means_nothing_happened(venue):
    ex, c = venue()
    ex.inject("status", status=503, path="/api/v3/order", method="POST")
    with pytest.raises(ccxt.OperationFailed):  # -1001 "Internal error", HTTP 503
        c.create_order(SYM, "limit", "buy", 1, 90)
    assert ex.orders == {} and c.fetch_open_orders(SYM) == []


def test_timeout_on_an_order_that_is_accepted_late(venue):
    ex, _ = venue()
    c = client(ex, timeout_ms=300)
    c.load_markets()
    ex.inject("slow", delay_s=0.8, path="/api/v3/order", method="POST")
    with pytest.raises(ccxt.RequestTimeout):
        c.create_order(SYM, "limit", "buy", 1, 90, {"clientOrderId": "slow-1"})
    deadline = time.monotonic() + 5
    while not ex.orders and time.monotonic() < deadline:
        time.sleep(0.05)
    assert c.fetch_order(None, SYM, {"origClientOrderId": "slow-1"})["status"] == "open"


def test_connection_dropped_after_the_order_was_accepted(venue):
    ex, c = venue()
    ex.inject("drop_after", path="/api/v3/order", method="POST")
    with pytest.raises(ccxt.NetworkError):
        c.create_order(SYM, "limit", "buy", 1, 90, {"clientOrderId": "drop-1"})
    assert ex.requests_to("/api/v3/order")[-1].outcome == "fault:drop_after"
    found = c.fetch_order(None, SYM, {"origClientOrderId": "drop-1"})  # what a careful retry does first
    assert found["status"] == "open" and found["price"] == 90.0
    with pytest.raises(ccxt.InvalidOrder, match="Duplicate order sent"):
        c.create_order(SYM, "limit", "buy", 1, 90, {"clientOrderId": "drop-1"})  # a blind retry is refused
    assert len(ex.orders) == 1
    ex.inject("drop_after", path="/api/v3/order", method="POST")
    with pytest.raises(ccxt.NetworkError):
        c.create_order(SYM, "market", "buy", 1, None, {"clientOrderId": "drop-2"})
    assert c.fetch_order(None, SYM, {"origClientOrderId": "drop-2"})["status"] == "closed"  # filled, unanswered


def test_repeated_and_late_candles(venue):
    ex, c = venue({i: (100.0 + i, 101.0 + i, 99.0 + i, 100.5 + i) for i in range(60)})
    kl = "/api/v3/klines"
    ex.inject("repeat")
    rows = c.fetch_ohlcv(SYM, "15m", limit=3)  # 4 rows served, ccxt keeps the newest 3
    assert [r[0] for r in rows] == [t(NOW - 1), t(NOW - 1), t(NOW)]  # the newest closed bar twice
    assert rows[0] == rows[1]
    assert [r[0] for r in c.fetch_ohlcv(SYM, "15m", limit=3)] == [t(NOW - 2), t(NOW - 1), t(NOW)]
    ex.inject("late", times=2)
    for _ in range(2):
        rows = c.fetch_ohlcv(SYM, "15m", limit=3)
        # As of one bar ago: bar 19 still shows as the open candle, bar 20 is absent.
        assert [r[0] for r in rows] == [t(NOW - 3), t(NOW - 2), t(NOW - 1)]
        assert rows[-1][1:] == [100.0 + NOW - 1] * 4 + [0.0]
    assert c.fetch_ohlcv(SYM, "15m", limit=1)[0][0] == t(NOW)
    assert [r.note for r in ex.requests_to(kl)] == ["fault:repeat", "", "fault:late", "fault:late", ""]


# ----- nts exchange replay ------------------------------------------------------------------
def test_nts_exchange_replay_serves_until_sigint(tmp_path):
    frame = flat_frame({i: (100.0 + i, 101.0 + i, 99.0 + i, 100.5 + i) for i in range(60)})
    data = tmp_path / "candles.csv"
    write_ohlcv_csv(frame, data)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", KEY_ENV: KEY, SECRET_ENV: SECRET}
    cmd = [sys.executable, "-m", "cli.main", "exchange", "replay", "--data", str(data), "--port", "0",
           "--speed", "100", "--start", "2024-03-01T05:00", "--cash", "500",
           "--api-key-env", KEY_ENV, "--secret-env", SECRET_ENV]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines, url = [], None
        deadline = time.monotonic() + 45
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"http://127\.0\.0\.1:\d+", line)
            url = found.group(0) if found else None
        assert url, "".join(lines) + proc.stderr.read() if proc.poll() is not None else "".join(lines)
        for _ in range(4):
            lines.append(proc.stdout.readline())
        banner = "".join(lines)
        assert "60 bars, 2024-03-01 00:00 .. 2024-03-01 14:45 UTC" in banner
        assert "replay starts 2024-03-01 05:00 UTC (20 bars of history" in banner and "clock x100" in banner
        c = make_exchange("binance", url=url, timeout_ms=3000)
        c.apiKey, c.secret = KEY, SECRET
        now = c.fetch_time()
        assert t(NOW) <= now < t(NOW) + 120_000  # 100x: seconds of wall time are minutes here
        (candle,) = c.fetch_ohlcv(SYM, "15m", since=t(NOW - 1), limit=1)
        assert candle == [t(NOW - 1), 119.0, 120.0, 118.0, 119.5, 10.0]
        assert c.fetch_balance()["USDT"]["free"] == 500.0
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped at 2024-03-01" in out and err == ""
