"""`nts exchange`: local exchanges for paper runs and demos (`nts exchange replay`)."""
from __future__ import annotations

import math
import signal
import threading

import click

from cli.common import config_options, setup_logging
from core.config import Config
from core.errors import ConfigError


@click.group("exchange")
def exchange_group() -> None:
    """Local Binance-compatible exchanges on 127.0.0.1 for the real ccxt client."""


@exchange_group.command("replay")
@click.option("--data", "data_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Candles to replay (CSV, CSV.gz or Parquet, as nts download writes).")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Port on 127.0.0.1 (0 = any free port; the URL is printed).")
@click.option("--speed", default=1000.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Exchange seconds per wall second (1000: a 15m bar every 0.9 s; 1 = real time).")
@click.option("--start", default=None, help="The replay's first 'now', UTC (default: the first bar's open).")
@click.option("--symbol", default=None, help="Market the candles are served as (default: data.symbol).")
@click.option("--timeframe", default=None, help="Bar length of the file (default: data.timeframe).")
@click.option("--cash", default=None, type=click.FloatRange(min=0),
              help="Starting quote balance of the account (default: execution.cash).")
@click.option("--faults", "faults_path", default=None, type=click.Path(exists=True, dir_okay=False),
              help="YAML list of faults to inject (lost answers, 429/418, hidden orders, partial fills, "
                   "late candles ...): rehearse the failures a live session must survive. See venues/faults.py.")
@click.option("--api-key-env", default=None, help="Variable holding the account's API key (default: broker.api_key_env).")
@click.option("--secret-env", default=None, help="Variable holding the account's secret (default: broker.secret_env).")
@config_options
def replay(data_path: str, port: int, speed: float, start: str | None, symbol: str | None, timeframe: str | None,
           cash: float | None, faults_path: str | None, api_key_env: str | None, secret_env: str | None,
           cfg: Config) -> None:
    """Serve DATA as a Binance spot exchange replaying on an accelerated clock, until Ctrl+C.

    Orders match against the replayed candles (market orders at the current bar's open,
    limits when a later bar trades through them, fees execution.maker_fee/taker_fee). The
    account's credentials come from environment variables; with neither set, only public
    data (time, markets, candles, tickers) is served.
    """
    from venues.faults import apply_faults, describe, load_faults
    from venues.replay import ReplayExchange, credentials_from_env

    if cash is not None and not math.isfinite(cash):
        raise ConfigError(f"--cash {cash}: not a finite amount of the quote currency")
    market = symbol or cfg.data.symbol
    if market.count("/") != 1 or not all(market.split("/")):
        raise ConfigError(f"--symbol {market!r}: expected BASE/QUOTE, e.g. BTC/USDT")
    faults = load_faults(faults_path) if faults_path else []
    log = setup_logging("exchange")
    key, secret = credentials_from_env(api_key_env or cfg.broker.api_key_env, secret_env or cfg.broker.secret_env)
    exchange = ReplayExchange.from_file(
        data_path, symbol=market, timeframe=timeframe or cfg.data.timeframe, start=start,
        speed=speed, cash=cfg.execution.cash if cash is None else cash, maker_fee=cfg.execution.maker_fee,
        taker_fee=cfg.execution.taker_fee, api_key=key, api_secret=secret, port=port,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    apply_faults(exchange, faults)
    exchange.start()
    try:
        for line in exchange.describe() + describe(faults):
            click.echo(line)
            log.info(line)
        click.echo("Ctrl+C stops it.", nl=True)
        click.get_text_stream("stdout").flush()
        while not stop.wait(0.5):  # short waits: signals are handled between them on every platform
            pass
    finally:
        exchange.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    line = f"stopped at {exchange.now:%Y-%m-%d %H:%M} UTC ({len(exchange.orders)} orders, {len(exchange.trades)} trades)"
    log.info(line)
    click.echo(line)
