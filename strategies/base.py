"""ModelStrategy: probability -> signal -> target weight -> risk -> orders with barrier exits.

The pipeline is a handful of small methods; a new strategy overrides one of them::

    probability()            P(profit barrier first) of the current bar, from an indicator line
    signal(p)                s in [-1, 1], 0 at the policy's ``center`` (no edge)
    target_weight(s)         vol scaling, deadband, clip, max_position, long-only on spot
    order_for(w, confidence) entry order (limit at the close or market) + barrier exits
    barrier_prices(ref, side)  take-profit and stop prices of a new position

The default hooks call the scalar rules of the strategy's :class:`core.policy.Policy` (param
``policy``, built once by :meth:`Policy.from_config`), the same compiled functions the
reference simulator (:mod:`core.simulator`) and the sweeps use; a subclass overriding one
hook (e.g. :class:`strategies.examples.NightOnly`) keeps everything else.

Exits are the triple barriers of the labels: a bracket of take profit (limit) and stop
(stop order) around the entry, plus a time exit ``max_hold`` bars (of clock time, so a data
gap does not stretch it) after the entry bar. The
entry bar is the bar whose close is the reference price: the signal bar for market orders
(filled at that close with cheat-on-close, else at the next open) and the bar before the
fill for a limit order. When one bar touches both barriers the stop wins (``tie='stop'``,
as in :mod:`models.labels`); ``tie='profit'`` submits the take profit first instead. The
fill rules themselves are stated once in :mod:`core.costs`.

Risk: every bar (from ``trade_start`` on) :class:`core.risk.RiskManager` sees the
equity, the position value and the realised daily volatility; ``flatten`` closes
everything, ``stop`` (kill switch) also ends the run, ``halt`` blocks new entries.

Restart: :meth:`ModelStrategy.state_dict` (JSON-able, taken after a bar's decision) and
:meth:`ModelStrategy.load_state` (or param ``state``) resume a strategy on a fresh engine:
position bookkeeping, barrier prices, working orders (re-submitted so the broker sees them),
risk manager state and signal statistics.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import backtrader as bt
import numpy as np
import pandas as pd

from core.config import Config, RiskConfig
from core.costs import Costs
from core.policy import (  # noqa: F401  (traded_labels, BARRIER_SOURCES and the rules re-exported for callers)
    BARRIER_SOURCES,
    Policy,
    signal_from_probability,
    traded_labels,
    weight_from_signal,
)
from core.risk import RiskManager
from core.timeframes import (
    bt_num_to_ns,
    bt_num_to_timestamp,
    timeframe_seconds,
    timestamp_to_bt_num,
)
from indicators.bt_features import RealisedVol, VolForecast

STATE_VERSION = 1
_EXECTYPES = {"Market": bt.Order.Market, "Limit": bt.Order.Limit, "Stop": bt.Order.Stop}


class ModelStrategy(bt.Strategy):
    """Base of every model-driven strategy (see the module docstring for the pipeline).

    Subclasses provide the probability line in :meth:`make_probability`; everything else
    has a working default.
    """

    params = (
        ("policy", None),          # core.policy.Policy (None: Policy.default(), the typed config's defaults)
        ("feature_cfg", None),     # FeatureConfig for the volatility forecast
        ("risk", None),            # RiskManager (default: RiskConfig() defaults)
        ("trade_start", None),     # UTC Timestamp: no entries and no risk checks before it
        ("trade_end", None),       # UTC Timestamp: no new entries after it
        ("state", None),           # state_dict() of an earlier run to resume from (see load_state)
    )

    # ------------------------------------------------------------ construction
    def __init__(self) -> None:
        self.policy: Policy = self.p.policy if self.p.policy is not None else Policy.default()
        self.prob = self.make_probability()
        self.vol_forecast = self.make_vol_forecast()
        self.realised_vol = RealisedVol(self.data, window=self._risk_cfg().vol_window_bars,
                                        timeframe=self.policy.timeframe)
        self.risk: RiskManager = self.p.risk if self.p.risk is not None else RiskManager(RiskConfig())
        self.center = self.resolve_center()
        self._bar = -1
        self._bar_num: float | None = None        # backtrader date number of the last bar seen
        self._entry_num: float | None = None      # ... of the entry bar
        self._bar_days = timeframe_seconds(self.policy.timeframe) / 86400.0
        self._entry: bt.Order | None = None       # working or filled entry order
        self._exits: list[bt.Order] = []          # barrier exits of the open position (or of the working entry)
        self._entry_submit_bar = -1
        self._entry_bar: int | None = None        # bar of the entry's reference close
        self._closing: bt.Order | None = None     # time/risk exit in flight
        self._cut: bt.Order | None = None         # risk cut (reduce_to) in flight
        self._ref_price: float | None = None      # entry reference price (the signal close)
        self.saw_probability = False              # any finite P from trade_start on (run_backtest checks)
        self._start_num = self._to_num(self.p.trade_start)
        self._end_num = self._to_num(self.p.trade_end)
        self.stopped_by_kill_switch = False
        # Why a run trades as much as it does: counted on the flat bars where an entry was
        # allowed (reported with the results; "0 trades" alone does not say why).
        self.signal_stats = {"decisions": 0, "scored": 0, "p_max": math.nan, "positive_signal": 0,
                             "past_deadband": 0}
        self._restore: dict[str, Any] | None = None
        if self.p.state is not None:
            self.load_state(self.p.state)

    def _risk_cfg(self) -> RiskConfig:
        return self.p.risk.cfg if self.p.risk is not None else RiskConfig()

    @staticmethod
    def _to_num(ts: Any) -> float | None:
        if ts is None:
            return None
        t = pd.Timestamp(ts)
        t = t.tz_localize("UTC") if t.tz is None else t.tz_convert("UTC")
        return bt.date2num(t.tz_convert(None).to_pydatetime())

    # ------------------------------------------------------------ hooks
    def make_probability(self):
        """Return the line (or indicator) holding P(profit) per bar. Subclasses must provide it."""
        raise NotImplementedError("ModelStrategy subclasses provide make_probability()")

    def make_vol_forecast(self):
        """Return the line of the annualised volatility forecast (default: ``ewma_vol_fast``
        x sqrt(bars per year), see :class:`indicators.bt_features.VolForecast`)."""
        return VolForecast(self.data, cfg=self.p.feature_cfg, timeframe=self.policy.timeframe)

    def resolve_center(self) -> float:
        """The probability with zero edge (the policy's ``center``, already resolved: with
        ``"breakeven"`` the barriers' break-even probability after a round trip of fees)."""
        return float(self.policy.center)

    def probability(self) -> float:
        """Calibrated P(profit barrier first) of the current bar (NaN = unknown)."""
        return float(self.prob[0])

    def forecast_vol(self) -> float:
        """Annualised volatility forecast of the current bar."""
        return float(self.vol_forecast[0])

    def signal(self, p: float) -> float:
        """s in [-1, 1], 0 at the centre (:meth:`core.policy.Policy.signal`)."""
        return self.policy.signal(p)

    def target_weight(self, s: float) -> float:
        """Weight of equity to hold (:meth:`core.policy.Policy.target_weight`)."""
        return self.policy.target_weight(s, self.forecast_vol())

    def barrier_prices(self, ref: float, long: bool) -> tuple[float, float]:
        """(take_profit, stop) prices around the reference price ``ref``."""
        return self.policy.barrier_prices(ref, long)

    def use_limit(self, confidence: float) -> bool:
        """Limit order at the close when ``confidence >= limit_confidence``, market otherwise."""
        return self.policy.use_limit(confidence)

    def order_for(self, w: float, confidence: float) -> list[bt.Order]:
        """Submit the entry for weight ``w`` with its take-profit and stop children.

        Entry reference price = this bar's close; limit entries rest at that price for
        ``limit_tif_bars`` bars. Returns [entry, first child, second child].
        """
        ref = float(self.data.close[0])
        equity = self.broker.getvalue()
        size = abs(w) * equity / ref
        if size <= 0:
            return []
        long = w > 0
        tp, sl = self.barrier_prices(ref, long)
        limit = self.use_limit(confidence)
        orders = self._submit_bracket(long, size, bt.Order.Limit if limit else bt.Order.Market,
                                      ref if limit else None, {"stop": sl, "take_profit": tp})
        self._entry_submit_bar = self._bar
        self._ref_price = ref
        return orders

    def _exit_kinds(self) -> list[str]:
        """Exit kinds in submission order: backtrader tries pending orders in that order, so
        the first one wins a bar that touches both barriers."""
        return ["take_profit", "stop"] if self.policy.tie == "profit" else ["stop", "take_profit"]

    def _submit_bracket(self, long: bool, size: float, exectype: int, price: float | None,
                        barriers: dict[str, float]) -> list[bt.Order]:
        opener = self.buy if long else self.sell
        closer = self.sell if long else self.buy
        entry = opener(size=size, exectype=exectype, price=price, transmit=False)
        entry.addinfo(kind="entry")
        kinds = self._exit_kinds()
        children = []
        for i, kind in enumerate(kinds):
            exec_child = bt.Order.Stop if kind == "stop" else bt.Order.Limit
            child = closer(size=size, exectype=exec_child, price=barriers[kind], parent=entry,
                           transmit=i == len(kinds) - 1)
            child.addinfo(kind=kind)
            children.append(child)
        self._entry = entry
        self._exits = children
        return [entry, *children]

    # ------------------------------------------------------------ bar loop
    def prenext(self) -> None:
        self._bar += 1
        self._bar_num = self.data.datetime[0]
        self._apply_restore()

    def next(self) -> None:
        self._bar += 1
        now_num = self.data.datetime[0]
        self._bar_num = now_num
        if self._apply_restore():
            return
        if self._start_num is not None and now_num < self._start_num:
            return
        if not self.saw_probability:
            p = self.probability()
            self.saw_probability = p == p  # not NaN
        pos = self.position.size
        close = self.data.close[0]
        decision = self.risk.check(self.data.datetime.datetime(0), self.broker.getvalue(), pos * close,
                                   float(self.realised_vol[0]))
        if decision.flatten:
            self.flatten("kill" if decision.stop else "risk")
            if decision.stop:
                # Stop once the flattening order has filled (it fills on a later bar).
                self.stopped_by_kill_switch = True
                if not pos and not self.broker.get_orders_open():
                    self.env.runstop()
            return
        if decision.action == "reduce" and pos:
            self.reduce_to(decision.max_weight)
        if pos:
            if self._entry_bar is not None and self._closing is None and self.bars_held() >= self.policy.max_hold:
                self.flatten("time")
            return
        if self._entry is not None:  # a limit entry still working
            if self._entry.alive() and self._bar - self._entry_submit_bar >= self.policy.limit_tif_bars:
                self.cancel(self._entry)  # cancels its children too
            return
        if not decision.allow or (self._end_num is not None and now_num > self._end_num):
            return
        p = self.probability()
        s = self.signal(p)
        w = self.risk.cap_weight(self.target_weight(s))
        self._count_decision(p, s, w)
        if w != 0.0:
            self.order_for(w, abs(s))

    # ------------------------------------------------------------ exits
    def flatten(self, kind: str) -> None:
        """Cancel every working order (a pending risk cut included, so the close is never
        larger than the position) and close the position with a market order tagged ``kind``."""
        for order in [self._entry, self._cut, *self._exits]:
            if order is not None and order.alive():
                self.cancel(order)
        if self.position.size and (self._closing is None or not self._closing.alive()):
            self._closing = self.close()
            if self._closing is not None:
                self._closing.addinfo(kind=kind)

    def reduce_to(self, max_weight: float) -> None:
        """Cut the position to ``max_weight`` of equity, re-placing its barrier exits."""
        pos = self.position.size
        close = self.data.close[0]
        target = math.copysign(max_weight * self.broker.getvalue() / close, pos)
        excess = pos - target
        if abs(excess) <= 1e-12 or abs(target) >= abs(pos):
            return
        prices = {o.info.get("kind"): o.created.price for o in self._exits}
        for order in self._exits:
            if order.alive():
                self.cancel(order)
        if self._cut is not None and self._cut.alive():
            self.cancel(self._cut)  # a newer cut replaces one still in flight
        cut = self.sell(size=excess) if excess > 0 else self.buy(size=-excess)
        cut.addinfo(kind="risk")
        self._cut = cut
        self._exits = self._submit_exits(pos > 0, abs(target), prices)

    def _submit_exits(self, long: bool, size: float, prices: dict[str, float]) -> list[bt.Order]:
        """Stand-alone barrier exits of a position as one OCO group (one fill cancels the other)."""
        closer = self.sell if long else self.buy
        exits: list[bt.Order] = []
        for kind in self._exit_kinds():
            if kind not in prices:
                continue
            exectype = bt.Order.Stop if kind == "stop" else bt.Order.Limit
            o = closer(size=size, exectype=exectype, price=prices[kind], oco=exits[0] if exits else None)
            o.addinfo(kind=kind)
            exits.append(o)
        return exits

    # ------------------------------------------------------------ notifications
    def notify_order(self, order: bt.Order) -> None:
        if order.status in (order.Submitted, order.Accepted):
            return
        if order is self._entry or (self._entry is not None and order.ref == self._entry.ref):
            if order.status == order.Completed:
                # The fill is notified before this bar's next(), so self._bar is still the
                # previous bar: the signal bar for a market entry (filled at its close with
                # cheat-on-close, else at the next open) and the bar before the fill for a limit.
                self._entry_bar = self._bar
                self._entry_num = self._bar_num  # not yet advanced to the fill bar
            elif order.status in (order.Canceled, order.Margin, order.Rejected, order.Expired):
                self._reset_trade()
            return
        if self._cut is not None and order.ref == self._cut.ref and not order.alive():
            self._cut = None
        if order.status == order.Completed and not self.position.size:
            self._reset_trade()
        elif (self._closing is not None and order.ref == self._closing.ref and order.status != order.Completed
              and self.position.size):
            self._closing = None  # a failed exit is retried on the next bar

    def _count_decision(self, p: float, s: float, w: float) -> None:
        st = self.signal_stats
        st["decisions"] += 1
        if p == p:  # not NaN
            st["scored"] += 1
            st["p_max"] = p if not st["p_max"] >= p else st["p_max"]
        st["positive_signal"] += s > 0
        st["past_deadband"] += w != 0.0

    def bars_held(self) -> int:
        """Bars of clock time since the entry bar. Counted in time, not in bars seen, so a
        data gap does not stretch the holding period: the first bar after a gap that ends the
        horizon closes the position (the labels give such bars no label at all)."""
        if self._entry_num is None:
            return 0
        return int(round((self.data.datetime[0] - self._entry_num) / self._bar_days))

    def _reset_trade(self) -> None:
        self._entry = None
        self._exits = []
        self._entry_bar = None
        self._entry_num = None
        self._closing = None
        self._cut = None
        self._ref_price = None

    def notify_trade(self, trade: bt.Trade) -> None:  # the FillLog analyzer exports trades
        pass

    # ------------------------------------------------------------ restartable state
    def state_dict(self) -> dict[str, Any]:
        """The strategy's state after the current bar's decision, JSON-able (floats may be
        +-inf/NaN inside ``risk``, as :meth:`RiskManager.state_dict` has them).

        Keys: ``version``; ``time`` (ISO UTC bar open time the state follows); ``broker``
        (``cash``, ``value``, ``position`` {``size``, ``price``}: what a simulated broker must be
        restored to); ``trade`` (None when no trade is open or working, else ``entry_time``
        of the entry bar or null while the entry works, ``reference_price``,
        ``take_profit``, ``stop``, ``bars_held``); ``orders``: the working orders in the broker's
        processing order, each {``role`` (entry/cut/exit/closing), ``kind``, ``side``,
        ``exectype``, ``size``, ``price`` (null for market), ``submit_time``, ``active``,
        ``bars_working``, ``tif_left`` (entries only)}; ``risk``
        (:meth:`RiskManager.state_dict`); ``signal_stats``; ``stopped_by_kill_switch``;
        ``saw_probability``.
        """
        pos = self.position
        orders: list[dict[str, Any]] = []
        entry_alive = self._entry is not None and self._entry.alive()
        if entry_alive:
            orders.append(self._order_state(self._entry, "entry"))
        if self._cut is not None and self._cut.alive():
            orders.append(self._order_state(self._cut, "cut"))
        orders += [self._order_state(o, "exit") for o in self._exits if o.alive()]
        if self._closing is not None and self._closing.alive():
            orders.append(self._order_state(self._closing, "closing"))
        barriers = {o.info.get("kind"): float(o.created.price) for o in self._exits}
        trade = None
        if pos.size or entry_alive:
            trade = {
                "entry_time": _iso(self._entry_num) if self._entry_num is not None else None,
                "reference_price": self._ref_price,
                "take_profit": barriers.get("take_profit"), "stop": barriers.get("stop"),
                "bars_held": self.bars_held(),
            }
        stats = dict(self.signal_stats)
        stats["p_max"] = None if stats["p_max"] != stats["p_max"] else float(stats["p_max"])
        return {
            "version": STATE_VERSION,
            "time": _iso(self.data.datetime[0]),
            "broker": {"cash": float(self.broker.getcash()), "value": float(self.broker.getvalue()),
                       "position": {"size": float(pos.size), "price": float(pos.price)}},
            "trade": trade,
            "orders": orders,
            "risk": self.risk.state_dict(),
            "signal_stats": {k: (int(v) if k != "p_max" else v) for k, v in stats.items()},
            "stopped_by_kill_switch": bool(self.stopped_by_kill_switch),
            "saw_probability": bool(self.saw_probability),
        }

    def _order_state(self, order: bt.Order, role: str) -> dict[str, Any]:
        exectype = order.getordername()
        working = self._bar - self._entry_submit_bar if role == "entry" else None
        return {
            "role": role, "kind": str(order.info.get("kind", "")), "side": "buy" if order.isbuy() else "sell",
            "exectype": exectype, "size": float(abs(order.executed.remsize)),
            "price": None if exectype == "Market" else float(order.created.price),
            "submit_time": _iso(order.created.dt), "active": bool(order.active()),
            "bars_working": working,
            "tif_left": (self.policy.limit_tif_bars - working) if role == "entry" else None,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` output (also via param ``state``).

        The risk manager and signal statistics are restored at once; the rest on the first
        bar at or after ``state['time']`` (the engine must be running to hold orders): a
        simulated backtrader broker (``BackBroker``, backtest and paper) gets the saved cash
        and position back (a live broker keeps the exchange's), the working orders are
        re-submitted in their saved order -- a working entry with its inactive barrier
        children as a bracket, the exits of an open position as one OCO group -- and nothing
        else is decided on that bar (its decision is the saved one). Feed the bar of
        ``state['time']`` (e.g. as the last warm-up bar): orders re-submitted on it then work
        from the next bar exactly as they would have; restored on a later bar they work one
        bar later.
        """
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"strategy state version {state.get('version')!r} is not {STATE_VERSION}")
        self.risk.load_state(state["risk"])
        stats = dict(state["signal_stats"])
        stats["p_max"] = math.nan if stats.get("p_max") is None else float(stats["p_max"])
        self.signal_stats = stats
        self.stopped_by_kill_switch = bool(state.get("stopped_by_kill_switch", False))
        self.saw_probability = bool(state.get("saw_probability", False))
        self._restore = state

    def _apply_restore(self) -> bool:
        """Finish :meth:`load_state` on the first bar at or after the saved time; True when it did."""
        state = self._restore
        if state is None:
            return False
        now_ns = int(bt_num_to_ns(np.array([self.data.datetime[0]]))[0])
        if now_ns < pd.Timestamp(state["time"]).value:
            return False
        self._restore = None
        self._reset_trade()
        broker = state["broker"]
        if isinstance(self.broker, bt.brokers.BackBroker):
            self.broker.cash = float(broker["cash"])
            position = self.broker.getposition(self.data)
            position.fix(float(broker["position"]["size"]), float(broker["position"]["price"]))
            position.adjbase = float(broker["position"]["price"])
            position.datetime = self.data.datetime.datetime(0)  # the broker's interest bookkeeping reads it
        trade = state.get("trade")
        if trade is not None:
            self._ref_price = trade.get("reference_price")
            if trade.get("entry_time") is not None:
                self._entry_num = timestamp_to_bt_num(trade["entry_time"])
                self._entry_bar = self._bar - int(trade.get("bars_held") or 0)
        orders = list(state.get("orders", []))
        entry = next((o for o in orders if o["role"] == "entry"), None)
        if entry is not None:
            barriers = {o["kind"]: o["price"] for o in orders if o["role"] == "exit"}
            self._submit_bracket(entry["side"] == "buy", entry["size"], _EXECTYPES[entry["exectype"]], entry["price"],
                                 barriers)
            self._entry_submit_bar = self._bar - int(entry["bars_working"] or 0)
        for spec in orders:
            role = spec["role"]
            if role == "cut":
                self._cut = self._market(spec)
            elif role == "closing":
                self._closing = self._market(spec)
        if entry is None:
            exits = [o for o in orders if o["role"] == "exit"]
            if exits:
                self._exits = self._submit_exits(exits[0]["side"] == "sell", exits[0]["size"],
                                                 {o["kind"]: o["price"] for o in exits})
        return True

    def _market(self, spec: dict[str, Any]) -> bt.Order:
        order = (self.buy if spec["side"] == "buy" else self.sell)(size=spec["size"])
        order.addinfo(kind=spec["kind"])
        return order


def _iso(num: float) -> str:
    """ISO text of a backtrader date number (UTC)."""
    return bt_num_to_timestamp(num).isoformat()


def strategy_params(cfg: Config, bundle: Any = None, barriers: str = "bundle", costs: Costs | None = None,
                    **extra: Any) -> dict[str, Any]:
    """backtrader params of :class:`ModelStrategy` from the typed config (and the model bundle).

    ``policy`` is :meth:`Policy.from_config` (barriers from :func:`traded_labels`: the bundle's
    labels when a bundle is given), trading ``costs`` when given; the volatility forecast
    uses the bundle's feature config (else ``cfg.features``); ``risk`` is a
    :class:`RiskManager` on ``cfg.risk``. ``extra`` overrides anything, policy fields
    included (``profit=0.9`` replaces the policy's profit, see :func:`apply_overrides`).
    """
    policy = Policy.from_config(cfg, bundle, barriers)
    if costs is not None:
        policy = policy.with_costs(costs)
    params: dict[str, Any] = {
        "policy": policy,
        "feature_cfg": bundle.feature_cfg if bundle is not None else cfg.features, "risk": RiskManager(cfg.risk),
    }
    return apply_overrides(params, extra)


POLICY_FIELDS = frozenset(f.name for f in dataclasses.fields(Policy))


def apply_overrides(params: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """``params`` updated by ``overrides``, where a name that is a :class:`Policy` field
    (``center``, ``profit``, ``limit_confidence``, ...) replaces that field of
    ``params['policy']`` (:meth:`Policy.replace`) and anything else is a param."""
    out = dict(params)
    overrides = dict(overrides or {})
    if "policy" in overrides:
        out["policy"] = overrides.pop("policy")
    changes = {k: overrides.pop(k) for k in list(overrides) if k in POLICY_FIELDS}
    if changes:
        out["policy"] = (out.get("policy") or Policy.default()).replace(**changes)
    out.update(overrides)
    return out
