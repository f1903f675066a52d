"""Live sessions (brokers/ccxt_broker.py, sessions/reconcile.py, LiveSession, `nts live`) through
the REAL ccxt.binance client against the replay exchange on 127.0.0.1, with keys and signed
requests, on a manual clock (the feed's wait steps the replay one bar) unless said otherwise.

**Live vs paper: the same trades, with these differences in the fill rules** (each has a test
here; the parity test picks bars and barriers where differences 1-2 cannot arise and sets
slippage to 0, and shows that everything else agrees within the tolerances below):

1. *Exits on the entry bar.* The simulated broker activates the bracket children on the bar
   the entry fills (a market entry at the open can be stopped out in that bar's range). Live,
   the OCO exits go out when the entry's fill is known (right after it, inside that bar) and
   the replay exchange lets an order act only in bars that OPEN after it was placed, so live
   exits act from the next bar on (the replay cannot know whether the bar's low came before
   or after the order). ``test_difference_exits_on_the_entry_bar``.
2. *Limit entries.* Paper fills a limit at the signal close in the next bar: at the open when
   it opens at or through it, else at the limit when the bar trades there. Live, the limit is
   placed during that bar: marketable -> filled at once at the last price (the bar's open,
   taker fee); otherwise it rests and can only fill from the bar after, usually meeting the
   strategy's cancel (``limit_tif_bars``). ``test_difference_limit_entries``.
3. *Fees in the base asset.* The exchange charges a buyer's fee in the base asset received, so
   the live position is ``amount * (1 - fee)`` (truncated to the lot step when sold), where the
   paper position is ``amount`` and the fee is taken from cash. Equity agrees to ~1e-5.
4. *Precision.* Live amounts are truncated to the lot step (0.00001) and prices rounded to the
   tick (0.01): sizes differ by up to one step, barrier prices by up to half a tick.
5. *Slippage.* The simulated broker slips market and stop fills by ``execution.slippage_bps``;
   the replay exchange fills at the print. ``test_difference_slippage``.
6. *Minimum order.* Live orders below the market's minimum amount or notional are not sent
   (journaled as skipped); the simulated broker fills any size. ``test_min_notional_...``.
7. *A bar that gaps through the take profit and also reaches the stop*: the exchange fills the
   take profit at the open (the open comes first); backtrader, processing the stop first,
   stops out in the range. ``test_oco_order_list_on_the_replay_exchange`` (exchange side).

Tolerances of the parity test: the same fills in the same order (bar, side, role); entry
prices within 1e-9 relative (8-decimal exchange prices), exit prices within 1e-6 (tick);
amounts within 2e-3 (fee in base + lot step); equity per bar within 1e-4 relative.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import ccxt
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from brokers.ccxt_store import CCXTStore
from brokers.exchange import make_exchange
from sessions.journal import Journal, JournalError
from sessions.reconcile import Ledger, reconcile
from venues.replay import ReplayExchange
from sessions.session import LiveOptions, LiveSession, PaperSession, SessionError
from cli.main import cli
from core.config import load_config
from core.synthetic import synthetic_ohlcv
from models.bundle import load_bundle
from strategies.backtest import run_backtest, warmup_bars_for

ROOT = Path(__file__).resolve().parents[1]
TF = pd.Timedelta("15min")
TF_MS = 900_000
KEY, SECRET = "live-test-key-Rk72qLm", "live-test-secret-Pj55wXn"
KEY_ENV, SECRET_ENV = "NTS_LIVE_TEST_KEY", "NTS_LIVE_TEST_SECRET"
SYM = "BTC/USDT"
# a strategy that trades every few bars, market entries, no slippage (see the module docstring)
SETS = ["strategy.center=0.3", "strategy.deadband=0", "strategy.limit_confidence=1", "execution.slippage_bps=0",
        f"broker.api_key_env={KEY_ENV}", f"broker.secret_env={SECRET_ENV}"]
BARRIERS = {"profit": 0.006, "stop": 0.004}


def ms(t: pd.Timestamp) -> int:
    return int(t.value // 1_000_000)


def bar_of(ts: int) -> int:
    return ts // TF_MS * TF_MS


@pytest.fixture(autouse=True)
def _keys(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv(SECRET_ENV, SECRET)


@pytest.fixture(scope="module")
def warm(fast_bundle) -> int:
    return warmup_bars_for(load_bundle(fast_bundle), load_config(None, SETS))


def make_cfg(tmp_path: Path, *extra: str):
    return load_config(None, [*SETS, f"risk.kill_switch_file={tmp_path / 'KILL'}", *extra])


def calm_frame(warm: int, n: int, seed: int = 5) -> pd.DataFrame:
    """Bars whose ranges are small next to the barriers (difference 1 cannot arise)."""
    return synthetic_ohlcv(warm + n + 20, seed=seed, start="2024-03-01", vol=0.0012)


def venue(frame: pd.DataFrame, start: pd.Timestamp, **kwargs) -> ReplayExchange:
    return ReplayExchange(frame, start=start, api_key=KEY, api_secret=SECRET, **kwargs)


def client_for(ex: ReplayExchange, timeout_ms: int = 5000, keys: bool = True,
               recv_window_ms: int | None = None) -> ccxt.Exchange:
    c = make_exchange("binance", url=ex.url, timeout_ms=timeout_ms, api_key_env=KEY_ENV if keys else None,
                      secret_env=SECRET_ENV if keys else None)
    c.enableRateLimit = False  # 127.0.0.1 only
    if recv_window_ms is not None:
        c.options["recvWindow"] = recv_window_ms
    return c


def store_for(ex: ReplayExchange, **kwargs) -> CCXTStore:
    return CCXTStore(exchange=client_for(ex, **kwargs), sleep=lambda s: None, backoff_s=0.0)


def run_live(bundle_dir, cfg, state, ex, stop_ms: int | None = None, store: CCXTStore | None = None,
             cls: type = LiveSession, watch=None, **kwargs):
    """A session in this process whose feed waits step the replay one bar; stops once the bar
    ``stop_ms`` is journaled (or by ``max_bars`` / the kill switch); ``watch(bar)`` runs
    after each journaled bar."""
    lines: list[str] = []
    extra = {"acknowledged": True} if cls is LiveSession else {}
    kwargs.setdefault("strategy_kwargs", dict(BARRIERS))
    sess = cls.create(cfg, bundle_dir, state, store=store or store_for(ex), sleep=lambda s: ex.advance(bars=1),
                      install_signals=False, emit=lines.append, **extra, **kwargs)

    def on_bar(bar, fills):
        if watch is not None:
            watch(bar)
        if stop_ms is not None and bar.ms >= stop_ms:
            sess.stop_event.set()

    sess.on_bar = on_bar
    res = sess.run()
    res.lines = lines  # type: ignore[attr-defined]
    return res


def view(state):
    with Journal.open_readonly(state) as j:
        roles = {i.client_id: i.role for i in j.intents()}
        bars = [c for c in j.bars() if not ((c.strategy_state or {}).get("session") or {}).get("warmup")]
        return {"fills": j.fills(), "bars": bars, "intents": j.intents(), "summary": j.summary(), "roles": roles,
                "events": j.events()}


def mutations(ex: ReplayExchange, since: int = 0) -> list:
    """Requests that could change the account: every POST and DELETE in the exchange's log."""
    return [r for r in ex.requests[since:] if r.method in ("POST", "DELETE")]


