"""Resolve a strategy by short name, as ``module:Class`` or as ``path/to/file.py:Class``.

``module:Class`` imports the module the usual way and, when no installed module has that
name, from the current folder (as ``python -m`` would; the ``nts`` console script does not
put the current folder on ``sys.path`` by itself). ``file.py:Class`` loads that file
whatever its folder. Whatever goes wrong - no such file, a syntax error, an exception while
the module runs - is one ConfigError line naming the strategy.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from core.errors import ConfigError
from strategies.base import ModelStrategy
from strategies.hooks import describe_failure, hook_signature_problems

# Short names of the strategies shipped with nts: name -> "module:Class".
BUILTIN: dict[str, str] = {
    "tcn": "strategies.tcn:TCNStrategy",
    "night_only": "strategies.examples:NightOnly",
    "calm_only": "strategies.examples:CalmOnly",
    "trend_follow": "strategies.examples:TrendFollow",
}


def _split(name: str) -> tuple[str, str]:
    spec = BUILTIN.get(str(name).strip(), str(name).strip())
    if ":" not in spec:
        raise ConfigError(f"unknown strategy {name!r}: use one of {', '.join(sorted(BUILTIN))}, "
                          "module:ClassName or path/to/file.py:ClassName")
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr.isidentifier():
        raise ConfigError(f"strategy {name!r}: expected module:ClassName or file.py:ClassName")
    return module_name, attr


def _is_file_spec(module_name: str) -> bool:
    return module_name.endswith(".py") or "/" in module_name or os.sep in module_name


def strategy_source(name: str | type) -> Path | None:
    """The file a ``file.py:Class`` strategy is read from (an input no output may replace);
    None for builtin names, modules and classes."""
    if isinstance(name, type) or ":" not in str(name):
        return None
    module_name = str(name).strip().rpartition(":")[0]
    return Path(module_name) if module_name and _is_file_spec(module_name) else None


def _failed(name: str, what: str, exc: BaseException) -> ConfigError:
    # sys.exit() while the module runs is a failure too: it must not end nts as a success
    return ConfigError(f"strategy {name!r}: {what} failed ({describe_failure(exc)})")


def _load_file(path: Path, name: str) -> ModuleType:
    if not path.is_file():
        raise ConfigError(f"strategy {name!r}: file {path} not found")
    # a stable, unique module name per file: two files called mine.py do not collide
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    mod_name = f"nts_user_strategy_{path.stem}_{digest}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"strategy {name!r}: cannot load {path} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # classes defined in it must find their module (pickling, repr)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code: any failure is one line
        del sys.modules[mod_name]
        raise _failed(name, f"loading {path}", exc) from None
    return module


def _import(module_name: str, name: str) -> ModuleType:
    if not all(part.isidentifier() for part in module_name.split(".")):
        raise ConfigError(f"strategy {name!r}: {module_name!r} is not a module name (use file.py:ClassName for a file)")
    top = module_name.split(".")[0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        local = Path(cwd, f"{top}.py").is_file() or Path(cwd, top, "__init__.py").is_file()
        if exc.name not in {module_name, top} or not local or cwd in sys.path:
            raise ConfigError(f"strategy {name!r}: cannot import module {module_name!r} ({exc})") from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a module that fails while it runs
        raise _failed(name, f"importing {module_name!r}", exc) from None
    sys.path.insert(0, cwd)  # the current folder, for this import only
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"strategy {name!r}: cannot import module {module_name!r} ({exc})") from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001
        raise _failed(name, f"importing {module_name!r}", exc) from None
    finally:
        sys.path.remove(cwd)


def resolve_strategy(name: str | type):
    """Return the ModelStrategy subclass for ``name``: a builtin short name (``tcn``,
    ``night_only``), ``package.module:ClassName``, ``path/to/file.py:ClassName``, or the class
    itself. Raises ConfigError with one line when it cannot be found or loaded, is not a
    ModelStrategy subclass, does not override ``make_probability`` (e.g. the abstract
    base itself) or overrides a hook with parameters the engines cannot pass
    (:func:`strategies.hooks.hook_signature_problems`)."""
    if isinstance(name, type):
        cls = name
        spec = f"{cls.__module__}:{cls.__qualname__}"
    else:
        module_name, attr = _split(name)
        spec = f"{module_name}:{attr}"
        module = _load_file(Path(module_name), name) if _is_file_spec(module_name) else _import(module_name, name)
        cls = getattr(module, attr, None)
        if cls is None:
            raise ConfigError(f"strategy {name!r}: module {module_name!r} has no attribute {attr!r}")
    if not (isinstance(cls, type) and issubclass(cls, ModelStrategy)):
        raise ConfigError(f"strategy {spec!r} is not a subclass of strategies.base.ModelStrategy")
    if cls.make_probability is ModelStrategy.make_probability:
        # the base hook raises NotImplementedError deep inside backtrader: refuse up front
        raise ConfigError(f"strategy {spec!r} does not implement make_probability() "
                          "(subclass TCNStrategy, or provide the probability line)")
    problems = hook_signature_problems(cls)
    if problems:
        raise ConfigError(f"strategy {spec!r}: {problems[0]}")
    return cls
