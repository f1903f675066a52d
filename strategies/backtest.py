"""Event-driven backtests with backtrader: ``run_backtest`` and its report files.

Span rules: the backtest covers the bars whose open time is in ``[start, end)`` (UTC;
:mod:`core.dates`: a date alone as ``end`` includes that whole day). Bars before
``start`` are fed only as warm-up (features, the model window, the volatility window);
no order and no risk check happens there and the metrics start at ``start``. Without
``start`` the span begins right after the bundle's training span. A span that overlaps
the training span is refused (:class:`InSampleError`) unless ``allow_in_sample``.

Outputs (``output`` folder, built beside it and renamed into place by
:func:`core.files.output_dir`; an existing folder is replaced only when it is an nts backtest
output, never when it holds anything else or lies inside the bundle): ``metrics.json``,
``trades.csv``, ``fills.csv``, ``equity.csv``, ``risk_trips.csv``, ``equity.png`` (equity vs
buy-and-hold, drawdown), ``report.md`` and ``report.html``; for spans up to 5,000 bars also
``backtrader.png`` (backtrader's own chart).
"""
from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import backtrader as bt
import numpy as np
import pandas as pd

from core.config import Config, config_to_dict
from core.errors import DataError
from core.files import OutputKind, output_dir
from core.redact import redact, redact_obj
from core.timeframes import ns_to_bt_num, timeframe_seconds
from models.recalibration import is_rolling
from strategies.analyzers import EquityCurve, FillLog, round_trips
from strategies.base import trade_model_ids
from strategies.bt_broker import apply_costs
from strategies.hooks import user_code
from strategies.metrics import summarize
from strategies.runspec import (  # noqa: F401  (InSampleError, resolve_span, warmup_bars_for re-exported)
    InSampleError,
    RunSpec,
    resolve_span,
    warmup_bars_for,
)


class FrameFeed(bt.feed.DataBase):
    """A backtrader feed over a canonical OHLCV frame (fast: plain lists, no per-bar pandas).

    Extra float columns become extra lines with :func:`frame_feed` (used by tests to inject
    a probability line)."""

    params = (("timeframe", bt.TimeFrame.Minutes), ("compression", 15))

    def start(self) -> None:
        super().start()
        frame: pd.DataFrame = self.p.dataname
        idx = pd.DatetimeIndex(frame.index)
        idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
        ns = idx.as_unit("ns").asi8
        self._cols = [ns_to_bt_num(ns).tolist()]
        self._names = ["datetime", "open", "high", "low", "close", "volume"]
        for name in self._names[1:]:
            self._cols.append(frame[name].to_numpy(dtype="float64").tolist())
        for name in self.getlinealiases():
            if name not in self._names and name != "openinterest" and name in frame.columns:
                self._names.append(name)
                self._cols.append(frame[name].to_numpy(dtype="float64").tolist())
        self._lines = [getattr(self.lines, n) for n in self._names]
        self._n = len(frame)
        self._i = -1

    def _load(self) -> bool:
        self._i += 1
        i = self._i
        if i >= self._n:
            return False
        for line, col in zip(self._lines, self._cols):
            line[0] = col[i]
        self.lines.openinterest[0] = 0.0
        return True


def frame_feed(frame: pd.DataFrame, extra: tuple[str, ...] = (), timeframe: str = "15m") -> FrameFeed:
    """A :class:`FrameFeed` for ``frame``; ``extra`` names additional float columns to expose
    as lines of the same name (e.g. a precomputed probability)."""
    cls = FrameFeed
    if extra:
        cls = type(FrameFeed)(f"FrameFeed_{'_'.join(extra)}", (FrameFeed,), {"lines": tuple(extra)})
    minutes = timeframe_seconds(timeframe) // 60
    return cls(dataname=frame, timeframe=bt.TimeFrame.Minutes, compression=max(1, minutes))


