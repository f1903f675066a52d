"""TCNStrategy: ModelStrategy with the bundle's TCN + calibrator as its probability line."""
from __future__ import annotations

from indicators.tcn_indicator import TCNProbability
from strategies.base import ModelStrategy


class TCNStrategy(ModelStrategy):
    """Trades the calibrated TCN probability of the model bundle in param ``bundle``
    (a loaded bundle, a bundle directory or its ``final_model.pt``); ``prob_cache`` is the
    probability cache folder for backtests (None = always score)."""

    params = (("bundle", None), ("prob_cache", None))
    primable = True  # TCNProbability, VolForecast and RealisedVol take param ``history``

    def make_probability(self):
        """The ``prob`` line of :class:`indicators.tcn_indicator.TCNProbability`."""
        self.tcn = TCNProbability(self.data, bundle=self.p.bundle, cache=self.p.prob_cache, history=self.p.history)
        return self.tcn.prob

    def history_probability(self):
        """P over the primed ``history`` bars (the batch path, :meth:`TCNProbability.history_prob`)."""
        return self.tcn.history_prob()
