"""Paper sessions: the live feed, the backtest's simulated broker, the unchanged strategy,
and a journal that makes them restartable.

``PaperSession(cfg, model, state).run()`` runs backtrader with

* :class:`brokers.ccxt_feed.CCXTFeed` -- closed candles by the exchange's clock, warm-up
  history first (see that module for how it waits, backfills and reports gaps);
* :func:`strategies.bt_broker.make_broker` with the run specification's costs -- the SAME
  simulated broker and fill rules as ``nts backtest``, so paper trades equal backtest
  trades on the same bars by construction (a test holds it);
* the strategy of the :class:`strategies.runspec.RunSpec` (``tcn``, ``module:Class``,
  ``file.py:Class``; bundle, policy, costs and params resolved once, as for ``run_backtest``);
  the class is not wrapped or changed; a failure in its code is one user-error line;
* :class:`SessionRecorder` (a backtrader analyzer) and :class:`SessionRisk` (the strategy's
  risk manager with the journal's halt as one more breaker).

**Warm-up** (the one warm-up, ``RunSpec.warmup``: :func:`strategies.runspec.warmup_bars_for`): the last N
closed bars come before the first traded bar with ``trade_start`` just after them, so
the strategy sees them exactly as ``run_backtest`` sees the bars before its span: no
orders, no risk checks, only indicator history. **Primed** (the same path for a new
session and a restart): when :func:`strategies.base.primes_history` allows it (the TCN
strategy and every strategy that overrides only the vectorised hooks), the first N-1 bars
go to the strategy as one frame (param ``history``: its indicators take their state after
them in one vectorised step, and hooks that look back see them) and backtrader steps only
the last warm-up bar, instead of ~1,400 ``next()`` calls; any other strategy is fed every
warm-up bar.

**One transaction per bar.** At the end of every traded bar the recorder journals, in one
:meth:`Journal.atomic` block: the gap before the bar (if any), the order intents the
strategy created on this bar (deterministic client ids from the decision bar and the
order's role), every status change and fill the simulated broker made, breaker trips (and
the halt they cause), and the bar's checkpoint (close, P, signal, weight, position, cash,
equity, breaker state, ``RiskManager.state_dict()``, the strategy's ``state_dict()``). A
process killed anywhere leaves either the whole bar or none of it, so a restart never
loses or doubles an order or fill. Intents are journaled at the end of the decision bar,
before the simulated broker sees them at the next bar: write-ahead, as in live mode.

**Restart.** The journal's last checkpoint (bar t) is the resume point: the warm-up is
the N bars up to and including t (the exchange must still serve bar t with the journaled
close, else the session refuses to start), fed without trading. The checkpoint's
``state_dict()`` goes to the strategy as param ``state``: on bar t, the last warm-up bar,
:meth:`strategies.base.ModelStrategy.load_state` puts the simulated broker's cash and
position back, restores the risk manager and re-submits the working orders, so they work
from bar t+1 exactly as in the uninterrupted run; the recorder links those orders to their
journaled intents (by role and side) and journals as canceled any intent nobody re-placed.
Trading resumes at the next closed bar; bars closed while the session was down are
backfilled and traded in order, so the trades equal an uninterrupted run's. A strategy
without ``state_dict()`` can only resume from a flat checkpoint with no working orders
(cash and risk state are restored by hand; refused otherwise, with one line).

**Halts.** A drawdown or kill-switch trip halts the journal (:meth:`Journal.halt`): it
survives restarts until ``nts resume`` clears it. :class:`SessionRisk` reads
:meth:`Journal.halted` every bar (``nts resume`` in another process clears it) and, while
halted, allows no new position (exits still run; the kill switch still flattens and stops);
when the halt is cleared the session resets the risk manager's breakers (a human decided to
resume) and trades again. Paper trades equal backtest trades up to the first such trip (the
backtest has no human to wait for).

**Operator control** (:mod:`sessions.control`, used by ``nts serve``): while paused,
:class:`SessionRisk` allows no new entries; a halt whose reason starts with ``operator
flatten`` also flattens (market close, working orders canceled) at every bar until cleared.

The **daily-loss** breaker keeps the meaning it has in the backtest: halt and flatten until
the next UTC day, then trade again by itself. Its state (tripped, the day, the day's start
equity) is part of the risk manager's state in every checkpoint, so a session restarted on
the same UTC day stays halted and one restarted on a later day trades: paper == backtest
through daily-loss trips too. It is journaled as a breaker trip, not as a halt. The
volatility breaker (no new entries while it is high) is journaled as a trip only.

**Live sessions** (:class:`LiveSession`, ``nts live``) are the same machinery with
:class:`brokers.ccxt_broker.CCXTBroker` in place of the simulated broker: before cerebro
starts, :func:`sessions.reconcile.reconcile` compares the journal with the exchange (only GET
requests) and the session refuses to start, printing the report, when anything is
unexplainable; the broker journals its own intents (committed before each send), acks and
fills (by exchange trade id); each bar the orders the strategy decided are sent right after
its ``next()`` and before the bar's checkpoint, which also holds the broker's ledger. A new
live session journals a checkpoint of its last warm-up bar (flat, nothing working) so that
even a crash on the first traded bar restarts from a checkpoint. A kill-switch or drawdown
trip (after the strategy's own flatten), a session stopped by the kill switch and a session
started halted by either cancel every open order of the session on the exchange.

**Stopping.** SIGINT/SIGTERM (installed when run in the main thread) set the stop event:
the bar in progress completes and is journaled, the feed stops waiting, the journal is
closed. ``max_bars`` ends the run after that many traded bars (tests).
"""
from __future__ import annotations

import gc
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import backtrader as bt
import pandas as pd

