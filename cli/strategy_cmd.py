"""`nts strategy check`: parse options, call strategies.lookahead.check_strategy, print what peeks."""
from __future__ import annotations

import click

from cli.common import config_options, setup_logging

SHOWN = 20  # peeks printed; the rest are counted


@click.group("strategy")
def strategy_group() -> None:
    """Check user strategies."""


@strategy_group.command("check")
@click.argument("strategy")
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False),
              help="Candle file (.csv, .csv.gz, .parquet); the last --bars bars are checked.")
@click.option("--model", "model_path", default=None, type=click.Path(),
              help="Model bundle whose probabilities feed the hooks (default: a synthetic series around the centre).")
@click.option("--bars", type=click.IntRange(3, 1_000_000), default=2000, show_default=True,
              help="Bars checked (the last ones of the data).")
@click.option("--prefixes", type=click.IntRange(1, 1_000_000), default=100, show_default=True,
              help="Growing prefixes evaluated (evenly spaced; --prefixes equal to --bars checks every bar).")
@config_options
def check(cfg, strategy: str, data_path: str, model_path: str | None, bars: int, prefixes: int) -> None:
    """Fail when a hook of STRATEGY (name, module:Class or file.py:Class) peeks at later bars:
    every hook is evaluated on growing prefixes of the bars and each bar whose value changes
    once later bars are appended is reported (hook, bar, both values). Then its declared
    hook_lookback is verified: at sampled bars the hooks see only that many trailing bars
    (as in paper and live) and must give the whole history's values."""
    from core.ohlcv import load_ohlcv
    from models.loading import as_bundle
    from models.prob_cache import default_cache_dir
    from strategies.lookahead import LookaheadError, LookbackError, check_strategy

    log = setup_logging("strategy")
    bundle = as_bundle(model_path) if model_path else None
    frame = load_ohlcv(data_path, timeframe=bundle.timeframe if bundle is not None else cfg.data.timeframe)
    report = check_strategy(strategy, frame, cfg, bundle, bars=bars, prefixes=prefixes,
                            cache_dir=default_cache_dir())
    click.echo(f"strategy {report.strategy}: hooks signal, entry_allowed, target_weight on {report.bars:,} bars "
               f"({report.first} .. {report.last}), {report.prefixes} growing prefixes; P: {report.probabilities}")
    log.info("strategy check %s on %s: %d peeks", strategy, data_path, len(report.peeks))
    if report.ok:
        click.echo("ok: no hook value changed when later bars were appended")
    for peek in report.peeks[:SHOWN]:
        click.echo(f"lookahead: {peek.line()}")
    if len(report.peeks) > SHOWN:
        click.echo(f"... and {len(report.peeks) - SHOWN:,} more")
    lookback = report.lookback
    for miss in lookback.misses[:SHOWN]:
        click.echo(f"lookback: {miss.line()}")
    if len(lookback.misses) > SHOWN:
        click.echo(f"... and {len(lookback.misses) - SHOWN:,} more")
    if lookback.ok:
        click.echo(lookback.summary(report.strategy))
    if not report.ok:
        count = f"{'at least ' if report.capped else ''}{len(report.peeks):,}"
        hooks = ", ".join(f"{h}()" for h in report.hooks())
        raise LookaheadError(f"strategy {report.strategy} peeks at later bars: {hooks} changed on {count} (hook, bar) "
                             "values when later bars were appended")
    if not lookback.ok:
        raise LookbackError(lookback.summary(report.strategy))
