"""``nts serve``: build the setup, the auth, the session host and the notifier, run uvicorn.

One worker runs everything in this process. Several workers (``--workers N``, inference
only: a session is one process) are uvicorn worker processes that each build the app from
the same options, passed to them in the environment variable :data:`OPTIONS_ENV` (no
secret in it: the token is read by each worker from its own variable).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import uvicorn

from core.config import load_config
from core.errors import ConfigError
from fastapi import FastAPI
from sessions.notify import Notifier, load_notify_config
from server.app import create_app
from server.auth import DEFAULT_TOKEN_ENV, Auth, check_bind
from server.host import MODES, SessionHost
from server.limits import MAX_BODY_BYTES
from server.setup import build_setup
from server.streams import MAX_STREAMS

log = logging.getLogger("nts.serve")
OPTIONS_ENV = "NTS_SERVE_OPTIONS"


@dataclass
class ServeOptions:
    """Everything ``nts serve`` was asked (plain values, so that workers can rebuild the app)."""

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    mode: str = "inference"                 # inference | paper | live
    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    barriers: str = "bundle"
    strategy: str = "tcn"                   # the strategy /predict and the streams answer with
    token_env: str = DEFAULT_TOKEN_ENV
    max_body: int = MAX_BODY_BYTES
    workers: int = 1
    state: str | None = None
    notify: str | None = None
    session: dict[str, Any] = field(default_factory=dict)   # PaperSession/LiveSession keyword options


def _check(opts: ServeOptions, auth: Auth) -> None:
    check_bind(opts.host, auth)
    if opts.mode not in ("inference", *MODES):
        raise ConfigError(f"--mode {opts.mode!r}: expected inference, paper or live")
    if opts.workers < 1 or (opts.workers > 1 and opts.mode != "inference"):
        raise ConfigError("--workers above 1 serves inference only (a session runs in one process)")
    if opts.notify and opts.mode == "inference":
        raise ConfigError("--notify needs --mode paper or live (notifications come from a session's journal)")


def build_app(opts: ServeOptions, echo: Callable[[str], None] | None = None) -> tuple[FastAPI, SessionHost | None]:
    """The app (and its session host) for ``opts``; refusals are one-line ConfigErrors."""
    auth = Auth.from_env(opts.token_env)
    _check(opts, auth)
    cfg = load_config(opts.config, opts.overrides)
    setup = build_setup(cfg, opts.model, opts.barriers, opts.strategy)
    if setup.refusal is not None:
        if opts.mode == "inference":  # a server that would refuse every prediction is refused at start
            raise ConfigError(f"{setup.refusal} (nothing was served)")
        log.warning("the inference routes refuse every request: %s", setup.refusal)
    host = None
    if opts.mode in MODES:
        state = opts.state or f"state/{opts.mode}.db"
        host = SessionHost(opts.mode, cfg, opts.model, state, echo=echo, barriers=opts.barriers, **opts.session)
        if opts.notify:
            notifier = Notifier(Path(state), load_notify_config(opts.notify))
            host.add_companion(notifier)
    # a stream's state lives in the process that opened it: several workers would lose its bars
    max_streams = MAX_STREAMS if opts.workers == 1 else 0
    return create_app(setup, auth, host, max_body=opts.max_body, max_streams=max_streams), host


def worker_app() -> FastAPI:
    """uvicorn factory for worker processes (``--workers N``): options from :data:`OPTIONS_ENV`."""
    opts = ServeOptions(**json.loads(os.environ[OPTIONS_ENV]))
    return build_app(opts)[0]


def serve(opts: ServeOptions, echo: Callable[[str], None] | None = None) -> None:
    """Run the server until Ctrl+C/SIGTERM or ``/api/v1/stop``."""
    app, host = build_app(opts, echo)
    where = f"http://{opts.host}:{opts.port}"
    banner = (f"nts serve ({opts.mode}) on {where}: docs {where}/docs"
              + (f", status page {where}/" if host is not None else ""))
    if echo is not None:
        echo(banner)
    log.info(banner)
    if opts.workers > 1:
        os.environ[OPTIONS_ENV] = json.dumps(asdict(opts))
        uvicorn.run("server.run:worker_app", factory=True, host=opts.host, port=opts.port, workers=opts.workers,
                    log_level="warning", access_log=False)
        return
    config = uvicorn.Config(app, host=opts.host, port=opts.port, log_level="warning", access_log=False,
                            lifespan="on")
    server = uvicorn.Server(config)
    if host is not None:
        host.on_exit = lambda: setattr(server, "should_exit", True)
    server.run()
    if host is not None and host.error is not None:
        raise ConfigError(f"the {opts.mode} session stopped by an error: {host.error}")