def sent_ids(ex: ReplayExchange) -> list[str]:
    """Client ids of every order / order list the exchange accepted."""
    out = []
    for r in ex.requests:
        if r.method != "POST" or r.outcome not in ("200", "fault:drop_after"):
            continue
        if "unsent 4" in r.note:
            continue
        out.append(r.params.get("newClientOrderId") or r.params.get("listClientOrderId"))
    return out


def assert_consistent(ex: ReplayExchange, state: Path) -> None:
    """No lost or doubled orders or fills: every exchange order is a journaled intent, sent once;
    the journal's fills are the exchange's trades; a restart now would reconcile cleanly."""
    with Journal.open_readonly(state) as j:
        intents = {i.client_id: i for i in j.intents()}
        fills = j.fills()
        cp = j.last_checkpoint()
        with ex._state:
            orders = list(ex.orders.values())
            trades = list(ex.trades)
        cids = [o.client_order_id for o in orders]
        assert len(cids) == len(set(cids)), "an order was placed twice"
        assert set(cids) <= set(intents), "an order on the exchange the journal does not know"
        for o in orders:
            assert intents[o.client_order_id].exchange_order_id in (str(o.order_id), None)
        sent = [c for c in sent_ids(ex)]
        assert len(sent) == len(set(sent)), "a client id was sent twice"
        got = sorted((int(f.trade_id), f.side, f.amount, f.price) for f in fills)
        want = sorted((t.trade_id, "buy" if t.is_buyer else "sell", float(t.qty), float(t.price)) for t in trades)
        assert got == want and all(f.duplicates == 0 for f in fills)
        ledger = Ledger.from_dict(cp.strategy_state["session"]["broker"])
        again = reconcile(store_for(ex), j, SYM, ledger, checkpoint_recorded=cp.recorded_at, apply=False)
        assert again.report.ok, again.report.lines()


# --------------------------------------------------------------------------- the OCO route

def test_oco_order_list_on_the_replay_exchange():
    frame = synthetic_ohlcv(200, seed=3, start="2024-02-01")
    p = float(frame["open"].iloc[100])
    # bar 101 reaches both legs of a list placed in bar 100; bar 103 gaps through the take profit
    frame.iloc[101] = [p, p * 1.02, p * 0.98, p, 10.0]
    frame.iloc[102] = [p, p * 1.001, p * 0.999, p, 10.0]
    frame.iloc[103] = [p * 1.015, p * 1.02, p * 0.98, p, 10.0]
    with venue(frame, frame.index[100] + pd.Timedelta("1min")) as ex:
        c = client_for(ex)
        c.load_markets()
        c.create_order(SYM, "market", "buy", 0.3, None, {"clientOrderId": "buy-1"})
        held = c.fetch_balance()["BTC"]["total"]
        assert held == pytest.approx(0.3 * 0.999)  # the buyer's fee is paid in BTC

        def oco(tag, tp, sl, **over):
            params = {"symbol": "BTCUSDT", "side": "SELL", "quantity": c.amount_to_precision(SYM, 0.1),
                      "aboveType": "LIMIT_MAKER", "abovePrice": c.price_to_precision(SYM, tp),
                      "belowType": "STOP_LOSS", "belowStopPrice": c.price_to_precision(SYM, sl),
                      "listClientOrderId": f"L{tag}", "aboveClientOrderId": f"t{tag}", "belowClientOrderId": f"s{tag}"}
            return c.privatePostOrderListOco({**params, **over})

        with pytest.raises(ccxt.InvalidOrder, match="relationship of the prices"):
            oco(0, p * 0.995, p * 0.99)  # take profit below the last price
        with pytest.raises(ccxt.BadRequest, match="Invalid orderType"):
            oco(0, p * 1.01, p * 0.99, aboveType="STOP_LOSS", aboveStopPrice="1.00")
        r = oco(1, p * 1.01, p * 0.99)
        assert r["contingencyType"] == "OCO" and r["listStatusType"] == "EXEC_STARTED"
        legs = r["orderReports"]
        assert [x["type"] for x in legs] == ["STOP_LOSS", "LIMIT_MAKER"] and legs[0]["orderId"] < legs[1]["orderId"]
        opened = c.fetch_open_orders(SYM)
        assert sorted(o["clientOrderId"] for o in opened) == ["s1", "t1"]
        assert {o["info"]["orderListId"] for o in opened} == {r["orderListId"]}
        bal = c.fetch_balance()["BTC"]
        assert bal["used"] == pytest.approx(0.1)  # ONE reservation for both legs
        assert c.privateGetOrderList({"origClientOrderId": "L1"})["listOrderStatus"] == "EXECUTING"
        # canceling one leg cancels the list and frees the reservation
        c.cancel_order(legs[1]["orderId"], SYM)
        assert [c.fetch_order(None, SYM, {"origClientOrderId": x})["status"] for x in ("s1", "t1")] == \
            ["canceled", "canceled"]
        assert c.fetch_balance()["BTC"]["used"] == 0
        with pytest.raises(ccxt.OrderNotFound):
            c.privateDeleteOrderList({"symbol": "BTCUSDT", "listClientOrderId": "L1"})  # already done: -2011
        with pytest.raises(ccxt.OrderNotFound):
            c.privateGetOrderList({"origClientOrderId": "nope"})  # -2013
        # bar 101 reaches both legs: the stop (created first) triggers, the take profit expires
        oco(2, p * 1.01, p * 0.99)
        ex.advance(bars=2)  # bar 101 closes (its range is matched), bar 102 opens
        s2, t2 = (c.fetch_order(None, SYM, {"origClientOrderId": x}) for x in ("s2", "t2"))
        assert (s2["status"], t2["status"]) == ("closed", "expired")
        assert s2["average"] == pytest.approx(float(c.price_to_precision(SYM, p * 0.99)))
        # bar 103 opens through the take profit: it fills at the open, the stop expires
        oco(3, p * 1.01, p * 0.99)
        ex.advance(bars=1)
        s3, t3 = (c.fetch_order(None, SYM, {"origClientOrderId": x}) for x in ("s3", "t3"))
        assert (s3["status"], t3["status"]) == ("expired", "closed")
        assert t3["average"] == pytest.approx(p * 1.015, rel=1e-9)
        trades = c.fetch_my_trades(SYM, params={"fromId": 1})
        assert [t["info"]["orderListId"] for t in trades] == [-1, 2, 3]
        assert c.fetch_balance()["BTC"]["total"] == pytest.approx(held - 0.2)
        assert c.privateGetOpenOrderList() == []


# --------------------------------------------------------------------------- live == paper

