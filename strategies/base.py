"""ModelStrategy: probability -> signal -> target weight -> risk -> orders with barrier exits.

The pipeline is a handful of small methods; a new strategy overrides one of them::

    probability()            P(profit barrier first) of the current bar, from an indicator line
    signal(p)                s in [-1, 1], 0 at ``center`` (no edge)
    target_weight(s)         vol scaling, deadband, clip, max_position, long-only on spot
    order_for(w, confidence) entry order (limit at the close or market) + barrier exits
    barrier_prices(ref, side)  take-profit and stop prices of a new position

Exits are the triple barriers of the labels: a bracket of take profit (limit) and stop
(stop order) around the entry, plus a time exit ``max_hold`` bars (of clock time, so a data
gap does not stretch it) after the entry bar. The
entry bar is the bar whose close is the reference price: the signal bar for market orders
(filled at that close with cheat-on-close, else at the next open) and the bar before the
fill for a limit order. When one bar touches both barriers the stop wins (``tie='stop'``,
as in :mod:`models.labels`); ``tie='profit'`` submits the take profit first instead.

Risk: every bar (from ``trade_start`` on) :class:`core.risk.RiskManager` sees the
equity, the position value and the realised daily volatility; ``flatten`` closes
everything, ``stop`` (kill switch) also ends the run, ``halt`` blocks new entries.

Parameters map 1:1 to the typed config (``strategy``, ``labels``, ``execution``,
``risk``): build them with :func:`strategy_params`. With a model bundle the barriers and
the feature settings come from the bundle (what the model was trained to predict); see
:func:`traded_labels`. A limit entry filled mid-bar gets its take profit from the next bar
on (see :mod:`core.costs`).
"""
from __future__ import annotations

import math
from typing import Any

import backtrader as bt

from core.config import Config, LabelConfig, RiskConfig
from core.errors import ConfigError
from core.risk import RiskManager
from core.timeframes import timeframe_seconds
from indicators.bt_features import RealisedVol, VolForecast
from models.labels import breakeven_probability


def signal_from_probability(p: float, center: float) -> float:
    """Map a probability to s in [-1, 1] with s = 0 at ``center``:
    ``(p - c) / (1 - c)`` above the centre, ``(p - c) / c`` below (c = 0.5 gives 2p - 1).
    NaN in, 0 out (no probability = no opinion)."""
    if p != p:  # NaN
        return 0.0
    if p >= center:
        s = (p - center) / (1.0 - center)
    else:
        s = (p - center) / center
    return max(-1.0, min(1.0, s))


def weight_from_signal(s: float, forecast_vol: float, target_vol: float, deadband: float,
                       max_position: float, allow_short: bool) -> float:
    """Vol-scaled weight: r = (target_vol / forecast_vol) * s; |r| < deadband -> 0;
    w = clip(r, -1, 1) * max_position; w < 0 -> 0 unless ``allow_short``.
    Both vols are annualised fractions (0.5 = 50% per year); a missing or non-positive
    forecast gives 0 (cannot size without it)."""
    if not (forecast_vol > 0) or s != s or not math.isfinite(forecast_vol):
        return 0.0
    r = (target_vol / forecast_vol) * s
    if abs(r) < deadband:
        return 0.0
    w = max(-1.0, min(1.0, r)) * max_position
    if w < 0 and not allow_short:
        return 0.0
    return w


