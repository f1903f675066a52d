"""The account as a live broker sees it: ledger, trades, the exchange's orders, balances.

Venue-side records and read-only queries (through :class:`brokers.ccxt_store.CCXTStore`) that
the live broker trades from and that :mod:`sessions.reconcile` compares with the journal.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from brokers.ccxt_store import CCXTStore

#: balance agreement tolerance (absolute, in the asset): the exchange books 8 decimals and
#: the ledger sums their float images, whose error is ~1e-12
BALANCE_TOL = 1e-7
#: ccxt order statuses -> journal statuses
STATUS_MAP = {"open": "open", "closed": "closed", "canceled": "canceled", "cancelled": "canceled",
              "expired": "expired", "rejected": "rejected"}


@dataclass
class Ledger:
    """The account as the session last applied it (checkpointed every bar).

    ``base``/``quote``: balance totals (free + locked) after every trade up to
    ``last_trade_id`` (the exchange's numeric trade id; 0 = none); ``pos_price``: average
    fill price of the open position; ``reserve``: quote held back by ``--max-capital``
    (the strategy's cash and equity are the account's minus this); ``working``: client ids
    of the orders working at the checkpoint (a restart links the orders the strategy
    re-submits to them instead of sending new ones).
    """

    base: float = 0.0
    quote: float = 0.0
    pos_price: float = 0.0
    last_trade_id: int = 0
    reserve: float = 0.0
    working: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (journaled in checkpoints and the ``live_start`` event)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Ledger":
        """Inverse of :meth:`to_dict`."""
        return cls(base=float(d["base"]), quote=float(d["quote"]), pos_price=float(d.get("pos_price") or 0.0),
                   last_trade_id=int(d.get("last_trade_id") or 0), reserve=float(d.get("reserve") or 0.0),
                   working=[str(c) for c in d.get("working") or []])


@dataclass(frozen=True)
class TradeRec:
    """One exchange trade (fill) of the account, as the session keeps it."""

    tid: int
    order_id: str
    side: str
    price: float
    amount: float
    cost: float
    fee: float
    fee_currency: str | None
    ts: int

    @classmethod
    def from_ccxt(cls, t: dict[str, Any]) -> "TradeRec":
        """From a ccxt unified trade."""
        fee = t.get("fee") or {}
        amount, price = float(t["amount"]), float(t["price"])
        cost = t.get("cost")
        return cls(tid=int(t["id"]), order_id=str(t["order"]), side=str(t["side"]), price=price, amount=amount,
                   cost=float(cost) if cost is not None else amount * price, fee=float(fee.get("cost") or 0.0),
                   fee_currency=fee.get("currency"), ts=int(t["timestamp"]))

    def deltas(self, base: str, quote: str) -> tuple[float, float]:
        """(base change, quote change) of the account. Binance without BNB: a buyer pays the
        fee in the base asset received, a seller in the quote received; a fee in a third
        asset (BNB) changes neither."""
        fb = self.fee if self.fee_currency == base else 0.0
        fq = self.fee if self.fee_currency == quote else 0.0
        if self.side == "buy":
            return self.amount - fb, -self.cost - fq
        return -self.amount - fb, self.cost - fq


@dataclass
class ExchangeOrder:
    """What the exchange says about one client order id."""

    cid: str
    eid: str | None
    status: str           # journal status: open / closed / canceled / expired / rejected / missing
    filled: float = 0.0
    amount: float = 0.0
    updated: int | None = None

    @classmethod
    def from_ccxt(cls, o: dict[str, Any]) -> "ExchangeOrder":
        """From a ccxt unified order."""
        return cls(cid=str(o.get("clientOrderId")), eid=None if o.get("id") is None else str(o["id"]),
                   status=STATUS_MAP.get(str(o.get("status")), "open"), filled=float(o.get("filled") or 0.0),
                   amount=float(o.get("amount") or 0.0),
                   updated=o.get("lastUpdateTimestamp") or o.get("lastTradeTimestamp") or o.get("timestamp"))


@dataclass
class ReconcileReport:
    """What reconciliation found: ``problems`` (unexplainable: refuse) and ``applied``
    (explained differences, journaled)."""

    problems: list[str] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    checked: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing is unexplainable."""
        return not self.problems

    def lines(self) -> list[str]:
        """The report, one finding per line (printed by the session)."""
        c = self.checked
        out = [f"reconciliation with the exchange: {c.get('open_orders', 0)} open orders, "
               f"{c.get('trades', 0)} fills since the journal's last, balances "
               f"{c.get('base_asset', '?')} {c.get('base', math.nan):.8f} / {c.get('quote_asset', '?')} "
               f"{c.get('quote', math.nan):.8f}"]
        out += [f"  UNEXPLAINED: {p}" for p in self.problems]
        out += [f"  explained:   {a}" for a in self.applied]
        if self.problems:
            out.append(f"  -> refusing to start: {len(self.problems)} difference(s) the journal cannot explain; "
                       "nothing was sent to the exchange, the journal's orders and fills are unchanged")
        elif not self.applied:
            out.append("  journal and exchange agree")
        return out


@dataclass
class LiveStart:
    """What a live broker starts from after a successful reconciliation."""

    ledger: Ledger
    new: bool
    orders: dict[str, ExchangeOrder]          # by client id: the exchange's view of the journal's orders
    trades: list[TradeRec]                    # fills after the ledger's last trade id, oldest first
    report: ReconcileReport


def fetch_trades_from(store: CCXTStore, symbol: str, from_id: int, page: int = 1000) -> list[TradeRec]:
    """Every trade of the account on ``symbol`` with id >= ``from_id``, oldest first
    (Binance ``myTrades`` with ``fromId``, paged)."""
    out: list[TradeRec] = []
    nxt = max(0, int(from_id))
    while True:
        rows = store.trades_from(symbol, nxt, page)
        recs = sorted((TradeRec.from_ccxt(r) for r in rows), key=lambda t: t.tid)
        recs = [t for t in recs if t.tid >= nxt]
        out += recs
        if len(rows) < page or not recs:
            return out
        nxt = recs[-1].tid + 1


def newest_trade_id(store: CCXTStore, symbol: str) -> int:
    """Id of the account's newest trade on ``symbol`` (0 when it has none)."""
    rows = store.recent_trades(symbol, 1)
    return max((int(r["id"]) for r in rows), default=0)


def balances(store: CCXTStore, base: str, quote: str) -> tuple[float, float]:
    """(base total, quote total) of the account: free + locked."""
    bal = store.balance()

    def total(asset: str) -> float:
        entry = bal.get(asset) or {}
        t = entry.get("total")
        if t is None:
            t = float(entry.get("free") or 0.0) + float(entry.get("used") or 0.0)
        return float(t or 0.0)

    return total(base), total(quote)


def last_price(store: CCXTStore, symbol: str) -> float:
    """The last traded price of ``symbol``."""
    return store.last_price(symbol)
