"""A loopback Binance: a small HTTP server on 127.0.0.1 speaking the spot REST subset ccxt
uses for markets, server time and candles, with a settable clock and injectable faults.

Tests and the demo point the REAL ``ccxt.binance`` client at it (``make_exchange(url=...)``)
so every byte goes through ccxt's request building, parsing and error mapping.

Served here: ``GET /api/v3/ping``, ``/api/v3/time``, ``/api/v3/exchangeInfo``,
``/api/v3/klines``. Routes are a table ``(method, path) -> handler(Request) -> Response``;
:meth:`LoopbackExchange.add_route` adds endpoints without touching the transport, and
``signed=True`` puts Binance's request authentication in front of a handler (API key
header, ``timestamp``/``recvWindow``, HMAC-SHA256 ``signature``; see :meth:`_authenticate`).
:mod:`venues.replay` builds the trading endpoints on top. Candle prices go out as Python
``repr`` strings (shortest exact round-trip) rather than Binance's fixed 8 decimals, so a
download can be compared with the served frame for exact equality.

Faults (a FIFO queue, see :meth:`inject`): an HTTP status (429 with ``Retry-After``,
500/502/503 ...), a slow response (longer than the client timeout), a dropped connection
(socket closed without a response) and ``drop_after`` (the request is processed, e.g. an
order is accepted, and then the socket is closed without a response).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import parse_qsl, unquote_plus, urlsplit

import numpy as np
import pandas as pd

from core.dates import parse_utc, to_epoch_ms
from core.timeframes import timeframe_seconds
from core.ohlcv import load_ohlcv, validate_ohlcv


@dataclass
class Request:
    """One parsed HTTP request as handlers see it.

    ``params`` merges the query string and a form body; ``query`` is the raw query string
    (the signature is computed over the raw text). ``fault`` is a queued fault of a kind
    the route itself applies (see ``LoopbackExchange.route_fault_kinds``); ``note`` is
    what the handler wants written next to the outcome in the request log.
    """

    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""
    query: str = ""
    fault: "Fault | None" = None
    note: str = ""

    def header(self, name: str) -> str | None:
        """Header value by case-insensitive name (None when absent)."""
        low = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == low), None)


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
    ``Retry-After``), ``status_after`` (run the handler, so its effect happens, then answer
    ``status`` anyway: Binance's 5xx "execution status unknown"), ``slow`` (wait ``delay_s`` before answering normally), ``drop``
    (close the connection without a response) or ``drop_after`` (run the handler, so its
    effect happens, then close without a response); subclasses add kinds their routes
    apply. It fires ``times`` times after letting ``skip`` matching requests through;
    ``method`` (None = any) narrows the match, e.g. POST of ``/api/v3/order`` only;
    ``param`` (None = any) to requests carrying that parameter, e.g. ``origClientOrderId``
    (lookups by client id, not by order id).
    """

    kind: str
    status: int = 503
    retry_after: float | None = None
    delay_s: float = 2.0
    path: str | None = "/api/v3/klines"
    times: int = 1
    skip: int = 0
    body: Any = None
    method: str | None = None
    param: str | None = None


@dataclass
class RequestRecord:
    """Log entry per request: what came in, when (monotonic s) and how it was answered.

    ``params`` never hold credentials: the API key travels in a header (not logged), the
    ``signature`` is replaced by ``<redacted>``, and so is any value equal to the
    configured key or secret. ``note`` carries the handler's remark (Binance error code,
    applied route fault).
    """

    method: str
    path: str
    params: dict[str, str]
    t: float
    outcome: str  # "200", "400", ... or "fault:429", "fault:slow", "fault:drop", "fault:drop_after"
    note: str = ""


