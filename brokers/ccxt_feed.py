"""CCXTFeed: a backtrader LIVE data feed of closed candles, with warm-up history.

Two parts: :class:`BarSource` (plain Python: asks the exchange, decides which candles are
closed, keeps order, finds gaps, waits) and :class:`CCXTFeed` (the thin backtrader
adapter: ``islive()`` is True, ``_load()`` writes one bar into the lines).

**When is a candle closed?** By the EXCHANGE, never by the local clock. A candle counts as
closed when (a) the exchange already serves a later candle in the same answer (the bar
after it has opened, so the exchange has finalised it), or (b) the exchange's clock
(``fetch_time``) is a full bar past its close and still nothing later exists (an outage
or the end of the data). Rule (a) is what makes a *late* candle harmless: an exchange that
still shows the previous bar as the open one (stale cache, the replay's ``late`` fault)
does not get it delivered with its partial values; rule (b) never looks at a bar younger
than one extra bar. The still-open candle, which every Binance answer ends with, is never
delivered.

**Once, in order.** Each answer is sorted and de-duplicated by open time; anything at or
before the last delivered bar is dropped (a *repeated* candle; a different value for a
delivered bar is logged as a revision and ignored: a bar the strategy saw is never
replaced). Bars missing between the last delivered bar and the next closed one, which the
exchange does not have, are a **gap**: attached to the next bar (``Bar.missing_before``)
so the session journals it in the same transaction as that bar, and logged.

**Waiting without hammering.** After a bar the next one can close no earlier than the
exchange time ``next_open + timeframe`` (its successor must open). The source sleeps until
then plus ``settle_s`` (exchange seconds, for the exchange to publish), converted to wall
time by :class:`ExchangeClock`, which tracks the exchange clock's offset AND rate from the
``fetch_time`` samples (a replay exchange runs 1000x; a frozen test clock runs 0x), so the
local clock's drift never matters. Each wait is clamped to ``[min_wait_s, max_wait_s]`` and
``min_wait_s`` is at least two ccxt ``rateLimit`` intervals (a poll is two requests: time
and candles). A full page (1000 candles after a pause or reconnect) is followed at once by
the next page: that is the backfill. Failed polls back off exponentially
(``error_backoff_s`` doubling to ``max_backoff_s``), after the store's own retries.

**Stale feed.** When the exchange clock is ``stale_after_bars`` bars past the expected
close with no new candle, or polls keep failing, the source reports ``feed_stale`` once
(and ``feed_recovered`` when bars flow again) through ``on_event``; it keeps waiting.

**backtrader's live mode.** A live feed makes cerebro run with ``runonce=False`` and
``preload=False``: every indicator takes its streaming ``next()`` path (the TCN indicator
scores the trailing window of :class:`models.features.StreamingFeatures` rows), the same
numbers as the backtest's batch ``once()`` to float32 precision. backtrader lets a live
``_load()`` return None ("no bar yet"), but then cerebro still calls ``broker.next()`` on
every idle loop, and the simulated broker would try resting limit and stop orders (which,
unlike market orders, have no "not on the creating bar" guard) against the same bar again,
filling them on the bar that created them. So ``_load()`` here BLOCKS until the next closed
bar (waiting in slices that a stop request interrupts) and returns False to end the run:
backtrader sees exactly the bar sequence a backtest would.

**Warm-up.** :meth:`BarSource.history` fetches the last N closed bars (paging backwards);
the session queues them with :meth:`BarSource.prime` before cerebro starts, so the
strategy sees them as ordinary bars before its ``trade_start`` (no orders, no risk checks),
exactly as ``run_backtest`` feeds the bars before its span. A strategy that can be primed
gets all but the last of them as one frame instead (:func:`bars_frame`; see
:mod:`sessions.session`) and only the last one is queued.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import backtrader as bt
import numpy as np
import pandas as pd

from brokers.ccxt_store import CCXTStore
from brokers.exchange import RetriesExhausted
from core.errors import DataError
from core.timeframes import ns_to_bt_num, timeframe_seconds


log = logging.getLogger("nts.feed")

EventSink = Callable[[str, str, dict], None]


def iso(ms: int) -> str:
    """Epoch ms as ``YYYY-MM-DD HH:MM`` UTC."""
    return pd.Timestamp(int(ms), unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M")


@dataclass(frozen=True)
class Bar:
    """One closed candle. ``history``: a warm-up bar (fed before trading starts);
    ``missing_before``: bars the exchange lacks between the previous delivered bar and this
    one (a gap the session journals with this bar)."""

    ms: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    history: bool = False
    missing_before: int = 0

    @property
    def time(self) -> pd.Timestamp:
        """Open time as a UTC timestamp."""
        return pd.Timestamp(self.ms, unit="ms", tz="UTC")


def bars_frame(bars: list[Bar]) -> pd.DataFrame:
    """Bars as the canonical OHLCV frame (UTC open-time index ``timestamp``, float64 columns)."""
    idx = pd.DatetimeIndex(pd.to_datetime(np.array([b.ms for b in bars], dtype="int64"), unit="ms", utc=True),
                           name="timestamp")
    values = np.array([(b.open, b.high, b.low, b.close, b.volume) for b in bars], dtype="float64").reshape(-1, 5)
    return pd.DataFrame(values, index=idx, columns=["open", "high", "low", "close", "volume"])


@dataclass(frozen=True)
class PollPolicy:
    """How the source waits for the next closed bar (see module docstring).

    ``settle_s`` is in EXCHANGE seconds after the bar boundary; the other times are wall
    seconds. ``page`` is candles per request (Binance's maximum is 1000).
    """

    settle_s: float = 2.0
    min_wait_s: float = 0.05
    max_wait_s: float = 30.0
    error_backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    stale_after_bars: float = 2.0
    slice_s: float = 0.5
    page: int = 1000


@dataclass
class FeedStats:
    """Counters of one source (printed by sessions, asserted by tests)."""

    polls: int = 0
    delivered: int = 0          # bars handed out (history included)
    live: int = 0               # bars handed out after the warm-up
    repeats_dropped: int = 0    # candles at or before the last delivered bar, or duplicates
    revisions_ignored: int = 0  # a delivered bar served again with other values
    open_skipped: int = 0       # answers whose newest candle was still open (or unproven)
    bad_candles: int = 0
    gaps: int = 0
    bars_missing: int = 0
    errors: int = 0
    stale_reports: int = 0


class ExchangeClock:
    """The exchange's clock as seen from here: offset and rate from ``fetch_time`` samples.

    ``rate`` is exchange ms per wall ms (1 for a real exchange, 1000 for a fast replay, 0
    for a frozen test clock); unknown (one sample) counts as 1.
    """

    def __init__(self, wall: Callable[[], float] = time.monotonic, keep: int = 8) -> None:
        self._wall = wall
        self._samples: deque[tuple[float, int]] = deque(maxlen=keep)

    def observe(self, server_ms: int) -> int:
        """Record one exchange time reading (taken just now); returns it."""
        self._samples.append((self._wall(), int(server_ms)))
        return int(server_ms)

    @property
    def rate(self) -> float:
        """Exchange ms per wall ms over the kept samples (1.0 until two samples span 50 ms)."""
        if len(self._samples) < 2:
            return 1.0
        (w0, s0), (w1, s1) = self._samples[0], self._samples[-1]
        if w1 - w0 < 0.05:
            return 1.0
        return max(0.0, (s1 - s0) / ((w1 - w0) * 1000.0))

    def now_ms(self) -> int | None:
        """Estimated exchange time now (None before the first sample)."""
        if not self._samples:
            return None
        w, s = self._samples[-1]
        return int(s + self.rate * (self._wall() - w) * 1000.0)

    def wall_seconds_until(self, target_ms: int) -> float:
        """Wall seconds until the exchange clock reaches ``target_ms`` (inf when frozen)."""
        now = self.now_ms()
        if now is None:
            return 0.0
        if target_ms <= now:
            return 0.0
        rate = self.rate
        if rate <= 1e-6:
            return math.inf
        return (target_ms - now) / (rate * 1000.0)


def parse_rows(rows: Iterable[list], tf_ms: int) -> tuple[list[Bar], int, int]:
    """ccxt OHLCV rows -> bars sorted by open time, one per open time.

    Returns (bars, duplicates dropped, bad candles skipped). A candle is bad when a value
    is missing or not finite, high/low do not contain open/close, volume is negative, or
    the open time is off the timeframe grid."""
    by_ms: dict[int, Bar] = {}
    dups = bad = 0
    for r in rows:
        try:
            ms = int(r[0])
            o, h, l, c, v = (float(x) for x in r[1:6])
        except (TypeError, ValueError, IndexError):
            bad += 1
            continue
        if (ms % tf_ms or not all(math.isfinite(x) for x in (o, h, l, c, v)) or h < max(o, c) or l > min(o, c)
                or l <= 0 or v < 0):
            bad += 1
            log.warning("bad candle from the exchange at %s skipped: %s", iso(ms) if ms >= 0 else ms, r[:6])
            continue
        if ms in by_ms:
            dups += 1
            continue
        by_ms[ms] = Bar(ms, o, h, l, c, v)
    return [by_ms[k] for k in sorted(by_ms)], dups, bad


def closed_prefix(bars: list[Bar], server_now: int | None, tf_ms: int) -> list[Bar]:
    """The bars of one answer that are provably closed: all but the newest (each has a
    successor in the answer), and the newest too when the exchange clock is a full bar past
    its close (rule (b) of the module docstring)."""
    if not bars:
        return []
    last = bars[-1]
    if server_now is not None and last.ms + 2 * tf_ms <= server_now:
        return list(bars)
    return list(bars[:-1])


class BarSource:
    """Closed candles of ``symbol`` ``timeframe`` from a :class:`~brokers.ccxt_store.CCXTStore`
    (see module docstring).

    ``stop``: an event that ends waiting (``next_bar`` then returns None); ``sleep(s)``
    replaces the wait (tests step a replay clock there instead of sleeping); ``max_bars``
    ends the stream after that many bars past the warm-up; ``on_event(kind, message, data)``
    receives ``feed_stale`` / ``feed_recovered`` / ``feed_error`` / ``feed_revision``.
    """

    def __init__(self, store: CCXTStore, symbol: str, timeframe: str, policy: PollPolicy | None = None,
                 stop: threading.Event | None = None, sleep: Callable[[float], None] | None = None,
                 max_bars: int | None = None, on_event: EventSink | None = None,
                 clock: ExchangeClock | None = None) -> None:
        self.store = store
        self.symbol = symbol
        self.timeframe = timeframe
        self.tf_ms = timeframe_seconds(timeframe) * 1000
        self.policy = policy or PollPolicy()
        self.stop_event = stop or threading.Event()
        self._sleep = sleep
        self.max_bars = max_bars
        self.on_event = on_event
        self.clock = clock or ExchangeClock()
        self.stats = FeedStats()
        self._queue: deque[Bar] = deque()
        self.last_ms: int | None = None      # open time of the last bar handed out (or queued)
        self._last_values: tuple[float, ...] | None = None
        self._revised = False
        self._stale = False
        self._failing = 0
        self._pending_wait = 0.0

    # ------------------------------------------------------------------ helpers
    @property
    def min_wait_s(self) -> float:
        """Shortest wall wait between polls: the policy's, and two rate-limit intervals."""
        return max(self.policy.min_wait_s, 2.0 * self.store.rate_limit_s)

    def _event(self, kind: str, message: str, **data: Any) -> None:
        log.warning("%s: %s", kind, message) if kind != "feed_recovered" else log.info("%s: %s", kind, message)
        if self.on_event is not None:
            self.on_event(kind, message, data)

    def _wait(self, seconds: float) -> None:
        if self._sleep is not None:
            self._sleep(seconds)
            return
        end = time.monotonic() + seconds
        while not self.stop_event.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return
            self.stop_event.wait(min(left, self.policy.slice_s))

    def server_now(self) -> int:
        """Read the exchange clock (one request) and record it."""
        return self.clock.observe(self.store.fetch_time())

    # ------------------------------------------------------------------ warm-up
    def history(self, count: int, end_ms: int | None = None) -> list[Bar]:
        """The last ``count`` closed bars, oldest first: up to the newest closed bar, or up to
        and including the bar opening at ``end_ms`` (a resumed session's last journaled bar).
        Fewer when the exchange has less history. Pages backwards ``policy.page`` at a time."""
        if count <= 0:
            return []
        now = self.server_now()
        until = now if end_ms is None else min(int(end_ms), now)
        out: list[Bar] = []
        first_page = True
        while len(out) < count and not self.stop_event.is_set():
            want = min(self.policy.page, count - len(out) + (2 if first_page else 0))
            rows = self.store.fetch_ohlcv(self.symbol, self.timeframe, since=None, limit=want, until=until)
            bars, dups, bad = parse_rows(rows, self.tf_ms)
            self.stats.repeats_dropped += dups
            self.stats.bad_candles += bad
            if first_page and end_ms is None:
                bars = closed_prefix(bars, now, self.tf_ms)
            bars = [b for b in bars if b.ms <= until and (not out or b.ms < out[0].ms)]
            first_page = False
            if not bars:
                break  # the exchange has nothing older
            out = bars + out
            until = bars[0].ms - 1
        out = out[-count:]
        return [Bar(b.ms, b.open, b.high, b.low, b.close, b.volume, history=True) for b in out]

    def prime(self, bars: list[Bar]) -> None:
        """Queue warm-up bars to be handed out first; live bars follow the last of them."""
        for b in bars:
            if self.last_ms is not None and b.ms <= self.last_ms:
                raise DataError(f"warm-up bar {iso(b.ms)} is not after {iso(self.last_ms)}")
            self._queue.append(b)
            self.last_ms = b.ms
            self._last_values = (b.open, b.high, b.low, b.close, b.volume)

    def start_after(self, ms: int) -> None:
        """Deliver live bars opening after ``ms`` (when no warm-up is primed)."""
        self.last_ms = int(ms)

    def pending(self) -> int:
        """Bars already fetched and not yet handed out."""
        return len(self._queue)

    # ------------------------------------------------------------------ live
    def next_bar(self) -> Bar | None:
        """The next bar (warm-up first, then each closed bar once, in order); blocks until
        one exists. None when stopped or after ``max_bars`` live bars."""
        while True:
            if self.stop_event.is_set():
                return None
            if self._queue:
                bar = self._queue.popleft()
                if not bar.history:
                    if self.max_bars is not None and self.stats.live >= self.max_bars:
                        self._queue.appendleft(bar)
                        return None
                    self.stats.live += 1
                self.stats.delivered += 1
                return bar
            if self.max_bars is not None and self.stats.live >= self.max_bars:
                return None
            if self._pending_wait > 0:
                wait, self._pending_wait = self._pending_wait, 0.0
                self._wait(wait)
                continue  # a stop may have come while waiting
            # the wait computed by a poll is taken before the NEXT poll, after its bars are used
            self._pending_wait = self._poll()

    def _poll(self) -> float:
        """One poll: read the clock and the candles after the last bar; queue what closed.
        Returns the wall seconds to wait before the next poll (0 = poll again at once)."""
        self.stats.polls += 1
        if self.last_ms is None:
            raise DataError("BarSource: no start point (prime warm-up bars or call start_after first)")
        try:
            now = self.server_now()
            # from the last delivered bar on: the overlap shows whether the exchange revised it
            rows = self.store.fetch_ohlcv(self.symbol, self.timeframe, since=self.last_ms,
                                          limit=self.policy.page)
        except RetriesExhausted as exc:
            return self._failed(str(exc))
        self._failing = 0
        bars, dups, bad = parse_rows(rows, self.tf_ms)
        self.stats.repeats_dropped += dups
        self.stats.bad_candles += bad
        fresh = self._after_last(bars)
        closed = closed_prefix(fresh, now, self.tf_ms)
        if len(closed) < len(fresh):
            self.stats.open_skipped += 1
        self._queue_closed(closed)
        if closed:
            if self._stale:
                self._stale = False
                self._event("feed_recovered", f"bars flowing again from {iso(closed[0].ms)}")
            if len(rows) >= self.policy.page:
                return 0.0  # a full page: more are waiting (backfill after a pause), ask at once
        return self._next_wait(now, bool(closed))

    def _after_last(self, bars: list) -> list:
        """The parsed candles after the last delivered bar. The delivered bar itself is dropped
        (a revision of it is reported once, never applied); older ones count as repeats."""
        fresh = []
        for k, b in enumerate(bars):
            if b.ms == self.last_ms:
                # shown as the newest candle it is "still open" to this (late) answer: no revision;
                # with a successor the exchange calls it final, and final values must not change
                revised = (self._last_values is not None and k + 1 < len(bars)
                           and (b.open, b.high, b.low, b.close, b.volume) != self._last_values)
                if revised and not self._revised:
                    self._revised = True  # once per bar: the strategy already acted on the old values
                    self.stats.revisions_ignored += 1
                    self._event("feed_revision", f"the exchange now serves other values for the delivered bar "
                                f"{iso(b.ms)}; ignored (a delivered bar is never replaced)", bar=int(b.ms))
                continue
            if b.ms < self.last_ms:
                self.stats.repeats_dropped += 1
                continue
            fresh.append(b)
        return fresh

    def _queue_closed(self, closed: list) -> None:
        """Queue the closed bars in order, counting (and logging) the gap before each."""
        for b in closed:
            missing = (b.ms - self.last_ms) // self.tf_ms - 1
            if missing > 0:
                self.stats.gaps += 1
                self.stats.bars_missing += missing
                log.warning("gap: the exchange has no bars %s .. %s (%d missing); continuing after it",
                            iso(self.last_ms + self.tf_ms), iso(b.ms - self.tf_ms), missing)
            self._queue.append(Bar(b.ms, b.open, b.high, b.low, b.close, b.volume, missing_before=int(missing)))
            self.last_ms = b.ms
            self._last_values = (b.open, b.high, b.low, b.close, b.volume)
            self._revised = False

    def _next_wait(self, now: int, got_bars: bool) -> float:
        """Wall seconds until the next bar can be proven closed (its successor opens) plus the
        settle time, within the policy's bounds; reports the feed stale once when no bar came
        for ``stale_after_bars`` bars although the exchange clock moved on."""
        next_close = self.last_ms + 2 * self.tf_ms
        late_ms = now - next_close
        if not got_bars and late_ms > self.policy.stale_after_bars * self.tf_ms and not self._stale:
            self._stale = True
            self.stats.stale_reports += 1
            self._event("feed_stale", f"no closed bar after {iso(self.last_ms)} although the exchange clock "
                        f"is at {iso(now)} ({late_ms / self.tf_ms:.1f} bars late)",
                        last_bar=int(self.last_ms), exchange_now=int(now))
        target = max(next_close, now) + int(self.policy.settle_s * 1000)
        wait = self.clock.wall_seconds_until(target)
        return min(self.policy.max_wait_s, max(self.min_wait_s, wait))

    def _failed(self, message: str) -> float:
        """A poll failed after the store's retries: report once per episode, back off."""
        self.stats.errors += 1
        self._failing += 1
        if self._failing == 1:
            self._stale = True  # bars flowing again is reported as feed_recovered
            self.stats.stale_reports += 1
            self._event("feed_error", f"exchange unreachable, will keep trying: {message}")
        return min(self.policy.max_backoff_s, self.policy.error_backoff_s * 2 ** (self._failing - 1))


class CCXTFeed(bt.feed.DataBase):
    """backtrader live data feed over a :class:`BarSource` (see module docstring).

    ``current`` is the :class:`Bar` of the line's current position (the session reads
    ``history`` and ``missing_before`` from it)."""

    params = (("source", None),)

    @classmethod
    def from_source(cls, source: BarSource) -> "CCXTFeed":
        """A feed on ``source`` with backtrader's timeframe/compression of its timeframe."""
        minutes = max(1, timeframe_seconds(source.timeframe) // 60)
        return cls(source=source, timeframe=bt.TimeFrame.Minutes, compression=minutes, name=source.symbol)

    def islive(self) -> bool:
        """True: cerebro runs bar by bar (no preload, no runonce)."""
        return True

    def haslivedata(self) -> bool:
        """Bars already fetched and waiting."""
        return self.p.source.pending() > 0

    def start(self) -> None:
        super().start()
        self.current: Bar | None = None
        self.put_notification(self.DELAYED)  # backtrader convention: history first

    def _load(self) -> bool:
        bar = self.p.source.next_bar()
        if bar is None:
            self.put_notification(self.DISCONNECTED)
            return False
        if not bar.history:
            self.put_notification(self.LIVE)
        lines = self.lines
        lines.datetime[0] = float(ns_to_bt_num(np.array([bar.ms * 1_000_000], dtype="int64"))[0])
        lines.open[0] = bar.open
        lines.high[0] = bar.high
        lines.low[0] = bar.low
        lines.close[0] = bar.close
        lines.volume[0] = bar.volume
        lines.openinterest[0] = 0.0
        self.current = bar
        return True


def _feed_on(store: CCXTStore, symbol: str, timeframe: str, **kwargs: Any) -> CCXTFeed:
    return CCXTFeed.from_source(BarSource(store, symbol, timeframe, **kwargs))


CCXTStore.data_factory = staticmethod(_feed_on)
