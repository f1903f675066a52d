"""One cost and fill model for every simulator: fees, slippage and the fill rules.

``Costs`` is built from ``cfg.execution`` and applied to backtrader with
:meth:`Costs.apply_to_cerebro`; the vectorbt sweep and the paper broker read the same
object (``fee_for``, ``slip_price``), so changing the config moves every engine together.

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

import backtrader as bt

from core.errors import ConfigError


class MakerTakerCommission(bt.CommInfoBase):
    """Percentage commission with a maker rate for limit orders and a taker rate otherwise.

    The broker sets :attr:`maker` just before each (pseudo-)execution, because backtrader's
    commission hook does not see the order.
    """

    params = (
        ("commission", 0.001),   # taker rate, share of notional
        ("maker_rate", 0.001),   # maker rate, share of notional
        ("stocklike", True),
        ("commtype", bt.CommInfoBase.COMM_PERC),
        ("percabs", True),       # rates are given as fractions (0.001 = 0.1%)
    )

    def __init__(self) -> None:
        super().__init__()
        self.maker = False

    def _getcommission(self, size: float, price: float, pseudoexec: bool) -> float:
        rate = self.p.maker_rate if self.maker else self.p.commission
        return abs(size) * price * rate


class BacktestBroker(bt.brokers.BackBroker):
    """backtrader's broker with the fill rules above: maker/taker fees per order type and
    bracket children active on the bar their parent fills."""

    def _execute(self, order, ago=None, price=None, cash=None, position=None, dtcoc=None):
        comminfo = self.getcommissioninfo(order.data)
        if isinstance(comminfo, MakerTakerCommission):
            comminfo.maker = order.exectype == bt.Order.Limit
        return super()._execute(order, ago=ago, price=price, cash=cash, position=position, dtcoc=dtcoc)

    def cancel(self, order, bracket: bool = False) -> bool:
        """Cancel ``order``, also when it was submitted during the current bar: stock
        backtrader only looks in the pending queue, so an order still waiting in the
        submission queue (e.g. a risk cut placed earlier in the same ``next()``) would
        survive the cancel and fill anyway."""
        try:
            self.submitted.remove(order)
        except ValueError:
            return super().cancel(order, bracket=bracket)
        order.cancel()
        self.notify(order)
        self._ococheck(order)
        if not bracket:
            self._bracketize(order, cancel=True)
        return True

    def _bracketize(self, order, cancel: bool = False) -> None:
        oref = order.ref
        pref = getattr(order.parent, "ref", oref)
        if cancel or oref != pref:
            return super()._bracketize(order, cancel=cancel)
        # Parent filled: activate the children now (they sit behind the parent in the
        # pending queue, so the broker tries them against this same bar) -- except the
        # take profit of a limit entry filled mid-bar, which waits for the next bar.
        mid_bar = self._filled_mid_bar(order)
        children = self._pchildren[pref]
        children.popleft()  # the parent itself
        for child in children:
            if mid_bar and child.exectype == bt.Order.Limit:
                self._toactivate.append(child)  # activated at the start of the next bar
            else:
                child.activate()

    @staticmethod
    def _filled_mid_bar(order) -> bool:
        """True for a limit order whose bar opened beyond its limit (a buy limit below the
        open, a sell limit above it): it filled after the bar's open, at an unknown time."""
        if order.exectype != bt.Order.Limit or order.price is None:
            return False
        bar_open = float(order.data.open[0])
        return bar_open > order.price if order.isbuy() else bar_open < order.price


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

    def make_broker(self, cash: float, coc: bool = False) -> BacktestBroker:
        """A :class:`BacktestBroker` with these costs and ``cash``."""
        broker = BacktestBroker()
        self._setup(broker, cash, coc)
        return broker

    def apply_to_cerebro(self, cerebro: bt.Cerebro, cash: float | None = None, coc: bool = False) -> BacktestBroker:
        """Install a :class:`BacktestBroker` carrying these fees/slippage on ``cerebro``.

        ``coc`` (cheat-on-close) fills market orders at the close of the bar that created
        them; off by default (fills at the next bar's open, like a live market order).
        """
        broker = cerebro.getbroker()
        start_cash = broker.getcash() if cash is None else cash
        broker = self.make_broker(start_cash, coc=coc)
        cerebro.setbroker(broker)
        return broker

    def _setup(self, broker: bt.brokers.BackBroker, cash: float, coc: bool) -> None:
        broker.setcash(float(cash))
        broker.set_coc(bool(coc))
        broker.addcommissioninfo(MakerTakerCommission(commission=self.taker_fee, maker_rate=self.maker_fee))
        if self.slippage > 0:
            # slip_open: market orders filled at the open slip too; slip_match: a slip
            # beyond the bar's range is capped at high/low (never a price that did not trade);
            # slip_limit False: limit fills keep their price.
            broker.set_slippage_perc(self.slippage, slip_open=True, slip_limit=False, slip_match=True, slip_out=False)
