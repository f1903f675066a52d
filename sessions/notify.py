"""Notifications of a session: fills (entries and exits), breaker trips, halts, errors and a
daily summary, sent through Apprise (one URL per service: Telegram, Slack, e-mail, ...) or a
plain JSON webhook, from the durable outbox of :mod:`sessions.outbox`.

The :class:`Notifier` runs beside the session (its own thread and SQLite connections) and
never touches the trading path: each round it reads what the journal gained since its
cursors (read-only handle), derives one message per (event, target) into the outbox in one
transaction, then sends what is due. So every message is stored once, survives a restart
(unsent rows are sent by the next notifier), is retried with exponential backoff, and is
sent once: a webhook carries the message key in ``Idempotency-Key`` (a receiver that saw
the key may drop a repeat, which happens only when the process dies between the target's
answer and the commit of ``sent_at``). A target that fails is logged once per outage (and
once when it is back), not once per message; while it is down its messages wait in order.

Target URLs carry secrets (tokens in paths and hosts): they are shown only masked
(:func:`mask_url`), never logged, journaled or put into an error; best given through an
environment variable (``url_env``).

Config (YAML, unknown keys refused; see configs/notify.yaml)::

    notify:
      targets:
        - {name: ops, kind: webhook, url_env: NTS_NOTIFY_WEBHOOK_URL}
        - {name: phone, kind: apprise, url_env: NTS_NOTIFY_APPRISE_URL}
      events: [fill, breaker_trip, halt, halt_cleared, error, daily_summary]
      poll_seconds: 1.0
      timeout_seconds: 5.0
      retry: {first_seconds: 2.0, max_seconds: 300.0}
"""
from __future__ import annotations

import logging
import os
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Literal

import apprise
import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.config import load_yaml_strict
from core.errors import ConfigError
from core.redact import redact
from sessions.journal import Journal, JournalError, iso_ms
from sessions.outbox import Message, Outbox

log = logging.getLogger("nts.notify")
EVENT_KINDS = ("fill", "breaker_trip", "halt", "halt_cleared", "error", "daily_summary", "start", "stop")
_DAY_MS = 86_400_000
_EXIT_ROLES = ("take_profit", "stop", "flatten", "time", "risk")


class RetryConfig(BaseModel):
    """Backoff: first retry after ``first_seconds``, doubling up to ``max_seconds``."""

    model_config = ConfigDict(extra="forbid")
    first_seconds: float = Field(2.0, gt=0, le=3600)
    max_seconds: float = Field(300.0, gt=0, le=86400)


