"""The sweep's hot path: the threaded row driver around the reference simulator.

Kept apart from :mod:`sweeps.engine` on purpose: it imports only numpy, numba and ``core``
(no backtrader, no torch), so a Dask worker that runs row chunks (:mod:`sweeps.distributed`)
starts fast and unpickles :class:`KernelInputs` without loading the model stack.

Every row runs :func:`core.simulator.simulate_kernel` -- the strategy itself, through the one
decision step of :mod:`core.decision` -- into buffers owned by its thread and is reduced on
the spot (:func:`_row_stats`) to the metrics, block moments and fold figures of
:data:`RAW_FIELDS` / :data:`FOLD_FIELDS`. The strategy hooks' values come per *hook group*:
rows that differ only in fields the hooks do not read share one ``signal/weight/allowed``
row (:class:`KernelInputs`); the kernel rows carry their group in column :data:`ROW_GROUP`.
Compiled lazily and cached by :mod:`core.jit` (keyed on the source of every kernel module).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np

from core.errors import ConfigError
from core.jit import kernel
from core.policy import POLICY_VECTOR
from core.risk import new_risk_state
from core.simulator import (
    EQUITY_FIELDS,
    FILL_FIELDS,
    F_FEE,
    F_KIND,
    F_PRICE,
    F_SIZE,
    F_TIME_BAR,
    KINDS,
    STAT_FIELDS,
    S_DECISIONS,
    S_FILL_OVF,
    S_PAST_DB,
    S_STOPPED,
    TRIP_FIELDS,
    Bars,
    Outputs,
    Signals,
    Span,
    simulate_kernel,
)

# buffer widths as plain ints (compile-time constants inside the njit driver)
N_FILL_COLS = len(FILL_FIELDS)
N_EQUITY_COLS = len(EQUITY_FIELDS)
N_TRIP_COLS = len(TRIP_FIELDS)
N_STATS = len(STAT_FIELDS)
MAX_TRIPS = 256
# Kernel rows: the policy row (POLICY_VECTOR) then the row's hook group.
ROW_GROUP = len(POLICY_VECTOR)

# ----------------------------------------------------------------------------- output layout
# Per-row raw slots the kernel writes (float64); RAW_KIND0 + kind code counts closed trades by
# the kind of their closing fill (core.simulator.KINDS).
RAW_FIELDS: tuple[str, ...] = (
    "start_equity", "final_equity", "mean_return", "std_return", "downside_dev", "max_drawdown", "trades",
    "wins", "hold_bars_sum", "exposure_bars", "traded_notional", "fees", "mean_equity", "open_trades", "fills",
    "fills_overflow", "risk_trips", "decisions", "past_deadband", "stopped", "bars",
) + tuple(f"exit_{k}" for k in KINDS)
(R_START, R_FINAL, R_MEAN, R_STD, R_DOWN, R_MAXDD, R_TRADES, R_WINS, R_HOLD, R_EXPO, R_NOTIONAL, R_FEES,
 R_MEANEQ, R_OPEN, R_FILLS, R_OVF, R_TRIPS, R_DECISIONS, R_PASTDB, R_STOPPED, R_BARS) = range(21)
RAW_KIND0 = 21
N_RAW = len(RAW_FIELDS)
# Per-row, per-fold slots.
FOLD_FIELDS: tuple[str, ...] = ("start_equity", "end_equity", "max_drawdown", "trades", "wins")
FD_START, FD_END, FD_MAXDD, FD_TRADES, FD_WINS = range(len(FOLD_FIELDS))
N_FOLD = len(FOLD_FIELDS)


@dataclass(frozen=True)
class KernelInputs:
    """Everything the row driver reads, as plain arrays and numbers (picklable: Dask ships it
    to its workers once). Bar indices refer to the fed bars (warm-up + span). ``signal``,
    ``weight`` and ``allowed`` hold one row per hook group (``[groups, bars]``; set by
    :func:`with_hooks` once the grid is known)."""

    t_ns: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    prob: np.ndarray
    fvol: np.ndarray
    rvol: np.ndarray
    first: int          # first bar of the span: metrics start here
    start: int          # first bar of decisions and risk checks (first, or later when the model's window needs it)
    last: int           # last bar of the span (entries allowed up to it)
    cash: float
    coc: bool
    risk: np.ndarray    # core.risk.risk_vector
    return_edges: np.ndarray  # CSCV block edges over the span's per-bar returns
    fold_edges: np.ndarray    # fold edges over the same returns (whole blocks)
    signal: np.ndarray | None = None   # [groups, bars] float64
    weight: np.ndarray | None = None   # [groups, bars] float64
    allowed: np.ndarray | None = None  # [groups, bars] bool
    width: np.ndarray | None = None    # barrier width per bar (core.policy; None: 1.0, fixed barriers)

    def with_hooks(self, signal: np.ndarray, weight: np.ndarray, allowed: np.ndarray) -> "KernelInputs":
        """A copy carrying the hook groups' values (``[groups, bars]`` each)."""
        n = self.close.shape[0]
        arrs = [np.ascontiguousarray(np.atleast_2d(x), dtype=d) for x, d in
                ((signal, np.float64), (weight, np.float64), (allowed, np.bool_))]
        if any(a.shape[1] != n or a.shape[0] != arrs[0].shape[0] for a in arrs):
            raise ValueError(f"hook arrays {[a.shape for a in arrs]} do not match {n} bars")
        return dataclasses.replace(self, signal=arrs[0], weight=arrs[1], allowed=arrs[2])

    def records(self) -> tuple:
        """The driver's leading arguments: (bars, prob, (signal, weight, allowed), span, first,
        (risk row, fresh risk state), (return edges, fold edges), barrier widths or None)."""
        if self.signal is None:
            raise ValueError("KernelInputs without hook values: call with_hooks() first")
        bars = Bars(self.t_ns, self.open, self.high, self.low, self.close, self.rvol)
        span = Span(self.start, self.last, -1, self.cash, self.coc)
        return (bars, self.prob, (self.signal, self.weight, self.allowed), span, self.first,
                (self.risk, new_risk_state()), (self.return_edges, self.fold_edges), self.width)


