"""ModelStrategy: probability -> hooks -> one decision step -> backtrader orders with barrier exits.

A new strategy overrides one of the vectorised hooks of :class:`strategies.hooks.VectorHooks`
(each takes the bars as a DataFrame and returns one value per bar)::

    signal(p, bars)               s in [-1, 1], 0 at the policy's ``center`` (no edge)
    entry_allowed(bars)           True where a new position may be opened (default: every bar)
    target_weight(s, fvol, bars)  vol scaling, deadband, clip, max_position, long-only on spot

and, for the inputs, ``make_probability()`` (the line of P per bar) and ``make_vol_forecast()``.
The hooks are evaluated by :func:`strategies.hooks.evaluate_hooks` over the fed bars: once
per backtest (the feed is preloaded, the indicators computed), and on every bar in paper and
live sessions (bars arrive one by one; the value of the last bar is used) over the trailing
``hook_lookback`` bars the strategy declares (:func:`strategies.hooks.declared_lookback`: 1
for the default per-bar rules), so a bar costs the same after weeks as after an hour; a
strategy that overrides a hook without declaring one gets the whole history on every bar.
The defaults call the vectorised rules of the strategy's :class:`core.policy.Policy` (param
``policy``, built once by :meth:`Policy.from_config`).

Each bar (from ``trade_start`` on) the risk manager (:class:`core.risk.RiskManager`) gates
the account and the one decision step :func:`core.decision.decide` -- the compiled function
the reference simulator and the sweep run too -- turns the gate, the position and the
hooks' values into actions (flatten, cut, time exit, cancel, enter); this class only turns
them into backtrader orders (:meth:`ModelStrategy.apply_actions`). The rules themselves
(risk flatten, leverage cut, time exit after ``max_hold`` bars of clock time, limit entry
time-in-force, entry with triple-barrier bracket and the tie rule) are stated in
:mod:`core.decision`; the fill rules in :mod:`core.costs`.

Restart: :meth:`ModelStrategy.state_dict` (JSON-able, taken after a bar's decision) and
:meth:`ModelStrategy.load_state` (or param ``state``) resume a strategy on a fresh engine:
position bookkeeping, barrier prices, working orders (re-submitted so the broker sees them),
risk manager state and signal statistics.

Primed warm-up (paper and live sessions, :func:`primes_history`): param ``history`` holds
the warm-up bars before the first bar backtrader feeds (a canonical OHLCV frame). The
indicators start from their state after those bars in one vectorised step (their param
``history``) instead of ~1,400 ``next()`` calls; the hooks still see every bar they need:
when the fed bars are fewer than the declared lookback (all of them when none is declared),
the history's last bars come first, with their P and forecast from the batch path (the
backtest's numbers for those bars); the default hooks are per-bar rules, so they need only
the current bar.
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
from core.decision import (
    A_CANCEL_ENTRY,
    A_CLOSE,
    A_DECIDED,
    A_ENTER,
    A_FLATTEN,
    A_REDUCE,
    A_STOP,
    KINDS,
    Actions,
    BarSignal,
    Gate,
    SymbolState,
    count_decision,
    decide,
    leverage_cut,
    new_signal_stats,
    rules_of,
    signal_stats_dict,
)
from core.policy import (  # noqa: F401  (traded_labels, BARRIER_SOURCES re-exported for callers)
    BARRIER_SOURCES,
    Policy,
    traded_labels,
)
from core.risk import ACTIONS, REDUCE, R_LEVERAGE, RiskManager
from core.timeframes import (
    bt_num_to_ns,
    bt_num_to_timestamp,
    timeframe_seconds,
    timestamp_to_bt_num,
)
from indicators.bt_features import BarrierWidth, RealisedVol, VolForecast, feed_frame, history_vols, history_widths
from strategies.hooks import (
    HookArrays,
    VectorHooks,
    declared_lookback,
    engine_only_overrides,
    evaluate_hooks,
    is_own_class,
)
from models.schedule import model_id_at

STATE_VERSION = 1
_EXECTYPES = {"Market": bt.Order.Market, "Limit": bt.Order.Limit, "Stop": bt.Order.Stop}


class ModelStrategy(VectorHooks, bt.Strategy):
    """Base of every model-driven strategy (see the module docstring for the pipeline).

    Subclasses provide the probability line in :meth:`make_probability`; everything else
    has a working default (the hooks of :class:`strategies.hooks.VectorHooks`).
    """

    params = (
        ("policy", None),          # core.policy.Policy (None: Policy.default(), the typed config's defaults)
        ("feature_cfg", None),     # FeatureConfig for the volatility forecast
        ("risk", None),            # RiskManager (default: RiskConfig() defaults)
        ("trade_start", None),     # UTC Timestamp: no entries and no risk checks before it
        ("trade_end", None),       # UTC Timestamp: no new entries after it
        ("state", None),           # state_dict() of an earlier run to resume from (see load_state)
        ("history", None),         # warm-up bars before the first fed bar, primed (module docstring)
    )

    #: True when the class's indicators take param ``history`` (see :func:`primes_history`)
    primable = False

    # ------------------------------------------------------------ construction
    def __init__(self) -> None:
        self.policy: Policy = self.p.policy if self.p.policy is not None else Policy.default()
        self.prob = self.make_probability()
        self.vol_forecast = self.make_vol_forecast()
        self.barrier_width = self.make_barrier_width()
        self.realised_vol = RealisedVol(self.data, window=self._risk_cfg().vol_window_bars,
                                        timeframe=self.policy.timeframe, history=self.p.history)
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
        self._stats = new_signal_stats()
        self._rules = rules_of(self.policy.to_array())
        self._hooks: HookArrays | None = None     # the hooks' values over the fed bars
        self._hooks_n = -1                        # ... evaluated over this many bars
        # bars, P, forecast, barrier widths (None: fixed barriers) of the primed history
        self._hook_history: tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray | None] | None = None
        self._hook_offset = 0                     # row of the first fed bar in the hook arrays
        self._lookback: int | None = 0            # declared_lookback(self), resolved on first use (0: not yet)
        self._restore: dict[str, Any] | None = None
        # entry order ref -> id of the model that scored its decision bar (trade list's model_id)
        self.entry_models: dict[int, str] = {}
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
        return VolForecast(self.data, cfg=self.p.feature_cfg, timeframe=self.policy.timeframe,
                           history=self.p.history)

    def make_barrier_width(self):
        """The line of the barrier width per bar for volatility-scaled barriers
        (:class:`indicators.bt_features.BarrierWidth`, the labeller's ``sigma_t * sqrt(horizon)``);
        None for fixed barriers (width 1 on every bar)."""
        pol = self.policy
        if not pol.vol_scaled:
            return None
        return BarrierWidth(self.data, horizon=pol.barrier_horizon, vol_span=pol.vol_span, timeframe=pol.timeframe,
                            history=self.p.history)

    def width(self) -> float:
        """Barrier width of the current bar (1.0 for fixed barriers)."""
        return 1.0 if self.barrier_width is None else float(self.barrier_width[0])

    def history_probability(self) -> np.ndarray:
        """P over the primed ``history`` bars (a primable subclass provides it; NaN here)."""
        return np.full(0 if self.p.history is None else len(self.p.history), np.nan)

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

    def model_id(self) -> str:
        """Id of the model that scored the current bar (:func:`models.schedule.model_id_at`: a
        walk-forward schedule's fold, else the bundle's folder name); "" without a model."""
        model = getattr(getattr(self, "tcn", None), "bundle", None)
        if model is None:
            return ""
        return model_id_at(model, bt_num_to_timestamp(self.data.datetime[0]))

    @property
    def signal_stats(self) -> dict[str, Any]:
        """Signal statistics (:data:`core.decision.SIGNAL_STATS`) of the decisions so far."""
        return signal_stats_dict(self._stats)

    @signal_stats.setter
    def signal_stats(self, stats: dict[str, Any]) -> None:
        self._stats = new_signal_stats()
        for k, name in enumerate(("decisions", "scored", "p_max", "positive_signal", "past_deadband")):
            self._stats[k] = float(stats[name])

    def hook_values(self) -> HookArrays:
        """The hooks' values (:func:`strategies.hooks.evaluate_hooks`, P from the probability
        line, the forecast from the vol-forecast line) over the bars :meth:`_hook_span` picks:
        a preloaded backtest feed is evaluated once over all of it; a live feed grows by one
        bar per call and is evaluated again, over its trailing ``hook_lookback`` bars (the
        primed history's included when the fed bars are fewer), or -- lookback not declared --
        over the whole history. Read a bar's row with :meth:`_hook_row`."""
        n = self.data.buflen()
        if self._hooks is None or self._hooks_n != n:
            fed, hist = self._hook_span(n)
            bars = feed_frame(self.data, last=fed)
            prob, fvol = _line_tail(self.prob, n, fed), _line_tail(self.vol_forecast, n, fed)
            width = None if self.barrier_width is None else _line_tail(self.barrier_width, n, fed)
            if hist:
                h_bars, h_prob, h_fvol, h_width = self._history_for_hooks()
                bars = pd.concat([h_bars.iloc[-hist:], bars])
                prob, fvol = np.concatenate([h_prob[-hist:], prob]), np.concatenate([h_fvol[-hist:], fvol])
                if width is not None:
                    width = np.concatenate([h_width[-hist:], width])
            self._hooks = evaluate_hooks(self, bars, prob, fvol, width)
            self._hooks_n = n
            self._hook_offset = hist - (n - fed)  # row of fed bar 0 (negative: before the window)
        return self._hooks

    def _hook_span(self, n: int) -> tuple[int, int]:
        """(fed bars, primed history bars) the hooks are evaluated over, the newest of each:
        every fed bar of a preloaded feed (the current bar is not its last), the trailing
        ``hook_lookback`` bars of a growing one (the current bar is its newest), and of the
        history what the first evaluated bar needs (all of it without a declared lookback)."""
        if self._lookback == 0:
            self._lookback = declared_lookback(self)
        lookback = self._lookback
        history = 0 if self.p.history is None else len(self.p.history)
        if lookback is None:
            return n, history
        if len(self.data) == n:  # a growing feed: the current bar is the newest
            fed = min(n, lookback)
            return fed, min(history, lookback - fed)
        return n, min(history, lookback - 1)

    def _history_for_hooks(self) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray | None]:
        """The primed history's (bars, P, forecast, barrier widths) for the hooks, computed once
        (the batch path: the backtest's numbers for those bars)."""
        if self._hook_history is None:
            history, pol = self.p.history, self.policy
            fvol = history_vols(history, self.p.feature_cfg, pol.timeframe)
            width = (history_widths(history, pol.barrier_horizon, pol.vol_span, pol.timeframe) if pol.vol_scaled
                     else None)
            self._hook_history = (history, np.asarray(self.history_probability(), dtype="float64"), fvol, width)
        return self._hook_history

    def _hook_row(self) -> int:
        """Row of the current bar in :meth:`hook_values`."""
        self.hook_values()
        return self._hook_offset + len(self.data) - 1

    def bar_signal(self) -> tuple[float, float, float]:
        """(P, signal, weight capped by the risk manager) of the current bar, from the hooks."""
        h = self.hook_values()
        i = self._hook_row()
        return float(h.prob[i]), float(h.signal[i]), float(self.risk.cap_weight(h.weight[i]))

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
        d = self.risk.check(self.data.datetime.datetime(0), self.broker.getvalue(), pos * self.data.close[0],
                            float(self.realised_vol[0]))
        gate = Gate(ACTIONS.index(d.action), d.reason_code, d.flatten, d.stop, d.max_weight)
        h = self.hook_values()
        i = self._hook_row()
        in_window = self._end_num is None or now_num <= self._end_num
        sig = BarSignal(float(h.prob[i]), float(h.signal[i]), float(h.weight[i]), bool(h.allowed[i]), in_window,
                        self.width())
        actions = decide(gate, self.symbol_state(), sig, self._rules)
        if actions.mask & A_DECIDED:
            count_decision(self._stats, sig.p, sig.s, actions.weight)
        self.apply_actions(actions)
        if actions.mask & A_STOP:
            # Stop once the flattening order has filled (it fills on a later bar).
            self.stopped_by_kill_switch = True
            if not pos and not self.broker.get_orders_open():
                self.env.runstop()

    def symbol_state(self) -> SymbolState:
        """The decision step's view of the position and the working orders."""
        prices = {o.info.get("kind"): float(o.created.price) for o in self._exits}
        return SymbolState(float(self.position.size), float(self.broker.getvalue()), float(self.data.close[0]),
                           self.bars_held() if self._entry_bar is not None else -1, self._entry is not None,
                           _alive(self._entry), self._bar - self._entry_submit_bar, self._closing is not None,
                           _alive(self._closing), prices.get("take_profit", math.nan), prices.get("stop", math.nan))

    def apply_actions(self, a: Actions) -> None:
        """Turn the decision step's actions into backtrader orders (order of :mod:`core.decision`)."""
        if a.mask & A_REDUCE:
            self._place_cut(a)
        if a.mask & A_FLATTEN:
            self._cancel_working()
            if a.mask & A_CLOSE:
                self._close(KINDS[a.kind])
        if a.mask & A_CANCEL_ENTRY:
            self.cancel(self._entry)  # cancels its children too
        if a.mask & A_ENTER:
            tp_sl = {"stop": a.stop, "take_profit": a.take_profit}
            self._submit_bracket(a.long, a.size, bt.Order.Limit if a.limit else bt.Order.Market,
                                 a.price if a.limit else None, tp_sl)
            self.entry_models[self._entry.ref] = self.model_id()
            self._entry_submit_bar = self._bar
            self._ref_price = a.price

    # ------------------------------------------------------------ exits
    def flatten(self, kind: str) -> None:
        """Cancel every working order (a pending risk cut included, so the close is never
        larger than the position) and close the position with a market order tagged ``kind``."""
        self._cancel_working()
        if self.position.size and not _alive(self._closing):
            self._close(kind)

    def _cancel_working(self) -> None:
        for order in [self._entry, self._cut, *self._exits]:
            if _alive(order):
                self.cancel(order)

    def _close(self, kind: str) -> None:
        self._closing = self.close()
        if self._closing is not None:
            self._closing.addinfo(kind=kind)

    def reduce_to(self, max_weight: float) -> None:
        """Cut the position to ``max_weight`` of equity, re-placing its barrier exits
        (:func:`core.decision.leverage_cut`)."""
        a = leverage_cut(Gate(REDUCE, R_LEVERAGE, False, False, float(max_weight)), self.symbol_state(), self._rules)
        if a.mask & A_REDUCE:
            self._place_cut(a)

    def _place_cut(self, a: Actions) -> None:
        for order in self._exits:
            if order.alive():
                self.cancel(order)
        if _alive(self._cut):
            self.cancel(self._cut)  # a newer cut replaces one still in flight
        cut = self.buy(size=a.cut) if a.cut > 0 else self.sell(size=-a.cut)
        cut.addinfo(kind="risk")
        self._cut = cut
        prices = {k: v for k, v in (("take_profit", a.take_profit), ("stop", a.stop)) if v == v}
        self._exits = self._submit_exits(a.long, a.keep, prices)

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


