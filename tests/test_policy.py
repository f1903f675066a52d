"""core.policy: one frozen Policy from the config; each rule's vectorised form equals its scalar
form on every real bar (the real features as inputs, a spread of P), and the scalar form
equals the rule as written in the docstring; the strategy and VolForecast run through it."""
from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
from numba.core.registry import CPUDispatcher

from core.config import Config, FeatureConfig, LabelConfig, load_config
from core.costs import Costs
from core.errors import ConfigError
from core.policy import (
    Policy,
    annualised_vol,
    barrier_prices,
    breakeven_probability,
    signal_from_probability,
    traded_labels,
    use_limit,
    weight_from_signal,
)

TOL = 1e-12


# ----------------------------------------------------------------------------- plain-Python rules
# The rules exactly as the module docstring states them (independent of the compiled code).

def _ref_signal(p: float, c: float) -> float:
    if math.isnan(p):
        return 0.0
    s = (p - c) / (1 - c) if p >= c else (p - c) / c
    return min(1.0, max(-1.0, s))


def _ref_weight(s: float, f: float, pol: Policy) -> float:
    if not (f > 0) or math.isnan(s) or math.isinf(f):
        return 0.0
    r = pol.target_vol / f * s
    if abs(r) < pol.deadband:
        return 0.0
    w = min(1.0, max(-1.0, r)) * pol.max_position
    return 0.0 if (w < 0 and not pol.allow_short) else w


@pytest.fixture(scope="module")
def real_inputs(real_candles):
    """ewma_vol_fast of every real bar (NaN in warm-ups and after the gaps), the closes and a
    spread of P: uniform draws plus the edge values 0, 1, the centres 1/3 and 0.5, and NaN."""
    from models.features import compute_features

    ewma = compute_features(real_candles)["ewma_vol_fast"].to_numpy()
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, len(ewma))
    p[::97] = 0.0
    p[1::97] = 1.0
    p[2::97] = 1 / 3
    p[3::97] = 0.5
    p[4::97] = np.nan
    return ewma, real_candles["close"].to_numpy(), p


POLICIES = {
    "default": dict(),
    "breakeven_short": dict(center="breakeven", allow_short=True, deadband=0.1),
    "tight": dict(center=0.4, target_vol=0.2, deadband=0.0, max_position=0.5, limit_confidence=0.2),
}


def _policy(name: str) -> Policy:
    return Policy.default().replace(**POLICIES[name])


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_vectorised_rules_equal_scalar_rules_on_real_bars(real_inputs, name):
    ewma, close, p = real_inputs
    pol = _policy(name)
    n = len(p)
    assert n > 85_000 and np.isnan(ewma).sum() > 0 and np.isfinite(ewma).sum() > 85_000

    fvol = pol.forecast_vols(ewma)
    fvol_s = np.array([pol.forecast_vol(e) for e in ewma])
    np.testing.assert_allclose(fvol, fvol_s, rtol=TOL, atol=0, equal_nan=True)
    np.testing.assert_allclose(fvol, ewma * math.sqrt(35040), rtol=TOL, equal_nan=True)

    s = pol.signals(p)
    s_s = np.array([pol.signal(x) for x in p])
    np.testing.assert_allclose(s, s_s, rtol=0, atol=TOL)
    np.testing.assert_allclose(s, [_ref_signal(x, pol.center) for x in p], rtol=0, atol=TOL)
    assert s.min() == -1.0 and s.max() == 1.0 and (s[4::97] == 0).all()

    w = pol.target_weights(s, fvol)
    w_s = np.array([pol.target_weight(a, b) for a, b in zip(s, fvol)])
    np.testing.assert_allclose(w, w_s, rtol=0, atol=TOL)
    np.testing.assert_allclose(w, [_ref_weight(a, b, pol) for a, b in zip(s, fvol)], rtol=0, atol=TOL)
    assert (w == 0).any() and (w != 0).any()
    assert ((w < 0).any()) == pol.allow_short

    conf = np.abs(s)
    lim = pol.use_limits(conf)
    assert lim.dtype == bool
    assert np.array_equal(lim, np.array([pol.use_limit(c) for c in conf]))
    assert np.array_equal(lim, conf >= pol.limit_confidence) and lim.any() and (~lim).any()

    long = s >= 0
    tp, sl = pol.barrier_prices_array(close, long)
    tp_s, sl_s = np.array([pol.barrier_prices(c, lg) for c, lg in zip(close, long)]).T
    np.testing.assert_allclose(tp, tp_s, rtol=TOL, atol=0)
    np.testing.assert_allclose(sl, sl_s, rtol=TOL, atol=0)
    np.testing.assert_allclose(tp, np.where(long, close * (1 + pol.profit), close * (1 - pol.profit)), rtol=TOL)
    np.testing.assert_allclose(sl, np.where(long, close * (1 - pol.stop), close * (1 + pol.stop)), rtol=TOL)


