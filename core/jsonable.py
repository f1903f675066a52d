"""Plain-JSON form of results: one converter for every JSON file nts writes from numbers."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def jsonable(x: Any) -> Any:
    """``x`` with numpy scalars/arrays, tuples and timestamps turned into JSON types; NaN and
    infinities become ``None`` (JSON has no such numbers); dict keys become strings."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, pd.Timestamp):
        return str(x)
    return x
