"""The typed config: defaults load, every refusal names the key."""
from __future__ import annotations

import pytest
import yaml

from core.config import DEFAULT_CONFIG, Config, load_config
from core.timeframes import timeframe_seconds
from core.errors import ConfigError


def test_default_config_matches_seed_numbers():
    cfg = load_config()
    assert cfg.labels.profit == 0.008 and cfg.labels.stop == 0.004 and cfg.labels.horizon == 8
    assert cfg.model.window == 64 and cfg.model.channels == [32, 32, 64, 64]
    assert cfg.strategy.deadband == 0.3 and cfg.strategy.max_position == 0.95
    assert cfg.risk.max_drawdown == 0.20 and cfg.risk.daily_loss == 0.05 and cfg.risk.max_volatility == 0.10


def test_default_yaml_equals_code_defaults():
    # The YAML documents every parameter; the code defaults must not drift from it.
    assert load_config().model_dump() == Config().model_dump()


def test_every_default_key_has_a_comment():
    for line in DEFAULT_CONFIG.read_text().splitlines():
        if line.startswith("  ") and ":" in line and not line.strip().startswith("#"):
            assert "#" in line, f"undocumented key line: {line!r}"


def _write(tmp_path, tree):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(tree))
    return p


def test_unknown_key_is_refused_with_its_path(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'labels.proft'"):
        load_config(_write(tmp_path, {"labels": {"proft": 0.01}}))


def test_unknown_section_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'lables'"):
        load_config(_write(tmp_path, {"lables": {}}))


def test_wrong_type_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"'labels.horizon'"):
        load_config(_write(tmp_path, {"labels": {"horizon": "eight"}}))


def test_out_of_range_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"'risk.max_leverage'"):
        load_config(_write(tmp_path, {"risk": {"max_leverage": 2.0}}))


def test_partial_file_keeps_other_defaults(tmp_path):
    cfg = load_config(_write(tmp_path, {"labels": {"profit": 0.01}}))
    assert cfg.labels.profit == 0.01 and cfg.labels.stop == 0.004 and cfg.model.window == 64


def test_set_overrides_parse_yaml_values():
    cfg = load_config(overrides=["labels.horizon=12", "training.embargo=12", "strategy.center=breakeven"])
    assert cfg.labels.horizon == 12 and cfg.strategy.center == "breakeven"


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("labels.nope=1", r"unknown key 'labels.nope'"),
        ("nosection.x=1", r"unknown key 'nosection'"),
        ("labels.profit=-1", r"'labels.profit'"),
        ("labels.profit", r"expected key.path=value"),
        ("strategy.center=0", r"'strategy.center'"),
        ("labels.profit.deep=1", r"unknown key 'labels.profit'"),
        # purged k-fold needs a fold left to train on besides the test and validation folds
        ("training.folds=2", r"'training.folds'.*greater than or equal to 3"),
    ],
)
def test_bad_overrides_are_refused(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(overrides=[override])


def test_embargo_shorter_than_horizon_is_refused():
    with pytest.raises(ConfigError, match="embargo"):
        load_config(overrides=["labels.horizon=20"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("labels: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_timeframe_seconds():
    assert timeframe_seconds("15m") == 900 and timeframe_seconds("1h") == 3600 and timeframe_seconds("1d") == 86400
    for bad in ("15", "m", "0m", "15x", ""):
        with pytest.raises(ConfigError):
            timeframe_seconds(bad)


@pytest.mark.parametrize(
    "override, key",
    [
        ("labels.horizon=true", "labels.horizon"),       # bool is not an int
        ("labels.profit='0.01'", "labels.profit"),       # a string is not a number
        ("broker.sandbox=no_thanks", "broker.sandbox"),  # nor a bool
        ("execution.cash=.inf", "execution.cash"),
        ("training.pos_weight=.nan", "training.pos_weight"),
        ("data.timeframe=15x", "data.timeframe"),
    ],
)
def test_no_silent_coercion_or_non_finite_values(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(overrides=[override])


def test_ints_still_fill_float_fields():
    assert load_config(overrides=["execution.cash=5000"]).execution.cash == 5000.0
