"""The hooks a strategy overrides, vectorised over the bars, and the one way to evaluate them.

In the spirit of freqtrade's ``populate_*`` methods, every hook takes whole arrays (the bars of
a span as a DataFrame with a UTC ``DatetimeIndex`` and ``open/high/low/close/volume``
columns) and returns one value per bar. The same function serves every engine: it is
evaluated once over the span in backtest and sweep, and over the trailing ``hook_lookback``
bars in paper and live (the whole history when a hook is overridden without one);
:func:`evaluate_hooks` is the only caller, so a lookahead check of it covers every engine.

=========================================  ==================================================
hook                                       default
=========================================  ==================================================
``signal(p, bars) -> s``                   :meth:`core.policy.Policy.signals` (0 at the centre)
``entry_allowed(bars) -> bool``            every bar
``target_weight(s, fvol, bars) -> w``      :meth:`core.policy.Policy.target_weights`
=========================================  ==================================================

With volatility-scaled barriers (``labels.scale: vol``) the bars carry one more column,
``barrier_width`` (the bar's ``sigma_t * sqrt(horizon)``, :func:`hook_bars`): the default
``signal`` reads it for the per-bar break-even centre, and a hook may read it too.

A hook may read ``self.policy`` (the frozen :class:`core.policy.Policy`) and ``self.p`` (the
strategy's backtrader params), nothing that exists only while backtrader runs: the sweep
evaluates hooks on an instance that was never added to a cerebro (:func:`hook_instance`).
A value at bar ``t`` must depend on bars ``<= t`` only (``nts strategy check`` proves it).

User code is called only through :func:`call_hook` (hooks) and :func:`user_code` (the rest of
a user's class: ``__init__``, overridden methods run by backtrader): whatever it raises --
``sys.exit()`` included -- becomes one redacted :class:`UserCodeError` line naming the
strategy and the hook, never an "unexpected" crash and never a silent successful exit. The
outputs are checked too: one value per bar, a signal in [-1, 1], no NaN where the
probability is known (NaN would silently mean "flat").
"""
from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd

from core.errors import NtsError
from core.policy import Policy
from core.redact import redact


#: Column of the hooks' bars holding the barrier width of volatility-scaled barriers.
WIDTH_COLUMN = "barrier_width"


def hook_bars(bars: pd.DataFrame, width: np.ndarray | None, policy: Policy) -> pd.DataFrame:
    """The bars the hooks see: ``bars`` itself for fixed barriers, a copy with the column
    :data:`WIDTH_COLUMN` (one width per bar) for a volatility-scaled ``policy``."""
    if not policy.vol_scaled:
        return bars
    if width is None:
        raise ValueError("hooks of a volatility-scaled policy need the bars' barrier widths")
    return bars.assign(**{WIDTH_COLUMN: _input_array("width", width, len(bars))})


@dataclass(frozen=True)
class HookArrays:
    """The hooks' outputs over a span, one value per bar (float64 / bool arrays)."""

    prob: np.ndarray      # calibrated P(profit first), NaN where unknown (warm-up)
    signal: np.ndarray    # s in [-1, 1]
    weight: np.ndarray    # target weight of equity before the risk manager's caps (0 = no position)
    allowed: np.ndarray   # bool: a new entry may be opened on this bar

    def __len__(self) -> int:
        return len(self.prob)


class VectorHooks:
    """Mixin with the default vectorised hooks (see the module docstring)."""

    policy: Policy

    #: Trailing bars (the bar itself included) the hooks need to compute a bar's value exactly,
    #: freqtrade's ``startup_candle_count``: paper and live evaluate the hooks over that many
    #: bars only, so a bar costs the same after a week as after an hour. The defaults are
    #: per-bar rules (1). A class that overrides a hook declares its own (an int, or a property
    #: reading ``self.p``); one that does not gets None (:func:`declared_lookback`): the whole
    #: history on every bar, always right but slower with every bar. ``nts strategy check``
    #: verifies the number.
    hook_lookback: int | None = 1

    def signal(self, p: np.ndarray, bars: pd.DataFrame) -> np.ndarray:
        """s in [-1, 1] per bar from the calibrated probability ``p`` (0 = no edge; the centre
        per bar from ``bars['barrier_width']`` for a break-even, volatility-scaled policy)."""
        width = bars[WIDTH_COLUMN].to_numpy() if WIDTH_COLUMN in bars.columns else None
        return self.policy.signals(p, width)

    def entry_allowed(self, bars: pd.DataFrame) -> np.ndarray:
        """True on the bars where a new position may be opened."""
        return np.ones(len(bars), dtype=bool)

    def target_weight(self, s: np.ndarray, fvol: np.ndarray, bars: pd.DataFrame) -> np.ndarray:
        """Weight of equity to hold per bar from the signal and the annualised volatility
        forecast ``fvol`` (vol scaling, deadband, clip, max position, long-only on spot)."""
        return self.policy.target_weights(s, fvol)


