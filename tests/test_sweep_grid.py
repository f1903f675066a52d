"""The sweep grid: configs/sweep.yaml validated like the main config, combinations, overrides."""
from __future__ import annotations

import itertools
import textwrap

import pandas as pd
import pytest

from core.config import load_config
from core.errors import ConfigError
from sweeps.grid import AXES, DEFAULT_SWEEP, defaults_from_config, load_grid

DEFAULTS = {
    "profit": 0.008, "stop": 0.004, "max_hold": 8, "deadband": 0.3, "center": 0.5,
    "limit_confidence": 0.5, "taker_fee": 0.001, "maker_fee": 0.001, "slippage_bps": 2.0,
}


def _file(tmp_path, text: str):
    p = tmp_path / "sweep.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_shipped_grid_loads_with_the_main_config_defaults():
    grid = load_grid(None, [], defaults_from_config(load_config()))
    assert 200 <= grid.size <= 500 and grid.size == 288
    assert grid.blocks == 16 and grid.blocks % 2 == 0 and grid.blocks % grid.folds == 0
    assert grid.values("taker_fee") == (load_config().execution.taker_fee,)  # not in the file: main config
    assert "taker_fee" not in grid.swept and "deadband" in grid.swept
    assert grid.values("center") == (0.5, "breakeven")


def test_every_shipped_key_has_a_comment():
    for line in DEFAULT_SWEEP.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and line.rstrip() != "grid:":
            assert "#" in line, f"undocumented key line: {line!r}"


def test_combination_count_and_order(tmp_path):
    p = _file(tmp_path, """
        grid:
          profit: [0.01, 0.02]
          max_hold: 8
          deadband: [0.0, 0.5, 0.1]
          center: [breakeven, 0.4]
        """)
    grid = load_grid(p, [], DEFAULTS)
    df = grid.combinations()
    assert grid.size == len(df) == 2 * 3 * 2
    assert list(df.columns) == list(AXES)
    # nested loops in AXES order, last axis innermost, values in the order written
    want = list(itertools.product([0.01, 0.02], [0.004], [8], [0.0, 0.5, 0.1], ["breakeven", 0.4],
                                  [0.5], [0.001], [0.001], [2.0]))
    assert [tuple(r) for r in df.itertuples(index=False)] == want
    assert df["max_hold"].dtype == "int64" and df["profit"].dtype == "float64" and df["center"].dtype == object
    assert grid.combinations().equals(df)  # deterministic


def test_all_numeric_center_is_a_float_column(tmp_path):
    df = load_grid(_file(tmp_path, "grid:\n  center: [0.3, 0.5]\n"), [], DEFAULTS).combinations()
    assert df["center"].dtype == "float64" and list(df["center"]) == [0.3, 0.5]


def test_overrides_replace_axes_and_settings(tmp_path):
    p = _file(tmp_path, "grid:\n  deadband: [0.3]\n")
    grid = load_grid(p, ["deadband=0,0.1,0.3", "grid.center=0.5,breakeven", "stop=[0.002, 0.004]",
                         "profit=1e-2", "blocks=8", "folds=2", "top=3"], DEFAULTS)
    assert grid.values("deadband") == (0.0, 0.1, 0.3)
    assert grid.values("center") == (0.5, "breakeven")
    assert grid.values("stop") == (0.002, 0.004) and grid.values("profit") == (0.01,)
    assert (grid.blocks, grid.folds, grid.top, grid.size) == (8, 2, 3, 12)
    assert grid.source.endswith("+ overrides")


def test_exponent_floats_in_yaml_are_numbers(tmp_path):
    grid = load_grid(_file(tmp_path, "grid:\n  taker_fee: [1e-3, 2.5E-3]\n"), [], DEFAULTS)
    assert grid.values("taker_fee") == (0.001, 0.0025)


