"""Historical candle download through ccxt: paginated, retried, validated, resumable.

Span rule (the one of :mod:`core.dates`, shared with the backtest): bars whose OPEN time t
satisfies ``start <= t < end`` (``end`` exclusive). A date without a time of day given as
``end`` (``"2024-10-31"``) means the whole of that UTC day, i.e. ``end`` = the next
midnight, so ``--start 2022-01-01 --end 2024-10-31`` gets 2022-01-01 00:00 .. 2024-10-31
23:45 for 15m bars. Only CLOSED bars are kept: a bar whose
close time (open + timeframe) is after the exchange's clock is dropped.

Resume: when ``output`` exists and is a candle CSV nts wrote (its header,
:func:`core.ohlcv.is_nts_candle_csv`) it is loaded and validated; any other existing file is
refused, or with ``overwrite`` replaced by a fresh download. Resuming: only the missing tail (from the
file's last bar) and, if ``start`` is earlier than the file's first bar, the missing head
(up to the file's first bar) are fetched. The file's boundary bar is fetched again as an
overlap check: if the exchange disagrees with the file there, the resume is refused and the
file is left untouched. Existing rows are never dropped or changed; the merged frame is
validated and written atomically.
"""
from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import ccxt
import numpy as np
import pandas as pd
from tqdm import tqdm

from brokers.exchange import with_retries
from core.dates import parse_span, parse_utc, to_epoch_ms
from core.errors import ConfigError, DataError, NtsError
from core.files import check_output_file
from core.ohlcv import (
    COLUMNS,
    DataReport,
    Gap,
    check_csv_output,
    is_nts_candle_csv,
    load_ohlcv,
    validate_ohlcv,
    write_ohlcv_csv,
)
from core.timeframes import timeframe_seconds

log = logging.getLogger("nts.download")


class ExchangeRequestError(NtsError):
    """The exchange refused a request (bad symbol, bad parameters, authentication, ...)."""


@dataclass
class DownloadResult:
    """What one download did: rows fetched/added/written, requests, retries, spans, gaps."""

    output: Path
    exchange: str
    symbol: str
    timeframe: str
    requested_start: pd.Timestamp
    requested_end: pd.Timestamp
    rows_written: int = 0          # rows in the output file after this run
    rows_existing: int = 0         # rows the file already held (resume)
    rows_added: int = 0            # new rows this run added to the file
    rows_fetched: int = 0          # rows received from the exchange (overlap and open bar included)
    dropped_open: int = 0          # still-open bars received and dropped
    requests: int = 0              # successful candle requests
    retries: int = 0               # failed attempts that were retried
    resumed: bool = False
    file_written: bool = False
    spans: list[tuple[pd.Timestamp, pd.Timestamp]] = field(default_factory=list)  # first/last bar kept per span
    first: pd.Timestamp | None = None
    last: pd.Timestamp | None = None
    gaps: list[Gap] = field(default_factory=list)

    def summary(self) -> str:
        """One paragraph for the terminal."""
        fetched = "; ".join(f"{a} .. {b}" for a, b in self.spans) or "no new span"
        mode = (f"resumed {self.output} ({self.rows_existing:,} rows kept)" if self.resumed
                else f"new file {self.output}")
        gap_txt = (f"{len(self.gaps)} gaps ({sum(g.missing for g in self.gaps):,} missing bars, "
                   "left missing)" if self.gaps else "no gaps")
        state = "written" if self.file_written else "unchanged"
        return (
            f"Downloaded {self.symbol} {self.timeframe} from {self.exchange}: {mode}; fetched "
            f"{self.rows_fetched:,} bars in {self.requests} requests ({self.retries} retries, "
            f"{self.dropped_open} still-open bar dropped) over {fetched}; added {self.rows_added:,} "
            f"rows; file {state} with {self.rows_written:,} bars from {self.first} to {self.last}, {gap_txt}."
        )


def parse_time_ms(value: Any, *, end: bool = False) -> int:
    """Epoch ms (UTC) of a date, ISO date-time, Timestamp/datetime or epoch-ms int by the one
    date rule (:func:`core.dates.parse_utc`): with ``end=True`` a date alone (``YYYY-MM-DD``,
    ``today``) means the end of that day (the next midnight)."""
    return to_epoch_ms(parse_utc(value, end=end, what="--end" if end else "--start"))


