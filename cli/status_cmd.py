"""`nts status` and `nts resume`: read a session journal, clear a halt. Parsing only; the
journal (sessions/journal.py) does the work."""
from __future__ import annotations

import datetime as _dt
import getpass
import os
import socket
import sys
from typing import Iterable

import click

from core.redact import redact
from sessions.journal import Journal, summary_json, summary_lines


def _echo_all(lines: Iterable[str]) -> None:
    """Print ``lines``; a reader that stops early (``nts status | head``) ends it quietly."""
    try:
        for line in lines:
            click.echo(line)
        sys.stdout.flush()
    except BrokenPipeError:
        # point stdout at /dev/null so that the interpreter's final flush does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _operator() -> str:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name (no $USER, uid not in passwd) in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@click.command("status")
@click.option("--state", "state", required=True, type=click.Path(dir_okay=False),
              help="Session journal, e.g. state/SESSION.db.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON instead of text.")
def status(state: str, as_json: bool) -> None:
    """Print a session journal's summary: equity, position, open orders, fills, fees, breaker
    trips, halt, last bar, gaps. Read-only; safe while the session runs. A missing or damaged
    file exits 2 with one line."""
    with Journal.open_readonly(state) as journal:
        summary = journal.summary()
    _echo_all([summary_json(summary)] if as_json else summary_lines(summary))


@click.command("resume")
@click.option("--state", "state", required=True, type=click.Path(dir_okay=False),
              help="Session journal, e.g. state/SESSION.db.")
@click.option("--yes", is_flag=True, help="Clear without asking.")
@click.option("--by", "by", default=None, help="Who clears the halt (default: user@host).")
def resume(state: str, yes: bool, by: str | None) -> None:
    """Clear a session's halt (kill switch, breaker, error). Says what the halt was, asks for
    confirmation unless --yes, and journals who cleared it and when; nothing else changes.
    A running session sees the clear at its next halt check."""
    with Journal.open_admin(state) as journal:
        halt = journal.halted()
        if halt is None:
            click.echo(f"{state}: not halted; nothing to do")
            return
        click.echo(f"{state}: halted since {halt.ts_iso}: {halt.reason}")
        if not yes:
            click.confirm("Clear this halt and let the session trade again?", default=False, abort=True)
        who = redact(by or _operator())  # a name typed on the command line is never echoed as a secret
        journal.clear_halt(f"{who} (nts resume)", _dt.datetime.now(_dt.timezone.utc))
        click.echo(f"halt cleared by {who}")
