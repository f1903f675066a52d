"""The sweep report and one meaning of every grid value: a sweep row's settings replay in
`nts backtest` unchanged (limit_confidence > 1 = always market, in both); flat rows are
marked, never 'best', with one Sharpe in every table; plotly.js is written once beside the
page (or embedded) and the page stays small."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cli.main import cli
from core.config import load_config
from core.errors import ConfigError
from core.ohlcv import write_ohlcv_csv
from core.synthetic import synthetic_ohlcv
from models.bundle import load_bundle
from sweeps.engine import axis_defaults, prepare_span, run_sweep
from sweeps.grid import AXES, CONFIG_KEYS, load_grid, replay_sets
from sweeps.portfolio import build_portfolios, report_rows
from sweeps.report import PLOTLY_JS, equity_figure, heatmaps, write_report

BASE_SET = ["strategy.center=0.3", "strategy.deadband=0.0", "execution.taker_fee=0.001",
            "execution.maker_fee=0.0005", "execution.slippage_bps=3.0"]
# centre 0.99: never trades (flat rows); 2.0: |s| never reaches it, every entry a market order
OVERRIDES = ["profit=0.008", "stop=0.004", "max_hold=8", "center=0.99,0.3,0.32", "deadband=0,0.1",
             "limit_confidence=0.05,2.0", "blocks=8", "folds=2", "top=4"]


@pytest.fixture(scope="module")
def frame():
    """The tiny bundle's training bars (same seed) extended by out-of-sample bars."""
    return synthetic_ohlcv(4000, seed=11, gaps={1800: 10})


