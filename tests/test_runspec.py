"""One run specification: built once, frozen, read the same way by backtest, sweep and sessions;
the builtin example strategies trade the same in backtest and sweep, trade for trade."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from core.config import load_config
from core.errors import DataError
from core.synthetic import synthetic_ohlcv
from models.bundle import load_bundle
from strategies.backtest import run_backtest
from strategies.examples import CalmOnly
from strategies.runspec import RunSpec
from sweeps.engine import axis_defaults, prepare_span, run_sweep
from sweeps.grid import load_grid
from sweeps.job import hook_options

SETS = ["strategy.center=0.3", "strategy.deadband=0.0", "execution.taker_fee=0.001", "execution.maker_fee=0.0005"]
ONE_ROW = "grid:\n  deadband: [0.0]\nblocks: 4\nfolds: 1\ntop: 1\n"


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def frame():
    return synthetic_ohlcv(4000, seed=11, gaps={1800: 10})


@pytest.fixture(scope="module")
def cfg():
    return load_config(None, SETS)


def _spec(cfg, bundle, frame, strategy="tcn", **kw):
    return RunSpec.build(cfg, model=bundle, data=frame, strategy=strategy, **kw)


def test_spec_is_frozen_and_resolves_span_warmup_and_policy_once(cfg, bundle, frame):
    spec = _spec(cfg, bundle, frame)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.policy = None  # type: ignore[misc]
    span = spec.span
    assert span.start > bundle.training_span[1]  # default start: right after the training span
    assert span.first == min(spec.warmup, int(frame.index.searchsorted(span.start)))
    assert span.frame.index[span.first] == span.start and span.frame.index[-1] == span.end
    assert spec.policy.profit == bundle.label_cfg.profit and spec.policy.center == 0.3
    assert spec.costs.maker_fee == 0.0005 == spec.policy.maker_fee


def test_backtest_and_sweep_read_the_same_spec(cfg, bundle, frame, tmp_path):
    spec = _spec(cfg, bundle, frame, prob_cache=tmp_path)
    data = prepare_span(spec, blocks=4, folds=1)
    assert data.span == (spec.span.start, spec.span.end)
    assert data.frame is spec.span.frame and data.inputs.first == spec.span.first
    assert data.policy == spec.policy
    res = run_backtest(spec, progress=False)
    old = run_backtest(bundle, frame, cfg, progress=False, prob_cache=tmp_path)  # the older call builds the same spec
    assert res.metrics["run"]["warmup_bars"] == spec.span.first == old.metrics["run"]["warmup_bars"]
    assert res.trades.equals(old.trades) and len(res.trades) > 5


def test_strategy_kwargs_split_into_policy_and_params(cfg, bundle, frame):
    spec = _spec(cfg, bundle, frame, strategy="calm_only", strategy_kwargs={"center": 0.35, "vol_bars": 48})
    assert spec.strategy_cls is CalmOnly and spec.policy.center == 0.35
    params = spec.strategy_params(trade_start=spec.span.start)
    assert params["vol_bars"] == 48 and "center" not in params and params["bundle"] is bundle
    assert spec.hooks().p.vol_bars == 48 and spec.hooks().policy is spec.policy


def test_a_session_spec_has_no_bars(cfg, bundle):
    spec = RunSpec.build(cfg, model=bundle, strategy="night_only")
    assert spec.span is None and spec.warmup >= bundle.history_bars
    with pytest.raises(DataError, match="needs bars"):
        spec.require_span()
    assert spec.strategy_params(prob_cache=False)["prob_cache"] is None


@pytest.mark.parametrize("strategy", ["night_only", "calm_only", "trend_follow"])
def test_builtin_examples_trade_the_same_in_backtest_and_sweep(strategy, cfg, bundle, frame, tmp_path):
    spec = _spec(cfg, bundle, frame, strategy=strategy, prob_cache=tmp_path)
    bt = run_backtest(spec, progress=False)
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(ONE_ROW)
    data = prepare_span(spec, blocks=4, folds=1)
    result = run_sweep(data, load_grid(grid_file, [], axis_defaults(data)), **hook_options(spec))
    sim = result.simulate_row(0)
    a, b = bt.trades.reset_index(drop=True), sim.trades.reset_index(drop=True)
    assert len(a) == len(b) > 3, (len(a), len(b))
    for col in ("entry_bar", "exit_bar", "entry_kind", "exit_kind", "side"):
        assert (a[col].to_numpy() == b[col].to_numpy()).all(), col
    assert np.allclose(a["pnl_net"].to_numpy(float), b["pnl_net"].to_numpy(float), rtol=1e-9)
    assert result.table.loc[0, "final_equity"] == pytest.approx(bt.metrics["strategy"]["end_equity"], rel=1e-9)
    # the example's rule really bites: it trades less than the plain strategy on the same span
    plain = run_backtest(_spec(cfg, bundle, frame, prob_cache=tmp_path), progress=False)
    assert len(a) < len(plain.trades)


def test_nts_sweep_runs_a_builtin_strategy(tiny_bundle, frame, tmp_path):
    from click.testing import CliRunner

    from cli.main import cli
    from core.ohlcv import write_ohlcv_csv

    data = tmp_path / "bars.csv"
    write_ohlcv_csv(frame, data)
    grid = tmp_path / "grid.yaml"
    grid.write_text("grid:\n  deadband: [0.0]\n  limit_confidence: [0.05, 1.0]\nblocks: 4\nfolds: 1\ntop: 2\n")
    trades = {}
    for name in ("tcn", "night_only"):
        out = tmp_path / name
        res = CliRunner().invoke(cli, ["sweep", "--model", str(tiny_bundle), "--data", str(data), "--output", str(out),
                                       "--strategy", name, "--grid", str(grid), "--quiet", *[x for s in SETS for x in ("--set", s)]])
        assert res.exit_code == 0, res.output
        import pandas as pd

        trades[name] = pd.read_csv(out / "results.csv")["trades"].to_numpy()
    assert "strategy strategies.examples:NightOnly" in res.output
    assert len(trades["tcn"]) == 2 and (trades["tcn"] > 0).all()
    assert (trades["night_only"] < trades["tcn"]).all() and (trades["night_only"] > 0).all()
