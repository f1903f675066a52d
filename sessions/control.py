"""Operator controls of a running session, for whatever drives it (the server's operator API).

A :class:`SessionControl` is shared by the session thread and the operator; the session's
risk manager (:class:`sessions.session.SessionRisk`) reads it at every bar's risk check:

* ``pause()`` / ``unpause()``: while paused no new entries (exits, time exits, breakers and
  the kill switch work as always). In memory only: a restarted session is not paused (the
  journal holds the pause/unpause events for the record).
* a **flatten halt** is a journal halt whose reason starts with :data:`FLATTEN_HALT`: the
  session closes the position at market and cancels its working orders at the next bar,
  and stays flat and halted until the halt is cleared (``nts resume`` or the API's
  ``/resume``). It lives in the journal, so it survives a restart like any halt.
* ``stop``: the session's own stop event (the bar in progress completes and is journaled).
"""
from __future__ import annotations

import threading

#: reason prefix of an operator's "close everything and halt" (see module docstring)
FLATTEN_HALT = "operator flatten"


class SessionControl:
    """Thread-safe pause flag (see module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paused: str | None = None

    def pause(self, reason: str) -> bool:
        """Pause new entries; False when already paused."""
        with self._lock:
            was = self._paused is not None
            self._paused = reason or "paused"
            return not was

    def unpause(self) -> bool:
        """Allow new entries again; False when not paused."""
        with self._lock:
            was = self._paused is not None
            self._paused = None
            return was

    @property
    def paused(self) -> str | None:
        """The pause reason, or None."""
        with self._lock:
            return self._paused


def is_flatten_halt(reason: str | None) -> bool:
    """True for a halt set by an operator's flatten."""
    return bool(reason) and str(reason).startswith(FLATTEN_HALT)
