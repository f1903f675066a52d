"""The sweep report folder: ``results.csv``, ``report.html``, ``manifest.json`` (+ fold and
vectorbt tables), written atomically through :func:`core.files.output_dir`.

* ``results.csv`` -- one row per combination: every axis, every metric, the label base rate of
  the row's own barriers, their break-even probability, whether they are the trained barriers.
* ``report.html`` -- interactive, offline (plotly.js from the installed plotly package, written
  once beside it as ``plotly.min.js``, or inlined with ``embed_plotlyjs``; no network, no
  Chrome, no PNG): the DSR/PBO verdict in plain words first, the exit-rule-sweep note, the top
  rows that trade, heatmaps of the best Sharpe of the trading rows for every pair of swept axes
  (cells whose rows never trade marked "flat"), the equity of the top rows (buy-and-hold on its
  own axis), the Sharpe distribution of the trading rows against luck's expected maximum, the PBO
  logits and the in-sample vs out-of-sample Sharpe of the CSCV splits, the walk-forward folds
  (in-sample vs out-of-sample of each fold's chosen row), vectorbt's stats of the rows shown
  and the vectorbt-vs-kernel value check.
* ``manifest.json`` -- bundle (path, weights sha256), data (path, file sha256, bars sha256),
  span, grid, costs, policy, versions (nts, vectorbt, numba, ...), seconds, verdict.
* ``walk_forward.csv`` (with folds), ``vectorbt_stats.csv`` (rows shown), ``plotly.min.js`` (unless embedded).
"""
from __future__ import annotations

import html
import json
import math
import platform
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.files import OutputKind, output_dir
from core.jsonable import jsonable
from models.bundle import sha256_file
from sweeps.engine import EXIT_RULE_NOTE, SweepResult
from sweeps.grid import AXES
from sweeps.overfit import DSR_SIGNIFICANT, PBO_HIGH, PBO_LOW, VERDICT_CLASSES, row_groups
from sweeps.portfolio import PortfolioSet, buy_and_hold_value

OUTPUT_KIND = OutputKind("sweep", files=("manifest.json", "results.csv", "report.html", "walk_forward.csv",
                                         "vectorbt_stats.csv", "plotly.min.js"), signature='"overfit"')
PLOTLY_JS = "plotly.min.js"
MAX_CHART_POINTS = 500  # per line (binary arrays, y as float32): the page stays well under 1 MB on 85k-bar spans
MAX_SCATTER_POINTS = 2000  # CSCV splits drawn in the in- vs out-of-sample scatter (C(16, 8) = 12,870)
MAX_HEATMAPS = 10
HEATMAP_METRIC = "sharpe"


def versions() -> dict[str, str]:
    """Versions of the packages that shape a sweep's numbers."""
    out = {"python": platform.python_version()}
    for pkg in ("neural-trading-system", "vectorbt", "numba", "numpy", "pandas", "plotly", "backtrader", "torch",
                "dask", "distributed"):
        try:
            out["nts" if pkg == "neural-trading-system" else pkg] = version(pkg)
        except PackageNotFoundError:
            if pkg not in ("dask", "distributed"):
                out[pkg] = "not installed"
    return out


def trained_text(result: SweepResult) -> str:
    """The trained barrier set in words."""
    lab = result.data.trained_labels
    if lab is None:
        p = result.data.policy
        if p.vol_scaled:
            return (f"take profit {p.profit:g} x, stop {p.stop:g} x sigma_t*sqrt({p.barrier_horizon}), horizon "
                    f"{p.max_hold} bars, tie {p.tie} (config)")
        return f"take profit {p.profit:.3%}, stop {p.stop:.3%}, horizon {p.max_hold} bars, tie {p.tie} (config)"
    if lab.scale == "vol":
        return (f"take profit {lab.vol_profit:g} x, stop {lab.vol_stop:g} x sigma_t*sqrt({lab.horizon}) (EWMA vol "
                f"span {lab.vol_span}), horizon {lab.horizon} bars, tie {lab.tie}")
    return f"take profit {lab.profit:.3%}, stop {lab.stop:.3%}, horizon {lab.horizon} bars, tie {lab.tie}"


