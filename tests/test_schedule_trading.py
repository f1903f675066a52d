"""Walk-forward schedules in trading: the policy's centre (``breakeven`` included) for a
schedule equals a single bundle's; same bars and same P trade the same; the model id of each
decision in the backtest trade list and the paper journal; rolling calibration on the
streaming path (paper, live) equal to the batch path (backtest), for a bundle and a schedule."""
from __future__ import annotations

import backtrader as bt
import numpy as np
import pandas as pd
import pytest

from core.config import CalibrationConfig, load_config
from core.synthetic import synthetic_ohlcv
from indicators.tcn_indicator import TCNProbability
from models.bundle import load_bundle
from models.recalibration import RollingCalibrated, with_calibration
from models.schedule import ModelSchedule, model_id_at
from models.streaming import BarScorer
from models.universe import SymbolInput
from models.walkforward import build_schedule
from sessions.journal import BarFigures, Journal
from strategies.backtest import frame_feed, run_backtest
from strategies.runspec import RunSpec

SMALL = ["model.window=16", "model.channels=[8,8]", "model.dilations=[1,2]", "model.head_units=8",
         "training.batch_size=128", "training.threads=1", "training.epochs=1", "training.train_window=20D",
         "training.step=10D"]
ROLLING = ["calibration.mode=rolling", "calibration.window_bars=300", "calibration.refit_bars=24",
           "calibration.min_samples=100"]
TRADES = ["strategy.center=0.3", "strategy.deadband=0"]  # P of these tiny models sits near 0.3: trades often
STATIC = CalibrationConfig()


@pytest.fixture(scope="module")
def frame():
    return synthetic_ohlcv(6000, seed=3, gaps={3000: 5})


@pytest.fixture(scope="module")
def sched_dir(frame, tmp_path_factory):
    """A 4-fold schedule trained with rolling calibration (ModelSchedule(..., STATIC) scores it static)."""
    out = tmp_path_factory.mktemp("wf") / "wf"
    build_schedule([SymbolInput("SYN/USDT", "mem.csv", frame, None)], load_config(None, SMALL + ROLLING), out)
    return out


def _cfg(*extra):
    return load_config(None, SMALL + list(extra))


# --------------------------------------------------------------------------- the centre

def test_breakeven_centre_is_applied_for_a_schedule_as_for_a_bundle(sched_dir):
    sched = ModelSchedule(sched_dir, STATIC)
    one = load_bundle(sched_dir / sched.folds[1]["bundle"])
    for extra, want in ((["strategy.center=breakeven", "execution.taker_fee=0"], 1 / 3),
                        # +0.8% / -0.4% with a 0.1% taker fee: (0.004 + 0.002) / 0.012 = 0.5, the
                        # default centre -- why "breakeven" looked ignored on the BTC schedule
                        (["strategy.center=breakeven"], 0.5), (["strategy.center=0.41"], 0.41)):
        a = RunSpec.build(_cfg(*extra), model=sched).policy
        b = RunSpec.build(_cfg(*extra), model=one).policy
        assert a.center == pytest.approx(want, abs=1e-12) and a == b


def test_a_schedule_trades_like_its_fold_bundle_on_the_folds_span(sched_dir, frame):
    """Same bars, same P (to float32 rounding) -> the same trades, and the model id per trade."""
    sched = ModelSchedule(sched_dir, STATIC)
    fold = sched.folds[1]
    one = load_bundle(sched_dir / fold["bundle"])
    span = (fold["valid_from"], fold["valid_until"])
    cfg = _cfg(*TRADES, "strategy.center=breakeven", "execution.taker_fee=0", "execution.maker_fee=0")
    a = run_backtest(RunSpec.build(cfg, model=sched, data=frame, span=span), progress=False)
    b = run_backtest(RunSpec.build(cfg, model=one, data=frame, span=span), progress=False)
    assert a.metrics["run"]["signal"]["center"] == pytest.approx(1 / 3)
    assert a.metrics["run"]["center_rule"] == "breakeven"
    ta, tb = a.trades.reset_index(drop=True), b.trades.reset_index(drop=True)
    assert len(ta) == len(tb) > 5
    for col in ("entry_time", "exit_time", "side", "entry_kind", "exit_kind", "model_id"):
        assert (ta[col].to_numpy() == tb[col].to_numpy()).all(), col
    np.testing.assert_allclose(ta["pnl_net"].to_numpy(float), tb["pnl_net"].to_numpy(float), rtol=1e-6)
    assert set(ta["model_id"]) == {fold["name"]}


