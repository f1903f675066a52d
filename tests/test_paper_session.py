"""Paper sessions (sessions/session.py, brokers/ccxt_feed.py, brokers/ccxt_store.py, `nts paper`)
through the REAL ccxt.binance client against the replay exchange on 127.0.0.1.

Clocks are stepped by hand (the feed's wait is replaced by "advance the replay one bar"), so
every in-process session is deterministic; the SIGKILL test runs `nts paper` as a
subprocess against a replay on an accelerated clock and compares the final journal with an
uninterrupted in-process run.

Tolerances of "the same trades" (paper vs backtest): fill times, sides and order roles
exactly equal; fill prices within 1e-9 relative; sizes and fees within 1e-4 relative; equity
per bar within 1e-6 relative. Why not exact: the backtest scores P in batches of 128
windows, the paper session one window per bar; float32 network noise (~1e-7 in P) moves the
signal s = (P - c) / (1 - c), hence the vol-scaled size, by up to ~1e-5 relative. Restarted
vs uninterrupted paper runs use the same streaming path and agree to 1e-9.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import backtrader as bt
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from brokers.ccxt_feed import BarSource, CCXTFeed, ExchangeClock, closed_prefix, parse_rows, Bar
from brokers.ccxt_store import CCXTStore
from brokers.exchange import make_exchange
from sessions.journal import Journal, JournalError
from venues.replay import ReplayExchange
from sessions.session import KIND_ROLES, LiveOptions, LiveSession, PaperSession, SessionError, SessionOptions
from cli.main import cli
from core.config import load_config
from core.synthetic import synthetic_ohlcv
from models.bundle import load_bundle
from strategies.backtest import run_backtest, warmup_bars_for
from strategies.base import primes_history
from strategies.tcn import TCNStrategy

ROOT = Path(__file__).resolve().parents[1]
TF = pd.Timedelta("15min")
TF_MS = 900_000
SETS = ["strategy.center=0.3", "strategy.deadband=0"]  # a strategy that trades every few bars


def ms(t: pd.Timestamp) -> int:
    return int(t.value // 1_000_000)


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


def make_cfg(tmp_path: Path, *extra: str):
    return load_config(None, [*SETS, f"risk.kill_switch_file={tmp_path / 'KILL'}", *extra])


def client_for(ex: ReplayExchange):
    c = make_exchange("binance", url=ex.url, timeout_ms=5000)
    c.enableRateLimit = False  # 127.0.0.1 only: ccxt's throttle would just slow the suite
    return c


def run_session(bundle_dir, cfg, state, ex: ReplayExchange, stop_ms: int | None = None, step_bars: int = 1,
                **kwargs):
    """A paper session in this process whose waits step the replay clock ``step_bars`` bars;
    stops once the bar ``stop_ms`` is journaled (or by ``max_bars`` / the kill switch)."""
    store = CCXTStore(exchange=client_for(ex), sleep=lambda s: None)
    lines: list[str] = []
    sess = PaperSession.create(cfg, bundle_dir, state, store=store, sleep=lambda s: ex.advance(bars=step_bars),
                               install_signals=False, emit=lines.append, **kwargs)

    def on_bar(bar, fills):
        if stop_ms is not None and bar.ms >= stop_ms:
            sess.stop_event.set()

    sess.on_bar = on_bar
    res = sess.run()
    res.lines = lines  # type: ignore[attr-defined]
    return res


def journal_view(state):
    with Journal.open_readonly(state) as j:
        return {"fills": j.fills(), "bars": j.bars(), "intents": j.intents(), "summary": j.summary(),
                "gaps": j.gaps(), "events": j.events()}


def assert_same_as_backtest(view, bt_res, s, e, min_fills: int = 20):
    """The journal's fills and equity equal the backtest's (tolerances: module docstring)."""
    roles = {i.client_id: i.role for i in view["intents"]}
    jf = view["fills"]
    bf = bt_res.fills
    assert len(jf) == len(bf) and len(bf) > min_fills, (len(jf), len(bf))
    for a, b in zip(bf.itertuples(index=False), jf):
        assert ms(a.time) == b.ts and a.side == b.side and KIND_ROLES[a.kind] == roles[b.client_id], (a, b)
        assert b.price == pytest.approx(a.price, rel=1e-9)
        assert b.amount == pytest.approx(abs(a.size), rel=1e-4)
        assert b.fee == pytest.approx(a.commission, rel=1e-4)
    bars = view["bars"]
    eq = bt_res.equity["equity"]
    assert [c.bar_time for c in bars] == [ms(t) for t in eq.index]
    assert bars[0].bar_time == ms(s) and bars[-1].bar_time == ms(e)
    np.testing.assert_allclose([c.equity for c in bars], eq.to_numpy(), rtol=1e-6)


# --------------------------------------------------------------------------- parity

@pytest.mark.timeout(180)
def test_paper_equals_backtest_on_synthetic_candles(tmp_path, tiny_bundle, bundle):
    cfg = make_cfg(tmp_path)
    warm = warmup_bars_for(bundle, cfg)
    frame = synthetic_ohlcv(warm + 340, seed=21, start="2024-03-01", gaps={warm + 200: 3})
    s, e = frame.index[warm + 20], frame.index[warm + 319]
    bt_res = run_backtest(bundle, frame, cfg, start=s, end=e + TF, progress=False, allow_in_sample=True)
    with ReplayExchange(frame, start=s + pd.Timedelta("1min")) as ex:
        res = run_session(tiny_bundle, cfg, tmp_path / "p.db", ex, stop_ms=ms(e))
    view = journal_view(tmp_path / "p.db")
    assert_same_as_backtest(view, bt_res, s, e)
    assert res.bars == 300 and res.warmup_bars == warm and not res.resumed
    assert len(bt_res.trades) > 10
    assert view["gaps"] == [{"start": ms(frame.index[warm + 200]) + TF_MS,
                             "end": ms(frame.index[warm + 200]) + 3 * TF_MS, "bars_missing": 3}]
    assert res.lines[0].startswith("new paper session") and f"warm-up {warm} bars" in res.lines[0]
    status = res.lines[1]
    for word in ("close", "P ", "signal", "weight", "position", "equity", "breakers ok"):
        assert word in status
    assert res.feed["polls"] <= res.bars + 5  # one poll per bar: no hammering


@pytest.mark.timeout(240)
def test_paper_equals_backtest_on_real_candles(tmp_path, tiny_bundle, bundle, real_candles):
    warm = warmup_bars_for(bundle, make_cfg(tmp_path))
    i = int(real_candles.index.searchsorted(pd.Timestamp("2023-06-01", tz="UTC")))
    frame = real_candles.iloc[i - warm - 5:i + 320]
    s, e = real_candles.index[i], real_candles.index[i + 299]
    # the tiny bundle was trained on generated candles: centre the signal on its median P
    # over the span so that the strategy trades (about half the flat bars are above it)
    center = float(np.nanmedian(bundle.predict_proba(frame).loc[s:e]))
    cfg = make_cfg(tmp_path, f"strategy.center={center:.6f}")
    bt_res = run_backtest(bundle, frame, cfg, start=s, end=e + TF, progress=False)
    with ReplayExchange(frame, start=s + pd.Timedelta("1min")) as ex:
        run_session(tiny_bundle, cfg, tmp_path / "real.db", ex, stop_ms=ms(e))
    assert_same_as_backtest(journal_view(tmp_path / "real.db"), bt_res, s, e)


@pytest.mark.timeout(120)
def test_a_user_strategy_trades_the_same_on_paper(tmp_path, fast_bundle):
    """`--strategy module:Class` resolves as in nts backtest: NightOnly (trades 00:00-06:00 UTC)."""
    cfg = make_cfg(tmp_path)
    fast = load_bundle(fast_bundle)
    warm = warmup_bars_for(fast, cfg)
    frame = synthetic_ohlcv(warm + 200, seed=17, start="2024-03-01")
    s, e = frame.index[warm + 10], frame.index[warm + 189]
    spec = "strategies.examples:NightOnly"
    bt_res = run_backtest(fast, frame, cfg, strategy=spec, start=s, end=e + TF, progress=False, allow_in_sample=True)
    with ReplayExchange(frame, start=s + pd.Timedelta("1min")) as ex:
        run_session(fast_bundle, cfg, tmp_path / "night.db", ex, stop_ms=ms(e), strategy=spec)
    view = journal_view(tmp_path / "night.db")
    assert_same_as_backtest(view, bt_res, s, e, min_fills=4)
    assert all(f.ts % 86_400_000 < 7 * 3_600_000 for f in view["fills"][::2])  # entries at night only


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name,bars", [("trend_follow", 300), ("calm_only", 1000)])  # calm_only: a week's window
def test_the_builtin_examples_trade_the_same_on_paper(tmp_path, fast_bundle, name, bars):
    """Each builtin example's vectorised hooks, evaluated over the trailing history on paper,
    trade as the backtest's evaluation over the span does, fill for fill."""
    cfg = make_cfg(tmp_path)
    fast = load_bundle(fast_bundle)
    warm = warmup_bars_for(fast, cfg)
    frame = synthetic_ohlcv(warm + bars, seed=23, start="2024-03-01")
    s, e = frame.index[warm + 10], frame.index[warm + bars - 11]
    bt_res = run_backtest(fast, frame, cfg, strategy=name, start=s, end=e + TF, progress=False, allow_in_sample=True)
    plain = run_backtest(fast, frame, cfg, start=s, end=e + TF, progress=False, allow_in_sample=True)
    assert len(bt_res.fills) < len(plain.fills)  # the example's rule bites on this span
    with ReplayExchange(frame, start=s + pd.Timedelta("1min")) as ex:
        run_session(fast_bundle, cfg, tmp_path / f"{name}.db", ex, stop_ms=ms(e), strategy=name)
    assert_same_as_backtest(journal_view(tmp_path / f"{name}.db"), bt_res, s, e, min_fills=2)


