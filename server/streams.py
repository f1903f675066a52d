"""Bar streams of the inference API: send the warm-up once, then one closed bar per call.

A client opens a stream for a symbol with the warm-up candles (``POST /streams``): the
server primes a :class:`models.streaming.BarScorer` from them -- the object paper and live
score every bar with -- and answers the decision on the last warm-up bar. Each later call
(``POST /streams/{id}/bars``) carries one closed bar, which goes through the file loader's
checks (:func:`server.predict.checked_frame`) and :meth:`BarScorer.update`, and is answered
with the same :class:`server.predict.Prediction` ``/predict`` gives for the same history.

Rules: a bar must be the next bar of the stream (open time = the last bar's + one
timeframe); anything else (a repeat, an older bar, a gap) is refused with one 422 line and
leaves the stream as it was -- after a gap the client opens a new stream. At most
``max_streams`` streams are open; a stream idle for ``idle_s`` seconds is closed; each
stream has its own lock (two calls on one stream never interleave).

A strategy whose hooks look back (``hook_lookback`` L > 1) needs the warm-up plus L - 1 bars
at the opening (:attr:`server.setup.ServeSetup.min_bars`; fewer is refused with one line
naming the strategy, L and the count); the stream then keeps its last L - 1 bars with their
P and forecast (:class:`server.hook_trail.HookTrail`, a fixed size: a stream costs the same
after a month as after an hour) and evaluates the hooks over them and the new bar, as a
paper session over its trailing ``hook_lookback`` bars.

Volatility-scaled barriers (``labels.scale: vol``): the opening's barrier widths are
:func:`models.labels.policy_widths` over the bars it carries (``/predict``'s call), and each
later bar's width comes from a :class:`models.labels.StreamingWidth` primed on those bars --
the same causal ``sigma_t * sqrt(horizon)`` of the stream's own bars the backtest reads at
that bar. The stream keeps the widths of its last ``hook_lookback`` bars (:class:`WidthTrail`).
"""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from core.errors import DataError, NtsError
from models.labels import StreamingWidth, policy_widths
from models.streaming import BarScorer
from server.hook_trail import HookTrail, trail_of
from server.predict import Bar, Prediction, Scored, checked_frame, decide_flat, scored_bar
from server.setup import ServeSetup

#: default bound on open streams (each holds a scorer: a few kB)
MAX_STREAMS = 256
#: default idle time after which a stream is closed (seconds)
IDLE_S = 3600.0


class StreamGone(NtsError):
    """No open stream under this id (never opened, closed, or expired)."""


class StreamsFull(NtsError):
    """The bound on open streams is reached."""


class WidthTrail:
    """The barrier widths of a stream's last ``n`` bars (the scored one last) and the width
    stream that gives the next bar's (module docstring)."""

    def __init__(self, policy: Any, bars: pd.DataFrame, n: int) -> None:
        self.widths = np.array(policy_widths(bars, policy)[-n:], dtype=np.float64)
        self.stream = StreamingWidth.of_policy(policy)
        self.stream.prime(bars)

    def push(self, t: pd.Timestamp, o: float, h: float, lo: float, c: float, v: float) -> np.ndarray:
        """Feed the next bar; the widths of the last ``n`` bars, this one last."""
        w = self.stream.update(t, o, h, lo, c, v)
        self.widths[:-1], self.widths[-1] = self.widths[1:], w
        return self.widths


@dataclass
class BarStream:
    """One open stream: its scorer, policy, last bar and lock."""

    id: str
    symbol: str | None
    policy: Any
    scorer: BarScorer
    last_ns: int
    bars: int
    used: float
    trail: HookTrail | None = None  # the bars before the last one the hooks look back on (None: per-bar hooks)
    widths: WidthTrail | None = None  # barrier widths of volatility-scaled barriers (None: fixed)
    lock: threading.Lock = field(default_factory=threading.Lock)
    broken: bool = False


