"""The barrier trade's outcome per P bin (models.expectancy)."""
import math

import numpy as np
import pytest

from models.expectancy import outcome_by_probability, to_markdown


def test_bins_count_every_finite_bar_once_and_average_its_returns():
    p = np.array([0.05, 0.15, 0.15, 0.45, 0.55, 1.0, np.nan])
    label = np.array([0, 1, 0, 1, 1, 0, 1], dtype=float)
    gross = np.array([-0.004, 0.008, -0.004, 0.008, 0.008, 0.001, 0.008])
    rows = outcome_by_probability(p, label, gross, round_trip_cost=0.002)
    assert [r["n"] for r in rows] == [1, 2, 0, 0, 1, 2]  # NaN P dropped; P == 1 in the last bin
    second = rows[1]
    assert second["hit_rate"] == pytest.approx(0.5)
    assert second["mean_gross"] == pytest.approx(0.002)
    assert second["mean_net"] == pytest.approx(0.0)
    assert second["se_net"] == pytest.approx(np.std([0.006, -0.006], ddof=1) / math.sqrt(2))
    last = rows[-1]
    assert last["mean_net"] == pytest.approx((0.006 - 0.001) / 2)
    assert last["share_net_positive"] == pytest.approx(0.5)
    assert math.isnan(rows[2]["mean_p"])
    text = to_markdown(rows, 0.002)
    assert "| 0.10-0.20 | 2 |" in text and "0.20% round trip" in text
    assert "| 0.20-0.30 | 0 | | | | | | |" in text and "+nan%" not in text  # empty bins: blank cells


def test_lengths_must_agree():
    with pytest.raises(ValueError, match="differ in length"):
        outcome_by_probability(np.zeros(3), np.zeros(2), np.zeros(3), 0.0)