# ----------------------------------------------------------------------------- the row driver
@kernel(inline=True)
def _return_stats(equity, first, n_ret, return_edges, raw, moments):
    """Per-bar equity returns ``v[t] / v[t-1] - 1`` over the span (``n_ret`` of them from bar
    ``first``): mean, std, downside deviation, max drawdown, mean equity and exposure into
    ``raw``; count, sum and power sums of every CSCV block into ``moments``."""
    v0 = equity[first, 0]
    s1 = 0.0
    down2 = 0.0
    peak = v0
    maxdd = 0.0
    eq_sum = v0
    expo = 1.0 if equity[first, 2] != 0.0 else 0.0
    b = 0
    for j in range(n_ret):
        prev = equity[first + j, 0]
        cur = equity[first + j + 1, 0]
        r = cur / prev - 1.0
        s1 += r
        if r < 0.0:
            down2 += r * r
        eq_sum += cur
        if equity[first + j + 1, 2] != 0.0:
            expo += 1.0
        if cur > peak:
            peak = cur
        dd = 1.0 - cur / peak
        if dd > maxdd:
            maxdd = dd
        while j >= return_edges[b + 1]:
            b += 1
        x2 = r * r
        moments[b, 0] += 1.0
        moments[b, 1] += r
        moments[b, 2] += x2
        moments[b, 3] += x2 * r
        moments[b, 4] += x2 * x2
    mean = s1 / n_ret if n_ret > 0 else np.nan
    # second pass for the variance: the two-pass form is the one strategies.metrics computes
    ss = 0.0
    for j in range(n_ret):
        r = equity[first + j + 1, 0] / equity[first + j, 0] - 1.0
        ss += (r - mean) * (r - mean)
    raw[R_MEAN] = mean
    raw[R_STD] = math.sqrt(ss / (n_ret - 1)) if n_ret > 1 else np.nan
    raw[R_DOWN] = math.sqrt(down2 / n_ret) if n_ret > 0 else np.nan
    raw[R_MAXDD] = maxdd
    raw[R_MEANEQ] = eq_sum / (n_ret + 1)
    raw[R_EXPO] = expo


@kernel(inline=True)
def _fold_equity(equity, first, fold_edges, fold_out):
    """Equity at every fold's edges and the drawdown inside it, into ``fold_out``."""
    for f in range(fold_edges.shape[0] - 1):
        a = fold_edges[f]
        z = fold_edges[f + 1]
        fold_out[f, FD_START] = equity[first + a, 0]
        fold_out[f, FD_END] = equity[first + z, 0]
        pk = equity[first + a, 0]
        mdd = 0.0
        for j in range(a + 1, z + 1):
            cur = equity[first + j, 0]
            if cur > pk:
                pk = cur
            dd = 1.0 - cur / pk
            if dd > mdd:
                mdd = dd
        fold_out[f, FD_MAXDD] = mdd


