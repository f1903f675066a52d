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

The breaker logic itself is :func:`risk_step`, a numba-compiled function over a small state
array (:data:`RISK_STATE` names its slots): :meth:`RiskManager.check` calls it from Python and
the reference simulator (:mod:`core.simulator`) calls it inside its kernel, so both engines
trip on exactly the same numbers. Only the kill-switch *file* check stays in Python (the
kernel takes the bar from which the switch is on).
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
from core.jit import kernel
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
    reason_code: int = 0   # the reason as a REASONS code (the decision step's vocabulary)

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
    r = np.empty(len(c))
    if len(c):  # r[0] = NaN, r[1:] = diff(log c): same numbers as np.r_[nan, diff] without its ~6 us a call
        log_c = np.log(c)
        r[0] = np.nan
        np.subtract(log_c[1:], log_c[:-1], out=r[1:])
    if index is not None and len(c) > 1:
        r[1:][np.diff(segment_ids(pd.DatetimeIndex(index), timeframe)) != 0] = np.nan
    return _window_std(r, int(window)) * math.sqrt(bars_per_day(timeframe))


@kernel
def _window_std(r: np.ndarray, window: int) -> np.ndarray:
    """Sample std (ddof=1) of each trailing ``window`` of ``r``; NaN where the window holds a
    NaN or is incomplete. Every window is computed on its own (two passes, no running sums),
    so a live session's value over its last ``window`` returns equals the batch value of the
    same bar bit for bit, and costs microseconds instead of a pandas rolling call."""
    n = len(r)
    out = np.full(n, np.nan)
    if window < 2:
        return out
    for i in range(window - 1, n):
        total = 0.0
        ok = True
        for j in range(i - window + 1, i + 1):
            x = r[j]
            if x != x:
                ok = False
                break
            total += x
        if not ok:
            continue
        mean = total / window
        ss = 0.0
        for j in range(i - window + 1, i + 1):
            d = r[j] - mean
            ss += d * d
        out[i] = math.sqrt(ss / (window - 1))
    return out


# Slots of the breaker state array (float64; flags are 0.0/1.0, ``day`` NaN before the first check).
RISK_STATE: tuple[str, ...] = ("peak", "day", "day_start_equity", "drawdown_halted", "daily_halted",
                               "vol_active", "killed")
_PEAK, _DAY, _DAY_START, _DD_HALTED, _DAILY_HALTED, _VOL_ACTIVE, _KILLED = range(len(RISK_STATE))

# Decision actions and reasons as codes (the kernel's vocabulary; Decision carries the words).
ACTIONS: tuple[str, ...] = ("allow", "reduce", "halt")
ALLOW, REDUCE, HALT = 0, 1, 2
REASONS: tuple[str, ...] = ("", "kill switch", "drawdown breaker", "daily loss breaker", "no equity",
                            "volatility breaker", "leverage")
R_NONE, R_KILL, R_DRAWDOWN, R_DAILY, R_NO_EQUITY, R_VOLATILITY, R_LEVERAGE = range(len(REASONS))
# Trip bits of risk_step's mask, in the order trips are recorded.
TRIP_BREAKERS: tuple[str, ...] = ("kill_switch", "drawdown", "daily_loss", "volatility")
TRIP_KILL, TRIP_DRAWDOWN, TRIP_DAILY, TRIP_VOLATILITY = 1, 2, 4, 8

# Column order of risk_vector(): the risk parameters the kernel reads.
RISK_VECTOR: tuple[str, ...] = ("max_position", "max_leverage", "max_drawdown", "max_volatility", "daily_loss")
EPOCH_ORDINAL = 719163  # date(1970, 1, 1).toordinal(): UTC day numbers match datetime.toordinal()
DAY_NS = 86_400 * 1_000_000_000


def new_risk_state() -> np.ndarray:
    """A fresh breaker state (no peak yet, no day yet, nothing halted)."""
    state = np.zeros(len(RISK_STATE))
    state[_PEAK] = -math.inf
    state[_DAY] = math.nan
    state[_DAY_START] = math.nan
    return state


def risk_vector(cfg: RiskConfig) -> np.ndarray:
    """The risk parameters as the kernel's float row (columns :data:`RISK_VECTOR`)."""
    return np.array([float(getattr(cfg, k)) for k in RISK_VECTOR])


@kernel(inline=True)
def weight_cap(max_position: float, max_leverage: float) -> float:
    """Largest allowed ``|weight|`` of a new position: min(max_position, max_leverage)."""
    return min(max_position, max_leverage)