def _ts(ms: int) -> pd.Timestamp:
    return pd.Timestamp(ms, unit="ms", tz="UTC")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else exc.__class__.__name__)[:300]


def _server_now_ms(exchange: ccxt.Exchange, retry: Callable) -> int:
    """The exchange's clock: candles are closed relative to it, not to our wall clock."""
    if exchange.has.get("fetchTime"):
        now = retry(exchange.fetch_time, "fetch_time")
        if now:
            return int(now)
    return int(exchange.milliseconds())


def _rows_to_frame(rows: list[list], source: str, timeframe: str) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in COLUMNS},
                            index=pd.DatetimeIndex([], tz="UTC", name="timestamp").as_unit("ns"))
    arr = np.array([[np.nan if x is None else x for x in r[1:6]] for r in rows], dtype="float64")
    index = pd.DatetimeIndex(pd.to_datetime(np.array([r[0] for r in rows], dtype="int64"), unit="ms", utc=True),
                             name="timestamp").as_unit("ns")
    frame = pd.DataFrame(arr, index=index, columns=list(COLUMNS))
    # Refuse bad data from the exchange exactly as we refuse bad files.
    return validate_ohlcv(frame, timeframe=timeframe, report=DataReport(source=source))[0]


def _check_market(exchange: ccxt.Exchange, symbol: str, timeframe: str) -> None:
    """Refuse a symbol or timeframe the exchange (markets loaded) does not offer."""
    if symbol not in exchange.markets:
        quote = symbol.split("/")[-1]
        hint = sorted(s for s in exchange.markets if s.endswith("/" + quote))[:5]
        raise ConfigError(f"{exchange.id}: unknown symbol {symbol!r}"
                          + (f" (e.g. {', '.join(hint)})" if hint else ""))
    if getattr(exchange, "timeframes", None) and timeframe not in exchange.timeframes:
        raise ConfigError(f"{exchange.id}: timeframe {timeframe!r} not offered "
                          f"(choose from {', '.join(exchange.timeframes)})")


