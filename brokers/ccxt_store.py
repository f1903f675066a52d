"""CCXTStore: the one exchange client of a paper or live session and its retry policy.

backtrader's store / feed / broker split: the store owns the connection, hands out the
live data feed (:meth:`CCXTStore.getdata`) and, for live trading, the broker.

* **One client**, built by :func:`brokers.exchange.make_exchange`: ccxt's rate limiter on,
  credentials only from the environment variables the config names (never arguments or
  files), optional sandbox and base-URL override (the loopback/replay exchange).
* **Retry policy.** Reads (time, markets, candles, balances, orders, trades) are
  idempotent: a transient failure -- ccxt ``NetworkError`` and its subclasses
  ``RateLimitExceeded``, ``ExchangeNotAvailable``, ``RequestTimeout``, or an HTTP
  408/418/429/5xx answer -- is retried with exponential backoff (``Retry-After`` honoured)
  by :func:`brokers.exchange.with_retries`; anything else (bad symbol, auth, insufficient
  funds, invalid order) is raised at once, because repeating it cannot help.
  **Order placement is never retried blindly** (:meth:`CCXTStore.send_once`, the one write
  path): an order is sent once; when its answer is lost (timeout, dropped connection, 5xx,
  unknown status) it may have arrived and still be invisible, so it is looked up by client
  id repeatedly over an in-flight window that outlasts the venue's ``recvWindow`` (after
  which the request can no longer execute), then searched in the open orders and the
  orders of the newest trades; only when every one of those says "absent" is it sent
  again, under the same id. A 429/418 answer (refused before execution) waits out
  ``Retry-After``; a 418 is an IP ban: all traffic stops for it, entries are halted and
  listeners alerted (:attr:`CCXTStore.ban_listeners`).
* **Clock.** :meth:`CCXTStore.sync_clock` measures the exchange's clock and signs every
  request with it; a -1021 refusal (timestamp outside the window) re-syncs and retries once.
* **Every venue call is a store method** (orders, OCO lists, cancels, lookups, trades,
  balances); the exchange-specific parts live in :mod:`brokers.exchanges` (capability
  table + one module per exchange), so feed and broker never touch the raw client.
* **No secrets in text.** Every message this module logs or raises goes through
  :func:`core.redact.redact`; the keys never leave the ccxt client.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import ccxt

from brokers.exchange import BAN_STATUS, RetriesExhausted, last_response, make_exchange, retry_delay, with_retries
from brokers.exchanges import Venue, venue_for
from core.errors import ConfigError, NtsError
from core.redact import redact

log = logging.getLogger("nts.store")

T = TypeVar("T")

#: ccxt error classes that mean "no answer / try later"; everything else is final.
RETRYABLE = (ccxt.NetworkError, ccxt.RateLimitExceeded, ccxt.ExchangeNotAvailable, ccxt.RequestTimeout)


class ExchangeRefused(NtsError):
    """The exchange answered a request with a final refusal (not worth repeating)."""


class OrderInDoubt(NtsError):
    """An order's answer was lost and the lookups failed too: it may or may not exist (the
    broker keeps looking it up; it is never sent again under another id)."""


def first_line(exc: BaseException) -> str:
    """``Class: first line`` of an exception, redacted, at most 300 characters."""
    lines = str(exc).strip().splitlines()
    return redact(f"{exc.__class__.__name__}: {(lines[0] if lines else '')[:300]}")


@dataclass
class StoreStats:
    """Counters of one store (reported by sessions and tests)."""

    requests: int = 0   # successful calls
    retries: int = 0    # transient failures that were retried
    failures: int = 0   # calls that failed for good (refused or retries exhausted)
    resends: int = 0    # orders sent again after the venue showed the first never existed
    found_after_loss: int = 0  # lost answers whose order the lookups found
    bans: int = 0       # IP bans (418) waited out
    clock_syncs: int = 0


class CCXTStore:
    """One ccxt client plus its retry policy (see module docstring).

    ``exchange``: an already built client (tests); otherwise one is built from the other
    arguments with :func:`make_exchange`. ``sleep`` is the wait used between retries
    (tests pass a fake to keep time out of the suite).
    """

    def __init__(self, exchange_id: str = "binance", url: str | None = None, sandbox: bool = False,
                 timeout_ms: int = 10000, api_key_env: str | None = None, secret_env: str | None = None,
                 require_keys: bool = False, retries: int = 5, backoff_s: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep, exchange: ccxt.Exchange | None = None,
                 inflight_lookups: int = 4, inflight_step_s: float = 1.0,
                 inflight_window_s: float | None = None) -> None:
        self.exchange = exchange if exchange is not None else make_exchange(
            exchange_id, url=url, sandbox=sandbox, timeout_ms=timeout_ms, api_key_env=api_key_env,
            secret_env=secret_env, require_keys=require_keys)
        self.exchange_id = self.exchange.id
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.sleep = sleep
        self.stats = StoreStats()
        self._markets_loaded = False
        self.venue: Venue | None = venue_for(self.exchange)
        self.inflight_lookups = max(1, int(inflight_lookups))
        self.inflight_step_s = max(0.0, float(inflight_step_s))
        # None: the venue's recvWindow + 1 s (a request older than that cannot execute any more)
        self.inflight_window_s = inflight_window_s
        self.time_offset_ms: int | None = None   # host minus exchange, once measured
        self.entries_blocked = False             # set by an IP ban, cleared by the broker after it
        self.ban_listeners: list[Callable[[str, float], None]] = []

    @classmethod
    def from_config(cls, cfg: Any, *, exchange_id: str | None = None, url: str | None = None,
                    require_keys: bool = False, sleep: Callable[[float], None] = time.sleep) -> "CCXTStore":
        """A store from ``cfg.broker`` (exchange id, URL, sandbox, key variables, timeout,
        retries, backoff); ``exchange_id``/``url`` override the config's."""
        b = cfg.broker
        return cls(exchange_id or b.exchange, url=url if url is not None else b.url, sandbox=b.sandbox,
                   timeout_ms=b.timeout_ms, api_key_env=b.api_key_env, secret_env=b.secret_env,
                   require_keys=require_keys, retries=b.retries, backoff_s=b.backoff_s, sleep=sleep)

    @property
    def has_keys(self) -> bool:
        """True when the client carries an API key and secret (from the environment)."""
        return bool(getattr(self.exchange, "apiKey", "")) and bool(getattr(self.exchange, "secret", ""))

    @property
    def rate_limit_s(self) -> float:
        """The exchange's minimum spacing between requests (ccxt ``rateLimit``), seconds."""
        return max(0.0, float(getattr(self.exchange, "rateLimit", 0) or 0) / 1000.0)

    # ------------------------------------------------------------------ reads
    def read(self, what: str, fn: Callable[[], T], *, clock_retry: bool = True) -> T:
        """Call an idempotent request ``fn`` with the retry policy; ``what`` names it in
        messages. A 418 ban is waited out in full (all traffic stops); a refusal for the
        request's timestamp (-1021) re-syncs the clock and tries once more. Raises
        :class:`ExchangeRefused` (final refusal) or :class:`~brokers.exchange.RetriesExhausted`
        (kept failing), both one redacted line."""
        def count(attempt: int, exc: BaseException, delay: float) -> None:
            self.stats.retries += 1

        for attempt in (1, 2):
            try:
                out = with_retries(fn, retries=self.retries, backoff_s=self.backoff_s, exchange=self.exchange,
                                   what=f"{self.exchange_id}: {what}", on_retry=count, on_ban=self._on_ban,
                                   sleep=self.sleep)
            except RetriesExhausted as exc:
                self.stats.failures += 1
                raise RetriesExhausted(redact(str(exc)), exc.attempts, exc.last_error) from None
            except ccxt.BaseError as exc:
                if clock_retry and attempt == 1 and self.venue is not None and self.venue.is_clock_error(exc):
                    log.warning("%s: %s refused for its timestamp; re-syncing the clock", self.exchange_id, what)
                    self.sync_clock()
                    continue
                self.stats.failures += 1
                raise ExchangeRefused(f"{self.exchange_id}: {what} refused: {first_line(exc)}") from None
            self.stats.requests += 1
            return out
        raise AssertionError("unreachable")  # pragma: no cover

    def load_markets(self) -> dict[str, Any]:
        """Markets (loaded once per store)."""
        markets = self.read("load_markets", lambda: self.exchange.load_markets(reload=False))
        self._markets_loaded = True
        return markets

    def market(self, symbol: str) -> dict[str, Any]:
        """The market of ``symbol`` (ids, limits, precision) from the loaded markets."""
        if not self._markets_loaded:
            self.load_markets()
        return self.exchange.market(symbol)

    def amount_to_precision(self, symbol: str, amount: float) -> str | None:
        """``amount`` truncated to the market's lot step, as the exchange's string (None:
        below one step)."""
        try:
            out = self.exchange.amount_to_precision(symbol, amount)
        except ccxt.InvalidOrder:
            return None
        return out if float(out) > 0 else None

    def price_to_precision(self, symbol: str, price: float) -> str:
        """``price`` rounded to the market's tick, as the exchange's string."""
        return self.exchange.price_to_precision(symbol, price)

    def check_market(self, symbol: str, timeframe: str) -> None:
        """Refuse (ConfigError, one line) a symbol or timeframe the exchange does not offer."""
        markets = self.load_markets()
        if symbol not in markets:
            quote = symbol.split("/")[-1]
            hint = sorted(s for s in markets if s.endswith("/" + quote))[:5]
            raise ConfigError(f"{self.exchange_id}: unknown symbol {symbol!r}"
                              + (f" (e.g. {', '.join(hint)})" if hint else ""))
        tfs = getattr(self.exchange, "timeframes", None)
        if tfs and timeframe not in tfs:
            raise ConfigError(f"{self.exchange_id}: timeframe {timeframe!r} not offered "
                              f"(choose from {', '.join(tfs)})")

    def fetch_time(self) -> int:
        """The exchange's clock, epoch ms (falls back to the local clock when the exchange
        has no time endpoint)."""
        if self.exchange.has.get("fetchTime"):
            return int(self.read("fetch_time", self.exchange.fetch_time))
        return int(self.exchange.milliseconds())

    def fetch_ohlcv(self, symbol: str, timeframe: str, since: int | None = None, limit: int | None = None,
                    until: int | None = None) -> list[list]:
        """Candles ``[open_ms, o, h, l, c, v]`` as ccxt returns them (the still-open candle
        included); ``until`` = newest open time wanted (Binance ``endTime``)."""
        params = {} if until is None else {"until": int(until)}
        return self.read(f"fetch_ohlcv {symbol} {timeframe}",
                         lambda: self.exchange.fetch_ohlcv(symbol, timeframe, since=since, limit=limit,
                                                           params=params))

    # ------------------------------------------------------------------ clock
    def sync_clock(self) -> int:
        """Measure the exchange's clock against the host's (the midpoint of the request) and
        sign every later request with it; returns the offset in ms (host minus exchange)."""
        venue = self._venue()
        t0 = self.exchange.milliseconds()
        server = int(self.read("fetch_time (clock sync)", venue.server_time_ms, clock_retry=False))
        t1 = self.exchange.milliseconds()
        offset = (t0 + t1) // 2 - server
        venue.set_time_offset(offset)
        self.time_offset_ms = int(offset)
        self.stats.clock_syncs += 1
        if abs(offset) >= 500:
            log.warning("%s: host clock %+d ms off the exchange's; requests are signed with the exchange's time",
                        self.exchange_id, offset)
        return int(offset)

    # ------------------------------------------------------------------ account reads (live)
    def _venue(self) -> Venue:
        if self.venue is None:
            self.venue = venue_for(self.exchange, need_orders=True)
        return self.venue  # type: ignore[return-value]

    def find_order(self, symbol: str, client_id: str) -> dict[str, Any] | None:
        """The exchange's order with client order id ``client_id``, or None when it has none."""
        return self.read(f"fetch_order {client_id}", lambda: self._venue().find_order(symbol, client_id))

    def find_order_by_id(self, symbol: str, order_id: str) -> dict[str, Any] | None:
        """The exchange's order with exchange id ``order_id``, or None."""
        return self.read(f"fetch_order {order_id}", lambda: self._venue().find_order_by_id(symbol, order_id))

    def open_orders(self, symbol: str) -> list[dict[str, Any]]:
        """Open orders of ``symbol`` (ccxt unified)."""
        return self.read(f"fetch_open_orders {symbol}", lambda: self.exchange.fetch_open_orders(symbol))

    def trades_from(self, symbol: str, from_id: int, limit: int = 1000) -> list[dict[str, Any]]:
        """The account's trades on ``symbol`` with id >= ``from_id`` (one page, oldest first)."""
        return self.read(f"fetch_my_trades {symbol} from {from_id}",
                         lambda: self._venue().trades_from(symbol, from_id, limit))

    def recent_trades(self, symbol: str, limit: int = 20) -> list[dict[str, Any]]:
        """The account's newest ``limit`` trades on ``symbol``."""
        return self.read(f"fetch_my_trades {symbol} newest",
                         lambda: self._venue().recent_trades(symbol, limit))

    def balance(self) -> dict[str, Any]:
        """The account's balances (ccxt unified)."""
        return self.read("fetch_balance", self.exchange.fetch_balance)

    def last_price(self, symbol: str) -> float:
        """The last traded price of ``symbol``."""
        t = self.read(f"fetch_ticker {symbol}", lambda: self.exchange.fetch_ticker(symbol))
        return float(t.get("last") or t.get("close") or 0.0)

    # ------------------------------------------------------------------ orders (live)
    def submit(self, symbol: str, order_type: str, side: str, amount: float, price: float | None,
               client_id: str, params: dict[str, Any] | None = None, *, entry: bool = False) -> dict[str, Any]:
        """Send one order under ``client_id`` through :meth:`send_once` (never re-sent blindly).
        ``entry``: an IP ban refuses it for good (after waiting the ban out) instead of sending
        it again afterwards: the price it was decided at is gone."""
        p = self._venue().order_params(client_id, dict(params or {}))
        return self.send_once(f"order {client_id}",
                              lambda: self.exchange.create_order(symbol, order_type, side, amount, price, p),
                              lambda: self.find_order(symbol, client_id),
                              lambda: self._order_evidence(symbol, (client_id,)), abort_on_ban=entry)

    def submit_oco(self, symbol: str, side: str, amount: str, stop_price: str, take_profit: str,
                   list_cid: str, stop_cid: str, tp_cid: str) -> dict[str, Any]:
        """Send one OCO exit list (stop below/above, take profit on the other side) through
        :meth:`send_once`; a lost answer is looked up by the list's and the legs' client ids."""
        venue = self._venue()
        if not venue.caps.oco_lists:
            raise ConfigError(f"{self.exchange_id}: no OCO order lists on this exchange")
        market_id = self.exchange.market(symbol)["id"]
        return self.send_once(
            f"order list {list_cid}",
            lambda: venue.submit_oco(market_id, side, amount, stop_price, take_profit, list_cid, stop_cid, tp_cid),
            lambda: self.read(f"fetch_order_list {list_cid}", lambda: venue.find_order_list(list_cid)),
            lambda: self._order_evidence(symbol, (stop_cid, tp_cid)))

    def cancel(self, symbol: str, order_id: str | None, client_id: str) -> dict[str, Any] | None:
        """Cancel one order (None: the exchange does not know it, or it is already done)."""
        return self.read(f"cancel order {client_id}", lambda: self._venue().cancel_order(symbol, order_id, client_id))

    def cancel_oco(self, symbol: str, list_cid: str) -> dict[str, Any] | None:
        """Cancel an OCO list (None: unknown, or already done)."""
        market_id = self.exchange.market(symbol)["id"]
        return self.read(f"cancel order list {list_cid}", lambda: self._venue().cancel_order_list(market_id, list_cid))

    def _order_evidence(self, symbol: str, client_ids: tuple[str, ...]) -> dict[str, Any] | None:
        """More evidence than the lookups by client id: the open orders, and the orders of the
        account's newest trades (an order filled at once shows there)."""
        for o in self.open_orders(symbol):
            if str(o.get("clientOrderId")) in client_ids:
                return o
        seen: set[str] = set()
        for t in sorted(self.recent_trades(symbol), key=lambda t: -int(t.get("id") or 0)):
            oid = str(t.get("order"))
            if oid in seen or len(seen) >= 5:
                continue
            seen.add(oid)
            o = self.find_order_by_id(symbol, oid)
            if o is not None and str(o.get("clientOrderId")) in client_ids:
                return o
        return None

    def send_once(self, what: str, send: Callable[[], Any], lookup: Callable[[], Any],
                  evidence: Callable[[], Any] | None = None, *, abort_on_ban: bool = False) -> Any:
        """The one write path to the exchange (see the module docstring, "send once").

        ``send()`` once. A final refusal raises :class:`ExchangeRefused`. An answer that says
        the request did not execute (429/418 on Binance, -1021 after a clock re-sync) is waited
        out by :func:`~brokers.exchange.retry_delay` and sent again after one lookup. A LOST
        answer (no response, timeout, 5xx, unknown status) is followed by repeated lookups by
        client id over the in-flight window (at least ``inflight_lookups`` of them, until the
        venue's ``recvWindow`` has passed: a request older than that can no longer execute),
        then ``evidence()`` (open orders, recent trades): found -> returned; absent every
        time -> the venue has shown the first never existed and it is sent again under the
        same id, at most ``retries`` times. Lookups that fail raise :class:`OrderInDoubt`."""
        attempts, resynced = 0, False
        while True:
            attempts += 1
            self.exchange.nts_last_response = None  # the status read below must be this call's
            try:
                out = send()
                self.stats.requests += 1
                return out
            except ccxt.BaseError as exc:
                last: BaseException = exc
                status, headers = last_response(self.exchange)
                venue = self._venue()
                if venue.is_clock_error(exc) and not resynced:
                    resynced = True
                    log.warning("%s: refused for its timestamp (%s); re-syncing the clock", what, first_line(exc))
                    self.sync_clock()
                    continue
                if not self._transient(exc, status):
                    self.stats.failures += 1
                    raise ExchangeRefused(f"{self.exchange_id}: {what} refused: {first_line(exc)}") from None
            self.stats.retries += 1
            delay = retry_delay(attempts, status, headers, self.backoff_s)
            if status is not None and status in venue.caps.refused_statuses:
                if attempts > self.retries:
                    self.stats.failures += 1
                    raise RetriesExhausted(f"{self.exchange_id}: {what}: not placed after {attempts} attempts; "
                                           f"last error: {first_line(last)}", attempts, last)
                log.warning("%s: refused before execution (%s); waiting %.2fs", what, first_line(last), delay)
                self._wait(delay, status)
                found = self._look(what, lookup)
                if found is None and abort_on_ban and status == BAN_STATUS:
                    self.stats.failures += 1
                    raise ExchangeRefused(f"{self.exchange_id}: {what} refused: IP ban (HTTP 418) for {delay:.0f}s; "
                                          "not sent again after it")
            else:
                log.warning("%s: answer lost (%s); looking it up before anything else", what, first_line(last))
                found = self._in_flight(what, lookup, evidence)
                if found is None and attempts > self.retries:
                    self.stats.failures += 1
                    raise RetriesExhausted(f"{self.exchange_id}: {what}: not placed after {attempts} attempts; "
                                           f"last error: {first_line(last)}", attempts, last)
            if found is not None:
                return found
            self.stats.resends += 1

    def _transient(self, exc: BaseException, status: int | None) -> bool:
        if isinstance(exc, RETRYABLE):
            return True
        if status is not None and (status in (408, 418, 429) or status >= 500):
            return True
        codes = self._venue().caps.unknown_status_codes
        return any(f'"code":{c},' in str(exc).replace(" ", "") for c in codes)

    def _look(self, what: str, lookup: Callable[[], Any]) -> Any:
        try:
            return lookup()
        except (RetriesExhausted, ExchangeRefused) as exc:
            self.stats.failures += 1
            raise OrderInDoubt(f"{self.exchange_id}: {what}: answer lost and the lookups failed "
                               f"({first_line(exc)}); it may or may not be on the exchange") from None

    def _in_flight(self, what: str, lookup: Callable[[], Any], evidence: Callable[[], Any] | None) -> Any:
        """Repeated lookups over the in-flight window, then ``evidence()``; None = absent every time."""
        window_s = self.inflight_window_s
        if window_s is None:
            window_s = self._venue().recv_window_ms / 1000.0 + 1.0
        waited, n = 0.0, 0
        while True:
            found = self._look(what, lookup)
            n += 1
            if found is not None:
                self.stats.found_after_loss += 1
                return found
            if n >= self.inflight_lookups and waited >= window_s:
                break
            step = min(self.inflight_step_s * 2 ** (n - 1), max(self.inflight_step_s, window_s - waited))
            self.sleep(step)
            waited += step
        if evidence is not None:
            found = self._look(what, evidence)
            if found is not None:
                self.stats.found_after_loss += 1
                return found
        log.warning("%s: absent in %d lookups over %.1fs, open orders and recent trades; sending it again",
                    what, n, waited)
        return None

    def _wait(self, delay: float, status: int | None) -> None:
        """Wait ``delay`` seconds; a 418 is an IP ban: all traffic of the session stops for it
        (this store is the session's only client), entries are blocked until the broker
        sees a bar after it, and listeners are told (journal event, alert)."""
        if status == BAN_STATUS:
            self._on_ban(delay)
        self.sleep(delay)

    def _on_ban(self, delay: float) -> None:
        self.stats.bans += 1
        self.entries_blocked = True
        msg = (f"{self.exchange_id}: IP ban (HTTP 418): every request stops for {delay:.0f}s; "
               "entries halted until it ends")
        log.error(msg)
        for listener in list(self.ban_listeners):
            listener(msg, delay)

    # ------------------------------------------------------------------ backtrader store API
    #: feed factory ``(store, symbol, timeframe, **kwargs) -> feed``, registered by
    #: :mod:`brokers.ccxt_feed` when it loads (backtrader's ``DataCls`` convention: the feed
    #: depends on the store, never the other way round)
    data_factory: Callable[..., Any] | None = None

    def getdata(self, symbol: str, timeframe: str, **kwargs: Any):
        """A :class:`brokers.ccxt_feed.CCXTFeed` on this store (backtrader's store convention);
        ``kwargs`` go to :class:`brokers.ccxt_feed.BarSource`."""
        if CCXTStore.data_factory is None:
            raise NtsError("no feed registered with CCXTStore: import brokers.ccxt_feed first")
        return CCXTStore.data_factory(self, symbol, timeframe, **kwargs)

    #: broker factory ``(store, symbol, journal, start, **kwargs) -> broker``, registered by
    #: :mod:`brokers.ccxt_broker` when it loads (the broker depends on the store, never the
    #: other way round)
    broker_factory: Callable[..., Any] | None = None

    def getbroker(self, symbol: str, journal: Any, start: Any, **kwargs: Any):
        """A :class:`brokers.ccxt_broker.CCXTBroker` on this store (backtrader's store convention)."""
        if CCXTStore.broker_factory is None:
            raise NtsError("no broker registered with CCXTStore: import brokers.ccxt_broker first")
        return CCXTStore.broker_factory(self, symbol, journal, start, **kwargs)
