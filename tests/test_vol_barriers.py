"""Volatility-scaled barriers (``labels.scale: vol``) traded by every engine.

The width ``w_t = sigma_t * sqrt(horizon)`` is one causal function of the bars
(:func:`models.labels.barrier_widths`); the policy's profit/stop are then multiples of it, the
entry's take profit and stop are set at the decision bar exactly where the labeller puts that
bar's barriers, and backtrader, the reference simulator, the sweep and a paper session trade the
same fills.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import core.decision as D
from core.config import LabelConfig, load_config
from core.errors import ConfigError
from core.policy import POLICY_VECTOR, Policy, barrier_width, breakeven_probability
from core.risk import ALLOW, RiskManager
from core.simulator import RunOptions, as_signals, simulate
from core.synthetic import synthetic_ohlcv
from indicators.bt_features import feed_frame
from models.features import FEATURE_NAMES, StreamingFeatures
from models.labels import (barrier_widths, policy_widths, triple_barrier_events, vol_barrier_factors,
                           width_feature_config)
from strategies.backtest import run_backtest
from strategies.hooks import evaluate_hooks

from bt_helpers import LineStrategy, with_lines
from test_simulator_parity import _assert_parity, _capturing, _line, _loose

VOL_SETS = ["labels.scale=vol", "labels.vol_profit=1.2", "labels.vol_stop=0.8", "labels.vol_span=14",
            "labels.horizon=6"]
VOL_LABELS = LabelConfig(scale="vol", vol_profit=1.2, vol_stop=0.8, vol_span=14, horizon=6)


# ----------------------------------------------------------------------------- the width
def test_barrier_width_is_causal_and_the_streaming_path_agrees():
    frame = synthetic_ohlcv(900, seed=5, gaps={500: 3})
    full = barrier_widths(frame, 6, 14)
    assert np.isnan(full[:14]).all() and np.isfinite(full[14:500]).all()  # warm-up, then known
    assert np.isnan(full[501:501 + 14]).all()  # the warm-up restarts after the gap
    for k in (20, 137, 499, 501, 520, 899):
        # appending later bars never changes a width already computed (bit for bit)
        np.testing.assert_array_equal(barrier_widths(frame.iloc[:k], 6, 14), full[:k])
    # the streaming path of paper/live (indicators.bt_features.BarrierWidth.next)
    stream = StreamingFeatures(width_feature_config(14))
    col = FEATURE_NAMES.index("ewma_vol_fast")
    live = np.array([barrier_width(float(stream.update(t, *row)[col]), 6)
                     for t, row in zip(frame.index, frame[["open", "high", "low", "close", "volume"]].to_numpy())])
    np.testing.assert_allclose(live, full, rtol=1e-12, equal_nan=True)
    # its own span, not the features' ewma_vol_fast_span (20 by default)
    assert not np.allclose(barrier_widths(frame, 6, 20)[40:400], full[40:400])
    # the labeller's factors are built from the same widths
    up, dn = vol_barrier_factors(frame, VOL_LABELS)
    np.testing.assert_array_equal(up, 1.0 + 1.2 * full)
    np.testing.assert_array_equal(dn, 1.0 - 0.8 * full)


def test_the_one_warm_up_covers_the_barrier_widths_memory(fast_bundle):
    """A long vol_span: the warm-up every engine feeds (a request, a stream's opening, a paper
    restart) grows to the width's memory, so the width at a bar no longer depends on where the
    bars begin; the model's warm-up alone would not do."""
    from models.bundle import load_bundle
    from models.labels import width_memory_bars
    from strategies.backtest import warmup_bars_for

    bundle = load_bundle(fast_bundle)
    base = warmup_bars_for(bundle, load_config(None))
    assert warmup_bars_for(bundle, load_config(None, VOL_SETS)) == base  # span 14: the model's warm-up is longer
    warm = warmup_bars_for(bundle, load_config(None, [*VOL_SETS, "labels.vol_span=300"]))
    assert warm == width_memory_bars(300) > base
    frame = synthetic_ohlcv(warm + 600, seed=2)
    full = barrier_widths(frame, 6, 300)
    for end in (warm, warm + 600):
        assert barrier_widths(frame.iloc[end - warm:end], 6, 300)[-1] == pytest.approx(full[end - 1], rel=1e-9)
    short = barrier_widths(frame.iloc[len(frame) - base:], 6, 300)[-1]
    assert abs(short / full[-1] - 1.0) > 1e-4  # one model warm-up of bars: the width still remembers its start


