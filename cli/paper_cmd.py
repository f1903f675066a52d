"""`nts paper` and `nts live`: run a session (live feed + the backtest's simulated broker, or
the exchange broker) with a journal. Parsing only; sessions/session.py does the work."""
from __future__ import annotations

import sys
from typing import Callable

import click

from brokers.exchange import require_keys_in_env
from cli.common import config_options, setup_logging
from core.config import Config
from core.errors import ConfigError


def session_options(func: Callable) -> Callable:
    """The options `nts paper` and `nts live` share."""
    options = [
        click.option("--model", "model_path", required=True, type=click.Path(),
                     help="Model bundle directory (artifacts/NAME) or its final_model.pt."),
        click.option("--exchange", "exchange_id", default=None, help="ccxt exchange id (default: broker.exchange)."),
        click.option("--symbol", default=None, help="Market, e.g. BTC/USDT (default: data.symbol)."),
        click.option("--exchange-url", default=None,
                     help="Base URL override, e.g. a replay exchange http://127.0.0.1:8765 (default: broker.url)."),
        click.option("--strategy", "strategy_name", default="tcn", show_default=True,
                     help="Strategy: a builtin name or module.path:ClassName (as in nts backtest)."),
        click.option("--barriers", type=click.Choice(["bundle", "config"]), default="bundle", show_default=True,
                     help="Trade the bundle's label barriers (default) or the config's labels."),
        click.option("--max-bars", type=click.IntRange(min=1), default=None,
                     help="Stop after this many traded bars (default: run until Ctrl+C)."),
        click.option("--allow-model-change", is_flag=True,
                     help="Resume a journal started with other model weights or trading settings."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _echo(line: str) -> None:
    click.echo(line)
    sys.stdout.flush()


@click.command("paper")
@session_options
@click.option("--state", default="state/paper.db", show_default=True, type=click.Path(dir_okay=False),
              help="Session journal (SQLite); an existing one is resumed.")
@config_options
def paper(model_path: str, exchange_id: str | None, symbol: str | None, exchange_url: str | None, state: str,
          strategy_name: str, barriers: str, max_bars: int | None, allow_model_change: bool, cfg: Config) -> None:
    """Paper-trade the model on an exchange's live candles with the backtest's simulated broker.

    One status line per closed bar (bar time, price, P, signal, weight, position, equity,
    breakers); every bar, order and fill is journaled in --state, so the session can be
    stopped (Ctrl+C, SIGTERM, even kill -9) and restarted with the same command. A halt
    (drawdown breaker, kill switch) survives restarts until: nts resume --state FILE; the
    daily-loss breaker lifts at the next UTC day, as in the backtest.
    """
    from sessions.session import PaperSession, SessionOptions

    setup_logging("paper")
    options = SessionOptions(strategy=strategy_name, exchange_id=exchange_id, url=exchange_url, symbol=symbol,
                             max_bars=max_bars, barriers=barriers, allow_model_change=allow_model_change)
    PaperSession(cfg, model_path, state, options, emit=_echo).run()


@click.command("live")
@session_options
@click.option("--state", default="state/live.db", show_default=True, type=click.Path(dir_okay=False),
              help="Session journal (SQLite); an existing one is reconciled with the exchange and resumed.")
@click.option("--i-understand-live-trading", "acknowledged", is_flag=True,
              help="Required: this command sends real orders with the account's money.")
@click.option("--max-capital", type=float, default=None,
              help="Cap, in the quote currency, on the equity the strategy sizes from (the rest of the account "
                   "is held back; fixed when the session is created). Default: the whole account.")
@config_options
def live(model_path: str, exchange_id: str | None, symbol: str | None, exchange_url: str | None, state: str,
         strategy_name: str, barriers: str, max_bars: int | None, allow_model_change: bool, acknowledged: bool,
         max_capital: float | None, cfg: Config) -> None:
    """Trade the model LIVE on an exchange: the paper session's feed, strategy and journal with
    the exchange broker (orders with deterministic client ids, journaled before they are
    sent; exits as an OCO order list; fills by trade id).

    Refuses with one line, sending nothing, without --i-understand-live-trading, without API
    keys in the environment variables broker.api_key_env / broker.secret_env, or when the
    journal disagrees with the exchange (the reconciliation report is printed). Prints the
    pre-live checklist on start. Stop with Ctrl+C (open exits stay on the exchange and are
    reconciled on restart) or the kill switch file (flattens, cancels every open order of
    the session, stops).
    """
    if not acknowledged:
        raise ConfigError("live trading sends real orders with real money: pass --i-understand-live-trading "
                          "(nothing was sent)")
    if max_capital is not None and not max_capital > 0:
        raise ConfigError(f"--max-capital must be a positive amount, got {max_capital:g}")
    # keys first, before the model, the journal or the exchange are touched (seconds of work)
    require_keys_in_env(exchange_id or cfg.broker.exchange, cfg.broker.api_key_env, cfg.broker.secret_env)
    from sessions.session import LiveOptions, LiveSession

    setup_logging("live")
    options = LiveOptions(strategy=strategy_name, exchange_id=exchange_id, url=exchange_url, symbol=symbol,
                          max_bars=max_bars, barriers=barriers, allow_model_change=allow_model_change,
                          acknowledged=True, max_capital=max_capital)
    LiveSession(cfg, model_path, state, options, emit=_echo).run()