@pytest.fixture(scope="module")
def swept(tiny_bundle, frame, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    data = prepare_span(load_bundle(tiny_bundle), frame, load_config(None, BASE_SET), cache_dir=cache, blocks=8,
                        folds=2)
    result = run_sweep(data, load_grid(None, OVERRIDES, axis_defaults(data)))
    return result, build_portfolios(result, report_rows(result)), cache


# --------------------------------------------------------------------------- one meaning of every value
PROBES = {  # values at and beyond every bound of each axis
    "profit": [0.0, 1e-9, 0.5, 0.999, 1.0], "stop": [0.0, 1e-9, 0.999, 1.0],
    "max_hold": [0, 1, 1000, 1001], "deadband": [-0.1, 0.0, 0.5, 0.999, 1.0, 1.5],
    "center": [0.0, 0.001, 0.5, 0.999, 1.0, "breakeven"],
    "limit_confidence": [-0.1, 0.0, 0.5, 1.0, 1.5, 2.0, 100.0],
    "taker_fee": [-0.001, 0.0, 0.05, 0.0999, 0.1], "maker_fee": [-0.011, -0.01, 0.0, 0.0999, 0.1],
    "slippage_bps": [-1.0, 0.0, 500.0, 1000.0, 1001.0],
}
DEFAULTS = {"profit": 0.008, "stop": 0.004, "max_hold": 8, "deadband": 0.3, "center": 0.5,
            "limit_confidence": 0.5, "taker_fee": 0.001, "maker_fee": 0.001, "slippage_bps": 2.0}


def _accepts(fn) -> bool:
    try:
        fn()
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize("axis", AXES)
def test_every_grid_axis_accepts_exactly_what_the_main_config_accepts(axis):
    assert set(PROBES) == set(AXES) == set(CONFIG_KEYS)
    for v in PROBES[axis]:
        text = v if isinstance(v, str) else (str(int(v)) if axis == "max_hold" else repr(float(v)))
        grid_ok = _accepts(lambda: load_grid(None, [f"{axis}={text}"], DEFAULTS))
        cfg_ok = _accepts(lambda: load_config(None, [f"{CONFIG_KEYS[axis]}={text}"]))
        assert grid_ok == cfg_ok, (axis, v, grid_ok, cfg_ok)


def test_limit_confidence_above_one_is_always_market_in_the_config():
    cfg = load_config(None, ["strategy.limit_confidence=2"])
    assert cfg.strategy.limit_confidence == 2.0
    shipped = load_grid(None, [], DEFAULTS)  # configs/sweep.yaml sweeps 0.5 and 2.0
    assert 2.0 in shipped.values("limit_confidence")


def test_sweep_row_replays_in_nts_backtest_unchanged(swept, tiny_bundle, frame, tmp_path, monkeypatch):
    result, _, cache = swept
    t = result.table
    row = int(t.index[(t["center"] == 0.3) & (t["deadband"] == 0.0) & (t["limit_confidence"] == 2.0)][0])
    assert t.at[row, "trades"] > 5
    bars = tmp_path / "bars.csv"
    write_ohlcv_csv(frame, bars)
    monkeypatch.setenv("NTS_CACHE_DIR", str(cache))
    out = tmp_path / "bt"
    sets = [x for s in [*BASE_SET, *replay_sets(t.loc[row])] for x in ("--set", s)]
    res = CliRunner().invoke(cli, ["backtest", "--model", str(tiny_bundle), "--data", str(bars), "--output", str(out),
                                   "--barriers", "config", "--quiet", *sets])
    assert res.exit_code == 0, res.output
    assert "strategy.limit_confidence=2.0" in sets
    metrics = json.loads((out / "metrics.json").read_text())["strategy"]
    assert metrics["trades"] == t.at[row, "trades"]
    assert metrics["end_equity"] == pytest.approx(t.at[row, "final_equity"], rel=1e-9)
    assert metrics["sharpe"] == pytest.approx(t.at[row, "sharpe"], rel=1e-9)
    fills = pd.read_csv(out / "fills.csv")
    entries = fills[fills["kind"] == "entry"]
    assert len(entries) and (entries["order_type"] == "Market").all()  # > 1: never a limit entry


# --------------------------------------------------------------------------- the report
def test_flat_rows_are_marked_and_never_best(swept):
    result, portfolios, _ = swept
    flat = (result.table["trades"] == 0) & (result.table["open_trades"] == 0)
    assert flat[result.table["center"] == 0.99].all() and 4 <= flat.sum() < len(flat)
    o = result.overfit
    assert not flat[o.best_row] and o.n_flat == flat.sum()
    texts = [c for f in heatmaps(result) for r in f.data[0].text for c in r]
    assert "flat" in texts and "0" not in texts  # cells of flat rows read 'flat', not a Sharpe of 0
    stats = portfolios.stats()
    for r in portfolios.rows:
        col = portfolios.column(r)
        if flat[r]:
            assert stats.at["Sharpe Ratio", col] == 0.0 and stats.at["Sortino Ratio", col] == 0.0
            assert result.table.at[r, "sharpe"] == 0.0
        else:
            assert math.isfinite(float(stats.at["Sharpe Ratio", col]))


def test_equity_of_the_strategies_is_on_its_own_axis(swept):
    result, portfolios, _ = swept
    rows = [int(r) for r in result.top_trading.index if int(r) in portfolios.rows]
    fig = equity_figure(result, portfolios, rows)
    bh = [tr for tr in fig.data if tr.name.startswith("buy & hold")]
    mine = [tr for tr in fig.data if not tr.name.startswith("buy & hold") and tr.yaxis == "y"]
    assert len(bh) == 1 and bh[0].yaxis == "y2" and len(mine) == len(rows)
    assert fig.layout.yaxis2.overlaying == "y" and fig.layout.yaxis2.side == "right"


def test_report_folder_shares_plotly_js_and_stays_small(swept, tmp_path):
    result, portfolios, _ = swept
    files = write_report(result, tmp_path / "rep", portfolios=portfolios)
    page = files["report.html"].read_text()
    js = tmp_path / "rep" / PLOTLY_JS
    assert js.stat().st_size > 1_000_000 and "src='plotly.min.js'" in page
    assert len(page.encode()) < 400_000, len(page.encode())  # plotly.js not inlined
    assert "Top " in page and "rows that trade" in page and "N = &rho; + (1 - &rho;) M" in page
    top = page.split("rows that trade, by Sharpe</h2>", 1)[1].split("</table>", 1)[0]
    assert "center=0.99" not in top  # flat rows are left out of the top table
    embedded = write_report(result, tmp_path / "emb", portfolios=portfolios, embed_plotlyjs=True)
    assert not (tmp_path / "emb" / PLOTLY_JS).exists() and PLOTLY_JS not in embedded
    big = embedded["report.html"].read_text()
    assert len(big) > 1_000_000 and "src='plotly.min.js'" not in big
    assert Path(files["manifest.json"]).exists()
    man = json.loads(files["manifest.json"].read_text())
    assert man["overfit"]["verdict_class"] == result.overfit.verdict_class and man["overfit"]["n_flat"] == result.flat_rows
    assert np.isfinite(man["overfit"]["n_trials"])
