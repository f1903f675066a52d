"""CCXTBroker: the live broker of ``nts live`` -- backtrader orders become exchange orders.

The strategy is the unchanged :class:`strategies.base.ModelStrategy` subclass; this broker
stands where the simulated :class:`strategies.bt_broker.BacktestBroker` stands in a
backtest or a paper session, and speaks backtrader's broker API (``buy``/``sell``/``cancel``,
``getcash``/``getvalue``/``getposition``, order notifications Submitted, Accepted, Partial,
Completed, Canceled, Rejected).

**When orders are sent.** Orders the strategy creates during a bar's ``next()`` are queued and
sent together by :meth:`CCXTBroker.flush`, which the session calls right after the decision
(and :meth:`next` calls for anything left over). Sending the bar's orders as one batch lets
the broker see OCO pairs whole (ModelStrategy creates a stop and a take profit one after the
other) and keeps program order (a flatten's cancels reach the exchange before its sell).
Cancels are sent at once.

**Client order ids** are :func:`brokers.orders.deterministic_client_id` of (session, bar,
order role, attempt): the bar is the order's decision bar, for barrier exits the bar of their
entry. Every order is **journaled (and committed) before it is sent** and sent through
:meth:`brokers.ccxt_store.CCXTStore.submit` (sent once; a lost answer is looked up by client
id before anything else is sent: never a blind re-send). A restarted session that decides a
bar again asks the journal for the id first: an order the first process already journaled is
**adopted** (linked to the new backtrader order), never sent again; orders working at the
checkpoint that the strategy re-submits on restore are linked to their journaled ids by role
and side. OCO lists use ``<stop leg id>.oco`` as list client id.

**Brackets on spot.** Binance spot has no bracket order and a resting stop plus a resting
take profit would each lock the whole base amount, so the exits go out as ONE **OCO order
list** (``POST /api/v3/orderList/oco``: a LIMIT_MAKER take profit above, a STOP_LOSS stop
below, one reservation) as soon as the broker learns that the entry filled: in the entry's
order answer for a market entry (so the exits are on the exchange a moment after the entry
fill), at the next poll for a resting limit entry. Both legs are journaled before the list is
sent. When the market has already passed a barrier (the exchange refuses the list) the
position is closed at market under that barrier's role. Exits left behind (an OCO leg whose
position is gone) are canceled: one leg filling expires the other on the exchange; a flatten
cancels the list; a session stopped by the kill switch cancels every open order of the session.

**Fills** come from the exchange's trades (``myTrades`` from the last trade id), journaled
idempotently by trade id and applied **at the bar they belong to**: a trade at exchange time
``T`` is applied when the session processes the bar that contains ``T`` (before its
``next()``), just as the simulated broker fills an order on the bar it trades in. A
restarted session therefore applies fills that happened while it was down on the same bars
as an uninterrupted one. Partial fills are applied one trade at a time (``Partial``
notifications); the order completes when the exchange says it is done. The position is the
account's base balance at its average fill price (the buyer's fee, paid in the base asset,
reduces it); dust below the market's minimum order is reported as no position. Fees are the
ones the exchange reports per trade. Cash is the quote balance minus the capital held back by
``--max-capital``; value is cash plus the base balance at the bar's close. The broker keeps
this **ledger** from the trades and checks it against the exchange's balances every bar: a
balance that moved by itself halts the session (``on_halt``).

**Defined behaviour of the known live failure modes.**

* *A fill racing a cancel*: the cancel answer is "unknown order" (it already filled) or
  shows executed quantity: the order is looked up, its fills are journaled and applied on
  their bar and the backtrader order COMPLETES (never Canceled); a sell decided from the
  stale position (e.g. the flatten after the cancel) is capped at the base actually free, and
  nothing is sent when that is below the minimum order (journaled as skipped).
* *A partly filled entry the strategy cancels*: the rest is canceled and the entry completes
  with what filled, so its exits are placed for that amount.
* *Precision and minimum notional*: amounts with ccxt ``amount_to_precision`` (truncated to
  the lot step), prices with ``price_to_precision``; an order below the market's minimum
  amount or minimum notional is not sent: journaled as an intent and canceled with reason
  ``skipped: ...``, the backtrader order Rejected.
* *A stale decision*: an entry decided on a bar that closed more than one bar before the
  exchange's clock (bars backfilled after a pause or a restart) is not sent (journaled as
  skipped, ``stale``): the price it was sized for is gone. Exits decided on such bars are
  sent (closing is never stale), and orders the first process already sent are adopted.
* *Refusals*: an order the exchange refuses is journaled ``rejected`` and notified Rejected;
  one that could not be placed after the retries is journaled canceled and Rejected; one whose
  answer was lost and whose lookups failed is *in doubt*: linked, looked up at every bar,
  never sent again (after ``DOUBT_POLLS`` bars without a trace it never arrived).
* *Never an unprotected position without saying so*: exits the exchange refuses (balance
  after fees, filters) are retried once with the amount held, then the position is closed
  at market, and if that fails too entries are halted (journal halt) with an ALERT event.
  A limit entry that fills in parts gets an *interim* exit list for what is held at once
  (replaced as fills arrive, by the final list when the entry completes; an interim exit
  that executes ends the entry), and a partly filled entry is canceled at the strategy's
  ``limit_tif_bars``. These rules live in :mod:`brokers.protection`.
* *IP ban* (418): the store stops all traffic for the ban's time; entries of that bar are
  skipped (an entry hit by the ban is not sent after it), an ALERT event is journaled, and
  the next bar trades again.

Every exchange call goes through the store (:mod:`brokers.ccxt_store`), whose per-exchange
quirks live in :mod:`brokers.exchanges`; this module only translates backtrader orders.
"""
from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any, Callable

