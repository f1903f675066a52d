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
  **Order placement is never retried blindly**: :meth:`CCXTStore.submit` sends once; when
  the answer is lost (timeout, dropped connection, 5xx) it looks the order up by its client
  order id before anything else is sent, so a retry can never place a second order.
* **No secrets in text.** Every message this module logs or raises goes through
  :func:`core.redact.redact`; the keys never leave the ccxt client.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import ccxt

from brokers.exchange import RetriesExhausted, make_exchange, with_retries
from core.errors import ConfigError, NtsError
from core.redact import redact

log = logging.getLogger("nts.store")

T = TypeVar("T")

#: ccxt error classes that mean "no answer / try later"; everything else is final.
RETRYABLE = (ccxt.NetworkError, ccxt.RateLimitExceeded, ccxt.ExchangeNotAvailable, ccxt.RequestTimeout)


class ExchangeRefused(NtsError):
    """The exchange answered a request with a final refusal (not worth repeating)."""


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


class CCXTStore:
    """One ccxt client plus its retry policy (see module docstring).

    ``exchange``: an already built client (tests); otherwise one is built from the other
    arguments with :func:`make_exchange`. ``sleep`` is the wait used between retries
    (tests pass a fake to keep time out of the suite).
    """

    def __init__(self, exchange_id: str = "binance", url: str | None = None, sandbox: bool = False,
                 timeout_ms: int = 10000, api_key_env: str | None = None, secret_env: str | None = None,
                 require_keys: bool = False, retries: int = 5, backoff_s: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep, exchange: ccxt.Exchange | None = None) -> None:
        self.exchange = exchange if exchange is not None else make_exchange(
            exchange_id, url=url, sandbox=sandbox, timeout_ms=timeout_ms, api_key_env=api_key_env,
            secret_env=secret_env, require_keys=require_keys)
        self.exchange_id = self.exchange.id
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.sleep = sleep
        self.stats = StoreStats()
        self._markets_loaded = False

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
    def read(self, what: str, fn: Callable[[], T]) -> T:
        """Call an idempotent request ``fn`` with the retry policy; ``what`` names it in
        messages. Raises :class:`ExchangeRefused` (final refusal) or
        :class:`~brokers.exchange.RetriesExhausted` (kept failing), both one redacted line."""
        def count(attempt: int, exc: BaseException, delay: float) -> None:
            self.stats.retries += 1

        try:
            out = with_retries(fn, retries=self.retries, backoff_s=self.backoff_s, exchange=self.exchange,
                               what=f"{self.exchange_id}: {what}", on_retry=count, sleep=self.sleep)
        except RetriesExhausted as exc:
            self.stats.failures += 1
            raise RetriesExhausted(redact(str(exc)), exc.attempts, exc.last_error) from None
        except ccxt.BaseError as exc:
            self.stats.failures += 1
            raise ExchangeRefused(f"{self.exchange_id}: {what} refused: {first_line(exc)}") from None
        self.stats.requests += 1
        return out

    def load_markets(self) -> dict[str, Any]:
        """Markets (loaded once per store)."""
        markets = self.read("load_markets", lambda: self.exchange.load_markets(reload=False))
        self._markets_loaded = True
        return markets

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

    # ------------------------------------------------------------------ orders (live)
    def find_order(self, symbol: str, client_id: str) -> dict[str, Any] | None:
        """The exchange's order with client order id ``client_id``, or None when it has none
        (Binance ``origClientOrderId`` lookup; unknown id = -2013 "Order does not exist")."""
        def lookup() -> dict[str, Any] | None:
            try:
                return self.exchange.fetch_order(None, symbol, params={"origClientOrderId": client_id})
            except ccxt.OrderNotFound:
                return None

        return self.read(f"fetch_order {client_id}", lookup)

    def submit(self, symbol: str, order_type: str, side: str, amount: float, price: float | None,
               client_id: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one order ONCE under ``client_id``; never re-sent blindly.

        When the answer is lost (a retryable error: timeout, dropped connection, 429, 5xx)
        the order may or may not have reached the exchange, so the store asks for it by
        client id (with the read retry policy): found -> that order is returned (exactly one
        exists); not found -> it is sent again, at most ``retries`` times, each time after
        such a lookup. A final refusal raises :class:`ExchangeRefused` at once.
        """
        p = dict(params or {})
        p["clientOrderId"] = client_id  # ccxt: Binance newClientOrderId
        return self.send_once(f"order {client_id}",
                              lambda: self.exchange.create_order(symbol, order_type, side, amount, price, p),
                              lambda: self.find_order(symbol, client_id))

    def send_once(self, what: str, send: Callable[[], Any], lookup: Callable[[], Any]) -> Any:
        """The one write path to the exchange: ``send()`` ONCE; when its answer is lost (a
        retryable error) ``lookup()`` (by client id, with the read retry policy) decides
        whether it arrived -- found is returned, not found is sent again, at most
        ``retries`` times. A final refusal raises :class:`ExchangeRefused` at once. Orders
        (:meth:`submit`) and order lists (the live broker's OCO exits) both go through it."""
        attempts = 0
        while True:
            attempts += 1
            self.exchange.nts_last_response = None  # the status read below must be this call's
            try:
                out = send()
                self.stats.requests += 1
                return out
            except RETRYABLE as exc:
                last: BaseException = exc
            except ccxt.BaseError as exc:
                status = (getattr(self.exchange, "nts_last_response", None) or (None, None))[0]
                if status is None or not (status in (408, 418, 429) or status >= 500):
                    self.stats.failures += 1
                    raise ExchangeRefused(f"{self.exchange_id}: {what} refused: {first_line(exc)}") from None
                last = exc
            log.warning("%s: no answer (%s); looking it up by client id before anything else", what, first_line(last))
            self.stats.retries += 1
            found = lookup()
            if found is not None:
                return found
            if attempts > self.retries:
                self.stats.failures += 1
                raise RetriesExhausted(f"{self.exchange_id}: {what}: not placed after {attempts} "
                                       f"attempts; last error: {first_line(last)}", attempts, last)
            self.sleep(min(60.0, self.backoff_s * (2 ** (attempts - 1))))

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
