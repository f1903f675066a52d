"""Signal, vol-scaled sizing, deadband, clip and long-only: pure rules and inside backtrader."""
from __future__ import annotations

import math

import numpy as np
import pytest

from core.config import load_config
from core.costs import Costs
from core.synthetic import synthetic_ohlcv
from models.labels import breakeven_probability
from strategies.backtest import run_backtest
from core.policy import signal_from_probability, weight_from_signal
from strategies.base import strategy_params

from bt_helpers import LineStrategy, loose_risk, with_lines


@pytest.mark.parametrize("p", [0.0, 0.1, 0.37, 0.5, 0.62, 0.9, 1.0])
def test_signal_center_half_is_two_p_minus_one(p):
    assert signal_from_probability(p, 0.5) == pytest.approx(2 * p - 1)


def test_signal_is_zero_at_center_and_spans_minus_one_to_one():
    c = 1 / 3
    assert signal_from_probability(c, c) == 0.0
    assert signal_from_probability(1.0, c) == pytest.approx(1.0)
    assert signal_from_probability(0.0, c) == pytest.approx(-1.0)
    assert signal_from_probability(c + (1 - c) / 2, c) == pytest.approx(0.5)
    assert signal_from_probability(c / 2, c) == pytest.approx(-0.5)
    assert signal_from_probability(float("nan"), 0.5) == 0.0


def test_breakeven_center_from_config_fees():
    cfg = load_config(overrides=["strategy.center=breakeven"])
    policy = strategy_params(cfg)["policy"]
    c = breakeven_probability(policy.profit, policy.stop, policy.taker_fee)
    assert c == pytest.approx((0.004 + 2 * 0.001) / 0.012)
    assert policy.center == c  # resolved once, with the traded barriers and the taker fee
    assert signal_from_probability(c, c) == 0.0


def test_vol_scaling_formula():
    # r = target/forecast * s = 0.5/1.0 * 0.8 = 0.4 -> above deadband, w = 0.4 * 0.95
    assert weight_from_signal(0.8, 1.0, 0.5, 0.3, 0.95, False) == pytest.approx(0.4 * 0.95)
    # same signal, higher forecast vol: r = 0.5/0.8 * 0.4 = 0.25 falls inside the deadband;
    # a lower forecast (0.5) gives r = 0.4 and a position
    assert weight_from_signal(0.4, 0.8, 0.5, 0.3, 0.95, False) == 0.0
    assert weight_from_signal(0.4, 0.5, 0.5, 0.3, 0.95, False) == pytest.approx(0.4 * 0.95)


def test_deadband_boundary():
    assert weight_from_signal(0.29, 0.5, 0.5, 0.3, 0.95, True) == 0.0
    assert weight_from_signal(-0.29, 0.5, 0.5, 0.3, 0.95, True) == 0.0
    assert weight_from_signal(0.30, 0.5, 0.5, 0.3, 0.95, True) == pytest.approx(0.30 * 0.95)
    assert weight_from_signal(0.5, 0.5, 0.5, 0.0, 0.95, True) == pytest.approx(0.5 * 0.95)


def test_clip_at_one_times_max_position():
    # r = 0.5/0.1 * 0.9 = 4.5 -> clip 1 -> 0.95
    assert weight_from_signal(0.9, 0.1, 0.5, 0.3, 0.95, False) == pytest.approx(0.95)
    assert weight_from_signal(-0.9, 0.1, 0.5, 0.3, 0.6, True) == pytest.approx(-0.6)


def test_long_only_unless_allow_short():
    assert weight_from_signal(-0.9, 0.5, 0.5, 0.3, 0.95, False) == 0.0
    assert weight_from_signal(-0.9, 0.5, 0.5, 0.3, 0.95, True) == pytest.approx(-0.9 * 0.95)


def test_missing_forecast_means_no_position():
    for bad in (float("nan"), 0.0, -1.0, math.inf):
        assert weight_from_signal(0.9, bad, 0.5, 0.3, 0.95, False) == 0.0


# ----------------------------------------------------------------- inside backtrader

def _run(tmp_path, prob, fvol, **kw):
    frame = with_lines(synthetic_ohlcv(400, seed=5), prob, fvol)
    cfg = load_config()
    params = {"risk": loose_risk(tmp_path), "limit_confidence": 2.0}  # market entries
    params.update(kw)
    return run_backtest(None, frame, cfg, strategy=LineStrategy, costs=Costs.zero(), coc=True,
                        progress=False, strategy_kwargs=params)


