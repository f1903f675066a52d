"""`nts paper`: run a paper session (live feed + the backtest's simulated broker + journal).
Parsing only; brokers/session.py does the work."""
from __future__ import annotations

import sys

import click

from cli.common import config_options, setup_logging
from core.config import Config


@click.command("paper")
@click.option("--model", "model_path", required=True, type=click.Path(),
              help="Model bundle directory (artifacts/NAME) or its final_model.pt.")
@click.option("--exchange", "exchange_id", default=None, help="ccxt exchange id (default: broker.exchange).")
@click.option("--symbol", default=None, help="Market, e.g. BTC/USDT (default: data.symbol).")
@click.option("--exchange-url", default=None,
              help="Base URL override, e.g. a replay exchange http://127.0.0.1:8765 (default: broker.url).")
@click.option("--state", default="state/paper.db", show_default=True, type=click.Path(dir_okay=False),
              help="Session journal (SQLite); an existing one is resumed.")
@click.option("--strategy", "strategy_name", default="tcn", show_default=True,
              help="Strategy: a builtin name or module.path:ClassName (as in nts backtest).")
@click.option("--barriers", type=click.Choice(["bundle", "config"]), default="bundle", show_default=True,
              help="Trade the bundle's label barriers (default) or the config's labels.")
@click.option("--max-bars", type=click.IntRange(min=1), default=None,
              help="Stop after this many traded bars (default: run until Ctrl+C).")
@click.option("--allow-model-change", is_flag=True,
              help="Resume a journal started with other model weights or trading settings.")
@config_options
def paper(model_path: str, exchange_id: str | None, symbol: str | None, exchange_url: str | None, state: str,
          strategy_name: str, barriers: str, max_bars: int | None, allow_model_change: bool, cfg: Config) -> None:
    """Paper-trade the model on an exchange's live candles with the backtest's simulated broker.

    One status line per closed bar (bar time, price, P, signal, weight, position, equity,
    breakers); every bar, order and fill is journaled in --state, so the session can be
    stopped (Ctrl+C, SIGTERM, even kill -9) and restarted with the same command. A halt
    (breaker, kill switch) survives restarts until: nts resume --state FILE.
    """
    from brokers.session import PaperSession

    setup_logging("paper")

    def echo(line: str) -> None:
        click.echo(line)
        sys.stdout.flush()

    session = PaperSession(cfg, model_path, state, strategy=strategy_name, exchange_id=exchange_id,
                           url=exchange_url, symbol=symbol, max_bars=max_bars, emit=echo, barriers=barriers,
                           allow_model_change=allow_model_change)
    session.run()