@dataclass(frozen=True)
class MarketFilters:
    """Binance symbol filters served in exchangeInfo (ccxt derives precision and limits
    from them) and enforced by the trading endpoints of :mod:`venues.replay`.

    Defaults are BTCUSDT's: tick 0.01, step 0.00001, min notional 5 USDT.
    """

    tick_size: Decimal = Decimal("0.01")
    min_price: Decimal = Decimal("0.01")
    max_price: Decimal = Decimal("1000000")
    step_size: Decimal = Decimal("0.00001")
    min_qty: Decimal = Decimal("0.00001")
    max_qty: Decimal = Decimal("9000")
    min_notional: Decimal = Decimal("5")
    max_notional: Decimal = Decimal("9000000")
    max_num_orders: int = 200

    def as_binance(self) -> list[dict[str, Any]]:
        """The ``filters`` list of one exchangeInfo symbol, numbers as 8-decimal strings."""
        f = _fmt8
        return [
            {"filterType": "PRICE_FILTER", "minPrice": f(self.min_price), "maxPrice": f(self.max_price),
             "tickSize": f(self.tick_size)},
            {"filterType": "LOT_SIZE", "minQty": f(self.min_qty), "maxQty": f(self.max_qty),
             "stepSize": f(self.step_size)},
            {"filterType": "MARKET_LOT_SIZE", "minQty": f(self.min_qty), "maxQty": f(self.max_qty),
             "stepSize": f(self.step_size)},
            {"filterType": "NOTIONAL", "minNotional": f(self.min_notional), "applyMinToMarket": True,
             "maxNotional": f(self.max_notional), "applyMaxToMarket": False, "avgPriceMins": 5},
            {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": int(self.max_num_orders)},
        ]


@dataclass
class _Market:
    symbol: str
    market_id: str
    base: str
    quote: str
    open_ms: np.ndarray
    values: np.ndarray  # n x 5 float64: open high low close volume
    filters: MarketFilters = field(default_factory=MarketFilters)


class ApiError(Exception):
    """A Binance-style refusal raised by a handler: HTTP ``status`` and body ``{code, msg}``."""

    def __init__(self, status: int, code: int, msg: str):
        super().__init__(msg)
        self.code = code
        self.response = Response(status, {"code": code, "msg": msg})


_ApiError = ApiError  # the name handlers used before it became public

# Binance's default when a signed request carries no recvWindow, and its upper bound.
DEFAULT_RECV_WINDOW_MS = 5000
MAX_RECV_WINDOW_MS = 60000
# How far ahead of the server a request timestamp may be (Binance allows 1 s).
MAX_AHEAD_MS = 1000


def _to_ms(value: Any, what: str = "time") -> int:
    """Epoch ms of a time by the one date rule (core.dates): an int is epoch ms, a string
    must be a date or an ISO date-time (a one-line ConfigError naming ``what`` otherwise)."""
    return to_epoch_ms(parse_utc(value, what=what))


def _fmt(x: float) -> str:
    return repr(float(x))


def _fmt8(x: Decimal | float | int) -> str:
    """Binance's fixed 8-decimal number strings."""
    return f"{Decimal(str(x)):.8f}"


def _strip_signature(text: str) -> tuple[str, str | None]:
    """``text`` (a raw query string or form body) without its ``signature=`` component,
    and that signature; the other components stay byte for byte, as they were signed."""
    if not text:
        return "", None
    kept, signature = [], None
    for part in text.split("&"):
        if part.startswith("signature="):
            signature = unquote_plus(part[len("signature="):])
        else:
            kept.append(part)
    return "&".join(kept), signature


class LoopbackExchange:
    """Binance-compatible candle server on 127.0.0.1 (random free port), start/stop or ``with``.

    ``candles``: one canonical frame (served as ``symbol``) or ``{symbol: frame}``.
    ``now``: the exchange clock (anything pandas parses, epoch ms, or None = wall clock);
    only bars that opened at or before it are served, and the bar still open at ``now`` is
    served with partial values, like Binance does. ``filters`` are the symbol filters
    served in exchangeInfo (default BTCUSDT's). ``api_key``/``api_secret`` are the one
    account's credentials for routes added with ``signed=True`` (None: every signed
    request is refused with -2015). ``auth_clock`` (epoch ms) is what request timestamps
    are checked against; default the host's wall clock, which is what ccxt signs with.
    """

    #: fault kinds the transport applies itself; subclasses extend ``route_fault_kinds``
    transport_fault_kinds: tuple[str, ...] = ("status", "status_after", "slow", "drop", "drop_after")
    route_fault_kinds: tuple[str, ...] = ()

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
        filters: MarketFilters | None = None,
        api_key: str | None = None,
        api_secret: str | None = None,
        auth_clock: Callable[[], int] | None = None,
    ):
        frames = {symbol: candles} if isinstance(candles, pd.DataFrame) else dict(candles)
        self.timeframe = timeframe
        self.tf_ms = timeframe_seconds(timeframe) * 1000
        self.max_limit = max_limit
        self.default_limit = default_limit
        self.filters = filters or MarketFilters()
        self._api_key = api_key or None
        self._api_secret = api_secret or None
        self._auth_clock = auth_clock or (lambda: int(time.time() * 1000))
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
        self.signed_routes: set[tuple[str, str]] = set()
        self.add_route("GET", "/api/v3/ping", lambda req: Response(200, {}))
        # serverTime: the (replayed) market clock; nts_signTime: the clock signed requests are
        # checked against (one clock on the real exchange; two here, see venues.replay)
        self.add_route("GET", "/api/v3/time", lambda req: Response(200, {"serverTime": self.now_ms,
                                                                        "nts_signTime": int(self._auth_clock())}))
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
            values=frame.to_numpy(dtype="float64").copy(), filters=self.filters,
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
        if kind not in self.transport_fault_kinds + self.route_fault_kinds:
            raise ValueError(f"unknown fault kind {kind!r}")
        fault = Fault(kind=kind, **kwargs)
        with self._lock:
            self.faults.append(fault)
        return fault

    def _take_fault(self, path: str, method: str | None = None,
                    params: Mapping[str, str] | None = None) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.path is not None and fault.path != path:
                    continue
                if fault.param is not None and fault.param not in (params or {}):
                    continue
                if fault.method is not None and method is not None and fault.method.upper() != method:
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                    return None
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    def _redacted(self, params: Mapping[str, str]) -> dict[str, str]:
        """Params fit for the log: no signature, and no value that is a credential."""
        secrets = {s for s in (self._api_key, self._api_secret) if s}
        return {k: ("<redacted>" if k == "signature" or v in secrets else v) for k, v in params.items()}

    def _record(self, req: Request, outcome: str) -> None:
        record = RequestRecord(req.method, req.path, self._redacted(req.params), time.monotonic(), outcome, req.note)
        with self._lock:
            self.requests.append(record)
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
    def add_route(self, method: str, path: str, handler: Callable[[Request], Response], signed: bool = False) -> None:
        """Register ``handler`` for ``method path`` (replaces an existing one).

        ``signed``: Binance's SIGNED security (TRADE / USER_DATA endpoints): the request
        is authenticated (:meth:`_authenticate`) before the handler sees it.
        """
        key = (method.upper(), path)
        self.routes[key] = handler
        if signed:
            self.signed_routes.add(key)
        else:
            self.signed_routes.discard(key)

    def _authenticate(self, req: Request) -> None:
        """Binance's checks for a SIGNED request, in its order; raise ApiError on failure.

        ``X-MBX-APIKEY`` must be the account's key (-2014 absent/malformed, -2015 wrong:
        HTTP 401); ``timestamp`` and ``signature`` are mandatory (-1102); the signature is
        the HMAC-SHA256 hex digest, keyed with the secret, of the query string
        concatenated with the form body (both without the ``signature`` component), as
        Binance defines ``totalParams`` (-1022); ``recvWindow`` (default 5000 ms, at most
        60000, -1131) bounds how old the timestamp may be against ``auth_clock``, and it
        may be at most 1 s ahead (-1021). No message repeats a credential.
        """
        key = req.header("X-MBX-APIKEY")
        if not key or any(c.isspace() for c in key):
            raise ApiError(401, -2014, "API-key format invalid.")
        if (self._api_key is None or self._api_secret is None
                or not hmac.compare_digest(key.encode(), self._api_key.encode())):
            raise ApiError(401, -2015, "Invalid API-key, IP, or permissions for action.")
        for name in ("timestamp", "signature"):
            if not req.params.get(name):
                raise ApiError(400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
        query, sig_q = _strip_signature(req.query)
        body, sig_b = _strip_signature(req.body.decode("utf-8", "replace") if req.body else "")
        signature = sig_q or sig_b or ""
        expected = hmac.new(self._api_secret.encode(), (query + body).encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(signature.lower().encode(), expected.encode()):
            raise ApiError(400, -1022, "Signature for this request is not valid.")
        timestamp = self._int_param(req.params, "timestamp")
        window = self._int_param(req.params, "recvWindow")
        window = DEFAULT_RECV_WINDOW_MS if window is None else window
        if not 0 < window <= MAX_RECV_WINDOW_MS:
            raise ApiError(400, -1131, f"recvWindow must be less than {MAX_RECV_WINDOW_MS}")
        server = int(self._auth_clock())
        if timestamp > server + MAX_AHEAD_MS:
            raise ApiError(400, -1021, f"Timestamp for this request was {MAX_AHEAD_MS}ms ahead of the server's time.")
        if server - timestamp > window:
            raise ApiError(400, -1021, "Timestamp for this request is outside of the recvWindow.")

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
                "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT",
                               "TAKE_PROFIT", "TAKE_PROFIT_LIMIT"],
                "icebergAllowed": True, "ocoAllowed": True, "otoAllowed": True,
                "quoteOrderQtyMarketAllowed": True, "allowTrailingStop": True, "cancelReplaceAllowed": True,
                "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
                "filters": m.filters.as_binance(),
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
        return self._klines_at(req.params, self.now_ms)

    def _kline_row(self, market: _Market, i: int, now: int) -> list[Any]:
        """Bar ``i`` as a Binance kline row as seen at ``now`` (the bar has opened)."""
        t = int(market.open_ms[i])
        o, h, l, c, v = market.values[i]
        if t + self.tf_ms > now:
            # Still open: Binance shows it with the partial volume traded so far.
            frac = (now - t) / self.tf_ms
            v = v * frac
        return [t, _fmt(o), _fmt(h), _fmt(l), _fmt(c), _fmt(v), t + self.tf_ms - 1,
                _fmt(v * c), int(v * 10) + 1, _fmt(v / 2), _fmt(v * c / 2), "0"]

    def _klines_at(self, p: Mapping[str, str], now: int) -> Response:
        """The klines answer for params ``p`` with the exchange clock at ``now``."""
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
        last = now if end is None else min(end, now)  # bars that have not opened yet do not exist
        hi = int(np.searchsorted(market.open_ms, last, side="right"))
        if start is not None:
            lo = int(np.searchsorted(market.open_ms, start, side="left"))
            hi = min(hi, lo + limit)
        else:
            lo = max(0, hi - limit)
        rows = [self._kline_row(market, i, now) for i in range(lo, max(lo, hi))]
        return Response(200, rows)

    # ----- transport ---------------------------------------------------------------------
    def _dispatch(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        if body and "x-www-form-urlencoded" in (handler.headers.get("Content-Type") or ""):
            params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        req = Request(handler.command, parts.path, params, {k: v for k, v in handler.headers.items()}, body,
                      query=parts.query)
        fault = self._take_fault(req.path, req.method, req.params)
        if fault is not None and fault.kind == "drop":
            self._record(req, "fault:drop")
            self._hang_up(handler)
            return
        if fault is not None and fault.kind == "drop_after":
            # The request takes effect (an order is accepted ...), the answer never arrives.
            response = self._route(req)
            req.note = (req.note + " " if req.note else "") + f"unsent {response.status}"
            self._record(req, "fault:drop_after")
            self._hang_up(handler)
            return
        if fault is not None and fault.kind == "status_after":
            response = self._route(req)  # takes effect; the client is told it failed
            req.note = (req.note + " " if req.note else "") + f"unsent {response.status}"
            self._record(req, f"fault:status_after:{fault.status}")
            self._send(handler, Response(fault.status, fault.body if fault.body is not None else
                                         {"code": -1001, "msg": "Internal error; unable to process your request. "
                                                                "Please try again."}))
            return
        if fault is not None and fault.kind in self.route_fault_kinds:
            req.fault = fault  # the handler applies it; the log notes it
            fault = None
        if fault is not None and fault.kind == "status":
            self._record(req, f"fault:{fault.status}")
            default = ({"code": -1003, "msg": "Too many requests; current limit is exceeded."}
                       if fault.status in (418, 429) else
                       {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."})
            headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            self._send(handler, Response(fault.status, default if fault.body is None else fault.body, headers))
            return
        if req.fault is not None:
            req.note = f"fault:{req.fault.kind}"
        if fault is not None and fault.kind == "slow":
            self._record(req, "fault:slow")
            if self._stop.wait(fault.delay_s):
                return
        response = self._route(req)
        if fault is None:
            self._record(req, str(response.status))
        self._send(handler, response)

    def _route(self, req: Request) -> Response:
        """Authenticate (signed routes) and run the handler; refusals become responses."""
        key = (req.method, req.path)
        route = self.routes.get(key)
        if route is None:
            return Response(404, {"code": -1, "msg": f"loopback: no route {req.method} {req.path}"})
        try:
            if key in self.signed_routes:
                self._authenticate(req)
            return route(req)
        except ApiError as err:
            req.note = (req.note + " " if req.note else "") + f"code {err.code}"
            return err.response
        except Exception as exc:  # a handler bug must show up as a 500, not a hung client
            return Response(500, {"code": -1000, "msg": f"loopback handler error: {type(exc).__name__}: {exc}"})

    @staticmethod
    def _hang_up(handler: BaseHTTPRequestHandler) -> None:
        """Close the client's socket without answering."""
        handler.close_connection = True
        try:
            handler.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

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
