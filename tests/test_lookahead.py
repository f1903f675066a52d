"""The lookahead check: hooks evaluated on growing prefixes must give the whole span's values.

A deliberately peeking strategy (tests/fixtures/peeking_strategy.py) is caught with the hook,
the bar and both values; every builtin strategy passes; `nts strategy check` says so in one
line per peek and exits non-zero."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cli.main import cli
from core.config import load_config
from core.ohlcv import write_ohlcv_csv
from core.policy import Policy
from core.synthetic import synthetic_ohlcv
from strategies.hooks import VectorHooks, hook_instance
from strategies.lookahead import check_lookahead, check_strategy, neutral_probabilities, prefix_ends
from strategies.registry import BUILTIN

FIXTURE = Path(__file__).parent / "fixtures" / "peeking_strategy.py"


class _Causal(VectorHooks):
    """Rolling and expanding statistics: causal, and float sums that differ in the last bits."""

    def signal(self, p, bars):
        z = bars["close"].pct_change().rolling(20, min_periods=1).mean().fillna(0.0).to_numpy()
        return np.clip(self.policy.signals(p) + 10 * z, -1, 1)

    def entry_allowed(self, bars):
        return (bars["close"] >= bars["close"].expanding().mean()).to_numpy()


class _Centred(VectorHooks):
    """A centred rolling mean (the classic pandas mistake): reads 2 bars ahead."""

    def entry_allowed(self, bars):
        c = bars["close"]
        return (c > c.rolling(5, center=True, min_periods=1).mean()).to_numpy()


class _ScaledWeight(VectorHooks):
    """target_weight normalised by the largest forecast of the whole span."""

    def target_weight(self, s, fvol, bars):
        return s * np.nan_to_num(fvol) / np.nanmax(fvol)


@pytest.fixture(scope="module")
def inputs():
    bars = synthetic_ohlcv(600, seed=3)
    policy = Policy.default()
    prob = neutral_probabilities(len(bars), policy.center)
    fvol = np.linspace(0.3, 0.9, len(bars))
    return bars, policy, prob, fvol


def test_causal_hooks_pass(inputs):
    bars, policy, prob, fvol = inputs
    report = check_lookahead(hook_instance(_Causal, policy), bars, prob, fvol, prefixes=60)
    assert report.ok, [p.line() for p in report.peeks[:3]]
    assert report.prefixes == 60 and report.bars == 600


def test_centred_window_is_caught_at_the_bars_it_peeks(inputs):
    bars, policy, prob, fvol = inputs
    report = check_lookahead(hook_instance(_Centred, policy), bars, prob, fvol, prefixes=len(bars))
    assert report.hooks() == ["entry_allowed"]
    # every peek is within the 2 bars before a prefix end: the only bars whose window reaches past it
    assert all(p.prefix_end - p.bar <= 1 for p in report.peeks)
    peek = report.peeks[0]
    assert peek.on_prefix != peek.on_full and peek.time == bars.index[peek.bar]
    assert "hook entry_allowed() at bar" in peek.line()


def test_target_weight_is_blamed_only_for_its_own_peek(inputs):
    bars, policy, prob, fvol = inputs
    report = check_lookahead(hook_instance(_ScaledWeight, policy), bars, prob, fvol, prefixes=30)
    assert report.hooks() == ["target_weight"]


def test_prefix_ends_are_growing_and_stop_before_the_full_length():
    ends = prefix_ends(100, 10)
    assert ends[0] == 2 and ends[-1] == 99 and (np.diff(ends) > 0).all()
    assert len(prefix_ends(100, 1000)) == 98  # every length 2 .. 99 once


def _peeking(name: str) -> str:
    return f"{FIXTURE}:{name}"


@pytest.mark.parametrize("name,hook", [("PeekNextClose", "entry_allowed"), ("PeekDayHigh", "signal")])
def test_peeking_example_is_caught(name, hook):
    cfg = load_config(None)
    report = check_strategy(_peeking(name), synthetic_ohlcv(800, seed=5), cfg, bars=800, prefixes=50)
    assert not report.ok and report.hooks() == [hook]


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_builtin_strategy_is_causal(name):
    cfg = load_config(None)
    report = check_strategy(name, synthetic_ohlcv(1500, seed=9, gaps={700: 5}), cfg, bars=1500, prefixes=150)
    assert report.ok, [p.line() for p in report.peeks[:3]]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("la") / "bars.csv"
    write_ohlcv_csv(synthetic_ohlcv(900, seed=4), path)
    return path


def _check(*args):
    return CliRunner().invoke(cli, ["strategy", "check", *map(str, args)])


def test_cli_flags_the_peeking_example_with_hook_bar_and_values(data_file):
    res = _check(_peeking("PeekNextClose"), "--data", data_file, "--bars", 500, "--prefixes", 40)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    peeks = [ln for ln in lines if ln.startswith("lookahead: hook entry_allowed() at bar ")]
    assert peeks and " with bars up to bar " in peeks[0] and "once later bars are appended" in peeks[0]
    assert lines[-1].startswith("error: strategy PeekNextClose peeks at later bars: entry_allowed()")


def test_cli_passes_a_builtin_with_the_model(tiny_bundle, data_file):
    res = _check("night_only", "--data", data_file, "--model", tiny_bundle, "--bars", 400, "--prefixes", 20)
    assert res.exit_code == 0, res.output
    assert "ok: no hook value changed" in res.output and "P: the model" in res.output


def test_cli_unknown_strategy_is_one_line(data_file):
    res = _check("no_such_thing", "--data", data_file)
    assert res.exit_code == 2 and res.output.startswith("error: unknown strategy 'no_such_thing'")
    assert len(res.output.strip().splitlines()) == 1


def test_builtins_pass_and_the_peek_is_caught_on_real_candles(real_candles):
    cfg = load_config(None)
    bars = real_candles.iloc[-3000:]
    for name in sorted(BUILTIN):
        report = check_strategy(name, bars, cfg, bars=3000, prefixes=60)
        assert report.ok, (name, [p.line() for p in report.peeks[:3]])
    peeking = check_strategy(_peeking("PeekNextClose"), bars, cfg, bars=3000, prefixes=60)
    assert peeking.hooks() == ["entry_allowed"] and len(peeking.peeks) > 10
