"""User strategy code goes through one safe path: every failure is the user's one-line error.

Hooks that raise or call sys.exit(), a module that exits while it imports, an __init__ that
raises, unusable outputs (NaN signals, wrong shapes, values out of range) and old scalar hook
signatures: each is one redacted line naming the strategy, never an "unexpected" crash and
never a successful exit that wrote nothing."""
from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import cli
from core.errors import ConfigError
from core.ohlcv import write_ohlcv_csv
from core.policy import Policy
from core.synthetic import synthetic_ohlcv
from strategies.hooks import UserCodeError, VectorHooks, evaluate_hooks, hook_instance, user_code
from strategies.registry import resolve_strategy

BARS = synthetic_ohlcv(50, seed=1)
PROB = np.full(50, 0.6)
PROB[:5] = np.nan  # warm-up
FVOL = np.full(50, 0.5)


def _evaluate(cls):
    return evaluate_hooks(hook_instance(cls, Policy.default()), BARS, PROB, FVOL)


class _Raises(VectorHooks):
    def signal(self, p, bars):
        raise RuntimeError("boom in signal")


class _Exits(VectorHooks):
    def entry_allowed(self, bars):
        sys.exit(0)


class _NanSignal(VectorHooks):
    def signal(self, p, bars):
        s = self.policy.signals(p)
        s[10:13] = np.nan
        return s


class _NanInWarmup(VectorHooks):
    def signal(self, p, bars):
        return np.where(np.isnan(p), np.nan, 0.1)


class _NanAllowed(VectorHooks):
    def entry_allowed(self, bars):
        return np.where(np.arange(len(bars)) == 7, np.nan, 1.0)


class _Short(VectorHooks):
    def target_weight(self, s, fvol, bars):
        return s[:-1]


class _Text(VectorHooks):
    def entry_allowed(self, bars):
        return ["yes"] * len(bars)


class _TooStrong(VectorHooks):
    def signal(self, p, bars):
        return np.full(len(bars), 2.0)


class _LeaksSecret(VectorHooks):
    def signal(self, p, bars):
        raise ValueError("cannot reach https://user:hunter2pass@api.example.com?apiKey=ABCDEF123456")


def test_a_raising_hook_is_the_users_error():
    with pytest.raises(UserCodeError, match=r"^strategy _Raises: hook signal\(\) failed \(RuntimeError: boom in signal\)$"):
        _evaluate(_Raises)


def test_sys_exit_in_a_hook_is_an_error_not_a_quiet_success():
    with pytest.raises(UserCodeError, match=r"hook entry_allowed\(\) failed \(called sys.exit\(0\)\)"):
        _evaluate(_Exits)


def test_nan_signal_where_p_is_known_is_reported_not_flat():
    with pytest.raises(UserCodeError, match=r"hook signal\(\) returned NaN on 3 bars where the probability is known "
                                            r"\(first bar 10 \("):
        _evaluate(_NanSignal)


def test_nan_where_p_is_unknown_is_the_warm_up_and_allowed():
    out = _evaluate(_NanInWarmup)
    assert np.isnan(out.signal[:5]).all() and (out.signal[5:] == 0.1).all()


@pytest.mark.parametrize("cls,words", [
    (_NanAllowed, r"entry_allowed\(\) returned NaN on 1 bars \(first bar 7"),
    (_Short, r"target_weight\(\) returned shape \(49,\), expected \(50,\)"),
    (_Text, r"entry_allowed\(\) returned list .*expected numbers"),
    (_TooStrong, r"signal\(\) returned 2 on bar 0 .*lies in \[-1, 1\]"),
])
def test_unusable_outputs_are_one_line_each(cls, words):
    with pytest.raises(UserCodeError, match=words) as err:
        _evaluate(cls)
    assert "\n" not in str(err.value)


def test_user_text_is_redacted(monkeypatch):
    with pytest.raises(UserCodeError) as err:
        _evaluate(_LeaksSecret)
    text = str(err.value)
    assert "hunter2pass" not in text and "ABCDEF123456" not in text and "***" in text


