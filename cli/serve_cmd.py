"""`nts serve`: the inference API, and with --mode paper|live a session with its operator API
and status page. Parsing only; server/run.py does the work."""
from __future__ import annotations

import sys

import click

from cli.common import setup_logging
from core.errors import ConfigError


def _echo(line: str) -> None:
    click.echo(line)
    sys.stdout.flush()


@click.command("serve")
@click.option("--model", "model_path", envvar="MODEL_PATH", required=True, type=click.Path(),
              help="Model bundle directory (artifacts/NAME) or its final_model.pt; or the MODEL_PATH variable.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Bind address; anything but loopback needs an API token (--token-env).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--mode", type=click.Choice(["inference", "paper", "live"]), default="inference", show_default=True,
              help="inference: /predict only; paper/live: also run that session with the operator API and status page.")
@click.option("--token-env", default="NTS_API_TOKEN", show_default=True,
              help="Environment variable holding the API token (Authorization: Bearer <token>).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="uvicorn worker processes (inference only).")
@click.option("--max-body", default=4 * 1024 * 1024, show_default=True, type=click.IntRange(1024, 1 << 30),
              help="Largest request body in bytes (larger: 413).")
@click.option("--barriers", type=click.Choice(["bundle", "config"]), default="bundle", show_default=True,
              help="Trade the bundle's label barriers (default) or the config's labels.")
@click.option("--state", default=None, type=click.Path(dir_okay=False),
              help="Session journal (default: state/paper.db or state/live.db); an existing one is resumed.")
@click.option("--exchange", "exchange_id", default=None, help="ccxt exchange id (default: broker.exchange).")
@click.option("--symbol", default=None, help="Market, e.g. BTC/USDT (default: data.symbol).")
@click.option("--exchange-url", default=None, help="Base URL override, e.g. a replay exchange http://127.0.0.1:8765.")
@click.option("--strategy", "strategy_name", default="tcn", show_default=True,
              help="Strategy /predict and the bar streams answer with, and the session trades: a builtin "
                   "name or module.path:ClassName (as in nts paper).")
@click.option("--max-bars", type=click.IntRange(min=1), default=None, help="Session: stop after this many bars.")
@click.option("--allow-model-change", is_flag=True, help="Resume a journal started with other weights or settings.")
@click.option("--i-understand-live-trading", "acknowledged", is_flag=True, help="Required with --mode live.")
@click.option("--max-capital", type=float, default=None, help="Live: cap on the equity the strategy sizes from.")
@click.option("--notify", "notify_path", default=None, type=click.Path(dir_okay=False),
              help="Notification targets (YAML with a 'notify' section, see configs/notify.yaml).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML config (default: configs/default.yaml).")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override one config value.")
def serve(model_path: str, host: str, port: int, mode: str, token_env: str, workers: int, max_body: int,
          barriers: str, state: str | None, exchange_id: str | None, symbol: str | None, exchange_url: str | None,
          strategy_name: str, max_bars: int | None, allow_model_change: bool, acknowledged: bool,
          max_capital: float | None, notify_path: str | None, config_path: str | None,
          overrides: tuple[str, ...]) -> None:
    """Serve the model over HTTP: /health, /ready, /model, /predict, /predict/batch, /metrics,
    OpenAPI docs at /docs. With --mode paper|live also run that session (the same code as
    nts paper / nts live) with an operator API under /api/v1 (status, trades, fills, bars,
    equity, journal; pause, unpause, flatten, resume, stop) and a status page at /.

    Everything but /health needs the API token when one is set (variable --token-env);
    control routes always need it. Stop with Ctrl+C, SIGTERM or POST /api/v1/stop.
    """
    from server.run import ServeOptions, serve as run_server

    if mode == "live" and not acknowledged:
        raise ConfigError("live trading sends real orders with real money: pass --i-understand-live-trading "
                          "(nothing was sent)")
    setup_logging("serve")
    session = dict(strategy=strategy_name, exchange_id=exchange_id, url=exchange_url, symbol=symbol,
                   max_bars=max_bars, allow_model_change=allow_model_change)
    if mode == "live":
        session.update(acknowledged=True, max_capital=max_capital)
    opts = ServeOptions(model=model_path, host=host, port=port, mode=mode, config=config_path,
                        overrides=list(overrides), barriers=barriers, strategy=strategy_name, token_env=token_env, max_body=max_body,
                        workers=workers, state=state, notify=notify_path, session=session if mode != "inference" else {})
    run_server(opts, echo=_echo)
