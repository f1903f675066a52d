"""Writing outputs without ever losing the user's files.

* :func:`atomic_path` / :func:`write_text_atomic`: one file, atomically (a reader sees the old
  file or the complete new one, never half of one).
* :func:`output_dir`: every command that writes a FOLDER (train, backtest, explain, sweep)
  builds it in a temporary sibling and renames it into place only when it is complete. An
  existing folder is replaced only when it is an nts output of the same kind, recognised by
  the marker file :data:`MARKER` (``.nts-output.json``: kind, marker version, creation time,
  nts version) that every output folder gets, or when it is empty. ``--overwrite``
  (``overwrite=True``) additionally replaces a folder that holds only files of that kind but
  no marker (written by an nts from before markers). A folder with anything else in it, or
  an nts output of another kind, is never replaced, with or without ``--overwrite``. An
  output that is, contains or lies inside an input (data file, model bundle), or the current
  folder, is refused. A refused or failed run leaves an existing output exactly as it was.
* :func:`check_output_file`: the same rules for single-file outputs (a download CSV, a
  labels table, a repaired candle file): an existing file is replaced only when it is one nts
  wrote (``is_own``) or with ``overwrite``; an input is never replaced.

Every refusal is one :class:`~core.errors.OutputError` line naming the path.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, Iterable, Iterator

from core.errors import OutputError

MARKER = ".nts-output.json"
MARKER_VERSION = 1


@dataclass(frozen=True)
class OutputKind:
    """What a command's output folder is: ``name`` goes into the marker; ``files`` are the
    names it writes, the first one every output of the kind has (bundle.json, metrics.json,
    ...), and ``signature`` text only that first file holds. ``files`` and ``signature``
    recognise an output written before markers existed (replaced with ``--overwrite`` only)."""

    name: str
    files: tuple[str, ...] = ()
    signature: str | None = None


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to. When the block ends normally the
    file is fsynced, given the permissions a plain ``open()`` would give, and renamed over
    ``path``; when it raises, the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # a parent that is a file, a read-only folder, a full disk
        raise OutputError(f"{path}: cannot write here ({_reason(exc)})") from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            raise OutputError(f"{path}: cannot write here ({_reason(exc)})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# ------------------------------------------------------------------ output folders and files

def _reason(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


def _resolved(path: str | Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path)))).resolve()


def _inside(inner: Path, outer: Path) -> bool:
    """``inner`` is ``outer`` or lies somewhere below it (both resolved)."""
    return inner == outer or outer in inner.parents


def check_output_path(path: str | Path, *, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Checks every output gets, file or folder; returns the resolved path.

    Refused: an empty name; a path below an existing FILE (``data.csv/out``); a path that is,
    contains or lies inside one of ``inputs`` (None entries are skipped)."""
    if not str(path).strip():
        raise OutputError("empty output path: give a file or folder name")
    target = _resolved(path)
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{path}: cannot be created: {parent} is a file, not a folder")
            break
    for item in inputs:
        if item is None or not str(item).strip():
            continue
        src = _resolved(item)
        if target == src:
            raise OutputError(f"{path}: is the input {item} itself; write the output elsewhere")
        if _inside(src, target):
            raise OutputError(f"{path}: contains the input {item}; writing it would replace the input")
        if _inside(target, src):
            raise OutputError(f"{path}: lies inside the input {item}; write the output elsewhere")
    return target


