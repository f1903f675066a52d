"""The sweep: parity with `nts backtest` trade for trade, metrics and moments as the rest of nts
computes them, chunk/thread/Dask independence, vectorbt's value == the kernel's, walk-forward,
the report folder and the CLI's one-line refusals."""
from __future__ import annotations

import html
import json
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cli.main import cli
from core.config import load_config
from core.ohlcv import write_ohlcv_csv
from core.config import LabelConfig
from core.policy import POLICY_VECTOR, breakeven_probability
from core.synthetic import synthetic_ohlcv
from models.bundle import load_bundle
from models.labels import label_summary, triple_barrier_events
from strategies.backtest import run_backtest
from sweeps.engine import RAW_FIELDS, axis_defaults, policy_rows, prepare_span, run_rows, run_sweep
from sweeps.grid import load_grid
from sweeps.overfit import block_moments, moments_stats
from sweeps.portfolio import build_portfolios

ROOT = Path(__file__).resolve().parents[1]
RTOL = 1e-9
# The tiny bundle's P sits near 0.3: a centre of 0.3 and no deadband trade often.
BASE_SET = ["strategy.center=0.3", "strategy.deadband=0.0", "execution.taker_fee=0.001",
            "execution.maker_fee=0.0005", "execution.slippage_bps=3.0"]
# Exit-rule rows (other barriers than the trained 0.008 / 0.004 / 8) and both order types.
GRID_TEXT = """\
grid:
  profit: [0.004, 0.008]
  stop: [0.004, 0.006]
  max_hold: [4, 8]
  limit_confidence: [0.05, 1.0]  # 1.0: |s| never reaches it here (market entries); the main config caps it at 1
blocks: 8
folds: 2
top: 3
"""


@pytest.fixture(scope="module")
def frame():
    """The tiny bundle's training bars (same seed) extended by out-of-sample bars."""
    return synthetic_ohlcv(4000, seed=11, gaps={1800: 10})


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("grid") / "sweep.yaml"
    path.write_text(GRID_TEXT)
    return path


def _sweep(bundle, frame, grid_file, sets, barriers="bundle", cache=None):
    cfg = load_config(None, sets)
    data = prepare_span(bundle, frame, cfg, barriers=barriers, cache_dir=cache, blocks=8, folds=2)
    grid = load_grid(grid_file, [], axis_defaults(data))
    return cfg, data, run_sweep(data, grid)


@pytest.fixture(scope="module")
def swept(bundle, frame, grid_file, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return _sweep(bundle, frame, grid_file, BASE_SET, cache=cache) + (cache,)


# --------------------------------------------------------------------------- parity with backtrader
def _row_cfg(result, row, sets, tie):
    """The config under which `nts backtest` trades sweep row ``row`` (barriers from the config)."""
    r = result.table.loc[row]
    over = [*sets, f"labels.profit={r['profit']}", f"labels.stop={r['stop']}", f"labels.tie={tie}",
            f"strategy.max_hold={int(r['max_hold'])}", f"strategy.limit_confidence={r['limit_confidence']}"]
    return load_config(None, over)


def _compare(result, row, bt):
    """Trade by trade: entry/exit bars and kinds equal, prices and equity within RTOL."""
    sim = result.simulate_row(row)
    a, b = bt.trades.reset_index(drop=True), sim.trades.reset_index(drop=True)
    assert len(a) == len(b) and len(a) > 5, (len(a), len(b))
    for col in ("entry_bar", "exit_bar", "entry_kind", "exit_kind", "side", "status"):
        assert (a[col].to_numpy() == b[col].to_numpy()).all(), col
    diffs = {}
    for col in ("entry_price", "exit_price", "size", "fees", "pnl_net"):
        x, y = a[col].to_numpy(float), b[col].to_numpy(float)
        diffs[col] = float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-12)))
    assert max(diffs["entry_price"], diffs["exit_price"], diffs["size"]) <= RTOL, diffs
    st, t = bt.metrics["strategy"], result.table.loc[row]
    assert t["final_equity"] == pytest.approx(st["end_equity"], rel=RTOL)
    for mine, theirs in (("total_return", "total_return"), ("sharpe", "sharpe"), ("sortino", "sortino"),
                         ("max_drawdown", "max_drawdown"), ("cagr", "cagr"), ("win_rate", "win_rate"),
                         ("avg_hold_bars", "avg_hold_bars"), ("exposure", "exposure"), ("turnover", "turnover"),
                         ("fees", "fees_paid")):
        assert t[mine] == pytest.approx(st[theirs], rel=RTOL, abs=1e-12), mine
    assert int(t["trades"]) == st["trades"]
    return len(a)


