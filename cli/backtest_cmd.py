"""`nts backtest`: parse options, call strategies.backtest.run_backtest, print the metrics."""
from __future__ import annotations

import click

from cli.common import bundle_inputs, config_options, overwrite_option, setup_logging


@click.command("backtest")
@click.option("--model", "model_path", required=True, type=click.Path(),
              help="Model bundle directory (artifacts/NAME) or its final_model.pt.")
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False),
              help="Candle file (.csv, .csv.gz, .parquet).")
@click.option("--output", default="reports/backtest", show_default=True, type=click.Path(file_okay=False),
              help="Folder for metrics.json, trades.csv, equity.csv, equity.png, report.md/html (replaced only "
                   "when it is an nts backtest output).")
@click.option("--start", default=None,
              help="First bar open time, UTC (YYYY-MM-DD or ISO date-time). Default: right after the training span.")
@click.option("--end", default=None,
              help="End, UTC, exclusive; a date alone includes that whole day (2024-10-31 -> up to 23:45 for 15m). "
                   "Default: end of the data.")
@click.option("--strategy", "strategy_name", default="tcn", show_default=True,
              help="Strategy name (tcn, night_only, calm_only, trend_follow), module:ClassName (module importable "
                   "or in the current folder) or path/to/file.py:ClassName of a ModelStrategy subclass "
                   "(check it first: nts strategy check).")
@click.option("--allow-in-sample", is_flag=True,
              help="Allow a span that overlaps the bundle's training span (results are then in-sample).")
@click.option("--barriers", type=click.Choice(["bundle", "config"]), default="bundle", show_default=True,
              help="Barriers to trade: the bundle's training labels, or the config's labels.* (explicit opt-in "
                   "when they differ; the default refuses a mismatch).")
@click.option("--coc", is_flag=True, help="Cheat-on-close: market orders fill at the signal bar's close.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--no-cache", is_flag=True,
              help="Score with the network even when the probability cache (NTS_CACHE_DIR, default cache/) has this bundle and data.")
@overwrite_option
@config_options
def backtest(cfg, model_path: str, data_path: str, output: str, start: str | None, end: str | None,
             strategy_name: str, allow_in_sample: bool, barriers: str, coc: bool, quiet: bool, no_cache: bool,
             overwrite: bool) -> None:
    """Backtest a strategy with a trained model bundle on candles and write the report."""
    from core.files import check_output_dir
    from core.ohlcv import load_ohlcv
    from models.loading import as_bundle
    from models.prob_cache import default_cache_dir
    from strategies.backtest import OUTPUT_KIND, format_table, run_backtest
    from strategies.registry import resolve_strategy, strategy_source
    from strategies.runspec import RunSpec

    log = setup_logging("backtest")
    inputs = [data_path, *bundle_inputs(model_path), strategy_source(strategy_name)]
    check_output_dir(output, OUTPUT_KIND, inputs=inputs, overwrite=overwrite)
    strategy = resolve_strategy(strategy_name)  # a broken strategy file is refused before the bundle loads
    bundle = as_bundle(model_path)
    spec = RunSpec.build(cfg, model=bundle, data=load_ohlcv(data_path, timeframe=bundle.timeframe),
                         strategy=strategy, span=(start, end), allow_in_sample=allow_in_sample, barriers=barriers,
                         coc=coc, prob_cache=None if no_cache else default_cache_dir())
    result = run_backtest(spec, output=output, progress=not quiet, overwrite=overwrite)
    run = result.metrics["run"]
    log.info("backtest %s on %s %s..%s -> %s", model_path, data_path, run["start"], run["end"], output)
    click.echo(f"strategy {run['strategy']}  span {run['start']} .. {run['end']} ({run['bars']:,} bars)"
               + ("  [IN-SAMPLE]" if run["in_sample"] else ""))
    b = run["barriers"]
    if b.get("rule") == "vol":  # multiples of the bar's width, not fractions: say so
        click.echo(f"barriers ({b['source']}): {b['text']}, max hold {b['max_hold']}, tie {b['tie']}")
    else:
        click.echo(f"barriers ({b['source']}): profit {b['profit']:g}, stop {b['stop']:g}, horizon {b['horizon']}, "
                   f"max hold {b['max_hold']}, tie {b['tie']}")
    click.echo(format_table(result.metrics))
    sig = run["signal"]
    if sig["scored"]:
        rule = {"breakeven": " (break-even of the barriers after taker fees)",
                "breakeven per bar": " (fee-free ratio; traded: the break-even of each bar's widths after fees)"
                }.get(run.get("center_rule"), "")
        click.echo(f"signal: {sig['decisions']:,} flat bars open to an entry; P > centre {sig['center']:.4f}{rule} on "
                   f"{sig['positive_signal']:,}, past the deadband on {sig['past_deadband']:,}; max P on those bars {sig['p_max']:.4f}")
    for trip in result.risk_trips:
        click.echo(f"risk: {trip['time']} {trip['breaker']}: {trip['reason']}")
    click.echo(f"wrote {', '.join(sorted(p.name for p in result.files.values()))} to {output}")
