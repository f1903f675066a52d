"""A loopback Binance: a small HTTP server on 127.0.0.1 speaking the spot REST subset ccxt
uses for markets, server time and candles, with a settable clock and injectable faults.

Tests and the demo point the REAL ``ccxt.binance`` client at it (``make_exchange(url=...)``)
so every byte goes through ccxt's request building, parsing and error mapping.

Served now: ``GET /api/v3/ping``, ``/api/v3/time``, ``/api/v3/exchangeInfo``,
``/api/v3/klines``. Routes are a table ``(method, path) -> handler(Request) -> Response``;
:meth:`LoopbackExchange.add_route` lets later work add signed endpoints (orders, account)
without touching the transport. Prices go out as Python ``repr`` strings (shortest exact
round-trip) rather than Binance's fixed 8 decimals, so a download can be compared with
the served frame for exact equality.

Faults (a FIFO queue, see :meth:`inject`): an HTTP status (429 with ``Retry-After``,
500/502/503 ...), a slow response (longer than the client timeout) and a dropped connection
(socket closed without a response).
"""
from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pandas as pd

from core.timeframes import timeframe_seconds
from core.ohlcv import load_ohlcv, validate_ohlcv


@dataclass
class Request:
    """One parsed HTTP request as handlers see it."""

    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Response:
    """What a handler returns: status, JSON-able body, extra headers."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Fault:
    """A scheduled failure for requests to ``path`` (None = any path).

    kind: ``status`` (answer ``status`` with a Binance-style error body and optional
    ``Retry-After``), ``slow`` (wait ``delay_s`` before answering normally) or ``drop``
    (close the connection without a response). It fires ``times`` times after letting
    ``skip`` matching requests through.
    """

    kind: str
    status: int = 503
    retry_after: float | None = None
    delay_s: float = 2.0
    path: str | None = "/api/v3/klines"
    times: int = 1
    skip: int = 0
    body: Any = None


@dataclass
class RequestRecord:
    """Log entry per request: what came in, when (monotonic s) and how it was answered."""

    method: str
    path: str
    params: dict[str, str]
    t: float
    outcome: str  # "200", "400", ... or "fault:429", "fault:slow", "fault:drop"


@dataclass
class _Market:
    symbol: str
    market_id: str
    base: str
    quote: str
    open_ms: np.ndarray
    values: np.ndarray  # n x 5 float64: open high low close volume


class _ApiError(Exception):
    def __init__(self, status: int, code: int, msg: str):
        super().__init__(msg)
        self.response = Response(status, {"code": code, "msg": msg})


def _to_ms(value: Any) -> int:
    if isinstance(value, (int, np.integer)):
        return int(value)
    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")
    return int(ts.value // 1_000_000)


def _fmt(x: float) -> str:
    return repr(float(x))


class LoopbackExchange:
    """Binance-compatible candle server on 127.0.0.1 (random free port), start/stop or ``with``.

    ``candles``: one canonical frame (served as ``symbol``) or ``{symbol: frame}``.
    ``now``: the exchange clock (anything pandas parses, epoch ms, or None = wall clock);
    only bars that opened at or before it are served, and the bar still open at ``now`` is
    served with partial values, like Binance does.
    """

    def __init__(
        self,
        candles: pd.DataFrame | Mapping[str, pd.DataFrame],
        symbol: str = "BTC/USDT",
        timeframe: str = "15m",
        now: Any = None,
        host: str = "127.0.0.1",
        port: int = 0,
        max_limit: int = 1000,
        default_limit: int = 500,
    ):
        frames = {symbol: candles} if isinstance(candles, pd.DataFrame) else dict(candles)
        self.timeframe = timeframe
        self.tf_ms = timeframe_seconds(timeframe) * 1000
        self.max_limit = max_limit
        self.default_limit = default_limit
        self.markets: dict[str, _Market] = {}
        for sym, frame in frames.items():
            self._add_market(sym, frame)
        self._now: int | None = None if now is None else _to_ms(now)
        self._host, self._port = host, port
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.faults: list[Fault] = []
        self.requests: list[RequestRecord] = []
        self.counts: Counter[str] = Counter()
        self.routes: dict[tuple[str, str], Callable[[Request], Response]] = {}
        self.add_route("GET", "/api/v3/ping", lambda req: Response(200, {}))
        self.add_route("GET", "/api/v3/time", lambda req: Response(200, {"serverTime": self.now_ms}))
        self.add_route("GET", "/api/v3/exchangeInfo", self._exchange_info)
        self.add_route("GET", "/api/v3/klines", self._klines)

    @classmethod
    def from_file(cls, path: str | Path, symbol: str = "BTC/USDT", timeframe: str = "15m", **kwargs) -> "LoopbackExchange":
        """Serve the candles of a validated file (CSV, CSV.gz or Parquet)."""
        return cls(load_ohlcv(path, timeframe=timeframe), symbol=symbol, timeframe=timeframe, **kwargs)

    # ----- data and clock -------------------------------------------------------------
    def _add_market(self, symbol: str, frame: pd.DataFrame) -> None:
        frame, _ = validate_ohlcv(frame, timeframe=self.timeframe)
        if "/" not in symbol:
            raise ValueError(f"symbol {symbol!r}: expected BASE/QUOTE")
        base, quote = symbol.split("/", 1)
        self.markets[base + quote] = _Market(
            symbol=symbol, market_id=base + quote, base=base, quote=quote,
            open_ms=(frame.index.asi8 // 1_000_000).astype(np.int64),
            values=frame.to_numpy(dtype="float64").copy(),
        )

    @property
    def now_ms(self) -> int:
        """The exchange clock in epoch ms."""
        return int(time.time() * 1000) if self._now is None else self._now

    def set_now(self, now: Any) -> None:
        """Move the exchange clock (None = follow the wall clock)."""
        self._now = None if now is None else _to_ms(now)

    def closed_candles(self, symbol: str = "BTC/USDT") -> pd.DataFrame:
        """The bars this exchange considers closed at ``now``: what a correct download gets."""
        m = self.markets[symbol.replace("/", "")]
        keep = m.open_ms + self.tf_ms <= self.now_ms
        index = pd.DatetimeIndex(pd.to_datetime(m.open_ms[keep], unit="ms", utc=True), name="timestamp").as_unit("ns")
        return pd.DataFrame(m.values[keep], index=index, columns=["open", "high", "low", "close", "volume"])

    # ----- faults and request log -------------------------------------------------------
    def inject(self, kind: str, **kwargs: Any) -> Fault:
        """Queue a fault (see :class:`Fault`); returns it. Faults fire in FIFO order."""
        if kind not in ("status", "slow", "drop"):
            raise ValueError(f"unknown fault kind {kind!r}")
        fault = Fault(kind=kind, **kwargs)
        with self._lock:
            self.faults.append(fault)
        return fault

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.path is not None and fault.path != path:
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                    return None
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    def _record(self, req: Request, outcome: str) -> None:
        with self._lock:
            self.requests.append(RequestRecord(req.method, req.path, dict(req.params), time.monotonic(), outcome))
            self.counts[req.path] += 1

    def requests_to(self, path: str) -> list[RequestRecord]:
        """All logged requests to ``path`` (faulted ones included), oldest first."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def reset_log(self) -> None:
        """Forget logged requests and counts (the candles, clock and faults stay)."""
        with self._lock:
            self.requests.clear()
            self.counts.clear()

    # ----- routes -------------------------------------------------------------------------
    def add_route(self, method: str, path: str, handler: Callable[[Request], Response]) -> None:
        """Register ``handler`` for ``method path`` (replaces an existing one)."""
        self.routes[(method.upper(), path)] = handler

    def _market(self, params: Mapping[str, str]) -> _Market:
        sym = params.get("symbol")
        if not sym:
            raise _ApiError(400, -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        market = self.markets.get(sym)
        if market is None:
            raise _ApiError(400, -1121, "Invalid symbol.")
        return market

    def _exchange_info(self, req: Request) -> Response:
        wanted = req.params.get("symbol")
        symbols = []
        for m in self.markets.values():
            if wanted and wanted != m.market_id:
                continue
            symbols.append({
                "symbol": m.market_id, "status": "TRADING",
                "baseAsset": m.base, "baseAssetPrecision": 8,
                "quoteAsset": m.quote, "quotePrecision": 8, "quoteAssetPrecision": 8,
                "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
                "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
                "icebergAllowed": True, "ocoAllowed": True, "otoAllowed": True,
                "quoteOrderQtyMarketAllowed": True, "allowTrailingStop": True, "cancelReplaceAllowed": True,
                "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
                "filters": [
                    {"filterType": "PRICE_FILTER", "minPrice": "0.01000000", "maxPrice": "1000000.00000000",
                     "tickSize": "0.01000000"},
                    {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000",
                     "stepSize": "0.00001000"},
                    {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
                     "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
                ],
                "permissions": [], "permissionSets": [["SPOT"]],
                "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
                "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
            })
        if wanted and not symbols:
            raise _ApiError(400, -1121, "Invalid symbol.")
        return Response(200, {
            "timezone": "UTC", "serverTime": self.now_ms,
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            ],
            "exchangeFilters": [], "symbols": symbols,
        })

    def _int_param(self, params: Mapping[str, str], name: str) -> int | None:
        raw = params.get(name)
        if raw is None or raw == "":
            return None
        try:
            return int(raw)
        except ValueError:
            raise _ApiError(400, -1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.")

    def _klines(self, req: Request) -> Response:
        p = req.params
        market = self._market(p)
        if p.get("interval") != self.timeframe:
            raise _ApiError(400, -1120, "Invalid interval.")
        limit = self._int_param(p, "limit")
        limit = self.default_limit if limit is None else limit
        if not 1 <= limit <= self.max_limit:
            raise _ApiError(400, -1130, "Data sent for parameter 'limit' is not valid.")
        start, end = self._int_param(p, "startTime"), self._int_param(p, "endTime")
        if start is not None and end is not None and start > end:
            raise _ApiError(400, -1023, "Start time is greater than end time.")
        now = self.now_ms
        last = now if end is None else min(end, now)  # bars that have not opened yet do not exist
        hi = int(np.searchsorted(market.open_ms, last, side="right"))
        if start is not None:
            lo = int(np.searchsorted(market.open_ms, start, side="left"))
            hi = min(hi, lo + limit)
        else:
            lo = max(0, hi - limit)
        rows = []
        for i in range(lo, max(lo, hi)):
            t = int(market.open_ms[i])
            o, h, l, c, v = market.values[i]
            if t + self.tf_ms > now:
                # Still open: Binance shows it with the partial volume traded so far.
                frac = (now - t) / self.tf_ms
                v = v * frac
            rows.append([
                t, _fmt(o), _fmt(h), _fmt(l), _fmt(c), _fmt(v), t + self.tf_ms - 1,
                _fmt(v * c), int(v * 10) + 1, _fmt(v / 2), _fmt(v * c / 2), "0",
            ])
        return Response(200, rows)

    # ----- transport ---------------------------------------------------------------------
    def _dispatch(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        if body and "x-www-form-urlencoded" in (handler.headers.get("Content-Type") or ""):
            params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        req = Request(handler.command, parts.path, params, {k: v for k, v in handler.headers.items()}, body)
        fault = self._take_fault(req.path)
        if fault is not None and fault.kind == "drop":
            self._record(req, "fault:drop")
            handler.close_connection = True
            try:
                handler.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if fault is not None and fault.kind == "status":
            self._record(req, f"fault:{fault.status}")
            default = ({"code": -1003, "msg": "Too many requests; current limit is exceeded."}
                       if fault.status in (418, 429) else
                       {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."})
            headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            self._send(handler, Response(fault.status, default if fault.body is None else fault.body, headers))
            return
        if fault is not None and fault.kind == "slow":
            self._record(req, "fault:slow")
            if self._stop.wait(fault.delay_s):
                return
        route = self.routes.get((req.method, req.path))
        if route is None:
            response = Response(404, {"code": -1, "msg": f"loopback: no route {req.method} {req.path}"})
        else:
            try:
                response = route(req)
            except _ApiError as err:
                response = err.response
            except Exception as exc:  # a handler bug must show up as a 500, not a hung client
                response = Response(500, {"code": -1000, "msg": f"loopback handler error: {exc!r}"})
        if fault is None:
            self._record(req, str(response.status))
        self._send(handler, response)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, response: Response) -> None:
        payload = response.body if isinstance(response.body, (bytes, str)) else json.dumps(response.body)
        data = payload.encode() if isinstance(payload, str) else payload
        try:
            handler.send_response(response.status)
            handler.send_header("Content-Type", "application/json;charset=UTF-8")
            handler.send_header("Content-Length", str(len(data)))
            for k, v in response.headers.items():
                handler.send_header(k, v)
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test): nothing to answer

    @property
    def url(self) -> str:
        """Base URL to give ``make_exchange(url=...)``; only valid after :meth:`start`."""
        if self._server is None:
            raise RuntimeError("loopback exchange not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "LoopbackExchange":
        """Bind and serve in a background thread; returns self."""
        if self._server is not None:
            return self
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server naming
                app._dispatch(self)

            do_POST = do_GET
            do_DELETE = do_GET
            do_PUT = do_GET

            def log_message(self, fmt, *args):  # keep test output clean; the request log has it all
                return

        self._stop.clear()
        server = ThreadingHTTPServer((self._host, self._port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="loopback-exchange", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port (pending slow responses are abandoned)."""
        if self._server is None:
            return
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> "LoopbackExchange":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
