"""One exchange-client factory and one retry helper, shared by download, paper and live.

``make_exchange`` builds a ccxt client with rate limiting on, credentials read only from
environment variables, optional sandbox mode and an optional base-URL override (used to
point the real ccxt client at the loopback exchange in tests and demos).

``with_retries`` retries transient failures (no response, timeouts, 429/418, 5xx) with
exponential backoff, honours ``Retry-After`` (:func:`retry_delay`, the one delay rule of
every request kind: reads, order sends and lookups) and gives up with one clear
:class:`RetriesExhausted` line; client errors (bad symbol, bad request, auth) are raised
unchanged on the first try because repeating them cannot help.
"""
from __future__ import annotations

import email.utils
import logging
import os
import time
from typing import Any, Callable, Mapping, TypeVar
from urllib.parse import urlsplit

import ccxt

from core.errors import ConfigError, NtsError

log = logging.getLogger("nts.exchange")

T = TypeVar("T")

# Per-exchange defaults: only the endpoints a spot candle download/trading session needs.
# ccxt otherwise also loads futures/options markets, currencies and margin pairs, which
# costs requests (and needs endpoints the loopback exchange does not serve).
_COMMON_OPTIONS: dict[str, Any] = {"fetchCurrencies": False, "fetchMargins": False}
_EXCHANGE_OPTIONS: dict[str, dict[str, Any]] = {
    "binance": {"fetchMarkets": {"types": ["spot"]}, "defaultType": "spot"},
}

# HTTP statuses worth retrying: request timeout, IP ban / rate limit, and every 5xx.
_RETRY_STATUSES = {408, 418, 429}


class RetriesExhausted(NtsError):
    """A request kept failing with transient errors until the retry budget ran out."""

    def __init__(self, message: str, attempts: int, last_error: BaseException | None):
        super().__init__(message)
        self.attempts = attempts
        self.last_error = last_error


def _rebase(url: str, base: str) -> str:
    """Keep ``url``'s path but send it to ``base`` (scheme, host, port and optional prefix)."""
    parts = urlsplit(url)
    path = parts.path or ""
    rebased = base.rstrip("/") + path
    return rebased + (f"?{parts.query}" if parts.query else "")


def _rebase_tree(node: Any, base: str) -> Any:
    if isinstance(node, str):
        return _rebase(node, base)
    if isinstance(node, dict):
        return {k: _rebase_tree(v, base) for k, v in node.items()}
    return node


def _record_responses(exchange: ccxt.Exchange) -> None:
    """Remember status and headers of the last HTTP response on the instance.

    ccxt maps some 5xx bodies to non-network errors (binance: ``-1001`` -> OperationFailed)
    and some 4xx to network errors (404 -> ExchangeNotAvailable); the status tells
    ``with_retries`` which failures are transient. ``on_rest_response`` is ccxt's hook
    called for every REST response before error handling.
    """
    original = exchange.on_rest_response

    def on_rest_response(code, reason, url, method, headers, body, request_headers, request_body):
        exchange.nts_last_response = (int(code) if code is not None else None, dict(headers or {}))
        return original(code, reason, url, method, headers, body, request_headers, request_body)

    exchange.on_rest_response = on_rest_response
    exchange.nts_last_response = None


def require_keys_in_env(exchange_id: str, api_key_env: str | None, secret_env: str | None) -> None:
    """Refuse (ConfigError, one line naming the variable) unless both key variables are set;
    cheap, so ``nts live`` calls it before any other work."""
    for field, env in (("api_key_env", api_key_env), ("secret_env", secret_env)):
        what = "API key" if field == "api_key_env" else "API secret"
        if not env:
            raise ConfigError(f"{exchange_id}: {what} required but no environment variable is configured "
                              f"(broker.{field})")
        if not os.environ.get(env, ""):
            raise ConfigError(f"{exchange_id}: {what} missing: environment variable {env} is not set")