def test_limit_confidence_above_one_means_never_limit_and_is_accepted(tmp_path):
    grid = load_grid(_file(tmp_path, "grid:\n  limit_confidence: [0, 0.5, 2]\n"), [], DEFAULTS)
    assert grid.values("limit_confidence") == (0.0, 0.5, 2.0)


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("grid:\n  dedband: [0.1]\n", r"unknown key 'grid\.dedband' \(known: profit"),
        ("grids:\n  deadband: [0.1]\n", r"unknown key 'grids'"),
        ("grid:\n  deadband: []\n", r"grid\.deadband: empty axis$"),
        ("grid:\n  deadband:\n", r"grid\.deadband: empty axis$"),
        ("grid:\n  stop: [0.1, 0.2, -0.1]\n", r"grid\.stop\[2\]: -0\.1 must be > 0$"),
        ("grid:\n  profit: [0.5, 1]\n", r"grid\.profit\[1\]: 1 must be < 1$"),
        ("grid:\n  max_hold: [8, 0]\n", r"grid\.max_hold\[1\]: 0 must be >= 1$"),
        ("grid:\n  max_hold: [8.0]\n", r"grid\.max_hold\[0\]: 8\.0 must be an integer$"),
        ("grid:\n  deadband: ['0.1']\n", r"grid\.deadband\[0\]: '0\.1' must be a number$"),
        ("grid:\n  deadband: [true]\n", r"grid\.deadband\[0\]: True must be a number$"),
        ("grid:\n  deadband: [.nan]\n", r"grid\.deadband\[0\]: nan must be a finite number$"),
        ("grid:\n  deadband: [-0.1]\n", r"grid\.deadband\[0\]: -0\.1 must be >= 0$"),
        ("grid:\n  center: [0.5, 1.0]\n", r"grid\.center\[1\]: 1\.0 must be a number in \(0, 1\) or 'breakeven'$"),
        ("grid:\n  center: [Breakeven]\n", r"grid\.center\[0\]: 'Breakeven' must be a number"),
        ("grid:\n  taker_fee: [0.1]\n", r"grid\.taker_fee\[0\]: 0\.1 must be < 0\.1$"),  # as execution.taker_fee
        ("grid:\n  deadband: [1.0]\n", r"grid\.deadband\[0\]: 1\.0 must be < 1$"),  # as strategy.deadband
        ("grid:\n  maker_fee: [-0.02]\n", r"grid\.maker_fee\[0\]: -0\.02 must be >= -0\.01$"),
        ("grid:\n  slippage_bps: [1001]\n", r"grid\.slippage_bps\[0\]: 1001 must be <= 1000$"),
        ("grid:\n  deadband: [0.1, 0.3, 0.1]\n", r"grid\.deadband\[2\]: duplicate value 0\.1$"),
        ("grid: 5\n", r"grid: must be a mapping"),
        ("blocks: 15\n", r"blocks: 15 must be even"),
        ("blocks: 0\n", r"blocks: 0 must be >= 2"),
        ("blocks: 16\nfolds: 3\n", r"folds: 3 must divide blocks \(16\)"),
        ("top: 2.5\n", r"top: 2\.5 must be an integer"),
        ("- 1\n- 2\n", r"top level must be a mapping"),
        ("grid:\n  deadband: [0.1\n", r"not valid YAML at line"),
    ],
)
def test_refusals_name_the_key(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        load_grid(_file(tmp_path, text), [], DEFAULTS)
    assert "\n" not in str(info.value) and "sweep.yaml" in str(info.value)


def test_duplicate_keys_are_refused(tmp_path):
    p = _file(tmp_path, "grid:\n  deadband: [0.1]\n  stop: [0.004]\n  deadband: [0.3]\nblocks: 16\n")
    with pytest.raises(ConfigError, match=r"key 'grid\.deadband' appears twice \(lines 2 and 4\)"):
        load_grid(p, [], DEFAULTS)
    with pytest.raises(ConfigError, match=r"key 'top' appears twice"):
        load_grid(_file(tmp_path, "top: 5\ntop: 6\n"), [], DEFAULTS)


def test_breakeven_is_accepted(tmp_path):
    grid = load_grid(_file(tmp_path, "grid:\n  center: breakeven\n"), [], DEFAULTS)
    assert grid.values("center") == ("breakeven",) and grid.size == 1


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("deadband", r"override 'deadband': expected axis=v1,v2"),
        ("dedband=0.1", r"override 'dedband=0\.1': unknown key 'dedband'"),
        ("grid.blocks=8", r"unknown key 'grid\.blocks'"),
        ("deadband=", r"grid\.deadband: empty axis$"),
        ("stop=0.1,0.2,-0.1", r"\+ overrides: grid\.stop\[2\]: -0\.1 must be > 0$"),
        ("center=0.5,nope", r"grid\.center\[1\]: 'nope' must be a number in \(0, 1\) or 'breakeven'"),
        ("max_hold=4,8.5", r"grid\.max_hold\[1\]: 8\.5 must be an integer"),
        ("blocks=7", r"blocks: 7 must be even"),
    ],
)
def test_bad_overrides_are_refused(tmp_path, override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_grid(_file(tmp_path, "grid:\n  deadband: [0.3]\n"), [override], DEFAULTS)


def test_missing_axis_without_default_and_bad_defaults(tmp_path):
    p = _file(tmp_path, "grid:\n  deadband: [0.3]\n")
    partial = {k: v for k, v in DEFAULTS.items() if k != "slippage_bps"}
    with pytest.raises(ConfigError, match=r"grid\.slippage_bps: not given and no default"):
        load_grid(p, [], partial)
    with pytest.raises(ConfigError, match=r"main config: grid\.maker_fee\[0\]: -0\.05 must be >= -0\.01"):
        load_grid(p, [], {**DEFAULTS, "maker_fee": -0.05})
    with pytest.raises(ConfigError, match=r"unknown axis 'horizon'"):
        load_grid(p, [], {**DEFAULTS, "horizon": 8})


def test_grid_above_max_rows_is_refused_in_one_line(tmp_path):
    p = _file(tmp_path, "grid:\n  deadband: [0.1, 0.2, 0.3]\n  stop: [0.001, 0.002]\nmax_rows: 5\n")
    with pytest.raises(ConfigError, match=r"grid has 6 rows \(2 stop x 3 deadband\), above max_rows 5$"):
        load_grid(p, [], DEFAULTS)
    assert load_grid(p, ["max_rows=6"], DEFAULTS).size == 6


def test_default_max_rows_is_one_million(tmp_path):
    axis = "[" + ", ".join(f"{0.001 * i:.3f}" for i in range(1, 101)) + "]"  # 100 values
    p = _file(tmp_path, f"grid:\n  deadband: {axis}\n  profit: {axis}\n  stop: {axis}\n")
    grid = load_grid(p, [], DEFAULTS)
    assert grid.size == 1_000_000 and grid.max_rows == 1_000_000  # exactly at the limit: accepted
    df = grid.combinations()
    assert len(df) == 1_000_000 and df["deadband"].iloc[-1] == 0.1 and df["stop"].iloc[100] == 0.002 and df["profit"].iloc[10_000] == 0.002
    with pytest.raises(ConfigError, match=r"grid has 2,000,000 rows .* above max_rows 1,000,000$"):
        load_grid(p, ["max_hold=1,2"], DEFAULTS)


def test_grid_is_frozen():
    grid = load_grid(None, [], DEFAULTS)
    with pytest.raises(AttributeError):
        grid.top = 3  # type: ignore[misc]
    assert isinstance(grid.combinations(), pd.DataFrame)
