"""The numba reference simulator (core.simulator) equals ``run_backtest`` (backtrader) trade
for trade: same entry/exit bars, exit kinds, prices and equity, fed exactly what backtrader
saw (the same frame slice incl. warm-up, the strategy's own P, forecast and realised-vol lines).

Cases: oracle probabilities on the real candles across a data gap (market and limit entries,
both tie rules, cheat-on-close on and off, fees and slippage on), the trained TCN bundle,
tight breakers, shorts with leverage cuts, and each deliberate difference of the kernel."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.config import LabelConfig, RiskConfig, load_config
from core.simulator import RunOptions, SimResult, as_signals, simulate
from core.synthetic import synthetic_ohlcv
from indicators.bt_features import feed_frame
from models.labels import triple_barrier_events
from strategies.backtest import run_backtest
from strategies.hooks import evaluate_hooks
from strategies.tcn import TCNStrategy

from bt_helpers import LOOSE_RISK, LineStrategy, with_lines

REL = 1e-9
# Figures of every comparison in this module (printed with -s).
FIGURES: dict[str, dict[str, float]] = {}


def _line(line, n: int) -> np.ndarray:
    return np.frombuffer(line.array, dtype="float64")[:n].copy()


def _capturing(cls: type) -> tuple[type, list]:
    """A subclass of ``cls`` that hands its instance out (the strategy run_backtest built)."""
    seen: list = []

    def __init__(self):
        cls.__init__(self)
        seen.append(self)

    return type(f"Captured{cls.__name__}", (cls,), {"__init__": __init__, "__module__": cls.__module__}), seen


def _pair(frame: pd.DataFrame, cfg, risk: RiskConfig, strategy: type = LineStrategy, bundle=None, coc=False,
          kill_bar: int | None = None, **kw):
    """run_backtest and simulate on what backtrader saw; returns (backtest result, sim, fed frame)."""
    from core.risk import RiskManager

    cls, seen = _capturing(strategy)
    res = run_backtest(bundle, frame, cfg, strategy=cls, coc=coc, progress=False, allow_in_sample=bundle is None,
                       strategy_kwargs={"risk": RiskManager(risk), **kw})
    strat = seen[-1]
    fed = feed_frame(strat.data)
    n = len(fed)
    start = max(int(fed.index.searchsorted(res.start)), strat._minperiod - 1)  # first next() that decides
    end = int(fed.index.searchsorted(res.end, side="right")) - 1
    prob, fvol = _line(strat.prob, n), _line(strat.vol_forecast, n)
    # the strategy's own hooks over the fed bars: what every engine's decision step reads
    h = evaluate_hooks(strat, fed, prob, fvol)
    hooks = as_signals(h.prob, h.signal, h.weight, h.allowed)
    sim = simulate(strat.policy, risk, fed, prob, fvol, _line(strat.realised_vol, n), cfg.execution.cash,
                   RunOptions(start=start, end=end, coc=coc, kill_bar=kill_bar,
                              kill_switch_file=strat.risk.kill_switch_file), signals=hooks)
    return res, sim, fed, strat


def _rel(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return np.abs(a - b) / np.maximum(np.abs(b), 1e-300)


def _assert_parity(name: str, res, sim: SimResult) -> None:
    """Trade for trade, fill for fill, bar for bar; records the figures under ``name``."""
    a, b = res.trades.reset_index(drop=True), sim.trades.reset_index(drop=True)
    assert len(a) == len(b), f"{name}: {len(a)} backtrader trades vs {len(b)} simulated"
    for col in ("entry_bar", "exit_bar", "exit_kind", "entry_kind", "side", "status", "entry_time", "exit_time"):
        assert (a[col] == b[col]).all(), f"{name}: {col} differs first at trade {int(np.argmax(~(a[col] == b[col])))}"
    price_diff = float(max(_rel(a["entry_price"], b["entry_price"]).max(initial=0),
                           _rel(a["exit_price"], b["exit_price"]).max(initial=0)))
    assert price_diff <= REL
    assert _rel(a["size"], b["size"]).max(initial=0) <= REL
    assert _rel(a["pnl_net"].abs() + 1, b["pnl_net"].abs() + 1).max(initial=0) <= REL
    fa, fb = res.fills.reset_index(drop=True), sim.fills.reset_index(drop=True)
    assert len(fa) == len(fb)
    for col in ("time", "side", "kind", "order_type"):
        assert (fa[col] == fb[col]).all(), f"{name}: fill {col} differs"
    for col in ("price", "size", "commission"):
        assert _rel(fa[col], fb[col]).max(initial=0) <= REL, f"{name}: fill {col}"
    eq_a = res.equity["equity"]
    eq_b = sim.equity["equity"].reindex(eq_a.index)
    equity_diff = float(_rel(eq_a, eq_b).max())
    assert equity_diff <= REL and _rel(eq_a.iloc[-1], eq_b.iloc[-1]) <= REL
    assert np.allclose(res.equity["position"], sim.equity["position"].reindex(eq_a.index), rtol=REL, atol=1e-12)
    assert [(t["time"], t["breaker"]) for t in res.risk_trips] == [(t["time"], t["breaker"]) for t in sim.risk_trips]
    for ta, tb in zip(res.risk_trips, sim.risk_trips):
        assert ta["reason"] == tb["reason"]
        assert ta["values"] == pytest.approx(tb["values"], rel=REL)
    sig = {k: v for k, v in res.metrics["run"]["signal"].items() if k != "center"}
    assert sig == pytest.approx({**sim.signal_stats, "p_max": sim.signal_stats["p_max"] if sig["scored"] else None},
                                nan_ok=True)
    assert res.metrics["run"]["stopped_by_kill_switch"] == sim.stopped_by_kill_switch
    FIGURES[name] = {"trades": len(a), "fills": len(fa), "max_price_rel_diff": price_diff,
                     "max_equity_rel_diff": equity_diff}
    print(f"\nparity {name}: {len(a)} trades, {len(fa)} fills, max price diff {price_diff:.2e}, "
          f"max equity diff {equity_diff:.2e}")


def _loose(tmp_path, **over) -> RiskConfig:
    return RiskConfig(**{**LOOSE_RISK, "kill_switch_file": str(tmp_path / "KILL"), **over})


# ----------------------------------------------------------------------------- real candles

@pytest.fixture(scope="module")
def real_span(real_candles):
    """3,600 real bars across the data gap of 2023-03-24 12:30 (5 bars missing)."""
    seg = real_candles.iloc[27000:30600]
    steps = np.diff(seg.index.asi8) // (15 * 60 * 10**9)
    assert (steps > 1).sum() >= 1  # the span crosses a gap
    return seg


@pytest.mark.parametrize("coc", [False, True], ids=["next_open", "coc"])
@pytest.mark.parametrize("entry", ["market", "limit"])
@pytest.mark.parametrize("tie", ["stop", "profit"])
def test_oracle_on_real_candles(tmp_path, real_span, tie, entry, coc):
    # P = 1 on bars whose label is 1, else 0: every flat bar with a winning label enters.
    cfg = load_config(overrides=[f"labels.tie={tie}", "execution.maker_fee=0.0005"])  # fees and slippage on
    label = triple_barrier_events(real_span, LabelConfig(tie=tie))["label"]
    prob = (label == 1).astype(float).to_numpy()
    res, sim, fed, _ = _pair(with_lines(real_span, prob), cfg, _loose(tmp_path), coc=coc,
                             limit_confidence=2.0 if entry == "market" else 0.5)
    assert len(res.trades) > 100
    entries = res.fills[res.fills["kind"] == "entry"]
    assert set(entries["order_type"]) == {"Market" if entry == "market" else "Limit"}
    assert (res.trades["exit_kind"] == "take_profit").mean() > 0.8  # the oracle mostly wins
    if entry == "market" and not coc:  # slippage moved the market fills off the open
        opens = fed["open"].loc[entries["time"]].to_numpy()
        assert (entries["price"].to_numpy() > opens).mean() > 0.9
    gap_at = fed.index[1:][np.diff(fed.index.asi8) > 15 * 60 * 10**9][0]
    assert fed.index[0] < gap_at < fed.index[-1]
    _assert_parity(f"real oracle tie={tie} {entry} coc={coc}", res, sim)


def test_breakers_trip_the_same_way(tmp_path, real_span):
    cfg = load_config()
    prob = np.random.default_rng(3).uniform(0.3, 1.0, len(real_span))
    res, sim, _, _ = _pair(with_lines(real_span, prob), cfg,
                           _loose(tmp_path, max_drawdown=0.03, daily_loss=0.01, max_volatility=0.03),
                           limit_confidence=0.6)
    assert {"drawdown", "daily_loss", "volatility"} <= {t["breaker"] for t in res.risk_trips}
    assert (res.fills["kind"] == "risk").any()  # a breaker flattened a position
    _assert_parity("real breakers drawdown+daily+vol", res, sim)
    res, sim, _, _ = _pair(with_lines(real_span, prob), cfg, _loose(tmp_path, daily_loss=0.004, max_volatility=0.025),
                           coc=True, limit_confidence=0.6)
    assert sum(t["breaker"] == "daily_loss" for t in res.risk_trips) > 3  # halts end with the UTC day
    assert {"take_profit", "stop", "time", "risk"} <= set(res.trades["exit_kind"])
    _assert_parity("real breakers daily coc", res, sim)


def test_shorts_and_leverage_cuts(tmp_path, real_span):
    cfg = load_config(overrides=["data.market=margin", "strategy.allow_short=true"])
    prob = np.random.default_rng(4).uniform(0, 1, len(real_span))
    for coc in (False, True):
        res, sim, _, _ = _pair(with_lines(real_span, prob, 0.25), cfg, _loose(tmp_path, max_leverage=0.96), coc=coc,
                               limit_confidence=0.7, profit=0.05, stop=0.05, max_hold=200, limit_tif_bars=3)
        assert (res.trades["side"] == "short").any() and (res.trades["side"] == "long").any()
        assert (res.fills["kind"] == "risk").any()  # reduce_to cut a short grown past max leverage
        _assert_parity(f"real shorts+cuts coc={coc}", res, sim)


# ----------------------------------------------------------------------------- the TCN bundle

def test_tcn_bundle_probabilities(tmp_path, tiny_bundle):
    from models.bundle import load_bundle

    bundle = load_bundle(tiny_bundle)
    frame = synthetic_ohlcv(4000, seed=11, gaps={1800: 10})  # training bars + out-of-sample ones
    cfg = load_config(overrides=["strategy.center=0.32", "strategy.deadband=0"])
    res, sim, fed, strat = _pair(frame, cfg, _loose(tmp_path), strategy=TCNStrategy, bundle=bundle)
    p_bt = _line(strat.prob, len(fed))
    np.testing.assert_allclose(bundle.predict_proba(fed).to_numpy(), p_bt, atol=1e-6, equal_nan=True)
    assert len(res.trades) > 5
    _assert_parity("tcn bundle", res, sim)


# ----------------------------------------------------------------------------- deliberate differences

class _KillAt(LineStrategy):
    """Creates the kill-switch file at bar 1,500 (stands in for an operator)."""

    def next(self):
        if self._bar + 1 == 1500:
            open(self.risk.kill_switch_file, "w").close()
        super().next()


def test_kill_switch_is_a_bar_index_in_the_kernel(tmp_path, real_span):
    # backtrader polls the file every bar; the kernel is told the bar it appears on.
    cfg = load_config()
    prob = np.random.default_rng(5).uniform(0.5, 1.0, len(real_span))
    risk = _loose(tmp_path)
    res, sim, fed, strat = _pair(with_lines(real_span, prob), cfg, risk, strategy=_KillAt, kill_bar=1500,
                                 limit_confidence=0.8)
    assert [t["breaker"] for t in res.risk_trips] == ["kill_switch"]
    assert res.trades["exit_kind"].iloc[-1] == "kill"
    assert sim.stopped_by_kill_switch and len(sim.equity) == sim.bars < len(fed)
    assert sim.equity.index[-1] == res.equity.index[-1]  # both runs end on the same bar
    _assert_parity("real kill switch", res, sim)
    n = len(fed)
    start = max(int(fed.index.searchsorted(res.start)), strat._minperiod - 1)
    unkilled = simulate(strat.policy, risk, fed, _line(strat.prob, n), _line(strat.vol_forecast, n),
                        _line(strat.realised_vol, n), cfg.execution.cash, RunOptions(start=start))
    assert not unkilled.stopped_by_kill_switch and unkilled.bars == n and unkilled.risk_trips == []


class _NightOnlyLine(LineStrategy):
    """NightOnly's vectorised hook (strategies.examples) on the stand-in probability line."""

    def entry_allowed(self, bars):
        return bars.index.hour < 6


