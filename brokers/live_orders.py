"""The live broker's record of its exchange orders and its counters.

:class:`XOrder` is one exchange order of a live session as :class:`brokers.ccxt_broker.CCXTBroker`
tracks it (journal status, what the exchange says filled, what was applied to the ledger, the
backtrader order it stands for); :class:`BrokerStats` counts what the broker did. Both sit below
the broker and its protection logic (:mod:`brokers.protection`), which build and count them.
"""
from __future__ import annotations

from dataclasses import dataclass

import backtrader as bt

#: amounts at or below this count as nothing (float noise of summed fills)
EPS = 1e-12


@dataclass
class XOrder:
    """One exchange order of the session, as the broker tracks it."""

    cid: str
    role: str
    side: str
    otype: str
    amount: float
    bar_time: int
    price: float | None = None
    stop_price: float | None = None
    list_cid: str | None = None
    eid: str | None = None
    status: str = "intent"          # journal status (intent/open/closed/canceled/expired/rejected)
    filled: float = 0.0             # executed amount, as the exchange last said
    applied: float = 0.0            # executed amount applied to the ledger and the backtrader order
    updated: int | None = None      # exchange time of the last status change
    order: bt.Order | None = None   # the linked backtrader order
    complete_partial: bool = False  # a partly filled entry the strategy canceled: completes with its fills
    never_sent: bool = False        # journaled, then the process died before the send (see _claim)
    doubt_polls: int = -1           # >= 0: answer lost and lookups failed; polls that did not find it
    interim_for: str | None = None  # an exit list protecting the filled part of this working entry


@dataclass
class BrokerStats:
    """Counters of one live broker (reported by the session, asserted by tests)."""

    sent: int = 0            # orders and order lists sent (each once)
    oco_lists: int = 0
    adopted: int = 0         # backtrader orders linked to an order the journal already had
    skipped: int = 0         # below the minimum amount / notional: not sent
    rejected: int = 0
    cancels: int = 0
    cancel_races: int = 0    # a cancel that found the order filled
    fills: int = 0           # trades applied
    market_exits: int = 0    # OCO refused because a barrier was already passed: closed at market
    polls: int = 0
    protection_refused: int = 0  # exit lists the exchange refused
    protection_closes: int = 0   # positions closed at market because their exits were refused twice
    unprotected: int = 0         # ... and could not be closed either: entries halted, alert
    interim_lists: int = 0       # exit lists protecting the filled part of a working entry
