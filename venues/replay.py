"""Replay exchange: the loopback Binance with one trading account, matching orders against
replayed candles on an accelerated (or manually stepped) clock.

The REAL ``ccxt.binance`` client talks to it through ``make_exchange(url=...)``:
``fetch_balance``, ``create_order``, ``fetch_order``, ``cancel_order``,
``fetch_open_orders``, ``fetch_orders``, ``fetch_my_trades``, ``fetch_ticker(s)``,
``fetch_time``, ``fetch_ohlcv`` and ``cancel_all_orders`` need nothing else (no ``sapi``).

Clock. ``now = start + wall_seconds_since_start() * speed``; ``speed=0`` freezes it so that
tests step it with :meth:`ReplayExchange.advance` / :meth:`ReplayExchange.set_now`
(forward only). A bar is served as closed once ``open + timeframe <= now``; the bar that
contains ``now`` is served as the open candle, and only its opening print is known: open
= high = low = close = its open, volume 0 (the replay never shows what the rest of the
bar will do). ``GET /api/v3/time`` is this clock. Request timestamps (``recvWindow``) are
checked against the host's wall clock, the clock ccxt signs with: the replayed market
clock may run 1000x and lie years back, so no client could sign against it.

Prices. The last traded price at ``now`` is the open of the bar containing ``now`` (its
first trade), or the close of the newest closed bar when ``now`` falls in a data gap or
after the data end. Tickers and book tickers show it (bid = ask = last: no spread).

Fills (each fill is one trade with its own id; ``qty`` in base units):

* MARKET: fills at once, completely, at the last price (taker). ``quoteOrderQty`` buys or
  sells ``floor(quoteOrderQty / price)`` to the lot step.
* LIMIT placed when marketable (buy price >= last, sell price <= last): fills at once at
  the last price (price improvement, taker). Otherwise it rests. A resting order takes
  part only in bars that OPEN AFTER it was placed: at such a bar's open, if the open is at
  or through the limit (buy: open <= price), it fills at the open; else, when the bar has
  closed, if the bar traded at or through the limit (buy: low <= price, sell: high >=
  price), it fills at the limit price (maker). Queue position is not modelled: a touch
  fills. IOC fills what it can at once and expires the rest; FOK fills completely at
  once or expires; LIMIT_MAKER is refused when marketable.
* STOP_LOSS(_LIMIT) / TAKE_PROFIT(_LIMIT): placement is refused when the stop would
  trigger immediately. Sell stop-loss and buy take-profit trigger when the price falls
  to the stop, buy stop-loss and sell take-profit when it rises to it; in a later bar
  either at its open (open through the stop: trigger price = open) or in its range
  (trigger price = stop). STOP_LOSS/TAKE_PROFIT then fill at the trigger price (taker);
  the _LIMIT kinds become a limit order at ``price``: marketable at the trigger price ->
  filled there (taker), otherwise they rest by the LIMIT rules (triggered at a bar's
  open they may still fill in that bar's range; triggered inside the range, from the
  next bar on).
* Fees: ``maker_fee`` for resting fills, ``taker_fee`` for immediate ones (default 0.1%
  both), charged as Binance does without BNB: the buyer pays in the base asset received
  (``commission = qty * rate``), the seller in the quote asset received (``quote * rate``),
  8 decimals, reported in myTrades ``commission``/``commissionAsset``.
* Funds: a resting buy reserves ``qty * price`` quote (a stop-market buy ``qty * stop``),
  a resting sell reserves ``qty`` base (``locked`` in the account); a fill releases the
  reservation and books the actual amounts. A stop-market buy that triggers at a gap
  above the reservation and cannot be paid expires.

OCO order lists (``POST /api/v3/orderList/oco``, the endpoint ccxt 4.5.90 signs as
``privatePostOrderListOco`` and fills with ``listClientOrderId``/``aboveClientOrderId``/
``belowClientOrderId``; ``GET``/``DELETE /api/v3/orderList``, ``GET /api/v3/openOrderList``):
two legs of one ``quantity`` and side, ``aboveType``/``belowType`` with ``above*``/``below*``
price, stop price, time in force and client id. As on Binance: a SELL list is a
LIMIT_MAKER / TAKE_PROFIT(_LIMIT) above the last price and a STOP_LOSS(_LIMIT) below it, a
BUY list the mirror image (else -1116); the legs' levels must straddle the last price
(else -2010 "The relationship of the prices for the orders is not correct."); the list
reserves the funds of ONE leg (a SELL reserves ``quantity`` base once, which is the point:
two plain sell orders would each lock the whole position). Both legs are ordinary orders
in ``openOrders``/``GET order`` (with their ``orderListId``). As soon as one leg executes
(a stop triggers, a limit fills even partly) the other leg is EXPIRED and its reservation
moves to the executing leg; canceling either leg, or the list, cancels both. The stop leg
is created first (the lower order id): a bar that reaches both legs triggers the stop, the
labels' conservative tie. Unknown list: -2013 "Order list does not exist." (query), -2011
"Unknown order list sent." (cancel, also for a list that is already done).

Faults on top of the loopback ones (429/5xx ``status``, ``slow``, ``drop``,
``drop_after`` -- e.g. an accepted order whose response never arrives): ``partial``
(:meth:`ReplayExchange.inject`, the next ``times`` accepted limit-type orders fill in
``pieces`` parts, at most one part per bar, each its own trade), ``repeat`` (klines serves
the newest closed bar twice) and ``late`` (klines is served as of one bar ago: the newest
closed bar still shows as the open candle and the current one is absent).
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_UP, Decimal, InvalidOperation
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from venues.loopback import (
    ApiError,
    Fault,
    LoopbackExchange,
    MarketFilters,
    Request,
    Response,
    _fmt8,
    _Market,
    _to_ms,
)
from core.errors import ConfigError, NtsError

log = logging.getLogger("nts.replay")

Q8 = Decimal("0.00000001")
ZERO = Decimal(0)
DAY_MS = 86_400_000

ORDER_TYPES = ("LIMIT", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT", "LIMIT_MAKER")
LIMIT_PRICED = {"LIMIT", "LIMIT_MAKER", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"}
STOP_TYPES = {"STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT"}
TIF_REQUIRED = {"LIMIT", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"}
OPEN_STATUSES = ("NEW", "PARTIALLY_FILLED")
_NUMBER = re.compile(r"^[0-9]{1,20}(\.[0-9]{1,20})?$")
_CLIENT_ID = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")


class ReplayError(NtsError):
    """The replay exchange cannot start as asked (start outside the data, port in use, ...)."""


def _d(x: float) -> Decimal:
    """A candle float as an 8-decimal Decimal (Binance's price precision)."""
    return Decimal(repr(float(x))).quantize(Q8, ROUND_HALF_EVEN)


def _q8(x: Decimal, rounding: str = ROUND_HALF_EVEN) -> Decimal:
    return x.quantize(Q8, rounding)


def _floor_step(x: Decimal, step: Decimal) -> Decimal:
    return (x / step).to_integral_value(ROUND_DOWN) * step


def _utc(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M")


def credentials_from_env(api_key_env: str, secret_env: str) -> tuple[str | None, str | None]:
    """The replay account's key and secret from the named environment variables.

    Both unset (or empty): ``(None, None)``, the exchange serves public data only. One of
    them set without the other is a ConfigError naming the missing variable.
    """
    key, secret = os.environ.get(api_key_env) or None, os.environ.get(secret_env) or None
    if (key is None) != (secret is None):
        missing, present = (api_key_env, secret_env) if key is None else (secret_env, api_key_env)
        raise ConfigError(f"replay account: environment variable {missing} is not set but {present} is; "
                          "set both (or neither for a public-data-only replay)")
    return key, secret


@dataclass
class PartialFills:
    """Fault: the next ``times`` accepted limit-type orders fill in ``pieces`` parts."""

    pieces: int = 2
    times: int = 1


@dataclass
class Order:
    """One order of the replay account (quantities and prices as Decimals)."""

    order_id: int
    client_order_id: str
    market_id: str
    side: str                    # BUY | SELL
    type: str                    # one of ORDER_TYPES
    time_in_force: str           # GTC | IOC | FOK
    orig_qty: Decimal
    price: Decimal               # limit price; 0 for MARKET / STOP_LOSS / TAKE_PROFIT
    stop_price: Decimal          # 0 unless a stop type
    orig_quote_qty: Decimal
    time: int                    # placement, exchange ms
    status: str = "NEW"
    executed_qty: Decimal = ZERO
    cum_quote: Decimal = ZERO
    update_time: int = 0
    working: bool = True         # False: a stop order not yet triggered
    working_time: int = -1
    eligible_after: int = 0      # bars opening after this time may trigger or fill it
    piece_qty: Decimal | None = None  # partial-fill fault: at most this much per bar
    last_fill_bar: int = -1
    lock_asset: str = ""
    locked: Decimal = ZERO       # funds still reserved for the unfilled rest
    lock_price: Decimal = ZERO   # quote reserved per base unit (buys)
    order_list_id: int = -1      # the OCO order list this order is a leg of (-1: none)

    @property
    def remaining(self) -> Decimal:
        """Quantity not yet executed."""
        return self.orig_qty - self.executed_qty

    @property
    def is_open(self) -> bool:
        """NEW or PARTIALLY_FILLED (untriggered stops included)."""
        return self.status in OPEN_STATUSES


@dataclass
class OrderList:
    """One OCO order list: its id, client id and the order ids of its two legs."""

    list_id: int
    list_client_id: str
    market_id: str
    order_ids: list[int]
    time: int
    update_time: int = 0


@dataclass
class Trade:
    """One fill of the replay account."""

    trade_id: int
    order_id: int
    market_id: str
    price: Decimal
    qty: Decimal
    quote_qty: Decimal
    commission: Decimal
    commission_asset: str
    time: int
    is_buyer: bool
    is_maker: bool


class ReplayExchange(LoopbackExchange):
    """Binance spot REST on 127.0.0.1 with a trading account, replaying ``candles``.

    ``start``: the replay's first "now" (default: the first bar's open). ``speed``:
    exchange milliseconds per wall millisecond once :meth:`start` has been called (1000: a
    15m bar every 0.9 s); 0 freezes the clock for manual stepping. ``cash`` is credited in
    the quote asset of the first market; ``balances`` adds ``{asset: amount}``. Fees are
    rates (0.001 = 0.1%). ``api_key``/``api_secret``: the account's credentials (None:
    public data only). Everything else goes to :class:`LoopbackExchange`.
    """

    route_fault_kinds = ("repeat", "late")
    #: fault kinds :meth:`inject` knows besides the transport and route ones
    account_fault_kinds = ("partial", "hidden")

    def __init__(
        self,
        candles: pd.DataFrame | Mapping[str, pd.DataFrame],
        symbol: str = "BTC/USDT",
        timeframe: str = "15m",
        start: Any = None,
        speed: float = 0.0,
        cash: float = 10000.0,
        balances: Mapping[str, float] | None = None,
        maker_fee: float = 0.001,
        taker_fee: float = 0.001,
        api_key: str | None = None,
        api_secret: str | None = None,
        filters: MarketFilters | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        auth_clock: Callable[[], int] | None = None,
        **kwargs: Any,
    ):
        super().__init__(candles, symbol=symbol, timeframe=timeframe, now=None, host=host, port=port,
                         filters=filters, api_key=api_key, api_secret=api_secret, auth_clock=auth_clock, **kwargs)
        if not speed >= 0 or not np.isfinite(speed):
            raise ReplayError(f"replay speed must be >= 0 (0 = manual clock), got {speed}")
        if not (-1 < maker_fee < 1 and -1 < taker_fee < 1):  # a negative maker fee is a rebate
            raise ReplayError(f"fees are rates in (-1, 1): maker {maker_fee}, taker {taker_fee}")
        first = min(int(m.open_ms[0]) for m in self.markets.values())
        last_close = max(int(m.open_ms[-1]) for m in self.markets.values()) + self.tf_ms
        start_ms = first if start is None else _to_ms(start, "replay start")
        if not first <= start_ms <= last_close:
            raise ReplayError(f"replay start {_utc(start_ms)} UTC is outside the data "
                              f"({_utc(first)} .. {_utc(last_close)} UTC)")
        self.span_ms = (first, last_close)
        self._speed = float(speed)
        self._anchor_ms = start_ms
        self._anchor_wall: float | None = None  # monotonic time when the clock started running
        self.start_ms = start_ms
        self._state = threading.RLock()  # account, orders and matching cursors
        self.maker_fee = Decimal(str(maker_fee))
        self.taker_fee = Decimal(str(taker_fee))
        self._balances: dict[str, list[Decimal]] = {}
        for m in self.markets.values():
            self._balances.setdefault(m.base, [ZERO, ZERO])
            self._balances.setdefault(m.quote, [ZERO, ZERO])
        first_market = next(iter(self.markets.values()))
        self._balances[first_market.quote][0] += _q8(Decimal(str(cash)))
        for asset, amount in (balances or {}).items():
            self._balances.setdefault(asset, [ZERO, ZERO])[0] += _q8(Decimal(str(amount)))
        self._account_time = start_ms
        self.orders: dict[int, Order] = {}
        self._open: dict[int, Order] = {}  # the open subset of orders, in id (time-priority) order
        self.trades: list[Trade] = []
        self._next_order_id = 1
        self._next_trade_id = 1
        self._partial_faults: list[PartialFills] = []
        self.order_lists: dict[int, OrderList] = {}
        self._next_list_id = 1
        # Per market: [index of the first bar not completely processed, its open processed?]
        self._cursor: dict[str, list] = {}
        for m in self.markets.values():
            j = int(np.searchsorted(m.open_ms + self.tf_ms, start_ms, side="right"))
            self._cursor[m.market_id] = [j, j < len(m.open_ms) and int(m.open_ms[j]) <= start_ms]
        self._add_replay_routes()

    # ----- clock ------------------------------------------------------------------------
    @property
    def now_ms(self) -> int:
        """The replay clock in epoch ms (frozen until :meth:`start`, and when speed is 0)."""
        if self._anchor_wall is None or self._speed == 0:
            return self._anchor_ms
        return self._anchor_ms + int((time.monotonic() - self._anchor_wall) * 1000 * self._speed)

    @property
    def now(self) -> pd.Timestamp:
        """The replay clock as a UTC timestamp."""
        return pd.Timestamp(self.now_ms, unit="ms", tz="UTC")

    @property
    def speed(self) -> float:
        """Exchange ms per wall ms (0 = manual clock)."""
        return self._speed

    def _reanchor(self, now_ms: int) -> None:
        self._anchor_ms = now_ms
        self._anchor_wall = time.monotonic() if self._server is not None else None

    def set_now(self, now: Any) -> None:
        """Move the clock to ``now`` (forward only: fills already made cannot be undone)
        and match every bar that opened or closed on the way."""
        if now is None:
            raise ValueError("the replay clock has no wall-clock mode; use speed=1 for real time")
        target = _to_ms(now)
        with self._state:
            current = self.now_ms
            if target < current:
                raise ValueError(f"the replay clock only moves forward ({_utc(target)} < {_utc(current)} UTC)")
            self._reanchor(target)
            self._catch_up(target)

    def advance(self, bars: int = 0, seconds: float = 0.0) -> int:
        """Step the clock forward by ``bars`` timeframes plus ``seconds``; returns the new now (ms)."""
        if bars < 0 or seconds < 0:
            raise ValueError("the replay clock only moves forward")
        with self._state:
            target = self.now_ms + int(bars) * self.tf_ms + int(round(seconds * 1000))
            self.set_now(target)
            return target

    def set_speed(self, speed: float) -> None:
        """Change the clock rate from now on (0 = freeze for manual stepping)."""
        if not speed >= 0:
            raise ValueError(f"replay speed must be >= 0, got {speed}")
        with self._state:
            now = self.now_ms
            self._speed = float(speed)
            self._reanchor(now)

    def start(self) -> "ReplayExchange":
        """Bind and serve; the accelerated clock starts running now."""
        try:
            super().start()
        except OSError as exc:
            raise ReplayError(f"cannot listen on {self._host}:{self._port}: {exc.strerror or exc}") from exc
        with self._state:
            if self._anchor_wall is None:
                self._anchor_wall = time.monotonic()
        return self

    def stop(self) -> None:
        """Stop serving; the clock freezes where it is (a later start continues from there)."""
        with self._state:
            frozen = self.now_ms
        super().stop()
        with self._state:
            self._anchor_ms, self._anchor_wall = frozen, None

    # ----- faults -------------------------------------------------------------------------
    def inject(self, kind: str, **kwargs: Any) -> Fault | PartialFills:
        """Queue a fault. ``partial`` (``pieces``, ``times``) applies to the next accepted
        limit-type orders; ``hidden`` (``times``, ``lists``) makes the next lookups by client
        id answer -2013 "does not exist" (an accepted order not yet visible, as on real
        exchanges; ``lists=True``: order-list lookups); every other kind is a request fault (see LoopbackExchange.inject;
        ``repeat``/``late`` act on ``/api/v3/klines`` responses)."""
        if kind == "hidden":
            # an accepted order not yet visible: lookups by client id answer "does not exist"
            lists = kwargs.pop("lists", False)
            path = "/api/v3/orderList" if lists else "/api/v3/order"
            msg = "Order list does not exist." if lists else "Order does not exist."
            return super().inject("status", status=400, body={"code": -2013, "msg": msg}, path=path, method="GET",
                                  param="origClientOrderId", **kwargs)
        if kind == "partial":
            fault = PartialFills(**kwargs)
            if fault.pieces < 2 or fault.times < 1:
                raise ValueError("partial fills need pieces >= 2 and times >= 1")
            with self._state:
                self._partial_faults.append(fault)
            return fault
        return super().inject(kind, **kwargs)

    # ----- account views (for tests and harnesses; clients use the REST API) -------------
    def balance(self, asset: str) -> tuple[Decimal, Decimal]:
        """``(free, locked)`` of ``asset`` after matching up to now."""
        with self._state:
            self._catch_up(self.now_ms)
            free, locked = self._balances.get(asset, [ZERO, ZERO])
            return free, locked

    def open_orders(self) -> list[Order]:
        """Open orders (untriggered stops included), oldest first."""
        with self._state:
            self._catch_up(self.now_ms)
            return list(self._open.values())

    def describe(self) -> list[str]:
        """Human lines for a banner: URL, market span, start, clock rate, account."""
        lines = []
        try:
            lines.append(f"replay exchange: {self.url}  (Binance spot REST; ccxt: make_exchange(url=...))")
        except RuntimeError:
            lines.append("replay exchange: not started")
        for m in self.markets.values():
            lines.append(f"market {m.symbol} {self.timeframe}: {len(m.open_ms):,} bars, "
                         f"{_utc(int(m.open_ms[0]))} .. {_utc(int(m.open_ms[-1]))} UTC")
        first, end = self.span_ms
        lines.append(f"replay starts {_utc(self.start_ms)} UTC ({(self.start_ms - first) // self.tf_ms:,} bars "
                     f"of history before it)")
        if self._speed > 0:
            per_bar = self.tf_ms / self._speed / 1000
            left = (end - self.now_ms) / self._speed / 1000
            lines.append(f"clock x{self._speed:g}: one {self.timeframe} bar every {per_bar:.3g} s of wall time; "
                         f"the data ends in {left:,.0f} s")
        else:
            lines.append("clock: manual (speed 0)")
        cash = ", ".join(f"{_fmt_amount(v[0])} {a}" for a, v in self._balances.items() if v[0] > 0) or "empty"
        trading = "trading enabled" if self._api_key else "public data only (no credentials)"
        lines.append(f"account: {cash}; fees maker {_fmt_amount(self.maker_fee * 100)}% "
                     f"taker {_fmt_amount(self.taker_fee * 100)}%; "
                     f"{trading}")
        return lines

    # ----- prices and matching -----------------------------------------------------------
    def _last(self, m: _Market, now: int) -> tuple[Decimal, int] | None:
        """Last traded price at ``now`` and the bar it comes from; None before the data."""
        i = int(np.searchsorted(m.open_ms, now, side="right")) - 1
        if i < 0:
            return None
        if int(m.open_ms[i]) + self.tf_ms > now:
            return _d(m.values[i, 0]), i  # the open bar: only its opening trade is known
        return _d(m.values[i, 3]), i

    def _catch_up(self, now: int) -> None:
        """Process every bar open/close event up to ``now``, oldest first (lazy matching:
        fills carry bar times, so matching on the next request equals matching live)."""
        for m in self.markets.values():
            cur = self._cursor[m.market_id]
            n = len(m.open_ms)
            while cur[0] < n:
                j = cur[0]
                t = int(m.open_ms[j])
                if not any(o.market_id == m.market_id for o in self._open.values()):
                    # Nothing to match: jump to the bar that contains now.
                    k = int(np.searchsorted(m.open_ms + self.tf_ms, now, side="right"))
                    cur[0] = max(j, k)
                    cur[1] = cur[0] < n and int(m.open_ms[cur[0]]) <= now
                    break
                if not cur[1]:
                    if t > now:
                        break
                    self._on_bar_open(m, j)
                    cur[1] = True
                if t + self.tf_ms > now:
                    break
                self._on_bar_close(m, j)
                cur[0], cur[1] = j + 1, False

    def _working(self, m: _Market, t: int) -> list[Order]:
        """Open orders of ``m`` that take part in the bar opening at ``t``, by time priority."""
        return [o for o in self._open.values() if o.market_id == m.market_id and o.eligible_after < t]

    @staticmethod
    def _stop_hit(o: Order, low: Decimal, high: Decimal) -> bool:
        falls = (o.side == "SELL") == o.type.startswith("STOP_LOSS")  # triggers on a fall to the stop
        return low <= o.stop_price if falls else high >= o.stop_price

    @staticmethod
    def _marketable(o: Order, price: Decimal) -> bool:
        return price <= o.price if o.side == "BUY" else price >= o.price

    def _on_bar_open(self, m: _Market, j: int) -> None:
        t = int(m.open_ms[j])
        opening = _d(m.values[j, 0])
        for o in self._working(m, t):
            if not o.is_open:  # an OCO leg expired by its sibling earlier in this loop
                continue
            if not o.working:
                if self._stop_hit(o, opening, opening):
                    self._trigger(m, o, opening, t, j, eligible_after=t - 1)
            elif o.type in LIMIT_PRICED and o.last_fill_bar != j and self._marketable(o, opening):
                self._fill(m, o, self._piece(o), opening, t, j, maker=True)

    def _on_bar_close(self, m: _Market, j: int) -> None:
        t = int(m.open_ms[j])
        when = t + self.tf_ms - 1  # inside the bar, never later than its close
        high, low = _d(m.values[j, 1]), _d(m.values[j, 2])
        for o in self._working(m, t):
            if not o.is_open:  # an OCO leg expired by its sibling earlier in this loop
                continue
            if not o.working:
                if self._stop_hit(o, low, high):
                    self._trigger(m, o, o.stop_price, when, j, eligible_after=t)
            elif o.type in LIMIT_PRICED and o.last_fill_bar != j:
                if (o.side == "BUY" and low <= o.price) or (o.side == "SELL" and high >= o.price):
                    self._fill(m, o, self._piece(o), o.price, when, j, maker=True)

    @staticmethod
    def _piece(o: Order) -> Decimal:
        return o.remaining if o.piece_qty is None else min(o.remaining, o.piece_qty)

    def _trigger(self, m: _Market, o: Order, price: Decimal, t: int, bar: int, eligible_after: int) -> None:
        """A stop order's trigger: market kinds fill at ``price``, limit kinds start working."""
        self._oco_leg_executes(o, t)
        o.working, o.working_time, o.update_time = True, t, t
        log.info("order %d %s %s triggered at %s (%s)", o.order_id, o.type, o.side, price, _utc(t))
        if o.type in ("STOP_LOSS", "TAKE_PROFIT"):
            self._fill(m, o, o.remaining, price, t, bar, maker=False)
            return
        o.eligible_after = eligible_after
        self._execute_now(m, o, price, t, bar)

    def _execute_now(self, m: _Market, o: Order, price: Decimal, t: int, bar: int) -> None:
        """A limit-priced order entering the book at last price ``price``: take what is
        marketable (taker), then apply the time in force to the rest."""
        if o.time_in_force == "FOK" and (not self._marketable(o, price) or self._piece(o) < o.remaining):
            self._close(o, "EXPIRED", t)
            return
        if self._marketable(o, price):
            self._fill(m, o, self._piece(o), price, t, bar, maker=False)
        if o.is_open and o.time_in_force in ("IOC", "FOK"):
            self._close(o, "EXPIRED", t)

    def _fill(self, m: _Market, o: Order, qty: Decimal, price: Decimal, t: int, bar: int, maker: bool) -> None:
        """Book one trade of ``qty`` at ``price``: release the reservation, move balances,
        charge the fee (buyer in base, seller in quote), update the order."""
        if qty <= 0:
            return
        self._oco_leg_executes(o, t)
        quote = _q8(qty * price)
        rate = self.maker_fee if maker else self.taker_fee
        last_piece = qty >= o.remaining
        base_bal, quote_bal = self._balances[m.base], self._balances[m.quote]
        if o.side == "BUY":
            release = o.locked if last_piece else min(o.locked, _q8(qty * o.lock_price, ROUND_UP))
            if quote_bal[0] + release < quote:
                # Only a stop-market buy gapping above its reservation gets here.
                log.info("order %d expired: %s %s needed, %s available", o.order_id, quote, m.quote,
                         quote_bal[0] + release)
                self._close(o, "EXPIRED", t)
                return
            quote_bal[1] -= release
            quote_bal[0] += release - quote
            o.locked -= release
            commission, asset = _q8(qty * rate), m.base
            base_bal[0] += qty - commission
        else:
            release = o.locked if last_piece else min(o.locked, qty)
            base_bal[1] -= release
            base_bal[0] += release - qty
            o.locked -= release
            commission, asset = _q8(quote * rate), m.quote
            quote_bal[0] += quote - commission
        trade = Trade(self._next_trade_id, o.order_id, m.market_id, price, qty, quote, commission, asset, t,
                      o.side == "BUY", maker)
        self._next_trade_id += 1
        self.trades.append(trade)
        o.executed_qty += qty
        o.cum_quote += quote
        o.status = "FILLED" if o.remaining <= 0 else "PARTIALLY_FILLED"
        if o.status == "FILLED":
            self._open.pop(o.order_id, None)
        o.update_time = t
        o.last_fill_bar = bar
        self._account_time = max(self._account_time, t)
        log.info("trade %d: order %d %s %s @ %s (%s, fee %s %s, %s)", trade.trade_id, o.order_id, o.side, qty,
                 price, "maker" if maker else "taker", commission, asset, _utc(t))

    def _close(self, o: Order, status: str, t: int) -> None:
        """End an open order (CANCELED / EXPIRED) and give its reservation back."""
        if o.locked > 0:
            bal = self._balances[o.lock_asset]
            bal[1] -= o.locked
            bal[0] += o.locked
            o.locked = ZERO
        o.status = status
        o.update_time = t
        self._open.pop(o.order_id, None)
        self._account_time = max(self._account_time, t)

    # ----- routes ----------------------------------------------------------------------
    def _add_replay_routes(self) -> None:
        def locked(fn: Callable[[Request, int], Response]) -> Callable[[Request], Response]:
            def handler(req: Request) -> Response:
                with self._state:
                    now = self.now_ms  # read under the lock: concurrent requests see time move forward
                    self._catch_up(now)
                    return fn(req, now)
            return handler

        self.add_route("GET", "/api/v3/ticker/24hr", locked(self._ticker_24hr))
        self.add_route("GET", "/api/v3/ticker/price", locked(self._ticker_price))
        self.add_route("GET", "/api/v3/ticker/bookTicker", locked(self._book_ticker))
        self.add_route("GET", "/api/v3/avgPrice", locked(self._avg_price))
        self.add_route("GET", "/api/v3/account", locked(self._account), signed=True)
        self.add_route("POST", "/api/v3/order", locked(self._new_order), signed=True)
        self.add_route("POST", "/api/v3/order/test", locked(lambda req, now: self._new_order(req, now, test=True)),
                       signed=True)
        self.add_route("GET", "/api/v3/order", locked(self._query_order), signed=True)
        self.add_route("DELETE", "/api/v3/order", locked(self._cancel_order), signed=True)
        self.add_route("GET", "/api/v3/openOrders", locked(self._open_orders), signed=True)
        self.add_route("DELETE", "/api/v3/openOrders", locked(self._cancel_all), signed=True)
        self.add_route("GET", "/api/v3/allOrders", locked(self._all_orders), signed=True)
        self.add_route("GET", "/api/v3/myTrades", locked(self._my_trades), signed=True)
        self.add_route("POST", "/api/v3/orderList/oco", locked(self._new_oco), signed=True)
        self.add_route("GET", "/api/v3/orderList", locked(self._query_list), signed=True)
        self.add_route("DELETE", "/api/v3/orderList", locked(self._cancel_list), signed=True)
        self.add_route("GET", "/api/v3/openOrderList", locked(self._open_lists), signed=True)

    def _kline_row(self, market: _Market, i: int, now: int) -> list[Any]:
        t = int(market.open_ms[i])
        if t + self.tf_ms <= now:
            return super()._kline_row(market, i, now)
        # The open bar: only its opening print exists yet, no look-ahead into the bar.
        o = repr(float(market.values[i, 0]))
        return [t, o, o, o, o, "0.0", t + self.tf_ms - 1, "0.0", 0, "0.0", "0.0", "0"]

    def _klines(self, req: Request) -> Response:
        now = self.now_ms
        fault = req.fault
        if fault is not None and fault.kind == "late":
            return self._klines_at(req.params, max(0, now - self.tf_ms))
        response = self._klines_at(req.params, now)
        if fault is not None and fault.kind == "repeat":
            rows = response.body
            closed = [k for k, row in enumerate(rows) if row[6] < now]
            if closed:
                rows.insert(closed[-1] + 1, list(rows[closed[-1]]))
        return response

    def _symbols(self, params: Mapping[str, str]) -> list[_Market] | _Market:
        """``symbol`` -> one market; ``symbols`` (a JSON list) or neither -> a list."""
        if params.get("symbol"):
            return self._market(params)
        raw = params.get("symbols")
        if not raw:
            return list(self.markets.values())
        try:
            ids = json.loads(raw)
            assert isinstance(ids, list) and all(isinstance(x, str) for x in ids)
        except (ValueError, AssertionError):
            raise ApiError(400, -1100, "Illegal characters found in parameter 'symbols'; "
                                       "legal range is '^\\[(\"[A-Z0-9-_.]{1,20}\"(,\"[A-Z0-9-_.]{1,20}\"){0,}){0,1}\\]$'.")
        out = []
        for x in ids:
            out.append(self._market({"symbol": x}))
        return out

    def _each(self, params: Mapping[str, str], one: Callable[[_Market], dict]) -> Response:
        sel = self._symbols(params)
        return Response(200, [one(m) for m in sel] if isinstance(sel, list) else one(sel))

    def _price_or_zero(self, m: _Market, now: int) -> Decimal:
        last = self._last(m, now)
        return ZERO if last is None else last[0]

    def _ticker_24hr(self, req: Request, now: int) -> Response:
        def one(m: _Market) -> dict:
            last = self._price_or_zero(m, now)
            i_now = int(np.searchsorted(m.open_ms, now, side="right"))  # bars opened so far
            lo = int(np.searchsorted(m.open_ms, now - DAY_MS, side="left"))
            closed = [k for k in range(lo, i_now) if int(m.open_ms[k]) + self.tf_ms <= now]
            highs = [_d(m.values[k, 1]) for k in closed] + ([last] if last else [])
            lows = [_d(m.values[k, 2]) for k in closed] + ([last] if last else [])
            opening = _d(m.values[lo, 0]) if lo < i_now else last
            volume = sum((Decimal(repr(float(m.values[k, 4]))) for k in closed), ZERO)
            quote_volume = sum((Decimal(repr(float(m.values[k, 4] * m.values[k, 3]))) for k in closed), ZERO)
            prev_close = _d(m.values[lo - 1, 3]) if 0 < lo <= i_now else ZERO
            change = last - opening
            pct = (change / opening * 100) if opening else ZERO
            wavg = quote_volume / volume if volume else last
            return {
                "symbol": m.market_id, "priceChange": _fmt8(change), "priceChangePercent": f"{pct:.3f}",
                "weightedAvgPrice": _fmt8(_q8(wavg)), "prevClosePrice": _fmt8(prev_close),
                "lastPrice": _fmt8(last), "lastQty": _fmt8(ZERO), "bidPrice": _fmt8(last), "bidQty": _fmt8(ZERO),
                "askPrice": _fmt8(last), "askQty": _fmt8(ZERO), "openPrice": _fmt8(opening),
                "highPrice": _fmt8(max(highs) if highs else ZERO), "lowPrice": _fmt8(min(lows) if lows else ZERO),
                "volume": _fmt8(_q8(volume)), "quoteVolume": _fmt8(_q8(quote_volume)),
                "openTime": now - DAY_MS, "closeTime": now, "firstId": -1, "lastId": -1, "count": 0,
            }
        return self._each(req.params, one)

    def _ticker_price(self, req: Request, now: int) -> Response:
        return self._each(req.params, lambda m: {"symbol": m.market_id, "price": _fmt8(self._price_or_zero(m, now))})

    def _book_ticker(self, req: Request, now: int) -> Response:
        def one(m: _Market) -> dict:
            last = _fmt8(self._price_or_zero(m, now))
            return {"symbol": m.market_id, "bidPrice": last, "bidQty": _fmt8(ZERO), "askPrice": last,
                    "askQty": _fmt8(ZERO)}
        return self._each(req.params, one)

    def _avg_price(self, req: Request, now: int) -> Response:
        m = self._market(req.params)
        return Response(200, {"mins": 5, "price": _fmt8(self._price_or_zero(m, now)), "closeTime": now})

    def _account(self, req: Request, now: int) -> Response:
        maker, taker = _fmt8(self.maker_fee), _fmt8(self.taker_fee)
        return Response(200, {
            "makerCommission": int(self.maker_fee * 10000), "takerCommission": int(self.taker_fee * 10000),
            "buyerCommission": 0, "sellerCommission": 0,
            "commissionRates": {"maker": maker, "taker": taker, "buyer": _fmt8(ZERO), "seller": _fmt8(ZERO)},
            "canTrade": True, "canWithdraw": False, "canDeposit": False, "brokered": False,
            "requireSelfTradePrevention": False, "preventSor": False, "updateTime": self._account_time,
            "accountType": "SPOT",
            "balances": [{"asset": a, "free": _fmt8(v[0]), "locked": _fmt8(v[1])} for a, v in self._balances.items()],
            "permissions": ["SPOT"], "uid": 1,
        })

    # ----- orders: parsing and validation ------------------------------------------------
    @staticmethod
    def _number(params: Mapping[str, str], name: str) -> Decimal | None:
        raw = params.get(name)
        if raw is None or raw == "":
            return None
        if not _NUMBER.match(raw):
            raise ApiError(400, -1100, f"Illegal characters found in parameter '{name}'; "
                                       "legal range is '^([0-9]{1,20})(\\.[0-9]{1,20})?$'.")
        try:
            return Decimal(raw)
        except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
            raise ApiError(400, -1100, f"Illegal characters found in parameter '{name}'.")

    @classmethod
    def _side(cls, params: Mapping[str, str]) -> str:
        """The order's ``side``, checked as Binance checks it (orders and order lists alike)."""
        side = params.get("side")
        if not side:
            raise cls._mandatory("side")
        if side not in ("BUY", "SELL"):
            raise ApiError(400, -1117, "Invalid side.")
        return side

    @staticmethod
    def _mandatory(name: str) -> ApiError:
        return ApiError(400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")

    @staticmethod
    def _not_required(name: str) -> ApiError:
        return ApiError(400, -1106, f"Parameter '{name}' sent when not required.")

    @staticmethod
    def _check_price(f: MarketFilters, price: Decimal) -> None:
        if price < f.min_price or price > f.max_price or (price - f.min_price) % f.tick_size != 0:
            raise ApiError(400, -1013, "Filter failure: PRICE_FILTER")

    @staticmethod
    def _check_qty(f: MarketFilters, qty: Decimal, market_order: bool) -> None:
        if qty < f.min_qty or qty > f.max_qty or (qty - f.min_qty) % f.step_size != 0:
            raise ApiError(400, -1013, f"Filter failure: {'MARKET_LOT_SIZE' if market_order else 'LOT_SIZE'}")

    def _order_params(self, p: Mapping[str, str]) -> tuple[str, str | None, Decimal | None, Decimal | None,
                                                            Decimal | None, Decimal | None]:
        """``type``, ``timeInForce``, ``quantity``, ``quoteOrderQty``, ``price`` and ``stopPrice``
        of a new order, each required or refused for the order type as Binance does."""
        otype = p.get("type")
        if not otype:
            raise self._mandatory("type")
        if otype not in ORDER_TYPES:
            raise ApiError(400, -1116, "Invalid orderType.")
        tif = p.get("timeInForce") or None
        self._check_tif(otype, tif, "timeInForce")
        qty, quote_qty = self._number(p, "quantity"), self._number(p, "quoteOrderQty")
        price, stop = self._number(p, "price"), self._number(p, "stopPrice")
        if otype == "MARKET":
            if qty is None and quote_qty is None:
                raise ApiError(400, -1102, "Param 'quantity' or 'quoteOrderQty' must be sent, but both were empty/null!")
            if qty is not None and quote_qty is not None:
                raise self._not_required("quoteOrderQty")
        else:
            if quote_qty is not None:
                raise self._not_required("quoteOrderQty")
            if qty is None:
                raise self._mandatory("quantity")
        self._check_prices(otype, price, stop, "price", "stopPrice")
        return otype, tif, qty, quote_qty, price, stop

    @classmethod
    def _check_tif(cls, otype: str, tif: str | None, name: str) -> None:
        """``timeInForce`` (``name``: its parameter) is required for limit kinds, refused otherwise."""
        if otype in TIF_REQUIRED:
            if tif is None:
                raise cls._mandatory(name)
            if tif not in ("GTC", "IOC", "FOK"):
                raise ApiError(400, -1115, "Invalid timeInForce.")
        elif tif is not None:
            raise cls._not_required(name)

    @classmethod
    def _check_prices(cls, otype: str, price: Decimal | None, stop: Decimal | None, price_name: str,
                      stop_name: str) -> None:
        """A price for limit-priced kinds and a stop price for stop kinds: required there,
        refused elsewhere (``*_name``: the parameters, e.g. ``abovePrice`` in an order list)."""
        for name, value, needed in ((price_name, price, otype in LIMIT_PRICED), (stop_name, stop, otype in STOP_TYPES)):
            if needed and value is None:
                raise cls._mandatory(name)
            if not needed and value is not None:
                raise cls._not_required(name)

    @staticmethod
    def _funds_needed(m: _Market, side: str, otype: str, qty: Decimal, price: Decimal | None, stop: Decimal | None,
                      last_price: Decimal) -> tuple[str, Decimal, Decimal]:
        """What a new order reserves (resting kinds) or spends at once (MARKET): asset, the
        price it is reserved at (buys) and the amount."""
        if side == "BUY":
            lock_price = price if otype in LIMIT_PRICED else (stop if otype in STOP_TYPES else last_price)
            return m.quote, lock_price, _q8(qty * lock_price, ROUND_UP)
        return m.base, ZERO, qty

    def _apply_partial_fault(self, req: Request, order: Order, f: MarketFilters) -> None:
        """The next queued ``partial`` fault: ``order`` fills in pieces of at most this much a bar."""
        fault = self._partial_faults[0]
        order.piece_qty = max(f.step_size, _floor_step(order.orig_qty / fault.pieces, f.step_size))
        fault.times -= 1
        if fault.times <= 0:
            self._partial_faults.pop(0)
        req.note = (req.note + " " if req.note else "") + f"fault:partial({fault.pieces})"

    def _new_order(self, req: Request, now: int, test: bool = False) -> Response:
        """POST /api/v3/order: validate like Binance, reserve funds, execute what is
        executable now, answer ACK / RESULT / FULL."""
        p = req.params
        m = self._market(p)
        f = m.filters
        side = self._side(p)
        otype, tif, qty, quote_qty, price, stop = self._order_params(p)
        cid = p.get("newClientOrderId") or "replay" + secrets.token_hex(8)
        if not _CLIENT_ID.match(cid):
            raise ApiError(400, -1100, "Illegal characters found in parameter 'newClientOrderId'; "
                                       "legal range is '^[\\.A-Z\\:/a-z0-9_-]{1,36}$'.")
        resp_type = p.get("newOrderRespType") or ("FULL" if otype in ("MARKET", "LIMIT") else "ACK")
        if resp_type not in ("ACK", "RESULT", "FULL"):
            raise ApiError(400, -1100, "Illegal characters found in parameter 'newOrderRespType'.")
        if any(o.client_order_id == cid for o in self._open.values()):
            raise ApiError(400, -2010, "Duplicate order sent.")
        last = self._last(m, now)
        if last is None:
            raise ApiError(400, -2010, "Market is closed.")
        last_price, _bar = last
        if price is not None:
            self._check_price(f, price)
        if stop is not None:
            self._check_price(f, stop)
        if quote_qty is not None:
            qty = _floor_step(quote_qty / last_price, f.step_size)
        self._check_qty(f, qty, otype == "MARKET")
        ref = price if otype in LIMIT_PRICED else (stop if otype in STOP_TYPES else last_price)
        if qty * ref < f.min_notional:
            raise ApiError(400, -1013, "Filter failure: NOTIONAL")
        if sum(1 for o in self._open.values() if o.market_id == m.market_id) >= f.max_num_orders:
            raise ApiError(400, -1013, "Filter failure: MAX_NUM_ORDERS")
        if otype in STOP_TYPES:
            probe = Order(0, cid, m.market_id, side, otype, "GTC", qty, ZERO, stop, ZERO, now)
            if self._stop_hit(probe, last_price, last_price):
                raise ApiError(400, -2010, "Stop price would trigger immediately.")
        if otype == "LIMIT_MAKER" and ((side == "BUY" and last_price <= price) or (side == "SELL" and last_price >= price)):
            raise ApiError(400, -2010, "Order would immediately match and take.")
        lock_asset, lock_price, need = self._funds_needed(m, side, otype, qty, price, stop, last_price)
        if self._balances[lock_asset][0] < need:
            raise ApiError(400, -2010, "Account has insufficient balance for requested action.")
        if test:
            return Response(200, {})

        order = Order(
            order_id=self._next_order_id, client_order_id=cid, market_id=m.market_id, side=side, type=otype,
            time_in_force=tif or "GTC", orig_qty=qty, price=price if price is not None else ZERO,
            stop_price=stop if stop is not None else ZERO, orig_quote_qty=quote_qty or ZERO, time=now,
            update_time=now, working=otype not in STOP_TYPES, eligible_after=now,
            working_time=-1 if otype in STOP_TYPES else now, lock_asset=lock_asset, lock_price=lock_price,
        )
        return self._open_order(req, m, order, need, last, resp_type)

    def _open_order(self, req: Request, m: _Market, order: Order, need: Decimal, last: tuple[Decimal, int],
                    resp_type: str) -> Response:
        """Book a checked new order: reserve ``need`` of its lock asset, execute what is
        executable at the last price now, answer in ``resp_type``."""
        now, otype, qty = order.time, order.type, order.orig_qty
        last_price, bar = last
        self._next_order_id += 1
        self.orders[order.order_id] = order
        self._open[order.order_id] = order
        bal = self._balances[order.lock_asset]
        bal[0] -= need
        bal[1] += need
        order.locked = need
        if otype in LIMIT_PRICED and self._partial_faults:
            self._apply_partial_fault(req, order, m.filters)
        n_trades = len(self.trades)
        log.info("order %d %s %s %s %s qty=%s price=%s stop=%s cid=%s (%s)", order.order_id, m.market_id, order.side,
                 otype, order.time_in_force, qty, order.price if otype in LIMIT_PRICED else None,
                 order.stop_price if otype in STOP_TYPES else None, order.client_order_id, _utc(now))
        if otype == "MARKET":
            self._fill(m, order, qty, last_price, now, bar, maker=False)
            if order.is_open:  # cannot happen for a checked market order; never leave one resting
                self._close(order, "EXPIRED", now)
        elif otype in ("LIMIT", "LIMIT_MAKER"):
            self._execute_now(m, order, last_price, now, bar)
        self._account_time = max(self._account_time, now)
        fills = [t for t in self.trades[n_trades:] if t.order_id == order.order_id]
        return Response(200, self._new_order_body(m, order, resp_type, fills, now))

    # ----- orders: answers ---------------------------------------------------------------
    def _order_body(self, m: _Market, o: Order) -> dict[str, Any]:
        """The order as GET /api/v3/order shows it."""
        return {
            "symbol": m.market_id, "orderId": o.order_id, "orderListId": o.order_list_id,
            "clientOrderId": o.client_order_id,
            "price": _fmt8(o.price), "origQty": _fmt8(o.orig_qty), "executedQty": _fmt8(o.executed_qty),
            "cummulativeQuoteQty": _fmt8(o.cum_quote), "status": o.status, "timeInForce": o.time_in_force,
            "type": o.type, "side": o.side, "stopPrice": _fmt8(o.stop_price), "icebergQty": _fmt8(ZERO),
            "time": o.time, "updateTime": o.update_time, "isWorking": o.working, "workingTime": o.working_time,
            "origQuoteOrderQty": _fmt8(o.orig_quote_qty), "selfTradePreventionMode": "EXPIRE_MAKER",
        }

    def _new_order_body(self, m: _Market, o: Order, resp_type: str, fills: list[Trade], now: int) -> dict[str, Any]:
        body: dict[str, Any] = {"symbol": m.market_id, "orderId": o.order_id, "orderListId": o.order_list_id,
                                "clientOrderId": o.client_order_id, "transactTime": now}
        if resp_type == "ACK":
            return body
        full = self._order_body(m, o)
        for k in ("price", "origQty", "executedQty", "origQuoteOrderQty", "cummulativeQuoteQty", "status",
                  "timeInForce", "type", "side", "workingTime", "selfTradePreventionMode"):
            body[k] = full[k]
        if o.type in STOP_TYPES:
            body["stopPrice"] = full["stopPrice"]
        if resp_type == "FULL":
            body["fills"] = [{"price": _fmt8(t.price), "qty": _fmt8(t.qty), "commission": _fmt8(t.commission),
                              "commissionAsset": t.commission_asset, "tradeId": t.trade_id} for t in fills]
        return body

    def _find(self, m: _Market, params: Mapping[str, str], code: int, msg: str) -> Order:
        order_id = self._int_param(params, "orderId")
        cid = params.get("origClientOrderId") or None
        if order_id is None and cid is None:
            raise ApiError(400, -1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
        if order_id is not None:
            o = self.orders.get(order_id)
            if o is not None and o.market_id == m.market_id and (cid is None or o.client_order_id == cid):
                return o
            raise ApiError(400, code, msg)
        # A client id may be reused once its order is closed: the newest one answers.
        for o in reversed(list(self.orders.values())):
            if o.market_id == m.market_id and o.client_order_id == cid:
                return o
        raise ApiError(400, code, msg)

    def _query_order(self, req: Request, now: int) -> Response:
        m = self._market(req.params)
        return Response(200, self._order_body(m, self._find(m, req.params, -2013, "Order does not exist.")))

    def _cancel_body(self, m: _Market, o: Order, cancel_id: str | None) -> dict[str, Any]:
        body = self._order_body(m, o)
        body = {"symbol": m.market_id, "origClientOrderId": o.client_order_id, "orderId": o.order_id,
                "orderListId": o.order_list_id, "clientOrderId": cancel_id or "replay" + secrets.token_hex(8),
                "transactTime": o.update_time, **{k: body[k] for k in (
                    "price", "origQty", "executedQty", "cummulativeQuoteQty", "status", "timeInForce", "type",
                    "side", "origQuoteOrderQty", "selfTradePreventionMode")}}
        if o.type in STOP_TYPES:
            body["stopPrice"] = _fmt8(o.stop_price)
        return body

    def _cancel_order(self, req: Request, now: int) -> Response:
        m = self._market(req.params)
        o = self._find(m, req.params, -2011, "Unknown order sent.")
        if not o.is_open:
            raise ApiError(400, -2011, "Unknown order sent.")
        self._close(o, "CANCELED", now)
        log.info("order %d canceled (%s)", o.order_id, _utc(now))
        if o.order_list_id >= 0:  # Binance: canceling one leg of an order list cancels the list
            lst = self.order_lists[o.order_list_id]
            for sib in self._legs(lst):
                if sib.is_open:
                    self._close(sib, "CANCELED", now)
            lst.update_time = now
        return Response(200, self._cancel_body(m, o, req.params.get("newClientOrderId")))

    def _cancel_all(self, req: Request, now: int) -> Response:
        m = self._market(req.params)
        victims = [o for o in self._open.values() if o.market_id == m.market_id]
        if not victims:
            raise ApiError(400, -2011, "Unknown order sent.")
        for o in victims:
            self._close(o, "CANCELED", now)
        return Response(200, [self._cancel_body(m, o, None) for o in victims])

    def _open_orders(self, req: Request, now: int) -> Response:
        wanted = self._market(req.params).market_id if req.params.get("symbol") else None
        return Response(200, [self._order_body(self.markets[o.market_id], o) for o in self._open.values()
                              if wanted is None or o.market_id == wanted])

    def _limit(self, params: Mapping[str, str]) -> int:
        limit = self._int_param(params, "limit")
        limit = 500 if limit is None else limit
        if not 1 <= limit <= 1000:
            raise ApiError(400, -1130, "Data sent for parameter 'limit' is not valid.")
        return limit

    def _window(self, params: Mapping[str, str]) -> tuple[int | None, int | None]:
        start, end = self._int_param(params, "startTime"), self._int_param(params, "endTime")
        if start is not None and end is not None:
            if start > end:
                raise ApiError(400, -1023, "Start time is greater than end time.")
            if end - start > DAY_MS:
                raise ApiError(400, -1127, "More than 24 hours between startTime and endTime.")
        return start, end

    @staticmethod
    def _page(items: list, start: int | None, end: int | None, limit: int, when: Callable[[Any], int]) -> list:
        """Binance's paging: inside [start, end]; from the oldest when start is given, else the newest."""
        items = [x for x in items if (start is None or when(x) >= start) and (end is None or when(x) <= end)]
        return items[:limit] if start is not None else items[-limit:]

    def _all_orders(self, req: Request, now: int) -> Response:
        m = self._market(req.params)
        limit, (start, end) = self._limit(req.params), self._window(req.params)
        from_id = self._int_param(req.params, "orderId")
        orders = [o for o in self.orders.values() if o.market_id == m.market_id
                  and (from_id is None or o.order_id >= from_id)]
        if from_id is not None and start is None:
            orders = orders[:limit]
        else:
            orders = self._page(orders, start, end, limit, lambda o: o.time)
        return Response(200, [self._order_body(m, o) for o in orders])

    def _my_trades(self, req: Request, now: int) -> Response:
        """GET /api/v3/myTrades: ``orderId`` (that order's trades), ``fromId`` (ids >= it,
        oldest first; not with a time window), ``startTime``/``endTime`` (at most 24 h
        apart when both are given), ``limit`` (default 500, max 1000)."""
        p = req.params
        m = self._market(p)
        limit, (start, end) = self._limit(p), self._window(p)
        from_id, order_id = self._int_param(p, "fromId"), self._int_param(p, "orderId")
        if from_id is not None and (start is not None or end is not None):
            raise ApiError(400, -1128, "Combination of optional parameters invalid.")
        trades = [t for t in self.trades if t.market_id == m.market_id and (order_id is None or t.order_id == order_id)]
        if from_id is not None:
            trades = [t for t in trades if t.trade_id >= from_id][:limit]
        else:
            trades = self._page(trades, start, end, limit, lambda t: t.time)
        return Response(200, [{
            "symbol": m.market_id, "id": t.trade_id, "orderId": t.order_id,
            "orderListId": self.orders[t.order_id].order_list_id,
            "price": _fmt8(t.price), "qty": _fmt8(t.qty), "quoteQty": _fmt8(t.quote_qty),
            "commission": _fmt8(t.commission), "commissionAsset": t.commission_asset, "time": t.time,
            "isBuyer": t.is_buyer, "isMaker": t.is_maker, "isBestMatch": True,
        } for t in trades])

    # ----- OCO order lists -----------------------------------------------------------------
    def _legs(self, lst: OrderList) -> list[Order]:
        return [self.orders[i] for i in lst.order_ids]

    def _oco_leg_executes(self, o: Order, t: int) -> None:
        """A leg of an OCO starts executing (stop triggered, first fill): expire the other
        leg and hand its share of the list's reservation to this one."""
        if o.order_list_id < 0:
            return
        lst = self.order_lists[o.order_list_id]
        for sib in self._legs(lst):
            if sib is o or not sib.is_open:
                continue
            if sib.locked > 0 and sib.lock_asset == o.lock_asset:
                o.locked += sib.locked
                sib.locked = ZERO
            self._close(sib, "EXPIRED", t)
            log.info("order %d (OCO list %d) expired: leg %d executes (%s)", sib.order_id, lst.list_id,
                     o.order_id, _utc(t))
        lst.update_time = t

    def _list_body(self, lst: OrderList, reports: bool = False) -> dict[str, Any]:
        """An order list as Binance shows it (``orderReports`` on create and cancel)."""
        m = self.markets[lst.market_id]
        legs = self._legs(lst)
        done = not any(o.is_open for o in legs)
        body: dict[str, Any] = {
            "orderListId": lst.list_id, "contingencyType": "OCO",
            "listStatusType": "ALL_DONE" if done else "EXEC_STARTED",
            "listOrderStatus": "ALL_DONE" if done else "EXECUTING",
            "listClientOrderId": lst.list_client_id, "transactionTime": lst.update_time or lst.time,
            "symbol": m.market_id,
            "orders": [{"symbol": m.market_id, "orderId": o.order_id, "clientOrderId": o.client_order_id}
                       for o in legs],
        }
        if reports:
            body["orderReports"] = [self._new_order_body(m, o, "RESULT", [], lst.update_time or lst.time)
                                    | {"stopPrice": _fmt8(o.stop_price), "icebergQty": _fmt8(ZERO)} for o in legs]
        return body

    _ABOVE_OF = {"SELL": ("LIMIT_MAKER", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT"), "BUY": ("STOP_LOSS", "STOP_LOSS_LIMIT")}
    _BELOW_OF = {"SELL": ("STOP_LOSS", "STOP_LOSS_LIMIT"), "BUY": ("LIMIT_MAKER", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT")}

    def _oco_legs(self, p: Mapping[str, str], side: str) -> dict[str, dict[str, Any]]:
        """The ``above`` and ``below`` legs of a new order list, each checked like an order."""
        legs: dict[str, dict[str, Any]] = {}
        for pos, allowed in (("above", self._ABOVE_OF[side]), ("below", self._BELOW_OF[side])):
            otype = p.get(f"{pos}Type")
            if not otype:
                raise self._mandatory(f"{pos}Type")
            if otype not in allowed:
                raise ApiError(400, -1116, "Invalid orderType.")
            price, stop = self._number(p, f"{pos}Price"), self._number(p, f"{pos}StopPrice")
            tif = p.get(f"{pos}TimeInForce") or None
            self._check_prices(otype, price, stop, f"{pos}Price", f"{pos}StopPrice")
            self._check_tif(otype, tif, f"{pos}TimeInForce")
            cid = p.get(f"{pos}ClientOrderId") or "replay" + secrets.token_hex(8)
            legs[pos] = {"type": otype, "price": price, "stop": stop, "tif": tif or "GTC", "cid": cid,
                         "level": stop if otype in STOP_TYPES else price}
        return legs

    def _open_leg(self, m: _Market, lst: OrderList, leg: dict[str, Any], side: str, qty: Decimal, now: int,
                  lock: tuple[str, Decimal | None]) -> None:
        """Open one leg of ``lst``; ``lock``: the list's reserved asset and, for the leg that
        holds the list's one reservation, the amount (None for the other leg)."""
        lock_asset, need = lock
        otype = leg["type"]
        o = Order(
            order_id=self._next_order_id, client_order_id=leg["cid"], market_id=m.market_id, side=side,
            type=otype, time_in_force=leg["tif"], orig_qty=qty,
            price=leg["price"] if leg["price"] is not None else ZERO,
            stop_price=leg["stop"] if leg["stop"] is not None else ZERO, orig_quote_qty=ZERO, time=now,
            update_time=now, working=otype not in STOP_TYPES, eligible_after=now,
            working_time=-1 if otype in STOP_TYPES else now, lock_asset=lock_asset,
            lock_price=leg["level"] if side == "BUY" else ZERO, order_list_id=lst.list_id,
        )
        self._next_order_id += 1
        self.orders[o.order_id] = o
        self._open[o.order_id] = o
        lst.order_ids.append(o.order_id)
        if need is not None:
            bal = self._balances[lock_asset]
            bal[0] -= need
            bal[1] += need
            o.locked = need

    def _new_oco(self, req: Request, now: int) -> Response:
        """POST /api/v3/orderList/oco (see the module docstring for the rules)."""
        p = req.params
        m = self._market(p)
        f = m.filters
        side = self._side(p)
        qty = self._number(p, "quantity")
        if qty is None:
            raise self._mandatory("quantity")
        legs = self._oco_legs(p, side)
        list_cid = p.get("listClientOrderId") or "replay" + secrets.token_hex(8)
        for cid in (list_cid, legs["above"]["cid"], legs["below"]["cid"]):
            if not _CLIENT_ID.match(cid):
                raise ApiError(400, -1100, "Illegal characters found in a client order id parameter; "
                                           "legal range is '^[\\.A-Z\\:/a-z0-9_-]{1,36}$'.")
        if any(o.client_order_id in (legs["above"]["cid"], legs["below"]["cid"]) for o in self._open.values()) or \
                any(lst.list_client_id == list_cid and any(o.is_open for o in self._legs(lst))
                    for lst in self.order_lists.values()):
            raise ApiError(400, -2010, "Duplicate order sent.")
        last = self._last(m, now)
        if last is None:
            raise ApiError(400, -2010, "Market is closed.")
        last_price, _bar = last
        for leg in legs.values():
            for x in (leg["price"], leg["stop"]):
                if x is not None:
                    self._check_price(f, x)
        self._check_qty(f, qty, False)
        for leg in legs.values():
            ref = leg["price"] if leg["type"] in LIMIT_PRICED else leg["stop"]
            if qty * ref < f.min_notional:
                raise ApiError(400, -1013, "Filter failure: NOTIONAL")
        if sum(1 for o in self._open.values() if o.market_id == m.market_id) + 2 > f.max_num_orders:
            raise ApiError(400, -1013, "Filter failure: MAX_NUM_ORDERS")
        if not legs["above"]["level"] > last_price > legs["below"]["level"]:
            raise ApiError(400, -2010, "The relationship of the prices for the orders is not correct.")
        # One reservation for the whole list: a sell reserves the quantity once; a buy the
        # larger of its legs' costs.
        if side == "BUY":
            lock_asset = m.quote
            need = max(_q8(qty * leg["level"], ROUND_UP) for leg in legs.values())
        else:
            lock_asset, need = m.base, qty
        if self._balances[lock_asset][0] < need:
            raise ApiError(400, -2010, "Account has insufficient balance for requested action.")
        lst = OrderList(self._next_list_id, list_cid, m.market_id, [], now, now)
        self._next_list_id += 1
        self.order_lists[lst.list_id] = lst
        # the stop-loss leg first (lower order id): a bar reaching both legs triggers the stop
        order_of = sorted(legs, key=lambda pos: 0 if legs[pos]["type"].startswith("STOP_LOSS") else 1)
        for k, pos in enumerate(order_of):
            self._open_leg(m, lst, legs[pos], side, qty, now, (lock_asset, need if k == 0 else None))
        self._account_time = max(self._account_time, now)
        log.info("OCO list %d %s %s qty=%s legs %s cid=%s (%s)", lst.list_id, m.market_id, side, qty,
                 ", ".join(f"{legs[pos]['type']}@{legs[pos]['level']}" for pos in order_of), list_cid, _utc(now))
        return Response(200, self._list_body(lst, reports=True))

    def _find_list(self, params: Mapping[str, str], id_name: str, cid_name: str, code: int, msg: str) -> OrderList:
        list_id = self._int_param(params, id_name)
        cid = params.get(cid_name) or None
        if list_id is None and cid is None:
            raise ApiError(400, -1102, f"Param '{cid_name}' or '{id_name}' must be sent, but both were empty/null!")
        if list_id is not None:
            lst = self.order_lists.get(list_id)
            if lst is not None and (cid is None or lst.list_client_id == cid):
                return lst
            raise ApiError(400, code, msg)
        for lst in reversed(list(self.order_lists.values())):  # a reused client id: the newest list
            if lst.list_client_id == cid:
                return lst
        raise ApiError(400, code, msg)

    def _query_list(self, req: Request, now: int) -> Response:
        """GET /api/v3/orderList (``orderListId`` or ``origClientOrderId``)."""
        lst = self._find_list(req.params, "orderListId", "origClientOrderId", -2013, "Order list does not exist.")
        return Response(200, self._list_body(lst))

    def _cancel_list(self, req: Request, now: int) -> Response:
        """DELETE /api/v3/orderList (``symbol`` and ``orderListId`` or ``listClientOrderId``)."""
        m = self._market(req.params)
        lst = self._find_list(req.params, "orderListId", "listClientOrderId", -2011, "Unknown order list sent.")
        legs = self._legs(lst)
        if lst.market_id != m.market_id or not any(o.is_open for o in legs):
            raise ApiError(400, -2011, "Unknown order list sent.")
        for o in legs:
            if o.is_open:
                self._close(o, "CANCELED", now)
        lst.update_time = now
        log.info("OCO list %d canceled (%s)", lst.list_id, _utc(now))
        return Response(200, self._list_body(lst, reports=True))

    def _open_lists(self, req: Request, now: int) -> Response:
        """GET /api/v3/openOrderList: the lists with a leg still open."""
        return Response(200, [self._list_body(lst) for lst in self.order_lists.values()
                              if any(o.is_open for o in self._legs(lst))])


def _fmt_amount(x: Decimal) -> str:
    return format(x.normalize(), "f")
