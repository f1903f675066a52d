"""The loopback exchange speaks Binance's klines semantics and its transport behaves."""
from __future__ import annotations

import time

import json
import socket
import urllib.error
import urllib.parse
import urllib.request

import pandas as pd
import pytest

from venues.loopback import LoopbackExchange, Response
from core.synthetic import synthetic_ohlcv

TF_MS = 900_000


@pytest.fixture(scope="module")
def frame():
    return synthetic_ohlcv(1500, seed=3)


@pytest.fixture
def lb(frame):
    # Clock 5 minutes into bar 1200: bars 0..1199 closed, 1200 open, 1201.. not yet opened.
    with LoopbackExchange(frame, now=frame.index[1200] + pd.Timedelta("5min")) as ex:
        yield ex


def ms(i, frame):
    return int(frame.index[i].value // 1_000_000)


def get(lb, path, **params):
    """GET and return (status, decoded JSON or text)."""
    url = f"{lb.url}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_kline_row_format_and_exact_values(lb, frame):
    status, rows = get(lb, "/api/v3/klines", symbol="BTCUSDT", interval="15m", startTime=ms(10, frame), limit=2)
    assert status == 200 and len(rows) == 2
    row = rows[0]
    assert len(row) == 12 and row[0] == ms(10, frame) and row[6] == ms(10, frame) + TF_MS - 1
    assert [float(x) for x in row[1:6]] == frame.iloc[10].tolist()  # exact round trip through text
    assert all(isinstance(x, str) for x in row[1:6]) and isinstance(row[8], int) and row[11] == "0"


def test_start_end_limit_semantics(lb, frame):
    kl = dict(symbol="BTCUSDT", interval="15m")
    _, rows = get(lb, "/api/v3/klines", startTime=ms(0, frame), **kl)
    assert len(rows) == 500 and rows[0][0] == ms(0, frame)  # default limit 500
    _, rows = get(lb, "/api/v3/klines", startTime=ms(5, frame) - 1, endTime=ms(8, frame), **kl)
    assert [r[0] for r in rows] == [ms(i, frame) for i in range(5, 9)]  # both bounds inclusive
    _, rows = get(lb, "/api/v3/klines", endTime=ms(100, frame), limit=3, **kl)
    assert [r[0] for r in rows] == [ms(i, frame) for i in (98, 99, 100)]  # endTime alone: last bars
    _, rows = get(lb, "/api/v3/klines", limit=2, **kl)
    assert [r[0] for r in rows] == [ms(1199, frame), ms(1200, frame)]  # newest: includes the open bar
    assert float(rows[-1][5]) == pytest.approx(frame["volume"].iloc[1200] / 3)  # 5 of 15 minutes traded
    assert rows[-1][6] > lb.now_ms
    _, rows = get(lb, "/api/v3/klines", startTime=ms(1300, frame), **kl)
    assert rows == []  # bars after the clock do not exist yet


@pytest.mark.parametrize("params,code", [
    (dict(symbol="ETHUSDT", interval="15m"), -1121),
    (dict(interval="15m"), -1102),
    (dict(symbol="BTCUSDT", interval="1h"), -1120),
    (dict(symbol="BTCUSDT", interval="15m", limit=1001), -1130),
    (dict(symbol="BTCUSDT", interval="15m", startTime=10, endTime=5), -1023),
    (dict(symbol="BTCUSDT", interval="15m", startTime="abc"), -1100),
])
def test_binance_error_codes(lb, params, code):
    status, body = get(lb, "/api/v3/klines", **params)
    assert status == 400 and body["code"] == code


def test_time_exchange_info_unknown_path_and_request_log(lb):
    status, body = get(lb, "/api/v3/time")
    assert status == 200 and body["serverTime"] == lb.now_ms  # the (settable) market clock
    assert abs(body["nts_signTime"] - time.time() * 1000) < 5000  # the clock signatures are checked against
    status, info = get(lb, "/api/v3/exchangeInfo")
    sym = info["symbols"][0]
    assert status == 200 and sym["symbol"] == "BTCUSDT" and sym["status"] == "TRADING"
    assert {f["filterType"] for f in sym["filters"]} >= {"PRICE_FILTER", "LOT_SIZE", "NOTIONAL"}
    assert get(lb, "/api/v3/order")[0] == 404  # orders are a later issue
    assert lb.counts == {"/api/v3/time": 1, "/api/v3/exchangeInfo": 1, "/api/v3/order": 1}
    assert [r.outcome for r in lb.requests] == ["200", "200", "404"]


def test_fault_schedule_skip_times_and_retry_after(lb):
    lb.inject("status", status=429, retry_after=2, path="/api/v3/time", skip=1, times=2)
    outcomes = []
    for _ in range(4):
        try:
            with urllib.request.urlopen(f"{lb.url}/api/v3/time", timeout=5) as resp:
                outcomes.append(resp.status)
        except urllib.error.HTTPError as err:
            outcomes.append((err.code, err.headers["Retry-After"], json.loads(err.read())["code"]))
    assert outcomes == [200, (429, "2", -1003), (429, "2", -1003), 200]
    assert lb.faults == []


def test_dropped_connection_closes_without_a_response(lb):
    lb.inject("drop", path=None)
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)) as info:
        urllib.request.urlopen(f"{lb.url}/api/v3/ping", timeout=5)
    assert not isinstance(info.value, urllib.error.HTTPError)
    assert lb.requests[-1].outcome == "fault:drop"


def test_routes_table_accepts_new_handlers_and_form_bodies(lb):
    lb.add_route("POST", "/api/v3/echo", lambda req: Response(201, {"params": req.params}, {"X-Test": "1"}))
    data = urllib.parse.urlencode({"side": "BUY", "quantity": "0.1"}).encode()
    req = urllib.request.Request(f"{lb.url}/api/v3/echo?symbol=BTCUSDT", data=data, method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 201 and resp.headers["X-Test"] == "1"
        assert json.loads(resp.read())["params"] == {"symbol": "BTCUSDT", "side": "BUY", "quantity": "0.1"}


def test_stop_releases_the_port(frame):
    ex = LoopbackExchange(frame).start()
    port = int(ex.url.rsplit(":", 1)[1])
    ex.stop()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more
    with pytest.raises(RuntimeError, match="not started"):
        ex.url
