"""The status page at ``/``: server-rendered HTML, no scripts, no build step.

Equity curve (inline SVG), position and working orders, the last decisions with P and
signal, breakers and halt, recent fills and events; the page reloads itself every few
seconds (``<meta http-equiv="refresh">``). Every value from the journal is HTML-escaped.
"""
from __future__ import annotations

import html
import math
from typing import Any, Iterable, Sequence

from server import views

REFRESH_SECONDS = 5
_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .3em} h2{font-size:1.05em;margin:1.2em 0 .4em}
.cards{display:flex;gap:1em;flex-wrap:wrap} .card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em 1em}
.card b{display:block;font-size:1.3em} table{border-collapse:collapse;background:#fff}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right} th{background:#f0f0f0}
td.l,th.l{text-align:left} .halt{background:#fdd;border:1px solid #c66;padding:.5em 1em;border-radius:6px}
.ok{color:#080} .bad{color:#b00} svg{background:#fff;border:1px solid #ddd}
"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _num(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:,.{digits}f}"


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], left: int = 1) -> str:
    head = "".join(f"<th{' class=l' if i < left else ''}>{_e(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td{' class=l' if i < left else ''}>{c}</td>" for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body or '<tr><td class=l colspan=%d>none</td></tr>' % len(headers)}</table>"


def equity_svg(points: Sequence[tuple[str, float]], width: int = 720, height: int = 180) -> str:
    """A polyline of the equity values (oldest first), scaled to the box; empty text when < 2."""
    values = [v for _, v in points if v is not None and math.isfinite(v)]
    if len(values) < 2:
        return "<p>no equity curve yet</p>"
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    step = (width - 20) / (len(values) - 1)
    coords = " ".join(f"{10 + i * step:.1f},{height - 10 - (v - lo) / span * (height - 20):.1f}"
                      for i, v in enumerate(values))
    return (f'<svg id="equity" width="{width}" height="{height}" role="img" aria-label="equity curve">'
            f'<polyline fill="none" stroke="#2a6fdb" stroke-width="1.5" points="{coords}"/>'
            f'<text x="12" y="14" font-size="11">{_num(hi)}</text>'
            f'<text x="12" y="{height - 2}" font-size="11">{_num(lo)}</text></svg>')


def render_status_page(host: Any) -> str:
    """The whole page for the host's session (see module docstring)."""
    st = views.session_status(host)
    parts = [f"<h1>nts {_e(st['mode'])} session {_e(st.get('session_id', ''))} "
             f"{_e(st.get('symbol', ''))} {_e(st.get('timeframe', ''))}</h1>",
             f"<p>state <b>{_e(st['state'])}</b>; last bar {_e(st.get('last_bar') or '-')}; "
             f"{_e(st.get('bars_processed', 0))} bars journaled</p>"]
    if st.get("error"):
        parts.append(f"<p class=halt>session error: {_e(st['error'])}</p>")
    if st.get("halted"):
        h = st.get("halt") or {}
        parts.append(f"<p class=halt id=halt>HALTED since {_e(h.get('ts_iso'))}: {_e(h.get('reason'))}</p>")
    if st.get("paused"):
        parts.append(f"<p class=halt id=paused>PAUSED (no new entries): {_e(st['paused'])}</p>")
    breakers = st.get("breakers") or "-"
    cls = "ok" if breakers == "ok" else "bad"
    parts.append("<div class=cards>" + "".join(
        f"<div class=card>{_e(k)}<b{extra}>{v}</b></div>" for k, v, extra in (
            ("equity", _num(st.get("equity")), ""), ("cash", _num(st.get("cash")), ""),
            ("position", _num(st.get("position"), 6), ""), ("close", _num(st.get("close")), ""),
            ("breakers", _e(breakers), f" class={cls}"), ("fills", _e(st.get("fills", 0)), ""))) + "</div>")
    j = host.reader()
    if j is not None:
        recent = views.bars_page(host.state, 0, 500, newest_first=True)["bars"][::-1]
        parts.append("<h2>Equity</h2>" + equity_svg([(b["time"], b["equity"]) for b in recent]))
        parts.append("<h2>Working orders</h2>" + _table(
            ["client id", "role", "side", "type", "amount", "price", "status"],
            [[_e(o["client_id"]), _e(o["role"]), _e(o["side"]), _e(o["type"]), _num(o["amount"], 6),
              _num(o["price"]), _e(o["status"])] for o in st.get("working_orders") or []], left=4))
        parts.append("<h2>Last decisions</h2>" + _table(
            ["bar", "close", "P", "signal", "weight", "position", "equity", "breakers"],
            [[_e(b["time"]), _num(b["close"]), _num(b["prob"], 4), _num(b["signal"], 3), _num(b["weight"], 3),
              _num(b["position"], 6), _num(b["equity"]), _e(b["breaker_state"])] for b in recent[::-1][:20]]))
        parts.append("<h2>Recent fills</h2>" + _table(
            ["time", "role", "side", "price", "amount", "fee"],
            [[_e(f["time"]), _e(f["role"]), _e(f["side"]), _num(f["price"]), _num(f["amount"], 6), _num(f["fee"], 6)]
             for f in views.fills(j, 20)[::-1]], left=3))
        parts.append("<h2>Recent events</h2>" + _table(
            ["time", "kind", "message"],
            [[_e(e["time"]), _e(e["kind"]), _e(e["message"])] for e in views.journal_summary(j, 10)["recent_events"][::-1]],
            left=3))
    lines = list(host.lines)[-10:]
    parts.append("<h2>Session output</h2><pre>" + _e("\n".join(lines)) + "</pre>")
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><meta http-equiv=refresh "
            f"content={REFRESH_SECONDS}><title>nts {_e(st['mode'])} status</title><style>{_STYLE}</style></head>"
            f"<body>{''.join(parts)}</body></html>")