def hook_instance(strategy_cls: type, policy: Policy, params: dict[str, Any] | None = None) -> Any:
    """An instance of ``strategy_cls`` on which the hooks can run outside backtrader.

    backtrader builds strategies through a metaclass that needs a running cerebro; the hooks
    need only ``policy`` and ``p``, so the object is made with ``__new__`` (``super()`` inside
    a user's hook still works: it is a real instance of the class).
    """
    obj = object.__new__(strategy_cls)
    p = strategy_cls.params() if hasattr(strategy_cls, "params") and callable(strategy_cls.params) else None
    for key, value in (params or {}).items():
        if p is not None and hasattr(p, key):
            setattr(p, key, value)
    obj.p = obj.params = p
    obj.policy = policy
    return obj



class UserCodeError(NtsError):
    """A user's strategy code failed or returned something unusable (its own one-line message,
    redacted: user text such as an exception message may hold a secret)."""


#: Packages whose code is nts's or its libraries' own: a failure inside them is not the user's.
OWN_PACKAGES = frozenset({"core", "models", "indicators", "strategies", "sweeps", "brokers", "sessions", "venues",
                          "server", "cli", "backtrader", "builtins", "abc"})


def is_own_class(klass: type) -> bool:
    """True when ``klass`` is nts's or one of its libraries' (not a user's class)."""
    return klass.__module__.split(".")[0] in OWN_PACKAGES


def strategy_label(strategy: Any) -> str:
    """The short name a message uses for a strategy class or instance (its class name)."""
    cls = strategy if isinstance(strategy, type) else type(strategy)
    return cls.__qualname__


def describe_failure(exc: BaseException) -> str:
    """``Type: first line of the message`` (redacted, at most 200 characters); ``sys.exit()``
    is named as such, since it is no failure message at all."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} at line {exc.lineno}"
    first = (str(exc).strip().splitlines() or [""])[0]
    return redact(f"{exc.__class__.__name__}: {first}")[:200]


def user_error(strategy: Any, what: str, exc: BaseException) -> UserCodeError:
    """The :class:`UserCodeError` for ``exc`` raised by ``what`` (e.g. ``hook signal()``) of
    ``strategy``."""
    return UserCodeError(f"strategy {strategy_label(strategy)}: {what} failed ({describe_failure(exc)})")


def user_files(strategy_cls: type) -> frozenset[str]:
    """Source files of the classes in ``strategy_cls``'s MRO that are the user's (outside nts
    and its libraries): a traceback through one of them is the user's failure."""
    files = set()
    for klass in strategy_cls.__mro__:
        if is_own_class(klass):
            continue
        try:
            source = inspect.getsourcefile(klass)
        except TypeError:
            source = None
        if source:
            files.add(str(Path(source).resolve()))
    return frozenset(files)


def _in_user_code(tb: TracebackType | None, files: frozenset[str]) -> str | None:
    """Name of the innermost user function the traceback passes through, or None."""
    name = None
    while tb is not None:
        code = tb.tb_frame.f_code
        if str(Path(code.co_filename).resolve()) in files:
            name = code.co_name
        tb = tb.tb_next
    return name


@contextmanager
def user_code(strategy_cls: type, what: str = "running") -> Iterator[None]:
    """Run an engine step that calls a user's strategy code (backtrader's run calls its
    ``__init__`` and overridden methods): an exception whose traceback passes through the
    user's file, and any ``sys.exit()``, becomes a :class:`UserCodeError`; nts's own
    refusals and failures elsewhere pass through unchanged."""
    try:
        yield
    except (NtsError, KeyboardInterrupt):
        raise
    except SystemExit as exc:
        raise UserCodeError(f"strategy {strategy_label(strategy_cls)}: called sys.exit({exc.code!r}) while {what}: "
                            "a strategy returns values or raises, it does not exit") from None
    except Exception as exc:  # noqa: BLE001 - attributed to the user only when their code raised it
        where = _in_user_code(exc.__traceback__, user_files(strategy_cls))
        if where is None:
            raise
        raise user_error(strategy_cls, f"{where}()", exc) from None