def make_exchange(
    exchange_id: str = "binance",
    url: str | None = None,
    sandbox: bool = False,
    timeout_ms: int = 10000,
    api_key_env: str | None = None,
    secret_env: str | None = None,
    require_keys: bool = False,
    options: Mapping[str, Any] | None = None,
) -> ccxt.Exchange:
    """Build a ccxt client: rate-limited, keys from the environment only, optional base URL.

    ``api_key_env``/``secret_env`` name environment variables; keys are never taken from
    arguments or files. With ``require_keys`` a missing or empty variable raises
    ConfigError naming it. ``url`` (``http://127.0.0.1:PORT``) replaces scheme and host of
    every entry in ``exchange.urls['api']`` (keeping the paths, e.g. ``/api/v3``); it is
    applied after ``sandbox`` so it wins. ``options`` are merged over the defaults, which
    limit market loading to what spot candles and orders need.
    """
    # only names in ccxt's exchange list: getattr alone also finds ccxt.Exchange, the base class
    cls = getattr(ccxt, str(exchange_id), None) if str(exchange_id) in ccxt.exchanges else None
    if not isinstance(cls, type) or not issubclass(cls, ccxt.Exchange):
        raise ConfigError(f"unknown exchange id {exchange_id!r}: ccxt has no such exchange")
    merged: dict[str, Any] = {**_COMMON_OPTIONS, **_EXCHANGE_OPTIONS.get(exchange_id, {}), **dict(options or {})}
    params: dict[str, Any] = {"enableRateLimit": True, "timeout": int(timeout_ms), "options": merged}
    if require_keys:
        require_keys_in_env(exchange_id, api_key_env, secret_env)
    for field, env in (("apiKey", api_key_env), ("secret", secret_env)):
        value = os.environ.get(env, "") if env else ""
        if value:
            params[field] = value
    exchange = cls(params)
    # `has` is per instance in ccxt; switch off the endpoints we do not want called.
    exchange.has["fetchCurrencies"] = False
    exchange.has["fetchMargins"] = False
    if sandbox:
        try:
            exchange.set_sandbox_mode(True)
        except ccxt.NotSupported as exc:
            raise ConfigError(f"{exchange_id}: ccxt knows no sandbox/testnet for this exchange") from exc
    if url is not None and not str(url).strip():
        raise ConfigError("empty exchange URL: give http(s)://host[:port] or leave the option out")
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"invalid exchange URL {url!r}: expected http(s)://host[:port]")
        exchange.urls["api"] = _rebase_tree(exchange.urls["api"], url)
    _record_responses(exchange)
    return exchange


def _retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), if any."""
    if not headers:
        return None
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _is_transient(exc: BaseException, status: int | None) -> bool:
    """Transient = worth repeating: no response at all, or a 408/418/429/5xx response."""
    if not isinstance(exc, ccxt.BaseError):
        return False
    if status is not None:
        return status in _RETRY_STATUSES or status >= 500
    return isinstance(exc, ccxt.NetworkError)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return f"{exc.__class__.__name__}: {line[:300]}"


#: HTTP status of an IP ban (Binance: the ban grows when requests keep coming during it)
BAN_STATUS = 418
#: a ban without Retry-After lasts at least this long (Binance's shortest ban is 2 minutes)
DEFAULT_BAN_S = 120.0


def retry_delay(attempt: int, status: int | None, headers: Mapping[str, str] | None, backoff_s: float,
                max_delay_s: float = 120.0) -> float:
    """THE wait before the next request after a transient failure, for every request kind
    (reads, order sends, lookups): ``Retry-After`` when the answer carried one (a 418 ban
    lasts exactly that long, never capped below it), else ``backoff_s * 2**(attempt-1)``
    capped at ``max_delay_s``; a 418 without ``Retry-After`` waits :data:`DEFAULT_BAN_S`."""
    after = _retry_after_s(headers)
    if status == BAN_STATUS:
        return after if after is not None else max(DEFAULT_BAN_S, backoff_s * (2 ** (attempt - 1)))
    if after is not None:  # the venue's own demand: a rate limit's wait is never shortened
        return after if status == 429 else min(after, max_delay_s)
    return min(backoff_s * (2 ** (attempt - 1)), max_delay_s)


def last_response(exchange: ccxt.Exchange | None) -> tuple[int | None, dict | None]:
    """(status, headers) of the client's last HTTP response, (None, None) when none arrived."""
    last = getattr(exchange, "nts_last_response", None) if exchange is not None else None
    return last if last else (None, None)


def with_retries(
    fn: Callable[[], T],
    retries: int = 5,
    backoff_s: float = 1.0,
    *,
    exchange: ccxt.Exchange | None = None,
    what: str = "exchange request",
    max_delay_s: float = 120.0,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    on_ban: Callable[[float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn()``; on a transient failure wait and call again, at most ``retries`` more times.

    Delays: :func:`retry_delay` (``Retry-After`` honoured, a 418 ban waited out in full).
    ``exchange`` (built by make_exchange) lets the helper read the last response's status
    and headers. ``on_retry(attempt, error, delay)`` is called before each wait (for
    counters and logs), ``on_ban(seconds)`` before waiting out a 418. Non-transient errors
    are re-raised unchanged; running out of retries raises RetriesExhausted naming ``what``.
    """
    attempts = 0
    while True:
        if exchange is not None:
            exchange.nts_last_response = None
        attempts += 1
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below, re-raised if not transient
            status, headers = last_response(exchange)
            if not _is_transient(exc, status):
                raise
            if attempts > retries:
                code = f" (HTTP {status})" if status else ""
                raise RetriesExhausted(
                    f"{what}: gave up after {attempts} attempts; last error{code}: {_first_line(exc)}",
                    attempts, exc,
                ) from exc
            delay = retry_delay(attempts, status, headers, backoff_s, max_delay_s)
            log.warning("%s failed (attempt %d of %d, %s); retrying in %.2fs",
                        what, attempts, retries + 1, _first_line(exc), delay)
            if on_retry is not None:
                on_retry(attempts, exc, delay)
            if status == BAN_STATUS and on_ban is not None:
                on_ban(delay)
            sleep(delay)
