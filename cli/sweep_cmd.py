"""`nts sweep`: parse options, call sweeps.job.run_sweep_job, print the top rows and the verdict."""
from __future__ import annotations

import click

from cli.common import bundle_inputs, config_options, overwrite_option, setup_logging


@click.command("sweep")
@click.option("--model", "model_path", required=True, type=click.Path(),
              help="Model bundle directory (artifacts/NAME) or its final_model.pt.")
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False),
              help="Candle file (.csv, .csv.gz, .parquet).")
@click.option("--grid", "grid_path", default=None, type=click.Path(dir_okay=False),
              help="Sweep grid file (default: configs/sweep.yaml). Axes it leaves out take the value nts backtest trades.")
@click.option("--grid-set", "grid_overrides", multiple=True, metavar="AXIS=V1,V2",
              help="Replace one axis or setting of the grid, e.g. --grid-set deadband=0,0.1,0.3, "
                   "--grid-set center=0.5,breakeven, --grid-set blocks=8 (repeatable).")
@click.option("--output", default="reports/sweep", show_default=True, type=click.Path(file_okay=False),
              help="Folder for results.csv, report.html, manifest.json (replaced only when it is an nts sweep output).")
@click.option("--start", default=None,
              help="First bar open time, UTC (as nts backtest). Default: right after the training span.")
@click.option("--end", default=None, help="End, UTC, exclusive; a date alone includes that whole day (as nts backtest).")
@click.option("--strategy", "strategy_name", default="tcn", show_default=True,
              help="Strategy whose vectorised hooks every row runs: a name (tcn, night_only, calm_only, "
                   "trend_follow), module:ClassName or path/to/file.py:ClassName (as nts backtest).")
@click.option("--folds", type=click.IntRange(1, 20), default=None,
              help="Walk-forward folds (must divide the grid's blocks): fold k's best row is scored on fold k+1. "
                   "Default: the grid file's folds.")
@click.option("--workers", type=click.IntRange(1, 1024), default=None,
              help="Run the row chunks on a local Dask cluster of N processes (needs the [distributed] extra).")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
              help="Run the row chunks on an existing Dask scheduler (needs the [distributed] extra).")
@click.option("--chunk", type=click.IntRange(1, 1_000_000), default=64, show_default=True,
              help="Rows per task (progress step; Dask task size).")
@click.option("--allow-in-sample", is_flag=True,
              help="Allow a span that overlaps the bundle's training span (results are then in-sample).")
@click.option("--barriers", type=click.Choice(["bundle", "config"]), default="bundle", show_default=True,
              help="Base barriers and tie rule: the bundle's training labels, or the config's labels.*.")
@click.option("--embed-plotlyjs", is_flag=True,
              help="Inline plotly.js in report.html (one self-contained file of about 5 MB more) instead of "
                   "writing plotly.min.js once beside it.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--no-cache", is_flag=True, help="Score with the network even when the probability cache has this bundle and data.")
@overwrite_option
@config_options
def sweep(cfg, model_path: str, data_path: str, grid_path: str | None, grid_overrides: tuple[str, ...], output: str,
          start: str | None, end: str | None, strategy_name: str, folds: int | None, workers: int | None,
          scheduler: str | None, chunk: int, allow_in_sample: bool, barriers: str, embed_plotlyjs: bool, quiet: bool,
          no_cache: bool, overwrite: bool) -> None:
    """Sweep barriers, deadbands, centre, order type and costs over a grid, scored once by the
    bundle, and write a report that says whether the best row is luck (DSR, PBO)."""
    # function-local: keeps numba/vectorbt/torch out of `nts --help`
    from core.errors import ConfigError
    from models.prob_cache import default_cache_dir
    from strategies.registry import strategy_source
    from sweeps.job import SweepRequest, format_top, run_sweep_job
    from sweeps.report import barrier_rule_text

    if workers is not None and scheduler is not None:
        raise ConfigError("give --workers N or --scheduler tcp://HOST:PORT, not both")
    log = setup_logging("sweep")
    inputs = [*bundle_inputs(model_path), *filter(None, [strategy_source(strategy_name)])]
    req = SweepRequest(model=model_path, data=data_path, output=output, strategy=strategy_name, grid_path=grid_path,
                       grid_overrides=grid_overrides, span=(start, end), folds=folds, workers=workers,
                       scheduler=scheduler, chunk=chunk, allow_in_sample=allow_in_sample, barriers=barriers,
                       cache_dir=None if no_cache else default_cache_dir(), progress=not quiet, overwrite=overwrite,
                       inputs=inputs, command=click.get_current_context().command_path,
                       embed_plotlyjs=embed_plotlyjs)
    job = run_sweep_job(req, cfg)
    res = job.result
    d = res.data
    log.info("sweep %s on %s: %d rows -> %s", model_path, data_path, res.grid.size, output)
    click.echo(f"strategy {job.strategy}  span {d.span[0]} .. {d.span[1]} ({d.inputs.last - d.inputs.first + 1:,} bars)  "
               f"{res.grid.size:,} rows in {job.seconds['sweep']:.1f} s ({res.engine})  probabilities: {d.prob_source}")
    click.echo(barrier_rule_text(res))  # what the rows' profit=/stop= values are: fractions or multiples
    click.echo(format_top(res))
    if res.flat_rows and len(res.top_trading):
        click.echo(f"\nbest rows among those that traded ({res.flat_rows:,} of {res.grid.size:,} never did):")
        click.echo(format_top(res, trading=True))
    click.echo("")
    click.echo(f"verdict: {res.overfit.verdict}")
    for line in res.warnings():
        click.echo(f"caution: {line}")
    wf = res.walk_forward
    if wf is not None and wf.summary.get("steps"):
        s = wf.summary
        click.echo(f"walk-forward ({res.grid.folds} folds): mean Sharpe in sample {s['mean_is_sharpe']:.2f}, "
                   f"out of sample {s['mean_oos_sharpe']:.2f}; chained out-of-sample return {s['oos_return_chained']:.2%}")
    click.echo(f"note: rows with barriers other than the trained ones sweep the exit rule, not the model "
               f"(see base_rate and breakeven_p); vectorbt vs kernel value: max rel. diff "
               f"{job.portfolios.worst_final_diff:.1e}")
    click.echo(f"wrote {', '.join(sorted(p.name for p in job.files.values()))} to {output}")