def both_engines(fast_bundle, cfg, tmp_path, frame, s, e, **kwargs):
    """The same bars through a live and a paper session (each on its own replay exchange);
    the live run also records, after every bar, the client ids open on the exchange."""
    out = {}
    for name, cls in (("live", LiveSession), ("paper", PaperSession)):
        state = tmp_path / f"{name}.db"
        with venue(frame, s + pd.Timedelta("1min")) as ex:
            seen: list[list[str]] = []
            watch = (lambda bar: seen.append([o.client_order_id for o in ex.open_orders()])) \
                if cls is LiveSession else None
            res = run_live(fast_bundle, cfg, state, ex, stop_ms=ms(e), cls=cls, watch=watch, **kwargs)
            out[name] = view(state) | {"res": res, "open_orders": ex.open_orders(), "open_per_bar": seen}
            if cls is LiveSession:
                assert_consistent(ex, state)
    return out["live"], out["paper"]


def fills_of(v, last_bar: int | None = None):
    """(bar, side, role, price, amount, fee, fee currency) per fill, up to ``last_bar``."""
    return [(bar_of(f.ts), f.side, v["roles"][f.client_id], f.price, f.amount, f.fee, f.fee_currency)
            for f in v["fills"] if last_bar is None or bar_of(f.ts) <= last_bar]


@pytest.mark.timeout(240)
def test_live_trades_match_paper_on_the_same_bars(tmp_path, fast_bundle, warm):
    cfg = make_cfg(tmp_path)
    frame = calm_frame(warm, 300)
    s, e = frame.index[warm + 5], frame.index[warm + 304]
    live, paper = both_engines(fast_bundle, cfg, tmp_path, frame, s, e)
    lf, pf = fills_of(live, ms(e)), fills_of(paper)
    roles = [f[2] for f in pf]
    assert len(pf) > 60 and roles.count("entry") > 30
    assert roles.count("stop_loss") >= 3 and roles.count("take_profit") >= 2 and roles.count("exit") >= 10
    assert [f[:3] for f in lf] == [f[:3] for f in pf]
    step, tick, fee = 1e-5, 0.01, 0.001
    held = 0.0
    for a, b in zip(lf, pf):
        assert a[3] == pytest.approx(b[3], rel=1e-9 if a[2] in ("entry", "exit") else 1e-6)
        assert a[4] == pytest.approx(b[4], rel=2e-3)
        assert round(a[4] / step, 6) == round(a[4] / step)  # whole lot steps
        if a[1] == "buy":
            assert a[6] == "BTC" and a[5] == pytest.approx(a[4] * fee)  # difference 3: the fee in base
            held = a[4] - a[5]
        else:
            assert a[6] == "USDT" and a[4] == pytest.approx(held, abs=step)  # sells what the fee left
    intents = [i for i in live["intents"] if i.role in ("stop_loss", "take_profit")]
    for i in intents:  # difference 4: exchange prices on the tick
        level = i.stop_price if i.role == "stop_loss" else i.price
        assert round(level / tick, 6) == round(level / tick)
        assert i.extra["oco"].endswith(".oco")
    assert len(live["bars"]) == len(paper["bars"]) == 300
    np.testing.assert_allclose([c.equity for c in live["bars"]], [c.equity for c in paper["bars"]], rtol=1e-4)
    res = live["res"]
    assert res.broker["rejected"] == 0 and res.broker["skipped"] == 0 and res.broker["oco_lists"] >= 30
    assert res.broker["sent"] == len({i.extra.get("oco", i.client_id) for i in live["intents"]})
    assert live["summary"]["duplicate_fills_ignored"] == 0
    # exits left behind: the only orders still open are the legs of the position still held
    legs = {o.client_order_id for o in live["open_orders"]}
    last = live["bars"][-1]
    assert (len(legs) == 2) == (last.position > 0) and all(c.split("-")[-1][0] in "st" for c in legs)
    closed_lists = [i for i in intents if i.status in ("closed", "expired", "canceled")]
    assert len(closed_lists) >= len(intents) - 2
    # bracket legs left behind: after every bar, what is open is at most the one OCO list of
    # the newest entry (a stop and a take profit of one decision bar), never an older trade's
    for open_ids in live["open_per_bar"]:
        assert len(open_ids) in (0, 2) and len({c.split("-")[2] for c in open_ids}) <= 1, open_ids
    assert sum(1 for x in live["open_per_bar"] if x) > 100

@pytest.mark.timeout(180)
def test_difference_exits_on_the_entry_bar(tmp_path, fast_bundle, warm):
    """Difference 1: on wide bars paper stops out inside the entry bar, live never does."""
    cfg = make_cfg(tmp_path)
    frame = synthetic_ohlcv(warm + 80, seed=21, start="2024-03-01", vol=0.004)
    s, e = frame.index[warm + 5], frame.index[warm + 64]
    live, paper = both_engines(fast_bundle, cfg, tmp_path, frame, s, e)

    def exit_bars(v):
        out, entry = [], None
        for bar, side, role, *_ in fills_of(v, ms(e)):
            if side == "buy":
                entry = bar
            else:
                out.append((entry, bar, role))
        return out

    pe, le = exit_bars(paper), exit_bars(live)
    same_bar = [x for x in pe if x[0] == x[1]]
    assert same_bar and all(r in ("stop_loss", "take_profit") for _, _, r in same_bar)
    assert le and all(entry < exit_ for entry, exit_, _ in le)
    first = pe.index(same_bar[0])
    assert pe[:first] == le[:first]  # identical until the first entry-bar exit
    assert le[first][1] > pe[first][1]


@pytest.mark.timeout(180)
def test_difference_limit_entries(tmp_path, fast_bundle, warm):
    """Difference 2: a limit entry that paper fills inside the next bar's range rests live and
    can only fill from the bar after (here: at that bar's open, or not at all)."""
    cfg = make_cfg(tmp_path, "strategy.limit_confidence=0")  # every entry a limit at the close
    frame = calm_frame(warm, 80)
    s, e = frame.index[warm + 5], frame.index[warm + 84]
    live, paper = both_engines(fast_bundle, cfg, tmp_path, frame, s, e)
    o, lo = frame["open"], frame["low"]
    pos = {ms(t): k for k, t in enumerate(frame.index)}
    paper_mid_bar = 0
    for f in paper["fills"]:
        intent = next(i for i in paper["intents"] if i.client_id == f.client_id)
        if intent.role != "entry":
            continue
        k = pos[intent.bar_time] + 1
        assert bar_of(f.ts) == ms(frame.index[k])  # paper: always the bar after the decision
        if o.iloc[k] > intent.price:
            paper_mid_bar += 1
            assert lo.iloc[k] <= intent.price and f.price == pytest.approx(intent.price)
    entries = [i for i in live["intents"] if i.role == "entry"]
    fills = {f.client_id: f for f in live["fills"]}
    rested = 0
    for i in entries:
        k = pos[i.bar_time] + 1
        f = fills.get(i.client_id)
        if o.iloc[k] <= i.price:  # marketable when placed: filled at once at the open
            assert f is not None and f.price == pytest.approx(o.iloc[k], rel=1e-9) and bar_of(f.ts) == ms(frame.index[k])
        else:
            rested += 1
            if f is None:
                assert i.status == "canceled"  # the strategy's limit_tif_bars cancel
            else:  # filled at the next bar's open, racing the cancel
                assert bar_of(f.ts) == ms(frame.index[k + 1]) and f.price == pytest.approx(o.iloc[k + 1], rel=1e-9)
    assert paper_mid_bar >= 1 and rested >= 1


