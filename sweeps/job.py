"""``nts sweep`` end to end, as one library call: :func:`run_sweep_job`.

Order of work, cheapest refusals first: the bundle, the grid (validated against the traded
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
from core.files import check_output_dir
from core.ohlcv import load_ohlcv
from core.policy import Policy
from indicators.tcn_indicator import as_bundle
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


def load_sweep_grid(cfg: Config, bundle: Any, grid_path: str | Path | None = None, overrides: Sequence[str] = (),
                    folds: int | None = None, barriers: str = "bundle") -> Grid:
    """The grid, with the axes it leaves out taken from the policy ``nts backtest`` would trade
    (the bundle's barriers, the config's strategy and costs); ``folds`` overrides the file's."""
    policy = Policy.from_config(cfg, bundle, barriers)
    extra = [f"folds={int(folds)}"] if folds is not None else []
    return load_grid(grid_path, [*overrides, *extra], axis_defaults(policy, center=cfg.strategy.center))


def run_sweep_job(model_path: str | Path, data_path: str | Path, cfg: Config, *, output: str | Path,
                  grid_path: str | Path | None = None, grid_overrides: Sequence[str] = (), start: Any = None,
                  end: Any = None, folds: int | None = None, workers: int | None = None, scheduler: str | None = None,
                  chunk: int = DEFAULT_CHUNK, allow_in_sample: bool = False, barriers: str = "bundle",
                  cache_dir: str | Path | None = None, progress: bool = True, overwrite: bool = False,
                  inputs: Sequence[str | Path] = (), command: str | None = None,
                  embed_plotlyjs: bool = False) -> SweepJob:
    """Load, validate, score once, sweep, check against vectorbt and write the report folder.

    ``workers``/``scheduler`` run the row chunks on Dask (:mod:`sweeps.distributed`, imported
    only then); ``inputs`` are paths the output must not replace (the model, the data);
    ``embed_plotlyjs`` inlines plotly.js in report.html instead of writing plotly.min.js beside it."""
    t0 = time.perf_counter()
    bundle = as_bundle(str(model_path))
    grid = load_sweep_grid(cfg, bundle, grid_path, grid_overrides, folds, barriers)
    check_output_dir(output, OUTPUT_KIND, inputs=[*inputs, data_path], overwrite=overwrite)
    frame = load_ohlcv(data_path, timeframe=bundle.timeframe)
    with ExitStack() as stack:
        mapper, engine = None, None
        if workers is not None or scheduler is not None:
            from sweeps import distributed  # optional extra: only a Dask run imports dask

            # connect before scoring: an unreachable scheduler is refused first
            client = stack.enter_context(distributed.dask_client(workers=workers, scheduler=scheduler))
            mapper, engine = distributed.dask_mapper(client, chunk), distributed.describe(client)
        data = prepare_span(bundle, frame, cfg, start=start, end=end, allow_in_sample=allow_in_sample,
                            barriers=barriers, cache_dir=cache_dir, blocks=grid.blocks, folds=grid.folds)
        t_prep = time.perf_counter()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=grid.size, desc="sweep", unit="row", leave=False, mininterval=0.5)
            stack.callback(bar.close)
        result = run_sweep(data, grid, chunk=chunk, mapper=mapper, progress=bar.update if bar is not None else None,
                           engine=engine)
        t_sweep = time.perf_counter()
    portfolios = build_portfolios(result, report_rows(result))
    t_vbt = time.perf_counter()
    seconds = {"load_and_score": round(t_prep - t0, 3), "sweep": round(t_sweep - t_prep, 3),
               "vectorbt": round(t_vbt - t_sweep, 3)}
    portfolios.stats()  # before timing the report: vectorbt's stats are its slow part
    seconds["vectorbt_stats"] = round(time.perf_counter() - t_vbt, 3)
    seconds["total"] = round(time.perf_counter() - t0, 3)
    files = write_report(result, output, portfolios=portfolios, data_path=data_path, model_path=model_path,
                         inputs=[*inputs, data_path], overwrite=overwrite, seconds=seconds, command=command,
                         embed_plotlyjs=embed_plotlyjs)
    seconds["total_with_report"] = round(time.perf_counter() - t0, 3)
    return SweepJob(result=result, portfolios=portfolios, files=files, seconds=seconds)


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