@kernel(inline=True)
def cap_weight(weight: float, cap: float) -> float:
    """Clip a target weight to +-``cap``."""
    return max(-cap, min(cap, weight))


@kernel(inline=True)
def risk_step(state: np.ndarray, day: float, equity: float, position_value: float, realised_vol: float,
              kill_now: bool, max_drawdown: float, daily_loss: float, max_volatility: float,
              max_leverage: float, cap: float) -> tuple[int, int, bool, bool, float, int, float, float]:
    """Update the breaker ``state`` in place with one check and return the decision.

    ``day``: UTC day number (``datetime.toordinal()``) of the check; ``kill_now``: the kill
    switch is on now. Returns ``(action, reason, flatten, stop, max_weight, trips, drawdown,
    day_loss)``: action/reason codes (:data:`ACTIONS`, :data:`REASONS`), ``trips`` a bit mask
    of the breakers that tripped on this check (``TRIP_*``). Rules: module docstring.
    """
    trips = 0
    if state[_KILLED] == 0.0 and kill_now:
        state[_KILLED] = 1.0
        trips |= TRIP_KILL
    # Drawdown from the equity peak: permanent halt.
    if equity > state[_PEAK]:
        state[_PEAK] = equity
    peak = state[_PEAK]
    drawdown = 1.0 - equity / peak if peak > 0 else 0.0
    if state[_DD_HALTED] == 0.0 and drawdown > max_drawdown:
        state[_DD_HALTED] = 1.0
        trips |= TRIP_DRAWDOWN
    # Daily loss against the first equity of the UTC day: halt until the day changes.
    if day != state[_DAY]:  # NaN before the first check
        state[_DAY] = day
        state[_DAY_START] = equity
        state[_DAILY_HALTED] = 0.0
    start = state[_DAY_START]
    day_loss = 1.0 - equity / start if start > 0 else 0.0
    if state[_DAILY_HALTED] == 0.0 and day_loss > daily_loss:
        state[_DAILY_HALTED] = 1.0
        trips |= TRIP_DAILY
    # Realised daily volatility: no new positions while above the limit (NaN = unknown).
    vol_high = realised_vol == realised_vol and realised_vol > max_volatility
    if vol_high and state[_VOL_ACTIVE] == 0.0:
        trips |= TRIP_VOLATILITY
    state[_VOL_ACTIVE] = 1.0 if vol_high else 0.0

    if state[_KILLED] != 0.0:
        return HALT, R_KILL, True, True, 0.0, trips, drawdown, day_loss
    if state[_DD_HALTED] != 0.0:
        return HALT, R_DRAWDOWN, True, False, 0.0, trips, drawdown, day_loss
    if state[_DAILY_HALTED] != 0.0:
        return HALT, R_DAILY, True, False, 0.0, trips, drawdown, day_loss
    if equity <= 0:
        return HALT, R_NO_EQUITY, True, False, 0.0, trips, drawdown, day_loss
    if vol_high:
        return HALT, R_VOLATILITY, False, False, 0.0, trips, drawdown, day_loss
    if abs(position_value) / equity > max_leverage + 1e-9:
        return REDUCE, R_LEVERAGE, False, False, cap, trips, drawdown, day_loss
    return ALLOW, R_NONE, False, False, cap, trips, drawdown, day_loss


def trip_records(time: str, trips: int, cfg: RiskConfig, state: np.ndarray, equity: float, position_value: float,
                 realised_vol: float, drawdown: float, day_loss: float,
                 kill_switch_file: str | None) -> list[Trip]:
    """The :class:`Trip` records of one :func:`risk_step` trip mask (same words and values for
    the live manager and the reference simulator)."""
    out: list[Trip] = []

    def add(breaker: str, reason: str, **values: float) -> None:
        out.append(Trip(time=time, breaker=breaker, reason=reason, values={k: float(v) for k, v in values.items()}))

    if trips & TRIP_KILL:
        add("kill_switch", f"kill-switch file {kill_switch_file} present", equity=equity, position_value=position_value)
    if trips & TRIP_DRAWDOWN:
        peak = state[_PEAK]
        add("drawdown", f"drawdown {drawdown:.2%} from peak {peak:.2f} > {cfg.max_drawdown:.2%}",
            drawdown=drawdown, peak=peak, equity=equity)
    if trips & TRIP_DAILY:
        start = state[_DAY_START]
        add("daily_loss", f"daily loss {day_loss:.2%} of day-start equity {start:.2f} > {cfg.daily_loss:.2%}",
            daily_loss=day_loss, day_start_equity=start, equity=equity)
    if trips & TRIP_VOLATILITY:
        add("volatility", f"realised daily volatility {realised_vol:.2%} > {cfg.max_volatility:.2%}",
            realised_vol=realised_vol)
    return out


