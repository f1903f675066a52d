"""The lazy command table of ``nts``: every entry is a real click command, ``nts --help``
lists them all without importing any of them, and a command that cannot load is an error."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import cli.main as main
from cli.main import COMMANDS, CommandEntry, cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_entry_is_a_click_command(name):
    command = cli.get_command(click.Context(cli), name)
    assert isinstance(command, click.Command)
    assert command.name == name or name in ("data", "exchange")  # groups are named by their table key


def test_help_lists_every_command_and_loads_none():
    code = ("import sys\nfrom click.testing import CliRunner\nfrom cli.main import cli, COMMANDS\n"
            "r = CliRunner().invoke(cli, ['--help'])\nassert r.exit_code == 0, r.output\n"
            "missing = [n for n in COMMANDS if '  ' + n + ' ' not in r.output]\nassert not missing, missing\n"
            "loaded = sorted({e.module for e in COMMANDS.values()} & set(sys.modules))\n"
            "heavy = sorted(m for m in ('pandas', 'numpy', 'numba', 'torch', 'backtrader') if m in sys.modules)\n"
            "print(loaded, heavy)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[] []"


def test_a_command_that_cannot_load_is_an_error_not_silence(monkeypatch):
    monkeypatch.setitem(COMMANDS, "ghost", CommandEntry("cli.no_such_module", "ghost", "Missing on purpose."))
    monkeypatch.setattr(main.cli, "commands", dict(main.cli.commands))
    res = CliRunner().invoke(cli, ["ghost"])
    assert res.exit_code != 0
    assert "command 'ghost' cannot be loaded from cli.no_such_module" in res.output


def test_unknown_command_is_a_usage_error():
    res = CliRunner().invoke(cli, ["no-such-command"])
    assert res.exit_code == 2
    assert "No such command" in res.output
