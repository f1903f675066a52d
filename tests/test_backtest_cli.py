"""`nts backtest` end to end with the tiny bundle: report files, in-sample refusal,
strategy selection by name and module:Class, the <= 15-line example subclass."""
from __future__ import annotations

import inspect
import json
import textwrap

import pandas as pd
import pytest
from click.testing import CliRunner

from cli.main import cli
from core.ohlcv import write_ohlcv_csv
from core.synthetic import synthetic_ohlcv
from models.bundle import load_bundle

# Signals the tiny bundle (P ~ 0.30-0.36) turns into trades: centre below most P, no deadband.
TRADE = ["--set", "strategy.center=0.32", "--set", "strategy.deadband=0"]
FILES = {"metrics.json", "trades.csv", "fills.csv", "equity.csv", "risk_trips.csv", "equity.png",
         "report.md", "report.html"}


@pytest.fixture(scope="module")
def bars_file(tmp_path_factory):
    """The tiny bundle's training bars (same seed) extended by out-of-sample bars."""
    path = tmp_path_factory.mktemp("bt") / "bars.csv"
    write_ohlcv_csv(synthetic_ohlcv(4000, seed=11, gaps={1800: 10}), path)
    return path


def _invoke(*args):
    return CliRunner().invoke(cli, ["backtest", *map(str, args), "--quiet"], catch_exceptions=False)


def test_backtest_writes_report_out_of_sample(tiny_bundle, bars_file, tmp_path):
    out = tmp_path / "rep"
    res = _invoke("--model", tiny_bundle, "--data", bars_file, "--output", out, *TRADE)
    assert res.exit_code == 0, res.output
    assert FILES <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp leftovers
    m = json.loads((out / "metrics.json").read_text())
    bundle = load_bundle(tiny_bundle)
    assert pd.Timestamp(m["run"]["start"]) > bundle.training_span[1]
    assert m["run"]["in_sample"] is False
    for key in ("sharpe", "sortino", "cagr", "max_drawdown", "win_rate", "avg_hold_bars", "avg_hold_hours",
                "trades", "exposure", "turnover", "fees_paid"):
        assert key in m["strategy"]
    assert m["strategy"]["trades"] > 0
    assert {"sharpe", "cagr", "max_drawdown"} <= set(m["buy_and_hold"])
    trades = pd.read_csv(out / "trades.csv")
    assert len(trades) >= m["strategy"]["trades"]
    equity = pd.read_csv(out / "equity.csv")
    assert len(equity) == m["run"]["bars"]
    assert (out / "equity.png").read_bytes()[:4] == b"\x89PNG"
    # short span: backtrader's own chart too
    assert m["run"]["backtrader_plot"] == "backtrader.png"
    assert (out / "backtrader.png").read_bytes()[:4] == b"\x89PNG"
    assert "Sharpe" in res.output and "buy & hold" in res.output


def test_weights_path_works_like_the_directory(tiny_bundle, bars_file, tmp_path):
    a = _invoke("--model", tiny_bundle, "--data", bars_file, "--output", tmp_path / "a", *TRADE)
    b = _invoke("--model", tiny_bundle / "final_model.pt", "--data", bars_file, "--output", tmp_path / "b", *TRADE)
    assert a.exit_code == b.exit_code == 0
    ma = json.loads((tmp_path / "a" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert ma["strategy"] == mb["strategy"]


def test_refuses_training_span_unless_allowed(tiny_bundle, bars_file, tmp_path):
    out = tmp_path / "ins"
    res = CliRunner().invoke(cli, ["backtest", "--model", str(tiny_bundle), "--data", str(bars_file),
                                   "--output", str(out), "--start", "2024-01-05", "--quiet"])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "training span" in lines[0] and "--allow-in-sample" in lines[0]
    assert not out.exists() or not any(out.iterdir())
    ok = _invoke("--model", tiny_bundle, "--data", bars_file, "--output", out, "--start", "2024-01-05",
                 "--allow-in-sample")
    assert ok.exit_code == 0, ok.output
    assert json.loads((out / "metrics.json").read_text())["run"]["in_sample"] is True
    assert "IN-SAMPLE" in ok.output


def test_strategy_by_name_and_module_path(tiny_bundle, bars_file, tmp_path, monkeypatch):
    out = tmp_path / "night"
    res = _invoke("--model", tiny_bundle, "--data", bars_file, "--output", out, "--strategy", "night_only", *TRADE)
    assert res.exit_code == 0, res.output
    fills = pd.read_csv(out / "fills.csv", parse_dates=["time"])
    entries = fills[fills["kind"] == "entry"]
    assert len(entries) > 0
    # market entries fill at the open after the signal bar: signal hours are 00:00-05:45
    signal_hour = (entries["time"] - pd.Timedelta(minutes=15)).dt.hour
    assert (signal_hour < 6).all()

    # a user's subclass in their own module, selected as module:Class
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mine.py").write_text(textwrap.dedent('''
        from strategies.tcn import TCNStrategy

        class NoTrades(TCNStrategy):
            def signal(self, p):
                return 0.0
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    res = _invoke("--model", tiny_bundle, "--data", bars_file, "--output", tmp_path / "u",
                  "--strategy", "userpkg.mine:NoTrades", *TRADE)
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "u" / "metrics.json").read_text())["strategy"]["trades"] == 0

    bad = CliRunner().invoke(cli, ["backtest", "--model", str(tiny_bundle), "--data", str(bars_file),
                                   "--output", str(tmp_path / "x"), "--strategy", "userpkg.mine:Nope"])
    assert bad.exit_code == 2 and "has no attribute 'Nope'" in bad.output


def test_example_subclass_is_at_most_15_lines():
    from strategies.examples import NightOnly

    src = inspect.getsource(NightOnly)
    assert len([ln for ln in src.splitlines() if ln.strip()]) <= 15


def test_bad_model_path_is_one_line(bars_file, tmp_path):
    res = CliRunner().invoke(cli, ["backtest", "--model", str(tmp_path / "nope"), "--data", str(bars_file)])
    assert res.exit_code == 2
    assert res.output.startswith("error: ") and len(res.output.strip().splitlines()) == 1