@pytest.mark.timeout(120)
def test_a_failing_user_strategy_stops_the_session_with_one_redacted_line(tmp_path, fast_bundle, monkeypatch):
    """User code's text (an exception message holding a secret) reaches neither the error
    line nor the journal (what nts status shows) unredacted."""
    from strategies.hooks import UserCodeError

    secret = "s3cr3t-V4LUE-0123456789"
    monkeypatch.setenv("NTS_TEST_EXCHANGE_API_KEY", secret)
    path = tmp_path / "leaky.py"
    path.write_text("import os\nfrom strategies.tcn import TCNStrategy\n\n\nclass Leaky(TCNStrategy):\n"
                    "    def __init__(self):\n"
                    "        raise RuntimeError('cannot log in with ' + os.environ['NTS_TEST_EXCHANGE_API_KEY'])\n")
    cfg = make_cfg(tmp_path)
    warm = warmup_bars_for(load_bundle(fast_bundle), cfg)
    frame = synthetic_ohlcv(warm + 20, seed=5, start="2024-03-01")
    with ReplayExchange(frame, start=frame.index[warm + 2] + pd.Timedelta("1min")) as ex:
        with pytest.raises(UserCodeError) as err:
            run_session(fast_bundle, cfg, tmp_path / "leaky.db", ex, max_bars=3, strategy=f"{path}:Leaky")
    line = str(err.value)
    assert line.startswith("strategy Leaky: __init__() failed (RuntimeError: cannot log in with ***)"), line
    events = journal_view(tmp_path / "leaky.db")["events"]
    errors = [e["message"] for e in events if e["kind"] == "error"]
    assert errors and "strategy Leaky" in errors[-1]
    assert all(secret not in e["message"] for e in events)


