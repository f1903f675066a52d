"""What the server scores with, built once: the run specification, the risk cap, the warm-up.

:func:`build_setup` builds the server's :class:`strategies.runspec.RunSpec` -- the one run
setup ``nts backtest``, ``nts sweep``, ``nts paper`` and ``nts live`` read -- for the ``tcn``
strategy (``tcn`` unless ``nts serve --strategy`` names another), without bars (as
paper/live do), and takes from it the bundle, the traded policy (config, bundle barriers,
costs), the one warm-up, the strategy's hooks and their declared lookback
(:func:`strategies.hooks.declared_lookback`). Nothing about the decision is built here a
second time.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import Config
from core.errors import DataError
from core.policy import Policy
from core.risk import RiskManager
from strategies.base import primes_history
from strategies.hooks import HOOK_ARGS, declared_lookback, strategy_label
from strategies.runspec import RunSpec
from strategies.tcn import TCNStrategy

#: the strategy whose decision the inference API answers with (the default of nts backtest)
SERVED_STRATEGY = "tcn"


@dataclass(frozen=True)
class ServeSetup:
    """Everything the inference routes need, resolved once at start (see module docstring)."""

    spec: RunSpec          # the one run setup (policy, bundle, warm-up, strategy class)
    risk: RiskManager      # only its weight cap is used: breakers are session state
    barriers: str          # "bundle" or "config"
    lookback: int | None = 1  # the strategy's declared hook_lookback (None: overrides a hook, declares none)
    refusal: str | None = None  # why the inference routes cannot answer for this strategy (None: they can)
    _hooks: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)  # policy -> hook instance

    @property
    def cfg(self) -> Config:
        """The run's configuration."""
        return self.spec.cfg

    @property
    def bundle(self) -> Any:
        """The loaded model bundle (:class:`models.bundle.ModelBundle` or a drop-in)."""
        return self.spec.bundle

    @property
    def policy(self) -> Policy:
        """The policy nts backtest trades with this config and bundle."""
        return self.spec.policy

    @property
    def warmup_bars(self) -> int:
        """The one warm-up: bars every request must carry at least."""
        return int(self.spec.warmup)

    @property
    def strategy(self) -> str:
        """The served strategy's class name (named by refusals)."""
        return strategy_label(self.spec.strategy_cls)

    @property
    def min_bars(self) -> int:
        """Bars a request must carry: the warm-up, plus the ``lookback - 1`` bars before the
        scored one that the hooks read (each with a full warm-up of its own, so that its P is
        the backtest's). DataError (:attr:`refusal`, one line) when the server cannot answer
        for the strategy at all."""
        if self.refusal is not None or self.lookback is None:
            raise DataError(self.refusal or f"strategy {self.strategy} declares no hook_lookback")
        return self.warmup_bars + self.lookback - 1

    def overridden_hooks(self) -> list[str]:
        """The vectorised hooks the served class (or a user's base of it) overrides."""
        return overridden_hooks(self.spec.strategy_cls)

    @property
    def timeframe(self) -> str:
        """Bar length of the bundle, e.g. ``15m``."""
        return str(self.bundle.timeframe)

    @property
    def model_id(self) -> str:
        """``<bundle folder>@<first 12 hex digits of the weights' sha256>``."""
        path = getattr(self.bundle, "path", None)
        name = Path(path).name if path else "bundle"
        return f"{name}@{str(self.bundle.meta.get('weights_sha256', ''))[:12]}"

    def hooks(self, policy: Policy | None = None) -> Any:
        """An instance of the served strategy on which its vectorised hooks run
        (:meth:`RunSpec.hooks`, as the sweep uses), with ``policy`` (a request's overrides
        applied) instead of the spec's when given."""
        policy = self.spec.policy if policy is None else policy
        found = self._hooks.get(policy)
        if found is None:  # one instance per policy: building one costs more than the hooks' work on a bar
            spec = self.spec if policy is self.spec.policy else dataclasses.replace(self.spec, policy=policy)
            found = spec.hooks()
            if len(self._hooks) >= 64:
                self._hooks.clear()
            self._hooks[policy] = found
        return found


def build_setup(cfg: Config, model: str | Path | Any, barriers: str = "bundle",
                strategy: Any = SERVED_STRATEGY) -> ServeSetup:
    """Build the server's RunSpec (``RunSpec.build(cfg, model=..., strategy=strategy,
    barriers=...)``, no bars), the risk cap the strategy gets from it
    (:meth:`RunSpec.strategy_params`), its hooks' declared lookback and -- when the inference
    routes cannot give its backtest's answer -- why (:func:`serving_refusal`)."""
    spec = RunSpec.build(cfg, model=model, strategy=strategy, barriers=barriers)
    params = spec.strategy_params(prob_cache=False)
    hooks = spec.hooks()
    lookback = declared_lookback(hooks)
    return ServeSetup(spec=spec, risk=params["risk"], barriers=barriers, lookback=lookback,
                      refusal=serving_refusal(spec.strategy_cls, lookback, overridden_hooks(spec.strategy_cls)))


def overridden_hooks(strategy_cls: type) -> list[str]:
    """The vectorised hooks ``strategy_cls`` (or a base of it below nts's own) overrides."""
    own = ("strategies.base", "strategies.hooks")
    return [name for name in HOOK_ARGS if next(k for k in strategy_cls.__mro__ if name in vars(k)).__module__ not in own]


def serving_refusal(strategy_cls: type, lookback: int | None, overridden: list[str]) -> str | None:
    """Why the server cannot answer per request what the backtest decides with
    ``strategy_cls`` (one line), or None: a decision that is not the TCN's P through the
    vectorised hooks (another probability, its own ``__init__`` or ``next``), or hooks that
    may read the whole history (overridden without a declared ``hook_lookback``)."""
    name = strategy_label(strategy_cls)
    if not (issubclass(strategy_cls, TCNStrategy) and primes_history(strategy_cls)):
        return (f"strategy {name}: the server answers with the bundle's TCN probability and the strategy's "
                "vectorised hooks only; serve a TCNStrategy subclass that overrides signal / entry_allowed / "
                "target_weight (no __init__, next or probability of its own)")
    if lookback is None:
        return (f"strategy {name} overrides the hook(s) {', '.join(overridden) or '?'} without declaring "
                "hook_lookback, so its decision on a bar may depend on the whole history before it, which no request "
                "carries: the server cannot give the backtest's answer; declare hook_lookback in the class "
                "(nts strategy check verifies it)")
    return None
