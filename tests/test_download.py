"""`nts download` through the REAL ccxt.binance client against the loopback exchange."""
from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner

from brokers.download import ExchangeRequestError, FetchOptions, download_ohlcv
from brokers.exchange import RetriesExhausted, make_exchange
from venues.loopback import LoopbackExchange
from core.errors import ConfigError, DataError
from core.ohlcv import load_ohlcv, write_ohlcv_csv
from core.synthetic import synthetic_ohlcv

KLINES = "/api/v3/klines"
TF = pd.Timedelta("15min")
TF_MS = 900_000


def ms(ts: pd.Timestamp) -> int:
    return int(ts.value // 1_000_000)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    # 3,000 bars with a 1,200-bar hole: pages must jump the gap, and the gap must stay a gap.
    return synthetic_ohlcv(3000, seed=11, gaps={1700: 1200})


@pytest.fixture
def loopback(frame):
    with LoopbackExchange(frame, now=frame.index[-1] + 2 * TF) as lb:
        yield lb


@pytest.fixture
def exchange(loopback):
    return make_exchange("binance", url=loopback.url, timeout_ms=400)


def run(exchange, frame, out, start=None, end=None, limit=1000, retries=5, backoff_s=0.01, **kw):
    kw.setdefault("progress", False)
    return download_ohlcv(exchange, "BTC/USDT", "15m", frame.index[0] if start is None else start,
                          frame.index[-1] + TF if end is None else end, out,
                          fetch=FetchOptions(limit=limit, retries=retries, backoff_s=backoff_s), **kw)


def test_round_trip_equals_served_candles(loopback, exchange, frame, tmp_path):
    out = tmp_path / "btc.csv"
    res = run(exchange, frame, out, start="2023-12-01", end="2030-01-01")
    got = load_ohlcv(out)
    pd.testing.assert_frame_equal(got, frame, check_exact=True, check_freq=False)
    raw = pd.read_csv(out)
    assert raw["timestamp"].tolist() == [ms(t) for t in frame.index]  # epoch-ms open times
    assert res.rows_written == res.rows_added == 3000 and not res.resumed
    assert len(res.gaps) == 1 and res.gaps[0].missing == 1200
    starts = [int(r.params["startTime"]) for r in loopback.requests_to(KLINES)]
    # Pages continue one bar after the previous page's last bar (across the gap).
    assert starts[0] == ms(pd.Timestamp("2023-12-01", tz="UTC"))
    assert starts[1] == ms(frame.index[999]) + TF_MS
    assert res.requests == len(starts) == 4  # 3 full pages + the empty page that ends the span
    assert set(loopback.counts) <= {"/api/v3/exchangeInfo", "/api/v3/time", KLINES}
    assert loopback.counts["/api/v3/exchangeInfo"] == 1


def test_still_open_candle_is_dropped(loopback, exchange, frame, tmp_path):
    loopback.set_now(frame.index[2000] + pd.Timedelta("5min"))  # bar 2000 is 5 minutes old
    out = tmp_path / "btc.csv"
    res = run(exchange, frame, out, end="2030-01-01")
    got = load_ohlcv(out)
    assert res.dropped_open == 1
    pd.testing.assert_frame_equal(got, frame.iloc[:2000], check_exact=True, check_freq=False)


def test_end_is_exclusive_and_a_date_means_the_whole_day(loopback, exchange, frame, tmp_path):
    res = run(exchange, frame, tmp_path / "a.csv", start="2024-01-01", end="2024-01-02")
    assert res.first == pd.Timestamp("2024-01-01 00:00", tz="UTC")
    assert res.last == pd.Timestamp("2024-01-02 23:45", tz="UTC") and res.rows_written == 192
    res = run(exchange, frame, tmp_path / "b.csv", start="2024-01-01", end="2024-01-02T00:00")
    assert res.last == pd.Timestamp("2024-01-01 23:45", tz="UTC") and res.rows_written == 96


def test_resume_fetches_only_the_missing_tail(loopback, exchange, frame, tmp_path):
    out = tmp_path / "btc.csv"
    run(exchange, frame, out, end=frame.index[1000])
    before = out.read_text()
    loopback.reset_log()
    res = run(exchange, frame, out, end="2030-01-01")
    reqs = loopback.requests_to(KLINES)
    # First new request starts at the file's last bar (re-fetched once as the overlap check).
    assert int(reqs[0].params["startTime"]) == ms(frame.index[999])
    # 2,001 bars (overlap included) = 3 pages, then one empty page ends the span.
    assert len(reqs) == res.requests == 4
    assert res.resumed and res.rows_existing == 1000 and res.rows_added == 2000
    after = out.read_text()
    assert after.startswith(before)  # existing rows byte-for-byte unchanged
    pd.testing.assert_frame_equal(load_ohlcv(out), frame, check_exact=True, check_freq=False)


def test_resume_fetches_an_earlier_head_span(loopback, exchange, frame, tmp_path):
    out = tmp_path / "btc.csv"
    write_ohlcv_csv(frame.iloc[500:1000], out)
    res = run(exchange, frame, out, start=frame.index[0], end=frame.index[1000])
    reqs = loopback.requests_to(KLINES)
    assert int(reqs[0].params["startTime"]) == ms(frame.index[0])
    assert int(reqs[0].params["endTime"]) == ms(frame.index[500]) + TF_MS - 1  # stops at the file's first bar
    assert res.rows_added == 500 and len(reqs) == 1
    pd.testing.assert_frame_equal(load_ohlcv(out), frame.iloc[:1000], check_exact=True, check_freq=False)


def test_resume_when_up_to_date_requests_no_candles_and_keeps_the_file(loopback, exchange, frame, tmp_path):
    out = tmp_path / "btc.csv"
    run(exchange, frame, out, end=frame.index[1000])
    stat = out.stat()
    loopback.reset_log()
    res = run(exchange, frame, out, end=frame.index[1000])
    assert loopback.counts[KLINES] == 0 and not res.file_written and res.rows_added == 0
    assert out.stat().st_mtime_ns == stat.st_mtime_ns


def test_resume_refuses_a_file_that_disagrees_with_the_exchange(loopback, exchange, frame, tmp_path):
    out = tmp_path / "btc.csv"
    bad = frame.iloc[:1000].copy()
    bad.iloc[-1, bad.columns.get_loc("volume")] += 1.0  # still valid OHLC, but not what the exchange has
    write_ohlcv_csv(bad, out)
    before = out.read_bytes()
    with pytest.raises(DataError, match=r"resume refused: bar 2024-01-11 09:45:00\+00:00 differs .*volume"):
        run(exchange, frame, out)
    assert out.read_bytes() == before


def test_resume_refuses_a_file_from_another_market(loopback, exchange, frame, tmp_path):
    out = tmp_path / "btc.csv"
    write_ohlcv_csv(synthetic_ohlcv(100, seed=1, start="2023-06-01"), out)  # bars the exchange never had
    before = out.read_bytes()
    with pytest.raises(DataError, match="resume refused: .* has no bar at 2023-06-02 00:45"):
        run(exchange, frame, out)
    assert out.read_bytes() == before


@pytest.mark.parametrize("fault", [
    dict(kind="status", status=429, retry_after=0),
    dict(kind="status", status=500),
    dict(kind="status", status=502, body="<html>Bad Gateway</html>"),
    dict(kind="status", status=503),
    dict(kind="slow", delay_s=1.2),
    dict(kind="drop"),
], ids=["429", "500-json", "502-html", "503", "timeout", "dropped"])
def test_transient_faults_are_retried_and_the_file_is_right(loopback, exchange, frame, tmp_path, fault):
    out = tmp_path / "btc.csv"
    loopback.inject(path=KLINES, times=2, skip=1, **fault)  # the 2nd page fails twice
    res = run(exchange, frame, out)
    assert res.retries == 2
    outcomes = [r.outcome for r in loopback.requests_to(KLINES)]
    assert outcomes[1].startswith("fault:") and outcomes[2].startswith("fault:") and outcomes[3] == "200"
    pd.testing.assert_frame_equal(load_ohlcv(out), frame, check_exact=True, check_freq=False)


def test_retry_after_is_honoured(loopback, exchange, frame, tmp_path):
    loopback.inject("status", status=429, retry_after=1, path=KLINES)
    res = run(exchange, frame, tmp_path / "btc.csv", backoff_s=0.01)
    reqs = loopback.requests_to(KLINES)
    assert reqs[0].outcome == "fault:429" and res.retries == 1
    assert reqs[1].t - reqs[0].t >= 0.95  # waited the server's 1 s, not the 0.01 s backoff


def test_exhausted_retries_raise_one_clear_error_and_write_nothing(loopback, exchange, frame, tmp_path):
    out = tmp_path / "btc.csv"
    loopback.inject("status", status=503, path=KLINES, times=100)
    with pytest.raises(RetriesExhausted, match=r"fetch_ohlcv since .*gave up after 3 attempts; last error \(HTTP 503\)"):
        run(exchange, frame, out, retries=2)
    assert loopback.counts[KLINES] == 3
    assert list(tmp_path.iterdir()) == []  # no file, no temp file


def test_exhausted_retries_leave_an_existing_file_untouched(loopback, exchange, frame, tmp_path):
    out = tmp_path / "btc.csv"
    run(exchange, frame, out, end=frame.index[1000])
    before = out.read_bytes()
    loopback.inject("drop", path=KLINES, times=100)
    with pytest.raises(RetriesExhausted, match="gave up after 2 attempts"):
        run(exchange, frame, out, retries=1)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["btc.csv"]


@pytest.mark.parametrize("status,body", [
    (400, {"code": -1121, "msg": "Invalid symbol."}),
    (404, "not found"),  # ccxt calls 404 ExchangeNotAvailable (a NetworkError): the status decides
])
def test_client_errors_are_not_retried(loopback, exchange, frame, tmp_path, status, body):
    loopback.inject("status", status=status, body=body, path=KLINES, times=5)
    with pytest.raises(ExchangeRequestError, match="fetch_ohlcv since .* refused"):
        run(exchange, frame, tmp_path / "btc.csv")
    assert loopback.counts[KLINES] == 1 and not (tmp_path / "btc.csv").exists()


def test_bad_candles_from_the_exchange_are_refused(loopback, exchange, frame, tmp_path):
    t = ms(frame.index[0])
    broken = [[t, "100.0", "99.0", "101.0", "100.0", "1.0", t + TF_MS - 1, "100", 1, "0.5", "50", "0"]]
    loopback.inject("status", status=200, body=broken, path=KLINES)  # high < low
    with pytest.raises(DataError, match="high < low"):
        run(exchange, frame, tmp_path / "btc.csv")
    assert not (tmp_path / "btc.csv").exists()


def test_unknown_symbol_and_empty_span(loopback, exchange, frame, tmp_path):
    with pytest.raises(ConfigError, match="unknown symbol 'ETH/USDT'"):
        download_ohlcv(exchange, "ETH/USDT", "15m", "2024-01-01", "2024-02-01", tmp_path / "x.csv", progress=False)
    with pytest.raises(ConfigError, match="empty span"):
        run(exchange, frame, tmp_path / "x.csv", start="2024-02-01", end="2024-01-01T00:00")
    assert list(tmp_path.iterdir()) == []


def test_cli_download_end_to_end_and_bad_symbol(loopback, frame, tmp_path):
    from cli.main import cli

    out = tmp_path / "raw" / "btc.csv"
    args = ["download", "--exchange", "binance", "--symbol", "BTC/USDT", "--timeframe", "15m",
            "--start", "2024-01-01", "--end", "2030-01-01", "--output", str(out),
            "--exchange-url", loopback.url, "--no-progress", "--set", "broker.backoff_s=0.01"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "Downloaded BTC/USDT 15m from binance" in result.output and "added 3,000 rows" in result.output
    pd.testing.assert_frame_equal(load_ohlcv(out), frame, check_exact=True, check_freq=False)

    bad = tmp_path / "raw" / "eth.csv"
    args[args.index("BTC/USDT")] = "ETH/BTC"
    args[args.index(str(out))] = str(bad)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "unknown symbol 'ETH/BTC'" in lines[0]
    assert not bad.exists()


def test_real_candles_across_the_big_gap_round_trip_exactly(real_candles, tmp_path):
    # 3,000 real Binance bars around the 14,166-bar hole after 2022-08-06 09:15.
    pos = int(real_candles.index.get_loc(pd.Timestamp("2022-08-06 09:15", tz="UTC")))
    served = real_candles.iloc[pos - 1500:pos + 1500]
    with LoopbackExchange(served, now=served.index[-1] + TF) as lb:
        ex = make_exchange("binance", url=lb.url, timeout_ms=2000)
        res = run(ex, served, tmp_path / "real.csv", start="2022-01-01", end="2024-11-01")
    pd.testing.assert_frame_equal(load_ohlcv(tmp_path / "real.csv"), served, check_exact=True, check_freq=False)
    assert [g.missing for g in res.gaps] == [14166]


def test_non_csv_output_is_refused_before_any_request(loopback, exchange, frame, tmp_path):
    out = tmp_path / "btc.parquet"
    with pytest.raises(DataError, match=r"must end in .csv or .csv.gz"):
        run(exchange, frame, out, start="2023-12-01", end="2030-01-01")
    assert not out.exists() and KLINES not in loopback.counts


def test_now_and_today_are_utc(monkeypatch):
    import time

    from brokers.download import parse_time_ms

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        utc_now_ms = pd.Timestamp.now(tz="UTC").value // 1_000_000
        assert abs(parse_time_ms("now", end=True) - utc_now_ms) < 5_000
        midnight = pd.Timestamp.now(tz="UTC").normalize()
        assert parse_time_ms("today") == midnight.value // 1_000_000
        assert parse_time_ms("today", end=True) == (midnight + pd.Timedelta(days=1)).value // 1_000_000
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