@pytest.mark.timeout(120)
def test_difference_slippage(tmp_path, fast_bundle, warm):
    """Difference 5: the simulated broker slips a market entry by slippage_bps; the exchange fills
    at the print (the first trade of both, on the same bar)."""
    cfg = make_cfg(tmp_path)
    frame = calm_frame(warm, 40)
    s, e = frame.index[warm + 5], frame.index[warm + 24]
    with venue(frame, s + pd.Timedelta("1min")) as ex:
        run_live(fast_bundle, cfg, tmp_path / "l.db", ex, stop_ms=ms(e))
    first = view(tmp_path / "l.db")["fills"][0]
    slipped = load_config(None, [*SETS[:3], f"risk.kill_switch_file={tmp_path / 'KILL'}", "execution.slippage_bps=2"])
    bt_res = run_backtest(load_bundle(fast_bundle), frame, slipped, start=s, end=e + TF, progress=False,
                          allow_in_sample=True, strategy_kwargs=dict(BARRIERS))
    b = bt_res.fills.iloc[0]
    assert ms(b.time) == bar_of(first.ts) and b.side == first.side == "buy"
    assert b.price == pytest.approx(first.price * 1.0002, rel=1e-9)


# --------------------------------------------------------------------------- faults

@pytest.mark.timeout(180)
def test_drop_after_on_an_entry_and_an_oco_places_exactly_one_each(tmp_path, fast_bundle, warm):
    """The connection drops after the exchange accepted the entry (and, later, an OCO list):
    the broker looks each up by client id and finds it; nothing is sent twice."""
    cfg = make_cfg(tmp_path)
    frame = calm_frame(warm, 60)
    s, e = frame.index[warm + 5], frame.index[warm + 44]
    with venue(frame, s + pd.Timedelta("1min")) as ex:
        ex.inject("drop_after", path="/api/v3/order", method="POST")
        ex.inject("drop_after", path="/api/v3/orderList/oco", method="POST", skip=1)
        res = run_live(fast_bundle, cfg, tmp_path / "d.db", ex, stop_ms=ms(e))
        posts = ex.requests_to("/api/v3/order")
        lists = ex.requests_to("/api/v3/orderList/oco")
        first = next(r for r in posts if r.method == "POST")
        dropped_list = next(r for r in lists if r.outcome == "fault:drop_after")
        assert first.outcome == "fault:drop_after"
        cid = first.params["newClientOrderId"]
        assert [r.params.get("newClientOrderId") for r in posts if r.method == "POST"].count(cid) == 1
        assert [o.client_order_id for o in ex.orders.values()].count(cid) == 1
        lcid = dropped_list.params["listClientOrderId"]
        assert [r.params["listClientOrderId"] for r in lists].count(lcid) == 1
        assert len(ex.order_lists) == res.broker["oco_lists"]
        assert [r.outcome for r in ex.requests_to("/api/v3/orderList")][:1] == ["200"]  # the lookup found it
        assert_consistent(ex, tmp_path / "d.db")
    v = view(tmp_path / "d.db")
    entry = next(i for i in v["intents"] if i.client_id == cid)
    assert entry.status == "closed" and entry.exchange_order_id is not None
    assert sum(1 for f in v["fills"] if f.client_id == cid) == 1
    assert res.bars == 40 and res.store["retries"] >= 2


@pytest.mark.timeout(240)
def test_429_5xx_and_timeouts_make_no_duplicates_and_no_crash(tmp_path, fast_bundle, warm):
    cfg = make_cfg(tmp_path)
    frame = calm_frame(warm, 70)
    s, e = frame.index[warm + 5], frame.index[warm + 54]
    with venue(frame, s + pd.Timedelta("1min")) as ex:
        run_live(fast_bundle, cfg, tmp_path / "clean.db", ex, stop_ms=ms(e))
    clean = view(tmp_path / "clean.db")
    with venue(frame, s + pd.Timedelta("1min")) as ex:
        ex.inject("status", status=429, retry_after=0, times=3, path="/api/v3/order", method="POST")
        ex.inject("status", status=503, times=2, path="/api/v3/orderList/oco", method="POST", skip=1)
        ex.inject("status", status=502, times=2, path="/api/v3/myTrades", skip=5)
        ex.inject("status", status=500, times=1, path="/api/v3/account", skip=3)
        ex.inject("slow", delay_s=1.5, times=1, path="/api/v3/order", method="POST", skip=3)
        ex.inject("slow", delay_s=1.5, times=1, path="/api/v3/openOrders", skip=4)
        ex.inject("drop", times=1, path="/api/v3/orderList", method="DELETE")
        ex.inject("status", status=429, retry_after=0, times=4, path="/api/v3/klines", skip=20)
        # A lost answer is waited out for real here: the store's in-flight window (recvWindow
        # + 1 s) must pass on the venue's clock, or the slow order (answered after 1.5 s) could
        # still execute after the resend. A 1.2 s recvWindow keeps the waits short.
        store = CCXTStore(exchange=client_for(ex, timeout_ms=1000, recv_window_ms=1200), backoff_s=0.0,
                          inflight_step_s=0.3)
        res = run_live(fast_bundle, cfg, tmp_path / "faulty.db", ex, stop_ms=ms(e), store=store)
        outcomes = [r.outcome for r in ex.requests]
        assert not ex.faults, "every injected fault fired"
        for kind in ("fault:429", "fault:503", "fault:502", "fault:500", "fault:slow", "fault:drop"):
            assert kind in outcomes
        assert_consistent(ex, tmp_path / "faulty.db")
    got = view(tmp_path / "faulty.db")
    assert res.bars == 50 and res.store["retries"] >= 10
    key = lambda f: (bar_of(f.ts), f.side, f.price, f.amount)
    assert [key(f) for f in got["fills"]] == [key(f) for f in clean["fills"]] and len(clean["fills"]) > 10
    assert [(i.role, i.status) for i in got["intents"]] == [(i.role, i.status) for i in clean["intents"]]