class _Progress(bt.Analyzer):
    """tqdm progress (stderr) of the strategy's bar loop."""

    params = (("bar", None), ("every", 2000))

    def start(self) -> None:
        self._n = 0

    def _tick(self) -> None:
        self._n += 1
        if self._n % self.p.every == 0:
            self.p.bar.update(self.p.every)

    next = _tick
    prenext = _tick

    def stop(self) -> None:
        self.p.bar.update(self._n % self.p.every)


@dataclass
class BacktestResult:
    """Everything a backtest produced (also written to ``output`` when given)."""

    metrics: dict[str, Any]
    equity: pd.DataFrame
    trades: pd.DataFrame
    fills: pd.DataFrame
    risk_trips: list[dict]
    start: pd.Timestamp
    end: pd.Timestamp
    strategy: str
    output: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)


def run_backtest(spec: RunSpec | Any, frame: pd.DataFrame | None = None, cfg: Config | None = None, *,
                 output: str | Path | None = None, progress: bool = True, bt_plot: bool | None = None,
                 overwrite: bool = False, **build: Any) -> BacktestResult:
    """Backtest the run ``spec`` (a :class:`~strategies.runspec.RunSpec` built with bars).

    Also callable as ``run_backtest(bundle_or_path, frame, cfg, strategy=..., start=...,
    end=..., ...)``: the keywords of :func:`spec_from_args` then build the spec here.
    Returns a :class:`BacktestResult`; with ``output`` also writes the report files
    (:func:`write_outputs`; ``overwrite``: also replace an ``output`` folder without the nts
    marker that holds only backtest files). ``bt_plot``: also save backtrader's own chart
    (``backtrader.png``; needs ``output``); default: only for spans up to ``BT_PLOT_MAX_BARS``
    bars (its markers are unreadable beyond). Refused with DataError when no bar of the span
    has a probability; a failure inside the user's strategy code is one UserCodeError line.
    """
    if not isinstance(spec, RunSpec):
        spec = spec_from_args(spec, frame, cfg, **build)
    span = spec.require_span()
    bt_plot = bool((len(span.frame) <= BT_PLOT_MAX_BARS if bt_plot is None else bt_plot) and output is not None)
    cerebro = build_cerebro(spec, bt_plot)
    t0 = time.perf_counter()
    with _progress(cerebro, len(span.frame), progress), user_code(spec.strategy_cls, "running the backtest"):
        strat = cerebro.run()[0]
    elapsed = time.perf_counter() - t0
    if not strat.saw_probability:
        raise DataError(f"no bar of the span {span.start} .. {span.end} has a model probability ({len(span.frame)} "
                        "bars fed incl. warm-up; too little history after the data's start or a gap?): nothing to "
                        "backtest")
    result = collect_result(spec, strat, elapsed)
    if output is not None:
        if not bt_plot:
            result.metrics["run"]["backtrader_plot"] = (f"off ({len(span.frame):,} bars fed incl. warm-up; drawn by "
                                                        f"default up to {BT_PLOT_MAX_BARS:,})")
        figure = _backtrader_figure(cerebro, result.metrics) if bt_plot else None
        result.output = Path(output)
        result.files = write_outputs(result, Path(output), spec.cfg, bt_figure=figure, overwrite=overwrite)
    return result


def spec_from_args(model: Any, frame: pd.DataFrame, cfg: Config, *, strategy: Any = "tcn", start: Any = None,
                   end: Any = None, **build: Any) -> RunSpec:
    """The :class:`RunSpec` of the older call ``run_backtest(model, frame, cfg, ...)``:
    ``start``/``end`` are the span, every other keyword goes to :meth:`RunSpec.build`
    (``allow_in_sample``, ``barriers``, ``costs``, ``coc``, ``prob_cache``, ``strategy_kwargs``)."""
    return RunSpec.build(cfg, model=model, data=frame, strategy=strategy, span=(start, end), **build)