@kernel(inline=True)
def _count_trade(raw, fold_out, fold_edges, rel, pnl, hold, kind):
    """Count one closed trade (closing ``rel`` bars after the span's first bar, by a fill of
    ``kind``) in the row's totals and in the fold it closed in."""
    raw[R_TRADES] += 1.0
    raw[R_HOLD] += hold
    win = 1.0 if pnl > 0 else 0.0
    raw[R_WINS] += win
    raw[RAW_KIND0 + kind] += 1.0
    for f in range(fold_edges.shape[0] - 1):
        if rel > fold_edges[f] and rel <= fold_edges[f + 1]:
            fold_out[f, FD_TRADES] += 1.0
            fold_out[f, FD_WINS] += win
            break


@kernel(inline=True)
def _trade_stats(fills, nf, first, fold_edges, raw, fold_out):
    """Group the row's ``nf`` fills into round trips as core.trades.round_trips does (eps
    1e-12: a trade closes when the position returns to 0, a sign flip closes one and opens
    the next) and count them; traded notional, fees, fills and a still open trade into ``raw``."""
    eps = 1e-12
    pos = 0.0
    open_trade = False
    size = 0.0
    entry_cost = 0.0
    exit_proceeds = 0.0
    fees = 0.0
    entry_bar = 0
    side = 1.0
    notional = 0.0
    fee_total = 0.0
    for k in range(nf):
        fsize = fills[k, F_SIZE]
        price = fills[k, F_PRICE]
        comm = fills[k, F_FEE]
        bar = int(fills[k, F_TIME_BAR])
        notional += abs(fsize * price)
        fee_total += comm
        qty = fsize
        while abs(qty) > eps:
            if abs(pos) <= eps:
                open_trade = True
                side = 1.0 if qty > 0 else -1.0
                size = 0.0
                entry_cost = 0.0
                exit_proceeds = 0.0
                fees = 0.0
                entry_bar = bar
            same_dir = (pos >= 0 and qty > 0) or (pos <= 0 and qty < 0)
            if same_dir or abs(pos) <= eps:
                size += abs(qty)
                entry_cost += abs(qty) * price
                fees += comm
                pos += qty
                qty = 0.0
            else:
                take = min(abs(qty), abs(pos))
                exit_proceeds += take * price
                fees += comm * (take / abs(fsize))
                step = math.copysign(take, qty)
                pos += step
                qty -= step
                if abs(pos) <= eps:
                    pos = 0.0
                    open_trade = False
                    pnl = side * (exit_proceeds / size - entry_cost / size) * size - fees
                    _count_trade(raw, fold_out, fold_edges, bar - first, pnl, bar - entry_bar, int(fills[k, F_KIND]))
    raw[R_OPEN] = 1.0 if open_trade and abs(pos) > eps else 0.0
    raw[R_NOTIONAL] = notional
    raw[R_FEES] = fee_total
    raw[R_FILLS] = nf


@kernel
def _row_stats(run, first, last, edges, out):
    """Reduce one row's run (``run`` = (equity buffer, fills, fill count)) over the span's bars
    ``first .. last`` to its metrics, block moments and fold figures (``edges`` = (return
    edges, fold edges); ``out`` = (raw, moments, fold figures), written in place).

    Equity returns: ``v[t] / v[t-1] - 1`` over the span's bars ``first .. last`` (as
    strategies.metrics). Trades: fills grouped as core.trades.round_trips groups them (a trade
    closes when the position returns to 0, a sign flip closes one and opens the next).
    """
    equity, fills, nf = run
    return_edges, fold_edges = edges
    raw, moments, fold_out = out
    for k in range(raw.shape[0]):
        raw[k] = 0.0
    moments[:, :] = 0.0
    fold_out[:, :] = 0.0
    raw[R_START] = equity[first, 0]
    raw[R_FINAL] = equity[last, 0]
    raw[R_BARS] = last - first + 1
    _return_stats(equity, first, last - first, return_edges, raw, moments)
    _fold_equity(equity, first, fold_edges, fold_out)
    _trade_stats(fills, nf, first, fold_edges, raw, fold_out)


