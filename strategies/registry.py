"""Resolve a strategy by short name or as ``module:Class`` (user subclasses)."""
from __future__ import annotations

import importlib

from core.errors import ConfigError
from strategies.base import ModelStrategy

# Short names of the strategies shipped with nts: name -> "module:Class".
BUILTIN: dict[str, str] = {
    "tcn": "strategies.tcn:TCNStrategy",
    "night_only": "strategies.examples:NightOnly",
}


def resolve_strategy(name: str | type):
    """Return the ModelStrategy subclass for ``name``: a builtin short name (``tcn``,
    ``night_only``), ``package.module:ClassName``, or the class itself.
    Raises ConfigError with one line when it cannot be found, is not a ModelStrategy
    subclass, or does not override ``make_probability`` (e.g. the abstract base itself)."""
    if isinstance(name, type):
        cls = name
        spec = f"{cls.__module__}:{cls.__qualname__}"
    else:
        spec = BUILTIN.get(str(name).strip(), str(name).strip())
        if ":" not in spec:
            raise ConfigError(f"unknown strategy {name!r}: use one of {', '.join(sorted(BUILTIN))} "
                              "or module.path:ClassName")
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"strategy {name!r}: cannot import module {module_name!r} ({exc})") from None
        cls = getattr(module, attr, None)
        if cls is None:
            raise ConfigError(f"strategy {name!r}: module {module_name!r} has no attribute {attr!r}")
    if not (isinstance(cls, type) and issubclass(cls, ModelStrategy)):
        raise ConfigError(f"strategy {spec!r} is not a subclass of strategies.base.ModelStrategy")
    if cls.make_probability is ModelStrategy.make_probability:
        # the base hook raises NotImplementedError deep inside backtrader: refuse up front
        raise ConfigError(f"strategy {spec!r} does not implement make_probability() "
                          "(subclass TCNStrategy, or provide the probability line)")
    return cls
