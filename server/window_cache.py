"""Scorers of recent /predict windows: a client that sends its trailing window again one bar
later pays for that one bar (:meth:`BarScorer.update`), not for a prime over the warm-up.

Each cached :class:`models.streaming.BarScorer` is keyed by a digest of the last ``n - 1``
bars it consumed (``n`` = the warm-up the server scores). A request whose bars, all but the
last, have that digest takes the scorer out of the cache (so no two requests share one),
feeds it the last bar and puts it back under its new key; any other request primes a fresh
scorer from its bars (:meth:`BarScorer.prime`), exactly as without a cache. A reused scorer
has consumed more history than the request carries; the warm-up is by definition the history
after which older bars no longer move P (:attr:`models.bundle.ModelBundle.history_bars`), so
both answers agree to ~1e-12 (tested to 1e-9). Bounded (least recently used dropped).

A strategy whose hooks look back (``hook_lookback`` L > 1) also needs the trail of the L - 1
bars before the scored one with their P and forecast (:class:`server.hook_trail.HookTrail`,
built by the batch path over the request's bars: far more work than scoring one bar). The
cache keeps those trails the same way, keyed by the request's bars but the last: a client
sliding its window one bar later gets the trail of its previous request with that request's
scored bar pushed in, as a stream keeps it (:meth:`take_trail`, :meth:`keep_trail`).
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import pandas as pd

from models.streaming import BarScorer
from server.hook_trail import HookTrail

#: default number of cached scorers (each a few kB)
CACHE_SIZE = 32


def _digest(ts: np.ndarray, values: np.ndarray) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(ts).tobytes())
    h.update(np.ascontiguousarray(values).tobytes())
    return h.digest()


class WindowCache:
    """Bounded LRU of scorers by the bars they consumed (see module docstring)."""

    def __init__(self, bundle: Any, size: int = CACHE_SIZE) -> None:
        self.bundle = bundle
        self.size = int(size)
        self.hits = 0
        self.misses = 0
        self._lru: OrderedDict[bytes, BarScorer] = OrderedDict()
        self._trails: OrderedDict[bytes, HookTrail] = OrderedDict()
        self.trail_hits = 0
        self._lock = threading.Lock()

    def score(self, tail: pd.DataFrame) -> tuple[tuple[float, float], np.ndarray | None]:
        """((logit, P), feature row) of the last bar of ``tail``: checked, contiguous canonical
        bars (the warm-up the server scores), oldest first. The row is read before the scorer
        goes back into the cache (another request may take it from there)."""
        ts = tail.index.asi8
        values = tail.to_numpy(dtype=np.float64)
        scorer = None
        if self.size > 0 and len(tail) > 1:
            with self._lock:
                scorer = self._lru.pop(_digest(ts[:-1], values[:-1]), None)
        if scorer is not None:
            o, h, lo, c, v = values[-1].tolist()
            out = scorer.update(tail.index[-1], o, h, lo, c, v)
            self.hits += 1
        else:
            scorer = BarScorer(self.bundle)
            out = scorer.prime(tail)
            self.misses += 1
        row = scorer.rows[-1].copy() if len(scorer.rows) else None
        if self.size > 0:
            key = _digest(ts[1:], values[1:])
            with self._lock:
                self._lru[key] = scorer
                self._lru.move_to_end(key)
                while len(self._lru) > self.size:
                    self._lru.popitem(last=False)
        return out, row

    def take_trail(self, window: pd.DataFrame) -> HookTrail | None:
        """The trail kept for the last bar of ``window`` (the request's last ``warm-up + L - 1``
        bars), taken out of the cache; None when no request one bar earlier left one."""
        if self.size <= 0:
            return None
        key = _digest(window.index.asi8[:-1], window.to_numpy(dtype=np.float64)[:-1])
        with self._lock:
            trail = self._trails.pop(key, None)
        self.trail_hits += trail is not None
        return trail

    def keep_trail(self, window: pd.DataFrame, trail: HookTrail) -> None:
        """Keep ``trail`` -- the scored last bar of ``window`` already pushed into it -- for a
        request one bar later."""
        if self.size <= 0:
            return
        key = _digest(window.index.asi8[1:], window.to_numpy(dtype=np.float64)[1:])
        with self._lock:
            self._trails[key] = trail
            self._trails.move_to_end(key)
            while len(self._trails) > self.size:
                self._trails.popitem(last=False)