def test_trade_list_names_the_fold_that_scored_each_entry(sched_dir, frame):
    sched = ModelSchedule(sched_dir, STATIC)
    res = run_backtest(RunSpec.build(_cfg(*TRADES), model=sched, data=frame, span=(sched.folds[0]["valid_from"], None)),
                       progress=False)
    trades = res.trades
    assert len(trades) > 20 and trades["model_id"].nunique() == 4
    # the entry was decided on the bar before its fill (market or limit at the signal close)
    decided = frame.index[frame.index.searchsorted(pd.DatetimeIndex(trades["entry_time"])) - 1]
    assert (trades["model_id"].to_numpy() == sched.model_ids(decided)).all()
    assert model_id_at(load_bundle(sched_dir / sched.folds[0]["bundle"]), frame.index[0]) == sched.folds[0]["name"]


# --------------------------------------------------------------------------- the journal

def test_journal_keeps_the_model_id_per_bar_and_reads_older_journals(tmp_path):
    from sessions.journal import SessionIdentity, config_hash
    from core.risk import RiskManager

    ident = SessionIdentity("paper", "binance", "BTC/USDT", "15m", "wf", "ab" * 32, config_hash({"a": 1}))
    t0, step = 1_704_067_200_000, 900_000

    def bar(j, k, **kw):
        j.record_bar(t0 + k * step, BarFigures(100.0, 0.5, 0.0, 0.0, 0.0, float("nan"), 1000.0, 1000.0), "ok",
                     RiskManager().state_dict(), {"k": k}, **kw)

    path = tmp_path / "old.db"
    with Journal.open(path, ident) as j:  # written as before: no model id, no bar_models table
        bar(j, 0)
        bar(j, 1)
    with Journal.open(path, ident) as j:
        assert [c.model_id for c in j.bars()] == [None, None]
        bar(j, 2, model_id="fold_20240121")
        bar(j, 3, model_id="fold_20240131")
        bar(j, 4)
    with Journal.open_readonly(path) as j:
        assert [c.model_id for c in j.bars()] == [None, None, "fold_20240121", "fold_20240131", None]
        assert [c.model_id for c in j.bars(since=t0 + 2 * step)] == ["fold_20240131", None]
        assert j.last_checkpoint().model_id is None and j.last_checkpoint().strategy_state == {"k": 4}


# --------------------------------------------------------------------------- rolling calibration, streaming

def _probe(model, frame, runonce: bool) -> np.ndarray:
    class Probe(bt.Strategy):
        def __init__(self):
            self.tcn = TCNProbability(self.data, bundle=model)

    cerebro = bt.Cerebro(stdstats=False, runonce=runonce, preload=True)
    cerebro.adddata(frame_feed(frame))
    cerebro.addstrategy(Probe)
    return np.frombuffer(cerebro.run()[0].tcn.prob.array, dtype="float64").copy()


def test_rolling_schedule_streaming_equals_batch(sched_dir, frame):
    """next() (paper/live) refits Platt on the stream's trailing bars exactly as the batch pass
    (backtest) does, across fold boundaries and the gap; and the fits are really in use."""
    sched = ModelSchedule(sched_dir)
    assert sched.ccfg.mode == "rolling"
    batch, stream = _probe(sched, frame, True), _probe(sched, frame, False)
    np.testing.assert_array_equal(np.isnan(batch), np.isnan(stream))
    assert np.isfinite(batch).sum() > 3500
    np.testing.assert_allclose(batch, stream, atol=1e-5, rtol=0, equal_nan=True)
    static = ModelSchedule(sched_dir, STATIC).predict_proba(frame).to_numpy()
    ok = np.isfinite(batch)
    assert np.mean(np.abs(batch[ok] - static[ok]) > 1e-4) > 0.5


