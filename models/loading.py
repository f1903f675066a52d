"""The one way engines get a model bundle: :func:`as_bundle` (a loaded bundle or a path).

It lives in ``models`` (not in ``indicators``) because backtest, sweep, paper, live and the
run specification (:mod:`strategies.runspec`) all load bundles; the indicator is one user.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from core.errors import BundleError
from models.schedule import load_model


def as_bundle(bundle: Any) -> Any:
    """A loaded model from a bundle, ensemble or schedule object, or from a bundle, ensemble or
    walk-forward schedule directory or a ``final_model.pt`` (:func:`models.schedule.load_model`);
    None is refused with one line."""
    if isinstance(bundle, (str, Path)):
        return load_model(bundle)
    if bundle is None:
        raise BundleError("a model bundle is needed (give --model, or the strategy's 'bundle' param)")
    return bundle