@pytest.mark.timeout(180)
def test_partial_fills(tmp_path, fast_bundle, warm):
    """Limit entries that fill in pieces (one per bar): each piece is its own journaled fill,
    the order completes when the exchange says it is done, and the exits (placed then) cover
    what is held: the pieces less the base fee (plus earlier dust), to the lot step."""
    cfg = make_cfg(tmp_path, "strategy.limit_confidence=0", "strategy.limit_tif_bars=3")
    frame = calm_frame(warm, 90, seed=8)
    s, e = frame.index[warm + 5], frame.index[warm + 84]
    with venue(frame, s + pd.Timedelta("1min")) as ex:
        ex.inject("partial", pieces=3, times=6)
        res = run_live(fast_bundle, cfg, tmp_path / "p.db", ex, stop_ms=ms(e))
        assert_consistent(ex, tmp_path / "p.db")
        legs = {o.client_order_id: o for o in ex.orders.values()}
    v = view(tmp_path / "p.db")
    by_order: dict[str, list] = {}
    for f in v["fills"]:
        by_order.setdefault(f.client_id, []).append(f)
    intents = {i.client_id: i for i in v["intents"]}
    pieces = [cid for cid, fs in by_order.items() if len(fs) > 1 and v["roles"][cid] == "entry"]
    done = [cid for cid in pieces if intents[cid].status != "open"]  # the last one may still be working
    assert len(done) >= 2 and len(pieces) - len(done) <= 1, "entries filled in several pieces"
    for cid in pieces:
        intent = intents[cid]
        assert intent.filled == pytest.approx(sum(f.amount for f in by_order[cid]))
    for cid in done:
        interim_cids = [i.client_id for i in v["intents"] if i.extra.get("interim") == cid]
        sold = sum(f.amount for c in interim_cids for f in by_order.get(c, []))
        gross = sum(f.amount - f.fee for f in by_order[cid])
        held = gross - sold
        intent = intents[cid]
        assert intent.status in ("closed", "canceled")  # a partly filled entry canceled at its tif keeps its fills
        exits = [i for i in v["intents"] if i.extra.get("oco") and i.bar_time == intent.bar_time
                 and not i.extra.get("interim")]
        interim = [i for i in v["intents"] if i.extra.get("interim") == cid]
        assert all(i.amount <= gross + 2e-5 for i in interim)  # the filled part's exits, before completion
        if held * float(legs[cid].price) < 5.0:
            continue  # an exit of the filled part sold it all: nothing left to protect
        assert {i.role for i in exits} == {"stop_loss", "take_profit"}
        # what the pieces left after the base fee, plus the dust of earlier trades, to the lot step
        assert all(i.amount == pytest.approx(held, abs=2e-5) for i in exits)
        assert all(float(legs[i.client_id].orig_qty) == pytest.approx(i.amount) for i in exits)
    assert res.broker["rejected"] == 0 and v["summary"]["duplicate_fills_ignored"] == 0


# --------------------------------------------------------------------------- restarts

def strip_session(cid: str) -> str:
    return cid.split("-", 2)[2]  # nts-<session>-<bar><role><attempt>: the part that repeats across sessions


@pytest.mark.timeout(300)
def test_crash_points_and_restarts_equal_an_uninterrupted_run(tmp_path, fast_bundle, warm, monkeypatch):
    """Three ways to die, each followed by a restart in this process: a crash after a bar's
    orders were sent but before the bar was journaled (they are adopted by client id, not
    sent again), a crash between an accepted entry and its ack (reconciliation: "ack lost"),
    a stop with a position whose exit fills while the session is down (reconciliation: a fill
    while down, applied on its bar). The final journal equals an uninterrupted run's."""
    cfg = make_cfg(tmp_path)
    frame = calm_frame(warm, 160)
    s, e = frame.index[warm + 5], frame.index[warm + 154]
    with venue(frame, s + pd.Timedelta("1min")) as ex:
        run_live(fast_bundle, cfg, tmp_path / "ref.db", ex, stop_ms=ms(e))
        ref_counts = (len(ex.orders), len(ex.trades), len(ex.order_lists))
    ref = view(tmp_path / "ref.db")
    entries = [i.bar_time for i in ref["intents"] if i.role == "entry"]
    t1, t2 = entries[2], entries[6]
    exit_bar = next(bar_of(f.ts) for f in ref["fills"] if ref["roles"][f.client_id] in ("stop_loss", "take_profit")
                    and bar_of(f.ts) > t2 + 3 * TF_MS)
    state = tmp_path / "rs.db"
    reports = []
    with venue(frame, s + pd.Timedelta("1min")) as ex:
        real_bar, real_ack = Journal.record_bar, Journal.record_ack

        def bar_then_die(self, bar_time, *a, **k):
            if bar_time == t1:
                raise RuntimeError("simulated crash before the bar was journaled")
            return real_bar(self, bar_time, *a, **k)

        monkeypatch.setattr(Journal, "record_bar", bar_then_die)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_live(fast_bundle, cfg, state, ex, max_bars=200)  # max_bars: never past the data
        monkeypatch.setattr(Journal, "record_bar", real_bar)
        posted_before = len(sent_ids(ex))
        with Journal.open_readonly(state) as j:
            sid = j.session.session_id
            assert j.last_bar() == t1 - TF_MS and any(i.bar_time == t1 for i in j.intents())
        from sessions.journal import deterministic_client_id
        lost = deterministic_client_id(sid, t2, "entry")

        def ack_then_die(self, client_id, *a, **k):
            if client_id == lost:
                raise RuntimeError("simulated crash before the ack was journaled")
            return real_ack(self, client_id, *a, **k)

        monkeypatch.setattr(Journal, "record_ack", ack_then_die)
        with pytest.raises(RuntimeError, match="before the ack"):
            run_live(fast_bundle, cfg, state, ex, max_bars=200)
        monkeypatch.setattr(Journal, "record_ack", real_ack)
        assert sent_ids(ex)[posted_before:][:1] != [], "the second run sent orders"
        with Journal.open_readonly(state) as j:
            assert j.intent(lost).status == "intent" and any(o.client_order_id == lost for o in ex.orders.values())
        r = run_live(fast_bundle, cfg, state, ex, stop_ms=exit_bar - 2 * TF_MS)
        reports.append(r.reconcile)
        with Journal.open_readonly(state) as j:
            assert j.last_checkpoint().position > 0  # stopped mid-position
        ex.advance(bars=2)  # down while the exit fills (back before a decision is stale)
        r = run_live(fast_bundle, cfg, state, ex, stop_ms=ms(e))
        reports.append(r.reconcile)
        assert (len(ex.orders), len(ex.trades), len(ex.order_lists)) == ref_counts
        assert_consistent(ex, state)
    assert any("ack lost" in line and lost in line for line in reports[0])
    assert any("while the session was down" in line for line in reports[1])
    got = view(state)
    key = lambda f: (f.ts, f.side, f.price, f.amount, f.fee)
    assert [key(f) for f in got["fills"]] == [key(f) for f in ref["fills"]] and len(ref["fills"]) > 20
    ikey = lambda i: (strip_session(i.client_id), i.role, i.side, i.amount, i.status)
    assert [ikey(i) for i in got["intents"]] == [ikey(i) for i in ref["intents"]]
    assert [c.bar_time for c in got["bars"]] == [c.bar_time for c in ref["bars"]]
    np.testing.assert_allclose([c.equity for c in got["bars"]], [c.equity for c in ref["bars"]], rtol=1e-12)
    assert got["summary"]["duplicate_fills_ignored"] == 0