# The vectorised hooks and the arguments every engine passes them (after self).
HOOK_ARGS: dict[str, tuple[str, ...]] = {"signal": ("p", "bars"), "entry_allowed": ("bars",),
                                         "target_weight": ("s", "fvol", "bars")}


def _owner_index(mro: tuple[type, ...], name: str) -> int | None:
    return next((i for i, klass in enumerate(mro) if name in vars(klass)), None)


def declared_lookback(strategy: Any) -> int | None:
    """``strategy``'s ``hook_lookback`` (an instance: a property may read ``self.p``), or None
    when a class overrides a hook below the class that declared it (a user's subclass that
    overrides ``signal`` does not inherit its parent's lookback: its hook may look further
    back). A value that is not a whole number of bars >= 1 is one :class:`UserCodeError` line."""
    mro = type(strategy).__mro__
    declared_at = _owner_index(mro, "hook_lookback")
    hooks_at = [i for i in (_owner_index(mro, name) for name in HOOK_ARGS) if i is not None]
    if declared_at is None or (hooks_at and min(hooks_at) < declared_at):
        return None
    try:
        value = strategy.hook_lookback
    except (NtsError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - a user's property
        raise user_error(strategy, "hook_lookback", exc) from None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UserCodeError(f"strategy {strategy_label(strategy)}: hook_lookback is {value!r}: give the bars the hooks "
                            "look back as a whole number >= 1 (1: the bar itself), or None for the whole history")
    return int(value)


def hook_signature_problems(strategy_cls: type) -> list[str]:
    """One line per hook that ``strategy_cls`` (or a user's base of it) overrides with
    parameters the engines cannot call, e.g. the old scalar ``signal(self, p)``."""
    problems = []
    for name, args in HOOK_ARGS.items():
        owner = next((k for k in strategy_cls.__mro__ if name in vars(k)), None)
        if owner is None or owner.__module__ in ("strategies.base", "strategies.hooks"):
            continue
        try:
            inspect.signature(getattr(strategy_cls, name)).bind(None, *args)
        except TypeError:
            shown = ", ".join(("self", *args))
            problems.append(f"hook {name}() of {owner.__qualname__} takes {inspect.signature(getattr(owner, name))}; "
                            f"the engines call {name}({shown}) with arrays over the bars")
        except ValueError:
            continue  # no signature to read (a builtin): leave it to the call
    return problems


def engine_only_overrides(strategy_cls: type, base: type) -> list[str]:
    """Public methods of ``base`` (e.g. ``ModelStrategy``: ``next``, ``order_for``,
    ``make_probability``) that a user's class in ``strategy_cls``'s MRO overrides, other than
    the vectorised hooks: backtrader runs them, an engine that reads only the hooks (the
    sweep's compiled kernel) cannot, so such a strategy must not be swept as if it could."""
    found = []
    for klass in strategy_cls.__mro__:
        if is_own_class(klass):
            break
        for name, value in vars(klass).items():
            # functions only: backtrader's metaclass puts params/lines classes into every subclass
            if (not name.startswith("_") and name not in HOOK_ARGS and inspect.isfunction(value)
                    and callable(getattr(base, name, None)) and name not in found):
                found.append(name)
    return found


def call_hook(strategy: Any, name: str, *args: Any) -> Any:
    """Call hook ``name`` of ``strategy`` with ``args``: the one safe call path for hooks."""
    try:
        return getattr(strategy, name)(*args)
    except (NtsError, KeyboardInterrupt):
        raise
    except BaseException as exc:  # noqa: BLE001 - user code: SystemExit and every failure are the user's
        raise user_error(strategy, f"hook {name}()", exc) from None


def _first_time(bars: pd.DataFrame, mask: np.ndarray) -> str:
    i = int(np.flatnonzero(mask)[0])
    return f"bar {i} ({bars.index[i]})" if isinstance(bars.index, pd.DatetimeIndex) else f"bar {i}"


def checked_array(strategy: Any, name: str, value: Any, bars: pd.DataFrame, kind: str,
                  known: np.ndarray | None = None) -> np.ndarray:
    """``value`` returned by hook ``name`` as a contiguous float64 (``kind="float"``) or bool
    array of one value per bar; refused with one :class:`UserCodeError` line when it has
    another shape, holds no numbers, holds NaN (floats: on a bar where ``known`` is True; bool
    hooks: anywhere, NaN would read as True) or infinities. Runs on every bar of a session,
    so the common cases (a bool array; floats all finite) return after one test."""
    n = len(bars)
    try:
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"dtype {arr.dtype}")
        if arr.dtype.kind == "b" and kind == "bool" and arr.shape == (n,):
            return arr.copy()  # a bool array holds no NaN
        arr = arr.astype("float64")
    except (TypeError, ValueError) as exc:
        raise UserCodeError(f"{_label(strategy, name)} returned {type(value).__name__} ({exc}), expected numbers, "
                            "one per bar") from None
    if arr.shape != (n,):
        raise UserCodeError(f"{_label(strategy, name)} returned shape {arr.shape}, expected ({n},): one value per bar")
    if kind == "float" and np.isfinite(arr).all():
        return arr  # no NaN, no infinity (astype made it a contiguous copy)
    nan = np.isnan(arr)
    if kind == "bool":
        if nan.any():
            raise UserCodeError(f"{_label(strategy, name)} returned NaN on {int(nan.sum())} bars (first "
                                f"{_first_time(bars, nan)}): return True/False per bar")
        return np.ascontiguousarray(arr != 0.0)
    bad = nan & (known if known is not None else True)
    if bad.any():
        raise UserCodeError(f"{_label(strategy, name)} returned NaN on {int(bad.sum())} bars where the probability "
                            f"is known (first {_first_time(bars, bad)}): return 0 for no position, NaN is not "
                            "silently flat")
    inf = np.isinf(arr)
    if inf.any():
        raise UserCodeError(f"{_label(strategy, name)} returned an infinity on {int(inf.sum())} bars (first "
                            f"{_first_time(bars, inf)})")
    return np.ascontiguousarray(arr)


