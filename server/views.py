"""What the server shows: the model's metadata and a session's journal as plain JSON.

Only read-only journal handles are used here (safe next to the running session). The
paged bar list reads the ``bars`` table with its own read-only SQLite connection and only
the columns it shows, so a long session's page costs one small query, not every checkpoint's
state.
"""
from __future__ import annotations

import math
import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any

from sessions.journal import Journal, iso_ms
from server.setup import ServeSetup

_BAR_COLUMNS = ("bar_time", "close", "prob", "signal", "weight", "position", "cash", "equity", "breaker_state")


def plain(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats -> None, tuples -> lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def model_info(setup: ServeSetup) -> dict[str, Any]:
    """Bundle metadata for ``/model``: what it predicts and how well, never a path or a secret
    (the bundle's stored config, which names data files and the exchange URL, is left out)."""
    b = setup.bundle
    meta = b.meta
    return plain({
        "model_id": setup.model_id,
        "format_version": meta.get("format_version"),
        "created_utc": meta.get("created_utc"),
        "timeframe": b.timeframe,
        "window": b.window,
        "features": {"names": list(b.feature_names), "config": b.feature_cfg.model_dump(mode="json"),
                     "definitions_hash": meta.get("feature_hash")},
        "warmup": {"min_bars": b.min_bars, "history_bars": b.history_bars,
                   "request_bars": setup.warmup_bars if setup.refusal is not None else setup.min_bars},
        "strategy": {"name": setup.strategy, "hook_lookback": setup.lookback,
                     "overridden_hooks": setup.overridden_hooks(), "refusal": setup.refusal},
        "labels": b.label_cfg.model_dump(mode="json"),
        "policy": {**setup.policy.to_dict(), "barriers_from": setup.barriers, "risk_weight_cap": setup.risk.weight_cap,
                   # profit/stop are fractions of the price or multiples of the bar's width: say which
                   "barrier_rule": setup.policy.describe_barriers()},
        "calibrator": (meta.get("calibrator") or {}).get("kind"),
        "network": {"spec": meta.get("model"), "parameters": meta.get("parameters"),
                    "receptive_field": meta.get("receptive_field")},
        "spans": meta.get("spans"),
        "metrics": meta.get("metrics"),
        "hashes": {"weights_sha256": meta.get("weights_sha256"), "feature_hash": meta.get("feature_hash"),
                   "data_sha256": (meta.get("data") or {}).get("sha256")},
        "versions": meta.get("versions"),
    })


def fills(journal: Journal, limit: int) -> list[dict[str, Any]]:
    """The last ``limit`` fills, oldest first, with the role of the order they filled."""
    roles = {i.client_id: i.role for i in journal.intents()}
    rows = journal.fills()[-limit:] if limit else []
    return [plain({"trade_id": f.trade_id, "client_id": f.client_id, "role": roles.get(f.client_id or ""),
                   "side": f.side, "price": f.price, "amount": f.amount, "fee": f.fee,
                   "fee_currency": f.fee_currency, "time": iso_ms(f.ts), "ts": f.ts}) for f in rows]


def trades(journal: Journal) -> list[dict[str, Any]]:
    """Round trips from the fills: a trade opens when the position leaves 0 and closes when it
    returns to 0 (net P&L after fees in the quote currency; an open trade has no exit)."""
    out: list[dict[str, Any]] = []
    pos = 0.0
    cur: dict[str, Any] | None = None
    for f in journal.fills():
        signed = f.amount if f.side == "buy" else -f.amount
        if cur is None:
            cur = {"side": "long" if signed > 0 else "short", "entry_time": iso_ms(f.ts), "entry_value": 0.0,
                   "size": 0.0, "exit_value": 0.0, "exit_size": 0.0, "fees": 0.0, "exit_time": None}
        opening = (pos >= 0 and signed > 0) or (pos <= 0 and signed < 0)
        if opening:
            cur["entry_value"] += f.price * f.amount
            cur["size"] += f.amount
        else:
            cur["exit_value"] += f.price * f.amount
            cur["exit_size"] += f.amount
        cur["fees"] += f.fee
        pos += signed
        if abs(pos) <= 1e-12 * max(1.0, cur["size"]):
            pos = 0.0
            cur["exit_time"] = iso_ms(f.ts)
            out.append(_trade(cur))
            cur = None
    if cur is not None:
        out.append(_trade(cur))
    return out


def _trade(t: dict[str, Any]) -> dict[str, Any]:
    entry = t["entry_value"] / t["size"] if t["size"] else None
    exit_ = t["exit_value"] / t["exit_size"] if t["exit_size"] else None
    pnl = None
    if t["exit_time"] is not None:
        gross = t["exit_value"] - t["entry_value"]
        pnl = (gross if t["side"] == "long" else -gross) - t["fees"]
    return plain({"side": t["side"], "entry_time": t["entry_time"], "entry_price": entry, "size": t["size"],
                  "exit_time": t["exit_time"], "exit_price": exit_, "fees": t["fees"], "pnl": pnl})


def bars_page(state: Path, offset: int, limit: int, newest_first: bool = False) -> dict[str, Any]:
    """One page of the journaled bars (decisions and equity), with the total count."""
    uri = "file:" + urllib.parse.quote(str(Path(state).resolve())) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=10.0)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        total = conn.execute("SELECT COUNT(*) FROM bars").fetchone()[0]
        order = "DESC" if newest_first else "ASC"
        rows = conn.execute(f"SELECT {', '.join(_BAR_COLUMNS)} FROM bars ORDER BY bar_time {order} LIMIT ? OFFSET ?",
                            (int(limit), int(offset))).fetchall()
    finally:
        conn.close()
    items = [dict(zip(_BAR_COLUMNS, r)) | {"time": iso_ms(r[0])} for r in rows]
    return plain({"total": total, "offset": offset, "limit": limit, "bars": items})


def journal_summary(journal: Journal, events: int = 20) -> dict[str, Any]:
    """:meth:`Journal.summary` plus the last ``events`` events (no state dicts)."""
    summary = journal.summary()
    summary.pop("path", None)
    summary["session"].pop("model_path", None)  # a path outside the journal: not shown
    recent = [{"time": iso_ms(e["ts"]), "kind": e["kind"], "message": e["message"]}
              for e in journal.events(limit=events)]
    return plain(summary | {"recent_events": recent})


def session_status(host: Any) -> dict[str, Any]:
    """``/api/v1/status``: the host's state plus the journal's position, equity, working
    orders, breakers and halt."""
    out: dict[str, Any] = {"mode": host.mode, "state": host.state_name, "paused": host.control.paused,
                           "error": host.error, "last_line": host.lines[-1] if host.lines else None}
    j = host.reader()
    if j is None:
        return plain(out | {"journal": None})
    s = j.summary()
    return plain(out | {
        "session_id": s["session"]["session_id"], "exchange": s["session"]["exchange"],
        "symbol": s["session"]["symbol"], "timeframe": s["session"]["timeframe"],
        "last_bar": s["last_bar_iso"], "bars_processed": s["bars_processed"], "close": s["close"],
        "equity": s["equity"], "cash": s["cash"], "position": s["position"], "avg_price": s["avg_price"],
        "working_orders": s["open_orders"], "breakers": s["breaker_state"], "breaker_trips": s["breaker_trips"],
        "halted": s["halted"], "halt": s["halt"], "fills": s["trade_count"], "journal": "ok"})
