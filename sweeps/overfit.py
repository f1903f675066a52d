"""Statistics that say whether the best row of a sweep is luck.

Everything here works on **per-period** returns (one value per bar); annualising is the
caller's job and happens only where a function takes ``periods_per_year``.

Implemented from the papers' definitions:

* Probabilistic Sharpe ratio, PSR (Bailey & López de Prado 2012)::

      PSR(SR*) = Phi( (SR - SR*) sqrt(n - 1) / sqrt(1 - g3 SR + (g4 - 1)/4 SR^2) )

  with the per-period Sharpe ratio SR, skewness g3 and (non-excess) kurtosis g4.
* Expected maximum Sharpe ratio of N trials under the null of no skill (Bailey & López de
  Prado 2014)::

      E[max SR] = sqrt(V) ((1 - gamma) Phi^-1(1 - 1/N) + gamma Phi^-1(1 - 1/(N e)))

  gamma = Euler-Mascheroni, V = variance of the trials' Sharpe ratios.
* Deflated Sharpe ratio, DSR = PSR(SR* = E[max SR]) of the chosen row.
* Probability of backtest overfitting, PBO, by combinatorially symmetric cross-validation
  (CSCV; Bailey, Borwein, López de Prado & Zhu 2015).

**Block moments.** A sweep of 1,000 rows x 85,000 bars must never hold a bars x rows
matrix, so every statistic is computed from ``moments[n_rows, n_blocks, 5]``: per row and
per contiguous time block the power sums ``(count, sum r, sum r^2, sum r^3, sum r^4)``.
Sums add, so the mean, variance, skewness and kurtosis of any union of blocks follow
exactly (:func:`moments_stats`). A sweep accumulates them row by row (or block by block)
with :func:`block_moments` and drops the returns.

Conventions (the same in the direct and the moment path):

* Sharpe = mean / std with the sample std (ddof = 1), like pandas and vectorbt.
  Skewness and kurtosis are the plain (biased, population) moment ratios m3/m2^1.5 and
  m4/m2^2 (``scipy.stats.skew`` / ``kurtosis(fisher=False)`` with ``bias=True``), as
  used in the PSR paper. Kurtosis is non-excess (3 for a normal distribution).
* NaN returns are missing periods: they are skipped and not counted. +-inf is refused.
* Fewer than 2 periods: Sharpe, skew and kurtosis are NaN.
* Zero variance (relative: ``var <= 1e-12 * mean(r^2)``, i.e. |mean|/std above 1e6,
  which only rounding produces): a row whose returns are all exactly 0 (it never traded)
  has Sharpe 0, skew 0 and kurtosis 3 (neutral, ranked like a flat row); a row with a
  constant non-zero return has an undefined (NaN) Sharpe.
* Rows with a NaN Sharpe are never chosen as the best row and rank below every row with a
  defined Sharpe in CSCV.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri

from core.errors import ConfigError, DataError
from core.jsonable import jsonable

EULER_GAMMA = 0.5772156649015329
DSR_SIGNIFICANT = 0.95  # DSR at or above this: the best row beats the best of N lucky trials
PBO_LOW = 0.2  # PBO below this: the in-sample ranking mostly holds out of sample
PBO_HIGH = 0.5  # PBO above this: the in-sample winner is usually below the OOS median
PBO_TIES_MATERIAL = 0.05  # ties raising the PBO by less (within one level) earn no caution
MAX_CSCV_BLOCKS = 20  # C(20, 10) = 184,756 splits; beyond that the count explodes
_ZERO_VAR_RTOL = 1e-12  # variance below this share of mean(r^2) is rounding, not risk


# --------------------------------------------------------------------------- direct path
def annualise_sharpe(sharpe_per_period: Any, periods_per_year: float) -> Any:
    """Annualised Sharpe ratio: per-period Sharpe x sqrt(periods_per_year)."""
    _check_periods_per_year(periods_per_year)
    return np.asarray(sharpe_per_period, dtype=float) * math.sqrt(periods_per_year)


def sharpe(mean: Any, std: Any) -> Any:
    """Per-period Sharpe ratio from a mean and a (ddof=1) std, with this module's rules.

    std == 0 gives 0 where the mean is 0 too (a flat row) and NaN otherwise; NaN inputs
    give NaN. Works elementwise on arrays; returns a float for scalar inputs.
    """
    m = np.asarray(mean, dtype=float)
    s = np.asarray(std, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(s > 0, m / s, np.where((s == 0) & (m == 0), 0.0, np.nan))
    return float(out) if out.ndim == 0 else out


def sharpe_ratio(returns: np.ndarray, axis: int = 0) -> Any:
    """Per-period Sharpe ratio computed directly from returns (two-pass), NaN skipped.

    Same conventions as the moment path (see the module docstring); for tests and small
    inputs. Returns a float for 1-D input, else an array without ``axis``.
    """
    r = np.asarray(returns, dtype=float)
    if np.isinf(r).any():
        raise DataError("returns contain inf")
    n = np.sum(~np.isnan(r), axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.nansum(r, axis=axis) / n
        dev = r - np.expand_dims(mean, axis)
        var = np.nansum(dev * dev, axis=axis) / (n - 1)
        raw2 = np.nansum(r * r, axis=axis) / n
    zero = var <= _ZERO_VAR_RTOL * raw2
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(zero, np.where(raw2 == 0, 0.0, np.nan), mean / np.sqrt(var))
    out = np.where(n < 2, np.nan, out)
    return float(out) if out.ndim == 0 else out


def probabilistic_sharpe(sr: Any, n_obs: Any, skew: Any, kurt: Any, sr_benchmark: Any = 0.0) -> Any:
    """Probabilistic Sharpe ratio PSR(SR*): probability that the true Sharpe exceeds SR*.

    All Sharpe ratios per period; ``kurt`` is non-excess. Elementwise on arrays (float for
    scalars). NaN where n_obs < 3 (skewness and kurtosis of two points say nothing) or any
    input is NaN. The denominator is >= 0 for any real sample (g4 >= 1 + g3^2); where it is
    0 the PSR is 1, 0 or 0.5 by the sign of SR - SR*.
    """
    sr_, n, g3, g4, b = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (sr, n_obs, skew, kurt, sr_benchmark)))
    with np.errstate(divide="ignore", invalid="ignore"):
        den = 1.0 - g3 * sr_ + (g4 - 1.0) / 4.0 * sr_ * sr_
        num = (sr_ - b) * np.sqrt(n - 1.0)
        z = np.where(den > 0, num / np.sqrt(np.where(den > 0, den, 1.0)), np.sign(num) * np.inf)
        out = np.where(np.isnan(z) | (num == 0), 0.5, ndtr(z))
    bad = (n < 3) | np.isnan(sr_) | np.isnan(n) | np.isnan(g3) | np.isnan(g4) | np.isnan(b) | np.isnan(den)
    out = np.where(bad, np.nan, out)
    return float(out) if out.ndim == 0 else out


def expected_max_sharpe(n_trials: float, sharpe_variance: float) -> float:
    """Expected maximum of ``n_trials`` Sharpe ratios with zero true Sharpe (per period).

    ``sharpe_variance`` is the variance of the trials' per-period Sharpe ratios.
    ``n_trials`` may be an effective (real) number of independent trials >= 1 (see
    :func:`effective_trials`). One trial (nothing was selected) gives 0, and so does V = 0.
    NaN variance gives NaN.
    """
    if isinstance(n_trials, bool) or not isinstance(n_trials, (int, float, np.integer, np.floating)) \
            or not math.isfinite(n_trials) or n_trials < 1:
        raise DataError(f"n_trials must be a number >= 1 (got {n_trials!r})")
    v = float(sharpe_variance)
    if math.isnan(v):
        return math.nan
    if v < 0:
        raise DataError(f"sharpe_variance must be >= 0 (got {v!r})")
    if n_trials == 1 or v == 0:
        return 0.0
    n = float(n_trials)
    z = (1.0 - EULER_GAMMA) * ndtri(1.0 - 1.0 / n) + EULER_GAMMA * ndtri(1.0 - 1.0 / (n * math.e))
    # the approximation dips below 0 for N close to 1, where the true maximum is still >= 0
    return float(math.sqrt(v) * max(z, 0.0))


# --------------------------------------------------------------------------- block moments
def block_edges(n_periods: int, n_blocks: int) -> np.ndarray:
    """Edges (length n_blocks + 1) of ``n_blocks`` contiguous blocks over ``n_periods``.

    Same split as ``np.array_split``: with T = q*S + r, the first r blocks have q + 1
    periods and the others q. Block b covers periods ``edges[b]:edges[b + 1]``.
    """
    if isinstance(n_blocks, bool) or int(n_blocks) != n_blocks or n_blocks < 1:
        raise DataError(f"n_blocks must be an integer >= 1 (got {n_blocks!r})")
    if n_periods < n_blocks:
        raise DataError(f"{n_periods} periods cannot fill {n_blocks} blocks (need at least one period per block)")
    q, r = divmod(int(n_periods), int(n_blocks))
    sizes = np.full(int(n_blocks), q, dtype=np.int64)
    sizes[:r] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


def block_moments(returns: np.ndarray, n_blocks: int) -> np.ndarray:
    """Power sums of per-period returns per row and contiguous block.

    ``returns`` is T x N (one column per sweep row) or 1-D (one row). Returns
    ``moments[N, n_blocks, 5]`` = (count, sum r, sum r^2, sum r^3, sum r^4); block edges as
    :func:`block_edges`. NaN returns are skipped (not counted); inf raises DataError.
    """
    r = np.asarray(returns, dtype=float)
    if r.ndim == 1:
        r = r[:, None]
    if r.ndim != 2:
        raise DataError(f"returns must be 1-D or T x N (got shape {r.shape})")
    if np.isinf(r).any():
        t, j = np.argwhere(np.isinf(r))[0]
        raise DataError(f"returns contain inf at period {t}, row {j}")
    edges = block_edges(r.shape[0], n_blocks)
    ok = ~np.isnan(r)
    x = np.where(ok, r, 0.0)
    x2 = x * x
    powers = (ok.astype(float), x, x2, x2 * x, x2 * x2)
    # reduceat adds the periods of each block in order, the same way for every column
    sums = [np.add.reduceat(p, edges[:-1], axis=0) for p in powers]  # each (S, N)
    return np.ascontiguousarray(np.stack(sums, axis=-1).transpose(1, 0, 2))


def check_moments(moments: np.ndarray) -> np.ndarray:
    """Validate a ``moments[N, S, 5]`` array (float64, finite, counts >= 0); return it."""
    m = np.asarray(moments, dtype=float)
    if m.ndim != 3 or m.shape[2] != 5 or m.shape[0] < 1 or m.shape[1] < 1:
        raise DataError(f"moments must have shape (rows, blocks, 5) (got {m.shape})")
    if not np.isfinite(m).all():
        raise DataError("moments contain NaN or inf (NaN returns are skipped when the moments are built)")
    if (m[..., 0] < 0).any():
        raise DataError("moments have a negative period count")
    return m


def merge_blocks(moments: np.ndarray, n_blocks: int) -> np.ndarray:
    """Merge S fine blocks into ``n_blocks`` contiguous groups of S / n_blocks blocks.

    Lets a sweep store fine blocks once and run CSCV with fewer. S must be a multiple of
    ``n_blocks`` (equal groups keep the blocks' relative lengths).
    """
    m = check_moments(moments)
    s = m.shape[1]
    if n_blocks < 1 or s % n_blocks:
        raise ConfigError(f"blocks: {n_blocks} does not divide the {s} blocks of the moments")
    if n_blocks == s:
        return m
    return m.reshape(m.shape[0], n_blocks, s // n_blocks, 5).sum(axis=2)


@dataclass(frozen=True)
class MomentStats:
    """Per-row statistics of pooled blocks (arrays of shape ``moments.shape[:-2]``)."""

    count: np.ndarray
    mean: np.ndarray
    std: np.ndarray  # sample std, ddof = 1
    skew: np.ndarray  # m3 / m2^1.5
    kurt: np.ndarray  # m4 / m2^2, non-excess
    sharpe: np.ndarray  # per period, mean / std


def moments_stats(moments: np.ndarray) -> MomentStats:
    """Mean, std, skewness, kurtosis and Sharpe of the union of the given blocks.

    ``moments`` has shape (..., S, 5); the S blocks (axis -2) are pooled, so pass a subset
    such as ``moments[:, [0, 3, 5]]`` for a union of blocks, or ``m[:, None, :]`` for sums
    that are already pooled. Exact up to rounding; conventions in the module docstring.
    """
    m = np.asarray(moments, dtype=float)
    if m.ndim < 2 or m.shape[-1] != 5:
        raise DataError(f"moments must have shape (..., blocks, 5) (got {m.shape})")
    n, s1, s2, s3, s4 = np.moveaxis(m.sum(axis=-2), -1, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = s1 / n
        ss = s2 - s1 * mu  # sum of squared deviations
        zero = ss <= _ZERO_VAR_RTOL * s2
        m2 = ss / n
        m3 = s3 / n - 3.0 * mu * s2 / n + 2.0 * mu**3
        m4 = s4 / n - 4.0 * mu * s3 / n + 6.0 * mu * mu * s2 / n - 3.0 * mu**4
        std = np.sqrt(np.where(zero, 0.0, ss / (n - 1)))
        flat = zero & (s2 == 0)  # every return exactly 0
        sr = np.where(zero, np.where(flat, 0.0, np.nan), mu / std)
        skew = np.where(zero, np.where(flat, 0.0, np.nan), m3 / m2**1.5)
        kurt = np.where(zero, np.where(flat, 3.0, np.nan), m4 / (m2 * m2))
    few = n < 2
    return MomentStats(
        count=n,
        mean=np.where(n > 0, mu, np.nan),
        std=np.where(few, np.nan, std),
        skew=np.where(few, np.nan, skew),
        kurt=np.where(few, np.nan, kurt),
        sharpe=np.where(few, np.nan, sr),
    )


def _sharpe_from_sums(n: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """Per-period Sharpe from (count, sum, sum of squares); same rules as moments_stats."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = s1 / n
        ss = s2 - s1 * mu
        sr = mu / np.sqrt(ss / (n - 1))
    zero = ss <= _ZERO_VAR_RTOL * s2
    sr = np.where(zero, np.where(s2 == 0, 0.0, np.nan), sr)
    return np.where(n < 2, np.nan, sr)


# --------------------------------------------------------------------------- deflated Sharpe
@dataclass(frozen=True)
class DeflatedSharpe:
    """PSR and DSR of one row of a sweep (all Sharpe ratios per period)."""

    row: int
    sharpe: float
    n_obs: int
    skew: float
    kurt: float
    psr: float  # PSR(0)
    dsr: float  # PSR(expected_max)
    expected_max: float
    n_trials: float  # may be an effective (real) number of independent trials
    trial_variance: float  # variance (ddof = 1) of the rows' Sharpe ratios


def deflated_sharpe(moments: np.ndarray, n_trials: float | None = None, row: int | None = None) -> DeflatedSharpe:
    """Deflated Sharpe ratio of the best row (or ``row``) of a sweep, from block moments.

    All blocks of each row are pooled. V is the sample variance (ddof = 1) of the rows'
    Sharpe ratios where defined (0 with one such row). ``n_trials`` defaults to the number
    of rows with a defined Sharpe; pass a smaller effective number when rows are strongly
    correlated (the default is then conservative). The best row is the highest Sharpe,
    ties to the lowest index. N = 1 gives DSR = PSR(0); n_obs < 3 gives NaN PSR and DSR.
    Raises DataError when no row has a defined Sharpe.
    """
    st = moments_stats(check_moments(moments))
    defined = np.isfinite(st.sharpe)
    if not defined.any():
        raise DataError("no row has a defined Sharpe ratio (every row has < 2 periods or a constant non-zero return)")
    if row is None:
        row = int(np.argmax(np.where(defined, st.sharpe, -np.inf)))  # first maximum: lowest index
    elif not 0 <= row < st.sharpe.shape[0]:
        raise DataError(f"row {row} out of range for {st.sharpe.shape[0]} rows")
    srs = st.sharpe[defined]
    n_tr = float(defined.sum()) if n_trials is None else float(n_trials)
    var = float(np.var(srs, ddof=1)) if srs.size >= 2 else 0.0
    emax = expected_max_sharpe(n_tr, var)
    sr, n, g3, g4 = (float(a[row]) for a in (st.sharpe, st.count, st.skew, st.kurt))
    return DeflatedSharpe(
        row=row,
        sharpe=sr,
        n_obs=int(n),
        skew=g3,
        kurt=g4,
        psr=probabilistic_sharpe(sr, n, g3, g4, 0.0),
        dsr=probabilistic_sharpe(sr, n, g3, g4, emax),
        expected_max=emax,
        n_trials=n_tr,
        trial_variance=var,
    )


# --------------------------------------------------------------------------- PBO by CSCV
@dataclass(frozen=True)
class PBOResult:
    """CSCV outcome. Arrays have one entry per split, in the order of
    ``itertools.combinations(range(S), S // 2)`` (the in-sample blocks); Sharpe per period."""

    pbo: float  # share of valid splits with logit <= 0
    pbo_untied: float  # the same with the chosen row ranked above every row level with it out of sample
    logits: np.ndarray  # lambda = ln(omega / (1 - omega)); NaN for a split without a defined IS Sharpe
    omega: np.ndarray  # relative OOS rank of the IS winner, rank / (N + 1)
    chosen: np.ndarray  # row chosen in sample (-1 where none)
    is_sharpe: np.ndarray  # chosen row's in-sample Sharpe
    oos_sharpe: np.ndarray  # chosen row's out-of-sample Sharpe
    slope: float  # OLS fit oos_sharpe = intercept + slope * is_sharpe
    intercept: float
    prob_oos_loss: float  # share of splits where the chosen row's OOS Sharpe < 0
    n_splits: int
    n_valid: int
    n_blocks: int
    n_rows: int


def cscv_splits(n_blocks: int) -> np.ndarray:
    """In-sample block sets of CSCV: (C(S, S/2), S/2) ints in itertools.combinations order."""
    _check_cscv_blocks(n_blocks)
    return np.array(list(itertools.combinations(range(n_blocks), n_blocks // 2)), dtype=np.int64)


def _check_cscv_blocks(s: int) -> None:
    if s < 2 or s % 2 or s > MAX_CSCV_BLOCKS:
        raise ConfigError(f"blocks: CSCV needs an even number of blocks in [2, {MAX_CSCV_BLOCKS}] (got {s})")


def _subset_sums(blocks: np.ndarray) -> np.ndarray:
    """All 2^h subset sums of h blocks: (2^h, ...) with entry ``mask`` = sum of its blocks.

    Built by adding the highest block last, so every subset is summed in ascending block
    order and identically for every row (identical rows give bit-identical Sharpes: ties
    are exact, not rounding luck).
    """
    h = blocks.shape[0]
    out = np.zeros((1 << h,) + blocks.shape[1:])
    for j in range(h):
        out[1 << j : 2 << j] = out[: 1 << j] + blocks[j]
    return out


def _choose_and_rank(is_sr: np.ndarray, oos_sr: np.ndarray) -> tuple[np.ndarray, ...]:
    """For (P, N) IS/OOS Sharpes: chosen row, its IS/OOS Sharpe, omega (NaN rows last) and
    omega with the chosen row above every row level with it (how much ties moved the rank)."""
    p, n = is_sr.shape
    isv = np.where(np.isnan(is_sr), -np.inf, is_sr)
    best = np.argmax(isv, axis=1)  # ties: the lowest row index wins
    idx = np.arange(p)
    valid = np.isfinite(isv[idx, best])
    oosv = np.where(np.isnan(oos_sr), -np.inf, oos_sr)
    v = oosv[idx, best][:, None]
    lower = (oosv < v).sum(axis=1)
    ties = (oosv == v).sum(axis=1) - 1  # other rows level with the chosen one
    omega = (1.0 + lower + 0.5 * ties) / (n + 1.0)  # mid-rank, 1 = worst
    omega_top = (1.0 + lower + ties) / (n + 1.0)
    return (
        np.where(valid, best, -1),
        np.where(valid, is_sr[idx, best], np.nan),
        np.where(valid, oos_sr[idx, best], np.nan),
        np.where(valid, omega, np.nan),
        np.where(valid, omega_top, np.nan),
    )


def pbo_cscv(moments: np.ndarray, chunk: int | None = None) -> PBOResult:
    """Probability of backtest overfitting by CSCV from block moments ``[N, S, 5]``.

    The S blocks are the CSCV partition (S even, 2..20; use :func:`merge_blocks` to use
    fewer). For each of the C(S, S/2) in-sample block sets, the out-of-sample set is the
    complement; the row with the best IS Sharpe is chosen and its OOS rank among the N rows
    gives omega = rank / (N + 1) and lambda = ln(omega / (1 - omega)). PBO = share of
    lambda <= 0 (the IS winner at or below the OOS median).

    Ties, deterministic: in sample the lowest row index wins; out of sample rows level
    with the chosen one count half (mid-rank), so N identical rows give lambda = 0. Rows
    with an undefined (NaN) Sharpe are never chosen and rank below all others; a split in
    which no row has a defined IS Sharpe gets lambda NaN and is left out of PBO.

    Vectorised: IS and OOS sums come from precomputed subset sums of the two halves of
    the blocks, and each split is evaluated together with its complement. ``chunk`` is
    the number of split pairs per batch (default keeps each batch array near 65k values).
    """
    m = check_moments(moments)
    n_rows, s = m.shape[0], m.shape[1]
    _check_cscv_blocks(s)
    if n_rows < 2:
        raise DataError(f"PBO needs at least 2 rows (got {n_rows})")
    split = _SplitIndex.of(s)
    sums = m[:, :, :3].transpose(2, 1, 0)  # (3, S, N): count, sum r, sum r^2
    low = np.stack([_subset_sums(sums[c, :split.h]) for c in range(3)])  # (3, 2^h, N)
    high = np.stack([_subset_sums(sums[c, split.h:]) for c in range(3)])
    chosen, is_out, oos_out, omega, omega_top = _evaluate_splits(
        split, low, high, chunk if chunk is not None else max(1, (1 << 16) // n_rows))
    with np.errstate(divide="ignore"):
        logits = np.log(omega / (1.0 - omega))
        logits_top = np.log(omega_top / (1.0 - omega_top))
    valid = np.isfinite(logits)
    n_valid = int(valid.sum())
    slope, intercept, p_loss = _degradation(is_out, oos_out)
    return PBOResult(
        pbo=float(np.mean(logits[valid] <= 0)) if n_valid else math.nan,
        pbo_untied=float(np.mean(logits_top[valid] <= 0)) if n_valid else math.nan,
        logits=logits, omega=omega, chosen=chosen, is_sharpe=is_out, oos_sharpe=oos_out,
        slope=slope, intercept=intercept, prob_oos_loss=p_loss,
        n_splits=int(split.n_splits), n_valid=n_valid, n_blocks=int(s), n_rows=int(n_rows),
    )


@dataclass(frozen=True)
class _SplitIndex:
    """The CSCV splits of S blocks as subset codes of the two block halves: split k's
    in-sample blocks are ``lo[k]`` (a bit per block of the first half) and ``hi[k]`` (second
    half); ``comp[k]`` is the split whose in-sample set is k's out-of-sample set; ``first``
    the splits holding block 0 in sample (their complements are all the others)."""

    h: int
    full: int
    n_splits: int
    lo: np.ndarray
    hi: np.ndarray
    comp: np.ndarray
    first: np.ndarray

    @classmethod
    def of(cls, s: int) -> "_SplitIndex":
        h = s // 2
        full = (1 << h) - 1
        combos = cscv_splits(s)
        codes = ((1 << np.arange(s))[combos]).sum(axis=1)
        order = np.argsort(codes)
        comp_codes = ((1 << s) - 1) ^ codes
        return cls(h=h, full=full, n_splits=combos.shape[0], lo=codes & full, hi=codes >> h,
                   comp=order[np.searchsorted(codes[order], comp_codes)],
                   first=np.flatnonzero(combos[:, 0] == 0))


def _evaluate_splits(split: _SplitIndex, low: np.ndarray, high: np.ndarray,
                     chunk: int) -> tuple[np.ndarray, ...]:
    """Chosen row, its IS and OOS Sharpe, omega and omega with ties against it, for every
    split; each split is evaluated together with its complement, ``chunk`` pairs at a time."""
    n = split.n_splits
    out = (np.full(n, -1, dtype=np.int64), np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan),
           np.full(n, np.nan))
    full = split.full
    for start in range(0, split.first.size, chunk):
        k = split.first[start : start + chunk]
        a = [low[c, split.lo[k]] + high[c, split.hi[k]] for c in range(3)]
        b = [low[c, full ^ split.lo[k]] + high[c, full ^ split.hi[k]] for c in range(3)]
        sr_a = _sharpe_from_sums(*a)
        sr_b = _sharpe_from_sums(*b)
        for ins, ranked in ((k, _choose_and_rank(sr_a, sr_b)), (split.comp[k], _choose_and_rank(sr_b, sr_a))):
            for arr, values in zip(out, ranked):
                arr[ins] = values
    return out


def _degradation(is_sr: np.ndarray, oos_sr: np.ndarray) -> tuple[float, float, float]:
    """OLS slope/intercept of OOS on IS Sharpe, and P(OOS Sharpe < 0), over defined pairs."""
    ok = np.isfinite(is_sr) & np.isfinite(oos_sr)
    if not ok.any():
        return math.nan, math.nan, math.nan
    x, y = is_sr[ok], oos_sr[ok]
    p_loss = float(np.mean(y < 0))
    dx = x - x.mean()
    sxx = float(dx @ dx)
    if ok.sum() < 2 or sxx <= 1e-300:  # the same IS Sharpe in every split: no slope to fit
        return math.nan, math.nan, p_loss
    slope = float(dx @ (y - y.mean())) / sxx
    return slope, float(y.mean() - slope * x.mean()), p_loss


# --------------------------------------------------------------------------- rows that count
@dataclass(frozen=True)
class RowGroups:
    """Which rows of a sweep are candidates: flat rows and duplicates are not trials.

    ``flat``: every return exactly 0 (the row never held a position). ``first``: per row,
    the lowest row with bit-identical block moments (itself when unique); identical
    moments in every block mean the same returns, i.e. the same trades. ``trading``: the
    distinct rows that trade (one per group, the lowest index), in row order.
    """

    flat: np.ndarray
    first: np.ndarray
    trading: np.ndarray

    @property
    def n_flat(self) -> int:
        """Rows that never traded."""
        return int(self.flat.sum())

    @property
    def n_duplicates(self) -> int:
        """Rows that trade but repeat an earlier row's returns exactly."""
        return int((~self.flat).sum()) - int(self.trading.size)


def row_groups(moments: np.ndarray) -> RowGroups:
    """Flat rows, duplicate groups and the distinct trading rows of ``moments[N, S, 5]``."""
    m = check_moments(moments)
    flat = m[:, :, 2].sum(axis=1) == 0.0  # sum of r^2: every return exactly 0
    _, first_idx, inverse = np.unique(m.reshape(m.shape[0], -1), axis=0, return_index=True, return_inverse=True)
    first = first_idx[np.ravel(inverse)]
    trading = np.flatnonzero((first == np.arange(m.shape[0])) & ~flat)
    return RowGroups(flat=flat, first=first.astype(np.int64), trading=trading.astype(np.int64))


def effective_trials(moments: np.ndarray) -> tuple[float, float]:
    """Effective number of independent trials among the rows of ``moments[N, S, 5]``, and the
    average correlation it comes from: ``N_eff = rho + (1 - rho) N``.

    rho is the mean pairwise correlation of the rows' per-block mean returns (the finest
    return series the sweep keeps; block sums of returns keep the correlation of the
    returns they add up), clipped to [0, 1]: N identical rows count once, N uncorrelated
    rows N times. Rows whose block means do not vary are left out of rho. One row: (1, nan).
    """
    m = check_moments(moments)
    n = m.shape[0]
    if n < 2:
        return float(n), math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        means = m[:, :, 1] / m[:, :, 0]
    means = np.where(np.isfinite(means), means, 0.0)
    dev = means - means.mean(axis=1, keepdims=True)
    norm = np.sqrt((dev * dev).sum(axis=1))
    ok = norm > 0
    k = int(ok.sum())
    if k < 2:
        return float(n), math.nan
    z = dev[ok] / norm[ok, None]
    total = z.sum(axis=0)
    # mean off-diagonal correlation without forming the k x k matrix: (|sum z|^2 - k) / (k (k - 1))
    rho = float((total @ total - k) / (k * (k - 1)))
    rho_c = min(max(rho, 0.0), 1.0)
    return rho_c + (1.0 - rho_c) * n, rho


@dataclass(frozen=True)
class FoldCheck:
    """Walk-forward over F contiguous folds of whole blocks: fold k's best row in sample
    (highest Sharpe) scored on fold k + 1. Sharpe ratios per period."""

    steps: int
    oos_sharpe: tuple[float, ...]

    @property
    def positive(self) -> int:
        """Steps whose out-of-sample Sharpe is above 0."""
        return sum(1 for v in self.oos_sharpe if v > 0)


def fold_check(moments: np.ndarray, folds: int) -> FoldCheck:
    """Walk-forward of the rows of ``moments[N, S, 5]`` over ``folds`` folds (S divisible)."""
    m = check_moments(moments)
    s = m.shape[1]
    if folds < 2 or s % folds:
        return FoldCheck(steps=0, oos_sharpe=())
    per = s // folds
    sr = np.stack([moments_stats(m[:, f * per:(f + 1) * per]).sharpe for f in range(folds)], axis=1)
    out = []
    for k in range(folds - 1):
        ins = np.where(np.isfinite(sr[:, k]), sr[:, k], -np.inf)
        if np.isfinite(ins).any():
            out.append(float(sr[int(np.argmax(ins)), k + 1]))
    return FoldCheck(steps=len(out), oos_sharpe=tuple(out))


# --------------------------------------------------------------------------- report
VERDICT_CLASSES = {
    "no_trades": "no row traded",
    "no_edge": "no row that trades beats staying flat",
    "too_short": "too few periods to test",
    "edge": "beats luck, ranking holds",
    "fragile": "beats luck, ranking fragile",
    "unstable": "beats luck, ranking does not hold",
    "inconclusive": "ranking holds, Sharpe above 0 but within luck",
    "luck": "luck",
}


@dataclass(frozen=True)
class OverfitReport:
    """Overfitting statistics of a sweep's best row, and a verdict a user reads.

    The statistics count the distinct rows that trade (:func:`row_groups`): rows that never
    traded are flat, never "best"; rows with the same returns as another count once. The
    DSR deflates by the effective number of independent trials (:func:`effective_trials`)
    and the variance of the distinct trading rows' Sharpe ratios. Sharpe ratios here are
    annualised (per-period x sqrt(periods_per_year)) except ``trial_sharpe_variance``, the
    variance of the per-period Sharpe ratios. ``best_row`` is -1 and the statistics NaN when
    no row trades; ``pbo`` and its fields are NaN / empty with fewer than 2 distinct trading
    rows. ``verdict_class`` is a key of :data:`VERDICT_CLASSES`.
    """

    best_row: int
    best_name: str | None
    sharpe: float
    psr: float
    dsr: float
    expected_max_sharpe: float
    n_trials: float  # effective number of independent trials
    n_rows: int
    n_flat: int
    n_duplicates: int
    n_trading: int  # distinct rows that trade
    avg_correlation: float  # of the distinct trading rows' block returns (unclipped)
    trial_sharpe_variance: float
    n_obs: int
    skew: float
    kurtosis: float
    pbo: float
    pbo_untied: float  # PBO with ties broken in the chosen row's favour
    blocks: int
    n_splits: int  # splits that produced a logit (all C(S, S/2) unless rows lack a Sharpe)
    logits: tuple[float, ...]  # lambda per split
    is_sharpe: tuple[float, ...]  # per split: the IS winner's IS Sharpe
    oos_sharpe: tuple[float, ...]  # ... and its OOS Sharpe
    degradation_slope: float
    degradation_intercept: float
    prob_oos_loss: float
    folds: int
    fold_oos_sharpe: tuple[float, ...]  # walk-forward: each step's out-of-sample Sharpe (annualised)
    periods_per_year: float
    verdict_class: str
    verdict: str
    cautions: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (NaN and inf become None)."""
        return jsonable(asdict(self))


def _check_periods_per_year(ppy: float) -> None:
    if isinstance(ppy, bool) or not isinstance(ppy, (int, float)) or not math.isfinite(ppy) or ppy <= 0:
        raise ConfigError(f"periods_per_year must be a positive number (got {ppy!r})")


def overfitting_report(
    moments: np.ndarray,
    periods_per_year: float,
    names: Sequence[str] | None = None,
    blocks: int = 16,
    folds: int = 1,
) -> OverfitReport:
    """DSR, PBO and walk-forward of a sweep from its block moments ``[N, S, 5]``, with a verdict.

    ``blocks`` is the CSCV S; the moments' S must equal it or be a multiple of it (fine
    blocks are merged). ``folds`` (dividing S) adds the walk-forward sentence. ``names``
    (one per row) label the best row. Thresholds: DSR >= 0.95 is significant; PBO < 0.2
    low, 0.2-0.5 moderate, > 0.5 high.
    """
    _check_periods_per_year(periods_per_year)
    m = check_moments(moments)
    _check_cscv_blocks(blocks)
    if names is not None and len(names) != m.shape[0]:
        raise DataError(f"names has {len(names)} entries for {m.shape[0]} rows")
    groups = row_groups(m)
    ann = math.sqrt(periods_per_year)
    fields: dict[str, Any] = dict(
        n_rows=int(m.shape[0]), n_flat=groups.n_flat, n_duplicates=groups.n_duplicates,
        n_trading=int(groups.trading.size), blocks=int(blocks), folds=int(folds),
        periods_per_year=float(periods_per_year))
    fields.update(_trial_fields(m[groups.trading], groups.trading, ann, names))
    fields.update(_pbo_fields(m[groups.trading], blocks, ann))
    wf = fold_check(m[groups.trading], folds) if groups.trading.size else FoldCheck(0, ())
    fields["fold_oos_sharpe"] = tuple(v * ann for v in wf.oos_sharpe)
    cls = _verdict_class(fields)
    cautions = _cautions(fields)
    return OverfitReport(**fields, verdict_class=cls, verdict=_verdict(fields, cls), cautions=cautions)


def _trial_fields(mt: np.ndarray, rows: np.ndarray, ann: float, names: Sequence[str] | None) -> dict[str, Any]:
    """DSR fields of the distinct trading rows ``mt`` (original indices ``rows``)."""
    nan = math.nan
    empty = dict(best_row=-1, best_name=None, sharpe=nan, psr=nan, dsr=nan, expected_max_sharpe=nan, n_trials=0.0,
                 avg_correlation=nan, trial_sharpe_variance=nan, n_obs=0, skew=nan, kurtosis=nan)
    if not rows.size or not np.isfinite(moments_stats(mt).sharpe).any():
        return empty
    n_eff, rho = effective_trials(mt)
    ds = deflated_sharpe(mt, n_trials=n_eff)
    best = int(rows[ds.row])
    return dict(best_row=best, best_name=None if names is None else str(names[best]), sharpe=ds.sharpe * ann,
                psr=ds.psr, dsr=ds.dsr, expected_max_sharpe=ds.expected_max * ann, n_trials=ds.n_trials,
                avg_correlation=rho, trial_sharpe_variance=ds.trial_variance, n_obs=ds.n_obs, skew=ds.skew,
                kurtosis=ds.kurt)


def _pbo_fields(mt: np.ndarray, blocks: int, ann: float) -> dict[str, Any]:
    """PBO fields of the distinct trading rows ``mt`` (NaN / empty with fewer than 2)."""
    if mt.shape[0] < 2:
        return dict(pbo=math.nan, pbo_untied=math.nan, n_splits=0, logits=(), is_sharpe=(), oos_sharpe=(),
                    degradation_slope=math.nan, degradation_intercept=math.nan, prob_oos_loss=math.nan)
    pb = pbo_cscv(merge_blocks(mt, blocks))
    return dict(pbo=pb.pbo, pbo_untied=pb.pbo_untied, n_splits=pb.n_valid,
                logits=tuple(float(v) for v in pb.logits[np.isfinite(pb.logits)]),
                is_sharpe=tuple(float(v) * ann for v in pb.is_sharpe),
                oos_sharpe=tuple(float(v) * ann for v in pb.oos_sharpe),
                degradation_slope=pb.slope, degradation_intercept=pb.intercept * ann, prob_oos_loss=pb.prob_oos_loss)


def _pbo_level(pbo: float) -> str | None:
    if math.isnan(pbo):
        return None
    return "low" if pbo < PBO_LOW else ("moderate" if pbo <= PBO_HIGH else "high")


def _verdict_class(f: dict[str, Any]) -> str:
    """The verdict's class (:data:`VERDICT_CLASSES`) from the report's fields."""
    if f["n_trading"] == 0:
        return "no_trades"
    if not f["sharpe"] > 0:  # NaN too: no trading row with a defined Sharpe
        return "no_edge"
    if math.isnan(f["dsr"]):
        return "too_short"
    level = _pbo_level(f["pbo"])
    if f["dsr"] >= DSR_SIGNIFICANT:
        return {None: "edge", "low": "edge", "moderate": "fragile", "high": "unstable"}[level]
    # "more data" only for a Sharpe that is at least significantly above 0 before deflation and
    # whose ranking holds; a Sharpe not even distinguishable from 0 is luck whatever the PBO says
    return "inconclusive" if level == "low" and f["psr"] >= DSR_SIGNIFICANT else "luck"


def _cautions(f: dict[str, Any]) -> tuple[str, ...]:
    """Cautions beside the verdict: only when ties in CSCV moved the PBO up, by at least
    :data:`PBO_TIES_MATERIAL` or across a level (low / moderate / high)."""
    pbo, untied = f["pbo"], f["pbo_untied"]
    if math.isnan(pbo) or not pbo > untied + 1e-12:
        return ()
    if pbo - untied < PBO_TIES_MATERIAL and _pbo_level(pbo) == _pbo_level(untied):
        return ()
    return (f"Rows level with the in-sample winner out of sample raise the PBO from {untied:.2f} (ties counted in "
            f"its favour) to {pbo:.2f} (ties at the mid-rank): read part of it as 'no row stands out', not as "
            "proof of overfitting.",)


def _rows_sentence(f: dict[str, Any]) -> str:
    """Which rows the statistics count (flat rows and duplicates are not trials)."""
    parts = []
    if f["n_flat"]:
        parts.append(f"{f['n_flat']:,} of the {f['n_rows']:,} rows never traded (flat)")
    if f["n_duplicates"]:
        whose = "" if parts else f" of the {f['n_rows']:,} rows"
        parts.append(f"{f['n_duplicates']:,}{whose} repeat another row's trades exactly")
    if not parts or not f["n_trading"]:
        return ""
    if f["n_trading"] == 1:
        return " and ".join(parts) + "; the statistics count the one distinct row that trades."
    return (" and ".join(parts) + f"; the statistics count the {f['n_trading']:,} distinct rows that trade "
            f"(about {f['n_trials']:.0f} independent).")


def _verdict(f: dict[str, Any], cls: str) -> str:
    """Plain sentences, the answer first: no trades / nothing beats flat, DSR, PBO,
    walk-forward, what to do."""
    if cls == "no_trades":
        return (f"No row traded: all {f['n_rows']:,} rows stayed flat over the span, so there is no strategy to "
                "test (staying flat is all this grid does). Sweep lower centres or deadbands, or check the "
                "model's probabilities.")
    name = f["best_name"] or f"#{f['best_row']}"
    out = []
    if cls == "no_edge":
        which = (f"the best of the {f['n_trading']:,} distinct rows that trade ({name})" if f["n_trading"] > 1
                 else f"the only distinct row that trades ({name})")
        sharpe = "no defined Sharpe ratio" if math.isnan(f["sharpe"]) else f"an annualised Sharpe of {f['sharpe']:.2f}"
        out.append(f"No row that trades beats staying flat after costs: {which} has {sharpe}.")
    elif cls == "too_short":
        out.append(f"The best row ({name}) has too few periods ({f['n_obs']}) to test its Sharpe ratio.")
    else:
        out.append(_dsr_sentence(f, name))
    rows = _rows_sentence(f)
    if rows:
        out.append(rows)
    out += _pbo_sentences(f)
    wf = f["fold_oos_sharpe"]
    if wf:
        pos = sum(1 for v in wf if v > 0)
        out.append(f"Walk-forward: each fold's in-sample best row made money on the next fold in {pos} of {len(wf)} "
                   "steps.")
    out.append(_advice(cls))
    return " ".join(out)


def _dsr_sentence(f: dict[str, Any], name: str) -> str:
    sr, dsr, psr, n = f["sharpe"], f["dsr"], f["psr"], f["n_trials"]
    if n <= 1 and f["n_trading"] <= 1:
        sig = dsr >= DSR_SIGNIFICANT
        return (f"The best row ({name}) has an annualised Sharpe of {sr:.2f}, {'' if sig else 'not '}significantly "
                f"above 0 (one trial, nothing to deflate: PSR {psr:.2f} {'>=' if sig else '<'} {DSR_SIGNIFICANT}).")
    trials = f"{n:,.0f} independent random trials" if n >= 1.5 else "one random trial (its rows move together)"
    if dsr >= DSR_SIGNIFICANT:
        return (f"The best row ({name}) has an annualised Sharpe of {sr:.2f}, above what the best of {trials} "
                f"reaches by luck (about {f['expected_max_sharpe']:.2f}; DSR {dsr:.2f} >= {DSR_SIGNIFICANT}).")
    return (f"The best row ({name}) has an annualised Sharpe of {sr:.2f}, not distinguishable from the best of "
            f"{trials} (luck alone gives about {f['expected_max_sharpe']:.2f}; DSR {dsr:.2f} < {DSR_SIGNIFICANT}).")


def _pbo_sentences(f: dict[str, Any]) -> list[str]:
    pbo = f["pbo"]
    level = _pbo_level(pbo)
    if level is None:
        return []
    out = [f"PBO {pbo:.2f} ({level}): in {pbo:.0%} of the {f['n_splits']:,} splits the in-sample winner ranked at "
           f"or below the median out of sample."]
    if not math.isnan(f["prob_oos_loss"]):
        out.append(f"Out of sample the in-sample winner lost money in {f['prob_oos_loss']:.0%} of the splits.")
    return out


def _advice(cls: str) -> str:
    return {
        "no_edge": "Do not trade any row of this grid: staying flat is better.",
        "too_short": "Collect more data before trusting any row.",
        "edge": "This looks like a real edge; confirm it on bars the sweep never saw before trading it.",
        "fragile": "The edge may be real but the choice of row is fragile: prefer a region of good rows and "
                   "confirm on unseen bars.",
        "unstable": "The Sharpe beats luck, but the sweep's ranking does not hold out of sample: do not trust "
                    "this particular row.",
        "inconclusive": "The ranking holds out of sample, but the Sharpe itself is within luck: more data is needed.",
        "luck": "Treat this row as luck.",
    }[cls]