def test_policy_of_a_vol_model_and_fixed_policies_unchanged():
    fixed = Policy.from_config(load_config(None, []))
    assert fixed == Policy.default() and not fixed.vol_scaled and fixed.barrier_scale == "fixed"
    assert np.all(policy_widths(synthetic_ohlcv(50, seed=1), fixed) == 1.0)
    assert fixed.barrier_prices(100.0, True) == (100.0 * (1.0 + 0.008), 100.0 * (1.0 - 0.004))
    pol = Policy.from_config(load_config(None, VOL_SETS))
    assert pol.vol_scaled and (pol.profit, pol.stop, pol.barrier_horizon, pol.vol_span) == (1.2, 0.8, 6, 14)
    scaled = POLICY_VECTOR.index("vol_scaled")
    assert pol.to_array()[scaled] == 1.0 and fixed.to_array()[scaled] == 0.0
    assert "volatility-scaled" in pol.describe_barriers() and "fixed" in fixed.describe_barriers()
    assert pol.barrier_prices(100.0, True, 0.01) == (100.0 * (1.0 + 1.2 * 0.01), 100.0 * (1.0 - 0.8 * 0.01))
    assert pol.barrier_prices(100.0, False, 0.01) == (100.0 * (1.0 - 1.2 * 0.01), 100.0 * (1.0 + 0.8 * 0.01))


def test_breakeven_centre_is_per_bar_and_no_entry_below_the_fee():
    pol = Policy.from_config(load_config(None, [*VOL_SETS, "strategy.center=breakeven", "strategy.deadband=0"]))
    width = np.array([0.02, 0.005, 0.001, np.nan])
    c = pol.centers(width)
    assert c[0] == pytest.approx(breakeven_probability(1.2 * 0.02, 0.8 * 0.02, 0.001), rel=1e-15)
    assert c[1] == pytest.approx((0.8 * 0.005 + 0.002) / (2.0 * 0.005), rel=1e-15)
    assert math.isnan(c[2]) and math.isnan(c[3])  # 1.2 x 0.001 does not cover 2 x 0.001; no width
    s = pol.signals(np.full(4, 0.9), width)
    assert s[0] > s[1] > 0 and s[2] == 0.0 and s[3] == 0.0
    with pytest.raises(ConfigError, match="per bar"):
        pol.signals(np.full(4, 0.9))  # a per-bar centre without the widths is refused, not guessed
    # the decision step: a bar whose profit width does not exceed the round trip gets no order
    rules = D.rules_of(pol.to_array())
    assert rules.min_profit_width == pytest.approx(0.002)
    gate = D.Gate(ALLOW, 0, False, False, 0.95)
    st = D.SymbolState(0.0, 10_000.0, 100.0, -1, False, False, 0, False, False, math.nan, math.nan)
    for w, enters in ((0.02, True), (0.0015, False), (np.nan, False), (0.0017, True)):
        a = D.decide(gate, st, D.BarSignal(0.9, 0.5, 0.5, True, True, w), rules)
        assert bool(a.mask & D.A_ENTER) == enters, w
        assert a.mask & D.A_DECIDED  # still counted as a decision
        if enters:
            assert (a.take_profit, a.stop) == (100.0 * (1.0 + 1.2 * w), 100.0 * (1.0 - 0.8 * w))
    # fixed barriers: the width is 1 and no such check (existing behaviour)
    fixed = D.rules_of(Policy.default().to_array())
    assert fixed.min_profit_width == -math.inf
    a = D.decide(gate, st, D.BarSignal(0.9, 0.5, 0.5, True, True), fixed)
    assert a.mask & D.A_ENTER and (a.take_profit, a.stop) == (100.0 * 1.008, 100.0 * (1.0 - 0.004))


# ----------------------------------------------------------------------------- backtrader == simulator
class RecordingLine(LineStrategy):
    """LineStrategy that records every entry's decision bar and its barrier prices."""

    def apply_actions(self, a):
        if a.mask & D.A_ENTER:
            self.__dict__.setdefault("entries", []).append((self._bar, a.price, a.take_profit, a.stop))
        super().apply_actions(a)


