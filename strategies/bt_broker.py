"""backtrader's side of the fill specification in :mod:`core.costs`: a commission scheme
with maker/taker rates and a broker with the fill rules stated there.

This is the one place that reaches into ``BackBroker`` internals; the reference simulator
implements the same rules over arrays, and the parity test compares the two trade for trade.
"""
from __future__ import annotations

import backtrader as bt

from core.costs import Costs


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


def make_broker(costs: Costs, cash: float, coc: bool = False) -> BacktestBroker:
    """A :class:`BacktestBroker` carrying ``costs`` with ``cash``.

    ``coc`` (cheat-on-close) fills market orders at the close of the bar that created
    them; off by default (fills at the next bar's open, like a live market order).
    """
    broker = BacktestBroker()
    broker.setcash(float(cash))
    broker.set_coc(bool(coc))
    broker.addcommissioninfo(MakerTakerCommission(commission=costs.taker_fee, maker_rate=costs.maker_fee))
    if costs.slippage > 0:
        # slip_open: orders filled at the open slip too -- market orders, stops gapped through
        # and limits marketable at the open (capped at the limit); slip_match: a slip beyond
        # the bar's range is capped at high/low (never a price that did not trade), which
        # also applies to those limits whatever slip_limit says. A limit filled mid-bar keeps
        # its price. See the fill rules in core.costs.
        broker.set_slippage_perc(costs.slippage, slip_open=True, slip_limit=False, slip_match=True, slip_out=False)
    return broker


def apply_costs(cerebro: bt.Cerebro, costs: Costs, cash: float | None = None, coc: bool = False) -> BacktestBroker:
    """Install a :class:`BacktestBroker` carrying ``costs`` on ``cerebro`` (see :func:`make_broker`)."""
    start_cash = cerebro.getbroker().getcash() if cash is None else cash
    broker = make_broker(costs, start_cash, coc=coc)
    cerebro.setbroker(broker)
    return broker