@kernel
def _run_slice(ctx, rows, out, lo, hi):
    """Rows ``lo .. hi - 1`` on one thread with buffers allocated once for the slice."""
    bars, prob, hooks, span, first, risk, edges, width = ctx
    raw, moments, folds = out
    signal, weight, allowed = hooks
    rsk, risk_state0 = risk
    n = bars.close.shape[0]
    buf = Outputs(np.zeros((2 * n + 16, N_FILL_COLS)),  # core.simulator.allocate_buffers' sizing
                  np.empty((n, N_EQUITY_COLS)), np.zeros((MAX_TRIPS, N_TRIP_COLS)), np.zeros(N_STATS),
                  np.empty(risk_state0.shape[0]))
    for r in range(lo, hi):
        buf.risk_state[:] = risk_state0
        g = int(rows[r, ROW_GROUP])
        sig = Signals(prob, signal[g], weight[g], allowed[g])
        nf, nb, nt = simulate_kernel(bars, sig, span, rows[r], rsk, buf, width)
        _row_stats((buf.equity, buf.fills, nf), first, span.end, edges, (raw[r], moments[r], folds[r]))
        raw[r, R_OVF] = buf.stats[S_FILL_OVF]
        raw[r, R_TRIPS] = nt
        raw[r, R_DECISIONS] = buf.stats[S_DECISIONS]
        raw[r, R_PASTDB] = buf.stats[S_PAST_DB]
        raw[r, R_STOPPED] = buf.stats[S_STOPPED]


def _run_rows(ctx: tuple, rows: np.ndarray, out: tuple, threads: int) -> None:
    """Run :func:`core.simulator.simulate_kernel` for every kernel row of ``rows`` (policy row +
    hook group) on the inputs ``ctx`` (:meth:`KernelInputs.records`) and reduce each run in
    place into ``out`` = (``raw[n, N_RAW]``, ``moments[n, S, 5]``, ``folds[n, F, N_FOLD]``).

    The rows are split into one contiguous slice per thread (the compiled slice releases the
    GIL); each slice allocates its buffers once (equity ``n_bars x 3``, fills, trips) and
    reuses them for its rows, so memory is threads x bars, never rows x bars. Each row's
    result depends on that row alone, so any thread count or chunking gives bit-identical
    results."""
    n_rows = rows.shape[0]
    n_slices = max(1, min(n_rows, threads))
    bounds = [(k * n_rows // n_slices, (k + 1) * n_rows // n_slices) for k in range(n_slices)]
    if n_slices == 1:
        _run_slice(ctx, rows, out, 0, n_rows)
        return
    with ThreadPoolExecutor(max_workers=n_slices) as pool:
        for job in [pool.submit(_run_slice, ctx, rows, out, lo, hi) for lo, hi in bounds]:
            job.result()


def run_chunk(inputs: KernelInputs, params: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run one chunk of kernel rows (policy row + hook group, see :data:`ROW_GROUP`):
    ``(raw[n, N_RAW], moments[n, S, 5], folds[n, F, N_FOLD])``.

    The unit of work of every mapper (the serial loop here, Dask tasks in
    :mod:`sweeps.distributed`)."""
    p = np.ascontiguousarray(params, dtype=np.float64)
    n = p.shape[0]
    groups = inputs.signal.shape[0] if inputs.signal is not None else 0
    if n and (p.shape[1] != ROW_GROUP + 1 or not np.isin(p[:, ROW_GROUP], np.arange(groups)).all()):
        raise ValueError(f"kernel rows need {ROW_GROUP} policy columns and a hook group in [0, {groups})")
    s = inputs.return_edges.shape[0] - 1
    f = inputs.fold_edges.shape[0] - 1
    raw = np.zeros((n, N_RAW))
    moments = np.zeros((n, s, 5))
    folds = np.zeros((n, f, N_FOLD))
    if n:
        _run_rows(inputs.records(), p, (raw, moments, folds), numba.get_num_threads())
    return raw, moments, folds


def chunk_bounds(n_rows: int, chunk: int) -> list[tuple[int, int]]:
    """Contiguous ``[lo, hi)`` row ranges of at most ``chunk`` rows."""
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1 (got {chunk})")
    return [(lo, min(lo + chunk, n_rows)) for lo in range(0, n_rows, chunk)]


def concat_parts(parts: Sequence[tuple[np.ndarray, ...]], inputs: KernelInputs, n: int) -> tuple[np.ndarray, ...]:
    if not parts:
        s, f = inputs.return_edges.shape[0] - 1, inputs.fold_edges.shape[0] - 1
        return np.zeros((0, N_RAW)), np.zeros((0, s, 5)), np.zeros((0, f, N_FOLD))
    out = tuple(np.concatenate([p[k] for p in parts]) for k in range(3))
    if out[0].shape[0] != n:
        raise RuntimeError(f"sweep chunks returned {out[0].shape[0]} rows for {n}")
    return out
