"""What the server scores with, built once: the run specification, the risk cap, the warm-up.

:func:`build_setup` builds the server's :class:`strategies.runspec.RunSpec` -- the one run
setup ``nts backtest``, ``nts sweep``, ``nts paper`` and ``nts live`` read -- for the ``tcn``
strategy, without bars (as paper/live do), and takes from it the bundle, the traded policy
(config, bundle barriers, costs), the one warm-up and the strategy's hooks. Nothing about the
decision is built here a second time.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import Config
from core.policy import Policy
from core.risk import RiskManager
from strategies.runspec import RunSpec

#: the strategy whose decision the inference API answers with (the default of nts backtest)
SERVED_STRATEGY = "tcn"


@dataclass(frozen=True)
class ServeSetup:
    """Everything the inference routes need, resolved once at start (see module docstring)."""

    spec: RunSpec          # the one run setup (policy, bundle, warm-up, strategy class)
    risk: RiskManager      # only its weight cap is used: breakers are session state
    barriers: str          # "bundle" or "config"
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


def build_setup(cfg: Config, model: str | Path | Any, barriers: str = "bundle") -> ServeSetup:
    """Build the server's RunSpec (``RunSpec.build(cfg, model=..., strategy="tcn",
    barriers=...)``, no bars) and the risk cap the strategy gets from it
    (:meth:`RunSpec.strategy_params`)."""
    spec = RunSpec.build(cfg, model=model, strategy=SERVED_STRATEGY, barriers=barriers)
    params = spec.strategy_params(prob_cache=False)
    return ServeSetup(spec=spec, risk=params["risk"], barriers=barriers)