def test_rolling_bundle_streaming_equals_batch_after_priming(sched_dir, frame):
    """A BarScorer primed on warm-up bars (a session start or restart) continues with the
    batch path's rolling P; without the stream the single-window call is still refused."""
    sched = ModelSchedule(sched_dir)
    model = with_calibration(load_bundle(sched_dir / sched.folds[2]["bundle"]), sched.ccfg)
    assert isinstance(model, RollingCalibrated)
    tail = frame.iloc[3500:5200]
    batch = model.predict_proba(tail).to_numpy()
    scorer = BarScorer(model)
    first = model.history_bars + 10
    assert scorer.prime(tail.iloc[:first])[1] == pytest.approx(model.score_frame(tail.iloc[:first])[1][-1], abs=1e-5)
    got = [scorer.update(ts, *row)[1] for ts, row in zip(tail.index[first:], tail.to_numpy()[first:])]
    np.testing.assert_allclose(got, batch[first:], atol=1e-5, rtol=0)
    static = model.inner.predict_proba(tail).to_numpy()[first:]
    assert np.mean(np.abs(np.asarray(got) - static) > 1e-4) > 0.5
    with pytest.raises(Exception, match="trailing bars"):
        model.score_features(np.zeros((16, len(model.feature_names))))


@pytest.mark.timeout(240)
def test_paper_journals_the_fold_per_bar_and_rolling_p_equals_the_backtest(sched_dir, frame, tmp_path):
    """A paper session on the rolling schedule across a fold boundary: the P journaled per bar
    equals the backtest's rolling P, and each bar names the fold that scored it."""
    from brokers.ccxt_store import CCXTStore
    from brokers.exchange import make_exchange
    from sessions.session import PaperSession
    from venues.replay import ReplayExchange

    cfg = _cfg(*TRADES, *ROLLING, f"risk.kill_switch_file={tmp_path / 'KILL'}")
    sched = ModelSchedule(sched_dir)
    boundary = pd.Timestamp(sched.folds[1]["valid_from"])
    i = int(frame.index.searchsorted(boundary))
    s, e = frame.index[i - 100], frame.index[i + 99]
    bt_res = run_backtest(RunSpec.build(cfg, model=sched, data=frame, span=(s, e + pd.Timedelta("15min"))),
                          progress=False)
    state = tmp_path / "p.db"
    with ReplayExchange(frame, start=s + pd.Timedelta("1min")) as ex:
        client = make_exchange("binance", url=ex.url, timeout_ms=5000)
        client.enableRateLimit = False
        sess = PaperSession.create(cfg, sched_dir, state, store=CCXTStore(exchange=client, sleep=lambda _: None),
                            sleep=lambda _: ex.advance(bars=1), install_signals=False, emit=lambda _: None)
        sess.on_bar = lambda bar, fills: sess.stop_event.set() if bar.ms >= e.value // 1_000_000 else None
        sess.run()
    with Journal.open_readonly(state) as j:
        bars = [c for c in j.bars() if c.bar_time >= s.value // 1_000_000]
    times = pd.to_datetime([c.bar_time for c in bars], unit="ms", utc=True)
    assert len(bars) == 200 and times[0] == s and times[-1] == e
    assert [c.model_id for c in bars] == list(sched.model_ids(times))
    assert {c.model_id for c in bars} == {sched.folds[0]["name"], sched.folds[1]["name"]}
    batch = sched.predict_proba(frame).loc[times].to_numpy()
    np.testing.assert_allclose([c.prob for c in bars], batch, atol=1e-5, rtol=0)
    assert len(bt_res.trades) > 3
