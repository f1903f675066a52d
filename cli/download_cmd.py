"""`nts download`: historical candles from an exchange (or a loopback one) into a CSV."""
from __future__ import annotations

import click

from cli.common import config_options, overwrite_option, setup_logging
from core.config import Config


@click.command("download")
@click.option("--exchange", "exchange_id", default=None, help="ccxt exchange id (default: data.exchange).")
@click.option("--symbol", default=None, help="Market, e.g. BTC/USDT (default: data.symbol).")
@click.option("--timeframe", default=None, help="Bar length, e.g. 15m (default: data.timeframe).")
@click.option("--start", required=True, help="First bar open time, UTC (YYYY-MM-DD or ISO date-time).")
@click.option("--end", required=True,
              help="End, UTC, exclusive; a date alone includes that whole day (2024-10-31 -> up to 23:45 for 15m).")
@click.option("--output", required=True, type=click.Path(dir_okay=False),
              help="CSV to write; if it is a candle CSV nts wrote, the download resumes and appends (any other "
                   "existing file is refused; --overwrite replaces it with a fresh download).")
@click.option("--exchange-url", default=None, help="Base URL override, e.g. a loopback exchange (default: broker.url).")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 5000), help="Bars per request.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@overwrite_option
@config_options
def download(exchange_id: str | None, symbol: str | None, timeframe: str | None, start: str, end: str,
             output: str, exchange_url: str | None, limit: int, no_progress: bool, overwrite: bool,
             cfg: Config) -> None:
    """Download closed candles with open time in [START, END) into OUTPUT (resumable).

    Uses the real ccxt client with rate limiting and retries (broker.retries,
    broker.backoff_s, broker.timeout_ms). The data are validated before they are written,
    and the file is written atomically.
    """
    from brokers.download import FetchOptions, download_ohlcv
    from brokers.exchange import make_exchange

    setup_logging("download")

    def given(value: str | None, default: str | None) -> str | None:
        # an option given as "" is refused downstream by name, not silently read as the default
        return default if value is None else value

    exchange = make_exchange(
        given(exchange_id, cfg.data.exchange),
        url=given(exchange_url, cfg.broker.url),
        sandbox=cfg.broker.sandbox,
        timeout_ms=cfg.broker.timeout_ms,
    )
    result = download_ohlcv(
        exchange, given(symbol, cfg.data.symbol), given(timeframe, cfg.data.timeframe), start, end, output,
        progress=not no_progress,
        fetch=FetchOptions(limit=limit, retries=cfg.broker.retries, backoff_s=cfg.broker.backoff_s),
        overwrite=overwrite,
    )
    click.echo(result.summary())
