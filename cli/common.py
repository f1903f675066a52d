"""Shared CLI plumbing: the --config/--set/--overwrite options and the model-input paths.

The group that logs every command and turns failures into one line is :mod:`cli.group`.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import click

from cli.group import LOG_NAME, NtsGroup, log_path, setup_logging  # noqa: F401  (re-exported for the commands)
from core.config import load_config


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


def overwrite_option(func: Callable) -> Callable:
    """Add ``--overwrite`` (see core.files: it never removes anything that is not an nts output
    of the command's own kind, and never an input)."""
    return click.option(
        "--overwrite", is_flag=True,
        help="Also replace an existing output nts cannot recognise as its own (a folder of this command's "
             "files without .nts-output.json; for a single file, any file). Never a folder with other files "
             "in it, never an input.")(func)


def bundle_inputs(model_path: str | Path) -> list[Path]:
    """The input paths a ``--model`` option names: the path itself and, for a weights file
    (``.../final_model.pt``), its bundle folder, which an output must not lie inside either."""
    path = Path(model_path)
    return [path, path.parent] if path.suffix == ".pt" else [path]
