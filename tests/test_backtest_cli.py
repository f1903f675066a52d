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
from core.files import MARKER, read_marker
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
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != MARKER]  # no temp leftovers
    assert read_marker(out)["kind"] == "backtest"  # the folder says what wrote it
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
        import numpy as np
        from strategies.tcn import TCNStrategy

        class NoTrades(TCNStrategy):
            def signal(self, p, bars):
                return np.zeros(len(bars))
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


def _one_line_error(res) -> str:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


def test_barriers_come_from_the_bundle_and_a_mismatch_is_refused(tiny_bundle, bars_file, tmp_path):
    bundle = load_bundle(tiny_bundle)
    lab = bundle.label_cfg
    ok = _invoke("--model", tiny_bundle, "--data", bars_file, "--output", tmp_path / "ok", *TRADE)
    assert ok.exit_code == 0, ok.output
    b = json.loads((tmp_path / "ok" / "metrics.json").read_text())["run"]["barriers"]
    assert b == {"source": "bundle", "rule": "fixed", "profit": lab.profit, "stop": lab.stop, "horizon": lab.horizon,
                 "tie": lab.tie, "max_hold": lab.horizon,  # strategy.max_hold null -> the bundle's horizon
                 "text": "fixed: take profit +0.800%, stop -0.400% of the entry price"}  # the barrier rule named
    assert "barriers traded (bundle)" in (tmp_path / "ok" / "report.md").read_text()

    # config labels differ from the bundle's: refused with one line naming both ...
    out = tmp_path / "mismatch"
    line = _one_line_error(CliRunner().invoke(cli, ["backtest", "--model", str(tiny_bundle), "--data", str(bars_file),
                                                    "--output", str(out), "--quiet", "--set", "labels.profit=0.012"]))
    assert "profit=0.012" in line and f"profit={lab.profit:g}" in line and "--barriers config" in line
    assert not out.exists()
    # ... unless the config's barriers are asked for explicitly
    res = _invoke("--model", tiny_bundle, "--data", bars_file, "--output", out, "--barriers", "config",
                  "--set", "labels.profit=0.012", *TRADE)
    assert res.exit_code == 0, res.output
    b = json.loads((out / "metrics.json").read_text())["run"]["barriers"]
    assert b["source"] == "config" and b["profit"] == 0.012 and b["stop"] == lab.stop
    assert "barriers (config): profit 0.012" in res.output


def test_too_few_bars_is_refused_before_writing(tiny_bundle, tmp_path):
    bundle = load_bundle(tiny_bundle)
    frame = synthetic_ohlcv(4000, seed=11, gaps={1800: 10})
    short = tmp_path / "last100.csv"
    write_ohlcv_csv(frame.iloc[-100:], short)  # all out of sample, but < min_bars + 1
    out = tmp_path / "few"
    line = _one_line_error(CliRunner().invoke(cli, ["backtest", "--model", str(tiny_bundle), "--data", str(short),
                                                    "--output", str(out), "--quiet"]))
    assert "only 100 bars" in line and str(bundle.min_bars + 1) in line
    assert not out.exists()


def test_span_without_any_probability_is_refused(tiny_bundle, tmp_path):
    # A gap 40 bars before the end: a span of only the 40 bars after it has enough bars fed
    # (warm-up before the gap) but no full model window after the gap -> no probability.
    frame = synthetic_ohlcv(4000, seed=11, gaps={1800: 10, 3960: 7})
    path = tmp_path / "gap_end.csv"
    write_ohlcv_csv(frame, path)
    after_gap = frame.index[frame.index.to_series().diff() > pd.Timedelta(minutes=15)][-1]
    assert (frame.index >= after_gap).sum() < load_bundle(tiny_bundle).min_bars
    out = tmp_path / "nop"
    line = _one_line_error(CliRunner().invoke(cli, ["backtest", "--model", str(tiny_bundle), "--data", str(path),
                                                    "--output", str(out), "--start", str(after_gap), "--quiet"]))
    assert "no bar of the span" in line and "probability" in line
    assert not out.exists()


def test_end_inside_training_span_says_so(tiny_bundle, bars_file, tmp_path):
    a, b = load_bundle(tiny_bundle).training_span
    end = a + (b - a) / 2
    line = _one_line_error(CliRunner().invoke(cli, ["backtest", "--model", str(tiny_bundle), "--data", str(bars_file),
                                                    "--output", str(tmp_path / "e"), "--end", str(end), "--quiet"]))
    assert "--end" in line and "falls inside the bundle's training span" in line
    assert "data ends" not in line