def primes_history(strategy_cls: type) -> bool:
    """True when a session may prime ``strategy_cls`` from its warm-up (param ``history``)
    instead of feeding every warm-up bar: its indicators take ``history`` (``primable``)
    and every engine method is nts's own -- a user's class overrides the vectorised hooks
    only (its own ``__init__`` or ``next`` could build indicators that need each bar)."""
    if not (isinstance(strategy_cls, type) and issubclass(strategy_cls, ModelStrategy) and strategy_cls.primable):
        return False
    for klass in strategy_cls.__mro__:
        if is_own_class(klass):
            break
        if "__init__" in vars(klass):
            return False
    return not engine_only_overrides(strategy_cls, ModelStrategy)


def _alive(order: bt.Order | None) -> bool:
    return order is not None and bool(order.alive())


def _line_tail(line: Any, n: int, k: int) -> np.ndarray:
    """Values ``n - k .. n - 1`` of a backtrader line (or single-line indicator) as float64 (NaN
    past what it holds yet)."""
    arr = np.frombuffer(line.array, dtype="float64") if len(line.array) else np.zeros(0)
    out = np.full(k, np.nan)
    part = arr[n - k:n]
    out[:len(part)] = part
    return out


def _iso(num: float) -> str:
    """ISO text of a backtrader date number (UTC)."""
    return bt_num_to_timestamp(num).isoformat()


def trade_model_ids(trades: pd.DataFrame, fills: pd.DataFrame, entry_models: dict[int, str]) -> list[str]:
    """Per trade, the id of the model that scored its entry decision: trades opened by an entry
    order take, in order, the entry fills' order refs (the strategy enters only when flat, so
    each entry fill opens one trade); other trades (a restored position) get ""."""
    refs = iter(fills.loc[fills["kind"] == "entry", "ref"].tolist())
    return [entry_models.get(next(refs, None), "") if kind == "entry" else "" for kind in trades["entry_kind"]]


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