import backtrader as bt
import numpy as np
import pandas as pd

from brokers.ccxt_store import CCXTStore, ExchangeRefused, OrderInDoubt
from brokers.exchange import RetriesExhausted
from brokers.live_orders import EPS as _EPS
from brokers.live_orders import BrokerStats, XOrder
from brokers.orders import TERMINAL_STATUSES, OrderJournal, deterministic_client_id
from brokers.protection import Protection
from brokers.account import (
    BALANCE_TOL,
    ExchangeOrder,
    Ledger,
    LiveStart,
    TradeRec,
    balances,
    fetch_trades_from,
)
from core.errors import NtsError
from core.timeframes import bt_num_to_ns, ns_to_bt_num

log = logging.getLogger("nts.live")

#: strategy order ``kind`` tag -> journal order role (client id letter)
KIND_ROLES = {"entry": "entry", "stop": "stop_loss", "take_profit": "take_profit", "time": "exit",
              "risk": "flatten", "kill": "flatten", "halt": "flatten"}
#: backtrader execution type -> journal order type
BT_TYPES = {bt.Order.Market: "market", bt.Order.Limit: "limit", bt.Order.Stop: "stop",
            bt.Order.StopLimit: "stop_limit", bt.Order.Close: "market"}
#: polls (bars) an order in doubt is looked up before it counts as never arrived
DOUBT_POLLS = 3


