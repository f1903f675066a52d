"""Reconciliation of a live session's journal with the exchange, before anything is sent.

A live session (``nts live``) starts from its journal: the last checkpoint's **ledger**
(the account's base and quote balances as of the last trade the session had applied, that
trade's id, the average entry price, the capital held back by ``--max-capital`` and the
client ids of the orders working at that bar) or, before the first checkpoint, the ledger
journaled when the session was created (event ``live_start``). :func:`reconcile` compares
that with what the exchange says now, using only GET requests:

* **open orders** of the symbol by client order id: each must be an intent of this journal.
  One whose intent never got an answer (``intent`` status: the process died between the
  send and the ack) is an **ack lost**: explained, the ack is journaled.
* **orders the journal holds as working** (``intent``/``open``) but the exchange does not
  list as open are looked up by client id: closed, canceled or expired there -> the status
  is journaled (it changed while the session was down); unknown to the exchange and never
  acknowledged -> the order never reached it (the process died before the send): journaled
  as canceled. Unknown to the exchange although acknowledged -> unexplainable.
* **fills** after the ledger's last trade id (``myTrades`` from ``fromId``): each must belong
  to an order of this journal (a fill that happened while the session was down: journaled,
  idempotent on the trade id, and applied by the broker when the session reaches its bar);
  a fill of an unknown order is "a position the journal does not know".
* **balances** (free + locked, base and quote): must equal the ledger plus the effect of
  those fills (8-decimal exchange arithmetic; tolerance :data:`BALANCE_TOL`). Anything else
  is "a balance that moved" (a deposit, a withdrawal, a manual trade, another bot).

A NEW session (no ledger in the journal) needs a flat account on this symbol: no open
order, and a base balance worth less than the market's minimum notional (dust); its ledger
is the balances now, its trade cursor the newest trade id of the account.

Anything unexplainable -> :class:`ReconcileReport` with ``problems``; the session prints
the report and refuses to start: NOTHING is sent to the exchange and the journal's orders,
fills and bars stay as they were (only the refusal itself is journaled, as an event).
Otherwise every explained difference is journaled (acks, statuses, fills, one ``reconcile``
event) and :class:`LiveStart` is what the broker starts from.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from brokers.account import (  # noqa: F401  (re-exported for the session and the tests)
    BALANCE_TOL,
    STATUS_MAP,
    ExchangeOrder,
    Ledger,
    LiveStart,
    ReconcileReport,
    TradeRec,
    last_price,
    balances,
    fetch_trades_from,
    newest_trade_id,
)
from brokers.ccxt_store import CCXTStore
from brokers.orders import TERMINAL_STATUSES
from sessions.journal import Intent, Journal
from core.errors import NtsError

log = logging.getLogger("nts.reconcile")

class ReconcileError(NtsError):
    """The journal and the exchange disagree in a way the session cannot explain."""


@dataclass
class _Differences:
    """What reconciliation found that the journal can explain, before it is journaled.

    ``views``: the exchange's view of every order of this journal it was asked about (by
    client id); ``acks``: intents whose ack was lost; ``statuses``: acknowledged orders the
    exchange holds in some status; ``never_sent``: intents the exchange never received;
    ``new_fills``: fills after the ledger's cursor that the journal does not hold yet."""

    views: dict[str, ExchangeOrder] = field(default_factory=dict)
    acks: list[tuple[Intent, ExchangeOrder]] = field(default_factory=list)
    statuses: list[tuple[Intent, ExchangeOrder]] = field(default_factory=list)
    never_sent: list[Intent] = field(default_factory=list)
    new_fills: list[tuple[TradeRec, str]] = field(default_factory=list)


def reconcile(store: CCXTStore, journal: Journal, symbol: str, ledger: Ledger | None, *,
              max_capital: float | None = None, checkpoint_recorded: int | None = None,
              apply: bool = True) -> LiveStart:
    """Compare ``journal`` (its ``ledger``; None = a new session) with the exchange (see the
    module docstring). Only GET requests are sent. With ``apply`` and no problems, the
    explained differences are journaled. ``checkpoint_recorded``: when the ledger's checkpoint
    was written (journal ms; intents journaled after it belong to bars the restarted strategy
    decides again).
    """
    store.load_markets()
    market = store.market(symbol)
    base, quote = market["base"], market["quote"]
    report = ReconcileReport()
    intents = {i.client_id: i for i in journal.intents()}
    new = ledger is None

    diff = _Differences()
    opened = store.open_orders(symbol)
    _check_open_orders(opened, intents, ledger, checkpoint_recorded, diff, report)
    _check_working_orders(store, symbol, intents, diff, report)

    cursor = ledger.last_trade_id if ledger is not None else newest_trade_id(store, symbol)
    trades = fetch_trades_from(store, symbol, cursor + 1) if ledger is not None else []
    _check_fills(store, symbol, journal, intents, trades, diff, report)

    base_now, quote_now = balances(store, base, quote)
    report.checked = {"open_orders": len(opened), "trades": len(trades), "base_asset": base, "quote_asset": quote,
                      "base": base_now, "quote": quote_now}
    if ledger is None:
        ledger = _new_ledger(store, symbol, market, base_now, quote_now, cursor, max_capital, report)
    else:
        _check_balances(ledger, trades, base, quote, base_now, quote_now, report)

    if report.ok:
        _explain(diff, report)
        if apply:
            _apply(journal, diff, report)
    return LiveStart(ledger=ledger, new=new, orders=diff.views, trades=trades, report=report)