@pytest.mark.timeout(180)
def test_an_order_journaled_but_never_sent_is_sent_on_restart(tmp_path, fast_bundle, warm, monkeypatch):
    """The process dies between journaling an entry and sending it: the restart finds no such
    order on the exchange (journaled as canceled: never reached), decides the bar again and
    sends the entry under the next attempt's client id -- once."""
    cfg = make_cfg(tmp_path)
    frame = calm_frame(warm, 40)
    s = frame.index[warm + 5]
    state = tmp_path / "ns.db"
    real_submit = CCXTStore.submit
    entries = []

    def die_before_sending(self, symbol, order_type, side, amount, price, client_id, params=None, **kw):
        if client_id.endswith("-e0"):
            entries.append(client_id)
            if len(entries) == 2:  # the second entry: journaled, never sent
                raise RuntimeError("simulated crash after the intent, before the send")
        return real_submit(self, symbol, order_type, side, amount, price, client_id, params, **kw)

    with venue(frame, s + pd.Timedelta("1min")) as ex:
        monkeypatch.setattr(CCXTStore, "submit", die_before_sending)
        with pytest.raises(RuntimeError, match="before the send"):
            run_live(fast_bundle, cfg, state, ex, max_bars=30)
        monkeypatch.setattr(CCXTStore, "submit", real_submit)
        with Journal.open_readonly(state) as j:
            lost = [i for i in j.intents() if i.status == "intent"]
        assert len(lost) == 1 and lost[0].role == "entry"
        assert lost[0].client_id not in sent_ids(ex)
        again = run_live(fast_bundle, cfg, state, ex, max_bars=5)
        assert_consistent(ex, state)
    assert any("never reached the exchange" in line and lost[0].client_id in line for line in again.reconcile)
    v = view(state)
    first, second = (next(i for i in v["intents"] if i.client_id == lost[0].client_id[:-1] + a) for a in "01")
    assert first.status == "canceled" and first.cancel_reason.startswith("never reached")
    assert second.status == "closed" and second.bar_time == first.bar_time
    fill = next(f for f in v["fills"] if f.client_id == second.client_id)
    assert bar_of(fill.ts) == first.bar_time + TF_MS  # sent at once: filled on the bar after the decision


@pytest.mark.timeout(240)
def test_entries_decided_on_stale_bars_are_not_sent(tmp_path, fast_bundle, warm):
    """Down from 23:45 to 01:16 while flat, with a strategy that enters from 00:00 UTC on
    (NightOnly): the restarted session decides the backfilled bars again; entries decided on
    bars that closed more than a bar before the exchange's clock are not sent (journaled as
    skipped: stale) -- the price they were sized for is gone -- and the first entry decided on
    a current bar is sent."""
    cfg = make_cfg(tmp_path)
    frame = calm_frame(warm, 90)
    s = frame.index[warm + 5]
    night = frame.index[(frame.index > s) & (frame.index.hour == 0) & (frame.index.minute == 0)][0]
    state = tmp_path / "stale.db"
    with venue(frame, s + pd.Timedelta("1min")) as ex:
        first = run_live(fast_bundle, cfg, state, ex, stop_ms=ms(night - 2 * TF), strategy="night_only")
        assert first.bars > 5 and view(state)["intents"] == []  # flat: nothing traded before 00:00
        ex.advance(bars=6)  # the clock is at 01:16: bars 23:45 .. 00:45 are backfilled on restart
        again = run_live(fast_bundle, cfg, state, ex, max_bars=20, strategy="night_only")
        assert_consistent(ex, state)
    v = view(state)
    stale = [i for i in v["intents"] if (i.cancel_reason or "").startswith("skipped: stale")]
    assert stale and all(i.role == "entry" and ms(night) <= i.bar_time <= ms(night + 3 * TF) for i in stale)
    sent = [i for i in v["intents"] if i.role == "entry" and i.status in ("open", "closed")]
    assert sent and sent[0].bar_time == ms(night + 4 * TF)  # 01:00: decided on the bar that just closed
    assert again.broker["skipped"] == len(stale)


# --------------------------------------------------------------------------- reconciliation

@pytest.mark.timeout(240)
def test_refuses_to_start_when_the_journal_disagrees_and_sends_nothing(tmp_path, fast_bundle, warm):
    cfg = make_cfg(tmp_path)
    frame = calm_frame(warm, 60)
    s = frame.index[warm + 5]
    state = tmp_path / "r.db"

    def refused(ex, match: str) -> list[str]:
        n = len(ex.requests)
        before = view(state)
        lines: list[str] = []
        with pytest.raises(SessionError, match="disagrees with the exchange"):
            opts = LiveOptions(install_signals=False, acknowledged=True, strategy_kwargs=dict(BARRIERS))
            sess = LiveSession(cfg, fast_bundle, state, opts, store=store_for(ex), sleep=lambda x: ex.advance(bars=1),
                               emit=lines.append)
            sess.run()
        assert mutations(ex, n) == [], "a refused start sent something"
        after = view(state)
        assert (len(after["intents"]), len(after["fills"]), len(after["bars"])) == \
            (len(before["intents"]), len(before["fills"]), len(before["bars"]))
        assert any(match in line for line in lines if "UNEXPLAINED" in line), lines
        assert any("refusing to start" in line for line in lines)
        return lines

    with venue(frame, s + pd.Timedelta("1min")) as ex:
        run_live(fast_bundle, cfg, state, ex, stop_ms=ms(frame.index[warm + 12]))
        hand = client_for(ex)  # the operator's own client on the same account
        hand.load_markets()
        price = float(frame["close"].iloc[warm + 12])
        manual = hand.create_order(SYM, "limit", "buy", 0.001, round(price * 0.5, 2), {"clientOrderId": "manual-1"})
        refused(ex, "an open order the journal does not know: manual-1")
        hand.cancel_order(manual["id"], SYM)
        from decimal import Decimal
        with ex._state:
            ex._balances["USDT"][0] += Decimal(100)  # a deposit
        refused(ex, "a balance that moved: USDT")
        with ex._state:
            ex._balances["USDT"][0] -= Decimal(100)
        ok = run_live(fast_bundle, cfg, state, ex, max_bars=3)  # agreeing again: it trades
        assert ok.bars == 3 and any("journal and exchange agree" in line or "explained" in line for line in ok.lines)
        hand.create_order(SYM, "market", "buy", 0.001, None, {"clientOrderId": "manual-2"})
        refused(ex, "a fill of an order the journal does not know")  # a position it does not know
    # a new session on an account that already holds BTC
    with venue(frame, s + pd.Timedelta("1min"), balances={"BTC": 0.5}) as ex:
        with pytest.raises(SessionError, match="position the new journal does not know"):
            run_live(fast_bundle, cfg, tmp_path / "new.db", ex, max_bars=3)
        assert mutations(ex) == []