def build_cerebro(spec: RunSpec, plot: bool = False) -> bt.Cerebro:
    """The backtest's cerebro for ``spec``: the fed bars, the costs, the strategy with its
    params (trading window = the span) and the analyzers the report reads. backtrader's own
    observers (cash/value, trades, buy/sell marks) only when its chart (``plot``) is wanted."""
    span = spec.require_span()
    data = span.frame
    cerebro = bt.Cerebro(stdstats=plot, runonce=True, preload=True, optdatas=True)
    extra = tuple(c for c in data.columns if c not in ("open", "high", "low", "close", "volume"))
    cerebro.adddata(frame_feed(data, extra=extra, timeframe=spec.timeframe))
    apply_costs(cerebro, spec.costs, cash=spec.cfg.execution.cash, coc=spec.coc)
    cerebro.addstrategy(spec.strategy_cls, **spec.strategy_params(trade_start=span.start, trade_end=span.end))
    cerebro.addanalyzer(EquityCurve, _name="equity")
    cerebro.addanalyzer(FillLog, _name="fills")
    return cerebro


@contextmanager
def _progress(cerebro: bt.Cerebro, total: int, show: bool) -> Iterator[None]:
    """A tqdm bar (stderr) over the strategy's bar loop while cerebro runs, when ``show``."""
    if not show:
        yield
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc="backtest", unit="bar", leave=False, mininterval=0.5)
    cerebro.addanalyzer(_Progress, bar=bar)
    try:
        yield
    finally:
        bar.close()


def collect_result(spec: RunSpec, strat: Any, elapsed: float) -> BacktestResult:
    """The :class:`BacktestResult` of a finished run: equity, fills, trades and metrics of the span."""
    span = spec.require_span()
    data = span.frame
    eq_all: pd.DataFrame = strat.analyzers.equity.get_analysis()
    fills: pd.DataFrame = strat.analyzers.fills.get_analysis()
    equity = eq_all.loc[eq_all.index >= span.start]
    trades = round_trips(fills, data.index, last_close=float(data["close"].iloc[-1]))
    trades["model_id"] = trade_model_ids(trades, fills, getattr(strat, "entry_models", {}))
    trips = [t.to_dict() for t in strat.risk.trips]
    metrics = summarize(equity["equity"], equity["position"], fills, trades,
                        data["close"].loc[equity.index], spec.cfg.execution.cash, spec.timeframe)
    metrics["run"] = run_record(spec, strat, bars=len(equity), elapsed=elapsed)
    metrics["risk_trips"] = trips
    return BacktestResult(metrics=metrics, equity=equity, trades=trades, fills=fills, risk_trips=trips,
                          start=span.start, end=span.end, strategy=spec.strategy_name)


def run_record(spec: RunSpec, strat: Any, bars: int, elapsed: float) -> dict[str, Any]:
    """``metrics["run"]``: what was run (strategy, model, span, costs, barriers) and how it went."""
    span = spec.require_span()
    bundle, labels, costs = spec.bundle, spec.labels, spec.costs
    return {
        "strategy": spec.strategy_name, "model": spec.model_path,
        "start": str(span.start), "end": str(span.end), "bars": int(bars),
        "warmup_bars": int(len(span.frame) - bars), "timeframe": spec.timeframe, "in_sample": span.in_sample,
        "training_span": [str(x) for x in bundle.training_span] if bundle is not None else None,
        "costs": {"taker_fee": costs.taker_fee, "maker_fee": costs.maker_fee, "slippage_bps": costs.slippage_bps},
        "cheat_on_close": spec.coc, "cash": spec.cfg.execution.cash,
        "barriers": barriers_record(spec),
        "stopped_by_kill_switch": bool(strat.stopped_by_kill_switch),
        # "breakeven": the signal's centre was derived from the barriers and the taker fee
        # "breakeven per bar": of each bar's volatility-scaled widths (signal.center then names
        # only the fee-free ratio stop / (profit + stop))
        "center_rule": ("breakeven per bar" if spec.policy.per_bar_center else "breakeven")
        if spec.policy.breakeven_center else "fixed",
        "signal": {**strat.signal_stats, "center": float(strat.center),
                   "p_max": strat.signal_stats["p_max"] if strat.signal_stats["scored"] else None},
        "probabilities": _prob_source(strat),
        # how P was calibrated (the model's own mode, or rolling asked by the run config)
        "calibration": None if bundle is None else ("rolling" if is_rolling(bundle) else "static"),
        "seconds": round(elapsed, 3),
    }


