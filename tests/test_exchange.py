"""make_exchange (keys from env, base URL, options) and with_retries (what is retried, delays)."""
from __future__ import annotations

import email.utils
import time

import ccxt
import pytest

from brokers.exchange import RetriesExhausted, _retry_after_s, make_exchange, with_retries
from core.errors import ConfigError

URL = "http://127.0.0.1:9"


def test_unknown_exchange_and_bad_url_are_config_errors():
    with pytest.raises(ConfigError, match="unknown exchange id 'nosuchex'"):
        make_exchange("nosuchex")
    with pytest.raises(ConfigError, match="invalid exchange URL 'ftp://x'"):
        make_exchange("binance", url="ftp://x")


def test_url_override_rebases_every_api_entry_after_sandbox():
    ex = make_exchange("binance", url=URL + "/", sandbox=True)
    api = ex.urls["api"]
    assert api["public"] == URL + "/api/v3" and api["private"] == URL + "/api/v3"
    assert api["v1"] == URL + "/api/v1" and api["fapiPublic"] == URL + "/fapi/v1"
    assert all(v.startswith(URL + "/") for v in api.values() if isinstance(v, str))
    assert make_exchange("binance", url=URL).urls["api"]["sapi"] == URL + "/sapi/v1"
    plain = make_exchange("binance")
    assert plain.urls["api"]["public"] == "https://api.binance.com/api/v3"  # other instances untouched


def test_defaults_rate_limit_and_no_currency_or_margin_calls():
    ex = make_exchange("binance", timeout_ms=1234, options={"recvWindow": 7000})
    assert ex.enableRateLimit is True and ex.timeout == 1234
    assert ex.has["fetchCurrencies"] is False and ex.options["fetchMargins"] is False
    assert ex.options["fetchMarkets"]["types"] == ["spot"] and ex.options["recvWindow"] == 7000
    assert ccxt.binance().has["fetchCurrencies"] is True  # the class default is not modified


def test_credentials_come_only_from_the_environment(monkeypatch):
    monkeypatch.setenv("NTS_TEST_KEY", "k123")
    monkeypatch.setenv("NTS_TEST_SECRET", "s456")
    ex = make_exchange("binance", api_key_env="NTS_TEST_KEY", secret_env="NTS_TEST_SECRET", require_keys=True)
    assert ex.apiKey == "k123" and ex.secret == "s456"
    monkeypatch.setenv("NTS_TEST_SECRET", "")  # empty counts as missing
    with pytest.raises(ConfigError, match="API secret missing: environment variable NTS_TEST_SECRET is not set"):
        make_exchange("binance", api_key_env="NTS_TEST_KEY", secret_env="NTS_TEST_SECRET", require_keys=True)
    monkeypatch.delenv("NTS_TEST_KEY")
    with pytest.raises(ConfigError, match="environment variable NTS_TEST_KEY"):
        make_exchange("binance", api_key_env="NTS_TEST_KEY", secret_env="NTS_TEST_SECRET", require_keys=True)
    ex = make_exchange("binance", api_key_env="NTS_TEST_KEY", secret_env="NTS_TEST_SECRET")  # public use
    assert not ex.apiKey


class Flaky:
    """Raises the given errors in turn, then returns 'ok'."""

    def __init__(self, *errors):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_network_errors_are_retried_with_exponential_backoff():
    waits, seen = [], []
    fn = Flaky(ccxt.RequestTimeout("t"), ccxt.NetworkError("reset"), ccxt.RateLimitExceeded("429"))
    out = with_retries(fn, retries=3, backoff_s=0.5, sleep=waits.append,
                       on_retry=lambda n, e, d: seen.append((n, type(e).__name__)))
    assert out == "ok" and fn.calls == 4
    assert waits == [0.5, 1.0, 2.0]
    assert seen == [(1, "RequestTimeout"), (2, "NetworkError"), (3, "RateLimitExceeded")]


def test_delays_are_capped():
    waits = []
    with_retries(Flaky(*[ccxt.NetworkError("x")] * 4), retries=4, backoff_s=10, max_delay_s=15, sleep=waits.append)
    assert waits == [10, 15, 15, 15]


@pytest.mark.parametrize("error", [ccxt.BadRequest("bad"), ccxt.AuthenticationError("auth"),
                                   ccxt.InsufficientFunds("funds"), ValueError("bug")])
def test_non_transient_errors_are_raised_at_once(error):
    fn = Flaky(error)
    with pytest.raises(type(error)):
        with_retries(fn, retries=5, backoff_s=0, sleep=lambda s: None)
    assert fn.calls == 1


def test_giving_up_names_the_request_and_the_last_error():
    fn = Flaky(*[ccxt.ExchangeNotAvailable("binance GET /x 503")] * 10)
    with pytest.raises(RetriesExhausted, match=r"^candles: gave up after 3 attempts; last error: "
                                               r"ExchangeNotAvailable: binance GET /x 503$") as info:
        with_retries(fn, retries=2, backoff_s=0, what="candles", sleep=lambda s: None)
    assert fn.calls == 3 and info.value.attempts == 3


def test_retry_after_header_parsing():
    assert _retry_after_s({"Retry-After": "3"}) == 3.0
    assert _retry_after_s({"retry-after": "0.25"}) == 0.25
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= _retry_after_s({"Retry-After": future}) <= 31
    assert _retry_after_s({"Retry-After": "soon"}) is None
    assert _retry_after_s({}) is None and _retry_after_s(None) is None