def _check_open_orders(opened: list[dict[str, Any]], intents: dict[str, Intent], ledger: Ledger | None,
                       checkpoint_recorded: int | None, diff: _Differences, report: ReconcileReport) -> None:
    """Each order open on the exchange must be an intent of this journal that is working;
    one whose intent never got an answer is an ack lost."""
    for o in opened:
        x = ExchangeOrder.from_ccxt(o)
        intent = intents.get(x.cid)
        if intent is None:
            report.problems.append(f"an open order the journal does not know: {x.cid} {o.get('side')} "
                                   f"{o.get('type')} {o.get('amount')} @ {o.get('price') or o.get('triggerPrice')} "
                                   f"(exchange id {x.eid})")
            continue
        diff.views[x.cid] = x
        if intent.status == "intent":
            diff.acks.append((intent, x))
        elif intent.terminal:
            report.problems.append(f"order {x.cid} is {intent.status} in the journal but open on the exchange")
        elif working_elsewhere(intent, ledger, checkpoint_recorded):
            report.problems.append(f"order {x.cid} ({intent.role}) is open on the exchange but was not working "
                                   "at the journal's checkpoint")


def _check_working_orders(store: CCXTStore, symbol: str, intents: dict[str, Intent], diff: _Differences,
                          report: ReconcileReport) -> None:
    """Look up by client id each order the journal holds as working that the exchange did not
    list as open: its status changed while the session was down, or it was never sent."""
    for intent in intents.values():
        if intent.terminal or intent.client_id in diff.views:
            continue
        found = store.find_order(symbol, intent.client_id)
        if found is None:
            if intent.status == "intent":
                diff.never_sent.append(intent)
            else:
                report.problems.append(f"order {intent.client_id} ({intent.role}) is open in the journal but the "
                                       "exchange does not know it")
            continue
        x = ExchangeOrder.from_ccxt(found)
        diff.views[x.cid] = x
        (diff.acks if intent.status == "intent" else diff.statuses).append((intent, x))


def _check_fills(store: CCXTStore, symbol: str, journal: Journal, intents: dict[str, Intent],
                 trades: list[TradeRec], diff: _Differences, report: ReconcileReport) -> None:
    """Each fill after the ledger's cursor must belong to an order of this journal; those the
    journal does not hold yet become ``diff.new_fills``."""
    by_eid = {i.exchange_order_id: i for i in intents.values() if i.exchange_order_id}
    eid_cid = {x.eid: x.cid for x in diff.views.values() if x.eid} | {e: i.client_id for e, i in by_eid.items()}
    journaled = {f.trade_id for f in journal.fills()}
    for t in trades:
        cid = eid_cid.get(t.order_id)
        if cid is None:
            # an order id we never heard of: ask the exchange whose it is
            cid, o = _ask_owner(store, symbol, t.order_id)
            if cid not in intents:
                report.problems.append(f"a fill of an order the journal does not know (a position it does not "
                                       f"know): trade {t.tid} {t.side} {t.amount:.8f} @ {t.price} "
                                       f"(order {t.order_id}, client id {cid})")
                continue
            diff.views.setdefault(cid, ExchangeOrder.from_ccxt(o))
            eid_cid[t.order_id] = cid
        if str(t.tid) not in journaled:
            diff.new_fills.append((t, cid))


def _ask_owner(store: CCXTStore, symbol: str, order_id: Any) -> tuple[str | None, dict[str, Any] | None]:
    """The client id the exchange gives an order by its exchange id, and the order (None, None
    when the exchange does not know it or the lookup fails: the fill is then unexplained)."""
    try:
        o = store.find_order_by_id(symbol, order_id)
    except NtsError:
        return None, None
    return (None if o is None else str(o.get("clientOrderId"))), o