from brokers.ccxt_broker import BT_TYPES, KIND_ROLES, CCXTBroker, bt_ms  # noqa: F401 (KIND_ROLES re-exported)
from brokers.ccxt_feed import Bar, BarSource, CCXTFeed, PollPolicy, bars_frame, iso
from brokers.ccxt_store import CCXTStore
from sessions.control import SessionControl, is_flatten_halt
from sessions.reconcile import Ledger, LiveStart, reconcile
from sessions.journal import (
    EVENT_BREAKER_TRIP,
    BarFigures,
    Checkpoint,
    Journal,
    SessionIdentity,
    config_hash,
    deterministic_client_id,
)
from core.config import Config, RiskConfig, config_to_dict
from core.errors import DataError, NtsError
from core.redact import redact, register_secret_env
from core.risk import Decision, RiskManager
from core.timeframes import timeframe_seconds
from strategies.base import primes_history
from strategies.bt_broker import make_broker
from strategies.hooks import user_code
from strategies.runspec import RunSpec

log = logging.getLogger("nts.paper")

#: breakers whose trip halts the session until ``nts resume`` (see module docstring)
#: (the daily-loss breaker lifts by itself at the next UTC day, as in the backtest)
HALTING_BREAKERS = ("kill_switch", "drawdown")
_BT_TYPES = BT_TYPES


class SessionError(NtsError):
    """A session refuses to start or to resume (one line saying why)."""


def trading_config_hash(cfg: Config, **choices: Any) -> str:
    """Hash of everything that changes trading: every config section but ``broker`` (which
    only says how to reach the exchange) plus ``choices`` (strategy, barriers, coc, ...).
    A resumed session must trade by the same rules."""
    tree = config_to_dict(cfg)
    tree.pop("broker", None)
    return config_hash({"config": tree, **{k: repr(v) for k, v in sorted(choices.items())}})


