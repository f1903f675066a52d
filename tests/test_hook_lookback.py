"""hook_lookback: the trailing bars a strategy's hooks need (freqtrade's startup_candle_count).

Paper and live evaluate the hooks over that many bars only; `nts strategy check` proves the
number (a hook looking back 50 bars passes declared 50, fails declared 10, naming strategy and
hook); a paper session with a declared lookback trades as the backtest does, fill for fill,
while its hooks never see more than the declared bars; the session freezes the warm-up's
objects for the garbage collector while it trades and unfreezes them at its end.
"""
from __future__ import annotations

import gc

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cli.main import cli
from core.config import load_config
from core.ohlcv import write_ohlcv_csv
from core.policy import Policy
from core.synthetic import synthetic_ohlcv
from models.bundle import load_bundle
from strategies.backtest import run_backtest, warmup_bars_for
from strategies.examples import CalmOnly, NightOnly, TrendFollow
from strategies.hooks import UserCodeError, declared_lookback, hook_instance
from strategies.lookahead import check_lookback, check_strategy, neutral_probabilities
from strategies.tcn import TCNStrategy
from test_paper_session import TF, assert_same_as_backtest, journal_view, make_cfg, ms, run_session
from venues.replay import ReplayExchange

LOOK = 50


def _above_mean(bars: pd.DataFrame, n: int) -> np.ndarray:
    """True where the close is above the mean of its last ``n`` closes (``n`` bars back)."""
    c = bars["close"]
    return (c > c.rolling(n, min_periods=n).mean()).to_numpy()


# gc.get_freeze_count() as of the last gc.freeze()/gc.unfreeze() (the only calls that change
# it): read after each of them by _watch_gc_freeze below, so a hook call records it in O(1).
# gc.get_freeze_count() itself walks the whole permanent generation (CPython 3.11): ~50 ms per
# call with a test worker's heap frozen, and called on every hook call the paper test took
# 60-140 s instead of ~15.
FROZEN = [0]


@pytest.fixture(autouse=True)
def _watch_gc_freeze(monkeypatch):
    """Wrap gc.freeze/gc.unfreeze (the session calls them through the module) to keep FROZEN."""
    real_freeze, real_unfreeze = gc.freeze, gc.unfreeze

    def freeze():
        real_freeze()
        FROZEN[0] = gc.get_freeze_count()

    def unfreeze():
        real_unfreeze()
        FROZEN[0] = gc.get_freeze_count()

    FROZEN[0] = gc.get_freeze_count()
    monkeypatch.setattr(gc, "freeze", freeze)
    monkeypatch.setattr(gc, "unfreeze", unfreeze)


class Undeclared(TCNStrategy):
    """Longs only above the 50-bar mean of the close, no hook_lookback: the whole history."""

    seen: list[tuple[int, int]] = []   # (rows the hook got, gc.get_freeze_count() then) per call

    def signal(self, p, bars):
        type(self).seen.append((len(bars), FROZEN[0]))
        s = super().signal(p, bars)
        return np.where(_above_mean(bars, LOOK), np.maximum(s, 0.0), np.minimum(s, 0.0))


class Declared50(Undeclared):
    """The same hook with its lookback declared."""

    seen: list[tuple[int, int]] = []
    hook_lookback = LOOK


class Declared10(Undeclared):
    """The same hook declared too short."""

    hook_lookback = 10


class Child(Declared50):
    """Overrides another hook below the declaration: the parent's number does not cover it."""

    def entry_allowed(self, bars):
        return np.ones(len(bars), dtype=bool)


class Bad(TCNStrategy):
    hook_lookback = 0

    def signal(self, p, bars):
        return super().signal(p, bars)


def _lookback(cls):
    return declared_lookback(hook_instance(cls, Policy.default()))


def test_which_lookback_a_class_declares():
    assert _lookback(TCNStrategy) == 1 and _lookback(NightOnly) == 1          # per-bar rules
    assert _lookback(CalmOnly) == 96 + 672 and _lookback(TrendFollow) == 2000  # properties reading self.p
    assert declared_lookback(hook_instance(CalmOnly, Policy.default(), {"mean_bars": 100})) == 196
    assert _lookback(Undeclared) is None and _lookback(Child) is None
    assert _lookback(Declared50) == LOOK
    with pytest.raises(UserCodeError, match=r"^strategy Bad: hook_lookback is 0: give the bars"):
        _lookback(Bad)


def test_check_proves_a_declared_lookback():
    bars = synthetic_ohlcv(600, seed=3)
    policy = Policy.default()
    prob = neutral_probabilities(len(bars), policy.center)
    fvol = np.full(len(bars), 0.5)
    good = check_lookback(hook_instance(Declared50, policy), bars, prob, fvol, LOOK, samples=60)
    assert good.ok and good.sampled == 60
    short = check_lookback(hook_instance(Declared10, policy), bars, prob, fvol, 10, samples=60)
    assert not short.ok and short.hooks() == ["signal"] and len(short.misses) > 5
    line = short.summary("Declared10")
    assert line.startswith("strategy Declared10: hook_lookback = 10 is too short: signal() changed at ")
    assert "hook signal() at bar" in short.misses[0].line()
    assert check_lookback(hook_instance(Declared50, policy), bars.iloc[:LOOK], prob[:LOOK], fvol[:LOOK],
                          LOOK).sampled == 0   # no bar with a longer history: nothing to verify