# --------------------------------------------------------------------------- the feed

class _Recorder(bt.Strategy):
    """Writes down every bar it is handed and what the exchange clock said at that moment."""

    params = (("ex", None), ("seen", None))

    def next(self):
        bar = self.data.current
        self.p.seen.append((bar, self.p.ex.now_ms, float(self.data.close[0]), float(self.data.volume[0])))


@pytest.mark.timeout(60)
def test_feed_hands_out_only_closed_bars_once_in_order(tmp_path):
    frame = synthetic_ohlcv(400, seed=4, start="2024-02-01", gaps={250: 4})
    start = frame.index[100] + pd.Timedelta("1min")
    with ReplayExchange(frame, start=start) as ex:
        # faults on the candle endpoint: a repeated candle, late answers (the previous bar still
        # shown as the open one), a 503 and a 429 the store retries
        ex.inject("repeat", times=3, skip=2)
        ex.inject("late", times=4, skip=5)
        ex.inject("status", status=503, times=1, skip=40)
        ex.inject("status", status=429, retry_after=0, times=2, skip=60)
        events = []
        store = CCXTStore(exchange=client_for(ex), sleep=lambda s: None, backoff_s=0.0)
        source = BarSource(store, "BTC/USDT", "15m", sleep=lambda s: ex.advance(seconds=300), max_bars=200,
                           on_event=lambda k, m, d: events.append(k))
        history = source.history(50)
        source.prime(history)
        seen: list = []
        cerebro = bt.Cerebro(stdstats=False)
        cerebro.adddata(CCXTFeed.from_source(source))
        cerebro.addstrategy(_Recorder, ex=ex, seen=seen)
        cerebro.run()
    bars = [b for b, *_ in seen]
    assert [b.ms for b in history] == [ms(t) for t in frame.index[50:100]]  # the warm-up: 50 closed bars
    times = [b.ms for b in bars]
    assert times == sorted(set(times)), "a bar was repeated or reordered"
    assert times == [ms(t) for t in frame.index[50:50 + len(times)]] and len(times) == 250
    for bar, now, close, volume in seen:
        assert bar.ms + TF_MS <= now, f"bar {bar.time} handed out before it closed (exchange at {now})"
        row = frame.loc[bar.time]
        assert (bar.open, bar.high, bar.low, bar.close, bar.volume) == tuple(row)  # final values, not partial
        assert (close, volume) == (row["close"], row["volume"])
    gap = [b for b in bars if b.missing_before]
    assert [(b.time, b.missing_before) for b in gap] == [(frame.index[251], 4)]
    notes = [r.outcome if r.outcome.startswith("fault") else r.note for r in ex.requests_to("/api/v3/klines")]
    assert notes.count("fault:repeat") == 3 and notes.count("fault:late") == 4
    assert notes.count("fault:503") == 1 and notes.count("fault:429") == 2
    assert source.stats.repeats_dropped >= 1 and source.stats.open_skipped >= 200
    assert store.stats.retries == 3 and "feed_stale" in events and "feed_recovered" in events


