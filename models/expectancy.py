"""What a probability is worth in money: the barrier trade's outcome per P bin.

A calibrated P says how often the profit barrier comes first; whether a bar is worth trading
depends on the whole exit mix (stops, and time exits that average neither barrier) and on
fees. This table answers that directly on out-of-sample bars: for each bin of P, the mean
gross return of the label's own trade (entry at the bar's close, exit at the first barrier
touched or at the close ``horizon`` bars later, the tie rule of the labels) and that return
net of a round trip of fees. It is the trade the strategy makes when it enters at the close
with the label's barriers and ``max_hold = horizon``; fills, slippage, limit entries and the
risk manager are left out (the backtest has them), so it measures the model, not the policy.
"""
from __future__ import annotations

import math

import numpy as np

DEFAULT_EDGES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0)


def outcome_by_probability(p: np.ndarray, label: np.ndarray, gross_return: np.ndarray, round_trip_cost: float,
                           edges: tuple[float, ...] = DEFAULT_EDGES) -> list[dict]:
    """Per bin ``[lo, hi)`` of P (the last bin closed): n, mean P, observed hit rate, mean gross
    and net return of the barrier trade, the net mean's standard error, and the share of bars
    with a positive net return. Bars with a non-finite P, label or return are left out."""
    p, label, gross = (np.asarray(a, dtype=float) for a in (p, label, gross_return))
    if not (p.shape == label.shape == gross.shape):
        raise ValueError(f"outcome_by_probability: p, label and gross_return differ in length "
                         f"({len(p)}, {len(label)}, {len(gross)})")
    ok = np.isfinite(p) & np.isfinite(label) & np.isfinite(gross)
    p, label, net = p[ok], label[ok], gross[ok] - round_trip_cost
    rows = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        last = i == len(edges) - 2
        sel = (p >= lo) & ((p <= hi) if last else (p < hi))
        n = int(sel.sum())
        rows.append({"p_from": lo, "p_to": hi, "n": n, **_bin_figures(p[sel], label[sel], net[sel], round_trip_cost)})
    return rows


def _bin_figures(p: np.ndarray, label: np.ndarray, net: np.ndarray, cost: float) -> dict:
    if len(p) == 0:
        nan = float("nan")
        return {"mean_p": nan, "hit_rate": nan, "mean_gross": nan, "mean_net": nan, "se_net": nan,
                "share_net_positive": nan}
    se = float(net.std(ddof=1) / math.sqrt(len(net))) if len(net) > 1 else float("nan")
    return {"mean_p": float(p.mean()), "hit_rate": float(label.mean()), "mean_gross": float(net.mean() + cost),
            "mean_net": float(net.mean()), "se_net": se, "share_net_positive": float((net > 0).mean())}


def to_markdown(rows: list[dict], round_trip_cost: float) -> str:
    """The table as markdown, returns in percent of the entry price."""
    lines = [f"Barrier trade per P bin (entry at the close, label exits; net of a {round_trip_cost:.2%} round trip):",
             "", "| P bin | n | mean P | hit rate | mean gross | mean net | s.e. net | share net > 0 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["n"]:
            lines.append(f"| {r['p_from']:.2f}-{r['p_to']:.2f} | 0 | | | | | | |")
            continue
        lines.append(f"| {r['p_from']:.2f}-{r['p_to']:.2f} | {r['n']:,} | {r['mean_p']:.3f} | {r['hit_rate']:.3f} | "
                     f"{r['mean_gross']:+.3%} | {r['mean_net']:+.3%} | {r['se_net']:.3%} | {r['share_net_positive']:.3f} |")
    return "\n".join(lines) + "\n"
