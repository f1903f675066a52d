"""The `nts` command: a click group whose sub-commands load on demand.

Each sub-command lives in its own cli/ module and is imported only when it runs (or its own
``--help`` is asked for), so ``nts --help`` never loads pandas, numba, torch or backtrader.
The one-line summaries ``nts --help`` lists are kept here; a test checks that every entry
names a real click command. A command whose module cannot be imported is an error naming
it, never a silently missing command.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

import click

from cli.group import NtsGroup


@dataclass(frozen=True)
class CommandEntry:
    """Where a sub-command lives and what ``nts --help`` says about it."""

    module: str
    attr: str
    summary: str


COMMANDS: dict[str, CommandEntry] = {
    "data": CommandEntry("cli.data_cmd", "data_group", "Inspect and repair candle files."),
    "download": CommandEntry("cli.download_cmd", "download",
                             "Download closed candles from an exchange into a CSV (resumable)."),
    "labels": CommandEntry("cli.labels_cmd", "labels", "Label candles with the triple barrier and print statistics."),
    "train": CommandEntry("cli.train_cmd", "train", "Train, calibrate and compare the TCN; write a model bundle."),
    "explain": CommandEntry("cli.train_cmd", "explain", "Permutation importance of a bundle's features and lags."),
    "evaluate": CommandEntry("cli.evaluate_cmd", "evaluate",
                             "Out-of-sample report of a schedule or bundle: calibration per fold and month, P vs net return."),
    "backtest": CommandEntry("cli.backtest_cmd", "backtest",
                             "Backtest a strategy with a model bundle on candles; write the report."),
    "sweep": CommandEntry("cli.sweep_cmd", "sweep",
                          "Sweep barriers, deadbands, centre, order type and costs; say whether the best row is luck."),
    "paper": CommandEntry("cli.paper_cmd", "paper", "Paper-trade a model on an exchange's live candles."),
    "live": CommandEntry("cli.paper_cmd", "live", "Trade a model LIVE on an exchange (journaled, reconciled)."),
    "serve": CommandEntry("cli.serve_cmd", "serve",
                          "Serve predictions over HTTP, or run a paper/live session with an operator API."),
    "exchange": CommandEntry("cli.exchange_cmd", "exchange_group",
                             "Local Binance-compatible exchanges on 127.0.0.1 for rehearsal and tests."),
    "bundle": CommandEntry("cli.bundle_cmd", "bundle_group", "Model bundle tools (export the ONNX graph of an older bundle)."),
    "strategy": CommandEntry("cli.strategy_cmd", "strategy_group", "Check a strategy's hooks for lookahead (nts strategy check)."),
    "status": CommandEntry("cli.status_cmd", "status", "Print a session journal's summary."),
    "resume": CommandEntry("cli.status_cmd", "resume", "Clear a session's halt (kill switch, breaker, error)."),
}


class LazyGroup(NtsGroup):
    """:class:`cli.group.NtsGroup` that imports a sub-command's module only when needed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        try:
            module = importlib.import_module(entry.module)
            command = getattr(module, entry.attr)
        except (ImportError, AttributeError) as exc:
            raise click.ClickException(f"command {cmd_name!r} cannot be loaded from {entry.module}: "
                                       f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(command, click.Command):
            raise click.ClickException(f"command {cmd_name!r}: {entry.module}.{entry.attr} is not a click command")
        self.commands[cmd_name] = command
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            entry = COMMANDS.get(name)
            text = entry.summary if entry else self.commands[name].get_short_help_str(limit)
            rows.append((name, _clip(text, limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _clip(text: str, limit: int) -> str:
    """``text`` cut at a word boundary to fit ``limit`` characters, with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: max(limit - 3, 1)].rsplit(" ", 1)[0].rstrip(" ,;:")
    return cut + "..."


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="neural-trading-system")
def cli() -> None:
    """nts: TCN triple-barrier probabilities, calibrated, traded in backtrader strategies.

    Typical flow: nts download -> nts data check -> nts labels -> nts train -> nts backtest.
    Commands take --config FILE and --set key.path=value (explain reads its settings
    from the bundle).
    """


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="nts")


if __name__ == "__main__":
    main()