class StreamRegistry:
    """The open streams of one app (bounded, idle ones expire; see module docstring)."""

    def __init__(self, setup: ServeSetup, max_streams: int = MAX_STREAMS, idle_s: float = IDLE_S,
                 clock: Any = time.monotonic) -> None:
        self.setup = setup
        self.max_streams = int(max_streams)
        self.idle_s = float(idle_s)
        self.clock = clock
        self._streams: dict[str, BarStream] = {}
        self._lock = threading.Lock()
        self.step_ns = int(setup.policy.bar_ns)

    def __len__(self) -> int:
        return len(self._streams)

    def _expire(self, now: float) -> None:
        for sid in [k for k, s in self._streams.items() if now - s.used > self.idle_s]:
            del self._streams[sid]

    def open(self, frame: pd.DataFrame, policy: Any, symbol: str | None) -> tuple[BarStream, Prediction]:
        """Prime a new stream from ``frame`` (a checked warm-up); its id and the decision on
        the last bar. :class:`StreamsFull` when the bound is reached (after expiring idle ones)."""
        with self._lock:
            self._expire(self.clock())
            if self.max_streams == 0:
                raise StreamsFull("bar streams are off in this server: with --workers above 1 a stream would live "
                                  "in one worker and its bars reach another; serve streams with --workers 1")
            if len(self._streams) >= self.max_streams:
                raise StreamsFull(f"{len(self._streams)} streams are open, the limit is {self.max_streams}: "
                                  "close one (DELETE /streams/{id}) or wait for idle ones to expire")
        tail = frame.iloc[-self.setup.warmup_bars:]
        scorer = BarScorer(self.setup.bundle)
        out = scorer.prime(tail)
        last = tail.iloc[-1:]
        need = self.setup.min_bars
        trail = trail_of(self.setup.bundle, frame.iloc[-need:], self.setup.lookback) if need > len(tail) else None
        used = need
        # the bars /predict computes the widths over (the opening answers as /predict does)
        widths = WidthTrail(policy, frame.iloc[-need:], self.setup.lookback or 1) if policy.vol_scaled else None
        scored = scored_bar(scorer.rows[-1] if len(scorer.rows) else None, tail.index[-1],
                            float(last["close"].iloc[0]), out, used)
        pred = decide_flat(self.setup, policy, scored, last, trail, None if widths is None else widths.widths)
        if trail is not None:
            trail.push(int(tail.index.asi8[-1]), last.to_numpy()[0], scored.p, policy.forecast_vol(scored.ewma_vol))
        stream = BarStream(id=secrets.token_hex(12), symbol=symbol, policy=policy, scorer=scorer,
                           last_ns=int(tail.index.asi8[-1]), bars=used, used=self.clock(), trail=trail,
                           widths=widths)
        with self._lock:
            if len(self._streams) >= self.max_streams:  # filled while this one was priming
                raise StreamsFull(f"{len(self._streams)} streams are open, the limit is {self.max_streams}")
            self._streams[stream.id] = stream
        return stream, pred

    def get(self, sid: str) -> BarStream:
        """The open stream ``sid`` (:class:`StreamGone` otherwise; an idle one is closed here)."""
        now = self.clock()
        with self._lock:
            stream = self._streams.get(sid)
            if stream is not None and now - stream.used > self.idle_s:
                del self._streams[sid]
                raise StreamGone(f"stream {sid} expired (idle for more than {self.idle_s:g} s): open a new one")
        if stream is None:
            raise StreamGone(f"no open stream {sid[:40]!r} (never opened, closed, or expired): open a new one")
        return stream

    def close(self, sid: str) -> None:
        """Close stream ``sid`` (:class:`StreamGone` when it is not open)."""
        with self._lock:
            if self._streams.pop(sid, None) is None:
                raise StreamGone(f"no open stream {sid[:40]!r} (never opened, closed, or expired)")

    def push(self, sid: str, bar: Bar) -> tuple[BarStream, Prediction]:
        """Score the next closed bar of stream ``sid`` (see the module docstring for the rules):
        the stream and the decision; DataError (one line, the stream unchanged) for a bad or
        out-of-sequence bar."""
        stream = self.get(sid)
        with stream.lock:
            if stream.broken or self._streams.get(sid) is not stream:
                raise StreamGone(f"no open stream {sid[:40]!r} (closed while this bar waited): open a new one")
            frame = checked_frame([bar.timestamp], np.array([[bar.open, bar.high, bar.low, bar.close, bar.volume]]),
                                  self.setup, "bar", 1)
            t_ns = int(frame.index.asi8[0])
            self._check_next(stream, t_ns)
            o, h, lo, c, v = frame.to_numpy()[0].tolist()
            t = frame.index[0]
            try:
                out = stream.scorer.update(t, o, h, lo, c, v)
                widths = None if stream.widths is None else stream.widths.push(t, o, h, lo, c, v)
            except Exception:
                stream.broken = True  # its state may be half-updated: never score with it again
                self.close_quietly(sid)
                raise
            stream.last_ns, stream.bars, stream.used = t_ns, stream.bars + 1, self.clock()
            scored: Scored = scored_bar(stream.scorer.rows[-1], t, c, out, stream.bars)
            try:
                return stream, decide_flat(self.setup, stream.policy, scored, frame, stream.trail, widths)
            finally:  # the scorer has taken the bar: the trail takes it too, even when a hook refused it
                if stream.trail is not None:
                    stream.trail.push(t_ns, frame.to_numpy()[0], scored.p, stream.policy.forecast_vol(scored.ewma_vol))

    def _check_next(self, stream: BarStream, t_ns: int) -> None:
        expected = stream.last_ns + self.step_ns
        if t_ns == expected:
            return
        got, want = pd.Timestamp(t_ns, tz="UTC"), pd.Timestamp(expected, tz="UTC")
        if t_ns < expected:
            why = "is not after the stream's last bar" if t_ns <= stream.last_ns else "is off the bar grid"
            raise DataError(f"bar.timestamp: {got} {why} ({pd.Timestamp(stream.last_ns, tz='UTC')}); "
                            f"the next bar of this stream opens at {want}")
        missing = (t_ns - stream.last_ns) // self.step_ns - 1
        raise DataError(f"bar.timestamp: {got} leaves a gap of {missing} bars after the stream's last bar "
                        f"({pd.Timestamp(stream.last_ns, tz='UTC')}); send {want} next, or open a new stream")

    def close_quietly(self, sid: str) -> None:
        """Close ``sid`` if it is open."""
        with self._lock:
            self._streams.pop(sid, None)
