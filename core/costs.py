"""One cost and fill model for every simulator: fees, slippage and the fill rules.

``Costs`` is built from ``cfg.execution``; backtrader's broker (:mod:`strategies.bt_broker`),
the reference simulator and the sweep read the same object, so changing the config moves
every engine together.

Fill rules (stated once, here):

* Fees are a share of traded notional. Limit orders pay the **maker** fee, every other
  order type (market, stop, time exit, risk flatten) pays the **taker** fee.
* Slippage is adverse, ``slippage_bps`` basis points of the fill price, on market and stop
  orders (stops become market orders when touched). Resting limit orders fill at their
  limit price without slippage; a limit that is already marketable at the bar's open fills
  at the open, capped at the limit.
* Exit barriers (bracket children) become active on the very bar their parent fills, so a
  barrier touched on the first bar after entry is seen (stock backtrader waits one more
  bar). When a bar touches both barriers, the child submitted first wins: the stop
  unless ``labels.tie`` says ``profit`` (see :mod:`strategies.base`).
* A cancel reaches orders submitted earlier in the same bar too (stock backtrader would
  still fill them).
* Exception: a limit entry that fills mid-bar (the bar opened beyond the limit and traded
  back to it) may have seen that bar's favourable extreme *before* the fill, so on that
  bar only the stop child may act; the take-profit child (any limit child) becomes active
  from the next bar. A limit entry filled at the open keeps both children active at once.
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
        """Adverse slippage applied to a market/stop fill price."""
        return price * (1 + self.slippage) if is_buy else price * (1 - self.slippage)

    def round_trip(self, maker_entry: bool = False, maker_exit: bool = False) -> float:
        """Total fee rate of an entry plus an exit (used for break-even probabilities)."""
        return self.fee_for(maker_entry) + self.fee_for(maker_exit)
