"""The `nts` command: a click group; each sub-command lives in its own cli/ module."""
from __future__ import annotations

import importlib

import click

from cli.common import NtsGroup

# (module, attribute) of every sub-command. A module or command that is missing is an
# error at import (a broken install must not silently lose a command).
_COMMANDS = [
    ("cli.data_cmd", "data_group"),
    ("cli.download_cmd", "download"),
    ("cli.labels_cmd", "labels"),
    ("cli.train_cmd", "train"),
    ("cli.train_cmd", "explain"),
    ("cli.backtest_cmd", "backtest"),
    ("cli.sweep_cmd", "sweep"),
    ("cli.paper_cmd", "paper"),
    ("cli.paper_cmd", "live"),
    ("cli.serve_cmd", "serve"),
    ("cli.exchange_cmd", "exchange_group"),
    ("cli.status_cmd", "status"),
    ("cli.status_cmd", "resume"),
]


@click.group(cls=NtsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="neural-trading-system")
def cli() -> None:
    """nts: TCN triple-barrier probabilities, calibrated, traded in backtrader strategies.

    Typical flow: nts download -> nts data check -> nts labels -> nts train -> nts backtest.
    Commands take --config FILE and --set key.path=value (explain reads its settings
    from the bundle).
    """


for _module, _attr in _COMMANDS:
    _command = getattr(importlib.import_module(_module), _attr, None)
    if not isinstance(_command, click.Command):
        raise ImportError(f"nts: {_module} defines no command {_attr!r}")
    cli.add_command(_command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="nts")


if __name__ == "__main__":
    main()