def barrier_rule_text(result: SweepResult) -> str:
    """What the grid's profit and stop axes mean (every sweep report states it)."""
    p = result.data.policy
    if p.vol_scaled:
        return (f"Barrier rule: volatility-scaled. The profit and stop axes are multiples of the decision bar's "
                f"sigma_t*sqrt({p.barrier_horizon}) (EWMA vol of 1-bar log returns, span {p.vol_span}), not "
                f"percentages, whatever the row's max_hold (the time exit only); base_rate labels each row's "
                f"multiples of that same width with max_hold as the horizon (the trade simulated); breakeven_p is "
                "taken at the span's median width; with center 'breakeven' the traded centre is per bar and "
                "center_used is its median over the span.")
    return "Barrier rule: fixed. The profit and stop axes are fractions of the entry price."


def exit_rule_note(result: SweepResult) -> str:
    """The note every report carries (see :data:`sweeps.engine.EXIT_RULE_NOTE`), with the barrier rule."""
    return EXIT_RULE_NOTE.format(trained=trained_text(result)) + " " + barrier_rule_text(result)


def manifest(result: SweepResult, *, data_path: str | Path | None = None, model_path: str | Path | None = None,
             portfolios: PortfolioSet | None = None, seconds: dict[str, float] | None = None,
             command: str | None = None) -> dict[str, Any]:
    """Everything needed to know what a sweep ran on and what it found (manifest.json)."""
    d, g, o = result.data, result.grid, result.overfit
    file_sha = sha256_file(data_path) if data_path is not None and Path(data_path).is_file() else None
    p = d.policy
    out = {
        "kind": "sweep",
        "command": command,
        "bundle": {**d.bundle_info, "path": str(model_path) if model_path is not None else d.bundle_info.get("path")},
        "data": {"path": str(data_path) if data_path is not None else None, "file_sha256": file_sha,
                 "bars_sha256": d.data_sha256, "bars_fed": int(len(d.frame)), "warmup_bars": int(d.inputs.first),
                 "probabilities": d.prob_source},
        "span": {"start": str(d.span[0]), "end": str(d.span[1]), "bars": int(d.inputs.last - d.inputs.first + 1),
                 "first_decision_bar": str(d.frame.index[d.inputs.start]), "timeframe": d.timeframe},
        "grid": {"source": g.source, "axes": {k: list(v) for k, v in g.axes}, "swept": list(g.swept),
                 "rows": int(g.size), "blocks": g.blocks, "folds": g.folds, "top": g.top},
        "costs": {"taker_fee": sorted(set(result.table["taker_fee"].tolist())),
                  "maker_fee": sorted(set(result.table["maker_fee"].tolist())),
                  "slippage_bps": sorted(set(result.table["slippage_bps"].tolist())),
                  "rule": "maker fee on limit fills, taker fee otherwise; slippage on market/stop fills (core.costs)"},
        "policy": p.to_dict(),
        "barriers": {"rule": p.barrier_scale, "text": p.describe_barriers(), "axes": barrier_rule_text(result)},
        "risk": d.risk_cfg.model_dump(),
        "cash": d.inputs.cash,
        "engine": result.engine,
        "exit_rule_note": exit_rule_note(result),
        "overfit": {k: v for k, v in o.to_dict().items() if k not in ("logits", "is_sharpe", "oos_sharpe")},
        "verdict": o.verdict,
        "warnings": result.warnings(),
        "walk_forward": result.walk_forward.summary if result.walk_forward is not None else None,
        "buy_and_hold": result.buy_and_hold,
        "vectorbt_check": None,
        "versions": versions(),
        "seconds": {**result.seconds, **(seconds or {})},
    }
    if portfolios is not None:
        out["vectorbt_check"] = {
            "rows": portfolios.rows, "rtol": 1e-9,
            "max_final_value_rel_diff": portfolios.worst_final_diff,
            "max_bar_value_rel_diff": portfolios.worst_bar_diff,
            "how": "each shown row's fills replayed through vectorbt.portfolio.nb.process_order_nb; "
                   "vbt.Portfolio built from the resulting order records",
        }
    return jsonable(out)


# ----------------------------------------------------------------------------- html pieces
FLAT = "flat"  # heatmap cells whose rows never traded


def _fmt(v: Any, kind: str = "") -> str:
    if v is None or (isinstance(v, (float, np.floating)) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else ""
    if kind == "pct":
        return f"{float(v):.2%}"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):,.4g}" if abs(float(v)) < 1e5 else f"{float(v):,.0f}"
    return html.escape(str(v))