@pytest.fixture(scope="module")
def strategy_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lb") / "mine.py"
    path.write_text(
        "import numpy as np\nfrom strategies.tcn import TCNStrategy\n\n\n"
        "class Mean50(TCNStrategy):\n"
        "    hook_lookback = 50\n\n"
        "    def entry_allowed(self, bars):\n"
        "        c = bars['close']\n"
        "        return (c > c.rolling(50, min_periods=50).mean()).to_numpy()\n\n\n"
        "class Declared50(Mean50):\n    hook_lookback = 50\n\n\n"
        "class Declared10(Mean50):\n    hook_lookback = 10\n\n\n"
        "class Undeclared(Mean50):\n    hook_lookback = None\n")
    data = path.with_name("bars.csv")
    write_ohlcv_csv(synthetic_ohlcv(700, seed=4), data)
    return path, data


def _check(path, data, name):
    return CliRunner().invoke(cli, ["strategy", "check", f"{path}:{name}", "--data", str(data), "--bars", "600",
                                    "--prefixes", "40"])


def test_cli_verifies_the_lookback_in_one_line(strategy_file):
    path, data = strategy_file
    ok = _check(path, data, "Declared50")
    assert ok.exit_code == 0, ok.output
    assert ("ok: hook_lookback = 50: the trailing 50 bars give the whole history's values at 40 sampled bars"
            in ok.output)
    short = _check(path, data, "Declared10")
    assert short.exit_code == 2, short.output
    lines = short.output.strip().splitlines()
    assert "ok: no hook value changed when later bars were appended" in lines  # causal, just declared too short
    assert any(ln.startswith("lookback: hook entry_allowed() at bar ") for ln in lines)
    assert lines[-1].startswith("error: strategy Declared10: hook_lookback = 10 is too short: entry_allowed() "
                                "changed at "), lines[-1]
    none = _check(path, data, "Undeclared")
    assert none.exit_code == 0, none.output
    assert none.output.strip().splitlines()[-1].startswith(
        "note: Undeclared declares no hook_lookback for its hooks: paper and live evaluate them over the whole history")


def test_builtins_pass_their_declared_lookback_on_real_candles(real_candles):
    cfg = load_config(None)
    for name in ("calm_only", "trend_follow", "night_only", "tcn"):
        report = check_strategy(name, real_candles.iloc[-3000:], cfg, bars=3000, prefixes=40).lookback
        assert report.ok and report.sampled == 40, (name, [m.line() for m in report.misses[:3]])


@pytest.mark.timeout(240)
def test_declared_lookback_trades_as_the_backtest_on_paper(tmp_path, fast_bundle):
    """Paper with the hooks over their 50 trailing bars (history rows included at first) equals
    the backtest fill for fill, also stopped and resumed half-way; the undeclared class sees the
    whole, growing history and trades the same."""
    cfg = make_cfg(tmp_path)
    fast = load_bundle(fast_bundle)
    warm = warmup_bars_for(fast, cfg)
    frame = synthetic_ohlcv(warm + 160, seed=29, start="2024-03-01")
    s, e = frame.index[warm + 5], frame.index[warm + 149]
    bt_res = run_backtest(fast, frame, cfg, strategy=Declared50, start=s, end=e + TF, progress=False,
                          allow_in_sample=True)
    plain = run_backtest(fast, frame, cfg, start=s, end=e + TF, progress=False, allow_in_sample=True)
    assert len(bt_res.fills) != len(plain.fills)  # the hook bites on this span
    Declared50.seen.clear()
    with ReplayExchange(frame, start=s + pd.Timedelta("1min")) as ex:
        run_session(fast_bundle, cfg, tmp_path / "d50.db", ex, stop_ms=ms(e), strategy=Declared50)
    assert_same_as_backtest(journal_view(tmp_path / "d50.db"), bt_res, s, e, min_fills=4)
    rows = [r for r, _ in Declared50.seen]
    assert len(rows) >= 145 and set(rows) == {LOOK}  # the window, never the history
    # the warm-up's objects are frozen while it trades, unfrozen once the session ended
    assert all(frozen > 0 for _, frozen in Declared50.seen) and gc.get_freeze_count() == 0
    # stopped and resumed: the resumed warm-up ends at the checkpoint, the window reaches into it
    with ReplayExchange(frame, start=s + pd.Timedelta("1min")) as ex:
        run_session(fast_bundle, cfg, tmp_path / "r.db", ex, stop_ms=ms(frame.index[warm + 70]), strategy=Declared50)
        resumed = run_session(fast_bundle, cfg, tmp_path / "r.db", ex, stop_ms=ms(e), strategy=Declared50)
    assert resumed.resumed and resumed.warmup_bars == warm
    assert_same_as_backtest(journal_view(tmp_path / "r.db"), bt_res, s, e, min_fills=4)
    Undeclared.seen.clear()
    with ReplayExchange(frame, start=s + pd.Timedelta("1min")) as ex:
        run_session(fast_bundle, cfg, tmp_path / "u.db", ex, stop_ms=ms(e), strategy=Undeclared)
    rows = [r for r, _ in Undeclared.seen]
    assert rows[0] >= warm - 1 and rows[-1] - rows[0] >= 140  # the whole history, growing every bar
    undeclared = journal_view(tmp_path / "u.db")
    assert [f.ts for f in undeclared["fills"]] == [f.ts for f in journal_view(tmp_path / "d50.db")["fills"]]