def _label(strategy: Any, name: str) -> str:
    return f"strategy {strategy_label(strategy)}: hook {name}()"


def _input_array(name: str, value: Any, n: int) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(value, dtype="float64"))
    if arr.shape != (n,):
        raise ValueError(f"{name}: shape {arr.shape}, expected ({n},): one value per bar")
    return arr


def signal_array(strategy: Any, p: np.ndarray, bars: pd.DataFrame) -> np.ndarray:
    """Hook ``signal`` through the safe path, checked: NaN where P is known and values outside
    [-1, 1] are refused."""
    s = checked_array(strategy, "signal", call_hook(strategy, "signal", p, bars), bars, "float", known=~np.isnan(p))
    out = np.abs(s) > 1.0 + 1e-12  # NaN compares False (allowed where P is unknown); infinities are refused above
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise UserCodeError(f"strategy {strategy_label(strategy)}: hook signal() returned {s[i]:g} on "
                            f"{_first_time(bars, out)}: a signal lies in [-1, 1]")
    return s


def allowed_array(strategy: Any, bars: pd.DataFrame) -> np.ndarray:
    """Hook ``entry_allowed`` through the safe path, checked."""
    return checked_array(strategy, "entry_allowed", call_hook(strategy, "entry_allowed", bars), bars, "bool")


def weight_array(strategy: Any, s: np.ndarray, fvol: np.ndarray, bars: pd.DataFrame,
                 known: np.ndarray) -> np.ndarray:
    """Hook ``target_weight`` through the safe path, checked (no NaN where P is ``known``)."""
    return checked_array(strategy, "target_weight", call_hook(strategy, "target_weight", s, fvol, bars), bars,
                         "float", known=known)


def evaluate_hooks(strategy: Any, bars: pd.DataFrame, prob: np.ndarray, fvol: np.ndarray,
                   width: np.ndarray | None = None) -> HookArrays:
    """Run ``strategy``'s hooks over ``bars`` (an instance with ``policy`` and ``p``: a running
    backtrader strategy or :func:`hook_instance`); ``prob``, ``fvol`` and ``width`` (the barrier
    widths, needed for a volatility-scaled policy only) are per-bar arrays aligned with
    ``bars``. Returns the arrays every engine's decision step reads. Every hook goes through
    :func:`call_hook` and its output is checked (:func:`checked_array`): a failing hook or an
    unusable value is one :class:`UserCodeError` line."""
    n = len(bars)
    bars = hook_bars(bars, width, strategy.policy)
    p = _input_array("prob", prob, n)
    fv = _input_array("fvol", fvol, n)
    s = signal_array(strategy, p, bars)
    allowed = allowed_array(strategy, bars)
    w = weight_array(strategy, s, fv, bars, known=~np.isnan(p))
    return HookArrays(prob=p, signal=s, weight=w, allowed=allowed)
