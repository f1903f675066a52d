"""The sweep grid: ``configs/sweep.yaml`` validated like the main config.

A grid is one list of values per axis; the sweep runs every combination. Axes and their
ranges (a scalar in the file means a one-value axis; values keep the order written)::

    profit            take-profit barrier, fraction of the entry price, (0, 1); for a
                      volatility-scaled policy (labels.scale: vol) a multiple of the decision
                      bar's sigma_t * sqrt(horizon), (0, 100] (load_grid's barrier_scale)
    stop              stop barrier, the same unit as profit
    max_hold          time exit in bars after entry, integer in [1, 1000]
    deadband          |r| below this -> no position, [0, 1)
    center            signal centre: a probability in (0, 1) or the string ``breakeven``
    limit_confidence  |s| >= this -> limit order, else market; >= 0. |s| <= 1, so any
                      value > 1 means "never a limit order" (always market)
    taker_fee         fraction of notional, [0, 0.1)
    maker_fee         fraction of notional, [-0.01, 0.1) (negative: a maker rebate)
    slippage_bps      adverse slippage on market orders, basis points, [0, 1000]

**One meaning everywhere.** Every axis accepts exactly the values the main config accepts
for the same setting (``labels.profit``, ``labels.stop``, ``strategy.max_hold``,
``strategy.deadband``, ``strategy.center``, ``strategy.limit_confidence``,
``execution.taker_fee``, ``execution.maker_fee``, ``execution.slippage_bps``), with the same
meaning, so any sweep row replays in ``nts backtest --set ...`` unchanged.

Axes the file does not give take one value from the main config (the caller passes them
as ``defaults``, e.g. :func:`defaults_from_config`), so a sweep follows the same costs as
``nts backtest`` unless told otherwise. Other keys: ``blocks`` (CSCV blocks S for the
probability of backtest overfitting: even, 2..20), ``folds`` (contiguous time folds the
sweep reports per-row results for; must divide ``blocks`` so that folds are unions of the
same blocks), ``top`` (rows shown in the report) and ``max_rows`` (refuse larger grids).

Refusals are one line naming the file and key: unknown keys, duplicate keys, empty axes,
wrong types (strict: no "0.1" for 0.1, no 8.0 for 8, no true for 1), out-of-range values
with their index (``grid.stop[2]: -0.1 must be > 0``) and duplicate values in an axis.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from core.config import REPO_ROOT, load_yaml_strict, parse_yaml_strict
from core.errors import ConfigError
from core.policy import MIN_MULTIPLE  # below: a fraction of the price written for fixed barriers

DEFAULT_SWEEP = REPO_ROOT / "configs" / "sweep.yaml"
MAX_ROWS = 1_000_000
MAX_ROWS_CAP = 10_000_000  # max_rows itself is bounded: a larger grid is a typo, not a sweep

# The axes, in the order the combinations iterate them (the last one varies fastest).
AXES: tuple[str, ...] = (
    "profit", "stop", "max_hold", "deadband", "center",
    "limit_confidence", "taker_fee", "maker_fee", "slippage_bps",
)
SETTINGS: tuple[str, ...] = ("blocks", "folds", "top", "max_rows")


class _Strict(BaseModel):
    # The main config's rules (core.config._Strict): unknown keys refused, no coercion, no inf/nan.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _center_value(v: Any) -> Any:
    if v == "breakeven":
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 < v < 1.0:
        raise ValueError("must be a number in (0, 1) or 'breakeven'")
    return float(v)


Fraction = Annotated[float, Field(gt=0, lt=1)]
Center = Annotated[Any, AfterValidator(_center_value)]


class GridAxes(_Strict):
    """One list per axis; None = not given (the main config's value is used)."""

    profit: list[Fraction] | None = None
    stop: list[Fraction] | None = None
    max_hold: list[Annotated[int, Field(ge=1, le=1000)]] | None = None
    deadband: list[Annotated[float, Field(ge=0, lt=1)]] | None = None
    center: list[Center] | None = None
    limit_confidence: list[Annotated[float, Field(ge=0)]] | None = None
    taker_fee: list[Annotated[float, Field(ge=0, lt=0.1)]] | None = None
    maker_fee: list[Annotated[float, Field(ge=-0.01, lt=0.1)]] | None = None
    slippage_bps: list[Annotated[float, Field(ge=0, le=1000)]] | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _axis(cls, v: Any) -> Any:
        # Runs only for keys that are present: an explicit null or [] is a mistake, not "default".
        if v is None or (isinstance(v, list) and not v):
            raise ValueError("empty axis")
        return v if isinstance(v, list) else [v]


def _multiple(v: float) -> float:
    if v < MIN_MULTIPLE:
        raise ValueError(f"must be a multiple of the bar's sigma_t*sqrt(horizon) (>= {MIN_MULTIPLE:g}, e.g. 1.4): "
                         "a volatility-scaled model's profit/stop axes are not fractions of the price")
    return v


Multiple = Annotated[float, Field(gt=0, le=100), AfterValidator(_multiple)]  # as labels.vol_profit / vol_stop


class VolGridAxes(GridAxes):
    """The axes of a volatility-scaled policy: profit and stop are multiples of the bar's width."""

    profit: list[Multiple] | None = None
    stop: list[Multiple] | None = None


class SweepConfig(_Strict):
    """The whole sweep file."""

    grid: GridAxes = Field(default_factory=GridAxes)
    blocks: int = Field(16, ge=2, le=20)
    folds: int = Field(4, ge=1, le=20)
    top: int = Field(10, ge=1, le=10000)
    max_rows: int = Field(MAX_ROWS, ge=1, le=MAX_ROWS_CAP)

    @field_validator("blocks")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError("must be even (CSCV splits the blocks in halves)")
        return v

    @model_validator(mode="after")
    def _folds(self) -> SweepConfig:
        if self.blocks % self.folds:
            raise ValueError(f"folds: {self.folds} must divide blocks ({self.blocks}) so each fold is whole blocks")
        return self


@dataclass(frozen=True)
class Grid:
    """A validated sweep grid. ``axes`` holds every axis in :data:`AXES` order."""

    axes: tuple[tuple[str, tuple[Any, ...]], ...]
    swept: tuple[str, ...]  # axes given in the file or overrides; the others came from defaults
    blocks: int
    folds: int
    top: int
    max_rows: int
    source: str

    @property
    def size(self) -> int:
        """Number of combinations (rows of the sweep)."""
        return math.prod(len(v) for _, v in self.axes)

    def values(self, axis: str) -> tuple[Any, ...]:
        """The values of one axis."""
        for name, vals in self.axes:
            if name == axis:
                return vals
        raise ConfigError(f"unknown axis '{axis}' (axes: {', '.join(AXES)})")

    def combinations(self) -> pd.DataFrame:
        """One row per combination, columns = :data:`AXES`.

        Deterministic order: like nested loops over the axes in :data:`AXES` order with the
        last axis innermost, each axis in the order its values were written. ``max_hold``
        is int64, ``center`` float64 unless it holds ``breakeven`` (then object), the rest
        float64.
        """
        lengths = [len(v) for _, v in self.axes]
        total = self.size
        cols: dict[str, Any] = {}
        inner = total
        for (name, vals), n in zip(self.axes, lengths):
            inner //= n
            idx = np.tile(np.repeat(np.arange(n), inner), total // (n * inner))
            if name == "max_hold":
                arr = np.asarray(vals, dtype=np.int64)
            elif any(isinstance(v, str) for v in vals):
                arr = np.asarray(vals, dtype=object)
            else:
                arr = np.asarray(vals, dtype=np.float64)
            cols[name] = arr[idx]
        return pd.DataFrame(cols)


# The main-config key of each axis: ``nts backtest --set KEY=VALUE`` replays a sweep row.
CONFIG_KEYS: dict[str, str] = {
    "profit": "labels.profit", "stop": "labels.stop", "max_hold": "strategy.max_hold",
    "deadband": "strategy.deadband", "center": "strategy.center", "limit_confidence": "strategy.limit_confidence",
    "taker_fee": "execution.taker_fee", "maker_fee": "execution.maker_fee", "slippage_bps": "execution.slippage_bps",
}


# Volatility-scaled barriers (labels.scale: vol): the profit and stop axes are multiples.
VOL_CONFIG_KEYS: dict[str, str] = {**CONFIG_KEYS, "profit": "labels.vol_profit", "stop": "labels.vol_stop"}


def replay_sets(row: Mapping[str, Any], vol_scaled: bool = False) -> list[str]:
    """The ``--set KEY=VALUE`` overrides under which ``nts backtest`` trades a sweep row (with
    ``--barriers config`` so profit and stop come from the config, not the bundle); for a
    volatility-scaled policy the profit/stop axes are ``labels.vol_profit/vol_stop``."""
    keys = VOL_CONFIG_KEYS if vol_scaled else CONFIG_KEYS
    out = []
    for axis in AXES:
        v = row[axis]
        text = v if isinstance(v, str) else (str(int(v)) if axis == "max_hold" else repr(float(v)))
        out.append(f"{keys[axis]}={text}")
    return out


def defaults_from_config(cfg: Any) -> dict[str, Any]:
    """The one value per axis that ``nts backtest`` would use, from a ``core.config.Config``."""
    return {
        "profit": cfg.labels.profit,
        "stop": cfg.labels.stop,
        "max_hold": cfg.strategy.max_hold if cfg.strategy.max_hold is not None else cfg.labels.horizon,
        "deadband": cfg.strategy.deadband,
        "center": cfg.strategy.center,
        "limit_confidence": cfg.strategy.limit_confidence,
        "taker_fee": cfg.execution.taker_fee,
        "maker_fee": cfg.execution.maker_fee,
        "slippage_bps": cfg.execution.slippage_bps,
    }


# --------------------------------------------------------------------------- errors
def _num(x: Any) -> str:
    f = float(x)
    return str(int(f)) if f.is_integer() and abs(f) < 1e15 else repr(f)


def _where(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="),
           "less_than": ("lt", "<"), "less_than_equal": ("le", "<=")}


def _format_error(err: ValidationError, source: str) -> str:
    e = err.errors()[0]
    loc = _where(e["loc"])
    kind, v, ctx = e["type"], e.get("input"), e.get("ctx") or {}
    if kind == "extra_forbidden":
        known = AXES if loc.startswith("grid.") else ("grid",) + SETTINGS
        return f"{source}: unknown key '{loc}' (known: {', '.join(known)})"
    if kind in _BOUNDS:
        key, op = _BOUNDS[kind]
        what = f"{v!r} must be {op} {_num(ctx[key])}"
    elif kind in ("float_type", "float_parsing"):
        what = f"{v!r} must be a number"
    elif kind in ("int_type", "int_parsing", "int_from_float"):
        what = f"{v!r} must be an integer"
    elif kind == "finite_number":
        what = f"{v!r} must be a finite number"
    elif kind in ("model_type", "dict_type", "model_attributes_type"):
        what = f"must be a mapping (got {v!r})"
    elif kind == "value_error":
        msg = str(e["msg"]).removeprefix("Value error, ")
        what = f"{v!r} {msg}" if msg.startswith("must") else msg
        if not loc:  # a check across keys names its keys itself
            return f"{source}: {what}"
    else:
        what = f"{e['msg']} (got {v!r})"
    return f"{source}: {loc}: {what}" if loc else f"{source}: {what}"


# --------------------------------------------------------------------------- loading
def _parse_item(text: str) -> Any:
    s = text.strip()
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    try:
        return yaml.safe_load(s) if s else None
    except yaml.YAMLError:
        return s


def parse_override(text: str) -> tuple[str, str, Any]:
    """Split ``axis=v1,v2`` (or ``grid.axis=...``, or ``blocks=8``) into (section, key, value).

    Axis values are comma-separated (each read as a number where it is one, else as YAML:
    ``center=0.5,breakeven``) or a YAML list ``[0, 0.1]``; an empty value is an empty axis.
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected axis=v1,v2,... or setting=value")
    key, raw = (p.strip() for p in text.split("=", 1))
    if key.startswith("grid."):
        key = key[len("grid."):]
        if key not in AXES:
            raise ConfigError(f"override {text!r}: unknown key 'grid.{key}' (known: {', '.join(AXES)})")
    if key in AXES:
        if not raw:
            return "grid", key, []
        if raw.startswith("["):
            try:
                return "grid", key, parse_yaml_strict(raw, f"override {text!r}")
            except ConfigError as exc:
                raise ConfigError(f"override {text!r}: value is not a valid YAML list") from exc
        return "grid", key, [_parse_item(x) for x in raw.split(",")]
    if key in SETTINGS:
        return "", key, _parse_item(raw)
    raise ConfigError(f"override {text!r}: unknown key '{key}' (known: {', '.join(AXES + SETTINGS)})")


def _read_sweep_tree(src: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """The sweep file's mapping with ``overrides`` applied (not validated yet)."""
    if not src.exists():
        raise ConfigError(f"sweep file not found: {src}")
    tree = load_yaml_strict(src)
    if tree is None:  # refused like a bare "grid:"
        raise ConfigError(f"{src}: empty sweep file: give a grid mapping (see configs/sweep.yaml)")
    if not isinstance(tree, dict):
        raise ConfigError(f"{src}: top level must be a mapping (grid, blocks, folds, top, max_rows)")
    tree = dict(tree)
    if isinstance(tree.get("grid"), dict):
        tree["grid"] = dict(tree["grid"])
    for text in overrides:
        section, key, value = parse_override(text)
        if section:
            if tree.get("grid") is None:
                tree["grid"] = {}
            if isinstance(tree["grid"], dict):  # else validation refuses the file's grid
                tree["grid"][key] = value
        else:
            tree[key] = value
    return tree


class VolSweepConfig(SweepConfig):
    """The sweep file of a volatility-scaled policy (:class:`VolGridAxes`)."""

    grid: VolGridAxes = Field(default_factory=VolGridAxes)


def _grid_axes(given: Mapping[str, Any], defaults: Mapping[str, Any], source: str,
               model: type[SweepConfig] = SweepConfig) -> list[tuple[str, tuple]]:
    """Every axis's values: as given, else the main config's default (checked against the
    sweep's range); refuses unknown default axes and repeated values."""
    unknown = sorted(set(defaults) - set(AXES))
    if unknown:
        raise ConfigError(f"sweep defaults: unknown axis '{unknown[0]}' (axes: {', '.join(AXES)})")
    axes = []
    for name in AXES:
        if name in given:
            vals = given[name]
        elif name in defaults:
            try:  # the main config's value must also fit the sweep's range
                vals = getattr(model.model_validate({"grid": {name: defaults[name]}}).grid, name)
            except ValidationError as err:
                raise ConfigError(_format_error(err, "sweep default from the main config")) from None
        else:
            raise ConfigError(f"{source}: grid.{name}: not given and no default from the main config")
        _check_unique(name, vals, source)
        axes.append((name, tuple(vals)))
    return axes


def load_grid(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    defaults: Mapping[str, Any] | None = None,
    barrier_scale: str = "fixed",
) -> Grid:
    """Load and validate a sweep file (default: configs/sweep.yaml) plus overrides.

    ``barrier_scale``: the swept policy's barrier rule; with ``"vol"`` the profit and stop
    axes are multiples of the bar's width (:class:`VolGridAxes`), else fractions.

    ``overrides`` replace whole axes or settings (``"deadband=0,0.1,0.3"``, ``"blocks=8"``).
    ``defaults`` gives one value for every axis the file and overrides leave out (see
    :func:`defaults_from_config`). Raises ConfigError with one line on any problem,
    including a grid larger than ``max_rows``.
    """
    src = Path(path) if path else DEFAULT_SWEEP
    tree = _read_sweep_tree(src, overrides)
    source = str(src) + (" + overrides" if overrides else "")
    try:
        model = VolSweepConfig if barrier_scale == "vol" else SweepConfig
        cfg = model.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None
    given = {name: getattr(cfg.grid, name) for name in AXES if getattr(cfg.grid, name) is not None}
    axes = _grid_axes(given, dict(defaults or {}), source, model)
    grid = Grid(
        axes=tuple(axes),
        swept=tuple(n for n in AXES if n in given),
        blocks=cfg.blocks,
        folds=cfg.folds,
        top=cfg.top,
        max_rows=cfg.max_rows,
        source=source,
    )
    if grid.size > grid.max_rows:
        shape = " x ".join(f"{len(v)} {n}" for n, v in grid.axes if len(v) > 1)
        raise ConfigError(f"{source}: grid has {grid.size:,} rows ({shape}), above max_rows {grid.max_rows:,}")
    return grid


def _check_unique(name: str, vals: Sequence[Any], source: str) -> None:
    # A repeated value makes identical rows: it inflates the trial count of the deflated Sharpe.
    seen: list[Any] = []
    for i, v in enumerate(vals):
        if v in seen:
            raise ConfigError(f"{source}: grid.{name}[{i}]: duplicate value {v!r}")
        seen.append(v)
