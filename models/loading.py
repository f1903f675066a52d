"""The one way engines get a model: :func:`as_bundle` (a loaded model or a path), and
:func:`with_run_calibration` (the run config's ``calibration`` section at trade time).

It lives in ``models`` (not in ``indicators``) because backtest, sweep, paper, live and the
run specification (:mod:`strategies.runspec`) all load bundles; the indicator is one user.

Calibration at trade time. A model is scored as it was trained (``calibration`` of its
training config) unless the RUN config asks for ``calibration.mode: rolling``: then causal
rolling Platt recalibration (:mod:`models.recalibration`, with the run's ``window_bars``,
``refit_bars``, ``min_samples``) goes on top of the bundle, seed ensemble or every fold of a
schedule -- the same wrapper, the same streaming == batch guarantee as a model trained in
rolling mode. ``mode: static`` in the run config (the default) keeps the model's own
calibration: it cannot tell a default from a request, so it never turns a rolling-trained
model static (``models.schedule_report`` compares both explicitly).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from core.config import CalibrationConfig
from core.errors import BundleError, ConfigError
from models.recalibration import RollingCalibrated
from models.schedule import ModelSchedule, load_model


def as_bundle(bundle: Any) -> Any:
    """A loaded model from a bundle, ensemble or schedule object, or from a bundle, ensemble or
    walk-forward schedule directory or a ``final_model.pt`` (:func:`models.schedule.load_model`);
    None is refused with one line."""
    if isinstance(bundle, (str, Path)):
        return load_model(bundle)
    if bundle is None:
        raise BundleError("a model bundle is needed (give --model, or the strategy's 'bundle' param)")
    return bundle


def with_run_calibration(model: Any, ccfg: CalibrationConfig) -> Any:
    """``model`` scored with the run's calibration (module docstring): unchanged unless
    ``ccfg.mode`` is rolling; then rolling recalibration with ``ccfg`` on top of it."""
    if ccfg.mode != "rolling":
        return model
    if isinstance(model, ModelSchedule):
        return model if model.ccfg == ccfg else ModelSchedule(model.path, ccfg)
    if isinstance(model, RollingCalibrated):
        if model.ccfg == ccfg:
            return model
        model = model.inner
    if (model.meta.get("model") or {}).get("context") == "sequence":
        raise ConfigError("calibration.mode=rolling: not available for a model.context=sequence bundle (its "
                          "streaming scorer calibrates statically); leave calibration.mode static for this model")
    return RollingCalibrated(model, ccfg)