@pytest.mark.parametrize("case", [
    # (profit, stop, max_hold, limit_confidence): trained barriers with market entries, with limit
    # entries, and exit-rule rows with other barriers and a shorter hold
    (0.008, 0.004, 8, 1.0), (0.008, 0.004, 8, 0.05), (0.004, 0.006, 4, 0.05), (0.004, 0.004, 8, 1.0),
])
def test_sweep_rows_match_backtrader_trade_for_trade(swept, bundle, frame, case):
    cfg, data, result, cache = swept
    t = result.table
    row = int(t.index[(t["profit"] == case[0]) & (t["stop"] == case[1]) & (t["max_hold"] == case[2])
                      & (t["limit_confidence"] == case[3])][0])
    bt = run_backtest(bundle, frame, _row_cfg(result, row, BASE_SET, "stop"), progress=False, barriers="config",
                      prob_cache=cache)
    kinds = set(bt.fills["order_type"])
    assert ("Limit" in kinds) and ("Stop" in kinds)  # take profits are limits, stops are stops
    if case[3] < 1:
        entries = bt.fills[bt.fills["kind"] == "entry"]
        assert (entries["order_type"] == "Limit").any()  # limit entries really happen
    assert _compare(result, row, bt) > 5


def test_tie_rule_profit_matches_backtrader(bundle, frame, grid_file, tmp_path):
    sets = [*BASE_SET, "labels.tie=profit"]
    cfg, data, result = _sweep(bundle, frame, grid_file, sets, barriers="config", cache=tmp_path)
    assert data.policy.tie == "profit"
    t = result.table
    row = int(t.index[(t["profit"] == 0.004) & (t["stop"] == 0.004) & (t["max_hold"] == 8)
                      & (t["limit_confidence"] == 1.0)][0])
    bt = run_backtest(bundle, frame, _row_cfg(result, row, sets, "profit"), progress=False, barriers="config",
                      prob_cache=tmp_path)
    assert _compare(result, row, bt) > 5
    # the tie rule changes something on these bars, or the case would test nothing
    _, _, stop_first = _sweep(bundle, frame, grid_file, BASE_SET, cache=tmp_path)
    assert not np.array_equal(stop_first.raw[row], result.raw[row])


def test_vectorised_hook_strategy_sweep_row_matches_backtrader(bundle, frame, grid_file, tmp_path):
    # NightOnly's entry_allowed hook through the sweep: rows grouped by the hooks' policy fields
    # (deadband here) give the trades of `nts backtest --strategy night_only`.
    from strategies.examples import NightOnly

    cfg = load_config(None, BASE_SET)
    data = prepare_span(bundle, frame, cfg, cache_dir=tmp_path, blocks=8, folds=2)
    grid = load_grid(grid_file, ["deadband=0,0.05"], axis_defaults(data))
    result = run_sweep(data, grid, strategy_cls=NightOnly)
    assert result.kernel_inputs.signal.shape[0] == 2  # one hook group per deadband
    t = result.table
    row = int(t.index[(t["profit"] == 0.008) & (t["stop"] == 0.004) & (t["max_hold"] == 8)
                      & (t["limit_confidence"] == 1.0) & (t["deadband"] == 0.05)][0])
    bt = run_backtest(bundle, frame, _row_cfg(result, row, [*BASE_SET, "strategy.deadband=0.05"], "stop"),
                      strategy=NightOnly, progress=False, barriers="config", prob_cache=tmp_path)
    assert (pd.DatetimeIndex(bt.trades["entry_time"]).hour < 6).all()
    assert _compare(result, row, bt) > 5
    around_the_clock = run_sweep(data, grid)
    assert around_the_clock.table.at[row, "trades"] > t.at[row, "trades"]