@pytest.mark.timeout(60)
def test_a_late_candle_is_not_taken_for_closed():
    """Just after bar B closed, the exchange answers as of a bar ago (B still shown as the open
    candle, o=h=l=c=open, volume 0): nothing is delivered; the next answer gives B's final values."""
    frame = synthetic_ohlcv(200, seed=6, start="2024-02-01")
    with ReplayExchange(frame, start=frame.index[150] + pd.Timedelta("30s")) as ex:
        store = CCXTStore(exchange=client_for(ex), sleep=lambda s: None)
        waits = []
        source = BarSource(store, "BTC/USDT", "15m", sleep=waits.append, max_bars=1)
        source.start_after(ms(frame.index[148]))
        ex.inject("late", times=1)
        bar = source.next_bar()
        notes = [r.note for r in ex.requests_to("/api/v3/klines")]
    assert notes == ["fault:late", ""] and len(waits) == 1  # the late answer, a wait, the good answer
    assert bar.time == frame.index[149] and (bar.open, bar.high, bar.low, bar.close, bar.volume) == \
        tuple(frame.iloc[149])
    assert source.next_bar() is None  # max_bars


class _ScriptedStore:
    """A store whose answers are scripted: a list of (exchange time, candle rows)."""

    rate_limit_s = 0.0

    def __init__(self, answers):
        self.answers = list(answers)

    def fetch_time(self):
        return self.answers[0][0]

    def fetch_ohlcv(self, symbol, timeframe, since=None, limit=None, until=None):
        return [r for r in self.answers.pop(0)[1] if since is None or r[0] >= since]


def test_revised_bad_and_missing_candles():
    row = lambda k, c=100.0: [k * TF_MS, 100.0, 101.0, 99.0, c, 5.0]  # noqa: E731
    store = _ScriptedStore([
        (3 * TF_MS + 1, [row(0, 100.5), row(1), row(2)]),             # bar 0 revised after delivery; 1 closes
        (4 * TF_MS + 1, [row(1), [2 * TF_MS, 100, 98, 99, 100, 5], row(3)]),  # bar 2 bad (high < low)
        (5 * TF_MS + 1, [row(1), row(3), row(4)]),                      # bar 3 closes: bar 2 is missing
    ])
    events = []
    source = BarSource(store, "BTC/USDT", "15m", sleep=lambda s: None, max_bars=2,
                       on_event=lambda k, m, d: events.append(k))
    source.prime([Bar(0, 100.0, 101.0, 99.0, 100.0, 5.0, history=True)])
    got = [source.next_bar() for _ in range(3)]
    assert [b.ms for b in got] == [0, TF_MS, 3 * TF_MS] and got[0].close == 100.0  # bar 0 never replaced
    assert [b.missing_before for b in got] == [0, 0, 1] and source.next_bar() is None
    assert source.stats.revisions_ignored == 1 and events == ["feed_revision"]
    assert source.stats.bad_candles == 1 and source.stats.gaps == 1


def test_closure_rules_and_clock():
    bars = [Bar(k * TF_MS, 1, 1, 1, 1, 1) for k in range(3)]
    assert closed_prefix(bars, 2 * TF_MS + 1, TF_MS) == bars[:2]          # the newest is the open one
    assert closed_prefix(bars, 4 * TF_MS, TF_MS) == bars                 # a full bar past its close: closed
    assert closed_prefix(bars, 4 * TF_MS - 1, TF_MS) == bars[:2]
    parsed, dups, bad = parse_rows([[TF_MS, 1, 2, 0.5, 1.5, 3], [0, 1, 1, 1, 1, 1], [TF_MS, 1, 2, 0.5, 1.5, 3],
                                    [2 * TF_MS, 1, 0.5, 1, 1, 1], [3 * TF_MS + 7, 1, 1, 1, 1, 1],
                                    [4 * TF_MS, None, 1, 1, 1, 1]], TF_MS)
    assert [b.ms for b in parsed] == [0, TF_MS] and dups == 1 and bad == 3
    wall = [0.0]
    clock = ExchangeClock(wall=lambda: wall[0])
    clock.observe(1_000_000)
    wall[0] = 1.0
    clock.observe(1_000_000 + 1000 * 1000)  # 1000 exchange s in 1 wall s: a x1000 replay
    assert clock.rate == pytest.approx(1000.0)
    assert clock.wall_seconds_until(1_000_000 + 1000 * 1000 + 900_000) == pytest.approx(0.9)
    frozen = ExchangeClock(wall=lambda: wall[0])
    frozen.observe(5)
    wall[0] = 2.0
    frozen.observe(5)
    assert frozen.wall_seconds_until(10) == float("inf")