def test_scalar_rules_are_compiled_functions_of_plain_numbers():
    # the same objects the reference kernel calls (numba dispatchers), callable from Python
    for fn in (signal_from_probability, annualised_vol, weight_from_signal, use_limit, barrier_prices):
        assert isinstance(fn, CPUDispatcher)
    assert signal_from_probability(0.75, 0.5) == 0.5
    assert weight_from_signal(0.8, 1.0, 0.5, 0.3, 0.95, False) == pytest.approx(0.38)
    assert barrier_prices(100.0, False, 0.008, 0.004) == pytest.approx((99.2, 100.4))


def test_policy_from_config_resolves_everything_once():
    cfg = load_config(overrides=["strategy.center=breakeven", "risk.max_position=0.8", "strategy.limit_tif_bars=3",
                                 "execution.taker_fee=0.0005", "execution.maker_fee=0.0002"])
    pol = Policy.from_config(cfg)
    assert pol.center == pytest.approx(breakeven_probability(0.008, 0.004, 0.0005))
    assert pol.breakeven_center and isinstance(pol.center, float)
    assert pol.max_position == 0.8  # min(strategy 0.95, risk 0.8)
    assert (pol.limit_tif_bars, pol.max_hold, pol.tie) == (3, 8, "stop")  # max_hold null -> labels.horizon
    assert (pol.taker_fee, pol.maker_fee, pol.slippage_bps) == (0.0005, 0.0002, 2.0)
    assert pol.ann_factor == math.sqrt(35040) and pol.timeframe == "15m"
    assert pol.costs == Costs(0.0005, 0.0002, 2.0) and pol.slippage == Costs.from_config(cfg).slippage
    with pytest.raises(dataclasses.FrozenInstanceError):
        pol.deadband = 0.1  # type: ignore[misc]
    assert Policy.default() == Policy.from_config(Config())


def test_policy_takes_barriers_and_timeframe_from_the_bundle():
    bundle = SimpleNamespace(label_cfg=LabelConfig(profit=0.01, stop=0.005, horizon=6, tie="profit"),
                             feature_cfg=FeatureConfig(), timeframe="1h")
    cfg = load_config(overrides=["labels.profit=0.01", "labels.stop=0.005", "labels.horizon=6", "labels.tie=profit"])
    pol = Policy.from_config(cfg, bundle)
    assert (pol.profit, pol.stop, pol.max_hold, pol.tie, pol.timeframe) == (0.01, 0.005, 6, "profit", "1h")
    assert pol.ann_factor == pytest.approx(math.sqrt(365 * 24))
    with pytest.raises(ConfigError, match="differ from the bundle"):
        Policy.from_config(load_config(), bundle)
    assert traded_labels(load_config(), bundle, "config")[1] == "config"


def test_replace_keeps_derived_fields_consistent():
    base = Policy.default()
    be = base.replace(center="breakeven")
    assert be.center == pytest.approx(breakeven_probability(base.profit, base.stop, base.taker_fee))
    wider = be.replace(profit=0.02)  # the break-even centre follows the barriers ...
    assert wider.center == pytest.approx(breakeven_probability(0.02, base.stop, base.taker_fee))
    fixed = wider.replace(center=0.4)  # ... until a fixed centre is set
    assert (fixed.center, fixed.breakeven_center) == (0.4, False)
    assert fixed.replace(profit=0.03).center == 0.4
    assert base.replace(timeframe="1h").ann_factor == pytest.approx(math.sqrt(8760))
    cheap = be.with_costs(Costs(0.0, 0.0, 0.0))
    assert cheap.center == pytest.approx(1 / 3) and cheap.slippage == 0.0
    with pytest.raises(ConfigError, match="unknown policy field"):
        base.replace(fee_rate=0.1)
    with pytest.raises(ConfigError, match="tie"):
        base.replace(tie="both")
    with pytest.raises(ConfigError, match="center"):
        base.replace(center=1.5)