def test_old_scalar_hooks_are_refused_when_resolved(tmp_path):
    path = tmp_path / "old.py"
    path.write_text(textwrap.dedent('''
        from strategies.tcn import TCNStrategy

        class Old(TCNStrategy):
            def signal(self, p):
                return 0.0
    '''))
    with pytest.raises(ConfigError, match=r"hook signal\(\) of Old takes \(self, p\); the engines call "
                                          r"signal\(self, p, bars\)"):
        resolve_strategy(f"{path}:Old")


def test_sys_exit_while_importing_is_refused(tmp_path):
    path = tmp_path / "quits.py"
    path.write_text("import sys\nsys.exit(0)\n")
    with pytest.raises(ConfigError, match=r"loading .*quits.py failed \(called sys.exit\(0\)\)"):
        resolve_strategy(f"{path}:Anything")


def test_user_code_guard_blames_only_the_users_file(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(textwrap.dedent('''
        from strategies.tcn import TCNStrategy

        class Mine(TCNStrategy):
            def helper(self):
                return 1 / 0
    '''))
    cls = resolve_strategy(f"{path}:Mine")
    with pytest.raises(UserCodeError, match=r"^strategy Mine: helper\(\) failed \(ZeroDivisionError: division by zero\)$"):
        with user_code(cls):
            object.__new__(cls).helper()
    with pytest.raises(KeyError):  # not the user's: passes through unchanged
        with user_code(cls):
            {}["nts's own bug"]
    with pytest.raises(UserCodeError, match=r"called sys.exit\(3\) while running"):
        with user_code(cls):
            sys.exit(3)


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def bars_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("uc") / "bars.csv"
    write_ohlcv_csv(synthetic_ohlcv(4000, seed=11, gaps={1800: 10}), path)
    return path


BODIES = {
    "init": ("def __init__(self):\n        raise RuntimeError('init broke')", r"__init__\(\) failed \(RuntimeError: init broke\)"),
    "hook": ("def signal(self, p, bars):\n        raise RuntimeError('hook broke')", r"signal\(\) failed \(RuntimeError: hook broke\)"),
    "exit": ("def entry_allowed(self, bars):\n        raise SystemExit(0)", r"sys.exit\(0\)"),
    "nan": ("def signal(self, p, bars):\n        return p * np.nan", r"signal\(\) returned NaN on"),
}


@pytest.mark.parametrize("kind", sorted(BODIES))
@pytest.mark.parametrize("command", ["backtest", "sweep"])
def test_cli_user_failures_are_one_line_and_write_nothing(kind, command, tiny_bundle, bars_file, tmp_path):
    body, words = BODIES[kind]
    if command == "sweep" and kind == "init":
        pytest.skip("the sweep never runs a strategy's __init__ (hooks run on hook_instance)")
    path = tmp_path / "broken.py"
    path.write_text("import numpy as np\nfrom strategies.tcn import TCNStrategy\n\n\nclass Broken(TCNStrategy):\n"
                    f"    {body}\n")
    out = tmp_path / "out"
    extra = ["--grid-set", "deadband=0,0.1", "--grid-set", "blocks=4", "--folds", "1"] if command == "sweep" else []
    res = CliRunner().invoke(cli, [command, "--model", str(tiny_bundle), "--data", str(bars_file), "--output",
                                   str(out), "--strategy", f"{path}:Broken", "--quiet", *extra])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: strategy Broken: "), res.output
    assert "unexpected" not in lines[0]
    import re

    assert re.search(words, lines[0]), lines[0]
    assert not out.exists()


def test_the_sweep_refuses_a_strategy_that_overrides_more_than_hooks(tmp_path):
    from sweeps.job import sweepable

    path = tmp_path / "custom.py"
    path.write_text(textwrap.dedent('''
        from strategies.tcn import TCNStrategy

        class Hooks(TCNStrategy):
            params = (("n", 3),)

            def entry_allowed(self, bars):
                return bars.index.hour < 6

        class Custom(Hooks):
            def next(self):
                super().next()
    '''))
    assert sweepable(resolve_strategy(f"{path}:Hooks")) is not None
    with pytest.raises(ConfigError, match=r"^strategy Custom overrides next\(\): the sweep runs only the vectorised"):
        sweepable(resolve_strategy(f"{path}:Custom"))
