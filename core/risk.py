"""One risk manager for backtest, paper and live: position caps, circuit breakers, kill switch.

Units (stated once, used everywhere):

* ``equity`` and ``position_value`` are in quote currency (USDT); a position's weight is
  ``position_value / equity`` (negative for shorts).
* **Drawdown** = ``1 - equity / peak_equity`` where the peak is the highest equity seen by
  this manager. Above ``risk.max_drawdown`` (0.20): halt and flatten, for the rest of the
  session (a human decides when to resume: :meth:`RiskManager.reset`).
* **Volatility** = realised *daily* volatility of the traded market: the sample standard
  deviation (ddof=1) of the last ``risk.vol_window_bars`` (96) one-bar log returns of the
  close, times ``sqrt(bars per day)`` (``sqrt(96)`` for 15m bars) -- see
  :func:`realised_daily_vol`. Above ``risk.max_volatility`` (0.10 = 10% per day): no new
  positions while it stays above (open positions keep their exits); the trip is recorded
  when it crosses above.
* **Daily loss** = ``1 - equity / equity at the first check of the UTC day``. Above
  ``risk.daily_loss`` (0.05): halt and flatten until the next UTC day.
* **Kill switch**: while the file ``risk.kill_switch_file`` exists, flatten and stop the
  session (``Decision.stop``).
* **Leverage**: ``|position_value| / equity`` above ``risk.max_leverage`` -> ``reduce``
  down to ``max_position``; new weights are capped by :meth:`RiskManager.cap_weight`.

Every trip is recorded once per episode in :attr:`RiskManager.trips` (time, breaker,
reason, values) and exported with the backtest results.
"""
from __future__ import annotations

import datetime as _dt
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from core.config import RiskConfig
from core.ohlcv import segment_ids
from core.timeframes import bars_per_day

Action = Literal["allow", "reduce", "halt"]


@dataclass(frozen=True)
class Decision:
    """What the caller may do now.

    ``action``: ``allow`` (trade normally), ``reduce`` (cut exposure to ``max_weight``),
    ``halt`` (no new positions). ``flatten``: close what is open now. ``stop``: end the
    session (kill switch). ``max_weight``: cap on ``|weight|`` for new positions.
    """

    action: Action
    reason: str = ""
    flatten: bool = False
    stop: bool = False
    max_weight: float = 1.0

    @property
    def allow(self) -> bool:
        """True when new positions may be opened."""
        return self.action == "allow"


@dataclass
class Trip:
    """One circuit-breaker trip: when, which breaker, why, and the numbers behind it."""

    time: str
    breaker: str
    reason: str
    values: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def realised_daily_vol(close: np.ndarray | pd.Series, window: int = 96, timeframe: str = "15m",
                       index: pd.DatetimeIndex | None = None) -> np.ndarray:
    """Realised daily volatility per bar (see module docstring): rolling sample std of
    ``window`` one-bar log returns, times ``sqrt(bars_per_day)``. NaN until ``window``
    returns exist. The single definition used by the backtest indicator and live sessions.

    With ``index`` (bar open times) a return across a data gap is not a return: it is NaN,
    and the window restarts after the gap, as the features do. Without it every step is
    taken as one bar."""
    c = np.asarray(close, dtype="float64")
    r = np.r_[np.nan, np.diff(np.log(c))] if len(c) else np.zeros(0)
    if index is not None and len(c) > 1:
        r[1:][np.diff(segment_ids(pd.DatetimeIndex(index), timeframe)) != 0] = np.nan
    std = pd.Series(r).rolling(window, min_periods=window).std(ddof=1).to_numpy()
    return std * math.sqrt(bars_per_day(timeframe))


def _as_utc(now: Any) -> _dt.datetime:
    if isinstance(now, pd.Timestamp):
        now = now.to_pydatetime()
    if isinstance(now, (int, float, np.integer, np.floating)):
        return _dt.datetime.fromtimestamp(float(now), tz=_dt.timezone.utc).replace(tzinfo=None)
    if now.tzinfo is not None:  # naive datetimes are taken as UTC (backtrader's convention)
        now = now.astimezone(_dt.timezone.utc).replace(tzinfo=None)
    return now


