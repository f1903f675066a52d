"""The ``nts`` click group: every command logged, every failure one line.

Kept apart from :mod:`cli.common` and free of pandas/numba/torch imports so that
``nts --help`` and the group itself load in a fraction of a second (:mod:`cli.main` loads a
sub-command's module only when that command runs or its own help is asked for).

Every command, refusals included, appends to ``logs/nts.log`` (``NTS_LOG_DIR`` moves the
folder): the time, the command line and the outcome (``ok``, the error line, the exit
code), with secrets redacted (:mod:`core.redact`). An exception nobody foresaw still ends as
one line, ``error: unexpected <Type>: <message> (traceback in <log>)``, exit code 2, with the
traceback in the log; Ctrl+C ends with one line and exit code 130.
"""
from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import click

from core.errors import NtsError
from core.redact import RedactingFilter, redact

LOG_NAME = "nts.log"
_log = logging.getLogger("nts.cli")


def log_path() -> Path:
    """Where the command log goes: ``$NTS_LOG_DIR/nts.log`` (default ``logs/nts.log``)."""
    return Path(os.environ.get("NTS_LOG_DIR") or "logs") / LOG_NAME


def setup_logging(name: str | None = None, log_dir: str | Path | None = None) -> logging.Logger:
    """Send the ``nts`` logger (INFO and up, redacted) to :func:`log_path` and return the
    ``nts.<name>`` logger. Never raises: when the log folder cannot be written, logging is
    off for this run and the command still works (its result must not depend on a log)."""
    target = Path(log_dir) / LOG_NAME if log_dir else log_path()
    logger = logging.getLogger("nts")
    logger.setLevel(logging.INFO)
    try:
        resolved = str(target.resolve())
    except OSError:
        resolved = str(target)
    current = [h for h in logger.handlers if getattr(h, "_nts_log", False)]
    if not any(h.baseFilename == resolved for h in current):
        for h in current:  # NTS_LOG_DIR changed (tests): follow it, one file at a time
            logger.removeHandler(h)
            h.close()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(resolved, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))  # the owner's only
            # backslashreplace: a file name that is not valid UTF-8 must not break logging
            handler = logging.FileHandler(resolved, encoding="utf-8", errors="backslashreplace")
        except OSError:
            pass
        else:
            handler._nts_log = True  # type: ignore[attr-defined]
            handler.addFilter(RedactingFilter())
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logger.addHandler(handler)
    return logging.getLogger(f"nts.{name}") if name else logger


def _one_line(text: Any) -> str:
    """Redacted, on one line (a file name may hold a newline; the message must not)."""
    return redact(text).strip().replace("\r", "\\r").replace("\n", "\\n")


def _logged(message: str, *args: Any, level: int = logging.INFO, exc_info: bool = False) -> bool:
    """Log through the nts logger; False when no log file could be opened."""
    logger = setup_logging()
    ok = any(getattr(h, "_nts_log", False) for h in logger.handlers)
    _log.log(level, message, *args, exc_info=exc_info)
    return ok


class NtsGroup(click.Group):
    """Click group that logs every command and turns every failure into one line:
    library refusals (NtsError) -> ``error: <message>``, exit 2; Ctrl+C -> exit 130; any
    other exception -> ``error: unexpected <Type>: <message> (traceback in <log>)``, exit 2.
    click's own usage errors keep click's output and exit code 2."""

    def main(self, args: Sequence[str] | None = None, *a: Any, **kw: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        self._nts_cmdline = "nts " + shlex.join(str(x) for x in argv)
        self._nts_outcome = None
        t0 = time.perf_counter()
        _logged("start: %s", self._nts_cmdline)
        code: Any = 0
        try:
            return super().main(argv, *a, **kw)
        except SystemExit as exc:
            code = exc.code
            raise
        except BaseException as exc:  # standalone_mode=False callers see the exception itself
            code = type(exc).__name__
            raise
        finally:
            if code is None:
                code = 0
            outcome = self._nts_outcome or ("ok" if code == 0 else "")
            _logged("end: %s -> exit %s%s (%.1f s)", self._nts_cmdline, code,
                    f", {outcome}" if outcome else "", time.perf_counter() - t0)

    def make_context(self, *args: Any, **kw: Any) -> click.Context:
        try:
            return super().make_context(*args, **kw)
        except click.ClickException as exc:  # group-level usage error (no such command, ...)
            self._nts_outcome = f"usage error: {_one_line(exc.format_message())}"
            raise

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except NtsError as exc:
            line = _one_line(exc)
            self._nts_outcome = f"error: {line}"
            click.echo(f"error: {line}", err=True)
            ctx.exit(2)
        except (click.exceptions.Exit, click.Abort):
            raise
        except click.ClickException as exc:  # a sub-command's usage error: click prints it
            self._nts_outcome = f"usage error: {_one_line(exc.format_message())}"
            raise
        except KeyboardInterrupt:
            self._nts_outcome = "interrupted"
            click.echo("error: interrupted (Ctrl+C); no partial output was put in place", err=True)
            ctx.exit(130)
        except Exception as exc:  # noqa: BLE001 - the last resort: one line, traceback to the log
            first = _one_line((str(exc).strip().splitlines() or [""])[0])[:300]
            kind = type(exc).__name__
            saved = _logged("unexpected %s in %s", kind, getattr(self, "_nts_cmdline", "nts"),
                            level=logging.ERROR, exc_info=True)
            where = f"traceback in {log_path()}" if saved else f"no traceback saved: cannot write {log_path()}"
            line = f"unexpected {kind}: {first} ({where})"
            self._nts_outcome = f"error: {line}"
            click.echo(f"error: {line}", err=True)
            ctx.exit(2)