def test_vectorised_hook_subclass_trades_the_same_in_both_engines(tmp_path):
    # NightOnly's entry_allowed hook reaches the kernel as its per-bar values: the same trades
    # as nts backtest, and none opened outside the hours (the default hooks trade around the clock).
    frame = synthetic_ohlcv(2000, seed=3, vol=0.003)
    cfg = load_config()
    prob = np.random.default_rng(6).uniform(0.5, 1.0, len(frame))
    res, sim, fed, strat = _pair(with_lines(frame, prob, 0.5), cfg, _loose(tmp_path), strategy=_NightOnlyLine,
                                 coc=True, limit_confidence=2.0)  # market at the signal close: entry = signal bar
    assert (pd.DatetimeIndex(res.trades["entry_time"]).hour < 6).all() and len(res.trades) > 10
    _assert_parity("synthetic NightOnly hook", res, sim)
    n = len(fed)
    start = max(int(fed.index.searchsorted(res.start)), strat._minperiod - 1)
    around_the_clock = simulate(strat.policy, _loose(tmp_path), fed, _line(strat.prob, n),
                                _line(strat.vol_forecast, n), _line(strat.realised_vol, n), cfg.execution.cash,
                                RunOptions(start=start, end=res.end, coc=True))
    assert len(around_the_clock.trades) > len(res.trades)