def _spans_to_fetch(existing: pd.DataFrame | None, start_ms: int, end_ms: int,
                    tf_ms: int) -> list[tuple[int, int, int | None]]:
    """Spans to fetch as (since, until exclusive, boundary bar or None): the whole request for
    a new file; for a resumed one, the head before and the tail after its bars, each from the
    file's boundary bar (re-fetched, and checked equal)."""
    if existing is None:
        return [(start_ms, end_ms, None)]
    spans: list[tuple[int, int, int | None]] = []
    first_ms = int(existing.index[0].value // 1_000_000)
    last_ms = int(existing.index[-1].value // 1_000_000)
    if start_ms < first_ms:
        spans.append((start_ms, first_ms + tf_ms, first_ms))
    if end_ms > last_ms + tf_ms:
        spans.append((last_ms, end_ms, last_ms))
    return spans


def _fetch_span(page: Callable[[int, int], list[list]], since: int, until: int, tf_ms: int, now_ms: int,
                advance: Callable[[int], Any]) -> list[list]:
    """The rows of ``[since, until)``, page by page (``page(since, until)``: one request);
    ``advance(n)`` is told of every ``n`` rows kept."""
    rows: list[list] = []
    cursor = since
    while cursor < until:
        page_since = cursor
        batch = page(page_since, until)
        if not batch:
            break
        kept = [r for r in batch if page_since <= int(r[0]) < until]
        if not kept:
            break  # nothing new in the span (the exchange returned only older bars)
        rows.extend(kept)
        advance(len(kept))
        # Strictly increasing (kept bars are >= cursor); unsorted pages are refused by validation.
        cursor = max(int(r[0]) for r in kept) + tf_ms
        if cursor > now_ms:
            break  # bars that have not opened yet cannot exist
    return rows


def _closed_bars(frame: pd.DataFrame, tf_ms: int, now_ms: int, result: DownloadResult) -> pd.DataFrame:
    """``frame`` without a bar still open at the exchange's ``now_ms`` (counted in ``result``,
    which also records the span fetched)."""
    open_bar = (frame.index.asi8 // 1_000_000) + tf_ms > now_ms
    result.dropped_open += int(open_bar.sum())
    frame = frame[~open_bar]
    if len(frame):
        result.spans.append((frame.index[0], frame.index[-1]))
    return frame


@dataclass(frozen=True)
class FetchOptions:
    """How :func:`download_ohlcv` talks to the exchange: bars per ``fetch_ohlcv`` page, and
    the retries and first backoff of :func:`brokers.exchange.with_retries` per request."""

    limit: int = 1000
    retries: int = 5
    backoff_s: float = 1.0


def _grid_span(start: Any, end: Any, tf_ms: int) -> tuple[int, int]:
    """``[start, end)`` in epoch ms, the start moved up to the timeframe's grid; ConfigError
    for a missing bound or an empty span."""
    t_start, t_end = parse_span(start, end)
    if t_start is None or t_end is None:
        raise ConfigError("download needs both a start and an end")
    start_ms, end_ms = to_epoch_ms(t_start), to_epoch_ms(t_end)
    start_ms = -(-start_ms // tf_ms) * tf_ms  # first grid point at or after start
    if start_ms >= end_ms:
        raise ConfigError(f"empty span: start {_ts(start_ms)} is not before end {_ts(end_ms)}")
    return start_ms, end_ms


def _retrier(exchange: ccxt.Exchange, source: str, fetch: FetchOptions, result: DownloadResult) -> Callable:
    """``retry(fn, what)``: ``fn()`` through :func:`brokers.exchange.with_retries`, counting
    retries in ``result``; a refusal that repeating cannot help is one ExchangeRequestError."""

    def count_retry(attempt: int, exc: BaseException, delay: float) -> None:
        result.retries += 1

    def retry(fn: Callable, what: str):
        try:
            return with_retries(fn, retries=fetch.retries, backoff_s=fetch.backoff_s, exchange=exchange,
                                what=f"{source}: {what}", on_retry=count_retry)
        except ccxt.BaseError as exc:  # not transient: repeating cannot help
            raise ExchangeRequestError(f"{source}: {what} refused: {_first_line(exc)}") from exc

    return retry


def _pager(exchange: ccxt.Exchange, symbol: str, timeframe: str, limit: int, retry: Callable,
           result: DownloadResult) -> Callable[[int, int], list[list]]:
    """``page(since, until)``: one ``fetch_ohlcv`` page of at most ``limit`` bars opening before
    ``until``, counted in ``result``."""

    def page(since: int, until: int) -> list[list]:
        batch = retry(lambda: exchange.fetch_ohlcv(symbol, timeframe, since=since, limit=limit,
                                                   params={"until": until - 1}),
                      f"fetch_ohlcv since {_ts(since)}")
        result.requests += 1
        result.rows_fetched += len(batch or [])
        return batch

    return page


def download_ohlcv(exchange: ccxt.Exchange, symbol: str, timeframe: str, start: Any, end: Any, output: str | Path,
                   progress: bool = True, *, fetch: FetchOptions = FetchOptions(),
                   overwrite: bool = False) -> DownloadResult:
    """Download closed ``symbol`` ``timeframe`` bars with open time in ``[start, end)`` into
    ``output`` (CSV, epoch-ms ``timestamp``), resuming an existing file (see module doc).

    Pages of ``fetch.limit`` bars are requested with ``fetch_ohlcv(since, limit, until=end-1)``;
    each request goes through :func:`brokers.exchange.with_retries` (``fetch.retries``,
    ``fetch.backoff_s``). Raises DataError for bad data or a disagreeing resume, ConfigError
    for an unknown symbol/timeframe or an empty span, ExchangeRequestError when the exchange
    refuses a request, RetriesExhausted when it keeps failing, OutputError for an existing
    ``output`` that nts did not write (unless ``overwrite``: then it is replaced by a fresh
    download). On any error the output file is left as it was (absent or unchanged).
    """
    output = check_csv_output(output)
    tf_ms = timeframe_seconds(timeframe) * 1000
    start_ms, end_ms = _grid_span(start, end, tf_ms)
    check_output_file(output, overwrite=overwrite, is_own=is_nts_candle_csv, what="candle CSV")
    own = output.exists() and is_nts_candle_csv(output)
    source = f"{exchange.id} {symbol} {timeframe}"
    result = DownloadResult(output=output, exchange=exchange.id, symbol=symbol, timeframe=timeframe,
                            requested_start=_ts(start_ms), requested_end=_ts(end_ms))
    retry = _retrier(exchange, source, fetch, result)

    # Load the file before touching the network: a bad file is refused up front.
    existing = load_ohlcv(output, timeframe=timeframe) if own else None

    retry(exchange.load_markets, "load_markets")
    _check_market(exchange, symbol, timeframe)
    now_ms = _server_now_ms(exchange, retry)
    spans = _spans_to_fetch(existing, start_ms, end_ms, tf_ms)
    if existing is not None:
        result.resumed = True
        result.rows_existing = len(existing)

    expected = sum(max(0, math.ceil((min(b, now_ms) - a) / tf_ms)) for a, b, _ in spans)
    page = _pager(exchange, symbol, timeframe, fetch.limit, retry, result)
    frames = []
    with tqdm(total=expected, desc=f"{symbol} {timeframe}", unit="bar", file=sys.stderr,
              disable=not progress, leave=False) as bar:
        for since, until, _ in spans:
            rows = _fetch_span(page, since, until, tf_ms, now_ms, bar.update)
            frames.append(_closed_bars(_rows_to_frame(rows, source, timeframe), tf_ms, now_ms, result))

    new = pd.concat(frames) if frames else _rows_to_frame([], source, timeframe)
    new = new[~new.index.duplicated(keep="first")]  # a one-bar file is both head and tail boundary
    if existing is not None:
        merged = _merge_checked(existing, new, [s[2] for s in spans], output, source)
    else:
        merged = new
        if merged.empty:
            raise DataError(f"{source}: no closed bars between {_ts(start_ms)} and {_ts(end_ms)} "
                            f"(exchange time {_ts(now_ms)}); nothing written")
    _write_checked(merged, output, timeframe, result, fresh=existing is None)
    return result


def _write_checked(merged: pd.DataFrame, output: Path, timeframe: str, result: DownloadResult, fresh: bool) -> None:
    """Validate the file-to-be, write it when it is new or grew, and fill in ``result``."""
    merged, report = validate_ohlcv(merged, timeframe=timeframe, report=DataReport(source=str(output)))
    result.rows_added = len(merged) - result.rows_existing
    if result.rows_added > 0 or fresh:
        write_ohlcv_csv(merged, output)
        result.file_written = True
    result.rows_written = len(merged)
    result.first, result.last = merged.index[0], merged.index[-1]
    result.gaps = report.gaps
    log.info(result.summary())


def _merge_checked(existing: pd.DataFrame, new: pd.DataFrame, boundaries: list[int | None],
                   output: Path, source: str) -> pd.DataFrame:
    """Append ``new`` to ``existing`` after checking that every re-fetched bar agrees exactly."""
    # The file's boundary bar of each fetched span must come back (and identical, below).
    for boundary in boundaries:
        if boundary is not None and _ts(boundary) not in new.index:
            raise DataError(f"{output}: resume refused: {source} has no bar at {_ts(boundary)}, which the "
                            "file holds (file from another market or exchange?); file left unchanged")
    common = new.index.intersection(existing.index)
    a = existing.loc[common, list(COLUMNS)].to_numpy()
    b = new.loc[common, list(COLUMNS)].to_numpy()
    diff = a != b
    if diff.any():
        r, c = np.argwhere(diff)[0]
        raise DataError(
            f"{output}: resume refused: bar {common[r]} differs from {source} ({COLUMNS[c]} "
            f"{a[r, c]!r} in file vs {b[r, c]!r} from the exchange); file left unchanged"
        )
    fresh = new.loc[~new.index.isin(existing.index)]
    return pd.concat([existing, fresh]).sort_index(kind="stable")
