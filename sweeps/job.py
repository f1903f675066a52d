"""``nts sweep`` end to end, as one library call: :func:`run_sweep_job`.

Order of work, cheapest refusals first: the strategy, the bundle, the grid (validated against the traded
policy's defaults), the output folder, the candles, the span (``nts backtest``'s rules: a span
overlapping the training span is refused), then scoring once, the rows, the vectorbt
portfolios of the rows shown (checked against the kernel) and the report folder.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from core.config import Config
from core.errors import ConfigError
from core.files import check_output_dir
from core.ohlcv import load_ohlcv
from core.policy import Policy
from strategies.base import ModelStrategy
from strategies.hooks import engine_only_overrides, user_code
from strategies.registry import resolve_strategy
from strategies.runspec import RunSpec
from strategies.tcn import TCNStrategy
from sweeps.engine import DEFAULT_CHUNK, SweepResult, axis_defaults, prepare_span, run_sweep
from sweeps.grid import Grid, load_grid
from sweeps.portfolio import PortfolioSet, build_portfolios, report_rows
from sweeps.report import OUTPUT_KIND, write_report


@dataclass
class SweepJob:
    """What ``nts sweep`` produced."""

    result: SweepResult
    portfolios: PortfolioSet
    files: dict[str, Path]
    seconds: dict[str, float] = field(default_factory=dict)
    strategy: str = ""     # module:Class whose hooks the rows ran


@dataclass(frozen=True)
class SweepRequest:
    """What ``nts sweep`` was asked to do (the options, unresolved; :func:`run_sweep_job`
    resolves them into one :class:`~strategies.runspec.RunSpec`)."""

    model: str | Path                      # bundle folder or its final_model.pt
    data: str | Path                       # candle file
    output: str | Path                     # report folder
    strategy: Any = "tcn"                  # name, module:Class, file.py:Class or class
    grid_path: str | Path | None = None
    grid_overrides: Sequence[str] = ()
    span: tuple[Any, Any] = (None, None)   # (start, end) as nts backtest reads them
    folds: int | None = None
    allow_in_sample: bool = False
    barriers: str = "bundle"
    cache_dir: str | Path | None = None
    workers: int | None = None             # local Dask processes (sweeps.distributed)
    scheduler: str | None = None           # or an existing Dask scheduler
    chunk: int = DEFAULT_CHUNK
    progress: bool = True
    overwrite: bool = False
    inputs: Sequence[str | Path] = ()      # paths the output must not replace (the model's)
    command: str | None = None             # the command line, recorded in the manifest
    embed_plotlyjs: bool = False           # inline plotly.js in report.html (default: plotly.min.js beside it)


def load_sweep_grid(cfg: Config, policy: Policy, grid_path: str | Path | None = None, overrides: Sequence[str] = (),
                    folds: int | None = None) -> Grid:
    """The grid, with the axes it leaves out taken from ``policy``, the one ``nts backtest``
    would trade (the bundle's barriers, the config's strategy and costs; the centre as
    written in the config); ``folds`` overrides the file's."""
    extra = [f"folds={int(folds)}"] if folds is not None else []
    return load_grid(grid_path, [*overrides, *extra], axis_defaults(policy, center=cfg.strategy.center),
                     barrier_scale=policy.barrier_scale)


def sweep_run_spec(req: SweepRequest, cfg: Config) -> RunSpec:
    """The run specification of the sweep (``nts backtest``'s: strategy, bundle, costs, policy,
    warm-up), built once, before the candles are read; :meth:`RunSpec.with_bars` adds the span."""
    return RunSpec.build(cfg, model=str(req.model), strategy=sweepable(resolve_strategy(req.strategy)),
                         barriers=req.barriers, prob_cache=req.cache_dir)


def sweepable(strategy_cls: type) -> type:
    """``strategy_cls`` when the sweep can run it: only its vectorised hooks reach the
    compiled kernel, so a class that overrides other strategy methods is refused (one line)."""
    extra = engine_only_overrides(strategy_cls, ModelStrategy)
    if extra:
        names = ", ".join(f"{n}()" for n in extra)
        raise ConfigError(f"strategy {strategy_cls.__qualname__} overrides {names}: the sweep runs only the "
                          "vectorised hooks (signal, entry_allowed, target_weight); backtest it instead, or "
                          "express the rule as a hook")
    return strategy_cls


def hook_options(spec: RunSpec) -> dict[str, Any]:
    """``run_sweep``'s strategy arguments: the class whose vectorised hooks the rows run and
    its params. The plain TCN strategy's hooks are the policy's own, run_sweep's default."""
    if spec.strategy_cls is TCNStrategy and not spec.strategy_kwargs:
        return {}
    return {"strategy_cls": spec.strategy_cls, "strategy_params": dict(spec.strategy_kwargs) or None}