def test_kernel_numbers_its_own_orders(tmp_path):
    frame = synthetic_ohlcv(600, seed=9, vol=0.003)
    res, sim, _, _ = _pair(with_lines(frame, 0.9, 0.5), load_config(), _loose(tmp_path), limit_confidence=2.0)
    refs = sim.fills["ref"].to_numpy()
    assert refs.min() >= 1 and (np.diff(refs) > 0).all()  # 1, 2, ... in submission order
    assert not np.array_equal(refs, res.fills["ref"].to_numpy())  # backtrader's refs are process-wide
    _assert_parity("synthetic refs", res, sim)


@pytest.mark.parametrize("bar_open, expected", [(0.999, 0.999 * 1.0002), (0.9999, 1.0)],
                         ids=["slipped", "capped_at_limit"])
def test_limit_marketable_at_the_open_is_slipped_capped_at_the_limit(tmp_path, bar_open, expected):
    # core.costs: a buy limit the bar opens below fills at open * (1 + s), capped at the limit
    # (backtrader's _slip_up(..., lim=True) with slip_match) -- both engines.
    idx = pd.date_range("2024-03-04", periods=300, freq="15min", tz="UTC", name="timestamp")
    frame = pd.DataFrame({"open": 100.0, "high": 100.01, "low": 99.99, "close": 100.0, "volume": 1.0}, index=idx)
    frame.iloc[101, :4] = [100.0 * bar_open, 100.3, 100.0 * bar_open * 0.9999, 100.2]
    prob = np.full(len(frame), np.nan)
    prob[100] = 0.9  # |s| = 0.8 >= limit_confidence: a buy limit at close[100] = 100
    cfg = load_config(overrides=["execution.slippage_bps=2"])
    res, sim, _, _ = _pair(with_lines(frame, prob, 0.5), cfg, _loose(tmp_path), limit_confidence=0.5)
    entry = res.fills[res.fills["kind"] == "entry"]
    assert entry["order_type"].tolist() == ["Limit"] and entry["time"].iloc[0] == idx[101]
    assert entry["price"].iloc[0] == pytest.approx(100.0 * expected, rel=1e-12)
    assert entry["commission"].iloc[0] == pytest.approx(entry["value"].iloc[0] * cfg.execution.maker_fee)
    _assert_parity(f"limit at the open {bar_open}", res, sim)