@pytest.mark.timeout(180)
def test_cli_refuses_without_the_flag_keys_or_agreement(tmp_path, fast_bundle, warm, monkeypatch):
    frame = calm_frame(warm, 60)
    state = tmp_path / "cli.db"
    kill = tmp_path / "KILL"
    sets = [a for kv in [*SETS, f"risk.kill_switch_file={kill}"] for a in ("--set", kv)]
    with venue(frame, frame.index[warm + 5] + pd.Timedelta("1min"), speed=20000) as ex:
        args = ["live", "--model", str(fast_bundle), "--exchange-url", ex.url, "--state", str(state),
                "--max-bars", "3", "--max-capital", "2000", *sets]

        def errors(output: str) -> list[str]:
            return [line for line in output.splitlines() if line.startswith("error:")]

        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2 and len(errors(r.output)) == 1 and "--i-understand-live-trading" in r.output
        assert ex.requests == [] and not state.exists()
        monkeypatch.delenv(KEY_ENV)
        r = CliRunner().invoke(cli, args + ["--i-understand-live-trading"])
        assert r.exit_code == 2 and len(errors(r.output)) == 1
        assert f"environment variable {KEY_ENV} is not set" in r.output
        assert ex.requests == [] and not state.exists()
        monkeypatch.setenv(KEY_ENV, KEY)
        r = CliRunner().invoke(cli, args + ["--i-understand-live-trading"])
        assert r.exit_code == 0, r.output
        out = r.output
        for item in ("pre-live checklist", f"API keys     from environment variables {KEY_ENV} / {SECRET_ENV}",
                     f"exchange     binance at {ex.url}", "symbol       BTC/USDT 15m", "max capital  2,000.00 USDT",
                     "breakers     drawdown > 20%", f"kill switch  create {kill}", f"journal      {state}",
                     "new live session", "held back (max capital 2,000.00)", "stopped (max_bars) after 3 bars"):
            assert item in out, item
        assert KEY not in out and SECRET not in out
        # a journal that disagrees with the exchange: one line, the report, nothing sent
        hand = client_for(ex)
        hand.create_order(SYM, "limit", "buy", 0.001, round(float(frame["close"].iloc[-1]) * 0.5, 2),
                          {"clientOrderId": "manual-9"})
        n = len(ex.requests)
        r = CliRunner().invoke(cli, args + ["--i-understand-live-trading"])
        assert r.exit_code == 2 and len(errors(r.output)) == 1 and "disagrees with the exchange" in r.output
        assert "UNEXPLAINED: an open order the journal does not know: manual-9" in r.output
        assert mutations(ex, n) == []
    r = CliRunner().invoke(cli, ["status", "--state", str(state)])
    assert r.exit_code == 0 and "live" in r.output


# --------------------------------------------------------------------------- failure modes

@pytest.mark.timeout(240)
def test_a_fill_racing_a_cancel(tmp_path, fast_bundle, warm, monkeypatch):
    """The time exit (decided on bar k+2) cancels the OCO exits while the stop fills. Twice:
    (a) bar k+3 opens through the stop, so the broker's poll already sees the fill when the
    strategy decides; (b) the stop fills in bar k+3's range while the cancel is on its way
    (the cancel answers -2011: the list is done). Both times the stop COMPLETES, the take
    profit is canceled with its list, the market sell decided from the stale position is not
    sent (skipped: nothing left to sell), exactly one sell closes the trade, and the session
    trades on."""
    from brokers.ccxt_broker import CCXTBroker

    cfg = make_cfg(tmp_path)
    kw = {"profit": 0.05, "stop": 0.05, "max_hold": 2}  # barriers out of reach: a time exit after 2 bars
    base = calm_frame(warm, 40)
    s = base.index[warm + 5]
    with venue(base, s + pd.Timedelta("1min")) as ex:
        run_live(fast_bundle, cfg, tmp_path / "dry.db", ex, max_bars=6, strategy_kwargs=kw)
    entry = next(i for i in view(tmp_path / "dry.db")["intents"] if i.role == "entry")
    k = int(base.index.get_loc(pd.Timestamp(entry.bar_time, unit="ms", tz="UTC")))
    stop = float(base["close"].iloc[k]) * 0.95
    o = float(base["open"].iloc[k + 3])
    cases = {
        "open": ([stop * 0.98, stop * 0.981, stop * 0.979, stop * 0.98, 10.0], stop * 0.98),
        "range": ([o, o * 1.001, stop * 0.99, o, 10.0], float(f"{stop:.2f}")),
    }
    real_delete = CCXTStore.cancel_oco
    for case, (row, price) in cases.items():
        frame = base.copy()
        frame.iloc[k + 3] = row
        state = tmp_path / f"race-{case}.db"
        with venue(frame, s + pd.Timedelta("1min")) as ex:
            if case == "range":
                def slow_cancel(self, symbol, list_cid, ex=ex):
                    ex.advance(bars=1)  # the market moves on while the cancel is on its way
                    return real_delete(self, symbol, list_cid)

                monkeypatch.setattr(CCXTStore, "cancel_oco", slow_cancel)
            res = run_live(fast_bundle, cfg, state, ex, max_bars=12, strategy_kwargs=kw)
            monkeypatch.setattr(CCXTStore, "cancel_oco", real_delete)
            assert_consistent(ex, state)
            deletes = [r for r in ex.requests_to("/api/v3/orderList") if r.method == "DELETE"]
        v = view(state)
        legs = {i.role: i for i in v["intents"] if i.bar_time == entry.bar_time and i.extra.get("oco")}
        assert legs["stop_loss"].status == "closed" and legs["take_profit"].status == "expired", case
        fill = next(f for f in v["fills"] if f.client_id == legs["stop_loss"].client_id)
        assert bar_of(fill.ts) == ms(frame.index[k + 3]) and fill.price == pytest.approx(price, rel=1e-8), case
        time_exit = next(i for i in v["intents"] if i.role == "exit" and i.bar_time == ms(frame.index[k + 2]))
        assert time_exit.status == "canceled" and time_exit.cancel_reason.startswith("skipped: amount"), case
        sells = [f for f in v["fills"] if f.side == "sell" and ms(frame.index[k]) < f.ts < ms(frame.index[k + 4])]
        assert len(sells) == 1, case
        assert any(i.role == "entry" and i.bar_time >= ms(frame.index[k + 3]) and i.status == "closed"
                   for i in v["intents"]), case  # flat again: the next entry went out
        if case == "open":  # seen by the poll before the decision: nothing to cancel on the exchange
            assert deletes == [] and res.broker["cancel_races"] == 0
            # the next entry's reference is the crash bar's close and the market is back above its
            # take profit: the OCO would be refused, the position is closed at market instead
            assert res.broker["market_exits"] == 1 and any(e["kind"] == "exit_at_market" for e in v["events"])
        else:  # the cancel itself meets the fill
            assert deletes[0].note.endswith("code -2011") and res.broker["cancel_races"] == 1
            assert any(e["kind"] == "cancel_race" for e in v["events"])