PCT_COLUMNS = {"total_return", "cagr", "max_drawdown", "win_rate", "exposure", "base_rate", "breakeven_p",
               "is_return", "oos_return", "is_max_drawdown", "oos_max_drawdown", "oos_rank_pct", "center_used"}


def _table(frame: pd.DataFrame, index: bool = True, classes: str = "") -> str:
    head = ([frame.index.name or ""] if index else []) + [str(c) for c in frame.columns]
    rows = []
    for idx, rec in zip(frame.index, frame.itertuples(index=False, name=None)):
        cells = ([f"<td>{_fmt(idx)}</td>"] if index else [])
        cells += [f"<td>{_fmt(v, 'pct' if c in PCT_COLUMNS and not isinstance(v, str) else '')}</td>"
                  for c, v in zip(frame.columns, rec)]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    th = "".join(f"<th>{html.escape(h.replace('_', ' '))}</th>" for h in head)
    return (f'<div class="scroll"><table class="{classes}"><thead><tr>{th}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _flat_mask(table: pd.DataFrame) -> pd.Series:
    """Rows that never held a position (the engine's rule: no trade, nothing open)."""
    return (table["trades"] == 0) & (table["open_trades"] == 0)


def _fig_html(fig: Any) -> str:
    import plotly.io as pio  # plotly is needed for the report only

    return pio.to_html(fig, full_html=False, include_plotlyjs=False, config={"responsive": True})


def _verdict_css(result: SweepResult) -> str:
    cls = result.overfit.verdict_class
    if cls == "edge":
        return "good"
    return "bad" if cls in ("no_trades", "no_edge", "luck", "unstable") else "warn"


def _ms(index: pd.Index) -> np.ndarray:
    """Bar times as float milliseconds since the epoch: a date axis reads them, and plotly
    writes a float array as compact binary instead of one date string per point."""
    return pd.DatetimeIndex(index).as_unit("ns").asi8 / 1e6


def _f32(values: Any) -> np.ndarray:
    """Chart values as float32 (7 significant digits: plenty on a chart, half the bytes)."""
    return np.asarray(values, dtype=np.float32)


def heatmaps(result: SweepResult) -> list[Any]:
    """One heatmap per pair of swept axes with more than one value: the best Sharpe of the rows
    that trade over the other axes in each cell (hover: the median too); a cell whose rows all
    stayed flat reads ``flat`` (no colour), never 0."""
    import plotly.graph_objects as go  # report only

    t = result.table
    flat = _flat_mask(t)
    axes = [a for a in AXES if t[a].nunique() > 1]
    figs = []
    for i, a in enumerate(axes):
        for b in axes[i + 1:]:
            if len(figs) >= MAX_HEATMAPS:
                return figs
            xs = [str(v) for v in dict.fromkeys(t[a].tolist())]
            ys = [str(v) for v in dict.fromkeys(t[b].tolist())]
            keyed = t.assign(_a=t[a].astype(str), _b=t[b].astype(str), _flat=flat)
            trading = keyed[~keyed["_flat"]].groupby(["_a", "_b"], sort=False)[HEATMAP_METRIC]
            best = trading.max().unstack("_a").reindex(index=ys, columns=xs)
            med = trading.median().unstack("_a").reindex(index=ys, columns=xs)
            any_row = keyed.groupby(["_a", "_b"], sort=False)["_flat"].size().unstack("_a").reindex(index=ys, columns=xs)
            z = best.to_numpy(dtype=float)
            has = any_row.notna().to_numpy()
            text = [[_fmt(v) if math.isfinite(v) else (FLAT if h else "") for v, h in zip(zr, hr)]
                    for zr, hr in zip(z, has)]
            fig = go.Figure(go.Heatmap(
                z=z, x=xs, y=ys, text=text, texttemplate="%{text}", colorscale="RdYlGn", zmid=0, hoverongaps=False,
                customdata=med.to_numpy(dtype=float),
                hovertemplate=f"{a}=%{{x}}<br>{b}=%{{y}}<br>best Sharpe %{{z:.3f}}<br>median %{{customdata:.3f}}"
                              "<extra></extra>", colorbar={"title": "Sharpe"}))
            fig.update_layout(title=f"Best annualised Sharpe of the rows that trade: {b} vs {a} ('flat': no row "
                                    "of the cell traded)", height=380, plot_bgcolor="#eeeeee",
                              margin={"l": 60, "r": 20, "t": 50, "b": 50}, xaxis_title=a, yaxis_title=b)
            figs.append(fig)
    return figs


def _downsample(series: pd.Series) -> pd.Series:
    step = max(1, len(series) // MAX_CHART_POINTS)
    if step == 1:
        return series
    keep = np.r_[np.arange(0, len(series), step), len(series) - 1]
    return series.iloc[np.unique(keep)]


def equity_figure(result: SweepResult, portfolios: PortfolioSet, rows: Iterable[int]) -> Any:
    """Equity of ``rows`` (vectorbt's value) on its own axis, buy-and-hold on a second axis (its
    swings would flatten the strategies' lines), and the rows' drawdowns."""
    import plotly.graph_objects as go  # report only
    from plotly.subplots import make_subplots

    value = portfolios.portfolio.value()
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.72, 0.28], vertical_spacing=0.04,
                        specs=[[{"secondary_y": True}], [{}]])
    bh = _downsample(buy_and_hold_value(result.data))
    fig.add_trace(go.Scattergl(x=_ms(bh.index), y=_f32(bh), name="buy & hold (right axis)",
                               line={"color": "#aaa", "width": 1, "dash": "dot"}), row=1, col=1, secondary_y=True)
    for r in rows:
        col = portfolios.column(r)
        v = value[col]
        dd = v / v.cummax() - 1.0
        v, dd = _downsample(v), _downsample(dd)
        fig.add_trace(go.Scattergl(x=_ms(v.index), y=_f32(v), name=col, line={"width": 1.2}), row=1, col=1)
        fig.add_trace(go.Scattergl(x=_ms(dd.index), y=_f32(dd * 100), name=col, showlegend=False,
                                   line={"width": 0.8}), row=2, col=1)
    step = max(1, len(value) // MAX_CHART_POINTS)
    fig.update_layout(title="Equity of the top rows that trade (vectorbt value; buy-and-hold on the right axis)"
                            + (f" (every {step}th bar drawn)" if step > 1 else ""),
                      height=620, legend={"font": {"size": 10}}, margin={"l": 60, "r": 60, "t": 50, "b": 40})
    fig.update_xaxes(type="date")
    fig.update_yaxes(title_text="equity", row=1, col=1, secondary_y=False)
    fig.update_yaxes(title_text="buy & hold", row=1, col=1, secondary_y=True, showgrid=False)
    fig.update_yaxes(title_text="drawdown %", row=2, col=1)
    return fig


def sharpe_figure(result: SweepResult) -> Any:
    """Histogram of the trading rows' Sharpe ratios with luck's expected maximum marked."""
    import plotly.graph_objects as go  # report only

    o = result.overfit
    t = result.table
    s = t.loc[~_flat_mask(t), "sharpe"].dropna()
    fig = go.Figure(go.Histogram(x=s.to_numpy(), nbinsx=min(60, max(10, len(s) // 5)), name="rows",
                                 marker={"color": "#4c78a8"}))
    for x, label, color in ((o.expected_max_sharpe, "expected max of luck", "#e45756"),
                            (o.sharpe, "best row", "#54a24b")):
        if math.isfinite(x):
            fig.add_vline(x=x, line={"color": color, "dash": "dash"}, annotation_text=label)
    flat = len(t) - len(s)
    fig.update_layout(title=f"Annualised Sharpe of the {len(s):,} rows that trade"
                            + (f" ({flat:,} flat rows left out)" if flat else ""), height=340,
                      xaxis_title="Sharpe (annualised)", yaxis_title="rows",
                      margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return fig


def _every(n: int, most: int) -> np.ndarray:
    """At most ``most`` evenly spaced indices of ``n`` (all when n <= most)."""
    return np.arange(n) if n <= most else np.unique(np.linspace(0, n - 1, most).astype(np.int64))


def pbo_figures(result: SweepResult) -> list[Any]:
    """CSCV: the logit distribution (binned here) and the chosen rows' in- vs out-of-sample
    Sharpe (at most :data:`MAX_SCATTER_POINTS` splits drawn)."""
    import plotly.graph_objects as go  # report only

    o = result.overfit
    if not o.logits:
        return []
    lg = np.asarray(o.logits)
    counts, edges = np.histogram(lg, bins=50)
    hist = go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=np.diff(edges),
                            marker={"color": "#72b7b2"}))
    hist.add_vline(x=0, line={"color": "#e45756", "dash": "dash"}, annotation_text="median OOS rank")
    hist.update_layout(title=f"CSCV logits of the in-sample winner's out-of-sample rank (PBO = share <= 0: {o.pbo:.2f})",
                       height=320, xaxis_title="logit", yaxis_title="splits", margin={"l": 60, "r": 20, "t": 50, "b": 50})
    x, y = np.asarray(o.is_sharpe), np.asarray(o.oos_sharpe)
    ok = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    ok = ok[_every(ok.size, MAX_SCATTER_POINTS)]
    sc = go.Figure(go.Scattergl(x=_f32(x[ok]), y=_f32(y[ok]), mode="markers", marker={"size": 4, "opacity": 0.4}))
    shown = f"; {ok.size:,} of {len(x):,} splits drawn" if ok.size < len(x) else ""
    sc.update_layout(title=f"In-sample vs out-of-sample Sharpe of the chosen row per CSCV split "
                           f"(slope {o.degradation_slope:.2f}; P(OOS loss) {o.prob_oos_loss:.2f}{shown})",
                     height=360, xaxis_title="in-sample Sharpe", yaxis_title="out-of-sample Sharpe",
                     margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return [hist, sc]


def walk_forward_figure(result: SweepResult, portfolios: PortfolioSet | None) -> list[Any]:
    """In-sample vs out-of-sample Sharpe per fold, and the chained out-of-sample equity."""
    import plotly.graph_objects as go  # report only

    wf = result.walk_forward
    if wf is None or wf.table.empty:
        return []
    t = wf.table
    labels = [f"fold {k}: {n.split(' ', 1)[0]}" for k, n in zip(t["fold"], t["name"])]
    bars = go.Figure([go.Bar(x=labels, y=t["is_sharpe"], name="in-sample (chosen on)"),
                      go.Bar(x=labels, y=t["oos_sharpe"], name="out-of-sample (next fold)"),
                      go.Scatter(x=labels, y=t["oos_median_sharpe"], mode="markers", name="median row OOS",
                                 marker={"symbol": "line-ew-open", "size": 18})])
    bars.update_layout(barmode="group", title="Walk-forward: each fold's best row in sample, scored on the next fold",
                       height=360, yaxis_title="Sharpe (annualised)", margin={"l": 60, "r": 20, "t": 50, "b": 50})
    figs = [bars]
    if portfolios is not None:
        figs.append(_chained_figure(result, portfolios, t))
    return figs


def _chained_figure(result: SweepResult, portfolios: PortfolioSet, t: pd.DataFrame) -> Any:
    """The walk-forward choices' out-of-sample equity chained (start 1), buy-and-hold on its own axis."""
    import plotly.graph_objects as go  # report only
    from plotly.subplots import make_subplots

    value = portfolios.portfolio.value()
    pieces, level = [], 1.0
    for rec in t.itertuples():
        v = value[portfolios.column(int(rec.row))].iloc[rec.first_bar:rec.last_bar + 1]
        seg = level * v / v.iloc[0]
        level = float(seg.iloc[-1])
        pieces.append(seg if not pieces else seg.iloc[1:])
    chained = _downsample(pd.concat(pieces))
    bh = buy_and_hold_value(result.data).iloc[t["first_bar"].iloc[0]:]
    bh = _downsample(bh / bh.iloc[0])
    eq = make_subplots(specs=[[{"secondary_y": True}]])
    eq.add_trace(go.Scattergl(x=_ms(chained.index), y=_f32(chained), name="chosen rows, out of sample"))
    eq.add_trace(go.Scattergl(x=_ms(bh.index), y=_f32(bh), name="buy & hold (right axis)",
                              line={"color": "#aaa", "dash": "dot"}), secondary_y=True)
    eq.update_xaxes(type="date")
    eq.update_yaxes(showgrid=False, secondary_y=True)
    eq.update_layout(title="Out-of-sample equity of the walk-forward choices, chained (start = 1)", height=340,
                     margin={"l": 60, "r": 60, "t": 50, "b": 40})
    return eq


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1280px;color:#222;padding:0 16px}
h1{font-size:1.5em;margin-bottom:4px} h2{font-size:1.15em;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
.verdict{font-size:1.12em;line-height:1.45;padding:16px 20px;border-radius:8px;margin:16px 0;border-left:8px solid}
.verdict.good{background:#eaf6ec;border-color:#2e9b48}.verdict.warn{background:#fff6e0;border-color:#e0a100}
.verdict.bad{background:#fdecea;border-color:#d93025}
.note{background:#eef3fb;border-left:6px solid #4c78a8;padding:10px 16px;border-radius:6px;margin:12px 0}
.note.warn{background:#fff6e0;border-left-color:#e0a100}
.kpis{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}.kpi{background:#f6f6f6;border-radius:6px;padding:8px 12px}
.kpi b{display:block;font-size:1.2em}
.scroll{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;font-size:12px;margin:8px 0;max-width:100%}
th,td{border:1px solid #ddd;padding:3px 5px;text-align:right} td{white-space:nowrap}
th{background:#f3f3f3;position:sticky;top:0;white-space:normal;vertical-align:bottom}
td:first-child,th:first-child{text-align:left;white-space:normal;min-width:8em;max-width:22em}
.meta{color:#555;font-size:.92em} pre{white-space:pre-wrap;word-break:break-all;font-size:11px}
.formula{font-family:ui-monospace,Menlo,Consolas,monospace;background:#f6f6f6;padding:6px 10px;border-radius:4px}
"""
TOP_SHOW = ("name", "center_used", "sharpe", "sortino", "total_return", "cagr", "max_drawdown", "trades", "win_rate",
            "avg_hold_bars", "exposure", "turnover", "fees", "base_rate", "breakeven_p", "trained_barriers")


def _script_tag(embed: bool) -> str:
    """plotly.js inline (``embed``) or the one copy beside the page (works offline either way)."""
    if embed:
        import plotly.offline as po  # report only

        return f"<script type='text/javascript'>{po.get_plotlyjs()}</script>"
    return f"<script type='text/javascript' src='{PLOTLY_JS}'></script>"


def _header(result: SweepResult, man: dict[str, Any], embed: bool) -> list[str]:
    """Title, what ran on what, the verdict, its cautions and the key figures."""
    o, d, g = result.overfit, result.data, result.grid
    kpis = [("verdict", VERDICT_CLASSES.get(o.verdict_class, o.verdict_class)), ("DSR", _fmt(o.dsr)),
            ("PSR", _fmt(o.psr)), ("PBO", _fmt(o.pbo)), ("best Sharpe (trading rows)", _fmt(o.sharpe)),
            ("luck's expected max", _fmt(o.expected_max_sharpe)),
            ("effective trials", f"{o.n_trials:,.1f}" if o.n_trading else "n/a"),
            ("rows: trading / duplicate / flat", f"{o.n_trading:,} / {o.n_duplicates:,} / {o.n_flat:,}"),
            ("CSCV blocks / splits", f"{o.blocks} / {o.n_splits:,}"),
            ("buy & hold Sharpe", _fmt(result.buy_and_hold.get("sharpe"))),
            ("buy & hold return", _fmt(result.buy_and_hold.get("total_return"), "pct"))]
    return [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>nts sweep report</title>",
        f"<style>{CSS}</style>{_script_tag(embed)}</head><body>",
        "<h1>Sweep report</h1>",
        f"<div class='meta'>model <code>{html.escape(str(man['bundle'].get('path')))}</code> &middot; data "
        f"<code>{html.escape(str(man['data'].get('path')))}</code> &middot; span {html.escape(man['span']['start'])} .. "
        f"{html.escape(man['span']['end'])} ({man['span']['bars']:,} bars of {d.timeframe}) &middot; {g.size:,} rows "
        f"&middot; {html.escape(result.engine)} &middot; probabilities: {html.escape(d.prob_source)}</div>",
        f"<div class='verdict {_verdict_css(result)}'><b>Is the best row luck?</b> {html.escape(o.verdict)}</div>",
        *[f"<div class='note warn'><b>Caution.</b> {html.escape(w)}</div>" for w in result.warnings()],
        "<div class='kpis'>" + "".join(f"<div class='kpi'>{k}<b>{v}</b></div>" for k, v in kpis) + "</div>",
        f"<div class='note'><b>Exit-rule sweep.</b> {html.escape(exit_rule_note(result))}</div>",
        _method_note(result, man),
    ]


def _method_note(result: SweepResult, man: dict[str, Any]) -> str:
    """How the statistics count rows and deflate the Sharpe (the README says the same)."""
    o = result.overfit
    rho = "n/a" if not math.isfinite(o.avg_correlation) else f"{o.avg_correlation:.2f}"
    return (
        "<p class='meta'><b>Which rows count.</b> A row that never traded is flat: it is never the best row and "
        "is no trial (its Sharpe is 0 in every table -- results.csv, walk-forward, vectorbt's stats -- and its "
        "heatmap cells read 'flat'). Rows with the same returns in every block "
        "(the same trades) count once. "
        f"<b>DSR</b> (Bailey &amp; López de Prado 2014): the probability that the best trading row's Sharpe beats "
        f"<span class='formula'>E[max SR] = sqrt(V) ((1 - &gamma;) &Phi;<sup>-1</sup>(1 - 1/N) + &gamma; "
        f"&Phi;<sup>-1</sup>(1 - 1/(N e)))</span>, the expected maximum of N trials without skill; V is the variance "
        f"of the distinct trading rows' Sharpe ratios and N the effective number of independent trials, "
        f"<span class='formula'>N = &rho; + (1 - &rho;) M</span>, with M = {o.n_trading:,} distinct trading rows and "
        f"&rho; = {rho} the mean pairwise correlation of their per-block mean returns (clipped to [0, 1]); "
        f"significant at &ge; {DSR_SIGNIFICANT}. <b>PBO</b>: share of the C({o.blocks},{o.blocks // 2}) "
        f"combinatorially symmetric splits where the in-sample winner ranks at or below the out-of-sample median "
        f"(Bailey, Borwein, López de Prado &amp; Zhu 2015), over the same distinct trading rows; low &lt; {PBO_LOW}, "
        f"high &gt; {PBO_HIGH}. Sharpe: per-bar returns net of costs, annualised with "
        f"sqrt({man['overfit'].get('periods_per_year'):,.0f}).</p>")


def _top_tables(result: SweepResult) -> list[str]:
    """The best rows that trade (flat rows are never 'best'), narrow enough for the page."""
    t = result.table
    show = [c for c in TOP_SHOW if c in t.columns]
    trading = result.top_trading
    flat = result.flat_rows
    note = (f"<p class='meta'>{flat:,} of {len(t):,} rows never traded (flat); they are listed in results.csv "
            "(Sharpe 0 there) and left out here. The name holds each row's swept values.</p>") if flat else ""
    if trading.empty:
        return ["<h2>Top rows</h2>", note or "<p>No row traded.</p>"]
    return [f"<h2>Top {len(trading)} rows that trade, by Sharpe</h2>", note, _table(trading[show], index=False)]


def _walk_forward_part(result: SweepResult, portfolios: PortfolioSet | None) -> list[str]:
    wf, g = result.walk_forward, result.grid
    if wf is None or wf.table.empty:
        return []
    s = wf.summary
    table = wf.table.drop(columns=["first_bar", "last_bar", "name"]).set_index("fold")
    return [f"<h2>Walk-forward: in-sample vs out-of-sample ({g.folds} folds)</h2>",
            f"<p>Each fold's best row by in-sample Sharpe, scored on the next fold (slices of one run per row, "
            f"so positions and breaker states carry across fold edges). Mean in-sample Sharpe "
            f"<b>{_fmt(s['mean_is_sharpe'])}</b>, mean out-of-sample <b>{_fmt(s['mean_oos_sharpe'])}</b>; chained "
            f"out-of-sample return <b>{_fmt(s['oos_return_chained'], 'pct')}</b>; {s['oos_losing_folds']} of "
            f"{s['steps']} out-of-sample folds lost money; the chosen row's mean out-of-sample rank "
            f"{_fmt(s['mean_oos_rank_pct'], 'pct')} (100% = best row).</p>",
            _table(table), *[_fig_html(f) for f in walk_forward_figure(result, portfolios)]]


def _vectorbt_part(portfolios: PortfolioSet, man: dict[str, Any]) -> list[str]:
    stats = portfolios.stats()
    chk = man.get("vectorbt_check") or {}
    short = stats.rename(columns=lambda c: str(c).split(" ", 1)[0])  # '#12 profit=...' -> '#12'
    return ["<h2>vectorbt: stats of the rows shown</h2>",
            f"<p class='meta'>Built from the simulator's fills replayed through vectorbt's order primitive. "
            f"Value check against the kernel: largest final-value difference "
            f"<b>{chk.get('max_final_value_rel_diff', float('nan')):.2e}</b>, largest bar-by-bar "
            f"<b>{chk.get('max_bar_value_rel_diff', float('nan')):.2e}</b> (relative; required &le; 1e-9). "
            f"vectorbt's ratios count the first bar's zero return, so they differ slightly from the table's; "
            f"a row that never traded shows Sharpe and Sortino 0 here too, as in results.csv. Columns are row "
            f"numbers (names in the tables above).</p>",
            _table(short.astype(str))]


def render_html(result: SweepResult, portfolios: PortfolioSet | None, man: dict[str, Any],
                embed_plotlyjs: bool = False) -> str:
    """The whole report page; plotly.js inline with ``embed_plotlyjs``, else read from
    :data:`PLOTLY_JS` beside the page (:func:`write_report` writes it)."""
    parts = _header(result, man, embed_plotlyjs) + _top_tables(result)
    figs = heatmaps(result)
    if figs:
        parts += ["<h2>Heatmaps of the swept axes</h2>", *[_fig_html(f) for f in figs]]
    if portfolios is not None:
        flat = _flat_mask(result.table)
        first = row_groups(result.moments).first  # a duplicate's line would hide under its twin's
        candidates = dict.fromkeys(int(r) for r in [*result.top_trading.index, *result.top.index])
        top_rows = [r for r in candidates if r in portfolios.rows and not flat[r] and first[r] == r][:result.grid.top]
        if top_rows:
            parts += ["<h2>Equity of the top rows that trade (duplicates drawn once)</h2>",
                      _fig_html(equity_figure(result, portfolios, top_rows))]
    parts += ["<h2>Sharpe across the grid</h2>", _fig_html(sharpe_figure(result))]
    pfigs = pbo_figures(result)
    if pfigs:
        parts += ["<h2>Probability of backtest overfitting (CSCV)</h2>", *[_fig_html(f) for f in pfigs]]
    parts += _walk_forward_part(result, portfolios)
    if portfolios is not None:
        parts += _vectorbt_part(portfolios, man)
    parts += ["<h2>Manifest</h2>", f"<pre>{html.escape(json.dumps(man, indent=2)[:20000])}</pre>", "</body></html>"]
    return "\n".join(parts)


def plotly_js_source() -> Path:
    """The installed plotly package's own ``plotly.min.js`` (offline; the version plotly.py draws with)."""
    import plotly  # report only

    return Path(plotly.__file__).resolve().parent / "package_data" / PLOTLY_JS


def write_report(result: SweepResult, output: str | Path, *, portfolios: PortfolioSet | None = None,
                 data_path: str | Path | None = None, model_path: str | Path | None = None,
                 inputs: Iterable[str | Path | None] = (), overwrite: bool = False,
                 seconds: dict[str, float] | None = None, command: str | None = None,
                 embed_plotlyjs: bool = False) -> dict[str, Path]:
    """Write the report folder atomically (temp sibling, then rename; an existing folder is
    replaced only when it is a previous sweep output -- :func:`core.files.output_dir`).
    plotly.js is written once into the folder (``plotly.min.js``) and read by report.html, or
    inlined in the page with ``embed_plotlyjs``."""
    man = manifest(result, data_path=data_path, model_path=model_path, portfolios=portfolios, seconds=seconds,
                   command=command)
    page = render_html(result, portfolios, man, embed_plotlyjs=embed_plotlyjs)
    names = ["results.csv", "report.html", "manifest.json"]
    with output_dir(output, OUTPUT_KIND, inputs=list(inputs), overwrite=overwrite) as tmp:
        result.table.to_csv(tmp / "results.csv", float_format="%.10g")
        if result.walk_forward is not None and not result.walk_forward.table.empty:
            result.walk_forward.table.to_csv(tmp / "walk_forward.csv", index=False, float_format="%.10g")
            names.append("walk_forward.csv")
        if portfolios is not None:
            portfolios.stats().to_csv(tmp / "vectorbt_stats.csv")
            names.append("vectorbt_stats.csv")
        if not embed_plotlyjs:
            (tmp / PLOTLY_JS).write_bytes(plotly_js_source().read_bytes())
            names.append(PLOTLY_JS)
        (tmp / "report.html").write_text(page, encoding="utf-8")
        # manifest.json last: a folder holding it is complete
        (tmp / "manifest.json").write_text(json.dumps(man, indent=2) + "\n", encoding="utf-8")
    out = Path(output)
    return {n: out / n for n in names}