def _pair_vol(frame, cfg, risk, coc=False, **kw):
    cls, seen = _capturing(RecordingLine)
    res = run_backtest(None, frame, cfg, strategy=cls, coc=coc, progress=False, allow_in_sample=True,
                       strategy_kwargs={"risk": RiskManager(risk), **kw})
    strat = seen[-1]
    fed = feed_frame(strat.data)
    n = len(fed)
    start = max(int(fed.index.searchsorted(res.start)), strat._minperiod - 1)
    end = int(fed.index.searchsorted(res.end, side="right")) - 1
    prob, fvol = _line(strat.prob, n), _line(strat.vol_forecast, n)
    width = policy_widths(fed, strat.policy)
    # the strategy's own width line is the labeller's function of the same bars
    np.testing.assert_array_equal(_line(strat.barrier_width, n), width)
    h = evaluate_hooks(strat, fed, prob, fvol, width)
    sim = simulate(strat.policy, risk, fed, prob, fvol, _line(strat.realised_vol, n), cfg.execution.cash,
                   RunOptions(start=start, end=end, coc=coc), signals=as_signals(h.prob, h.signal, h.weight, h.allowed),
                   width=width)
    return res, sim, fed, strat


@pytest.fixture(scope="module")
def real_span(real_candles):
    """3,600 real bars across the data gap of 2023-03-24 12:30."""
    return real_candles.iloc[27000:30600]


@pytest.mark.parametrize("entry,coc", [("market", False), ("limit", True)])
def test_oracle_vol_barriers_backtrader_equals_simulator_and_the_labels(tmp_path, real_span, entry, coc):
    cfg = load_config(overrides=[*VOL_SETS, "execution.maker_fee=0.0005"])
    events = triple_barrier_events(real_span, VOL_LABELS)
    prob = (events["label"] == 1).astype(float).to_numpy()  # P = 1 where the vol label says profit first
    res, sim, fed, strat = _pair_vol(with_lines(real_span, prob), cfg, _loose(tmp_path), coc=coc,
                                     limit_confidence=2.0 if entry == "market" else 0.5)
    assert strat.policy.vol_scaled and res.metrics["run"]["barriers"]["rule"] == "vol"
    assert "sigma_t*sqrt(6)" in res.metrics["run"]["barriers"]["text"]
    assert len(res.trades) > 50
    assert (res.trades["exit_kind"] == "take_profit").mean() > 0.7  # the oracle mostly wins
    _assert_parity(f"vol barriers oracle {entry} coc={coc}", res, sim)
    # every traded take profit / stop is the label's barrier of its decision bar, bit for bit
    up, dn = vol_barrier_factors(fed, VOL_LABELS)
    close = fed["close"].to_numpy()
    entries = strat.entries
    assert len(entries) >= len(res.trades)
    for bar, ref, tp, sl in entries:
        assert ref == close[bar]
        assert tp == close[bar] * up[bar] and sl == close[bar] * dn[bar], bar
    # and the exits that filled at a barrier mid-bar filled at exactly that price
    widths = np.array([tp / ref - 1.0 for _, ref, tp, _ in entries])
    assert widths.std() > 0.2 * widths.mean()  # the barriers really move with the volatility


def test_bars_whose_profit_width_misses_the_fee_are_not_entered(tmp_path, real_span):
    """A tiny profit multiple: on calm bars 0.3 x w_t is below the 0.2% round trip, no entry there."""
    cfg = load_config(overrides=[*VOL_SETS, "labels.vol_profit=0.3", "strategy.deadband=0"])
    prob = np.full(len(real_span), 0.9)
    res, sim, fed, strat = _pair_vol(with_lines(real_span, prob), cfg, _loose(tmp_path))
    _assert_parity("vol barriers fee gate", res, sim)
    width = policy_widths(fed, strat.policy)
    bars = [b for b, *_ in strat.entries]
    assert len(bars) > 10
    assert (0.3 * width[bars] > 0.002).all()
    flat_low = np.flatnonzero(np.isfinite(width) & (0.3 * width <= 0.002))
    assert len(flat_low) > 100  # the gate had bars to refuse