def run_sweep_job(req: SweepRequest, cfg: Config) -> SweepJob:
    """Load, validate, score once, sweep, check against vectorbt and write the report folder.

    Cheapest refusals first: the strategy, the bundle and the policy (one RunSpec), the grid,
    the output folder, the candles, the span. ``req.workers``/``req.scheduler`` run the row chunks on Dask
    (:mod:`sweeps.distributed`, imported only then)."""
    t0 = time.perf_counter()
    spec = sweep_run_spec(req, cfg)
    grid = load_sweep_grid(cfg, spec.policy, req.grid_path, req.grid_overrides, req.folds)
    check_output_dir(req.output, OUTPUT_KIND, inputs=[*req.inputs, req.data], overwrite=req.overwrite)
    spec = spec.with_bars(load_ohlcv(req.data, timeframe=spec.timeframe), req.span, req.allow_in_sample)
    with ExitStack() as stack:
        mapper, engine = _mapper(stack, req)
        data = prepare_span(spec, blocks=grid.blocks, folds=grid.folds)
        t_prep = time.perf_counter()
        bar = None
        if req.progress:
            from tqdm import tqdm

            bar = tqdm(total=grid.size, desc="sweep", unit="row", leave=False, mininterval=0.5)
            stack.callback(bar.close)
        with user_code(spec.strategy_cls, "running the sweep"):
            result = run_sweep(data, grid, chunk=req.chunk, mapper=mapper,
                               progress=bar.update if bar is not None else None, engine=engine, **hook_options(spec))
        t_sweep = time.perf_counter()
    portfolios = build_portfolios(result, report_rows(result))
    t_vbt = time.perf_counter()
    seconds = {"load_and_score": round(t_prep - t0, 3), "sweep": round(t_sweep - t_prep, 3),
               "vectorbt": round(t_vbt - t_sweep, 3)}
    portfolios.stats()  # before timing the report: vectorbt's stats are its slow part
    seconds["vectorbt_stats"] = round(time.perf_counter() - t_vbt, 3)
    seconds["total"] = round(time.perf_counter() - t0, 3)
    files = write_report(result, req.output, portfolios=portfolios, data_path=req.data, model_path=req.model,
                         inputs=[*req.inputs, req.data], overwrite=req.overwrite, seconds=seconds,
                         embed_plotlyjs=req.embed_plotlyjs,
                         command=req.command)
    seconds["total_with_report"] = round(time.perf_counter() - t0, 3)
    return SweepJob(result=result, portfolios=portfolios, files=files, seconds=seconds, strategy=spec.strategy_name)


def _mapper(stack: ExitStack, req: SweepRequest) -> tuple[Any, str | None]:
    """The Dask mapper and its description when the request asks for Dask, else (None, None);
    connects before scoring, so an unreachable scheduler is refused first."""
    if req.workers is None and req.scheduler is None:
        return None, None
    from sweeps import distributed  # optional extra: only a Dask run imports dask

    client = stack.enter_context(distributed.dask_client(workers=req.workers, scheduler=req.scheduler))
    return distributed.dask_mapper(client, req.chunk), distributed.describe(client)


TOP_COLUMNS = ("name", "sharpe", "total_return", "max_drawdown", "trades", "win_rate", "base_rate", "breakeven_p")


def format_top(result: SweepResult, n: int | None = None, trading: bool = False) -> str:
    """Plain-text table of the top rows (what ``nts sweep`` prints); ``trading``: among the
    rows that traded at least once."""
    top = result.top_trading if trading else result.top
    top = top if n is None else top.head(n)
    pct = {"total_return", "max_drawdown", "win_rate", "base_rate", "breakeven_p"}

    def cell(col: str, v: Any) -> str:
        if col == "name":
            return str(v)
        if v is None or (isinstance(v, float) and pd.isna(v)):
            return "n/a"
        if col in pct:
            return f"{float(v):.2%}"
        return f"{int(v):,}" if col == "trades" else f"{float(v):.3f}"

    def flat(rec: pd.Series) -> bool:  # never traded: Sharpe 0 as everywhere, marked flat
        return rec["trades"] == 0 and rec.get("open_trades", 0) == 0

    rows = [list(TOP_COLUMNS)] + [[cell(c, rec[c]) + (" flat" if c == "sharpe" and flat(rec) else "")
                                   for c in TOP_COLUMNS] for _, rec in top.iterrows()]
    widths = [max(len(r[k]) for r in rows) for k in range(len(TOP_COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) if k == 0 else v.rjust(w) for k, (v, w) in enumerate(zip(r, widths)))
                     for r in rows)