def _as_utc(now: Any) -> _dt.datetime:
    if isinstance(now, pd.Timestamp):
        now = now.to_pydatetime()
    if isinstance(now, (int, float, np.integer, np.floating)):
        return _dt.datetime.fromtimestamp(float(now), tz=_dt.timezone.utc).replace(tzinfo=None)
    if now.tzinfo is not None:  # naive datetimes are taken as UTC (backtrader's convention)
        now = now.astimezone(_dt.timezone.utc).replace(tzinfo=None)
    return now


def _state_property(slot: int, kind: type, doc: str) -> property:
    """An attribute view of one slot of the breaker state array (the Python API of old)."""

    def get(self: "RiskManager") -> Any:
        v = self.state[slot]
        if kind is bool:
            return bool(v)
        if kind is int:
            return None if v != v else int(v)
        return float(v)

    def set_(self: "RiskManager", value: Any) -> None:
        self.state[slot] = math.nan if value is None else float(value)

    return property(get, set_, doc=doc)


class RiskManager:
    """Circuit breakers and caps of ``cfg.risk``; one instance per session (see module docs).

    Call :meth:`check` once per bar (or per decision) with the current time, equity,
    signed position value and realised daily volatility; obey the returned Decision.
    The breaker state lives in :attr:`state` (slots :data:`RISK_STATE`), updated by
    :func:`risk_step`; the attributes ``peak``, ``day``, ... are views of it.
    """

    peak = _state_property(_PEAK, float, "Highest equity seen (-inf before the first check).")
    day = _state_property(_DAY, int, "UTC day number (toordinal) of the last check, None before the first.")
    day_start_equity = _state_property(_DAY_START, float, "Equity at the first check of the current UTC day.")
    drawdown_halted = _state_property(_DD_HALTED, bool, "Drawdown breaker tripped (for the session).")
    daily_halted = _state_property(_DAILY_HALTED, bool, "Daily-loss breaker tripped (until the day changes).")
    vol_active = _state_property(_VOL_ACTIVE, bool, "Realised volatility above the limit at the last check.")
    killed = _state_property(_KILLED, bool, "Kill switch seen (for the session).")

    def __init__(self, cfg: RiskConfig | None = None, kill_switch_file: str | os.PathLike | None = None) -> None:
        self.cfg = cfg if cfg is not None else RiskConfig()
        path = kill_switch_file if kill_switch_file is not None else self.cfg.kill_switch_file
        self.kill_switch_file = os.fspath(path) if path else None
        self.trips: list[Trip] = []
        self.state = new_risk_state()
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Clear every breaker and the equity peak (keeps the trip history)."""
        self.state[:] = new_risk_state()

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
        return weight_cap(self.cfg.max_position, self.cfg.max_leverage)

    def cap_weight(self, weight: float) -> float:
        """Clip a target weight to +-:attr:`weight_cap`."""
        return cap_weight(float(weight), self.weight_cap)

    def kill_switch_on(self) -> bool:
        """True while the kill-switch file exists."""
        return bool(self.kill_switch_file) and os.path.exists(self.kill_switch_file)

    def _trip(self, now: _dt.datetime, breaker: str, reason: str, **values: float) -> None:
        """Record one trip by hand (the breakers record theirs through :func:`trip_records`)."""
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
        equity, position_value, realised_vol = float(equity), float(position_value), float(realised_vol)
        kill_now = not self.killed and self.kill_switch_on()
        action, reason, flatten, stop, max_weight, trips, drawdown, day_loss = risk_step(
            self.state, float(t.toordinal()), equity, position_value, realised_vol, kill_now,
            c.max_drawdown, c.daily_loss, c.max_volatility, c.max_leverage, self.weight_cap)
        if trips:
            self.trips.extend(trip_records(t.isoformat(), trips, c, self.state, equity, position_value, realised_vol,
                                           drawdown, day_loss, self.kill_switch_file))
        text = REASONS[reason]
        if reason == R_LEVERAGE:
            text = f"leverage {abs(position_value) / equity:.3f} > {c.max_leverage}"
        return Decision(ACTIONS[action], text, flatten=bool(flatten), stop=bool(stop), max_weight=float(max_weight),
                        reason_code=int(reason))

    def trips_frame(self) -> pd.DataFrame:
        """Trips as a table (columns time, breaker, reason, values)."""
        return pd.DataFrame([t.to_dict() for t in self.trips], columns=["time", "breaker", "reason", "values"])