def _new_ledger(store: CCXTStore, symbol: str, market: dict[str, Any], base_now: float, quote_now: float,
                cursor: int, max_capital: float | None, report: ReconcileReport) -> Ledger:
    """The ledger of a NEW session: the balances now, which must hold no position (only dust
    below the market's minimum notional); ``max_capital`` holds the rest of the value back."""
    base, quote = market["base"], market["quote"]
    price = last_price(store, symbol)
    min_cost = float(((market.get("limits") or {}).get("cost") or {}).get("min") or 0.0)
    if base_now * price >= max(min_cost, 1e-12) and base_now > 0:
        report.problems.append(f"the account holds {base_now:.8f} {base} (about {base_now * price:,.2f} {quote}): "
                               "a position the new journal does not know; start from an account without "
                               f"{base} (or below the {min_cost:g} {quote} minimum order)")
    value = quote_now + base_now * price
    reserve = 0.0 if max_capital is None else max(0.0, value - float(max_capital))
    return Ledger(base=base_now, quote=quote_now, pos_price=0.0, last_trade_id=cursor, reserve=reserve)


def _check_balances(ledger: Ledger, trades: Iterable[TradeRec], base: str, quote: str, base_now: float,
                    quote_now: float, report: ReconcileReport) -> None:
    """The balances now must equal the ledger plus the effect of the fills since its cursor
    (within :data:`BALANCE_TOL`, relative); anything else is a balance that moved."""
    exp_base, exp_quote = ledger.base, ledger.quote
    for t in trades:
        db, dq = t.deltas(base, quote)
        exp_base += db
        exp_quote += dq
    for asset, exp, got in ((base, exp_base, base_now), (quote, exp_quote, quote_now)):
        if abs(exp - got) > BALANCE_TOL * max(1.0, abs(exp)):
            report.problems.append(f"a balance that moved: {asset} {got:.8f} on the exchange, {exp:.8f} expected "
                                   f"from the journal (difference {got - exp:+.8f}); not explained by the "
                                   f"session's orders or fills")


def _explain(diff: _Differences, report: ReconcileReport) -> None:
    """One ``report.applied`` line for each explained difference (printed, and journaled with
    the ``reconcile`` event)."""
    for intent, x in diff.acks:
        report.applied.append(f"ack lost: order {intent.client_id} ({intent.role}) reached the exchange "
                              f"(id {x.eid}, {x.status}); ack journaled")
    for intent, x in diff.statuses:
        if x.status != intent.status:
            report.applied.append(f"order {intent.client_id} ({intent.role}) became {x.status} while the "
                                  f"session was down (filled {x.filled:.8f})")
    for intent in diff.never_sent:
        report.applied.append(f"order {intent.client_id} ({intent.role}) never reached the exchange (the "
                              "session stopped before sending it): journaled as canceled")
    for t, cid in diff.new_fills:
        report.applied.append(f"fill {t.tid} of {cid}: {t.side} {t.amount:.8f} @ {t.price} while the session "
                              "was down: journaled")


def working_elsewhere(intent: Intent, ledger: Ledger | None, checkpoint_recorded: int | None) -> bool:
    """True for an order open on the exchange that the checkpoint did not hold as working
    although its intent was journaled before the checkpoint was written (intents journaled
    later belong to bars the restarted strategy decides again, and so re-claims)."""
    if ledger is None or checkpoint_recorded is None:
        return False
    return intent.recorded_at <= checkpoint_recorded and intent.client_id not in set(ledger.working)


def _apply(journal: Journal, diff: _Differences, report: ReconcileReport) -> None:
    """Journal every explained difference and one ``reconcile`` event, in one transaction (all
    of them or none)."""
    with journal.atomic():
        for intent, x in diff.acks:
            ts = int(x.updated or intent.recorded_at)
            journal.record_ack(intent.client_id, x.eid or "?", "open", ts)
            if x.status != "open":
                _status(journal, intent.client_id, x, ts)
        for intent, x in diff.statuses:
            if x.status != intent.status:
                _status(journal, intent.client_id, x, int(x.updated or intent.recorded_at))
        for intent in diff.never_sent:
            journal.record_cancel(intent.client_id, intent.recorded_at, "never reached the exchange (found missing "
                                  "at reconciliation)")
        for t, cid in diff.new_fills:
            journal.record_fill(str(t.tid), cid, t.side, t.price, t.amount, t.fee, t.fee_currency, t.ts)
        journal.record_event("reconcile", f"reconciled with the exchange: {len(report.applied)} explained "
                             "difference(s) journaled", {"applied": report.applied, "checked": report.checked})


def _status(journal: Journal, cid: str, x: ExchangeOrder, ts: int) -> None:
    if x.status == "canceled":
        journal.record_cancel(cid, ts, "canceled on the exchange (seen at reconciliation)")
    elif x.status in TERMINAL_STATUSES or x.status == "open":
        journal.record_order_status(cid, x.status, ts, filled=x.filled, exchange_order_id=x.eid)