class ModelStrategy(bt.Strategy):
    """Base of every model-driven strategy (see the module docstring for the pipeline).

    Subclasses provide the probability line in :meth:`make_probability`; everything else
    has a working default.
    """

    params = (
        ("center", 0.5),           # probability with no edge; a float or "breakeven"
        ("target_vol", 0.5),       # annualised volatility target (fraction per year)
        ("deadband", 0.3),         # |r| below this -> no position
        ("max_position", 0.95),    # cap on |weight| (share of equity)
        ("limit_confidence", 0.5), # |s| >= this -> limit order at the close, else market
        ("limit_tif_bars", 1),     # bars a limit entry stays working
        ("max_hold", 8),           # time exit, bars after the entry bar
        ("allow_short", False),    # spot: no shorts
        ("profit", 0.008),         # take-profit distance from the entry reference price
        ("stop", 0.004),           # stop distance
        ("tie", "stop"),           # which barrier wins when one bar touches both
        ("fee_rate", 0.001),       # per-side fee used by center="breakeven"
        ("timeframe", "15m"),
        ("feature_cfg", None),     # FeatureConfig for the volatility forecast
        ("risk", None),            # RiskManager (default: RiskConfig() defaults)
        ("trade_start", None),     # UTC Timestamp: no entries and no risk checks before it
        ("trade_end", None),       # UTC Timestamp: no new entries after it
    )

    # ------------------------------------------------------------ construction
    def __init__(self) -> None:
        self.prob = self.make_probability()
        self.vol_forecast = self.make_vol_forecast()
        self.realised_vol = RealisedVol(self.data, window=self._risk_cfg().vol_window_bars,
                                        timeframe=self.p.timeframe)
        self.risk: RiskManager = self.p.risk if self.p.risk is not None else RiskManager(RiskConfig())
        self.center = self.resolve_center()
        self._bar = -1
        self._bar_num: float | None = None        # backtrader date number of the last bar seen
        self._entry_num: float | None = None      # ... of the entry bar
        self._bar_days = timeframe_seconds(self.p.timeframe) / 86400.0
        self._entry: bt.Order | None = None       # working or filled entry order
        self._exits: list[bt.Order] = []          # bracket children of the open position
        self._entry_submit_bar = -1
        self._entry_bar: int | None = None        # bar of the entry's reference close
        self._closing: bt.Order | None = None     # time/risk exit in flight
        self._cut: bt.Order | None = None         # risk cut (reduce_to) in flight
        self.saw_probability = False              # any finite P from trade_start on (run_backtest checks)
        self._start_num = self._to_num(self.p.trade_start)
        self._end_num = self._to_num(self.p.trade_end)
        self.stopped_by_kill_switch = False
        # Why a run trades as much as it does: counted on the flat bars where an entry was
        # allowed (reported with the results; "0 trades" alone does not say why).
        self.signal_stats = {"decisions": 0, "scored": 0, "p_max": math.nan, "positive_signal": 0,
                             "past_deadband": 0}

    def _risk_cfg(self) -> RiskConfig:
        return self.p.risk.cfg if self.p.risk is not None else RiskConfig()

    @staticmethod
    def _to_num(ts: Any) -> float | None:
        if ts is None:
            return None
        import pandas as pd

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
        return VolForecast(self.data, cfg=self.p.feature_cfg, timeframe=self.p.timeframe)

    def resolve_center(self) -> float:
        """The probability with zero edge: the ``center`` param, or with ``"breakeven"`` the
        barriers' break-even probability after a round trip of fees."""
        if self.p.center == "breakeven":
            return float(breakeven_probability(self.p.profit, self.p.stop, fee_rate=self.p.fee_rate))
        return float(self.p.center)

    def probability(self) -> float:
        """Calibrated P(profit barrier first) of the current bar (NaN = unknown)."""
        return float(self.prob[0])

    def forecast_vol(self) -> float:
        """Annualised volatility forecast of the current bar."""
        return float(self.vol_forecast[0])

    def signal(self, p: float) -> float:
        """s in [-1, 1], 0 at the centre (see :func:`signal_from_probability`)."""
        return signal_from_probability(p, self.center)

    def target_weight(self, s: float) -> float:
        """Weight of equity to hold (see :func:`weight_from_signal`)."""
        return weight_from_signal(s, self.forecast_vol(), self.p.target_vol, self.p.deadband,
                                  self.p.max_position, self.p.allow_short)

    def barrier_prices(self, ref: float, long: bool) -> tuple[float, float]:
        """(take_profit, stop) prices around the reference price ``ref``."""
        if long:
            return ref * (1.0 + self.p.profit), ref * (1.0 - self.p.stop)
        return ref * (1.0 - self.p.profit), ref * (1.0 + self.p.stop)

    def use_limit(self, confidence: float) -> bool:
        """Limit order at the close when ``confidence >= limit_confidence``, market otherwise."""
        return confidence >= self.p.limit_confidence

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
        opener = self.buy if long else self.sell
        closer = self.sell if long else self.buy
        entry = opener(size=size, exectype=bt.Order.Limit if limit else bt.Order.Market,
                       price=ref if limit else None, transmit=False)
        entry.addinfo(kind="entry")
        # backtrader tries pending orders in submission order: the first child wins a tie.
        sides = [("stop", bt.Order.Stop, sl), ("take_profit", bt.Order.Limit, tp)]
        if self.p.tie == "profit":
            sides.reverse()
        children = []
        for i, (kind, exectype, price) in enumerate(sides):
            child = closer(size=size, exectype=exectype, price=price, parent=entry, transmit=i == len(sides) - 1)
            child.addinfo(kind=kind)
            children.append(child)
        self._entry = entry
        self._exits = children
        self._entry_submit_bar = self._bar
        return [entry, *children]

    # ------------------------------------------------------------ bar loop
    def prenext(self) -> None:
        self._bar += 1
        self._bar_num = self.data.datetime[0]

    def next(self) -> None:
        self._bar += 1
        now_num = self.data.datetime[0]
        self._bar_num = now_num
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
            if self._entry_bar is not None and self._closing is None and self.bars_held() >= self.p.max_hold:
                self.flatten("time")
            return
        if self._entry is not None:  # a limit entry still working
            if self._entry.alive() and self._bar - self._entry_submit_bar >= self.p.limit_tif_bars:
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
        closer = self.sell if pos > 0 else self.buy
        kinds = ["stop", "take_profit"] if self.p.tie != "profit" else ["take_profit", "stop"]
        exits: list[bt.Order] = []
        for kind in kinds:
            if kind not in prices:
                continue
            exectype = bt.Order.Stop if kind == "stop" else bt.Order.Limit
            o = closer(size=abs(target), exectype=exectype, price=prices[kind], oco=exits[0] if exits else None)
            o.addinfo(kind=kind)
            exits.append(o)
        self._exits = exits

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

    def notify_trade(self, trade: bt.Trade) -> None:  # the FillLog analyzer exports trades
        pass


