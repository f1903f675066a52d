"""Lazy numba compilation with an on-disk cache that can never run a stale kernel.

:func:`kernel` is the one decorator of every compiled function on the trading path
(:mod:`core.policy`, :mod:`core.risk`, :mod:`core.decision`, :mod:`core.simulator`,
:mod:`sweeps.kernel`). It compiles on the first call, never at import, and caches the machine
code on disk -- but not in numba's usual place:

* numba's own cache checks only the source file of the cached function, not the files of
  the functions it calls and inlines, so a cached simulator would keep running an old copy of
  a changed rule in :mod:`core.policy`. Here the cache folder is named after a hash of the
  source of *every* module in :data:`KERNEL_MODULES` (plus the numba and numpy versions): a
  change to any of them selects a fresh, empty folder, so a stale kernel cannot be loaded.
* the folder lives under ``$NTS_NUMBA_CACHE``, else ``$NUMBA_CACHE_DIR``, else
  ``~/.cache/nts/numba``; when that is not writable, under the system temp folder; when
  nothing is writable the kernels are compiled per process (correct, only slower).

Old hash folders are left in place (a few MB each); deleting the cache root is always safe.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np
from numba.core import types as nb_types

try:  # numba's cache classes (public names since numba 0.60; absent -> no disk cache, still correct)
    from numba.core.caching import CompileResultCacheImpl, FunctionCache, UserProvidedCacheLocator
except ImportError:  # pragma: no cover - depends on the installed numba
    CompileResultCacheImpl = FunctionCache = UserProvidedCacheLocator = None  # type: ignore[assignment,misc]

ROOT = Path(__file__).resolve().parents[1]
# Every module whose compiled functions end up inside the kernels (relative to the repo root).
KERNEL_MODULES: tuple[str, ...] = ("core/jit.py", "core/policy.py", "core/risk.py", "core/decision.py",
                                   "core/simulator.py", "sweeps/kernel.py")


def source_hash(modules: tuple[str, ...] = KERNEL_MODULES) -> str:
    """sha256 (hex, 16 chars) of the kernel modules' sources and the numba/numpy versions."""
    h = hashlib.sha256(f"numba {numba.__version__} numpy {np.__version__}".encode())
    for rel in modules:
        path = ROOT / rel
        h.update(rel.encode())
        h.update(path.read_bytes() if path.exists() else b"<missing>")
    return h.hexdigest()[:16]


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
        return True
    except OSError:
        return False


def cache_folder() -> Path | None:
    """The hash-keyed cache folder of this source tree (created), or None when no candidate
    folder is writable (then every process compiles for itself)."""
    name = f"nts-{source_hash()}"
    roots = [os.environ.get("NTS_NUMBA_CACHE"), os.environ.get("NUMBA_CACHE_DIR"),
             str(Path.home() / ".cache" / "nts" / "numba"),
             str(Path(tempfile.gettempdir()) / f"nts-numba-{os.getuid() if hasattr(os, 'getuid') else 'user'}")]
    for root in roots:
        if root and _writable(Path(root) / name):
            return Path(root) / name
    return None


CACHE_DIR: Path | None = cache_folder() if os.environ.get("NTS_NUMBA_NO_CACHE", "") in ("", "0") else None

if UserProvidedCacheLocator is not None:
    class _HashedLocator(UserProvidedCacheLocator):
        """numba's user-directory locator pointed at :data:`CACHE_DIR` instead of ``NUMBA_CACHE_DIR``."""

        def __init__(self, py_func: Callable, py_file: str) -> None:
            super().__init__(py_func, py_file)
            self._cache_path = os.path.join(str(CACHE_DIR), self.get_suitable_cache_subpath(py_file))

        @classmethod
        def from_function(cls, py_func: Callable, py_file: str) -> Any:
            if CACHE_DIR is None or not os.path.exists(py_file):
                return None
            self = cls(py_func, py_file)
            try:
                self.ensure_cache_path()
            except OSError:
                return None
            return self

    class _HashedCacheImpl(CompileResultCacheImpl):
        _locator_classes = [_HashedLocator]

    class _HashedFunctionCache(FunctionCache):
        _impl_class = _HashedCacheImpl


def _unliteral_call_template(disp: Any) -> None:
    """Make calls from other kernels compile ``disp`` for the plain types of constant arguments.

    numba types a constant argument of a call inside a kernel as a literal (``Literal[int](3)``)
    and compiles one specialisation per distinct constant: the simulator's queue helpers were
    compiled 3-5 times each, the decision step's ``_actions`` 6 times (543 signatures in all,
    most of the cold compile). One plain-typed version serves every constant; LLVM still folds
    the constants once it inlines the call."""
    template_for = disp.get_call_template

    def get_call_template(args: tuple, kws: dict) -> Any:
        return template_for(tuple(nb_types.unliteral(a) for a in args),
                            {k: nb_types.unliteral(v) for k, v in kws.items()})

    disp.get_call_template = get_call_template


def kernel(fn: Callable | None = None, *, parallel: bool = False, inline: bool = False) -> Any:
    """``numba.njit(nogil=True)`` compiled lazily (first call) and cached in :data:`CACHE_DIR`.

    Use bare (``@kernel``), with ``parallel=True`` for a ``prange`` driver, or with
    ``inline=True`` for a small helper of the per-bar loop (inlined into its callers' IR, so
    the records it takes are not copied on every call)."""

    def wrap(f: Callable) -> Any:
        disp = numba.njit(nogil=True, parallel=parallel, cache=False, inline="always" if inline else "never")(f)
        if not inline:
            _unliteral_call_template(disp)
        if CACHE_DIR is not None and UserProvidedCacheLocator is not None:
            try:
                disp._cache = _HashedFunctionCache(disp.py_func)
            except RuntimeError:  # no usable locator: compile per process
                pass
        return disp

    return wrap(fn) if fn is not None else wrap