# --------------------------------------------------------------------------- metrics and moments
def test_block_moments_and_folds_follow_the_rows_equity(swept):
    cfg, data, result, _ = swept
    k = data.inputs
    for row in (0, 5, 13):
        eq = result.simulate_row(row).equity["equity"].to_numpy()[k.first:k.last + 1]
        rets = eq[1:] / eq[:-1] - 1.0
        assert np.allclose(result.moments[row], block_moments(rets, 8)[0], rtol=1e-12, atol=1e-15)
        st = moments_stats(result.moments[row][None, :, :])
        assert st.count[0] == len(rets)
        e = k.fold_edges
        for f in range(2):
            assert result.folds[row, f, 0] == eq[e[f]] and result.folds[row, f, 1] == eq[e[f + 1]]


def test_walk_forward_picks_the_in_sample_best_and_scores_the_next_fold(swept):
    _, data, result, _ = swept
    wf = result.walk_forward
    assert wf is not None and len(wf.table) == 1
    step = wf.table.iloc[0]
    sr = moments_stats(result.moments[:, :4]).sharpe
    assert step["row"] == int(np.nanargmax(np.where(np.isfinite(sr), sr, -np.inf)))
    eq = result.simulate_row(int(step["row"])).equity["equity"].to_numpy()[data.inputs.first:]
    e = data.inputs.fold_edges
    assert step["oos_return"] == pytest.approx(eq[e[2]] / eq[e[1]] - 1.0, rel=1e-12)


def test_base_rate_and_breakeven_per_row(swept):
    _, data, result, _ = swept
    t = result.table
    span = data.frame.iloc[data.inputs.first:data.inputs.last + 1]
    for row in (0, 9):
        r = t.loc[row]
        ev = triple_barrier_events(span, LabelConfig(profit=r["profit"], stop=r["stop"], horizon=int(r["max_hold"])))
        assert r["base_rate"] == pytest.approx(label_summary(ev)["base_rate"], rel=1e-12)
        assert r["breakeven_p"] == pytest.approx(breakeven_probability(r["profit"], r["stop"], r["taker_fee"]))
    trained = t[t["trained_barriers"]]
    assert len(trained) and (trained["profit"] == 0.008).all() and (trained["max_hold"] == 8).all()


def test_breakeven_centre_follows_each_rows_barriers(swept):
    _, data, _, _ = swept
    combos = pd.DataFrame({**{k: [v] * 2 for k, v in axis_defaults(data).items()},
                           "profit": [0.006, 0.012], "center": ["breakeven", "breakeven"]})
    rows = policy_rows(data.policy, combos)
    c = rows[:, POLICY_VECTOR.index("center")]
    assert c[0] == breakeven_probability(0.006, data.policy.stop, data.policy.taker_fee)
    assert c[1] == breakeven_probability(0.012, data.policy.stop, data.policy.taker_fee)


def test_results_do_not_depend_on_chunks_or_threads(swept):
    _, data, result, _ = swept
    one = run_rows(result.kernel_inputs, result.kernel_rows, chunk=1)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        serial = run_rows(result.kernel_inputs, result.kernel_rows, chunk=7)
    finally:
        numba.set_num_threads(before)
    for a, b, c in zip((result.raw, result.moments, result.folds), one, serial):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    assert result.raw.shape[1] == len(RAW_FIELDS)


# --------------------------------------------------------------------------- vectorbt
def test_vectorbt_value_equals_the_kernel(swept):
    _, data, result, _ = swept
    rows = [int(r) for r in result.top.index[:2]] + [int(result.table["trades"].idxmax())]
    ps = build_portfolios(result, rows)
    assert ps.worst_final_diff <= RTOL and ps.worst_bar_diff <= RTOL
    pf = ps.portfolio
    final = pf.final_value()
    for r in ps.rows:
        assert final[ps.column(r)] == pytest.approx(result.table.at[r, "final_equity"], rel=RTOL)
        sim = ps.sims[r]
        # vectorbt's trades are the kernel's round trips (closed + the one open at the end)
        assert int(pf.trades[ps.column(r)].count()) == len(sim.trades)
        assert float(pf.orders[ps.column(r)].fees.sum()) == pytest.approx(float(sim.fills["commission"].sum()),
                                                                          rel=RTOL)


