"""One cost and fill model for every simulator: fees, slippage and the fill rules.

``Costs`` is built from ``cfg.execution``; backtrader's broker (:mod:`strategies.bt_broker`),
the reference simulator (:mod:`core.simulator`) and the sweep read the same object, so
changing the config moves every engine together. The fill rules below are the
specification both engines implement (backtrader's ``BackBroker`` as configured by
:func:`strategies.bt_broker.make_broker`, and the kernel); ``tests/test_simulator_parity.py``
holds them equal trade for trade.

Fill rules (stated once, here). ``s`` = ``slippage_bps / 1e4``; O/H/L/C = the fill bar's
open, high, low, close; every order the strategy decides on a bar's close reaches the
broker on the next bar.

* **Market entry**: fills at the next bar's open, slipped adversely, ``O * (1 + s)`` for a
  buy and ``O * (1 - s)`` for a sell, capped at that bar's high (buy) or floored at its low
  (sell): never a price that did not trade. With **cheat-on-close** (``--coc``) it fills at
  the signal bar's close instead, slipped the same way (the cap is the next bar's high/low,
  where backtrader executes it) and stamped with the signal bar's time.
* **Limit entry**: a limit at the signal close, working for ``limit_tif_bars`` bars (then
  cancelled). A buy limit fills when ``L <= limit``: at the limit when the bar opened above
  it (a *mid-bar* fill), at the open when the bar opened at or below it. A limit that is
  **marketable at the open is slipped like a market order**: ``O * (1 + s)`` capped at
  ``min(H, limit)`` for a buy; ``O * (1 - s)`` floored at the limit for a sell (backtrader's
  ``_slip_up/_slip_down(..., lim=True)`` with ``slip_match``). A limit filled mid-bar keeps its
  price exactly. (So a limit never fills worse than its limit, but may give up the open's
  improvement up to ``s``.)
* **Exits** are the triple barriers around the entry reference price (the signal close; their
  distances are the policy's profit/stop times the decision bar's barrier width, 1 for fixed
  barriers, ``sigma_t * sqrt(horizon)`` for ``labels.scale: vol``, :mod:`core.policy`):
  a take profit (limit order: the limit rules above, marketable at the open when the bar
  gaps through it) and a stop (stop order: becomes a market order when touched; at
  ``O`` slipped when the bar opens through it, else at the stop price slipped,
  ``stop * (1 - s)`` for a sell, floored at ``L``). They are bracket children of the entry,
  **active on the very bar the entry fills** (stock backtrader waits one more bar).
* **Ties**: when one bar touches both barriers the child submitted first wins: the stop,
  unless ``labels.tie`` is ``profit`` (as the labels count it).
* **Mid-bar limit rule**: a limit entry that fills mid-bar (the bar opened beyond the limit
  and traded back to it) may have seen that bar's favourable extreme *before* the fill, so
  on that bar only the stop child may act; the take profit becomes active on the next bar.
  A limit entry filled at the open keeps both children active at once.
* **Time exit**: ``max_hold`` bars of *clock time* after the entry bar (the signal bar of a
  market entry, the bar before the fill of a limit entry), a market order decided on that
  bar's close: it fills at the next open (or that close with cheat-on-close). Across a data
  **gap** the first bar after the gap that ends the horizon closes the position; a barrier
  a bar gaps through fills at that bar's open (slipped), not at the barrier.
* **Risk exits** (breaker flatten ``risk``, kill switch ``kill``) and leverage **cuts**
  (``risk``, with the barrier exits re-placed as one OCO pair of the new size) are market
  orders too; a cancel reaches orders submitted earlier in the same bar (stock backtrader
  would still fill them).
* **Fees** are a share of traded notional: limit fills (limit entries, take profits) pay the
  **maker** fee, every other fill (market, stop, time, risk, kill) the **taker** fee.
* **Cash and margin**: spot, no borrowing for longs. An order is checked on arrival at its
  created price (market: the signal close) against the running cash of the orders arriving
  with it, and again at its fill price; an entry that would take cash below zero is
  rejected (``Margin``) with its barrier children, and the strategy may enter again on a
  later bar. Short sales credit their proceeds (backtrader's ``shortcash``).
* **Span end**: positions still open at the last bar stay open; the trades table marks them
  ``status='open'`` at the last close (:func:`core.trades.round_trips`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import ConfigError


@dataclass(frozen=True)
class Costs:
    """Fees and slippage as fractions: ``taker_fee=0.001`` is 0.1% of notional."""

    taker_fee: float = 0.001
    maker_fee: float = 0.001
    slippage_bps: float = 2.0

    @classmethod
    def from_config(cls, cfg: Any) -> "Costs":
        """Build from a :class:`core.config.Config` or its ``execution`` section."""
        ex = getattr(cfg, "execution", cfg)
        try:
            return cls(float(ex.taker_fee), float(ex.maker_fee), float(ex.slippage_bps))
        except AttributeError as exc:
            raise ConfigError(f"execution config lacks a cost field ({exc})") from None

    @classmethod
    def zero(cls) -> "Costs":
        """No fees and no slippage (parity tests against the label table)."""
        return cls(0.0, 0.0, 0.0)

    @property
    def slippage(self) -> float:
        """Slippage as a fraction of price."""
        return self.slippage_bps / 1e4

    def fee_for(self, maker: bool) -> float:
        """Fee rate of one fill: maker for resting limit orders, taker otherwise."""
        return self.maker_fee if maker else self.taker_fee

    def slip_price(self, price: float, is_buy: bool) -> float:
        """Adverse slippage of a price, uncapped (the engines cap it at the bar's range, see
        the fill rules above)."""
        return price * (1 + self.slippage) if is_buy else price * (1 - self.slippage)

    def round_trip(self, maker_entry: bool = False, maker_exit: bool = False) -> float:
        """Total fee rate of an entry plus an exit (used for break-even probabilities)."""
        return self.fee_for(maker_entry) + self.fee_for(maker_exit)
