"""`nts data check`: validate a candle file and print its report."""
from __future__ import annotations

import click

from cli.common import config_options, overwrite_option
from core.config import Config
from core.ohlcv import load_ohlcv_with_report, repair_ohlcv_file


@click.group("data")
def data_group() -> None:
    """Inspect candle files."""


@data_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--timeframe", default=None, help="Expected bar spacing (default: data.timeframe from config).")
@click.option("--fix", is_flag=True, help="Sort and drop exact duplicates (reported) instead of refusing.")
@click.option("--output", default=None, type=click.Path(dir_okay=False),
              help="With --fix: write the repaired candles to this CSV (.csv or .csv.gz; sorted, exact duplicates "
                   "dropped, nothing else changed).")
@click.option("--strict", is_flag=True, help="Treat gaps as a failure (exit 1).")
@overwrite_option
@config_options
def check(file: str, timeframe: str | None, fix: bool, output: str | None, strict: bool, overwrite: bool,
          cfg: Config) -> None:
    """Print rows, span, gaps and issues of FILE; exit 0 only if it is valid.

    Refusals (NaN, bad OHLC, unsorted, duplicates, off-grid timestamps, ...) exit 2 with one
    line saying what and where. Gaps are reported, not filled; with --strict they exit 1.
    --fix --output FIXED.csv writes the repaired file (FILE itself is never changed).
    """
    if output is not None and not fix:
        raise click.UsageError("--output writes the repaired candles: it needs --fix")
    tf = cfg.data.timeframe if timeframe is None else timeframe
    if output is not None:
        _, report = repair_ohlcv_file(file, output, timeframe=tf, overwrite=overwrite)
    else:
        _, report = load_ohlcv_with_report(file, timeframe=tf, fix=fix)
    for line in report.summary_lines():
        click.echo(line)
    if output is not None:
        click.echo(f"wrote:     {report.rows:,} rows to {output}")
    elif fix and report.fixes:
        click.echo("note:      nothing written; add --output FIXED.csv to save the repaired candles")
    if strict and report.gaps:
        click.echo(f"FAIL: {len(report.gaps)} gaps (--strict)")
        raise SystemExit(1)
    click.echo("OK: valid" + (" (gaps reported above)" if report.gaps else ""))