# --------------------------------------------------------------------------- Dask
@pytest.mark.timeout(300)
def test_dask_local_cluster_equals_single_process(swept, cli_report, tiny_bundle, bars_file, grid_file, tmp_path):
    pytest.importorskip("distributed")
    from sweeps.distributed import dask_client, dask_mapper

    _, data, result, _ = swept
    with dask_client(workers=2) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        raw, moments, folds = dask_mapper(client, chunk=5)(result.kernel_inputs, result.kernel_rows, None)
        # the CLI on the same cluster through --scheduler: the same results.csv as the single process
        out = tmp_path / "dask"
        res = _run_cli(tiny_bundle, bars_file, grid_file, out, "--scheduler", client.scheduler.address, "--chunk", "3")
        assert res.exit_code == 0, res.output
    assert np.array_equal(raw, result.raw)
    assert np.array_equal(moments, result.moments)
    assert np.array_equal(folds, result.folds)
    assert (out / "results.csv").read_bytes() == (cli_report / "results.csv").read_bytes()
    man = json.loads((out / "manifest.json").read_text())
    assert man["engine"].startswith("Dask ") and man["verdict"] == json.loads(
        (cli_report / "manifest.json").read_text())["verdict"]


def test_unreachable_scheduler_is_one_line_and_refused_before_scoring(tiny_bundle, bars_file, tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    import sweeps.distributed

    monkeypatch.setattr(sweeps.distributed, "CONNECT_TIMEOUT_S", 1)
    line = _one_line_error(_cli("--model", tiny_bundle, "--data", bars_file, "--output", tmp_path / "o", "--quiet",
                                "--scheduler", "tcp://127.0.0.1:9"))
    assert "cannot reach the Dask scheduler tcp://127.0.0.1:9" in line
    assert not (tmp_path / "o").exists()


def test_default_path_never_imports_dask():
    code = ("import sys\n"
            "import sweeps.engine, sweeps.report, sweeps.job, cli.sweep_cmd, cli.main\n"
            "print('dask' in sys.modules or 'distributed' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "False"


# --------------------------------------------------------------------------- CLI and report
@pytest.fixture(scope="module")
def bars_file(frame, tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep-bars") / "bars.csv"
    write_ohlcv_csv(frame, path)
    return path


def _cli(*args):
    return CliRunner().invoke(cli, ["sweep", *map(str, args)])


def _one_line_error(res) -> str:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


@pytest.mark.parametrize("args, pattern", [
    (["--grid-set", "deadband=-0.1"], r"grid\.deadband\[0\]: -0\.1 must be >= 0"),
    (["--grid-set", "dedband=0.1"], r"unknown key 'dedband'"),
    (["--grid-set", "stop=0.004,0.004"], r"grid\.stop\[1\]: duplicate value"),
    (["--grid-set", "blocks=8", "--folds", "3"], r"folds: 3 must divide blocks \(8\)"),
    (["--grid-set", "center=breakeven", "--grid-set", "profit=0.0015"], r"does not cover the round-trip fee"),
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], r"--workers N or --scheduler"),
])
def test_grid_errors_are_one_line(tiny_bundle, bars_file, tmp_path, args, pattern):
    import re

    line = _one_line_error(_cli("--model", tiny_bundle, "--data", bars_file, "--output", tmp_path / "o", "--quiet",
                                *args))
    assert re.search(pattern, line), line
    assert not (tmp_path / "o").exists()


def test_span_overlapping_training_is_refused(tiny_bundle, bars_file, tmp_path):
    line = _one_line_error(_cli("--model", tiny_bundle, "--data", bars_file, "--output", tmp_path / "o", "--quiet",
                                "--start", "2024-01-02"))
    assert "overlaps the bundle's training span" in line
    assert not (tmp_path / "o").exists()


def _run_cli(tiny_bundle, bars_file, grid_file, out, *extra):
    sets = sum((["--set", s] for s in BASE_SET), [])
    return CliRunner().invoke(cli, ["sweep", "--model", str(tiny_bundle), "--data", str(bars_file), "--grid",
                                    str(grid_file), "--output", str(out), "--quiet", *sets, *map(str, extra)],
                              catch_exceptions=False)


@pytest.fixture(scope="module")
def cli_report(tiny_bundle, bars_file, grid_file, tmp_path_factory):
    """One single-process `nts sweep` report folder (and its printed output as .stdout)."""
    out = tmp_path_factory.mktemp("sweep-cli") / "rep"
    res = _run_cli(tiny_bundle, bars_file, grid_file, out)
    assert res.exit_code == 0, res.output
    (out.parent / "stdout.txt").write_text(res.output)
    return out


def test_cli_writes_the_report_with_the_verdict(cli_report):
    out = cli_report
    printed = (out.parent / "stdout.txt").read_text()
    assert "verdict: " in printed and "#" in printed
    # the rows' profit=/stop= values are named as what they are (fractions here, multiples for a vol model)
    assert "\nBarrier rule: fixed. The profit and stop axes are fractions of the entry price.\n" in printed
    names = {p.name for p in out.iterdir()}
    assert {"results.csv", "report.html", "manifest.json", "walk_forward.csv", "vectorbt_stats.csv"} <= names
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 16
    for col in ("profit", "stop", "max_hold", "deadband", "center", "limit_confidence", "taker_fee", "maker_fee",
                "slippage_bps", "total_return", "cagr", "sharpe", "sortino", "max_drawdown", "trades", "win_rate",
                "avg_hold_bars", "exposure", "turnover", "fees", "base_rate", "breakeven_p"):
        assert col in table.columns, col
    man = json.loads((out / "manifest.json").read_text())
    page = (out / "report.html").read_text()
    assert man["verdict"] and man["verdict"] in printed
    assert html.escape(man["verdict"]) in page and "Exit-rule sweep" in page and "Walk-forward" in page
    # interactive and offline: plotly.js written once beside the page, read from there
    assert "Plotly.newPlot" in page and "src='plotly.min.js'" in page and (out / "plotly.min.js").stat().st_size > 1e6
    assert len(man["bundle"]["weights_sha256"]) == 64 and len(man["data"]["file_sha256"]) == 64
    assert man["vectorbt_check"]["max_final_value_rel_diff"] <= RTOL
    assert {"nts", "vectorbt", "numba"} <= set(man["versions"])
    assert man["grid"]["rows"] == 16 and man["seconds"]["total"] > 0


def test_embed_plotlyjs_writes_one_self_contained_page(tiny_bundle, bars_file, grid_file, tmp_path):
    out = tmp_path / "emb"
    res = _run_cli(tiny_bundle, bars_file, grid_file, out, "--embed-plotlyjs")
    assert res.exit_code == 0, res.output
    page = (out / "report.html").read_text()
    assert not (out / "plotly.min.js").exists() and "plotly.min.js" not in res.output.splitlines()[-1]
    assert "src='plotly.min.js'" not in page and "Plotly.newPlot" in page
    assert len(page.encode()) > 1_000_000  # plotly.js itself is in the page


def test_a_second_run_replaces_only_a_sweep_output(cli_report, tiny_bundle, bars_file, grid_file, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    line = _one_line_error(_cli("--model", tiny_bundle, "--data", bars_file, "--output", foreign, "--quiet"))
    assert "not an nts sweep output" in line and (foreign / "notes.txt").read_text() == "keep me"


def test_rows_that_never_trade_rank_as_sharpe_zero(swept, bundle, frame):
    """Deliberate difference: `nts backtest` reports n/a for a flat equity's Sharpe; the sweep
    reports 0, as the DSR/PBO statistics count it, so the table ranks rows as the verdict does."""
    cfg, data, _, cache = swept
    grid = load_grid(None, ["profit=0.008", "stop=0.004", "max_hold=8", "deadband=0", "center=0.99,0.3",
                            "limit_confidence=0.5", "blocks=8", "folds=2"], axis_defaults(data))
    res = run_sweep(data, grid)
    flat, trading = res.table.iloc[0], res.table.iloc[1]
    assert flat["trades"] == 0 and flat["sharpe"] == 0.0 and flat["sortino"] == 0.0
    assert trading["trades"] > 0 and trading["sharpe"] < 0  # the tiny model loses after fees
    assert list(res.top.index) == [0, 1] and res.flat_rows == 1 and list(res.top_trading.index) == [1]
    assert res.overfit.best_row == 1 and "never traded" in res.warnings()[0]  # a flat row is never "best"
    bt = run_backtest(bundle, frame, load_config(None, [*BASE_SET, "strategy.center=0.99"]), progress=False,
                      prob_cache=cache)
    assert bt.metrics["strategy"]["trades"] == 0 and bt.metrics["strategy"]["sharpe"] is None
