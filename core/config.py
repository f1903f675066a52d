"""Typed configuration: `configs/default.yaml` validated at load.

Unknown keys, wrong types and out-of-range values are refused with one line that names
the offending key path (e.g. ``labels.profit``). Overrides use ``key.path=value`` where the
value is parsed as YAML (``--set labels.horizon=12``, ``--set strategy.center=breakeven``).
"""
from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any, Literal, Sequence, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from core.errors import ConfigError
from core.redact import redact_obj, register_secret_env
from core.timeframes import timeframe_seconds

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.yaml"


class _Strict(BaseModel):
    """Base for every section: unknown keys are errors, assignments are validated."""

    # strict: no silent coercion ("0.01" -> 0.01, true -> 1, "no" -> False); ints still fill
    # float fields. inf/nan are never a sensible parameter.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


class DataConfig(_Strict):
    exchange: str = "binance"
    symbol: str = "BTC/USDT"
    timeframe: str = "15m"
    market: Literal["spot", "margin", "futures"] = "spot"  # shorts need margin or futures

    @field_validator("timeframe")
    @classmethod
    def _tf(cls, v: str) -> str:
        try:
            timeframe_seconds(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return v


class FeatureConfig(_Strict):
    return_lag_long: int = Field(5, ge=2, le=1000)
    realized_vol_window: int = Field(20, ge=2, le=10000)
    ewma_vol_fast_span: int = Field(20, ge=2, le=10000)
    ewma_vol_slow_span: int = Field(96, ge=2, le=10000)
    momentum_window: int = Field(20, ge=1, le=10000)
    rsi_window: int = Field(14, ge=2, le=1000)
    volume_z_window: int = Field(96, ge=2, le=10000)
    sma_fast: int = Field(5, ge=1, le=10000)
    sma_slow: int = Field(20, ge=2, le=10000)

    @model_validator(mode="after")
    def _order(self) -> "FeatureConfig":
        if self.sma_fast >= self.sma_slow:
            raise ValueError("features.sma_fast must be smaller than features.sma_slow")
        return self


class LabelConfig(_Strict):
    profit: float = Field(0.008, gt=0, lt=1)
    stop: float = Field(0.004, gt=0, lt=1)
    horizon: int = Field(8, ge=1, le=1000)
    tie: Literal["stop", "profit"] = "stop"
    # fixed: barriers at +profit / -stop of the entry close (the seed); vol: at +vol_profit /
    # -vol_stop times the bar's volatility forecast over the horizon, sigma_t * sqrt(horizon),
    # sigma_t = EWMA volatility of 1-bar log returns (span vol_span; models.labels)
    scale: Literal["fixed", "vol"] = "fixed"
    vol_profit: float = Field(1.4, gt=0, le=100)
    vol_stop: float = Field(0.7, gt=0, le=100)
    vol_span: int = Field(20, ge=2, le=10000)


class ModelConfig(_Strict):
    window: int = Field(64, ge=2, le=4096)
    channels: list[int] = Field(default_factory=lambda: [32, 32, 64, 64])
    kernel_size: int = Field(3, ge=2, le=15)
    dilations: list[int] = Field(default_factory=lambda: [1, 2, 4, 8])
    dropout: float = Field(0.1, ge=0, lt=1)
    head_units: int = Field(32, ge=1, le=4096)
    head_dropout: float = Field(0.3, ge=0, lt=1)
    ensemble: int = Field(1, ge=1, le=32)  # K seeds, logits averaged before calibration (models.ensemble)
    # window: every bar's window convolved from scratch (zero padding at its start); sequence: the
    # same blocks run causally over each contiguous stretch, the head pools each bar's last
    # ``window`` outputs (models.sequence_scorer); bundles without the key are window bundles
    context: Literal["window", "sequence"] = "window"

    @model_validator(mode="after")
    def _blocks(self) -> "ModelConfig":
        if len(self.channels) != len(self.dilations) or not self.channels:
            raise ValueError("model.channels and model.dilations must be non-empty and of equal length")
        if any(c < 1 for c in self.channels) or any(d < 1 for d in self.dilations):
            raise ValueError("model.channels and model.dilations must be positive")
        return self


class TrainingConfig(_Strict):
    seed: int = Field(42, ge=0, le=2**32 - 1)  # numpy's seed range (torch takes more)
    epochs: int = Field(20, ge=1, le=10000)
    batch_size: int = Field(256, ge=1, le=1 << 20)
    learning_rate: float = Field(1e-3, gt=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0, lt=1)
    patience: int = Field(3, ge=1, le=1000)
    split: Literal["walk_forward", "purged_kfold"] = "walk_forward"
    # purged k-fold holds out a test fold and its neighbour for validation: 3 folds at least
    # leave one to train on
    folds: int = Field(5, ge=3, le=100)
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    embargo: int = Field(8, ge=0, le=100000)
    calibration: Literal["platt", "isotonic"] = "platt"
    pos_weight: Union[Literal["auto"], float] = "auto"
    threads: int = Field(2, ge=1, le=256)
    max_samples: int | None = Field(None, ge=100)
    # walk-forward schedules (nts train --walk-forward): bars of each fold's training window
    # and of each validity span, as calendar lengths ("12M", "90D", "2W")
    train_window: str = "12M"
    step: str = "1M"

    @field_validator("train_window", "step")
    @classmethod
    def _period(cls, v: str) -> str:
        parse_period(v)  # ValueError with the rule on a bad length
        return v

    @field_validator("pos_weight")
    @classmethod
    def _pw(cls, v: Any) -> Any:
        if v != "auto" and not (math.isfinite(float(v)) and float(v) > 0):
            raise ValueError("must be 'auto' or a positive finite number")
        return v


class CalibrationConfig(_Strict):
    """How the bundle's calibrator maps logits to P while scoring (models.recalibration)."""

    # static: the Platt/isotonic calibrator fitted on the validation span at training time;
    # rolling: Platt refitted every ``refit_bars`` on the last ``window_bars`` bars whose labels
    # are known at decision time (a label at bar t is known only after its horizon ends)
    mode: Literal["static", "rolling"] = "static"
    window_bars: int = Field(2880, ge=50, le=1_000_000)
    refit_bars: int = Field(96, ge=1, le=1_000_000)
    min_samples: int = Field(500, ge=20, le=1_000_000)


class StrategyConfig(_Strict):
    center: Union[float, Literal["breakeven"]] = 0.5
    target_vol: float = Field(0.5, gt=0, le=10)
    deadband: float = Field(0.3, ge=0, lt=1)
    max_position: float = Field(0.95, gt=0, le=1)
    # |s| >= this -> limit entry, else market. |s| <= 1, so any value above 1 means "never a limit
    # order" (always market); the sweep grid takes the same values with the same meaning.
    limit_confidence: float = Field(0.5, ge=0)
    limit_tif_bars: int = Field(1, ge=1, le=1000)
    max_hold: int | None = Field(None, ge=1, le=1000)  # None: labels.horizon
    allow_short: bool = False

    @field_validator("center")
    @classmethod
    def _center(cls, v: Any) -> Any:
        if v != "breakeven" and not 0.0 < float(v) < 1.0:
            raise ValueError("must be 'breakeven' or a probability strictly between 0 and 1")
        return v


class RiskConfig(_Strict):
    max_position: float = Field(0.95, gt=0, le=1)
    max_leverage: float = Field(1.0, gt=0, le=1.0)
    max_drawdown: float = Field(0.20, gt=0, lt=1)
    max_volatility: float = Field(0.10, gt=0, le=10)
    vol_window_bars: int = Field(96, ge=2, le=100000)
    daily_loss: float = Field(0.05, gt=0, lt=1)
    kill_switch_file: str = "state/KILL"


class ExecutionConfig(_Strict):
    cash: float = Field(10000.0, gt=0)
    taker_fee: float = Field(0.001, ge=0, lt=0.1)
    maker_fee: float = Field(0.001, ge=-0.01, lt=0.1)
    slippage_bps: float = Field(2.0, ge=0, le=1000)


class BrokerConfig(_Strict):
    exchange: str = "binance"
    url: str | None = None
    sandbox: bool = False
    api_key_env: str = "NTS_API_KEY"
    secret_env: str = "NTS_API_SECRET"
    timeout_ms: int = Field(10000, ge=100, le=600000)
    retries: int = Field(5, ge=0, le=100)
    backoff_s: float = Field(1.0, ge=0, le=600)
    journal: str = "state/journal.sqlite"


class Config(_Strict):
    """The whole configuration; each section is a typed, strict model."""

    data: DataConfig = Field(default_factory=DataConfig)
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    labels: LabelConfig = Field(default_factory=LabelConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    risk: RiskConfig = Field(default_factory=RiskConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    broker: BrokerConfig = Field(default_factory=BrokerConfig)

    @model_validator(mode="after")
    def _cross(self) -> "Config":
        if self.training.embargo < self.labels.horizon:
            raise ValueError(
                f"training.embargo ({self.training.embargo}) must be >= labels.horizon ({self.labels.horizon})"
            )
        if self.strategy.allow_short and self.data.market == "spot":
            raise ValueError("strategy.allow_short: true needs data.market margin or futures "
                             "(data.market is spot: a spot market cannot be sold short)")
        return self


_PERIOD = re.compile(r"^([1-9][0-9]{0,3})([DWMY])$")


def parse_period(text: str) -> tuple[int, str]:
    """``"12M"`` -> ``(12, "M")``: a calendar length in days (D), weeks (W), months (M) or
    years (Y); ValueError naming the rule otherwise."""
    m = _PERIOD.match(str(text).strip().upper())
    if not m:
        raise ValueError(f"{text!r} is not a length such as 12M, 90D, 2W or 1Y")
    return int(m.group(1)), m.group(2)


_UNION_TAGS = {"float", "int", "str", "bool", "none"}


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    # Union branches show up in the location ("literal['auto']", "float"): keep field names only.
    loc = ".".join(str(p) for p in first["loc"] if "[" not in str(p) and str(p) not in _UNION_TAGS)
    kind = first["type"]
    if kind == "extra_forbidden":
        return f"{source}: unknown key '{loc}'"
    msg = first["msg"]
    where = f"'{loc}'" if loc else "config"
    value = first.get("input")
    shown = "" if kind in ("missing",) or isinstance(value, dict) else f" (got {value!r})"
    return f"{source}: invalid value for {where}: {msg}{shown}"


# ------------------------------------------------------------------ strict YAML

class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.2; PyYAML's 1.1 rules want a
    dot, and ``1e-3`` would silently stay the string '1e-3')."""


_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_duplicate_keys(root: yaml.Node, source: str) -> None:
    """Refuse a mapping that repeats a key (plain PyYAML silently keeps the last one).

    Iterative and alias-aware: a node reached twice through anchors is checked once, so a
    "billion laughs" document costs nothing here. Merge keys (``<<: *base``) may be
    overridden by explicit keys, as YAML defines; only explicit repeats are refused."""
    stack: list[tuple[yaml.Node, tuple[str, ...]]] = [(root, ())]
    seen_nodes: set[int] = set()
    while stack:
        node, path = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    stack.append((value_node, path))
                    continue
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else id(key_node)
                line = key_node.start_mark.line + 1
                name = ".".join(path + (str(key),))
                if key in first:
                    raise ConfigError(f"{source}: key '{name}' appears twice (lines {first[key]} and {line}); "
                                      "keep one")
                first[key] = line
                stack.append((value_node, path + (str(key),)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, path) for item in node.value)


def parse_yaml_strict(text: str, source: str = "<yaml>") -> Any:
    """Parse one YAML document (safe tags only), refusing a repeated key anywhere, more than
    one document, and nesting deeper than Python can follow; ConfigError naming ``source``
    (and the key or line) otherwise."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicate_keys(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or ""
        if "expected a single document" in str(getattr(exc, "context", "")):
            problem = "more than one YAML document (---); keep one"
        raise ConfigError(f"{source}: not valid YAML{where}" + (f": {problem}" if problem else "")) from None
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply") from None
    finally:
        loader.dispose()


def load_yaml_strict(path: str | Path) -> Any:
    """Read a YAML file with :func:`parse_yaml_strict`: UTF-8 text (a BOM is allowed), one
    document, no repeated key. The one YAML reader of nts (configs, sweep grids, ...):
    every problem is a one-line ConfigError naming the file."""
    src = Path(path)
    try:
        raw = src.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{src}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{src}: is a folder, expected a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"{src}: cannot read ({exc.strerror or exc.__class__.__name__})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{src}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                          "save it as UTF-8") from None
    return parse_yaml_strict(text, str(src))


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into the key path and the YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key.path=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"--set {text!r}: empty key")
    # the same strict YAML as a config file: "--set 'model={a: 1, a: 2}'" is refused too
    value = parse_yaml_strict(raw, f"--set {text!r}: value") if raw.strip() else None
    return path, value


def _apply_override(tree: dict, path: list[str], value: Any, text: str) -> None:
    node = tree
    for i, part in enumerate(path[:-1]):
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {text!r}: unknown key '{'.'.join(path[: i + 1])}'")
        node = nxt
    node[path[-1]] = value


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load and validate a config file (default: configs/default.yaml) plus ``--set`` overrides.

    Raises ConfigError with one line naming the file and key on any problem.
    """
    src = Path(path) if path else DEFAULT_CONFIG
    if not src.exists():
        raise ConfigError(f"config file not found: {src}")
    tree = load_yaml_strict(src) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{src}: top level must be a mapping of sections")
    tree = copy.deepcopy(tree)
    # Sections absent from a partial user file fall back to the defaults section by section.
    for text in overrides:
        key_path, value = parse_override(text)
        if key_path[0] not in Config.model_fields:
            raise ConfigError(f"--set {text!r}: unknown key '{key_path[0]}'")
        tree.setdefault(key_path[0], {})
        _apply_override(tree, key_path, value, text)
    source = str(src) + (" + --set overrides" if overrides else "")
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None
    except RecursionError:  # a self-referencing value (&a [*a]) pydantic cannot walk
        raise ConfigError(f"{source}: a value refers to itself (YAML anchor loop)") from None
    # Whatever these variables are called, their values are secrets from now on.
    register_secret_env(cfg.broker.api_key_env, cfg.broker.secret_env)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    """Plain JSON-able dict of a config as stored in bundles and reports: credentials in it
    (a ``broker.url`` with ``user:password@`` or an ``apiKey=`` parameter) are redacted."""
    return redact_obj(cfg.model_dump(mode="json"))
