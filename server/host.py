"""A paper or live session run inside the server process, and what the operator API asks of it.

The session is the unchanged :class:`sessions.session.PaperSession` / ``LiveSession`` (the
same code as ``nts paper`` / ``nts live``) run in a thread, with signals left to uvicorn and
its status lines kept in a short ring buffer. Everything the operator API reads comes from
the session's journal file (read-only handles, safe while the session writes), and every
action goes through the journal's operator handle or the session's control object:

* pause / unpause: :class:`sessions.control.SessionControl` (journaled as events);
* flatten: a journal halt with the reason ``operator flatten: ...`` (the session closes
  the position at market at its next bar and stays halted);
* resume: :meth:`Journal.clear_halt`, journaling who and why, exactly as ``nts resume``;
* stop: the session's stop event (the bar in progress completes and is journaled).
"""
from __future__ import annotations

import collections
import datetime as _dt
import logging
import threading
from pathlib import Path
from typing import Any, Callable

from core.config import Config
from core.redact import redact
from sessions.control import FLATTEN_HALT, SessionControl
from sessions.journal import Journal, JournalError
from sessions.session import LiveSession, PaperSession

log = logging.getLogger("nts.serve")
MODES = ("paper", "live")


def build_session(mode: str, cfg: Config, model: str | Path, state: str | Path, *,
                  emit: Callable[[str], None], control: SessionControl, **options: Any) -> PaperSession:
    """The session ``nts paper`` / ``nts live`` would run, without its own signal handlers
    (uvicorn owns them; :class:`SessionHost` stops the session on shutdown)."""
    cls = LiveSession if mode == "live" else PaperSession
    return cls.create(cfg, model, state, emit=emit, control=control, install_signals=False, **options)


class SessionHost:
    """Runs one session in a thread and answers the operator API (see module docstring)."""

    def __init__(self, mode: str, cfg: Config, model: str | Path, state: str | Path, *,
                 echo: Callable[[str], None] | None = None, **options: Any) -> None:
        self.mode = mode
        self.state = Path(state)
        self.control = SessionControl()
        self.lines: collections.deque[str] = collections.deque(maxlen=200)
        self._echo = echo
        self.session = build_session(mode, cfg, model, state, emit=self._emit, control=self.control, **options)
        self.thread: threading.Thread | None = None
        self.error: str | None = None
        self.result: Any = None
        self.on_exit: Callable[[], None] | None = None   # the server lives as long as its session
        self.companions: list[Any] = []                  # started and closed with the session (notifier)
        self._lock = threading.Lock()
        self._reader: Journal | None = None
        self._admin: Journal | None = None

    # ------------------------------------------------------------------ the session thread
    def _emit(self, line: str) -> None:
        self.lines.append(line)
        if self._echo is not None:
            self._echo(line)

    def add_companion(self, companion: Any) -> None:
        """Something with ``start()``/``close()`` that runs beside the session (the notifier)."""
        self.companions.append(companion)

    def start(self) -> None:
        """Start the session thread and its companions."""
        for c in self.companions:
            c.start()
        self.thread = threading.Thread(target=self._run, name=f"nts-{self.mode}-session", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self.session.run()
        except BaseException as exc:  # noqa: BLE001 - shown on the status page, logged with its traceback
            first = (str(exc).splitlines() or [""])[0][:300]
            self.error = redact(f"{exc.__class__.__name__}: {first}")
            log.error("session stopped by an error: %s", self.error, exc_info=True)
            self._emit(f"error: {self.error}")
        finally:
            if self.on_exit is not None:
                self.on_exit()

    @property
    def state_name(self) -> str:
        """``starting`` (no journal yet), ``running``, ``stopped`` or ``failed``."""
        if self.error is not None:
            return "failed"
        if self.thread is not None and not self.thread.is_alive():
            return "stopped"
        return "running" if self.state.exists() else "starting"

    def stop(self, wait: float | None = None) -> None:
        """Ask the session to stop (the bar in progress completes); optionally wait for it."""
        self.session.stop_event.set()
        if wait is not None and self.thread is not None:
            self.thread.join(wait)

    def close(self) -> None:
        """Stop the session (waiting for its bar) and close the journal handles."""
        self.stop(wait=60)
        for c in self.companions:
            c.close()
        with self._lock:
            for j in (self._reader, self._admin):
                if j is not None:
                    j.close()
            self._reader = self._admin = None

    # ------------------------------------------------------------------ journal handles
    def reader(self) -> Journal | None:
        """A read-only journal handle (None before the session created its journal)."""
        with self._lock:
            if self._reader is None and self.state.exists():
                try:
                    self._reader = Journal.open_readonly(self.state)
                except JournalError:
                    return None  # still being created: try again at the next request
            return self._reader

    def admin(self) -> Journal:
        """The operator handle (as ``nts resume`` opens it)."""
        with self._lock:
            if self._admin is None:
                self._admin = Journal.open_admin(self.state)
            return self._admin

    # ------------------------------------------------------------------ operator actions
    def pause(self, reason: str, who: str) -> bool:
        """No new entries until :meth:`unpause`; False when already paused."""
        changed = self.control.pause(reason)
        if changed and self.state.exists():
            self.admin().record_event("pause", f"paused by {who}: {reason}", {"by": who})
        return changed

    def unpause(self, who: str) -> bool:
        """Allow entries again; False when not paused."""
        changed = self.control.unpause()
        if changed and self.state.exists():
            self.admin().record_event("unpause", f"unpaused by {who}", {"by": who})
        return changed

    def flatten(self, reason: str, who: str) -> dict[str, Any]:
        """Close the position at market at the next bar and halt (see module docstring)."""
        halt = self.admin().halt(f"{FLATTEN_HALT} by {who}: {reason}", _now())
        return {"halted": True, "reason": halt.reason, "since": halt.ts_iso}

    def resume(self, reason: str, who: str) -> dict[str, Any]:
        """Clear the halt, journaling who and why (as ``nts resume``)."""
        cleared = self.admin().clear_halt(f"{who} (api): {reason}", _now())
        if cleared is None:
            return {"cleared": False, "message": "not halted; nothing to do"}
        return {"cleared": True, "was": cleared.reason, "since": cleared.ts_iso}


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)