# --------------------------------------------------------------------------- restarts

@pytest.mark.timeout(180)
def test_stop_and_restart_in_process_equals_uninterrupted(tmp_path, fast_bundle):
    cfg = make_cfg(tmp_path)
    warm = warmup_bars_for(load_bundle(fast_bundle), cfg)
    frame = synthetic_ohlcv(warm + 230, seed=8, start="2024-04-01")
    s, e = frame.index[warm + 10], frame.index[warm + 209]
    with ReplayExchange(frame, start=s + pd.Timedelta("1min")) as ex:
        run_session(fast_bundle, cfg, tmp_path / "ref.db", ex, stop_ms=ms(e))
    ref = journal_view(tmp_path / "ref.db")
    state = tmp_path / "rs.db"
    with ReplayExchange(frame, start=s + pd.Timedelta("1min")) as ex:
        first = run_session(fast_bundle, cfg, state, ex, stop_ms=ms(frame.index[warm + 40]))
        # stop on consecutive bars, then pause 7 bars (backfilled and traded on restart)
        second = run_session(fast_bundle, cfg, state, ex, stop_ms=ms(frame.index[warm + 41]))
        ex.advance(bars=7)
        third = run_session(fast_bundle, cfg, state, ex, stop_ms=ms(frame.index[warm + 120]))
        last = run_session(fast_bundle, cfg, state, ex, stop_ms=ms(e))
    assert not first.resumed and second.resumed and third.resumed_from == ms(frame.index[warm + 41])
    assert "resumed paper session" in third.lines[0] and "from bar" in third.lines[0]
    assert first.bars + second.bars + third.bars + last.bars == 200
    assert_same_journals(journal_view(state), ref)


class FedEveryBar(TCNStrategy):
    """The TCN strategy fed every warm-up bar through backtrader: the path of a strategy that
    builds its own indicators (``primable`` off)."""

    primable = False


class OwnInit(TCNStrategy):
    """A user's class with its own ``__init__`` (it could build indicators that need each bar)."""

    def __init__(self):
        super().__init__()


def test_which_strategies_take_a_primed_warm_up():
    from strategies.base import ModelStrategy
    from strategies.examples import CalmOnly, NightOnly, TrendFollow

    assert all(primes_history(c) for c in (TCNStrategy, NightOnly, CalmOnly, TrendFollow))
    assert not any(primes_history(c) for c in (FedEveryBar, OwnInit, ModelStrategy))

    class OwnNext(TCNStrategy):
        def next(self):
            super().next()

    assert not primes_history(OwnNext)


@pytest.mark.timeout(240)
def test_primed_warm_up_trades_as_feeding_every_warm_up_bar(tmp_path, fast_bundle):
    """The primed warm-up (indicators set from N-1 bars in one step, backtrader steps the last)
    makes the same bars, orders, fills and equity as feeding all N warm-up bars through
    backtrader, with a data gap inside the warm-up and a restart in between."""
    cfg = make_cfg(tmp_path)
    warm = warmup_bars_for(load_bundle(fast_bundle), cfg)
    frame = synthetic_ohlcv(warm + 140, seed=8, start="2024-04-01", gaps={warm - 60: 3})
    s, e = frame.index[warm + 10], frame.index[warm + 129]
    with ReplayExchange(frame, start=s + pd.Timedelta("1min")) as ex:
        fed = run_session(fast_bundle, cfg, tmp_path / "fed.db", ex, stop_ms=ms(e), strategy=FedEveryBar)
    with ReplayExchange(frame, start=s + pd.Timedelta("1min")) as ex:
        first = run_session(fast_bundle, cfg, tmp_path / "primed.db", ex, stop_ms=ms(frame.index[warm + 50]))
        last = run_session(fast_bundle, cfg, tmp_path / "primed.db", ex, stop_ms=ms(e))
    # bars through backtrader: the whole warm-up vs its last bar only
    assert fed.feed["delivered"] == fed.bars + fed.warmup_bars == 120 + warm
    assert first.feed["delivered"] == first.bars + 1 and last.feed["delivered"] == last.bars + 1
    assert last.resumed and first.bars + last.bars == 120
    assert_same_journals(journal_view(tmp_path / "primed.db"), journal_view(tmp_path / "fed.db"))