def test_to_array_is_the_kernel_row():
    from core.policy import POLICY_VECTOR

    pol = Policy.default().replace(tie="profit", allow_short=True, slippage_bps=5.0)
    row = dict(zip(POLICY_VECTOR, pol.to_array()))
    assert row["tie_profit"] == 1.0 and row["allow_short"] == 1.0 and row["slippage"] == pol.slippage
    assert row["bar_ns"] == 900e9 and row["max_hold"] == pol.max_hold and row["center"] == pol.center


def test_breakeven_formula_lives_in_core():
    import models.labels

    assert models.labels.breakeven_probability is breakeven_probability  # models re-exports core's


def test_vol_forecast_indicator_computes_through_the_policy(real_candles):
    import backtrader as bt

    from indicators.bt_features import VolForecast
    from models.features import compute_features
    from strategies.backtest import frame_feed

    frame = real_candles.iloc[28500:29300]  # crosses the 2023-03-24 gap

    class Probe(bt.Strategy):
        def __init__(self):
            self.vol = VolForecast(self.data)

    lines = {}
    for runonce in (True, False):
        cerebro = bt.Cerebro(stdstats=False, runonce=runonce, preload=True)
        cerebro.adddata(frame_feed(frame))
        cerebro.addstrategy(Probe)
        lines[runonce] = np.frombuffer(cerebro.run()[0].vol.vol.array, dtype="float64")[:len(frame)].copy()
    expected = Policy.default().forecast_vols(compute_features(frame)["ewma_vol_fast"].to_numpy())
    np.testing.assert_allclose(lines[True], expected, rtol=0, atol=0, equal_nan=True)
    np.testing.assert_allclose(lines[False], expected, rtol=1e-12, equal_nan=True)
    assert np.isfinite(expected).sum() > 600


def test_strategy_hooks_call_the_policy(tmp_path):
    from core.synthetic import synthetic_ohlcv
    from strategies.backtest import run_backtest
    from strategies.base import ModelStrategy

    from bt_helpers import LineStrategy, loose_risk, with_lines

    assert not any(name in dict(ModelStrategy.params._getitems()) for name in ("center", "deadband", "profit"))
    seen = {}

    class Probe(LineStrategy):
        def next(self):
            super().next()
            if len(self) == 300:
                bars = synthetic_ohlcv(3, seed=2)
                seen["s"] = self.signal(np.array([0.8]), bars.iloc[:1])
                seen["w"] = self.target_weight(np.array([0.6]), np.array([0.75]), bars.iloc[:1])
                seen["allowed"] = self.entry_allowed(bars)
                seen["bar"] = self.policy.barrier_prices(100.0, True)
                seen["policy"] = self.policy
                seen["now"] = self.bar_signal()

    run_backtest(None, with_lines(synthetic_ohlcv(400, seed=1), 0.5, 0.75), load_config(), strategy=Probe,
                 progress=False, strategy_kwargs={"risk": loose_risk(tmp_path), "center": 0.6, "profit": 0.01})
    pol = seen["policy"]
    assert (pol.center, pol.profit) == (0.6, 0.01)  # strategy_kwargs replaced policy fields
    assert seen["s"] == pytest.approx([0.5])
    assert seen["w"] == pytest.approx([pol.target_weight(0.6, 0.75)])
    assert seen["allowed"].tolist() == [True, True, True]
    p_now, s_now, w_now = seen["now"]  # this bar's values through the hooks: P 0.5 below the centre 0.6
    assert (p_now, s_now) == (0.5, pytest.approx(pol.signal(0.5))) and s_now < 0 and w_now == 0.0
    assert seen["bar"] == pytest.approx((101.0, 99.6))