BARRIER_SOURCES = ("bundle", "config")


def _labels_text(lab: LabelConfig) -> str:
    return f"profit={lab.profit:g} stop={lab.stop:g} horizon={lab.horizon} tie={lab.tie}"


def traded_labels(cfg: Config, bundle: Any = None, barriers: str = "bundle") -> tuple[LabelConfig, str]:
    """The barrier settings the strategy trades and where they come from (``"bundle"`` or
    ``"config"``).

    With a model bundle the model predicts the bundle's label event, so the default
    (``barriers="bundle"``) trades ``bundle.label_cfg`` and refuses (ConfigError, one line
    naming both) a ``cfg.labels`` that differs from it; ``barriers="config"`` is the explicit
    opt-in to trade ``cfg.labels`` anyway. Without a bundle: ``cfg.labels``.
    """
    if barriers not in BARRIER_SOURCES:
        raise ConfigError(f"barriers must be one of {', '.join(BARRIER_SOURCES)} (got {barriers!r})")
    bundle_labels = getattr(bundle, "label_cfg", None) if bundle is not None else None
    if bundle_labels is None or barriers == "config":
        return cfg.labels, "config"
    if bundle_labels.model_dump() != cfg.labels.model_dump():
        raise ConfigError(f"config labels ({_labels_text(cfg.labels)}) differ from the bundle's training labels "
                          f"({_labels_text(bundle_labels)}): the model predicts the bundle's barriers; align labels.* "
                          "or pass --barriers config (barriers='config') to trade the config's")
    return bundle_labels, "bundle"


def strategy_params(cfg: Config, bundle: Any = None, barriers: str = "bundle", **extra: Any) -> dict[str, Any]:
    """backtrader params of :class:`ModelStrategy` from the typed config (and the model bundle).

    ``strategy.*`` maps by name; the barriers (profit, stop, tie) come from
    :func:`traded_labels` -- the bundle's labels when a bundle is given, so the strategy
    trades the event the model was trained on; ``max_hold`` is ``strategy.max_hold`` or,
    when null, the traded labels' ``horizon``; the volatility forecast uses the bundle's
    feature config (else ``cfg.features``); ``fee_rate`` is the taker fee (break-even
    centre); ``risk`` is a :class:`RiskManager` on ``cfg.risk``. ``extra`` overrides anything.
    """
    s = cfg.strategy
    lab, _ = traded_labels(cfg, bundle, barriers)
    params: dict[str, Any] = {
        "center": s.center, "target_vol": s.target_vol, "deadband": s.deadband,
        "max_position": min(s.max_position, cfg.risk.max_position),
        "limit_confidence": s.limit_confidence, "limit_tif_bars": s.limit_tif_bars,
        "max_hold": s.max_hold if s.max_hold is not None else lab.horizon, "allow_short": s.allow_short,
        "profit": lab.profit, "stop": lab.stop, "tie": lab.tie,
        "fee_rate": cfg.execution.taker_fee,
        "timeframe": bundle.timeframe if bundle is not None else cfg.data.timeframe,
        "feature_cfg": bundle.feature_cfg if bundle is not None else cfg.features, "risk": RiskManager(cfg.risk),
    }
    timeframe_seconds(params["timeframe"])
    params.update(extra)
    return params
