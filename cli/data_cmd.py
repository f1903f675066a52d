"""`nts data check`: validate a candle file and print its report."""
from __future__ import annotations

import click

from cli.common import config_options
from core.config import Config
from core.ohlcv import load_ohlcv_with_report


@click.group("data")
def data_group() -> None:
    """Inspect candle files."""


@data_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--timeframe", default=None, help="Expected bar spacing (default: data.timeframe from config).")
@click.option("--fix", is_flag=True, help="Sort and drop exact duplicates (reported) instead of refusing.")
@click.option("--strict", is_flag=True, help="Treat gaps as a failure (exit 1).")
@config_options
def check(file: str, timeframe: str | None, fix: bool, strict: bool, cfg: Config) -> None:
    """Print rows, span, gaps and issues of FILE; exit 0 only if it is valid.

    Refusals (NaN, bad OHLC, unsorted, duplicates, off-grid timestamps, ...) exit 2 with one
    line saying what and where. Gaps are reported, not filled; with --strict they exit 1.
    """
    _, report = load_ohlcv_with_report(file, timeframe=timeframe or cfg.data.timeframe, fix=fix)
    for line in report.summary_lines():
        click.echo(line)
    if strict and report.gaps:
        click.echo(f"FAIL: {len(report.gaps)} gaps (--strict)")
        raise SystemExit(1)
    click.echo("OK: valid" + (" (gaps reported above)" if report.gaps else ""))
