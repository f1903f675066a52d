"""Calibrators that turn a network logit into P(profit barrier first).

* ``platt`` (default): scikit-learn ``LogisticRegression`` on the single logit feature,
  ``p = sigmoid(a * z + b)``; two numbers stored in the bundle.
* ``isotonic``: scikit-learn ``IsotonicRegression`` on ``sigmoid(z)``; its breakpoints are
  stored and applied with linear interpolation (exactly what scikit-learn's ``predict`` does
  with ``out_of_bounds="clip"``).

Both are fitted on the validation span only (data the network did not train on). It is the
same validation span whose loss drives early stopping (``models.train``), so validation
metrics of the calibrated model are optimistic; the test span is never used for fitting.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.errors import BundleError, DataError


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function (float64)."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


@dataclass
class Calibrator:
    """A fitted calibrator; ``kind`` is ``platt`` or ``isotonic``; ``params`` is JSON-able."""

    kind: str
    params: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, logits: np.ndarray, labels: np.ndarray, kind: str = "platt") -> "Calibrator":
        """Fit on (logit, 0/1 label) pairs of the validation span."""
        z = np.asarray(logits, dtype=np.float64).ravel()
        y = np.asarray(labels, dtype=np.float64).ravel()
        if len(z) != len(y) or len(z) == 0:
            raise ValueError("calibration needs equally many logits and labels (and at least one)")
        if len(np.unique(y)) < 2:
            raise DataError(f"the validation span's {len(y)} labels are all {y[0]:.0f}: a calibrator needs both "
                            f"classes (use more data or a larger training.val_fraction)")
        if kind == "platt":
            from sklearn.linear_model import LogisticRegression

            # C large: plain maximum likelihood, as Platt scaling intends
            lr = LogisticRegression(C=1e6, solver="lbfgs", max_iter=1000)
            lr.fit(z.reshape(-1, 1), y.astype(int))
            return cls("platt", {"a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])})
        if kind == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
            iso.fit(sigmoid(z), y)
            return cls("isotonic", {"x": [float(v) for v in iso.X_thresholds_],
                                    "y": [float(v) for v in iso.y_thresholds_]})
        raise ValueError(f"unknown calibration {kind!r} (expected platt or isotonic)")

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (float64) for logits; NaN stays NaN."""
        z = np.asarray(logits, dtype=np.float64)
        if self.kind == "platt":
            return sigmoid(self.params["a"] * z + self.params["b"])
        if self.kind == "isotonic":
            out = np.interp(sigmoid(z), self.params["x"], self.params["y"])
            return np.where(np.isnan(z), np.nan, out)
        raise BundleError(f"unknown calibrator kind {self.kind!r}")

    def to_dict(self) -> dict:
        """JSON-able form stored in bundle.json."""
        return {"kind": self.kind, "params": self.params}

    @classmethod
    def from_dict(cls, d: dict) -> "Calibrator":
        """Inverse of :meth:`to_dict`; refuses unknown kinds."""
        if not isinstance(d, dict) or d.get("kind") not in ("platt", "isotonic"):
            raise BundleError(f"bundle.json: unknown calibrator {d!r:.80}")
        return cls(kind=d["kind"], params=dict(d.get("params", {})))