def bt_ms(num: float) -> int:
    """A backtrader date number as epoch ms (bars sit on whole seconds)."""
    return int(bt_num_to_ns(np.array([num]))[0] // 1_000_000)


def _iso(ms: int) -> str:
    return pd.Timestamp(int(ms), unit="ms", tz="UTC").strftime("%Y-%m-%d %H:%M")


def _bt_num(ms: int) -> float:
    return float(ns_to_bt_num(np.array([int(ms) * 1_000_000], dtype="int64"))[0])


class CCXTBroker(bt.BrokerBase):
    """The live broker (see the module docstring).

    ``store``: the session's :class:`~brokers.ccxt_store.CCXTStore` (with keys); ``journal``:
    the open session journal; ``start``: what :func:`sessions.reconcile.reconcile` found
    (ledger, the exchange's view of the journal's orders, fills after the ledger);
    ``checkpoint_recorded``: when the ledger's checkpoint was written (journaled intents
    after it may be adopted by id). ``on_event(kind, message, data)`` and ``on_halt(reason)``
    are the session's (journal event + status line; journal halt).
    """

    def __init__(self, store: CCXTStore, symbol: str, journal: OrderJournal, start: LiveStart, *, tf_ms: int,
                 checkpoint_recorded: int | None = None,
                 on_event: Callable[[str, str, dict], None] | None = None,
                 on_halt: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.store = store
        self.symbol = symbol
        self.journal = journal
        self.session_id = journal.session.session_id
        self.tf_ms = int(tf_ms)
        self.on_event = on_event
        self.on_halt = on_halt
        store.load_markets()
        self.market = store.market(symbol)
        self.base, self.quote = self.market["base"], self.market["quote"]
        limits = self.market.get("limits") or {}
        self.min_amount = float((limits.get("amount") or {}).get("min") or 0.0)
        self.min_cost = float((limits.get("cost") or {}).get("min") or 0.0)
        led = start.ledger
        self.base_total, self.quote_total = float(led.base), float(led.quote)
        self.pos_price, self.last_trade_id, self.reserve = float(led.pos_price), int(led.last_trade_id), float(led.reserve)
        self._pos = bt.Position(size=self.base_total, price=self.pos_price)
        self._visible = bt.Position()
        self.data: Any = None
        self._close = math.nan
        self._bar_ms: int | None = None
        self.stats = BrokerStats()
        self.protection = Protection(self)
        self._notifs: deque[bt.Order] = deque()
        self._queue: list[list[bt.Order]] = []
        self._children: dict[int, list[bt.Order]] = {}
        self._parent_x: dict[int, XOrder] = {}      # bracket parent ref -> its exchange order
        self._bt: dict[int, XOrder] = {}            # backtrader order ref -> exchange order
        self._x: dict[str, XOrder] = {}
        self._by_eid: dict[str, XOrder] = {}
        self._ids_used: set[str] = set()
        self._trades: dict[int, TradeRec] = {}
        self._pending: list[int] = []
        self._journaled = {f.trade_id for f in journal.fills()}
        self._drift_reported = False
        self._load(start, checkpoint_recorded)
        store.ban_listeners.append(lambda msg, seconds: self._event("ip_ban", f"ALERT: {msg}", seconds=seconds))
        self.startingcash = self.getcash()  # backtrader's writers read it

    # ------------------------------------------------------------------ start-up state
    def _load(self, start: LiveStart, checkpoint_recorded: int | None) -> None:
        """Exchange orders a restarted strategy may claim: those working at the checkpoint
        and every intent journaled after it; fills after the ledger's last trade id."""
        working = set(start.ledger.working)
        for i in self.journal.intents():
            if i.client_id not in working and checkpoint_recorded is not None and i.recorded_at <= checkpoint_recorded:
                continue
            view = start.orders.get(i.client_id)
            x = XOrder(cid=i.client_id, role=i.role, side=i.side, otype=i.order_type, amount=i.amount,
                       bar_time=i.bar_time, price=i.price, stop_price=i.stop_price,
                       list_cid=(i.extra or {}).get("oco"), eid=(view.eid if view else None) or i.exchange_order_id,
                       status=view.status if view is not None else i.status,
                       filled=view.filled if view is not None else float(i.filled or 0.0),
                       updated=view.updated if view is not None else i.status_ts,
                       never_sent=(i.cancel_reason or "").startswith("never reached"),
                       interim_for=(i.extra or {}).get("interim"))
            self._x[x.cid] = x
            if x.eid:
                self._by_eid[x.eid] = x
        self._restorable = [c for c in start.ledger.working if c in self._x and self._x[c].interim_for is None]
        for t in start.trades:
            self._trades[t.tid] = t
            self._pending.append(t.tid)
        self._pending.sort()
        pending_by_eid: dict[str, float] = {}
        for tid in self._pending:
            t = self._trades[tid]
            pending_by_eid[t.order_id] = pending_by_eid.get(t.order_id, 0.0) + t.amount
        for x in self._x.values():
            x.applied = max(0.0, x.filled - pending_by_eid.get(x.eid or "", 0.0))
        self._fetch_from = max([self.last_trade_id, *self._trades]) + 1
        self._refresh_visible()

    # ------------------------------------------------------------------ backtrader API
    def getcash(self) -> float:
        """Quote balance minus the capital held back by ``--max-capital``."""
        return self.quote_total - self.reserve

    def getvalue(self, datas: Any = None) -> float:
        """Cash plus the base balance at the bar's close (see module docstring)."""
        price = self._close if math.isfinite(self._close) else self.pos_price
        return self.getcash() + self.base_total * price

    def getposition(self, data: Any = None, clone: bool = True) -> bt.Position:
        """The position as the strategy sees it (dust below the minimum order: none)."""
        return self._visible

    def get_notification(self) -> bt.Order | None:
        try:
            return self._notifs.popleft()
        except IndexError:
            return None

    def get_orders_open(self, safe: bool = False) -> list[bt.Order]:
        """Alive backtrader orders (queued, waiting for a parent, or on the exchange)."""
        seen: dict[int, bt.Order] = {}
        for group in self._queue:
            for o in group:
                seen[o.ref] = o
        for kids in self._children.values():
            for o in kids:
                seen[o.ref] = o
        for x in self._bt.values():
            if x.order is not None:
                seen[x.order.ref] = x.order
        return [o for o in seen.values() if o.alive()]

    def buy(self, owner, data, size, price=None, plimit=None, exectype=None, valid=None, tradeid=0, oco=None,
            trailamount=None, trailpercent=None, parent=None, transmit=True, histnotify=False, _checksubmit=True,
            **kwargs) -> bt.Order:
        order = bt.BuyOrder(owner=owner, data=data, size=size, price=price, pricelimit=plimit, exectype=exectype,
                            valid=valid, tradeid=tradeid, trailamount=trailamount, trailpercent=trailpercent,
                            parent=parent, transmit=transmit, histnotify=histnotify)
        return self._submit(order, oco, kwargs)

    def sell(self, owner, data, size, price=None, plimit=None, exectype=None, valid=None, tradeid=0, oco=None,
             trailamount=None, trailpercent=None, parent=None, transmit=True, histnotify=False, _checksubmit=True,
             **kwargs) -> bt.Order:
        order = bt.SellOrder(owner=owner, data=data, size=size, price=price, pricelimit=plimit, exectype=exectype,
                             valid=valid, tradeid=tradeid, trailamount=trailamount, trailpercent=trailpercent,
                             parent=parent, transmit=transmit, histnotify=histnotify)
        return self._submit(order, oco, kwargs)

    def _submit(self, order: bt.Order, oco: bt.Order | None, info: dict[str, Any]) -> bt.Order:
        order.addinfo(**info)
        order.addcomminfo(self.getcommissioninfo(order.data))
        if self.data is None:
            self.data = order.data
        order.submit(self)
        self._notify(order)
        if order.parent is not None:
            # a bracket child: goes to the exchange once its parent has filled
            self._children.setdefault(order.parent.ref, []).append(order)
        elif oco is not None:
            group = next((g for g in self._queue if any(o.ref == oco.ref for o in g)), None)
            if group is None:
                self._queue.append([order])  # its partner was sent earlier: an order of its own
            else:
                group.append(order)
        else:
            self._queue.append([order])
        return order

    def cancel(self, order: bt.Order, bracket: bool = False) -> bool:
        """Cancel ``order``: dropped when not sent yet, else canceled on the exchange (an
        OCO leg cancels its list). A cancel that finds the order filled completes it."""
        if not order.alive():
            return False
        x = self._bt.get(order.ref)
        if x is None:
            for group in self._queue:
                if order in group:
                    group.remove(order)
            for kids in self._children.values():
                if order in kids:
                    kids.remove(order)
            order.cancel()
            self._notify(order)
            self._cancel_children(order)
            return True
        self._cancel_x(x)
        return True

    def _notify(self, order: bt.Order) -> None:
        self._notifs.append(order.clone())

    def next(self) -> None:
        """Per bar, before the strategy's ``next()``: send what is still queued; on a live
        bar poll the exchange (fills, statuses, balances) and apply what belongs to this bar."""
        if self._queue:
            self.flush()
        bar = getattr(self.data, "current", None) if self.data is not None else None
        if bar is None:
            return
        self._bar_ms = int(bar.ms)
        self._close = float(self.data.close[0])
        if bar.history:
            self._refresh_visible()
            return
        if self.store.entries_blocked:
            self.store.entries_blocked = False  # a bar after the ban: entries may go out again
            self._event("ban_lifted", "IP ban over: trading again")
        self._poll()
        self.protection.enforce_tif()
        self._apply(bar.ms + self.tf_ms)
        self.protection.follow_partial_fills()
        self._check_balances()

    # ------------------------------------------------------------------ helpers
    def _now(self) -> int:
        """Journal time of broker actions: the close of the bar being processed (the
        exchange clock, which may be a replay's, not the host's)."""
        return (self._bar_ms or 0) + self.tf_ms

    def _event(self, kind: str, message: str, **data: Any) -> None:
        log.info("%s: %s", kind, message)
        if self.on_event is not None:
            self.on_event(kind, message, data)
        else:
            self.journal.record_event(kind, message, data or None)

    def _role(self, order: bt.Order) -> str:
        return KIND_ROLES.get(str(order.info.get("kind", "") or ""), "rebalance")

    def _amount(self, x: float) -> str | None:
        """``x`` truncated to the lot step as the exchange's string (None: below one step)."""
        return self.store.amount_to_precision(self.symbol, max(0.0, x))

    def _price(self, x: float) -> str:
        return self.store.price_to_precision(self.symbol, x)

    def _sellable(self, amount: float, price: float | None = None) -> bool:
        price = price if price is not None else (self._close if math.isfinite(self._close) else self.pos_price)
        a = self._amount(amount)
        return a is not None and float(a) >= self.min_amount and float(a) * price >= self.min_cost

    def _refresh_visible(self) -> None:
        size = self.base_total if self._sellable(self.base_total) else 0.0
        self._visible.fix(size, self.pos_price if size else 0.0)

    def _free_base(self) -> float:
        bal = self.store.balance()
        return float((bal.get(self.base) or {}).get("free") or 0.0)

    def _last_price(self) -> float:
        return self.store.last_price(self.symbol)

    def _link(self, x: XOrder, order: bt.Order) -> None:
        x.order = order
        self._bt[order.ref] = x
        order.addinfo(client_id=x.cid)
        if order.alive():
            order.accept(self)
            self._notify(order)

    def _claim(self, order: bt.Order, role: str, side: str, base_bar: int, restoring: bool) -> tuple[str, XOrder | None]:
        """The client id for ``order``, and the exchange order it is (adopted), if any."""
        if restoring:
            for cid in list(self._restorable):
                x = self._x[cid]
                if x.order is None and x.role == role and x.side == side:
                    self._restorable.remove(cid)
                    self.stats.adopted += 1
                    return cid, x
        attempt = 0
        while True:
            cid = deterministic_client_id(self.session_id, base_bar, role, attempt)
            attempt += 1
            if cid in self._ids_used:
                continue
            self._ids_used.add(cid)
            x = self._x.get(cid)
            if x is not None and x.order is None and not x.never_sent:
                self.stats.adopted += 1
                return cid, x
            if x is not None and x.never_sent:
                continue  # decided again: sent now under the next attempt's id
            if x is None and self.journal.intent(cid) is None:
                return cid, None

    def _journal_status(self, x: XOrder, ts: int, reason: str | None = None) -> None:
        """Journal the exchange's latest word on ``x`` (no-op when nothing changed)."""
        intent = self.journal.intent(x.cid)
        if intent is None or intent.terminal:
            return
        if x.status == "canceled":
            self.journal.record_cancel(x.cid, ts, reason or "canceled on the exchange")
        elif x.status in TERMINAL_STATUSES or x.status == "open":
            if intent.status == "intent" and x.eid:
                self.journal.record_ack(x.cid, x.eid, "open", ts)
            self.journal.record_order_status(x.cid, x.status, ts, filled=x.filled, exchange_order_id=x.eid)

    def _update(self, x: XOrder, view: ExchangeOrder) -> None:
        x.eid = view.eid or x.eid
        if x.eid:
            self._by_eid[x.eid] = x
        x.filled = max(x.filled, view.filled)
        if view.status != x.status:
            x.updated = int(view.updated) if view.updated is not None else self._now()
        x.status = view.status

    # ------------------------------------------------------------------ sending
    def flush(self) -> None:
        """Send (or, after a restart, adopt) the orders queued since the last flush, in
        creation order; OCO pairs as one order list."""
        queue, self._queue = self._queue, []
        bar = getattr(self.data, "current", None) if self.data is not None else None
        restoring = bool(bar is not None and bar.history)
        for group in queue:
            alive = [o for o in group if o.alive()]
            if len(alive) == 2 and self._is_exit_pair(alive):
                self._send_pair(alive, bt_ms(alive[0].created.dt), restoring)
            else:
                for o in alive:
                    self._send_single(o, restoring)
        if queue and not restoring:
            self.protection.follow_partial_fills()  # an entry that filled in part at once is protected at once

    @staticmethod
    def _is_exit_pair(orders: list[bt.Order]) -> bool:
        a, b = orders
        kinds = {a.exectype, b.exectype}
        return kinds == {bt.Order.Stop, bt.Order.Limit} and a.isbuy() == b.isbuy()

    def _skip(self, order: bt.Order, cid: str, role: str, base_bar: int, amount: float, reason: str) -> None:
        """Below the minimum order: journaled (intent + cancel 'skipped'), not sent, Rejected."""
        side = "buy" if order.isbuy() else "sell"
        otype = BT_TYPES.get(order.exectype, "market")
        with self.journal.atomic():
            self.journal.record_intent(cid, base_bar, role, side, otype, max(amount, 1e-12),
                                       extra={"kind": str(order.info.get("kind", "") or ""), "skipped": reason})
            self.journal.record_cancel(cid, self._now(), f"skipped: {reason}")
        self.stats.skipped += 1
        order.addinfo(client_id=cid)
        order.reject(self)
        self._notify(order)
        self._cancel_children(order)
        self._event("order_skipped", f"{role} {side} {amount:.8f} {self.base} not sent: {reason}", client_id=cid)

    def _send_single(self, order: bt.Order, restoring: bool, force_market: bool = False,
                     role: str | None = None) -> XOrder | None:
        role = role or self._role(order)
        side = "buy" if order.isbuy() else "sell"
        parent_x = self._parent_x.get(order.parent.ref) if order.parent is not None else None
        base_bar = parent_x.bar_time if parent_x is not None else bt_ms(order.created.dt)
        cid, adopted = self._claim(order, role, side, base_bar, restoring)
        if adopted is not None:
            self._link(adopted, order)
            self._after_link(order, adopted)
            return adopted
        why_not = self._entry_refusal(base_bar) if role == "entry" and not restoring else None
        if why_not is not None:
            self._skip(order, cid, role, base_bar, abs(float(order.created.size)), why_not)
            return None
        otype = "market" if force_market else BT_TYPES.get(order.exectype, "market")
        want = abs(float(order.executed.remsize or order.created.size))
        if side == "sell":
            self.protection.drop_interim()  # a sell closes the position: the base they reserve is needed
            want = min(want, self._free_base())
        amount = self._amount(want)
        price = self._price(order.created.price) if otype == "limit" else None
        stop = self._price(order.created.price) if otype == "stop" else None
        ref = float(price or stop or (self._close if math.isfinite(self._close) else order.created.price))
        if amount is None or float(amount) < self.min_amount or float(amount) * ref < self.min_cost:
            small = amount is None or float(amount) < self.min_amount
            self._skip(order, cid, role, base_bar, want if small else float(amount), self._too_small(want, amount, ref))
            return None
        extra = {"kind": str(order.info.get("kind", "") or "")}
        self.journal.record_intent(cid, base_bar, role, side, otype, float(amount),
                                   price=None if price is None else float(price),
                                   stop_price=None if stop is None else float(stop), extra=extra)
        x = XOrder(cid=cid, role=role, side=side, otype=otype, amount=float(amount), bar_time=base_bar,
                   price=None if price is None else float(price), stop_price=None if stop is None else float(stop))
        self._x[cid] = x
        params: dict[str, Any] = {}
        ctype = otype
        if otype == "stop":
            ctype, params = "market", {"stopLossPrice": float(stop)}
        try:
            resp = self.store.submit(self.symbol, ctype, side, float(amount), None if price is None else float(price),
                                     cid, params, entry=role == "entry")
        except ExchangeRefused as exc:
            self._refused(x, order, str(exc))
            return None
        except RetriesExhausted as exc:
            self._not_placed(x, order, str(exc))
            return None
        except OrderInDoubt as exc:
            self._in_doubt(x, order, str(exc))
            return x
        self.stats.sent += 1
        self._acked(x, ExchangeOrder.from_ccxt(resp))
        self._link(x, order)
        self._after_link(order, x)
        return x

    def _entry_refusal(self, base_bar: int) -> str | None:
        """Why an entry decided on ``base_bar`` must not be sent now (None: it may): an IP ban
        during this bar, or a stale decision -- a bar that closed more than a bar before the
        exchange's clock (backfilled after a pause or a restart): the market has moved on
        (exits are still sent)."""
        if self.store.entries_blocked:
            return "entries halted: the exchange banned this IP (HTTP 418) during this bar"
        now = self.store.fetch_time()
        if now is not None and now > base_bar + 2 * self.tf_ms:
            return f"stale: decided on the bar of {_iso(base_bar)}, the exchange is at {_iso(now)}"
        return None

    def _too_small(self, want: float, amount: str | None, ref: float) -> str:
        """Why an order of ``amount`` (``want`` before the lot step) at ``ref`` is below the
        market's minimum amount or notional."""
        if amount is None or float(amount) < self.min_amount:
            return f"amount {want:.8f} below the market's minimum {self.min_amount:g} {self.base}"
        return f"notional {float(amount) * ref:.2f} below the market's minimum {self.min_cost:g} {self.quote}"

    def _refused(self, x: XOrder, order: bt.Order, why: str) -> None:
        x.status = "rejected"
        self.journal.record_order_status(x.cid, "rejected", self._now())
        self.stats.rejected += 1
        order.addinfo(client_id=x.cid)
        order.reject(self)
        self._notify(order)
        self._cancel_children(order)
        self._event("order_rejected", f"{x.role} {x.side} {x.amount:.8f} refused by the exchange: {why}",
                    client_id=x.cid)

    def _in_doubt(self, x: XOrder, order: bt.Order, why: str) -> None:
        """An order that may or may not be on the exchange: linked and looked up at every poll
        (never sent again); after :data:`DOUBT_POLLS` polls that do not find it, it never arrived."""
        x.doubt_polls = 0
        self._link(x, order)
        self._event("order_in_doubt", f"{x.role} {x.side} {x.amount:.8f}: {why}; looked up at every bar, "
                    "never sent again", client_id=x.cid)

    def _not_placed(self, x: XOrder, order: bt.Order, why: str) -> None:
        x.status = "canceled"
        self.journal.record_cancel(x.cid, self._now(), f"not placed: {why}"[:300])
        self.stats.rejected += 1
        order.addinfo(client_id=x.cid)
        order.reject(self)
        self._notify(order)
        self._cancel_children(order)
        self._event("order_not_placed", f"{x.role} {x.side} {x.amount:.8f} not placed: {why}", client_id=x.cid)

    def _acked(self, x: XOrder, view: ExchangeOrder) -> None:
        self._update(x, view)
        ts = int(view.updated or self._now())
        with self.journal.atomic():
            self.journal.record_ack(x.cid, x.eid or "?", "open", ts)
            if x.status != "open" or x.filled > 0:
                self.journal.record_order_status(x.cid, x.status, ts, filled=x.filled, exchange_order_id=x.eid)
        if x.filled > 0:
            self._fetch_trades()

    def _after_link(self, order: bt.Order, x: XOrder) -> None:
        """A bracket parent that is on the exchange: its exits go out once it has filled."""
        if order.ref in self._children:
            self._parent_x[order.ref] = x
            if x.status == "closed":
                self._place_children(order)

    def _cancel_children(self, order: bt.Order) -> None:
        for kid in self._children.pop(order.ref, []):
            if kid.alive():
                x = self._bt.get(kid.ref)
                if x is not None:
                    self._cancel_x(x)
                else:
                    kid.cancel()
                    self._notify(kid)
        self._parent_x.pop(order.ref, None)

    def _place_children(self, parent: bt.Order) -> None:
        """The exits of a filled bracket parent: one OCO list (stop + take profit), in place
        of the interim list that protected its partial fills."""
        kids = [k for k in self._children.get(parent.ref, []) if k.alive() and k.ref not in self._bt]
        px = self._parent_x.get(parent.ref)
        if px is not None:
            self.protection.drop_interim(px.cid)
        if not kids:
            return
        base_bar = px.bar_time if px is not None else bt_ms(parent.created.dt)
        if len(kids) == 2 and self._is_exit_pair(kids):
            self._send_pair(kids, base_bar, restoring=False)
        else:
            for k in kids:
                self._send_single(k, restoring=False)

    def _send_pair(self, legs: list[bt.Order], base_bar: int, restoring: bool, tries: int = 0) -> None:
        """Two exits of one position as one OCO order list (see module docstring); a refused
        list is retried once with the amount held, then the position is closed at market
        (:meth:`brokers.protection.Protection.refused`)."""
        stop = next(o for o in legs if o.exectype == bt.Order.Stop)
        tp = next(o for o in legs if o.exectype == bt.Order.Limit)
        side = "buy" if stop.isbuy() else "sell"
        cid_s, xs = self._claim(stop, "stop_loss", side, base_bar, restoring)
        cid_t, xt = self._claim(tp, "take_profit", side, base_bar, restoring)
        if xs is not None or xt is not None:  # the list exists already (restart): link what is there
            self._adopt_pair(((stop, xs), (tp, xt)))
            return
        want = min(abs(float(stop.executed.remsize or stop.created.size)),
                   abs(float(tp.executed.remsize or tp.created.size)))
        if side == "sell":
            want = min(want, self._free_base())
        amount = self._amount(want)
        sp, tpp = self._price(stop.created.price), self._price(tp.created.price)
        last = self._last_price()
        if amount is not None and float(amount) >= self.min_amount and self._exit_if_passed(stop, tp, sp, tpp, last,
                                                                                              restoring):
            return
        ref = min(float(sp), float(tpp))
        if amount is None or float(amount) < self.min_amount or float(amount) * ref < self.min_cost:
            why = self._too_small(want, amount, ref)
            self._skip(stop, cid_s, "stop_loss", base_bar, want, why)
            self._skip(tp, cid_t, "take_profit", base_bar, want, why)
            return
        xs, xt = self.record_exit_list(cid_s, cid_t, base_bar, side, amount, sp, tpp)
        try:
            self.store.submit_oco(self.symbol, side, amount, sp, tpp, xs.list_cid, cid_s, cid_t)
        except ExchangeRefused as exc:
            self.protection.refused(legs, (xs, xt), base_bar, tries, str(exc))
            return
        except RetriesExhausted as exc:
            for x, o in ((xs, stop), (xt, tp)):
                self._not_placed(x, o, str(exc))
            self.protection.unprotected(f"exits of {amount} {self.base} could not be placed: {exc}")
            return
        except OrderInDoubt as exc:
            for x, o in ((xs, stop), (xt, tp)):
                self._in_doubt(x, o, str(exc))
            return
        self.stats.sent += 1
        self.stats.oco_lists += 1
        for x, o in ((xs, stop), (xt, tp)):
            self.ack_leg(x)
            self._link(x, o)

    def _adopt_pair(self, legs: tuple[tuple[bt.Order, XOrder | None], ...]) -> None:
        """After a restart: link the legs of an exit list the journal already has; a leg the
        exchange never had is gone with its list."""
        for o, x in legs:
            if x is not None:
                self._link(x, o)
            else:
                o.cancel()
                self._notify(o)

    def _exit_if_passed(self, stop: bt.Order, tp: bt.Order, sp: str, tpp: str, last: float, restoring: bool) -> bool:
        """When the last price is already beyond a barrier, that barrier's exit goes out at
        market now (the exchange would refuse the list) and the other leg is canceled: True."""
        sell = not stop.isbuy()
        passed = (last <= float(sp) or last >= float(tpp)) if sell else (last >= float(sp) or last <= float(tpp))
        if not passed:
            return False
        hit, other = (stop, tp) if ((last <= float(sp)) if sell else (last >= float(sp))) else (tp, stop)
        self.stats.market_exits += 1
        self._event("exit_at_market", f"{'stop' if hit is stop else 'take profit'} already passed (last {last}, "
                    f"stop {sp}, take profit {tpp}): closing at market", last=last)
        other.cancel()
        self._notify(other)
        self._send_single(hit, restoring, force_market=True, role="stop_loss" if hit is stop else "take_profit")
        return True

    def record_exit_list(self, cid_s: str, cid_t: str, base_bar: int, side: str, amount: str, sp: str, tpp: str,
                         interim_for: str | None = None) -> tuple[XOrder, XOrder]:
        """Journal (one transaction) and track the two legs of an exit list about to be sent:
        stop ``sp`` and take profit ``tpp`` for ``amount``; ``interim_for``: the working entry
        whose filled part the list protects (:mod:`brokers.protection`)."""
        list_cid = f"{cid_s}.oco"
        extra: dict[str, Any] = {"oco": list_cid, **({"interim": interim_for} if interim_for is not None else {})}
        with self.journal.atomic():
            self.journal.record_intent(cid_s, base_bar, "stop_loss", side, "stop", float(amount), stop_price=float(sp),
                                       extra={"kind": "stop", **extra})
            self.journal.record_intent(cid_t, base_bar, "take_profit", side, "limit", float(amount), price=float(tpp),
                                       extra={"kind": "take_profit", **extra})
        xs = XOrder(cid=cid_s, role="stop_loss", side=side, otype="stop", amount=float(amount), bar_time=base_bar,
                    stop_price=float(sp), list_cid=list_cid, interim_for=interim_for)
        xt = XOrder(cid=cid_t, role="take_profit", side=side, otype="limit", amount=float(amount), bar_time=base_bar,
                    price=float(tpp), list_cid=list_cid, interim_for=interim_for)
        self._x[cid_s], self._x[cid_t] = xs, xt
        return xs, xt

    def ack_leg(self, x: XOrder) -> None:
        """A leg of a list the exchange accepted: its status from a lookup (open when the
        lookup finds nothing yet), acknowledged in the journal."""
        found = self.store.find_order(self.symbol, x.cid)
        self._acked(x, ExchangeOrder.from_ccxt(found) if found is not None else
                    ExchangeOrder(cid=x.cid, eid=None, status="open"))

    # ------------------------------------------------------------------ canceling
    def _cancel_x(self, x: XOrder) -> None:
        """Cancel ``x`` (its whole list for an OCO leg) on the exchange and settle the
        backtrader orders: canceled at once when nothing filled, else on the fills' bar."""
        legs = [y for y in self._x.values() if x.list_cid and y.list_cid == x.list_cid] or [x]
        open_legs = [y for y in legs if y.status in ("intent", "open")]
        if open_legs:
            self.stats.cancels += 1
            try:
                if x.list_cid:
                    answer = self.store.cancel_oco(self.symbol, x.list_cid)
                else:
                    answer = self.store.cancel(self.symbol, x.eid, x.cid)
            except (ExchangeRefused, RetriesExhausted) as exc:
                self._event("cancel_failed", f"cancel of {x.cid} failed, the order keeps working: {exc}",
                            client_id=x.cid)
                return
            for y in open_legs:
                # the exchange's word on each leg: canceled, or (answer None: "unknown order")
                # already filled / expired before the cancel arrived
                found = self.store.find_order(self.symbol, y.cid)
                if found is not None:
                    self._update(y, ExchangeOrder.from_ccxt(found))
                else:  # the exchange does not know it at all: nothing can fill any more
                    y.status, y.updated = "canceled", self._now()
            raced = any(y.status == "closed" or y.filled > y.applied + _EPS for y in legs)
            if raced:
                self._fetch_trades()
                log.info("cancel of %s: answer %s", x.cid, "unknown order" if answer is None else "canceled")
                self.stats.cancel_races += 1
                self._event("cancel_race", f"cancel of {x.cid} met a fill: "
                            + ", ".join(f"{y.cid} {y.status} filled {y.filled:.8f}" for y in legs),
                            client_id=x.cid)
            for y in legs:
                self._journal_status(y, int(y.updated or self._now()), "canceled by the session")
        for y in legs:
            o = y.order
            if o is None or not o.alive():
                continue
            if y.status in ("canceled", "expired") and y.filled <= y.applied + _EPS:
                if y.applied > _EPS and y.role == "entry":
                    y.complete_partial = True  # finished (completed) at the next bar
                    continue
                o.cancel()
                self._notify(o)
                if y.role == "entry":
                    self._cancel_children(o)
            elif y.role == "entry" and y.status in ("canceled", "expired"):
                y.complete_partial = True

    def cancel_session_orders(self, reason: str) -> int:
        """Cancel every open order of this session on the exchange (client id prefix
        ``nts-<session>-``): the kill switch and halts. Returns how many were canceled."""
        prefix = f"nts-{self.session_id[:8]}-"
        opened = self.store.open_orders(self.symbol)
        mine = [o for o in opened if str(o.get("clientOrderId") or "").startswith(prefix)]
        done: set[str] = set()
        n = 0
        for o in mine:
            cid = str(o["clientOrderId"])
            if cid in done:
                continue
            x = self._x.get(cid)
            if x is None:
                view = ExchangeOrder.from_ccxt(o)
                intent = self.journal.intent(cid)
                x = XOrder(cid=cid, role=intent.role if intent else "rebalance", side=str(o.get("side")),
                           otype=str(o.get("type")), amount=float(o.get("amount") or 0.0), bar_time=0,
                           list_cid=(intent.extra or {}).get("oco") if intent else None)
                self._update(x, view)
                self._x[cid] = x
            legs = [y.cid for y in self._x.values() if x.list_cid and y.list_cid == x.list_cid] or [cid]
            self._cancel_x(x)
            done.update(legs)
            n += len(legs)
        if n:
            self._event("orders_canceled", f"{n} open order(s) of the session canceled: {reason}", count=n)
        return n

    # ------------------------------------------------------------------ polling and fills
    def _fetch_trades(self) -> None:
        """Learn (and journal) the account's trades since the last known one."""
        for t in fetch_trades_from(self.store, self.symbol, self._fetch_from):
            if t.tid in self._trades:
                continue
            self._trades[t.tid] = t
            self._pending.append(t.tid)
            self._fetch_from = max(self._fetch_from, t.tid + 1)
            x = self._by_eid.get(t.order_id)
            if x is None:
                x = self._whose(t)
            if x is None:
                continue
            if str(t.tid) not in self._journaled:
                self.journal.record_fill(str(t.tid), x.cid, t.side, t.price, t.amount, t.fee, t.fee_currency, t.ts)
                self._journaled.add(str(t.tid))
            x.filled = max(x.filled, sum(self._trades[k].amount for k in self._trades
                                         if self._trades[k].order_id == t.order_id))
        self._pending.sort()

    def _whose(self, t: TradeRec) -> XOrder | None:
        """The session order of a trade whose order id the broker has not seen (None: not
        ours: journaled as an event and the session halted)."""
        try:
            o = self.store.find_order_by_id(self.symbol, t.order_id)
        except NtsError:
            o = None
        cid = str((o or {}).get("clientOrderId"))
        x = self._x.get(cid)
        if x is not None:
            self._update(x, ExchangeOrder.from_ccxt(o))
            return x
        self._event("unknown_fill", f"trade {t.tid} ({t.side} {t.amount:.8f} @ {t.price}) belongs to order "
                    f"{t.order_id} ({cid}), not to this session", trade_id=t.tid)
        if self.on_halt is not None:
            self.on_halt(f"a fill the session did not place: trade {t.tid} of order {t.order_id}")
        return None

    def _poll(self) -> None:
        """Fills and the status of every working order, from the exchange."""
        self.stats.polls += 1
        self._fetch_trades()
        working = [x for x in self._x.values() if x.status in ("intent", "open")]
        if not working:
            return
        opened = {str(o.get("clientOrderId")): o for o in
                  self.store.open_orders(self.symbol)}
        changed = False
        for x in working:
            o = opened.get(x.cid)
            if o is None:
                o = self.store.find_order(self.symbol, x.cid)
            if o is None:
                if x.doubt_polls >= 0:
                    x.doubt_polls += 1
                    if x.doubt_polls >= DOUBT_POLLS and x.order is not None:
                        self._not_placed(x, x.order, f"not found in {x.doubt_polls} polls after its answer was lost")
                continue
            x.doubt_polls = -1
            before = (x.status, x.filled)
            self._update(x, ExchangeOrder.from_ccxt(o))
            changed = changed or (x.status, x.filled) != before
            self._journal_status(x, int(x.updated or self._now()))  # a no-op when the journal has it
        if changed:
            self._fetch_trades()

    def _apply(self, bar_close: int) -> None:
        """Apply the trades of this bar (exchange time before its close), then settle the
        backtrader orders the exchange has finished."""
        while self._pending and self._trades[self._pending[0]].ts < bar_close:
            t = self._trades[self._pending.pop(0)]
            self._apply_trade(t)
            self.last_trade_id = max(self.last_trade_id, t.tid)
        for x in list(self._bt.values()):
            o = x.order
            if o is None or not o.alive():
                continue
            done = x.status in TERMINAL_STATUSES or x.complete_partial
            if done and (x.updated is None or x.updated < bar_close or x.complete_partial) \
                    and x.applied >= x.filled - _EPS:
                self._finish(x)
        self._refresh_visible()

    def _apply_trade(self, t: TradeRec) -> None:
        db, dq = t.deltas(self.base, self.quote)
        old_base = self.base_total
        self.base_total += db
        self.quote_total += dq
        if db > 0:
            held = max(old_base, 0.0)
            self.pos_price = (held * self.pos_price + db * t.price) / (held + db)
        elif self.base_total <= _EPS:
            self.pos_price = 0.0
        pprice_orig = self._pos.price
        psize, pprice, opened, closed = self._pos.update(db, t.price)
        fee_quote = t.fee if t.fee_currency == self.quote else (t.fee * t.price if t.fee_currency == self.base else 0.0)
        pnl = -closed * (t.price - pprice_orig) if closed else 0.0
        self.stats.fills += 1
        x = self._by_eid.get(t.order_id)
        if x is None:
            return
        x.applied += t.amount
        o = x.order
        if o is None or not o.alive():
            return
        o.execute(_bt_num(t.ts), db, t.price, closed, abs(closed) * pprice_orig, fee_quote if closed else 0.0,
                  opened, abs(opened) * t.price, 0.0 if closed else fee_quote, 0.0, pnl, psize, pprice)
        o.partial()
        self._notify(o)

    def _finish(self, x: XOrder) -> None:
        o = x.order
        if x.status == "closed" or (x.applied > _EPS and (x.complete_partial or x.role == "entry")):
            o.completed()
            self._notify(o)
            if o.ref in self._children:
                for kid in self._children[o.ref]:
                    kid.activate()
                self._place_children(o)
        elif x.status in ("canceled", "expired") or x.complete_partial:
            o.cancel()  # an expired OCO sibling too: backtrader's OCO cancels the other order
            self._notify(o)
            self._cancel_children(o)
        elif x.status == "rejected":
            o.reject(self)
            self._notify(o)
            self._cancel_children(o)

    def _check_balances(self) -> None:
        """The ledger (plus the trades not yet applied) must equal the exchange's balances."""
        got_b, got_q = balances(self.store, self.base, self.quote)
        exp_b, exp_q = self.base_total, self.quote_total
        for tid in self._pending:
            db, dq = self._trades[tid].deltas(self.base, self.quote)
            exp_b += db
            exp_q += dq
        bad = [f"{a} {g:.8f} on the exchange, {e:.8f} expected" for a, g, e in
               ((self.base, got_b, exp_b), (self.quote, got_q, exp_q)) if abs(g - e) > BALANCE_TOL * max(1.0, abs(e))]
        if bad and not self._drift_reported:
            self._drift_reported = True
            self._event("balance_moved", "a balance moved outside the session: " + "; ".join(bad))
            if self.on_halt is not None:
                self.on_halt("a balance moved outside the session: " + "; ".join(bad))

    # ------------------------------------------------------------------ checkpoint
    def ledger(self) -> Ledger:
        """The ledger as of now (checkpointed every bar)."""
        working = [x.cid for x in self._x.values() if (x.order is not None and x.order.alive())
                   or (x.interim_for is not None and x.status in ("intent", "open"))]
        return Ledger(base=self.base_total, quote=self.quote_total, pos_price=self.pos_price,
                      last_trade_id=self.last_trade_id, reserve=self.reserve, working=working)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able ledger for the bar's checkpoint."""
        return self.ledger().to_dict()


CCXTStore.broker_factory = staticmethod(CCXTBroker)