class RiskManager:
    """Circuit breakers and caps of ``cfg.risk``; one instance per session (see module docs).

    Call :meth:`check` once per bar (or per decision) with the current time, equity,
    signed position value and realised daily volatility; obey the returned Decision.
    """

    def __init__(self, cfg: RiskConfig | None = None, kill_switch_file: str | os.PathLike | None = None) -> None:
        self.cfg = cfg if cfg is not None else RiskConfig()
        path = kill_switch_file if kill_switch_file is not None else self.cfg.kill_switch_file
        self.kill_switch_file = os.fspath(path) if path else None
        self.trips: list[Trip] = []
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Clear every breaker and the equity peak (keeps the trip history)."""
        self.peak: float = -math.inf
        self.day: int | None = None
        self.day_start_equity: float = math.nan
        self.drawdown_halted = False
        self.daily_halted = False
        self.vol_active = False
        self.killed = False

    def state_dict(self) -> dict[str, Any]:
        """Serialisable state (journaled by paper/live sessions so a restart keeps the halts)."""
        return {
            "peak": self.peak, "day": self.day, "day_start_equity": self.day_start_equity,
            "drawdown_halted": self.drawdown_halted, "daily_halted": self.daily_halted,
            "vol_active": self.vol_active, "killed": self.killed,
            "trips": [t.to_dict() for t in self.trips],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        for key in ("peak", "day", "day_start_equity", "drawdown_halted", "daily_halted", "vol_active", "killed"):
            setattr(self, key, state[key])
        self.trips = [Trip(**t) for t in state.get("trips", [])]

    # ------------------------------------------------------------------ rules
    @property
    def weight_cap(self) -> float:
        """Largest allowed ``|weight|`` of a new position: min(max_position, max_leverage)."""
        return min(self.cfg.max_position, self.cfg.max_leverage)

    def cap_weight(self, weight: float) -> float:
        """Clip a target weight to +-:attr:`weight_cap`."""
        cap = self.weight_cap
        return max(-cap, min(cap, weight))

    def kill_switch_on(self) -> bool:
        """True while the kill-switch file exists."""
        return bool(self.kill_switch_file) and os.path.exists(self.kill_switch_file)

    def _trip(self, now: _dt.datetime, breaker: str, reason: str, **values: float) -> None:
        self.trips.append(Trip(time=now.isoformat(), breaker=breaker, reason=reason,
                               values={k: float(v) for k, v in values.items()}))

    def check(self, now: Any, equity: float, position_value: float, realised_vol: float) -> Decision:
        """Update the breakers with the current state and return what is allowed now.

        ``now``: datetime (naive = UTC), pandas Timestamp or epoch seconds; ``equity``:
        account value incl. open positions; ``position_value``: signed value of the open
        position; ``realised_vol``: realised daily volatility (NaN = unknown, no vol check).
        """
        t = _as_utc(now)
        c = self.cfg
        cap = self.weight_cap

        if not self.killed and self.kill_switch_on():
            self.killed = True
            self._trip(t, "kill_switch", f"kill-switch file {self.kill_switch_file} present",
                       equity=equity, position_value=position_value)

        # Drawdown from the equity peak: permanent halt.
        if equity > self.peak:
            self.peak = equity
        drawdown = 1.0 - equity / self.peak if self.peak > 0 else 0.0
        if not self.drawdown_halted and drawdown > c.max_drawdown:
            self.drawdown_halted = True
            self._trip(t, "drawdown", f"drawdown {drawdown:.2%} from peak {self.peak:.2f} > {c.max_drawdown:.2%}",
                       drawdown=drawdown, peak=self.peak, equity=equity)

        # Daily loss against the first equity of the UTC day: halt until the day changes.
        day = t.toordinal()
        if day != self.day:
            self.day = day
            self.day_start_equity = equity
            self.daily_halted = False
        day_loss = 1.0 - equity / self.day_start_equity if self.day_start_equity > 0 else 0.0
        if not self.daily_halted and day_loss > c.daily_loss:
            self.daily_halted = True
            self._trip(t, "daily_loss",
                       f"daily loss {day_loss:.2%} of day-start equity {self.day_start_equity:.2f} > {c.daily_loss:.2%}",
                       daily_loss=day_loss, day_start_equity=self.day_start_equity, equity=equity)

        # Realised daily volatility: no new positions while above the limit.
        vol_high = realised_vol == realised_vol and realised_vol > c.max_volatility  # NaN-safe
        if vol_high and not self.vol_active:
            self._trip(t, "volatility",
                       f"realised daily volatility {realised_vol:.2%} > {c.max_volatility:.2%}",
                       realised_vol=realised_vol)
        self.vol_active = vol_high

        if self.killed:
            return Decision("halt", "kill switch", flatten=True, stop=True, max_weight=0.0)
        if self.drawdown_halted:
            return Decision("halt", "drawdown breaker", flatten=True, max_weight=0.0)
        if self.daily_halted:
            return Decision("halt", "daily loss breaker", flatten=True, max_weight=0.0)
        if equity <= 0:
            return Decision("halt", "no equity", flatten=True, max_weight=0.0)
        if vol_high:
            return Decision("halt", "volatility breaker", max_weight=0.0)
        if abs(position_value) / equity > c.max_leverage + 1e-9:
            return Decision("reduce", f"leverage {abs(position_value) / equity:.3f} > {c.max_leverage}",
                            max_weight=cap)
        return Decision("allow", max_weight=cap)

    def trips_frame(self) -> pd.DataFrame:
        """Trips as a table (columns time, breaker, reason, values)."""
        return pd.DataFrame([t.to_dict() for t in self.trips], columns=["time", "breaker", "reason", "values"])