BT_PLOT_MAX_BARS = 5000


def _prob_source(strat: Any) -> str:
    """Where the run's probabilities came from (recorded in metrics.json)."""
    hit = getattr(getattr(strat, "tcn", None), "cache_hit", None)
    if hit is None:
        return "strategy line (no TCN indicator batch pass)"
    return "probability cache (network skipped)" if hit else "scored by the network"


def _backtrader_figure(cerebro: bt.Cerebro, metrics: dict):
    """backtrader's own chart as a matplotlib figure, or None (reason in metrics['run'])."""
    import matplotlib

    matplotlib.use("Agg")
    import backtrader.plot  # noqa: F401  (its import selects TkAgg ...)

    matplotlib.use("Agg")  # ... so select the headless backend again before any figure exists
    try:
        figs = cerebro.plot(iplot=False, volume=False)
        fig = figs[0][0]
        fig.set_size_inches(16, 9)
        # With shared x axes, matplotlib >= 3.10 hides every x tick label backtrader set up;
        # show the bottom panel's (dates, via backtrader's own formatter) again.
        bottom = min(fig.axes, key=lambda ax: ax.get_position().y0)
        bottom.tick_params(axis="x", labelbottom=True)
        for label in bottom.get_xticklabels():
            label.set_visible(True)
        metrics["run"]["backtrader_plot"] = "backtrader.png"
        return fig
    except Exception as exc:  # plotting is auxiliary: report why, keep the run's results
        metrics["run"]["backtrader_plot"] = f"skipped: {exc.__class__.__name__}: {exc}"
        return None


# ------------------------------------------------------------------ outputs

def _fmt(v: Any, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.2%}" if pct else f"{v:,.3f}"
    return str(v)


# (label, key, is-percent) rows of the metrics table
TABLE_ROWS = [
    ("Total return", "total_return", True), ("CAGR", "cagr", True), ("Sharpe (ann.)", "sharpe", False),
    ("Sortino (ann.)", "sortino", False), ("Max drawdown", "max_drawdown", True),
    ("Volatility (ann.)", "volatility_ann", True), ("Trades", "trades", False), ("Win rate", "win_rate", True),
    ("Avg hold (bars)", "avg_hold_bars", False), ("Avg hold (hours)", "avg_hold_hours", False),
    ("Exposure", "exposure", True), ("Turnover (x equity)", "turnover", False),
    ("Fees paid", "fees_paid", False), ("End equity", "end_equity", False),
]


