"""The harness the live fault tests share (tests/test_protection.py, tests/test_bans.py).

One live session of tests/test_live.py's harness (the real ccxt.binance client, the replay
exchange, a manual clock) with faults injected before it starts; after it, the journal and
the exchange must agree (no lost or doubled order or fill). The fixtures of test_live are
re-exported so that a test module imports them from here (pytest finds fixtures by name in
the test module).
"""
from __future__ import annotations

from typing import Any, Callable

import pandas as pd

from test_live import (  # noqa: F401  (fixtures and helpers, re-exported)
    KEY,
    KEY_ENV,
    SECRET,
    SECRET_ENV,
    _keys,
    assert_consistent,
    calm_frame,
    make_cfg,
    ms,
    run_live,
    venue,
    view,
    warm,
)


def fault_session(tmp_path, fast_bundle, warm: int, faults: Callable[[Any], None], *, bars: int = 40,
                  frame: pd.DataFrame | None = None, cfg=None, db: str = "p.db",
                  watch: Callable[[Any, Any], None] | None = None, all_fire: bool = True):
    """Run ``bars`` live bars (from the 5th after the warm-up) of ``frame`` (default: calm
    bars) on a replay exchange that ``faults(ex)`` prepared; ``watch(ex, bar)`` runs after
    every bar. Checks that every injected fault fired (unless ``all_fire`` is off) and that
    journal and exchange agree. Returns the session result, the journal's view and the
    (stopped) exchange, whose request log stays readable."""
    cfg = cfg if cfg is not None else make_cfg(tmp_path)
    frame = frame if frame is not None else calm_frame(warm, bars + 20)
    s, e = frame.index[warm + 5], frame.index[warm + 5 + bars]
    with venue(frame, s + pd.Timedelta("1min")) as ex:
        faults(ex)
        res = run_live(fast_bundle, cfg, tmp_path / db, ex, stop_ms=ms(e),
                       watch=None if watch is None else (lambda bar: watch(ex, bar)))
        if all_fire:
            assert not ex.faults, "every injected fault fired"
        assert_consistent(ex, tmp_path / db)
    return res, view(tmp_path / db), ex
