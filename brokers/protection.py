"""Protection of a live position: exits follow fills, refused exits escalate, stale partial entries end.

:class:`Protection` holds the rules by which :class:`brokers.ccxt_broker.CCXTBroker` never
leaves a position unprotected without saying so (the broker's module docstring lists them
among the live failure modes):

* **exits follow partial fills**: a working limit entry that filled in part gets an *interim*
  OCO exit list for the base held (:meth:`Protection.follow_partial_fills`), replaced as more
  fills arrive and dropped for the final list when the entry completes
  (:meth:`Protection.drop_interim`); an interim exit that executes ends the entry;
* **refused exits escalate** (:meth:`Protection.refused`): an exit list the exchange refuses
  (balance after fees, filters) is retried once with the amount held, then the position is
  closed at market, and when that fails too entries are halted with an ALERT event
  (:meth:`Protection.unprotected`);
* **time in force of partly filled entries** (:meth:`Protection.enforce_tif`): the strategy
  cancels only entries that have not filled at all, so a partly filled one is canceled here
  at ``limit_tif_bars`` and completes with what filled.

The broker calls these five methods; :class:`ProtectedBroker` names what they use of the
broker (its order book, sending, canceling, journal and events), so the rules can be read
without the rest of the broker.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

import backtrader as bt

from brokers.ccxt_store import CCXTStore, ExchangeRefused, OrderInDoubt
from brokers.exchange import RetriesExhausted
from brokers.live_orders import EPS as _EPS
from brokers.live_orders import BrokerStats, XOrder
from brokers.orders import OrderJournal


class ProtectedBroker(Protocol):
    """What :class:`Protection` uses of the live broker (:class:`brokers.ccxt_broker.CCXTBroker`)."""

    store: CCXTStore
    journal: OrderJournal
    symbol: str
    base: str
    base_total: float
    tf_ms: int
    stats: BrokerStats
    on_halt: Callable[[str], None] | None
    _x: dict[str, XOrder]                   # client id -> exchange order
    _bt: dict[int, XOrder]                  # backtrader order ref -> exchange order
    _children: dict[int, list[bt.Order]]    # bracket parent ref -> its exit orders
    _bar_ms: int | None

    def _now(self) -> int: ...
    def _event(self, kind: str, message: str, **data: Any) -> None: ...
    def _notify(self, order: bt.Order) -> None: ...
    def _amount(self, x: float) -> str | None: ...
    def _price(self, x: float) -> str: ...
    def _sellable(self, amount: float, price: float | None = None) -> bool: ...
    def _free_base(self) -> float: ...
    def _last_price(self) -> float: ...
    def _is_exit_pair(self, orders: list[bt.Order]) -> bool: ...
    def _claim(self, order: bt.Order, role: str, side: str, base_bar: int,
               restoring: bool) -> tuple[str, XOrder | None]: ...
    def record_exit_list(self, cid_s: str, cid_t: str, base_bar: int, side: str, amount: str, sp: str, tpp: str,
                         interim_for: str | None = None) -> tuple[XOrder, XOrder]: ...
    def ack_leg(self, x: XOrder) -> None: ...
    def _cancel_x(self, x: XOrder) -> None: ...
    def _send_single(self, order: bt.Order, restoring: bool, force_market: bool = False,
                     role: str | None = None) -> XOrder | None: ...
    def _send_pair(self, legs: list[bt.Order], base_bar: int, restoring: bool, tries: int = 0) -> None: ...


class Protection:
    """The protection rules of one live broker (see the module docstring)."""

    def __init__(self, broker: ProtectedBroker) -> None:
        self.broker = broker

    def refused(self, legs: list[bt.Order], xs: tuple[XOrder, XOrder], base_bar: int, tries: int,
                why: str) -> None:
        """The exchange refused a position's exits (balance after fees, filters): retry once
        with the amount held now (fresh ids), else close the position at market, else halt
        entries and alert: never an unprotected position without saying so."""
        b = self.broker
        now = b._now()
        for x in xs:
            x.status = "rejected"
            b.journal.record_order_status(x.cid, "rejected", now)
            b.stats.rejected += 1
        b.stats.protection_refused += 1
        b._event("protection_refused", f"exits of {xs[0].amount:.8f} {b.base} refused by the exchange: {why}",
                 client_id=xs[0].cid, attempt=tries)
        if tries == 0:
            b._send_pair(legs, base_bar, restoring=False, tries=1)  # the amount held now, new ids
            return
        stop = next(o for o in legs if o.exectype == bt.Order.Stop)
        for o in legs:
            if o is not stop and o.alive():
                o.cancel()
                b._notify(o)
        b.stats.protection_closes += 1
        b._event("protection_close", "exits refused twice: closing the position at market", client_id=xs[0].cid)
        x = b._send_single(stop, restoring=False, force_market=True, role="stop_loss")
        if (x is None or x.status in ("rejected", "canceled")) and b._sellable(b._free_base()):
            self.unprotected(f"exits refused ({why}) and the position could not be closed at market")

    def unprotected(self, reason: str) -> None:
        """A position without exits that could not be closed: halt entries (journal halt,
        until nts resume) and alert."""
        b = self.broker
        b.stats.unprotected += 1
        b._event("unprotected", f"ALERT: position of {b.base_total:.8f} {b.base} has no stop/take profit: "
                 f"{reason}")
        if b.on_halt is not None:
            b.on_halt(f"unprotected position: {reason}"[:300])

    def follow_partial_fills(self) -> None:
        """Protection follows the filled amount at once: a working entry that filled in part
        gets an interim exit list for what is held (replaced when more fills arrive, and by
        the final list when the entry completes)."""
        b = self.broker
        for px in [x for x in b._x.values() if x.role == "entry" and x.status == "open" and x.side == "buy"]:
            o = px.order
            # the exchange's word on what filled (not yet the part applied on its bar): what is
            # held on the exchange is what needs a stop
            if o is None or not o.alive() or px.filled <= _EPS or o.ref not in b._children:
                continue
            if any(y.interim_for == px.cid and y.filled > _EPS for y in b._x.values()):
                # the filled part was stopped out or took its profit: the trade is over, the rest
                # of the entry must not buy again
                if not px.complete_partial:
                    b._event("entry_ended_by_exit", f"an exit of the filled part of {px.cid} executed: the rest "
                             "of the entry is canceled", client_id=px.cid)
                    b._cancel_x(px)
                continue
            kids = [k for k in b._children[o.ref] if k.alive() and k.ref not in b._bt]
            if len(kids) != 2 or not b._is_exit_pair(kids):
                continue
            covered = sum(y.amount for y in b._x.values() if y.interim_for == px.cid and y.role == "stop_loss"
                          and y.status in ("intent", "open"))
            more = b._amount(b._free_base())  # not yet covered (an interim list reserves its own)
            if more is None or not b._sellable(float(more) + covered):
                continue
            self.drop_interim(px.cid)  # one list for all that is held
            held = b._amount(b._free_base())
            if held is not None and b._sellable(float(held)):
                self._send_interim(px, kids, held)

    def _send_interim(self, px: XOrder, kids: list[bt.Order], held: str) -> None:
        """One interim OCO list (stop + take profit of ``px``'s bracket) for ``held`` base,
        journaled before it is sent; skipped while a barrier is already passed."""
        b = self.broker
        stop = next(k for k in kids if k.exectype == bt.Order.Stop)
        tp = next(k for k in kids if k.exectype == bt.Order.Limit)
        sp, tpp = b._price(stop.created.price), b._price(tp.created.price)
        last = b._last_price()
        if not float(sp) < last < float(tpp):
            b._event("protection_interim_skipped", f"partial fill of {px.cid}: a barrier is already passed "
                     f"(last {last}); exits follow when the entry completes", client_id=px.cid)
            return
        cid_s, _ = b._claim(stop, "stop_loss", "sell", px.bar_time, False)
        cid_t, _ = b._claim(tp, "take_profit", "sell", px.bar_time, False)
        legs = b.record_exit_list(cid_s, cid_t, px.bar_time, "sell", held, sp, tpp, interim_for=px.cid)
        try:
            b.store.submit_oco(b.symbol, "sell", held, sp, tpp, legs[0].list_cid, cid_s, cid_t)
        except (ExchangeRefused, RetriesExhausted, OrderInDoubt) as exc:
            for y in legs:
                y.status = "rejected" if isinstance(exc, ExchangeRefused) else y.status
                if isinstance(exc, ExchangeRefused):
                    b.journal.record_order_status(y.cid, "rejected", b._now())
            b._event("protection_interim_failed", f"exits for the filled part of {px.cid} not placed: {exc}",
                     client_id=px.cid)
            return
        b.stats.sent += 1
        b.stats.oco_lists += 1
        b.stats.interim_lists += 1
        for y in legs:
            b.ack_leg(y)
        b._event("protection_interim", f"partial fill of {px.cid}: exits for {held} {b.base} placed",
                 client_id=px.cid)

    def drop_interim(self, entry_cid: str | None = None) -> None:
        """Cancel the interim exit lists (of one entry, or all) before the final exits or a
        sell that needs the base they reserve."""
        b = self.broker
        for y in list(b._x.values()):
            if y.interim_for is None or y.status not in ("intent", "open") or y.role != "stop_loss":
                continue
            if entry_cid is not None and y.interim_for != entry_cid:
                continue
            b._cancel_x(y)

    def enforce_tif(self) -> None:
        """A partly filled limit entry is canceled at its time in force (the strategy only
        cancels entries that have not filled at all): it completes with what filled."""
        b = self.broker
        if b._bar_ms is None:
            return
        for x in list(b._x.values()):
            o = x.order
            if x.role != "entry" or x.status != "open" or x.filled <= _EPS or o is None or not o.alive():
                continue
            tif = getattr(getattr(o.owner, "policy", None), "limit_tif_bars", None)
            if tif is None or x.complete_partial:
                continue
            if (b._bar_ms - x.bar_time) // b.tf_ms >= int(tif):
                b._event("entry_tif", f"entry {x.cid} partly filled ({x.applied:.8f} of {x.amount:.8f}): canceled "
                         f"at its time in force ({tif} bars)", client_id=x.cid)
                b._cancel_x(x)
