"""Baseline: logistic regression on the 12 features of the last bar of each window.

Trained on exactly the TCN's training samples, with the same train-span normalisation,
and scored on the same validation and test samples, so the two are always comparable.
Its decision function is a logit, calibrated the same way as the TCN's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.dataset import Normaliser


@dataclass
class LogisticBaseline:
    """Fitted coefficients over normalised last-bar features (JSON-able via :meth:`to_dict`)."""

    coef: np.ndarray
    intercept: float

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, ends: np.ndarray, normaliser: Normaliser,
            seed: int = 0) -> "LogisticBaseline":
        """Fit on the last-bar features of the samples ``ends`` (unweighted, L2 C=1)."""
        from sklearn.linear_model import LogisticRegression

        x = normaliser.transform(features[ends]).astype(np.float64)
        lr = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
        lr.fit(x, labels[ends].astype(int))
        return cls(coef=lr.coef_[0].astype(np.float64), intercept=float(lr.intercept_[0]))

    def logits(self, features: np.ndarray, ends: np.ndarray, normaliser: Normaliser) -> np.ndarray:
        """Decision-function logits for the samples ``ends``."""
        x = normaliser.transform(features[ends]).astype(np.float64)
        return x @ self.coef + self.intercept

    def to_dict(self) -> dict:
        """JSON-able coefficients."""
        return {"coef": [float(v) for v in self.coef], "intercept": self.intercept}