def test_kernel_runs_per_row_inside_a_prange_loop():
    # The shape a sweep needs: named records of arrays in, per-row preallocated buffers out,
    # callable from a parallel njit loop over parameter rows -- with the same numbers as one
    # call per row.
    import numba

    from core.policy import Policy
    from core.risk import risk_vector
    from core.simulator import Bars, Outputs, Signals, Span, allocate_buffers, bars_of, default_signals, simulate_kernel

    @numba.njit(parallel=True)
    def rows(t, o, h, lo, c, rv, p, s, w, a, prm, rsk, fills, eq, trips, stats, rstate, out):
        # a parfor captures arrays and scalars only: the records are built inside the loop
        for k in numba.prange(prm.shape[0]):
            nf, nb, _ = simulate_kernel(Bars(t, o, h, lo, c, rv), Signals(p, s, w, a), Span(100, c.shape[0] - 1, -1,
                                        10000.0, False), prm[k], rsk,
                                        Outputs(fills[k], eq[k], trips[k], stats[k], rstate[k]))
            out[k, 0] = eq[k, nb - 1, 0]
            out[k, 1] = nf

    frame = synthetic_ohlcv(1000, seed=1, vol=0.003)
    n = len(frame)
    bars = bars_of(frame, np.full(n, 0.01))
    p = np.random.default_rng(0).uniform(0.3, 1, n)
    # rows vary fields the hooks do not read (the sweep groups rows by those they do)
    policies = [Policy.default().replace(max_hold=h, limit_confidence=lc) for h in (4, 8) for lc in (0.5, 2.0)]
    sig = default_signals(policies[0], p, np.full(n, 0.5))
    prm = np.stack([pol.to_array() for pol in policies])
    rsk = risk_vector(RiskConfig(**LOOSE_RISK))
    span = Span(100, n - 1, -1, 10000.0, False)
    k = len(policies)
    bufs = [allocate_buffers(n, trips=16) for _ in range(k)]
    fills, eq, trips, stats, rstate = (np.stack([getattr(b, f) for b in bufs]) for f in Outputs._fields)
    out = np.zeros((k, 2))
    rows(*bars, *sig, prm, rsk, fills, eq, trips, stats, rstate, out)
    for row in range(k):
        b = allocate_buffers(n, trips=16)
        nf, nb, _ = simulate_kernel(bars, sig, span, prm[row], rsk, b)
        assert out[row, 1] == nf > 10 and out[row, 0] == b.equity[nb - 1, 0]
        np.testing.assert_array_equal(fills[row, :nf], b.fills[:nf])
    assert len(set(out[:, 0])) == k  # the rows really differ