def read_marker(folder: str | Path) -> dict | None:
    """The parsed :data:`MARKER` of ``folder``; None when it has none or it is unreadable."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("kind"), str) else None


def _files_below(folder: Path, limit: int = 10000) -> list[str] | None:
    """Relative names of the files below ``folder``; None if there are links, odd entries or
    more than ``limit`` of them (no such folder is ever treated as a plain old output)."""
    names = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            full = Path(root) / name
            if full.is_symlink() or not (full.is_dir() or full.is_file()):
                return None
        names.extend(str((Path(root) / f).relative_to(folder)) for f in files)
        if len(names) > limit:
            return None
    return names


def _has_signature(file: Path, signature: str | None) -> bool:
    if signature is None:
        return True
    try:
        with open(file, "rb") as fh:
            return signature.encode() in fh.read(1 << 16)
    except OSError:
        return False


def check_output_dir(path: str | Path, kind: OutputKind | str, *, inputs: Iterable[str | Path | None] = (),
                     overwrite: bool = False) -> Path:
    """Refuse (one OutputError line) an output folder this run may not replace; return it resolved.

    Allowed: a new path; an empty folder; an nts output of the same ``kind`` (its
    :data:`MARKER` says so); with ``overwrite``, a folder without a marker whose files are all
    among ``kind.files`` and include the first of them, which holds ``kind.signature`` (an
    output of this kind from before markers). See the module docstring."""
    kind = kind if isinstance(kind, OutputKind) else OutputKind(kind)
    own_files, signature = list(kind.files), kind.signature
    target = check_output_path(path, inputs=inputs)
    if _inside(_resolved(os.getcwd()), target):
        raise OutputError(f"{path}: is the current folder or contains it; give a new folder name for the output")
    if target.is_symlink() and not target.exists():
        raise OutputError(f"{path}: is a dangling link; remove it or choose another name")
    if not target.exists():
        return target
    if not target.is_dir():
        raise OutputError(f"{path}: exists and is a file, not an output folder; choose another name")
    try:
        entries = sorted(p.name for p in target.iterdir())
    except OSError as exc:
        raise OutputError(f"{path}: cannot look inside ({_reason(exc)})") from None
    if not entries:
        return target
    marker = read_marker(target)
    if marker is not None:
        if marker["kind"] == kind.name:
            return target
        raise OutputError(f"{path}: holds an nts {marker['kind']} output, not a {kind.name} output; nts replaces "
                          "only an output of the same kind: choose another folder")
    files = _files_below(target)
    if own_files and files is not None and own_files[0] in files and set(files) <= set(own_files) \
            and _has_signature(target / own_files[0], signature):
        if overwrite:
            return target
        raise OutputError(f"{path}: holds {kind.name} files but no {MARKER} (an older nts output?); "
                          "add --overwrite to replace it, or choose another folder")
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    raise OutputError(f"{path}: exists and is not an nts {kind.name} output (no {MARKER}; holds {shown}); nts never "
                      "replaces such a folder, even with --overwrite: choose a new folder")


@contextmanager
def output_dir(path: str | Path, kind: OutputKind | str, *, inputs: Iterable[str | Path | None] = (),
               overwrite: bool = False) -> Iterator[Path]:
    """Build an output folder: yield an empty temporary folder beside ``path``; when the block
    ends normally, write the :data:`MARKER` into it, check ``path`` again (it may have changed
    while the run went) and rename the folder into place, replacing the old output (moved
    aside first, deleted once the new one is in place). When the block raises, the temporary
    folder is removed and ``path`` is exactly as it was. Call :func:`check_output_dir` before
    long work so that a refusal comes first."""
    kind = kind if isinstance(kind, OutputKind) else OutputKind(kind)
    inputs = list(inputs)
    target = check_output_dir(path, kind, inputs=inputs, overwrite=overwrite)
    anchor = next(p for p in target.parents if p.exists())  # parents are created only at the end
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.nts-tmp-", dir=anchor))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the output gets a plain mkdir's mode
    except OSError as exc:
        raise OutputError(f"{path}: cannot write in {anchor} ({_reason(exc)})") from None
    try:
        yield tmp
        marker = {"kind": kind.name, "version": MARKER_VERSION,
                  "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  "nts": _nts_version()}
        try:
            (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise OutputError(f"{path}: cannot write ({_reason(exc)})") from None
        check_output_dir(path, kind, inputs=inputs, overwrite=overwrite)
        _swap_into_place(tmp, target, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_into_place(tmp: Path, target: Path, shown: str | Path) -> None:
    old = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            old = target.parent / f".{target.name}.nts-old-{uuid.uuid4().hex[:12]}"
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except OSError:
            if old is not None:
                os.replace(old, target)  # put the previous output back
                old = None
            raise
    except OSError as exc:
        raise OutputError(f"{shown}: cannot put the output in place ({_reason(exc)})") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_output_file(path: str | Path, *, inputs: Iterable[str | Path | None] = (), overwrite: bool = False,
                      is_own: Callable[[Path], bool] | None = None, what: str = "output") -> Path:
    """Refuse (one OutputError line) a single-file output this run may not write; return it resolved.

    An existing file is replaced only when ``is_own(path)`` says nts wrote it (same kind) or
    with ``overwrite``; an input is never replaced, not even with ``overwrite``; a folder is
    never replaced by a file."""
    target = check_output_path(path, inputs=inputs)
    if target.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name for the {what}")
    if target.exists() and not overwrite and not (is_own is not None and is_own(target)):
        raise OutputError(f"{path}: exists and is not a {what} nts wrote; add --overwrite to replace it, "
                          "or choose another name")
    return target


def _nts_version() -> str:
    try:
        return version("neural-trading-system")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"