@pytest.mark.timeout(180)
def test_kill_switch_flattens_cancels_every_session_order_and_stays_halted(tmp_path, fast_bundle, warm):
    cfg = make_cfg(tmp_path)
    frame = calm_frame(warm, 60)
    s = frame.index[warm + 5]
    state = tmp_path / "kill.db"
    kill = tmp_path / "KILL"
    with venue(frame, s + pd.Timedelta("1min")) as ex:
        hand = client_for(ex)
        hand.load_markets()
        opts = LiveOptions(install_signals=False, acknowledged=True, max_bars=40, strategy_kwargs=dict(BARRIERS))
        sess = LiveSession(cfg, fast_bundle, state, opts, store=store_for(ex), sleep=lambda x: ex.advance(bars=1),
                           emit=lambda line: None)
        leftover = {}

        def on_bar(bar, fills):
            if sess.broker.getposition().size > 0 and not kill.exists():
                # an order of this session the broker does not track (left by an earlier process)
                prefix = f"nts-{sess.journal.session.session_id[:8]}-"
                price = round(float(frame["close"].iloc[warm + 5]) * 0.5, 2)
                leftover.update(hand.create_order(SYM, "limit", "buy", 0.001, price, {"clientOrderId": prefix + "zz"}))
                kill.touch()

        sess.on_bar = on_bar
        res = sess.run()
        assert res.stopped_by == "kill_switch" and res.halted and "kill_switch" in res.halted
        assert [o for o in ex.open_orders()] == []  # exits and the leftover: all canceled
        assert hand.fetch_order(leftover["id"], SYM)["status"] == "canceled"
        base = float(ex.balance("BTC")[0] + ex.balance("BTC")[1])
        assert base * float(frame["close"].iloc[-1]) < 5  # flat (dust below the minimum order)
        kill.unlink()
        n = len(ex.requests)
        again = run_live(fast_bundle, cfg, state, ex, max_bars=5)
        assert again.halted and any("HALTED since" in line for line in again.lines)
        assert mutations(ex, n) == []  # halted: nothing sent
    v = view(state)
    assert v["summary"]["halted"] and v["summary"]["position"] == 0
    assert any(e["kind"] == "orders_canceled" for e in v["events"])


@pytest.mark.timeout(180)
def test_max_capital_and_minimum_order_rules(tmp_path, fast_bundle, warm):
    """``--max-capital`` caps what the strategy sizes from; orders below the market's minimum
    notional (5 USDT) or amount (0.00001 BTC) are not sent: journaled as skipped."""
    cfg = make_cfg(tmp_path)
    frame = calm_frame(warm, 40)
    s = frame.index[warm + 5]
    results = {}
    for cap in (1000.0, 5.0, 0.2):
        state = tmp_path / f"cap{cap:g}.db"
        with venue(frame, s + pd.Timedelta("1min")) as ex:
            res = run_live(fast_bundle, cfg, state, ex, max_bars=10, max_capital=cap)
            results[cap] = (res, view(state), [r for r in ex.requests_to("/api/v3/order") if r.method == "POST"])
    res, v, posts = results[1000.0]
    first = v["fills"][0]
    assert first.side == "buy" and 100 < first.amount * first.price <= 0.95 * 1000 * 1.01
    assert v["bars"][0].equity == pytest.approx(1000.0, rel=1e-9)
    assert any("held back (max capital 1,000.00)" in line and "9,000.00" in line for line in res.lines)
    for cap, reason in ((5.0, "skipped: notional"), (0.2, "skipped: amount")):
        res, v, posts = results[cap]
        assert posts == [] and v["fills"] == [] and res.broker["skipped"] >= 5
        assert v["intents"] and all(i.status == "canceled" and i.cancel_reason.startswith(reason)
                                    for i in v["intents"])
        assert sum(e["kind"] == "order_skipped" for e in v["events"]) == len(v["intents"])


@pytest.mark.timeout(300)
def test_sigkill_mid_position_then_restart_loses_and_doubles_nothing(tmp_path, fast_bundle, warm):
    """`nts live` killed with SIGKILL 3 times while it holds a position (its OCO exits resting
    on the exchange), on an accelerated replay clock (a 15m bar every 1.8 s: slow enough that
    the session, throttled by ccxt's rate limiter, decides each bar well within the next one),
    restarted each
    time, finally stopped with SIGTERM: every restart reconciles (the exits are adopted, fills
    made while it was down are applied), every bar is journaled once, and no order or fill is
    lost or doubled (journal == exchange, each client id sent once)."""
    cfg_args = [*SETS, f"risk.kill_switch_file={tmp_path / 'KILL'}"]
    n_live = 42
    frame = calm_frame(warm, n_live).iloc[:warm + 5 + n_live]
    end_ms = ms(frame.index[-1])
    state = tmp_path / "kill.db"
    log_path = tmp_path / "child.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(20240502)
    rounds, speed = 3, 500
    with venue(frame, frame.index[warm + 5] + pd.Timedelta("1min"), speed=0) as ex:
        cmd = [sys.executable, "-m", "cli.main", "live", "--model", str(fast_bundle), "--exchange-url", ex.url,
               "--state", str(state), "--i-understand-live-trading"] + [a for kv in cfg_args for a in ("--set", kv)]

        def start():
            return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log_path.open("a"), stderr=subprocess.STDOUT)

        def wait(proc, starts: int, at_least: int, mid_position: bool, deadline: float, end_ok: bool = False) -> int:
            """Until this process has started (the clock runs from then on) and the journal holds
            ``at_least`` bars (with a position when ``mid_position``), or the data's last bar."""
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise AssertionError(f"session exited early ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
                if state.exists():
                    try:
                        with Journal.open_readonly(state) as j:
                            n, cp, started = len(j.bars()), j.last_checkpoint(), len(j.events("start"))
                    except JournalError:
                        n, cp, started = 0, None, 0
                    if started >= starts and ex.speed == 0:
                        ex.set_speed(speed)
                    if started >= starts and cp is not None:
                        if end_ok and cp.bar_time >= end_ms:
                            return n
                        if n >= at_least and (cp.position > 0 or not mid_position):
                            return n
                time.sleep(0.02)
            raise AssertionError(f"timed out waiting for {at_least} bars:\n{log_path.read_text()[-3000:]}")

        journaled = 0
        held_at_kill = []
        for k in range(rounds):
            proc = start()
            journaled = wait(proc, k + 1, journaled + rng.randint(3, 8), True, time.monotonic() + 90)
            time.sleep(rng.uniform(0.0, 0.2))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            with Journal.open_readonly(state) as j:
                held_at_kill.append(j.last_checkpoint().position)
            time.sleep(rng.uniform(0.0, 0.4))  # down: the clock still runs
            ex.set_speed(0)
        proc = start()
        wait(proc, rounds + 1, 10 ** 9, False, time.monotonic() + 150, end_ok=True)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()[-3000:]
        assert_consistent(ex, state)
        lists = len(ex.order_lists)
    out = log_path.read_text()
    assert out.count("resumed live session") == rounds and out.count("new live session") == 1
    assert out.count("reconciliation with the exchange") == rounds + 1 and "UNEXPLAINED" not in out
    assert "stopped (signal)" in out and "Traceback" not in out
    assert all(p > 0 for p in held_at_kill)
    v = view(state)
    bars = [c.bar_time for c in v["bars"]]
    span = [ms(t) for t in frame.index if bars[0] <= ms(t) <= bars[-1]]
    assert bars == span and bars[-1] == end_ms  # every bar once, none lost
    oco = {i.extra["oco"] for i in v["intents"] if i.extra.get("oco")
           and not (i.cancel_reason or "").startswith(("skipped", "never reached", "not placed"))}
    assert lists == len(oco) >= 3 and len(v["fills"]) > 5  # each OCO list on the exchange once