def test_session_options_are_frozen_and_checked():
    import dataclasses

    opts = SessionOptions(strategy_kwargs={"center": 0.3}, max_bars=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.max_bars = 6  # type: ignore[misc]
    with pytest.raises(SessionError, match="barriers"):
        SessionOptions(barriers="labels")
    with pytest.raises(SessionError, match="max_bars"):
        SessionOptions(max_bars=0)
    with pytest.raises(SessionError, match="max-capital"):
        LiveOptions(max_capital=-1.0)
    with pytest.raises(SessionError, match="takes LiveOptions"):
        LiveSession(load_config(None), "model", "state.db", opts)
    with pytest.raises(TypeError):
        PaperSession.create(load_config(None), "model", "state.db", no_such_option=1)


def assert_same_journals(got, ref):
    """No lost or doubled bars, orders or fills; the same trades and equity as ``ref``."""
    assert [c.bar_time for c in got["bars"]] == [c.bar_time for c in ref["bars"]]
    np.testing.assert_allclose([c.equity for c in got["bars"]], [c.equity for c in ref["bars"]], rtol=1e-9)
    key = lambda i: (i.bar_time, i.role, i.side, i.order_type, i.status)  # noqa: E731
    assert [key(i) for i in got["intents"]] == [key(i) for i in ref["intents"]]
    np.testing.assert_allclose([i.amount for i in got["intents"]], [i.amount for i in ref["intents"]], rtol=1e-9)
    assert len({i.client_id for i in got["intents"]}) == len(got["intents"])
    fkey = lambda f: (f.ts, f.side)  # noqa: E731
    assert [fkey(f) for f in got["fills"]] == [fkey(f) for f in ref["fills"]] and len(ref["fills"]) > 10
    np.testing.assert_allclose([f.price for f in got["fills"]], [f.price for f in ref["fills"]], rtol=1e-12)
    np.testing.assert_allclose([f.amount for f in got["fills"]], [f.amount for f in ref["fills"]], rtol=1e-9)
    assert len({f.trade_id for f in got["fills"]}) == len(got["fills"])
    assert got["summary"]["duplicate_fills_ignored"] == 0
    assert [(i.role, i.status) for i in got["intents"] if i.status in ("intent", "open")] == \
        [(i.role, i.status) for i in ref["intents"] if i.status in ("intent", "open")]


@pytest.mark.timeout(300)
def test_sigkill_at_random_points_then_restart(tmp_path, fast_bundle):
    """`nts paper` killed with SIGKILL at 5 random points of a replay on an accelerated clock
    (a 15m bar every 0.15 s), restarted each time, finally stopped with SIGTERM.

    The clock runs from each session's ``start`` event (journaled before its warm-up) until a
    random 0-0.6 s after its kill (bars the next session backfills), and is frozen while a
    session starts. A session is killed only once it has printed its start line (the end of
    its warm-up: else it could die before saying it resumed) and the journal holds its
    target; each target comes from what the journal held at the last kill and stays inside
    the data, so a slow start-up that lets the clock run far ahead cannot make a target
    unreachable. Every wait is on the child's output or the journal, never a fixed sleep."""
    cfg_args = [*SETS, f"risk.kill_switch_file={tmp_path / 'KILL'}"]
    cfg = load_config(None, cfg_args)
    warm = warmup_bars_for(load_bundle(fast_bundle), cfg)
    n_live = 140
    frame = synthetic_ohlcv(warm + 10 + n_live, seed=5, start="2024-05-01")
    end_ms = ms(frame.index[-1])
    state = tmp_path / "kill.db"
    log_path = tmp_path / "child.log"
    # unbuffered: the start line the test waits for (and a SIGKILL) must not sit in a stdout buffer
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    rng = random.Random(20240501)
    rounds = 5
    speed = 6000
    with ReplayExchange(frame, start=frame.index[warm + 10] + pd.Timedelta("1min"), speed=0) as ex:
        cmd = [sys.executable, "-m", "cli.main", "paper", "--model", str(fast_bundle), "--exchange-url", ex.url,
               "--state", str(state)] + [a for kv in cfg_args for a in ("--set", kv)]

        def start():
            return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log_path.open("a"), stderr=subprocess.STDOUT)

        def started(starts: int) -> bool:
            """The ``starts``-th session has printed its start line: its warm-up is done."""
            text = log_path.read_text() if log_path.exists() else ""
            return text.count("new paper session") + text.count("resumed paper session") >= starts

        def bars_journaled(proc, at_least: int, deadline: float, starts: int, end_ok: bool = False) -> int:
            """Wait until this process has journaled its start (the clock is let run from then
            on), printed its start line, and the journal holds ``at_least`` bars (or, with
            ``end_ok``, the last bar)."""
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise AssertionError(f"session exited early ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
                n, last, events = 0, None, 0
                if state.exists():
                    try:
                        with Journal.open_readonly(state) as j:
                            n, last, events = j.summary()["bars_processed"], j.last_bar(), len(j.events("start"))
                    except JournalError:  # still being created
                        pass
                if events >= starts and ex.speed == 0:
                    ex.set_speed(speed)
                if started(starts) and (n >= at_least or (end_ok and last is not None and last >= end_ms)):
                    return n
                time.sleep(0.02)
            raise AssertionError(f"timed out waiting for {at_least} bars:\n{log_path.read_text()[-3000:]}")

        journaled = 0
        for k in range(rounds):
            proc = start()
            # each session trades a random 3..25 bars (backfilled ones included), then dies; the
            # targets stay inside the data (the clock may run a few bars past each target)
            target = min(journaled + rng.randint(3, 25), n_live - 2 * (rounds - k))
            journaled = bars_journaled(proc, target, time.monotonic() + 120, k + 1)
            time.sleep(rng.uniform(0.0, 0.2))  # land anywhere in the bar cycle
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            with Journal.open_readonly(state) as j:  # what it journaled before it died, not what we saw
                journaled = j.summary()["bars_processed"]
            time.sleep(rng.uniform(0.0, 0.6))  # down time: 0-4 bars close meanwhile
            ex.set_speed(0)
        proc = start()
        bars_journaled(proc, n_live + 100_000, time.monotonic() + 120, rounds + 1, end_ok=True)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()[-3000:]
    out = log_path.read_text()
    assert out.count("resumed paper session") == rounds and out.count("new paper session") == 1
    assert "stopped (signal)" in out
    got = journal_view(state)
    first = got["bars"][0].bar_time
    assert got["bars"][-1].bar_time == end_ms
    # the uninterrupted reference: the same first traded bar, in this process, clock stepped
    with ReplayExchange(frame, start=pd.Timestamp(first, unit="ms", tz="UTC") + pd.Timedelta("1min")) as ex:
        run_session(fast_bundle, cfg, tmp_path / "ref.db", ex, stop_ms=end_ms)
    ref = journal_view(tmp_path / "ref.db")
    assert_same_journals(got, ref)
    starts = [e for e in got["events"] if e["kind"] == "start"]
    assert len(starts) == rounds + 1


# --------------------------------------------------------------------------- halts

@pytest.mark.timeout(180)
def test_kill_switch_halt_survives_restart_until_resume(tmp_path, fast_bundle):
    cfg = make_cfg(tmp_path)
    warm = warmup_bars_for(load_bundle(fast_bundle), cfg)
    frame = synthetic_ohlcv(warm + 200, seed=9, start="2024-06-01")
    s = frame.index[warm + 5]
    state = tmp_path / "halt.db"
    kill = tmp_path / "KILL"
    with ReplayExchange(frame, start=s + pd.Timedelta("1min")) as ex:
        store = CCXTStore(exchange=client_for(ex), sleep=lambda x: None)
        sess = PaperSession(cfg, fast_bundle, state, SessionOptions(install_signals=False, max_bars=150), store=store,
                            sleep=lambda x: ex.advance(bars=1), emit=lambda line: None)
        sess.on_bar = lambda bar, fills: kill.touch() if bar.ms >= ms(frame.index[warm + 30]) else None
        res = sess.run()
        assert res.stopped_by == "kill_switch" and res.halted and "kill_switch" in res.halted
        before = journal_view(state)
        assert before["summary"]["halted"] and before["summary"]["position"] == 0
        assert before["summary"]["breaker_trips"] >= 1
        kill.unlink()
        # restart: still halted (the file is gone, the halt is not): nothing is traded
        again = run_session(fast_bundle, cfg, state, ex, max_bars=20)
        after = journal_view(state)
        assert again.halted and "HALTED since" in again.lines[0]
        assert len(after["intents"]) == len(before["intents"]) and len(after["fills"]) == len(before["fills"])
        assert "halted: kill_switch" in after["bars"][-1].breaker_state
        # nts resume clears it; the next run trades again
        r = CliRunner().invoke(cli, ["resume", "--state", str(state), "--yes", "--by", "test"])
        assert r.exit_code == 0 and "halt cleared" in r.output
        resumed = run_session(fast_bundle, cfg, state, ex, max_bars=60)
        final = journal_view(state)
    assert resumed.halted is None and resumed.stopped_by == "max_bars"
    assert len(final["intents"]) > len(after["intents"])
    assert any(e["kind"] == "resumed" for e in final["events"])


@pytest.mark.timeout(180)
def test_drawdown_breaker_halt_survives_restart(tmp_path, fast_bundle):
    cfg = make_cfg(tmp_path, "risk.max_drawdown=0.0005")  # trips on the first losing trade
    warm = warmup_bars_for(load_bundle(fast_bundle), cfg)
    frame = synthetic_ohlcv(warm + 200, seed=10, start="2024-07-01")
    state = tmp_path / "dd.db"
    with ReplayExchange(frame, start=frame.index[warm + 5] + pd.Timedelta("1min")) as ex:
        first = run_session(fast_bundle, cfg, state, ex, max_bars=80)
        v1 = journal_view(state)
        assert first.halted and "drawdown" in first.halted and first.stopped_by == "max_bars"
        halted_at = next(c.bar_time for c in v1["bars"] if c.breaker_state.startswith("halted"))
        # after the halt's flatten nothing new was ordered
        assert all(i.bar_time <= halted_at or i.role == "flatten" for i in v1["intents"])
        second = run_session(fast_bundle, cfg, state, ex, max_bars=30)
        v2 = journal_view(state)
    assert second.halted and second.bars == 30
    assert len(v2["intents"]) == len(v1["intents"]) and v2["summary"]["position"] == 0
    assert all(c.breaker_state.startswith("halted") for c in v2["bars"][-30:])


@pytest.mark.timeout(240)
def test_daily_loss_breaker_lifts_at_the_next_utc_day_across_restarts(tmp_path, fast_bundle):
    """The daily-loss breaker means what it means in the backtest: halt and flatten until the
    next UTC day. A restart on the trip's day stays halted, a restart whose next bar is on a
    later day trades, and the whole journal equals run_backtest over the span."""
    cfg = make_cfg(tmp_path, "risk.daily_loss=0.003")
    fast = load_bundle(fast_bundle)
    warm = warmup_bars_for(fast, cfg)
    frame = synthetic_ohlcv(warm + 200, seed=31, start="2024-06-01 12:00")
    s, e = frame.index[warm + 4], frame.index[warm + 154]
    bt_res = run_backtest(fast, frame, cfg, start=s, end=e + TF, progress=False, allow_in_sample=True)
    trips = [pd.Timestamp(t["time"], tz="UTC") for t in bt_res.risk_trips if t["breaker"] == "daily_loss"]
    trip = trips[0]
    midnight = trip.normalize() + pd.Timedelta(days=1)
    assert s < trip < trip + 4 * TF < midnight < e and len(trips) == 1  # the scenario: one trip, mid-day
    state = tmp_path / "daily.db"
    with ReplayExchange(frame, start=s + pd.Timedelta("1min")) as ex:
        first = run_session(fast_bundle, cfg, state, ex, stop_ms=ms(trip + TF))
        assert first.halted is None  # not a journal halt: nts resume has nothing to do with it
        assert "daily_loss" in journal_view(state)["bars"][-1].breaker_state
        # restart on the same UTC day: still halted, until the last bar of the day
        same_day = run_session(fast_bundle, cfg, state, ex, stop_ms=ms(midnight - TF))
        assert "daily-loss breaker tripped" in same_day.lines[0] and same_day.bars > 4
        # restart before the first bar of the next day: trading again
        next_day = run_session(fast_bundle, cfg, state, ex, stop_ms=ms(e))
        assert "lifts at" in next_day.lines[0] and "trading again" in next_day.lines[0]
    view = journal_view(state)
    held = [c for c in view["bars"] if ms(trip) <= c.bar_time < ms(midnight)]
    assert held and all("daily_loss" in c.breaker_state for c in held)
    assert not any(i.role == "entry" and ms(trip) <= i.bar_time < ms(midnight) for i in view["intents"])
    assert any(i.role == "entry" and i.bar_time >= ms(midnight) for i in view["intents"])
    assert not view["summary"]["halted"] and view["summary"]["breaker_trips"] >= 1
    assert_same_as_backtest(view, bt_res, s, e, min_fills=10)


# --------------------------------------------------------------------------- refusals and CLI

@pytest.mark.timeout(120)
def test_refusals_and_cli(tmp_path, fast_bundle):
    cfg = make_cfg(tmp_path)
    warm = warmup_bars_for(load_bundle(fast_bundle), cfg)
    frame = synthetic_ohlcv(warm + 60, seed=12, start="2024-08-01")
    state = tmp_path / "cli.db"
    with ReplayExchange(frame, start=frame.index[warm + 5] + pd.Timedelta("1min"), speed=20000) as ex:
        sets = [a for kv in [*SETS, f"risk.kill_switch_file={tmp_path / 'KILL'}"] for a in ("--set", kv)]

        def paper_args(state_file, *more):
            return ["paper", "--model", str(fast_bundle), "--exchange-url", ex.url, "--state", str(state_file),
                    "--max-bars", "3", *sets, *more]

        args = paper_args(state)
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 0, r.output
        assert "new paper session" in r.output and r.output.count("breakers ok") == 3
        assert "stopped (max_bars) after 3 bars" in r.output
        # another trading config on the same journal: refused with one line, nothing written
        before = journal_view(state)["summary"]["bars_processed"]
        r = CliRunner().invoke(cli, args + ["--set", "strategy.center=0.4"])
        assert r.exit_code == 2 and r.output.startswith("error: ") and "another model/config" in r.output
        assert journal_view(state)["summary"]["bars_processed"] == before
        # nts status reads it
        r = CliRunner().invoke(cli, ["status", "--state", str(state)])
        assert r.exit_code == 0 and "3 processed" in r.output
        # an unknown market
        r = CliRunner().invoke(cli, paper_args(tmp_path / "other.db", "--symbol", "ETH/USDT"))
        assert r.exit_code == 2 and "unknown symbol 'ETH/USDT'" in r.output