def test_entry_size_is_target_weight_of_equity(tmp_path):
    # p = 0.8 -> s = 0.6; forecast 0.75 annualised, target 0.5 -> r = 0.4 -> w = 0.38
    res = _run(tmp_path, 0.8, 0.75)
    entries = res.fills[res.fills["kind"] == "entry"]
    assert len(entries) > 5
    eq = res.equity["equity"]
    for f in entries.itertuples():
        # cheat-on-close: the entry fills at the signal bar's close; equity before it is the
        # previous bar's end equity when flat, i.e. the equity at the signal bar.
        equity_at_signal = eq.loc[f.time]
        assert f.value / equity_at_signal == pytest.approx(0.38, rel=1e-9)


def test_strategy_respects_deadband(tmp_path):
    # s = 0.2, forecast = target -> r = 0.2 < 0.3: never trades
    res = _run(tmp_path, 0.6, 0.5)
    assert len(res.fills) == 0
    # same signal with a lower forecast vol: r = 0.5/0.25*0.2 = 0.4 -> trades
    assert len(_run(tmp_path, 0.6, 0.25).fills) > 0


def test_strategy_clips_weight(tmp_path):
    # r = 0.5/0.05 * 0.9 = 9 -> clipped to max_position 0.95
    res = _run(tmp_path, 0.95, 0.05)
    entries = res.fills[res.fills["kind"] == "entry"]
    assert len(entries) > 0
    eq = res.equity["equity"]
    ratios = [f.value / eq.loc[f.time] for f in entries.itertuples()]
    assert np.allclose(ratios, 0.95, rtol=1e-9)


def test_strategy_long_only_on_spot(tmp_path):
    res = _run(tmp_path, 0.1, 0.5)  # strongly bearish signal
    assert len(res.fills) == 0
    short = _run(tmp_path, 0.1, 0.5, allow_short=True)
    entries = short.fills[short.fills["kind"] == "entry"]
    assert len(entries) > 0 and (entries["side"] == "sell").all()
    assert (short.trades["side"] == "short").all()


def test_strategy_params_take_barriers_and_features_from_the_bundle():
    from types import SimpleNamespace

    from core.config import FeatureConfig, LabelConfig
    from core.errors import ConfigError

    bundle = SimpleNamespace(label_cfg=LabelConfig(profit=0.01, stop=0.005, horizon=6),
                             feature_cfg=FeatureConfig(ewma_vol_fast_span=40), timeframe="15m")
    same = load_config(overrides=["labels.profit=0.01", "labels.stop=0.005", "labels.horizon=6"])
    p = strategy_params(same, bundle=bundle)
    pol = p["policy"]
    assert (pol.profit, pol.stop, pol.max_hold) == (0.01, 0.005, 6)  # max_hold null -> bundle horizon
    assert p["feature_cfg"] is bundle.feature_cfg  # the vol forecast the model was trained with
    assert same.features.ewma_vol_fast_span == 20
    # the default config's labels differ from this bundle's: refused, both named, one line
    with pytest.raises(ConfigError, match=r"profit=0.008 .*profit=0.01 ") as err:
        strategy_params(load_config(), bundle=bundle)
    assert "\n" not in str(err.value)
    # explicit opt-in: the config's barriers are traded
    pol = strategy_params(load_config(), bundle=bundle, barriers="config")["policy"]
    assert (pol.profit, pol.stop, pol.max_hold) == (0.008, 0.004, 8)
    with pytest.raises(ConfigError, match="barriers must be one of"):
        strategy_params(load_config(), bundle=bundle, barriers="labels")


def test_shorts_need_a_market_that_permits_them():
    from core.errors import ConfigError

    assert load_config().data.market == "spot"
    with pytest.raises(ConfigError, match=r"strategy\.allow_short.*data\.market") as err:
        load_config(overrides=["strategy.allow_short=true"])
    assert "\n" not in str(err.value)
    for market in ("margin", "futures"):
        assert load_config(overrides=["strategy.allow_short=true", f"data.market={market}"]).strategy.allow_short
    with pytest.raises(ConfigError, match="data.market"):
        load_config(overrides=["data.market=options"])
