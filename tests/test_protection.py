"""Issue 18, category 4: never an unprotected position without saying so.

Live sessions (the real ccxt.binance client, the replay exchange, a manual clock; harness
of tests/test_live.py): the exchange refuses a position's OCO exits (insufficient balance
after fees, a filter) once, twice, and together with the market close; limit entries fill
in pieces (protection follows the filled amount at once; a partly filled entry is
canceled at its time in force).
"""
from __future__ import annotations

import pandas as pd
import pytest

from live_faults import _keys, calm_frame, fault_session, make_cfg, warm  # noqa: F401  (fixtures)

TF_MS = 900_000
REFUSE = {"code": -2010, "msg": "Account has insufficient balance for requested action."}


def refuse(ex, path: str, times: int = 1, skip: int = 0) -> None:
    ex.inject("status", status=400, body=REFUSE, path=path, method="POST", times=times, skip=skip)


def session(tmp_path, fast_bundle, warm, faults, watch=None):
    res, v, _ = fault_session(tmp_path, fast_bundle, warm, faults, watch=watch)
    return res, v


def unprotected_bars(ex, bar, seen: list) -> None:
    """Record bars that end with base held (above the minimum order) and no resting stop."""
    held = sum(float(v) for v in ex.balance("BTC"))
    last = float(ex._last(ex.markets["BTCUSDT"], ex.now_ms)[0])
    stops = [o for o in ex.open_orders() if o.type.startswith("STOP_LOSS") and o.side == "SELL"]
    if held * last >= 5.0 and not stops:
        seen.append(bar.ms)


@pytest.mark.timeout(240)
def test_refused_exits_are_retried_with_the_amount_held(tmp_path, fast_bundle, warm):
    seen: list[int] = []
    res, v = session(tmp_path, fast_bundle, warm, lambda ex: refuse(ex, "/api/v3/orderList/oco"),
                     watch=lambda ex, bar: unprotected_bars(ex, bar, seen))
    kinds = [e["kind"] for e in v["events"]]
    assert kinds.count("protection_refused") == 1 and "protection_close" not in kinds
    assert res.broker["protection_refused"] == 1 and res.broker["unprotected"] == 0
    assert v["summary"]["halted"] is False
    assert seen == [], f"bars ending with an unprotected position: {seen}"


@pytest.mark.timeout(240)
def test_exits_refused_twice_close_the_position_at_market(tmp_path, fast_bundle, warm):
    seen: list[int] = []
    res, v = session(tmp_path, fast_bundle, warm, lambda ex: refuse(ex, "/api/v3/orderList/oco", times=2),
                     watch=lambda ex, bar: unprotected_bars(ex, bar, seen))
    kinds = [e["kind"] for e in v["events"]]
    assert kinds.count("protection_refused") == 2 and kinds.count("protection_close") == 1
    assert res.broker["protection_closes"] == 1 and res.broker["unprotected"] == 0
    closes = [i for i in v["intents"] if i.role == "stop_loss" and i.order_type == "market"]
    assert len(closes) == 1 and closes[0].status == "closed"
    assert v["summary"]["halted"] is False
    assert seen == [], f"bars ending with an unprotected position: {seen}"


@pytest.mark.timeout(240)
def test_exits_and_close_refused_halt_entries_and_alert(tmp_path, fast_bundle, warm):
    def faults(ex):
        refuse(ex, "/api/v3/orderList/oco", times=2)
        refuse(ex, "/api/v3/order", times=1, skip=1)  # the entry goes through, the close does not

    res, v = session(tmp_path, fast_bundle, warm, faults)
    assert res.broker["unprotected"] == 1
    assert v["summary"]["halted"] is True and v["summary"]["halt"]["reason"].startswith("unprotected position")
    alerts = [e for e in v["events"] if e["kind"] == "unprotected"]
    assert len(alerts) == 1 and alerts[0]["message"].startswith("ALERT")
    entries = [i for i in v["intents"] if i.role == "entry" and i.status == "closed"]
    assert len(entries) == 1, "no new entry after the halt"


@pytest.mark.timeout(300)
def test_partial_fills_are_protected_at_once_and_canceled_at_their_tif(tmp_path, fast_bundle, warm):
    cfg = make_cfg(tmp_path, "strategy.limit_confidence=0", "strategy.limit_tif_bars=2")
    seen: list[int] = []
    overdue: list[str] = []

    def watch(ex, bar):
        unprotected_bars(ex, bar, seen)
        for o in ex.open_orders():
            if "-e" in o.client_order_id and o.executed_qty > 0:
                # a partly filled entry placed at bar b may work through bars b+1 .. b+tif
                if bar.ms - (o.time // TF_MS * TF_MS) >= 3 * TF_MS:
                    overdue.append(o.client_order_id)

    res, v, _ = fault_session(tmp_path, fast_bundle, warm, lambda ex: ex.inject("partial", pieces=4, times=6),
                              bars=79, frame=calm_frame(warm, 90, seed=8), cfg=cfg, db="pp.db", watch=watch,
                              all_fire=False)
    assert res.broker["interim_lists"] >= 1, "the filled part got its exits before the entry completed"
    assert seen == [], f"bars ending with an unprotected position: {[pd.Timestamp(b, unit='ms') for b in seen]}"
    assert overdue == [], f"partly filled entries working past their time in force: {sorted(set(overdue))}"
    assert any(e["kind"] == "entry_tif" for e in v["events"])