def test_simulate_refuses_a_vol_policy_without_widths():
    pol = Policy.from_config(load_config(None, VOL_SETS))
    frame = synthetic_ohlcv(50, seed=2)
    with pytest.raises(ValueError, match="barrier widths"):
        simulate(pol, load_config(None, []).risk, frame, np.full(50, 0.9), np.full(50, 0.5), np.full(50, 0.1), 1e4)


# ----------------------------------------------------------------------------- sweep and paper
SWEEP_SETS = ["strategy.center=0.3", "strategy.deadband=0.0", "execution.taker_fee=0.001",
              "execution.maker_fee=0.0005", "execution.slippage_bps=3.0", *VOL_SETS]
VOL_GRID = """\
grid:
  profit: [0.9, 1.2, 2.0]   # multiples of sigma_t*sqrt(horizon) for a vol-scaled policy
  stop: [0.8, 1.5]
  max_hold: [6]
  limit_confidence: [0.05, 1.0]
blocks: 8
folds: 2
top: 3
"""


@pytest.mark.timeout(300)
def test_sweep_rows_of_a_vol_policy_match_backtrader(tiny_bundle, tmp_path):
    from models.bundle import load_bundle
    from sweeps.engine import axis_defaults, prepare_span, run_sweep
    from sweeps.grid import load_grid, replay_sets
    from sweeps.report import barrier_rule_text, manifest

    from test_sweep import _compare

    bundle = load_bundle(tiny_bundle)
    frame = synthetic_ohlcv(4000, seed=11, gaps={1800: 10})
    cfg = load_config(None, SWEEP_SETS)
    cache = tmp_path / "cache"
    # a fixed-barrier bundle traded with the config's vol-scaled barriers (the explicit opt-in)
    data = prepare_span(bundle, frame, cfg, barriers="config", cache_dir=cache, blocks=8, folds=2)
    assert data.policy.vol_scaled and data.inputs.width is not None
    np.testing.assert_array_equal(data.inputs.width, policy_widths(data.frame, data.policy))
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(VOL_GRID)
    with pytest.raises(ConfigError, match=r"grid\.profit\[1\]: 1\.2 must be < 1"):
        load_grid(grid_file, [], axis_defaults(data))  # read as fractions, the multiples are refused
    with pytest.raises(ConfigError, match=r"sweep\.yaml: grid\.profit\[0\]: 0\.006 must be a multiple of the bar"):
        load_grid(None, [], axis_defaults(data), barrier_scale="vol")  # the default file's fractions, refused
    result = run_sweep(data, load_grid(grid_file, [], axis_defaults(data), barrier_scale="vol"))
    t = result.table
    assert "multiples of the decision bar's sigma_t*sqrt(6)" in barrier_rule_text(result)
    assert manifest(result, command="test")["barriers"]["rule"] == "vol"
    # other multiples are other trades (the axes really move the barriers)
    assert t["trades"].nunique() > 1 and t["exits_take_profit"].nunique() > 1
    assert np.isfinite(t["base_rate"]).all() and np.isfinite(t["breakeven_p"]).all()
    for profit, stop, lc in ((1.2, 0.8, 1.0), (2.0, 1.5, 0.05), (0.9, 0.8, 0.05)):
        row = int(t.index[(t["profit"] == profit) & (t["stop"] == stop) & (t["limit_confidence"] == lc)][0])
        row_cfg = load_config(None, [*SWEEP_SETS, *replay_sets(t.loc[row], vol_scaled=True)])
        assert row_cfg.labels.vol_profit == profit and row_cfg.labels.scale == "vol"
        bt = run_backtest(bundle, frame, row_cfg, progress=False, barriers="config", prob_cache=cache)
        assert bt.metrics["run"]["barriers"]["rule"] == "vol" and bt.metrics["run"]["barriers"]["profit"] == profit
        assert _compare(result, row, bt) > 5