def metrics_table(metrics: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, strategy, buy-and-hold) rows as strings."""
    st, bh = metrics["strategy"], metrics["buy_and_hold"]
    return [(label, _fmt(st.get(key), pct), _fmt(bh.get(key), pct) if key in bh else "") for label, key, pct in TABLE_ROWS]


def format_table(metrics: dict[str, Any]) -> str:
    """Plain-text metrics table (what ``nts backtest`` prints)."""
    rows = [("metric", "strategy", "buy & hold")] + metrics_table(metrics)
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:>{w1}}  {c:>12}" for a, b, c in rows)


def plot_equity(equity: pd.DataFrame, cash: float, path: Path, title: str) -> None:
    """Equity vs buy-and-hold (top) and drawdown (bottom) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: headless, no display needed
    import matplotlib.pyplot as plt

    eq = equity["equity"]
    bh = cash * equity["close"] / equity["close"].iloc[0]
    dd = eq / eq.cummax() - 1.0
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax1.plot(eq.index, eq.to_numpy(), label="strategy", lw=1.0)
    ax1.plot(bh.index, bh.to_numpy(), label="buy & hold", lw=0.8, alpha=0.7)
    ax1.set_ylabel("equity")
    ax1.set_title(title)
    ax1.legend(loc="upper left")
    ax1.grid(alpha=0.3)
    ax2.fill_between(dd.index, dd.to_numpy() * 100, 0, color="tab:red", alpha=0.4, lw=0)
    ax2.set_ylabel("drawdown %")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def barriers_record(spec: RunSpec) -> dict[str, Any]:
    """``metrics["run"]["barriers"]``: the traded barriers and their rule. ``rule`` "fixed":
    ``profit``/``stop`` are fractions of the entry price; "vol": multiples of the decision bar's
    ``sigma_t * sqrt(horizon)`` (EWMA vol span ``vol_span``); ``text`` says it in words."""
    labels, policy = spec.labels, spec.policy
    out = {"source": spec.barrier_source, "rule": policy.barrier_scale, "profit": labels.profit, "stop": labels.stop,
           "horizon": labels.horizon, "tie": labels.tie, "max_hold": int(policy.max_hold)}
    if policy.vol_scaled:
        out.update(profit=policy.profit, stop=policy.stop, vol_span=policy.vol_span)
    out["text"] = policy.describe_barriers()
    return out


def _barriers_text(b: dict[str, Any]) -> str:
    if b.get("rule") == "vol":
        return (f"volatility-scaled: take profit +{b['profit']:g} x, stop -{b['stop']:g} x sigma_t*sqrt({b['horizon']}) "
                f"(EWMA vol span {b['vol_span']}) of the decision bar, max hold {b['max_hold']} bars, tie -> {b['tie']}")
    return (f"take profit {b['profit']:.3%}, stop {b['stop']:.3%}, label horizon {b['horizon']} bars, "
            f"max hold {b['max_hold']} bars, tie -> {b['tie']}")