class TargetConfig(BaseModel):
    """One destination: a JSON webhook or an Apprise URL, given inline or by variable."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    kind: Literal["webhook", "apprise"]
    url: str | None = None
    url_env: str | None = None

    @model_validator(mode="after")
    def _one_url(self) -> "TargetConfig":
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of url and url_env")
        return self

    def resolve(self) -> str:
        """The URL (from the variable when ``url_env``); ConfigError naming the variable if unset."""
        if self.url_env is not None:
            value = os.environ.get(self.url_env, "")
            if not value:
                raise ConfigError(f"notify target {self.name}: environment variable {self.url_env} is not set")
            return value
        return str(self.url)


class NotifyConfig(BaseModel):
    """The ``notify`` section (see module docstring)."""

    model_config = ConfigDict(extra="forbid")
    targets: list[TargetConfig] = Field(min_length=1)
    events: list[Literal[EVENT_KINDS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["fill", "breaker_trip", "halt", "halt_cleared", "error", "daily_summary"])
    poll_seconds: float = Field(1.0, gt=0, le=3600)
    timeout_seconds: float = Field(5.0, gt=0, le=300)
    retry: RetryConfig = Field(default_factory=RetryConfig)


def load_notify_config(path: str | Path) -> NotifyConfig:
    """Read the ``notify`` section of a YAML file; one ConfigError line naming the file and key."""
    tree = load_yaml_strict(path)
    if not isinstance(tree, dict) or set(tree) != {"notify"}:
        raise ConfigError(f"{path}: expected one top-level key 'notify'")
    try:
        cfg = NotifyConfig.model_validate(tree["notify"])
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(str(x) for x in ("notify", *e["loc"]))
        raise ConfigError(f"{path}: invalid value for {where}: {e['msg']}") from None
    names = [t.name for t in cfg.targets]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: notify.targets: target names must be unique")
    for t in cfg.targets:
        t.resolve()  # refuse a missing variable now, not at the first fill
    return cfg


def mask_url(url: str) -> str:
    """``scheme://***`` for Apprise-style URLs (tokens live in the host part), ``scheme://host[:port]/***``
    for http(s): enough to tell targets apart, nothing to log in with."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("http", "https") and parts.hostname:
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}/***"
    return f"{parts.scheme or '?'}://***"


class _Sender:
    """One target: sends a message, says why not (masked), remembers whether it is down."""

    def __init__(self, cfg: TargetConfig, timeout: float) -> None:
        self.name = cfg.name
        self.kind = cfg.kind
        self._url = cfg.resolve()
        self.masked = mask_url(self._url)
        self.timeout = timeout
        self.down_since: int | None = None
        self.delivered = False     # this process delivered at least one message to the target
        self.retry_at = 0.0        # monotonic time before which this target is not tried again
        self._client = httpx.Client(timeout=timeout) if cfg.kind == "webhook" else None

    def _clean(self, text: str) -> str:
        return redact(text.replace(self._url, self.masked))

    def send(self, m: Message, session_id: str) -> str | None:
        """None when delivered, else the (masked) reason."""
        try:
            if self._client is not None:
                payload = {"key": m.key, "kind": m.kind, "title": m.title, "body": m.body, "session_id": session_id,
                           "created_at": iso_ms(m.created_at)}
                r = self._client.post(self._url, json=payload, headers={"Idempotency-Key": m.key})
                return None if 200 <= r.status_code < 300 else f"HTTP {r.status_code}"
            return None if _apprise_send(self._url, m.title, m.body, self.timeout) else "apprise reported a failure"
        except Exception as exc:  # noqa: BLE001 - any transport failure is a retry, described without the URL
            return self._clean(f"{exc.__class__.__name__}: {(str(exc).splitlines() or [''])[0][:200]}")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class _AppriseLogFilter(logging.Filter):
    """Apprise logs the services it calls: keep credentials out of those records too."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


def _apprise_send(url: str, title: str, body: str, timeout: float) -> bool:
    logger = logging.getLogger("apprise")
    if not any(isinstance(f, _AppriseLogFilter) for f in logger.filters):
        logger.addFilter(_AppriseLogFilter())
        logger.setLevel(logging.CRITICAL)  # its per-call lines would carry the service's address
    a = apprise.Apprise()
    if not a.add(url):
        return False
    return bool(a.notify(body=body, title=title))


class Notifier:
    """Derives messages from a session journal into its outbox and sends them (module doc)."""

    def __init__(self, journal_path: str | Path, cfg: NotifyConfig) -> None:
        self.path = Path(journal_path)
        self.cfg = cfg
        self.senders = {t.name: _Sender(t, cfg.timeout_seconds) for t in cfg.targets}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outbox: Outbox | None = None
        self._session_id = ""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Run :meth:`step` every ``poll_seconds`` in a daemon thread."""
        self._thread = threading.Thread(target=self._loop, name="nts-notify", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """One last round (what the stopping session journaled), then stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        for s in self.senders.values():
            s.close()
        if self._outbox is not None:
            self._outbox.close()

    def _loop(self) -> None:
        while True:
            stopping = self._stop.is_set()
            try:
                self.step()
            except Exception:  # noqa: BLE001 - notifications must never stop; the next round retries
                log.warning("notifier round failed", exc_info=True)
            if stopping:
                return
            self._stop.wait(self.cfg.poll_seconds)

    # ------------------------------------------------------------------ one round
    def step(self) -> dict[str, int]:
        """Derive new messages, send the due ones; returns counts (for tests and logs)."""
        if not self.path.exists():
            return {"new": 0, "sent": 0}
        try:
            journal = Journal.open_readonly(self.path)
        except JournalError:
            return {"new": 0, "sent": 0}  # still being created
        try:
            if self._outbox is None:
                self._outbox = Outbox(self.path)
            self._session_id = journal.session.session_id
            new = self._derive(journal)
        finally:
            journal.close()
        return {"new": new, "sent": self._send_due()}

    def _derive(self, journal: Journal) -> int:
        ob = self._outbox
        wanted = set(self.cfg.events)
        found: list[tuple[str, str, str, str]] = []     # (what, kind, title, body)
        fill_seq = ob.cursor("fill_seq")
        roles = {i.client_id: i.role for i in journal.intents()}
        fills = [f for f in journal.fills() if f.seq > fill_seq]
        for f in fills:
            role = roles.get(f.client_id or "", "?")
            what = "exit" if role in _EXIT_ROLES else ("entry" if role == "entry" else role)
            found.append((f"fill:{f.trade_id}", "fill", f"{what} filled: {f.side} {f.amount:.8g} @ {f.price:,.2f}",
                          f"{iso_ms(f.ts)} {role} {f.side} {f.amount:.8g} at {f.price:,.8g}, fee {f.fee:.8g} "
                          f"{f.fee_currency or ''}".strip()))
        event_id = ob.cursor("event_id")
        events = [e for e in journal.events() if e["id"] > event_id]
        for e in events:
            if e["kind"] in wanted and e["kind"] != "fill":
                found.append((f"event:{e['id']}", e["kind"], f"{e['kind'].replace('_', ' ')}", f"{iso_ms(e['ts'])} "
                              f"{e['message']}"))
        day = ob.cursor("day", default=-1)
        days = self._daily(journal, day) if "daily_summary" in wanted else []
        if "fill" not in wanted:
            found = [x for x in found if x[1] != "fill"]
        found += [(f"daily:{d}", "daily_summary", title, body) for d, title, body in days]
        cursors = {"fill_seq": max([fill_seq, *[f.seq for f in fills]]),
                   "event_id": max([event_id, *[e["id"] for e in events]])}
        if days:
            cursors["day"] = days[-1][0]
        elif day < 0:
            last = journal.last_bar()
            if last is not None:
                cursors["day"] = last // _DAY_MS - 1   # summaries start with the session's first day
        msgs = [Message(key=f"{name}:{what}", target=name, kind=kind, title=title, body=body)
                for what, kind, title, body in found for name in self.senders]
        return ob.enqueue(msgs, cursors)

    @staticmethod
    def _daily(journal: Journal, after_day: int) -> list[tuple[int, str, str]]:
        """Summaries of the whole UTC days after ``after_day`` that a later bar has closed."""
        if after_day < 0:
            return []
        bars = journal.bars(since=(after_day + 1) * _DAY_MS - 1)
        if not bars:
            return []
        today = bars[-1].bar_time // _DAY_MS
        out = []
        for d in range(after_day + 1, today):
            day_bars = [b for b in bars if b.bar_time // _DAY_MS == d]
            if not day_bars:
                continue
            first, last = day_bars[0], day_bars[-1]
            n_fills = sum(1 for f in journal.fills() if f.ts // _DAY_MS == d)
            change = (last.equity / first.equity - 1.0) if first.equity else 0.0
            date = iso_ms(d * _DAY_MS)[:10]
            out.append((d, f"daily summary {date}", f"{date}: equity {last.equity:,.2f} ({change:+.2%} over the day), "
                        f"position {last.position:.8g}, {n_fills} fills, {len(day_bars)} bars, breakers "
                        f"{last.breaker_state}"))
        return out

    def _send_due(self) -> int:
        sent = 0
        now = time.monotonic()
        for m in self._outbox.due():
            sender = self.senders.get(m.target)
            if sender is None or sender.retry_at > now:
                continue  # a target no longer configured keeps its rows; a failing one waits, in order
            why = sender.send(m, self._session_id)
            if why is None:
                self._outbox.mark_sent(m.id)
                sent += 1
                # m.attempts > 0 on a sender that has not failed yet: the outage began before a restart
                if sender.down_since is not None or (m.attempts > 0 and not sender.delivered):
                    log.warning("notify target %s (%s) reachable again", sender.name, sender.masked)
                    sender.down_since = None
                sender.delivered = True
                continue
            retry = min(self.cfg.retry.first_seconds * 2 ** min(m.attempts, 30), self.cfg.retry.max_seconds)
            sender.retry_at = now + retry
            self._outbox.mark_failed(m.id, why, retry)
            if sender.down_since is None:
                sender.down_since = m.id
                log.warning("notify target %s (%s) failed: %s; messages wait in the outbox and are retried "
                            "(logged once until it works again)", sender.name, sender.masked, why)
        return sent

    def counts(self) -> dict[str, int]:
        """Outbox counts (pending, sent)."""
        return self._outbox.counts() if self._outbox is not None else {"pending": 0, "sent": 0}