def _walk_rate(frame, width, first, last, profit, stop, hold):
    """Share of bars first..last whose long trade at the close with take profit close*(1 + profit*w)
    and stop close*(1 - stop*w) reaches the take profit first within ``hold`` bars (ties to the
    stop; bars without a full hold or a width are not counted): a plain walk, bar by bar."""
    high, low, close = (frame[c].to_numpy() for c in ("high", "low", "close"))
    wins = labelled = 0
    for t in range(first, min(last, len(frame) - 1 - hold) + 1):
        if not np.isfinite(width[t]):
            continue
        up, dn = close[t] * (1.0 + profit * width[t]), close[t] * (1.0 - stop * width[t])
        labelled += 1
        for h in range(1, hold + 1):
            if low[t + h] <= dn:
                break
            if high[t + h] >= up:
                wins += 1
                break
    return wins / labelled


def test_sweep_base_rate_of_vol_rows_describes_the_traded_width():
    """A row with max_hold 12 on a model trained with horizon 6 trades barriers at multiples of
    sigma_t*sqrt(6) held up to 12 bars: its base rate labels exactly that trade (not the width
    sqrt(12) that labels.horizon=12 would give)."""
    from types import SimpleNamespace

    from sweeps.engine import label_base_rates

    frame = synthetic_ohlcv(1500, seed=3)
    pol = Policy.from_config(load_config(None, VOL_SETS))
    width = policy_widths(frame, pol)  # the traded width: sigma_t * sqrt(6)
    data = SimpleNamespace(frame=frame, policy=pol, timeframe="15m",
                           inputs=SimpleNamespace(first=100, last=1450, width=width))
    combos = pd.DataFrame({"profit": [1.2, 1.2, 2.0], "stop": [0.8, 0.8, 0.5], "max_hold": [6, 12, 12]})
    rates = label_base_rates(data, combos)
    for k, (p, s, hold) in enumerate(combos.itertuples(index=False, name=None)):
        assert rates[k] == _walk_rate(frame, width, 100, 1450, p, s, hold), k
    # the width a horizon of 12 would give is another event (today's old base rate): told apart
    wider = barrier_widths(frame, 12, 14)
    assert abs(_walk_rate(frame, wider, 100, 1450, 1.2, 0.8, 12) - rates[1]) > 0.02


def _per_bar_grid(base_center: str):
    """A vol policy, its widths on 1,500 bars, and three rows: break-even centres of 1.2/0.8 and
    2.4/1.6 (one fee-free ratio, other centres per bar) and a fixed centre 0.45."""
    from sweeps.engine import axis_defaults, policy_rows

    frame = synthetic_ohlcv(1500, seed=3)
    pol = Policy.from_config(load_config(None, [*VOL_SETS, f"strategy.center={base_center}", "strategy.deadband=0"]))
    width = policy_widths(frame, pol)
    axes = axis_defaults(pol, center=base_center)
    combos = pd.DataFrame([{**axes, "center": "breakeven", "profit": 1.2, "stop": 0.8},
                           {**axes, "center": "breakeven", "profit": 2.4, "stop": 1.6},
                           {**axes, "center": 0.45, "profit": 1.2, "stop": 0.8}])
    return frame, pol, width, combos, policy_rows(pol, combos)