def _report_md(result: BacktestResult) -> str:
    m = result.metrics
    run = m["run"]
    lines = [f"# Backtest report", "",
             f"- strategy: `{run['strategy']}`", f"- model: `{run['model']}`",
             f"- span: {run['start']} .. {run['end']} ({run['bars']:,} bars of {run['timeframe']}, "
             f"{run['warmup_bars']} warm-up bars before it)",
             f"- in-sample: {'YES (training span overlaps: ' + ' .. '.join(run['training_span'] or []) + ')' if run['in_sample'] else 'no'}",
             f"- costs: taker {run['costs']['taker_fee']:.4%}, maker {run['costs']['maker_fee']:.4%}, "
             f"slippage {run['costs']['slippage_bps']} bps; cheat-on-close: {run['cheat_on_close']}",
             f"- barriers traded ({run['barriers']['source']}): {_barriers_text(run['barriers'])}",
             f"- {m['conventions']['sharpe']}; buy & hold: {m['conventions']['buy_and_hold']}", "",
             "| metric | strategy | buy & hold |", "|---|---:|---:|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in metrics_table(m)]
    kinds = m["strategy"].get("exit_kinds") or {}
    lines += ["", "Exits: " + (", ".join(f"{k} {v}" for k, v in kinds.items()) or "none"), "",
              "## Risk trips", ""]
    if result.risk_trips:
        lines += [f"- {t['time']} **{t['breaker']}**: {t['reason']}" for t in result.risk_trips]
    else:
        lines.append("none")
    lines += ["", "![equity and drawdown](equity.png)", ""]
    if run.get("backtrader_plot") == "backtrader.png":
        lines += ["![backtrader chart](backtrader.png)", ""]
    return "\n".join(lines)


def _report_html(result: BacktestResult) -> str:
    m = result.metrics
    run = m["run"]
    rows = "".join(f"<tr><td>{html.escape(a)}</td><td>{b}</td><td>{c}</td></tr>" for a, b, c in metrics_table(m))
    trips = "".join(f"<li>{html.escape(t['time'])} <b>{html.escape(t['breaker'])}</b>: {html.escape(t['reason'])}</li>"
                    for t in result.risk_trips) or "<li>none</li>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>nts backtest</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}td,th{{padding:2px 10px;text-align:right}}
td:first-child{{text-align:left}}table{{border-collapse:collapse}}tr:nth-child(even){{background:#f3f3f3}}</style></head>
<body><h1>Backtest report</h1>
<p>strategy <code>{html.escape(run['strategy'])}</code>, model <code>{html.escape(str(run['model']))}</code><br>
span {html.escape(run['start'])} .. {html.escape(run['end'])} ({run['bars']:,} bars of {run['timeframe']}),
in-sample: {'<b>YES</b>' if run['in_sample'] else 'no'}<br>
costs: taker {run['costs']['taker_fee']:.4%}, maker {run['costs']['maker_fee']:.4%}, slippage {run['costs']['slippage_bps']} bps<br>
barriers traded ({html.escape(run['barriers']['source'])}): {html.escape(_barriers_text(run['barriers']))}<br>
{html.escape(m['conventions']['sharpe'])}</p>
<table><tr><th>metric</th><th>strategy</th><th>buy &amp; hold</th></tr>{rows}</table>
<h2>Risk trips</h2><ul>{trips}</ul>
<img src="equity.png" alt="equity and drawdown" style="max-width:100%"></body></html>
"""


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, pd.Timestamp):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


# Every file a backtest folder can hold (one from before markers is recognised by these).
OUTPUT_KIND = OutputKind("backtest", files=("metrics.json", "trades.csv", "fills.csv", "equity.csv", "risk_trips.csv",
                                            "equity.png", "report.md", "report.html", "backtrader.png"),
                         signature='"buy_and_hold"')


def write_outputs(result: BacktestResult, output: Path, cfg: Config, bt_figure=None, *,
                  inputs: tuple | list = (), overwrite: bool = False) -> dict[str, Path]:
    """Write the report files as the folder ``output``: built in a temporary sibling and
    renamed into place complete (:func:`core.files.output_dir`), so a failed run leaves the
    previous output as it was. ``output`` must not be or lie inside the model bundle or
    ``inputs``; an existing folder is replaced only when it is an nts backtest output
    (``overwrite``: also one without the marker). Credentials are redacted from
    metrics.json and the reports."""
    model = result.metrics.get("run", {}).get("model")
    inputs = [*inputs, *([model] if model else [])]
    names = ["equity.csv", "trades.csv", "fills.csv", "risk_trips.csv", "equity.png", "report.md", "report.html"]
    with output_dir(output, OUTPUT_KIND, inputs=inputs, overwrite=overwrite) as tmp:
        result.equity.to_csv(tmp / "equity.csv", index_label="timestamp")
        result.trades.to_csv(tmp / "trades.csv", index=False)
        result.fills.to_csv(tmp / "fills.csv", index=False)
        pd.DataFrame(result.risk_trips, columns=["time", "breaker", "reason", "values"]).to_csv(
            tmp / "risk_trips.csv", index=False)
        plot_equity(result.equity, cfg.execution.cash, tmp / "equity.png",
                    f"{result.strategy.split(':')[-1]}  {result.start:%Y-%m-%d} .. {result.end:%Y-%m-%d}")
        if bt_figure is not None:
            import matplotlib.pyplot as plt

            bt_figure.savefig(tmp / "backtrader.png", dpi=100)
            plt.close(bt_figure)
            names.append("backtrader.png")
        (tmp / "report.md").write_text(redact(_report_md(result)))
        (tmp / "report.html").write_text(redact(_report_html(result)))
        payload = dict(result.metrics)
        payload["config"] = config_to_dict(cfg)
        (tmp / "metrics.json").write_text(json.dumps(redact_obj(payload), indent=2, default=_json_default))
        names.append("metrics.json")
    return {name: Path(output) / name for name in names}
