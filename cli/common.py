"""Shared CLI plumbing: --config/--set options, one-line errors, logging to logs/."""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Callable

import click

from core.config import Config, load_config
from core.errors import NtsError


def config_options(func: Callable) -> Callable:
    """Add ``--config FILE`` and repeatable ``--set key.path=value``; pass ``cfg: Config``."""

    @click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                  help="YAML config (default: configs/default.yaml).")
    @click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
                  help="Override one config value, e.g. --set labels.profit=0.01 (repeatable).")
    @functools.wraps(func)
    def wrapper(*args, config_path: str | None, overrides: tuple[str, ...], **kwargs):
        cfg = load_config(config_path, overrides)
        return func(*args, cfg=cfg, **kwargs)

    return wrapper


def setup_logging(name: str, log_dir: str | Path | None = None) -> logging.Logger:
    """Log INFO to ``logs/<name>.log`` (the terminal stays for results and progress bars).
    ``NTS_LOG_DIR`` moves the folder (the test suite points it at a temporary one)."""
    log_dir = Path(log_dir or os.environ.get("NTS_LOG_DIR", "logs"))
    log_dir.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("nts")
    logger.setLevel(logging.INFO)
    target = str((log_dir / f"{name}.log").resolve())
    if not any(getattr(h, "baseFilename", None) == target for h in logger.handlers):
        handler = logging.FileHandler(target)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    return logger


class NtsGroup(click.Group):
    """Click group that turns library refusals (NtsError) into one line and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except NtsError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