def test_sweep_flat_warning_and_center_used_with_a_per_bar_centre():
    """The flat-rows caution names the lowest per-bar break-even centre on the span (and P's
    best margin over its own bar's), not the policy's one fee-free number; center_used of a
    per-bar row is the median of its centres."""
    from types import SimpleNamespace

    from sweeps.engine import SweepResult, per_bar_centers

    frame, pol, width, combos, params = _per_bar_grid("breakeven")
    prob = np.full(len(frame), 0.42)
    data = SimpleNamespace(frame=frame, policy=pol, timeframe="15m",
                           inputs=SimpleNamespace(first=100, start=120, last=1450, width=width, prob=prob))
    w = width[120:1451]
    with np.errstate(invalid="ignore"):
        c1 = np.where(1.2 * w > 0.002, (0.8 * w + 0.002) / (2.0 * w), np.nan)
        c2 = np.where(2.4 * w > 0.002, (1.6 * w + 0.002) / (4.0 * w), np.nan)
    low = np.fmin(c1, c2)
    centers = per_bar_centers(data, combos, params)
    np.testing.assert_allclose(centers.lowest, low, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(centers.median[:2], [np.nanmedian(c1), np.nanmedian(c2)], rtol=1e-12)
    assert math.isnan(centers.median[2])  # a fixed centre is one number
    table = combos.assign(trades=0, open_trades=0, center_used=[*centers.median[:2], 0.45])
    result = SweepResult(grid=None, data=data, table=table, params=params, raw=None, moments=None, folds=None,
                         overfit=SimpleNamespace(cautions=[]), walk_forward=None, names=[], buy_and_hold={})
    (text,) = result.warnings()
    assert text.startswith("3 of 3 rows never traded: the highest P on the span is 0.420 and the lowest centre "
                           "swept is 0.450;"), text
    assert f"the lowest centre on any bar is {np.nanmin(low):.3f}" in text
    assert f"P minus the lowest centre of its own bar is at most {np.nanmax(0.42 - low):+.3f}" in text
    assert np.nanmin(low) > 0.41  # above the fee-free 0.400 the policy's one number holds


def test_sweep_hook_groups_follow_per_bar_centres_of_a_numeric_base():
    """A base centre of 0.5 and rows with center 'breakeven': rows whose multiples share the fee-free
    ratio still get their own per-bar centres (their own hook group and signal)."""
    from types import SimpleNamespace

    from strategies.hooks import hook_instance
    from strategies.tcn import TCNStrategy
    from sweeps.engine import hook_groups, row_policy

    frame, pol, width, combos, params = _per_bar_grid("0.5")
    assert not pol.per_bar_center
    prob = np.random.default_rng(1).uniform(0.3, 0.7, len(frame))
    fvol = np.full(len(frame), 0.5)
    inputs = SimpleNamespace(prob=prob, fvol=fvol, width=width,
                             with_hooks=lambda s, w, a: SimpleNamespace(signal=s, weight=w, allowed=a))
    got, group = hook_groups(SimpleNamespace(frame=frame, inputs=inputs), pol, combos, params)
    assert len(set(group.tolist())) == 3
    for r in range(3):
        want = evaluate_hooks(hook_instance(TCNStrategy, row_policy(pol, combos.iloc[r].to_dict())), frame, prob,
                              fvol, width).signal
        np.testing.assert_array_equal(got.signal[int(group[r])], want)


def test_sweep_per_bar_row_and_a_numeric_centre_equal_to_its_ratio_keep_their_own_signals():
    """center 'breakeven' at 1.2/0.8 stores the fee-free ratio 0.4 in its policy row; a row with
    the number 0.4 and the same multiples must still get its own signal (a shared hook group gave
    the break-even row the 0.4 row's trades)."""
    from types import SimpleNamespace

    from strategies.hooks import hook_instance
    from strategies.tcn import TCNStrategy
    from sweeps.engine import axis_defaults, hook_groups, policy_rows, row_policy

    frame = synthetic_ohlcv(1500, seed=3)
    pol = Policy.from_config(load_config(None, [*VOL_SETS, "strategy.center=0.5", "strategy.deadband=0"]))
    width = policy_widths(frame, pol)
    axes = axis_defaults(pol, center="0.5")
    combos = pd.DataFrame([{**axes, "center": 0.4, "profit": 1.2, "stop": 0.8},
                           {**axes, "center": "breakeven", "profit": 1.2, "stop": 0.8}])
    params = policy_rows(pol, combos)
    centre = POLICY_VECTOR.index("center")
    assert params[0, centre] == params[1, centre]  # same number in the centre column: only the flag tells them apart
    assert params[:, POLICY_VECTOR.index("per_bar_center")].tolist() == [0.0, 1.0]
    prob = np.random.default_rng(2).uniform(0.3, 0.7, len(frame))
    inputs = SimpleNamespace(prob=prob, fvol=np.full(len(frame), 0.5), width=width,
                             with_hooks=lambda s, w, a: SimpleNamespace(signal=s, weight=w, allowed=a))
    got, group = hook_groups(SimpleNamespace(frame=frame, inputs=inputs), pol, combos, params)
    assert group[0] != group[1]
    for r in range(2):
        want = evaluate_hooks(hook_instance(TCNStrategy, row_policy(pol, combos.iloc[r].to_dict())), frame, prob,
                              inputs.fvol, width).signal
        np.testing.assert_array_equal(got.signal[int(group[r])], want)
    assert not np.array_equal(got.signal[int(group[0])], got.signal[int(group[1])])


@pytest.mark.timeout(240)
def test_paper_session_trades_vol_barriers_as_the_backtest(tmp_path, fast_bundle):
    from models.bundle import load_bundle
    from strategies.backtest import warmup_bars_for
    from venues.replay import ReplayExchange

    from test_paper_session import TF, assert_same_as_backtest, journal_view, make_cfg, ms, run_session

    fast = load_bundle(fast_bundle)
    cfg = make_cfg(tmp_path, *VOL_SETS, "labels.vol_profit=0.9", "labels.vol_stop=0.9")
    warm = warmup_bars_for(fast, cfg)
    frame = synthetic_ohlcv(warm + 260, seed=29, start="2024-03-01")
    s, e = frame.index[warm + 10], frame.index[warm + 249]
    bt_res = run_backtest(fast, frame, cfg, start=s, end=e + TF, progress=False, allow_in_sample=True,
                          barriers="config")
    assert bt_res.metrics["run"]["barriers"]["rule"] == "vol"
    with ReplayExchange(frame, start=s + pd.Timedelta("1min")) as ex:
        run_session(fast_bundle, cfg, tmp_path / "vol.db", ex, stop_ms=ms(e), barriers="config")
    assert_same_as_backtest(journal_view(tmp_path / "vol.db"), bt_res, s, e, min_fills=6)
    assert {"take_profit", "stop"} & set(bt_res.trades["exit_kind"])  # barrier exits were traded


def test_predict_places_the_vol_barriers_of_the_scored_bar(tiny_bundle):
    from server.predict import PolicyOverrides, predict_frame
    from server.views import model_info
    from server.setup import build_setup

    cfg = load_config(None, [*VOL_SETS, "strategy.center=breakeven"])
    setup = build_setup(cfg, tiny_bundle, barriers="config")
    assert setup.policy.vol_scaled
    frame = synthetic_ohlcv(setup.min_bars + 40, seed=31, start="2024-05-01")
    widths = barrier_widths(frame, 6, 14)  # over more bars than a request carries: the same numbers
    for end in (setup.min_bars, setup.min_bars + 17, setup.min_bars + 40):
        pred = predict_frame(setup, frame.iloc[end - setup.min_bars:end])
        w, close = widths[end - 1], float(frame["close"].iloc[end - 1])
        assert pred.barriers.take_profit == pytest.approx(close * (1.0 + 1.2 * w), rel=1e-12)
        assert pred.barriers.stop == pytest.approx(close * (1.0 - 0.8 * w), rel=1e-12)
        # the break-even centre of this bar's widths, not a fixed number
        assert pred.center == pytest.approx((0.8 * w + 0.002) / (2.0 * w), rel=1e-9)
        assert pred.barrier_width == pytest.approx(w, rel=1e-12)  # the answer names the width
    # profit/stop overrides are multiples of the width, as the policy's; a fraction is refused in one line
    window = frame.iloc[-setup.min_bars:]
    wider = predict_frame(setup, window, PolicyOverrides(profit=2.5, stop=1.5))
    assert wider.barriers.take_profit == pytest.approx(close * (1.0 + 2.5 * w), rel=1e-12)
    assert wider.barriers.stop == pytest.approx(close * (1.0 - 1.5 * w), rel=1e-12)
    with pytest.raises(ConfigError, match=r"^policy\.profit: 0\.008 is read as a multiple of the bar's "
                                          r"sigma_t\*sqrt\(6\) .* not a fraction of the price$"):
        predict_frame(setup, window, PolicyOverrides(profit=0.008))
    assert model_info(setup)["policy"]["barrier_rule"].startswith("volatility-scaled: take profit +1.2 x, stop -0.8 x")
    # a fee the bar's profit width cannot cover: no centre (null), no signal, no side
    costly = build_setup(load_config(None, [*VOL_SETS, "strategy.center=breakeven", "execution.taker_fee=0.05"]),
                         tiny_bundle, barriers="config")
    pred = predict_frame(costly, window)
    assert 1.2 * pred.barrier_width < 0.1
    assert pred.center is None and pred.signal == 0.0 and pred.side is None