def _has_state(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state", None))


class SessionRisk(RiskManager):
    """The strategy's RiskManager plus the journal's halt as a breaker (see module docstring).

    Every :meth:`check` reads :meth:`Journal.halted` (a halt or its clearing may come from
    another process); while halted no new position is allowed, while flatten/stop decisions
    of the ordinary breakers still pass through. When a halt this manager has seen is
    cleared, the breakers are reset (the trip history stays) before the check.
    """

    def __init__(self, cfg: RiskConfig | None, journal: Journal, kill_switch_file: str | None = None) -> None:
        super().__init__(cfg, kill_switch_file=kill_switch_file)
        self.journal = journal
        self.session_halted = False
        self.on_resumed: Callable[[str], None] | None = None
        self.control: SessionControl | None = None  # operator pause (sessions/control.py)

    def check(self, now: Any, equity: float, position_value: float, realised_vol: float) -> Decision:
        halt = self.journal.halted()
        if halt is None and self.session_halted:
            self.session_halted = False
            self.reset()
            if self.on_resumed is not None:
                self.on_resumed("halt cleared: breakers reset, trading again")
        elif halt is not None:
            self.session_halted = True
        decision = super().check(now, equity, position_value, realised_vol)
        if halt is not None and not decision.flatten:
            # an operator's flatten halt closes everything at market and keeps it closed
            return Decision("halt", f"session halted: {halt.reason}", flatten=is_flatten_halt(halt.reason),
                            max_weight=0.0)
        paused = self.control.paused if self.control is not None else None
        if paused is not None and decision.allow:
            return Decision("halt", f"paused by operator: {paused}", max_weight=0.0)
        return decision

    def breaker_state(self) -> str:
        """``ok`` or the active breakers, comma-separated (the status line and checkpoint)."""
        active = [name for name, on in (("kill_switch", self.killed), ("drawdown", self.drawdown_halted),
                                        ("daily_loss", self.daily_halted), ("volatility", self.vol_active)) if on]
        return ",".join(active) or "ok"


@dataclass
class PaperResult:
    """What one run of a paper session did."""

    state: Path
    session_id: str
    resumed: bool
    resumed_from: int | None          # last journaled bar before this run (epoch ms)
    bars: int = 0                     # bars traded (journaled) in this run
    first_bar: int | None = None
    last_bar: int | None = None
    stopped_by: str = "end"           # end | max_bars | signal | kill_switch
    halted: str | None = None         # the active halt's reason at the end
    equity: float | None = None
    feed: dict[str, int] = field(default_factory=dict)
    store: dict[str, int] = field(default_factory=dict)
    warmup_bars: int = 0
    broker: dict[str, int] = field(default_factory=dict)   # live: CCXTBroker.stats
    reconcile: list[str] = field(default_factory=list)     # live: the reconciliation report


def freeze_warmup() -> None:
    """Move every object alive now (the bundle, the ONNX session, the primed history and
    indicators, backtrader's graph: what the session keeps to its end) out of the garbage
    collector's reach: each full collection otherwise walks all of them again, one such pause
    was measured at 521 ms on a loaded machine, an outlier on a bar that should take 1 ms.
    Collected first, so the warm-up's garbage is freed rather than frozen;
    :func:`unfreeze_warmup` undoes it when the session ends."""
    gc.collect()
    gc.freeze()


def unfreeze_warmup() -> None:
    """Hand frozen objects back to the collector at the end of a session: a process that runs
    session after session (tests, the server) would otherwise keep each ended session's cyclic
    garbage for ever. It unfreezes whatever is frozen, another session's included: that one only
    loses the speed-up, nothing else."""
    gc.unfreeze()


class SessionRecorder(bt.Analyzer):
    """Per bar: journal + status line; at the end of the warm-up: restore (see module doc)."""

    params = (("session", None),)

    def start(self) -> None:
        self.s: "PaperSession" = self.p.session
        self.journal: Journal = self.s.journal
        self._orders_seen = 0
        self._tracked: dict[str, dict[str, Any]] = {}   # client id -> {order, acked}
        self._ids_used: set[str] = set()
        self._trips_seen = 0
        self._restored = False
        self._live_fills = 0
        self._halt_trip: str | None = None

    # backtrader calls prenext while the strategy's minimum period is not reached yet
    def prenext(self) -> None:
        self._on_bar()

    def next(self) -> None:
        self._on_bar()

    def stop(self) -> None:
        pass

    # ------------------------------------------------------------------ per bar
    def _on_bar(self) -> None:
        strat = self.strategy
        bar: Bar | None = strat.data.current
        if bar is None:
            return
        if bar.history:
            if bar.ms == self.s.history_end_ms:
                self._end_of_warmup()
            return
        self._record(bar)

    def _end_of_warmup(self) -> None:
        strat = self.strategy
        if self.s.live:
            self._end_of_warmup_live()
        elif self.s.checkpoint is not None:
            self._restore(self.s.checkpoint)
        self._trips_seen = len(strat.risk.trips)
        if not self.s.live:
            self._orders_seen = len(strat.broker.orders)
        self.s.emit(self.s.start_line)
        freeze_warmup()

    def _end_of_warmup_live(self) -> None:
        """Live: the broker links the orders the strategy re-submitted on restore to the
        exchange orders the checkpoint held (it sends nothing for them); a new session
        checkpoints this last warm-up bar (flat, nothing working), so that a crash on the
        first traded bar restarts from a checkpoint too."""
        strat = self.strategy
        cp = self.s.checkpoint
        if cp is not None and getattr(strat, "_restore", None) is not None:
            raise SessionError(f"{self.s.state}: the strategy did not restore its state on the last "
                               f"journaled bar {iso(cp.bar_time)}")
        broker: CCXTBroker = strat.broker
        broker.flush()
        if cp is None:
            bar: Bar = strat.data.current
            pos = broker.getposition(strat.data)
            state = {"strategy": strat.state_dict(),
                     "session": {"halted": False, "warmup": True, "broker": broker.state_dict()}}
            figures = BarFigures(float(strat.data.close[0]), math.nan, math.nan, math.nan, float(pos.size), math.nan,
                                 float(broker.getcash()), float(broker.getvalue()))
            self.journal.record_bar(bar.ms, figures, "ok", strat.risk.state_dict(), state)

    def _restore(self, cp: Checkpoint) -> None:
        """At the end of the last warm-up bar (the checkpoint's bar): check the strategy
        restored itself, or restore a flat one by hand; link the orders it re-placed to
        their journaled intents; cancel (loudly) journaled orders nobody re-placed."""
        strat = self.strategy
        broker = strat.broker
        if self.s.strategy_state is not None:
            # ModelStrategy.load_state (param ``state``) restored broker cash and position,
            # risk state and working orders on this very bar
            if getattr(strat, "_restore", None) is not None:
                raise SessionError(f"{self.s.state}: the strategy did not restore its state on the last "
                                   f"journaled bar {iso(cp.bar_time)}")
        else:
            # a strategy without state_dict() resumes only from a flat checkpoint (checked at
            # start): cash and the risk manager are all there is to restore. BackBroker keeps
            # cash in a plain attribute; _get_value refreshes its cached value.
            broker.cash = float(cp.cash)
            broker._get_value()
            strat.risk.load_state(cp.risk_state)
        open_intents = self.journal.intents(open_only=True)
        unmatched = list(open_intents)
        for order in broker.orders:  # nothing traded in the warm-up: these are the re-placed ones
            role, side = self._role(order), "buy" if order.isbuy() else "sell"
            match = next((i for i in unmatched if i.role == role and i.side == side), None)
            if match is None:
                continue  # journaled as a new intent at the next bar
            unmatched.remove(match)
            order.addinfo(client_id=match.client_id)
            self._tracked[match.client_id] = {"order": order, "acked": match.status == "open"}
            self._ids_used.add(match.client_id)
        if unmatched:
            with self.journal.atomic():
                for intent in unmatched:
                    # open at the checkpoint but not re-placed by load_state (e.g. canceled on
                    # the checkpoint's bar, the cancel not yet reported): gone in this process
                    self.journal.record_cancel(intent.client_id, cp.bar_time, "not working at the checkpoint")
                    log.info("order %s (%s) was not working at the checkpoint; journaled as canceled",
                             intent.client_id, intent.role)
        self._restored = True

    def _role(self, order: bt.Order) -> str:
        kind = str(order.info.get("kind", "") or "")
        return KIND_ROLES.get(kind, "rebalance")

    def _new_intents(self, bar_ms: int) -> None:
        broker = self.strategy.broker
        for order in broker.orders[self._orders_seen:]:
            if order.info.get("client_id"):
                continue  # restored and linked
            role = self._role(order)
            created_ms = bt_ms(order.created.dt) if order.created.dt else bar_ms
            attempt = 0
            while True:
                cid = deterministic_client_id(self.journal.session.session_id, created_ms, role, attempt)
                if cid not in self._ids_used and self.journal.intent(cid) is None:
                    break
                attempt += 1
            otype = _BT_TYPES.get(order.exectype, "market")
            price = float(order.created.price) if order.created.price else None
            self.journal.record_intent(
                cid, created_ms, role, "buy" if order.isbuy() else "sell", otype, abs(float(order.created.size)),
                price=price if otype in ("limit", "stop_limit") else None,
                stop_price=price if otype in ("stop", "stop_limit") else None,
                extra={"kind": str(order.info.get("kind", "") or "")})
            order.addinfo(client_id=cid)
            self._ids_used.add(cid)
            self._tracked[cid] = {"order": order, "acked": False}
        self._orders_seen = len(broker.orders)

    def _order_updates(self, bar_ms: int) -> int:
        """Journal every status change and fill since the last bar; returns fills added."""
        fills = 0
        quote = self.s.symbol.split("/")[-1]
        for cid, rec in list(self._tracked.items()):
            order: bt.Order = rec["order"]
            st = order.status
            if st in (bt.Order.Accepted, bt.Order.Partial, bt.Order.Completed) and not rec["acked"]:
                self.journal.record_ack(cid, f"paper:{cid}", "open", bar_ms)
                rec["acked"] = True
            if st == bt.Order.Completed:
                ex = order.executed
                ts = bt_ms(ex.dt)
                trade_id = f"{cid}.{ts // 60_000:x}"
                if self.journal.record_fill(trade_id, cid, "buy" if order.isbuy() else "sell", float(ex.price),
                                            abs(float(ex.size)), float(ex.comm), quote, ts):
                    fills += 1
                self.journal.record_order_status(cid, "closed", ts, filled=abs(float(ex.size)))
            elif st == bt.Order.Canceled:
                self.journal.record_cancel(cid, bar_ms, "canceled by the strategy")
            elif st == bt.Order.Expired:
                self.journal.record_order_status(cid, "expired", bar_ms)
            elif st in (bt.Order.Margin, bt.Order.Rejected):
                self.journal.record_order_status(cid, "rejected", bar_ms)
            else:
                continue
            del self._tracked[cid]
        return fills

    def _trips(self, bar_ms: int) -> None:
        risk = self.strategy.risk
        for trip in risk.trips[self._trips_seen:]:
            self.journal.record_event(EVENT_BREAKER_TRIP, f"{trip.breaker}: {trip.reason}", trip.to_dict(), ts=bar_ms)
            if trip.breaker in HALTING_BREAKERS:
                self.journal.halt(f"{trip.breaker} breaker: {trip.reason}", bar_ms)
                risk.session_halted = True
                self._halt_trip = f"{trip.breaker} breaker tripped"
                self.s.emit(f"HALT {iso(bar_ms)}: {trip.breaker}: {trip.reason} "
                            f"(clear with: nts resume --state {self.s.state})")
        self._trips_seen = len(risk.trips)

    def _decision(self) -> tuple[float, float, float]:
        """(P, signal, weight) of this bar through the strategy's own hooks (NaN if they fail)."""
        strat = self.strategy
        try:
            return strat.bar_signal()
        except Exception:  # a user hook that cannot be evaluated outside next(): report, not crash
            return math.nan, math.nan, math.nan

    def _record(self, bar: Bar) -> None:
        strat = self.strategy
        broker = strat.broker
        risk: SessionRisk = strat.risk
        pos = broker.getposition(strat.data)
        p, s, w = self._decision()
        halt = self.journal.halted()
        breaker = f"halted: {halt.reason}" if halt is not None else risk.breaker_state()
        live = self.s.live
        if live:
            # write-ahead: the broker journals (and commits) each intent, then sends it
            broker.flush()
        strategy_state = {"strategy": strat.state_dict() if _has_state(strat) else None,
                          "session": {"halted": bool(risk.session_halted or halt is not None)}}
        with self.journal.atomic():
            if bar.missing_before:
                start = bar.ms - bar.missing_before * self.s.tf_ms
                self.journal.record_gap(start, bar.ms - self.s.tf_ms, int(bar.missing_before))
            if live:
                fills = broker.stats.fills - self._live_fills
                self._live_fills = broker.stats.fills
            else:
                self._new_intents(bar.ms)
                fills = self._order_updates(bar.ms)
            self._trips(bar.ms)
            halt = self.journal.halted()
            if halt is not None:
                breaker = f"halted: {halt.reason}"
                strategy_state["session"]["halted"] = True
            if live:
                strategy_state["session"]["broker"] = broker.state_dict()
            figures = BarFigures(float(strat.data.close[0]), p, s, w, float(pos.size),
                                 float(pos.price) if pos.size else math.nan, float(broker.getcash()),
                                 float(broker.getvalue()))
            self.journal.record_bar(bar.ms, figures, breaker, risk.state_dict(), strategy_state,
                                    model_id=strat.model_id() if hasattr(strat, "model_id") else None)
        if live and self._halt_trip:
            # after the bar's transaction (no network inside it): besides the strategy's own
            # flatten, cancel every open order of the session the exchange still has
            broker.cancel_session_orders(self._halt_trip)
        self._halt_trip = None
        self.s.on_bar_journaled(bar, fills)
        self.s.emit(f"{iso(bar.ms)}  close {strat.data.close[0]:,.2f}  P {p:.4f}  signal {s:+.3f}  "
                    f"weight {w:+.3f}  position {pos.size:.6f}  equity {broker.getvalue():,.2f}  "
                    f"breakers {breaker}" + (f"  [gap: {bar.missing_before} bars missing before]"
                                             if bar.missing_before else ""))


@dataclass(frozen=True)
class SessionOptions:
    """What a session trades and where, beyond the typed config (frozen; checked when built).

    ``strategy``: builtin name, ``module:Class``, ``file.py:Class`` or a class, with
    ``strategy_kwargs`` (copied); ``barriers``: ``bundle`` or ``config`` labels; ``coc``:
    cheat-on-close fills as in ``nts backtest --coc``; ``exchange_id``/``url``/``symbol``
    override ``cfg.broker.exchange``, ``cfg.broker.url`` and ``cfg.data.symbol``; ``max_bars``:
    stop after that many traded bars; ``allow_model_change``: resume a journal started with
    other model weights or trading config (journaled as a model_change event);
    ``install_signals``: SIGINT/SIGTERM stop the session (main thread only); ``poll``: how the
    feed waits for closed bars.
    """

    strategy: str | type = "tcn"
    strategy_kwargs: dict[str, Any] = field(default_factory=dict)
    barriers: str = "bundle"
    coc: bool = False
    exchange_id: str | None = None
    url: str | None = None
    symbol: str | None = None
    max_bars: int | None = None
    allow_model_change: bool = False
    install_signals: bool = True
    poll: PollPolicy = field(default_factory=PollPolicy)

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategy_kwargs", dict(self.strategy_kwargs or {}))
        object.__setattr__(self, "coc", bool(self.coc))
        if self.barriers not in ("bundle", "config"):
            raise SessionError(f"barriers must be 'bundle' or 'config', got {self.barriers!r}")
        if self.max_bars is not None and not (isinstance(self.max_bars, int) and self.max_bars >= 1):
            raise SessionError(f"max_bars must be a whole number >= 1, got {self.max_bars!r}")


@dataclass(frozen=True)
class LiveOptions(SessionOptions):
    """:class:`SessionOptions` of a live session: ``acknowledged`` (``--i-understand-live-trading``)
    and ``max_capital`` (a positive cap, in the quote currency, on the equity the strategy
    sizes from; None: the whole account)."""

    acknowledged: bool = False
    max_capital: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        cap = self.max_capital
        if cap is not None and not (math.isfinite(float(cap)) and float(cap) > 0):
            raise SessionError(f"--max-capital must be a positive amount of the quote currency, got {cap!r}")
        object.__setattr__(self, "max_capital", None if cap is None else float(cap))


#: the run-time collaborators of a session (not options): see :class:`PaperSession`
WIRING = ("emit", "sleep", "store", "stop", "control")


class PaperSession:
    """One paper session on journal ``state`` (see module docstring); :meth:`run` it.

    ``model``: bundle directory or its ``final_model.pt``; ``options``: a
    :class:`SessionOptions` (defaults when None). The rest is wiring: ``emit`` receives the
    start line and one status line per bar (the CLI prints them); ``sleep`` replaces the
    feed's waits (tests step the replay clock there); ``store`` an already built store;
    ``stop`` ends the run (signals set it too); ``control`` the operator's pause
    (:mod:`sessions.control`). :meth:`create` takes all of it as flat keywords.
    """

    #: journal mode (a journal is never reopened in another mode)
    mode = "paper"
    #: True: the exchange broker (LiveSession)
    live = False
    #: the options class this session takes
    options_type: type[SessionOptions] = SessionOptions

    def __init__(self, cfg: Config, model: str | Path, state: str | Path, options: SessionOptions | None = None, *,
                 emit: Callable[[str], None] | None = None, sleep: Callable[[float], None] | None = None,
                 store: CCXTStore | None = None, stop: threading.Event | None = None,
                 control: SessionControl | None = None) -> None:
        opts = options if options is not None else self.options_type()
        if not isinstance(opts, self.options_type):
            raise SessionError(f"{type(self).__name__} takes {self.options_type.__name__}, got {type(opts).__name__}")
        self.options = opts
        self.cfg = cfg
        self.model = Path(model)
        self.state = Path(state)
        self.strategy = opts.strategy
        self.exchange_id = opts.exchange_id or cfg.broker.exchange
        self.url = opts.url if opts.url is not None else cfg.broker.url
        self.symbol = opts.symbol or cfg.data.symbol
        self.max_bars = opts.max_bars
        self.strategy_kwargs = dict(opts.strategy_kwargs)
        self.barriers = opts.barriers
        self.allow_model_change = opts.allow_model_change
        self.install_signals = opts.install_signals
        self.coc = opts.coc
        self.poll = opts.poll
        self.emit_fn = emit
        self.sleep = sleep
        self.stop_event = stop or threading.Event()
        self.store = store
        self.control = control or SessionControl()  # operator pause (sessions/control.py)
        self.journal: Journal | None = None
        self.checkpoint: Checkpoint | None = None
        self.history_end_ms: int | None = None
        self.history_frame: pd.DataFrame | None = None      # primed warm-up bars (module docstring)
        self.strategy_state: dict[str, Any] | None = None   # the checkpoint's strategy state_dict()
        self.start_line = ""
        self.result: PaperResult | None = None
        self.spec: RunSpec | None = None                    # built by run(): bundle, strategy, costs, policy
        self.on_bar: Callable[[Bar, int], None] | None = None  # hook for tests and dashboards

    @classmethod
    def create(cls, cfg: Config, model: str | Path, state: str | Path, **kwargs: Any) -> "PaperSession":
        """The session from flat keywords: :data:`WIRING` names go to the constructor, the rest
        build :attr:`options_type` (an unknown name is a TypeError)."""
        wiring = {k: kwargs.pop(k) for k in WIRING if k in kwargs}
        return cls(cfg, model, state, cls.options_type(**kwargs), **wiring)

    # ------------------------------------------------------------------ plumbing
    def emit(self, line: str) -> None:
        """One line to the log and to ``emit``."""
        log.info(line)
        if self.emit_fn is not None:
            self.emit_fn(line)

    def _on_event(self, kind: str, message: str, data: dict) -> None:
        if self.journal is not None:
            self.journal.record_event(kind, message, data or None)
        self.emit(f"{kind}: {message}")

    def on_bar_journaled(self, bar: Bar, fills: int) -> None:
        """Called after each bar's transaction committed."""
        res = self.result
        res.bars += 1
        res.first_bar = bar.ms if res.first_bar is None else res.first_bar
        res.last_bar = bar.ms
        if self.on_bar is not None:
            self.on_bar(bar, fills)

    def _stop_aware_sleep(self, seconds: float) -> None:
        self.stop_event.wait(seconds)

    # ------------------------------------------------------------------ engine hooks
    def _prepare(self, cp: Checkpoint | None, cls: type) -> None:
        """After the store is up, before the warm-up: nothing to check for paper."""

    def _broker(self, feed: CCXTFeed) -> bt.BrokerBase:
        """The backtest's simulated broker and costs (one fill specification)."""
        return make_broker(self.spec.costs, cash=self.cfg.execution.cash, coc=self.coc)

    def _after_run(self, strat: Any) -> None:
        """After cerebro returned: nothing to clean up for paper."""

    # ------------------------------------------------------------------ run
    def run(self) -> PaperResult:
        """Run until stopped (signal, ``stop``, ``max_bars``, kill switch); returns what it did."""
        previous_handlers: dict[int, Any] = {}
        if self.install_signals and threading.current_thread() is threading.main_thread():
            # first thing: a SIGTERM while the bundle loads or the warm-up downloads stops cleanly too
            def on_signal(signum: int, frame: Any) -> None:
                self.stop_event.set()

            previous_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            # the one run specification (bundle, strategy, costs, policy, warm-up), no bars: the
            # history comes from the exchange once the journal is open
            self.spec = spec = RunSpec.build(self.cfg, model=self.model, strategy=self.strategy,
                                             barriers=self.barriers, coc=self.coc,
                                             strategy_kwargs=self.strategy_kwargs)
            bundle, cls, timeframe = spec.bundle, spec.strategy_cls, spec.timeframe
            self.tf_ms = timeframe_seconds(timeframe) * 1000
            identity = SessionIdentity(
                mode=self.mode, exchange=self.exchange_id, symbol=self.symbol, timeframe=timeframe,
                model_path=str(Path(getattr(bundle, "path", None) or self.model).resolve()),
                model_sha256=str(bundle.meta["weights_sha256"]), config_hash=trading_config_hash(
                    self.cfg, strategy=f"{cls.__module__}:{cls.__qualname__}", barriers=self.barriers, coc=self.coc,
                    strategy_kwargs=self.strategy_kwargs))
            journal = Journal.open(self.state, identity, allow_model_change=self.allow_model_change)
            self.journal = journal
            try:
                return self._run(spec)
            except BaseException as exc:
                try:
                    first = str(exc).splitlines()[0][:300] if str(exc) else ""
                    # user code's text (an exception message) may hold a secret: redacted like every log line
                    journal.record_event("error", redact(f"session stopped by an error: {exc.__class__.__name__}: "
                                                         f"{first}"))
                except Exception:  # the journal itself may be what failed
                    pass
                raise
            finally:
                journal.close()
        finally:
            for s, handler in previous_handlers.items():
                signal.signal(s, handler)

    def _run(self, spec: RunSpec) -> PaperResult:
        journal = self.journal
        self.checkpoint = cp = journal.last_checkpoint()
        self._check_resumable(cp, spec.strategy_cls)
        self.result = PaperResult(state=self.state, session_id=journal.session.session_id, resumed=cp is not None,
                                  resumed_from=None if cp is None else cp.bar_time)
        store = self.store or CCXTStore.from_config(self.cfg, exchange_id=self.exchange_id, url=self.url,
                                                    sleep=self._stop_aware_sleep)
        self.store = store
        store.check_market(self.symbol, spec.timeframe)
        self._prepare(cp, spec.strategy_cls)
        source = BarSource(store, self.symbol, spec.timeframe, policy=self.poll, stop=self.stop_event,
                           sleep=self.sleep, max_bars=self.max_bars, on_event=self._on_event)
        history = self._history(source, cp, spec)
        if history is None:
            self.result.stopped_by = "signal"
            return self.result
        # primed: all but the last warm-up bar go to the strategy as one frame (module docstring)
        primed = len(history) - 1 if primes_history(spec.strategy_cls) else 0
        self.history_frame = bars_frame(history[:primed]) if primed else None
        source.prime(history[primed:])
        self.history_end_ms = history[-1].ms
        self.result.warmup_bars = len(history)
        self._announce(cp, history, spec.timeframe)
        trade_start = pd.Timestamp(history[-1].ms + self.tf_ms, unit="ms", tz="UTC")
        cerebro = self._cerebro(spec, source, cp, trade_start)
        t0 = time.perf_counter()
        try:
            with user_code(spec.strategy_cls, f"running the {self.mode} session"):
                strat = cerebro.run()[0]
        finally:
            unfreeze_warmup()  # frozen at the end of the warm-up (SessionRecorder)
        elapsed = time.perf_counter() - t0
        self._after_run(strat)
        return self._finish(strat, source, store, elapsed)

    def _check_resumable(self, cp: Checkpoint | None, cls: type) -> None:
        """Take the checkpoint's strategy state; refuse to resume a position or working orders
        without one."""
        if cp is None:
            return
        self.strategy_state = (cp.strategy_state or {}).get("strategy")
        if self.strategy_state is None:
            open_orders = self.journal.intents(open_only=True)
            if cp.position or open_orders:
                raise SessionError(
                    f"{self.state}: cannot resume: the journal holds no strategy state ({cls.__name__} has no "
                    f"state_dict()/load_state()) and the "
                    f"last checkpoint ({iso(cp.bar_time)}) holds a position ({cp.position:g}) or "
                    f"{len(open_orders)} working orders")

    def _history(self, source: BarSource, cp: Checkpoint | None, spec: RunSpec) -> list | None:
        """The warm-up bars (``spec.warmup``, up to the checkpoint's bar when resuming), checked
        against the checkpoint; None when a stop came while they downloaded."""
        warm = spec.warmup
        history = source.history(warm, end_ms=None if cp is None else cp.bar_time)
        if self.stop_event.is_set():
            return None
        if not history:
            raise DataError(f"{self.exchange_id} {self.symbol} {spec.timeframe}: the exchange serves no closed bars")
        if cp is not None:
            last = history[-1]
            if last.ms != cp.bar_time:
                raise SessionError(f"{self.state}: cannot resume: the exchange no longer serves the last journaled "
                                   f"bar {iso(cp.bar_time)} (its newest bar up to it is {iso(last.ms)})")
            if not (last.close == cp.close or math.isclose(last.close, cp.close, rel_tol=1e-12)):
                raise SessionError(f"{self.state}: cannot resume: the exchange's close of bar {iso(cp.bar_time)} "
                                   f"({last.close!r}) differs from the journaled one ({cp.close!r})")
        if len(history) < warm:
            log.warning("only %d warm-up bars available (the model's warm-up is %d): probabilities may differ "
                        "from a backtest's at first", len(history), warm)
        return history

    def _announce(self, cp: Checkpoint | None, history: list, timeframe: str) -> None:
        """The start line (journaled; the CLI prints it), with the halt and daily-loss notes."""
        journal = self.journal
        sid = journal.session.session_id
        if cp is None:
            self.start_line = (f"new {self.mode} session {sid} on {self.exchange_id} {self.symbol} {timeframe} "
                               f"(journal {self.state}); warm-up {len(history)} bars {iso(history[0].ms)} .. "
                               f"{iso(history[-1].ms)}; trading from the next closed bar")
            journal.record_event("start", self.start_line, {"new": True, "warmup_bars": len(history)})
        else:
            n = journal.summary()["bars_processed"]
            self.start_line = (f"resumed {self.mode} session {sid} on {self.exchange_id} {self.symbol} {timeframe} "
                               f"(journal {self.state}) from bar {iso(cp.bar_time)} ({n} bars journaled, "
                               f"position {cp.position:g}, equity {cp.equity:,.2f}); warm-up {len(history)} bars; "
                               f"trading resumes at the next closed bar")
            journal.record_event("start", self.start_line, {"new": False, "resumed_from": int(cp.bar_time),
                                                            "warmup_bars": len(history)})
        halt = journal.halted()
        if halt is not None:
            self.start_line += (f"\nHALTED since {halt.ts_iso}: {halt.reason}; no new positions until "
                                f"nts resume --state {self.state}")
        daily = daily_halt_note(cp, self.tf_ms)
        if daily:
            self.start_line += "\n" + daily

    def _cerebro(self, spec: RunSpec, source: BarSource, cp: Checkpoint | None,
                 trade_start: pd.Timestamp) -> bt.Cerebro:
        """The session's cerebro: the exchange feed, the mode's broker, the strategy with the
        spec's params (the session's journaled risk manager; every bar scored as it closes)."""
        journal = self.journal
        cerebro = bt.Cerebro(stdstats=False, runonce=False, preload=False, quicknotify=False)
        feed = CCXTFeed.from_source(source)
        cerebro.adddata(feed)
        cerebro.setbroker(self._broker(feed))
        risk = SessionRisk(self.cfg.risk, journal)
        risk.control = self.control
        risk.on_resumed = lambda msg: (journal.record_event("resumed", msg), self.emit(msg))
        if cp is not None:
            risk.session_halted = bool(((cp.strategy_state or {}).get("session") or {}).get("halted", False))
        # the streaming path scores each bar: no batch probability cache
        params = spec.strategy_params(trade_start=trade_start, trade_end=None, risk=risk, prob_cache=False)
        if self.strategy_state is not None:
            params["state"] = self.strategy_state  # applied by the strategy on the checkpoint's bar
        if self.history_frame is not None:
            params["history"] = self.history_frame
        cerebro.addstrategy(spec.strategy_cls, **params)
        cerebro.addanalyzer(SessionRecorder, session=self)
        return cerebro

    def _finish(self, strat: Any, source: BarSource, store: CCXTStore, elapsed: float) -> PaperResult:
        """Why the run stopped, the last equity and the counters; the stop line (journaled, emitted)."""
        journal = self.journal
        res = self.result
        if self.max_bars is not None and source.stats.live >= self.max_bars:
            res.stopped_by = "max_bars"
        elif self.stop_event.is_set():
            res.stopped_by = "signal"
        elif strat.stopped_by_kill_switch:
            res.stopped_by = "kill_switch"
        halt = journal.halted()
        res.halted = None if halt is None else halt.reason
        cp_end = journal.last_checkpoint()
        res.equity = None if cp_end is None else cp_end.equity
        res.feed = dict(vars(source.stats))
        res.store = dict(vars(store.stats))
        line = (f"stopped ({res.stopped_by}) after {res.bars} bars in {elapsed:.1f}s"
                + (f", last bar {iso(res.last_bar)}" if res.last_bar is not None else "")
                + (f", equity {res.equity:,.2f}" if res.equity is not None else "")
                + f"; resume with the same command (journal {self.state})")
        journal.record_event("stop", line, {"stopped_by": res.stopped_by, "bars": res.bars})
        self.emit(line)
        return res


def run_paper(cfg: Config, model: str | Path, state: str | Path, **kwargs: Any) -> PaperResult:
    """``PaperSession.create(cfg, model, state, **kwargs).run()``."""
    return PaperSession.create(cfg, model, state, **kwargs).run()


def daily_halt_note(cp: Checkpoint | None, tf_ms: int) -> str:
    """A line for the start banner when the checkpoint's daily-loss breaker is tripped:
    whether it still holds on the next bar (same UTC day) or lifts (a later day)."""
    if cp is None or not (cp.risk_state or {}).get("daily_halted"):
        return ""
    day = pd.Timestamp(cp.bar_time, unit="ms", tz="UTC").normalize()
    nxt = pd.Timestamp(cp.bar_time + tf_ms, unit="ms", tz="UTC")
    until = (day + pd.Timedelta(days=1)).strftime("%Y-%m-%d %H:%M")
    if nxt.normalize() == day:
        return (f"daily-loss breaker tripped on {day:%Y-%m-%d}: no new positions until {until} UTC "
                "(it lifts by itself at the next UTC day)")
    return f"daily-loss breaker of {day:%Y-%m-%d} lifts at {until} UTC: trading again"


class LiveSession(PaperSession):
    """``nts live``: the paper session's feed, strategy, journal and restarts with the exchange
    broker :class:`brokers.ccxt_broker.CCXTBroker` (see the module docstrings of both).

    Takes :class:`LiveOptions`: ``acknowledged`` must be True (``--i-understand-live-trading``);
    ``max_capital`` caps the equity the strategy sizes from (the rest of the account is held
    back, fixed when the session is created). Keys come only from the environment variables named by
    ``broker.api_key_env``/``broker.secret_env``; without them the session refuses before
    it opens the journal or sends anything.
    """

    mode = "live"
    live = True
    options_type = LiveOptions

    def __init__(self, cfg: Config, model: str | Path, state: str | Path, options: LiveOptions | None = None,
                 **wiring: Any) -> None:
        super().__init__(cfg, model, state, options, **wiring)
        self.acknowledged = bool(self.options.acknowledged)
        self.max_capital = self.options.max_capital
        self.live_start: LiveStart | None = None
        self.broker: CCXTBroker | None = None

    def run(self) -> PaperResult:
        """Refuse without the acknowledgement or the keys (nothing opened, nothing sent), then run."""
        if not self.acknowledged:
            raise SessionError("live trading sends real orders: pass --i-understand-live-trading to start "
                               "(nothing was sent)")
        b = self.cfg.broker
        register_secret_env(b.api_key_env, b.secret_env)
        if self.store is None:
            self.store = CCXTStore.from_config(self.cfg, exchange_id=self.exchange_id, url=self.url,
                                               require_keys=True, sleep=self._stop_aware_sleep)
        elif not self.store.has_keys:
            raise SessionError(f"{self.exchange_id}: live trading needs API keys in the environment variables "
                               f"{b.api_key_env} and {b.secret_env} (nothing was sent)")
        return super().run()

    def checklist(self, timeframe: str) -> list[str]:
        """The pre-live checklist (never a key value)."""
        b, r = self.cfg.broker, self.cfg.risk
        quote = self.symbol.split("/")[-1]
        where = self.url or "the exchange's own API"
        cap = f"{self.max_capital:,.2f} {quote}" if self.max_capital is not None else "the whole account"
        return [
            "pre-live checklist:",
            f"  API keys     from environment variables {b.api_key_env} / {b.secret_env} (set; values never shown)",
            f"  exchange     {self.exchange_id} at {where}" + (" (sandbox)" if b.sandbox else ""),
            f"  symbol       {self.symbol} {timeframe}",
            f"  max capital  {cap}",
            f"  breakers     drawdown > {r.max_drawdown:.0%} (halt until nts resume), daily loss > {r.daily_loss:.0%} "
            f"(until the next UTC day), volatility > {r.max_volatility:.0%}/day (no entries), "
            f"max position {r.max_position:.0%}, leverage {r.max_leverage:g}",
            f"  kill switch  create {r.kill_switch_file} to flatten, cancel every open order of the session and stop",
            f"  journal      {self.state}",
        ]

    def _prepare(self, cp: Checkpoint | None, cls: type) -> None:
        """Checklist, then reconciliation: refuse (report + one line) when the journal and the
        exchange disagree in a way nothing explains. Only GET requests are sent here."""
        for line in self.checklist(self.journal.session.timeframe):
            self.emit(line)
        offset = self.store.sync_clock()  # signed requests carry the exchange's time from here on
        self.emit(f"  clock        host {offset:+d} ms off the exchange's clock; requests are signed with the "
                  "exchange's time (re-synced on -1021)")
        self.journal.record_event("clock", f"host clock {offset:+d} ms off the exchange's", {"offset_ms": offset})
        if not _has_state(cls):
            raise SessionError(f"live sessions need a strategy with state_dict()/load_state(); {cls.__name__} "
                               "has none")
        ledger = None
        if cp is not None:
            raw = ((cp.strategy_state or {}).get("session") or {}).get("broker")
            if raw is None:
                raise SessionError(f"{self.state}: the last checkpoint holds no live ledger")
            ledger = Ledger.from_dict(raw)
        else:
            starts = self.journal.events("live_start")
            if starts:
                ledger = Ledger.from_dict(starts[-1]["data"]["ledger"])
        start = reconcile(self.store, self.journal, self.symbol, ledger, max_capital=self.max_capital,
                          checkpoint_recorded=None if cp is None else cp.recorded_at)
        self.result.reconcile = start.report.lines()
        for line in self.result.reconcile:
            self.emit(line)
        if not start.report.ok:
            self.journal.record_event("reconcile_refused", f"refused to start: {len(start.report.problems)} "
                                      "unexplained difference(s)", {"problems": start.report.problems})
            raise SessionError(f"{self.state}: the journal disagrees with the exchange ({len(start.report.problems)} "
                               f"unexplained: {start.report.problems[0]}); nothing was sent (report above)")
        if start.new:
            self.journal.record_event("live_start", "live ledger at session start",
                                      {"ledger": start.ledger.to_dict(), "max_capital": self.max_capital})
        quote = self.symbol.split("/")[-1]
        if not start.new and self.max_capital is not None:
            self.emit(f"  note         --max-capital {self.max_capital:,.2f} does not change a running session: it "
                      "keeps the capital held back when it was created")
        self.emit(f"  capital      the strategy sizes from the account minus {start.ledger.reserve:,.2f} {quote} "
                  "held back" + (f" (max capital {self.max_capital:,.2f})" if self.max_capital is not None else ""))
        self.live_start = start

    def _broker(self, feed: CCXTFeed) -> bt.BrokerBase:
        cp = self.checkpoint
        journal = self.journal

        def on_halt(reason: str) -> None:
            bar = feed.current
            journal.halt(reason, bar.ms if bar is not None else 0)
            self.emit(f"HALT: {reason} (clear with: nts resume --state {self.state})")

        broker = self.store.getbroker(self.symbol, journal, self.live_start, tf_ms=self.tf_ms,
                                      checkpoint_recorded=None if cp is None else cp.recorded_at,
                                      on_event=self._on_event, on_halt=on_halt)
        broker.data = feed
        self.broker = broker
        halt = journal.halted()
        if halt is not None and halt.reason.startswith(("kill_switch", "drawdown")):
            broker.cancel_session_orders(f"session halted: {halt.reason}")
        return broker

    def _after_run(self, strat: Any) -> None:
        broker = self.broker
        if broker is None:
            return
        if strat.stopped_by_kill_switch:
            broker.cancel_session_orders("kill switch")
        self.result.broker = dict(vars(broker.stats))


def run_live(cfg: Config, model: str | Path, state: str | Path, **kwargs: Any) -> PaperResult:
    """``LiveSession.create(cfg, model, state, **kwargs).run()``."""
    return LiveSession.create(cfg, model, state, **kwargs).run()
