"""Canonical OHLCV frames: load CSV / CSV.gz / Parquet, validate, report gaps.

The canonical frame has a UTC ``DatetimeIndex`` named ``timestamp`` holding the bar
OPEN time, and float64 columns ``open high low close volume``; it is sorted and unique.
Every refusal raises :class:`DataError` with one line naming the file, the problem and
where (row number in the file, 1-based after the header, or the timestamp).
Gaps are reported, never filled.

Ambiguity is refused, not guessed: two columns with the same header, two candidate time
columns, a time column that mixes values with and without a UTC offset, and timestamps that
cannot be exchange candles (before :data:`EARLIEST_CANDLE`, 2009-01-01 UTC, or opening
after the current time) - the last also catches epoch seconds read as milliseconds and
the reverse.
"""
from __future__ import annotations

import csv
import gzip
import io
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import DataError
from core.files import atomic_path, check_output_file
from core.timeframes import timeframe_seconds

COLUMNS = ("open", "high", "low", "close", "volume")
# The header write_ohlcv_csv writes: how a candle CSV that nts wrote is recognised.
CSV_HEADER = "timestamp," + ",".join(COLUMNS)
# No exchange traded before Bitcoin's first block (2009-01-03); an earlier candle is a unit
# or column mix-up, never data.
EARLIEST_CANDLE = pd.Timestamp("2009-01-01", tz="UTC")
# The one hint every refusal that repairing can fix gives, whatever command refused the file.
FIX_HINT = "nts data check FILE --fix --output FIXED.csv writes a sorted copy without exact duplicates"

# Accepted spellings (compared case-insensitively, spaces/underscores ignored).
_TIME_ALIASES = ("timestamp", "time", "date", "datetime", "opentime", "open_time", "ts", "t")
_COL_ALIASES = {
    "open": ("open", "o", "openprice"),
    "high": ("high", "h", "highprice"),
    "low": ("low", "l", "lowprice"),
    "close": ("close", "c", "closeprice"),
    "volume": ("volume", "v", "vol", "basevolume"),
}


def _norm(name: str) -> str:
    return str(name).strip().lower().replace("_", "").replace(" ", "")


@dataclass
class Gap:
    """A run of missing bars: ``after`` is the last bar before it, ``missing`` the bar count."""

    after: pd.Timestamp
    before: pd.Timestamp
    missing: int


@dataclass
class DataReport:
    """What loading found: mapping used, span, gaps, fixes applied."""

    source: str
    rows: int = 0
    start: pd.Timestamp | None = None
    end: pd.Timestamp | None = None
    timeframe: str = "15m"
    column_mapping: dict[str, str] = field(default_factory=dict)
    time_unit: str = ""
    gaps: list[Gap] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)
    zero_volume_bars: int = 0

    @property
    def missing_bars(self) -> int:
        return sum(g.missing for g in self.gaps)

    @property
    def expected_bars(self) -> int:
        return self.rows + self.missing_bars

    def summary_lines(self) -> list[str]:
        """Human-readable report, one fact per line."""
        lines = [
            f"file:      {self.source}",
            f"rows:      {self.rows:,}",
            f"span:      {self.start} -> {self.end} ({self.timeframe} bars)",
        ]
        if self.column_mapping:
            mapped = ", ".join(f"{src}->{dst}" for src, dst in self.column_mapping.items() if src != dst)
            lines.append(f"columns:   {mapped or 'canonical names'}; time as {self.time_unit}")
        cover = 100.0 * self.rows / self.expected_bars if self.expected_bars else 100.0
        lines.append(f"coverage:  {self.rows:,} of {self.expected_bars:,} expected bars ({cover:.1f}%)")
        if self.gaps:
            largest = max(self.gaps, key=lambda g: g.missing)
            lines.append(
                f"gaps:      {len(self.gaps)} ({self.missing_bars:,} missing bars); largest {largest.missing:,} bars "
                f"after {largest.after}"
            )
            for g in self.gaps[:20]:
                lines.append(f"  - {g.missing:,} bars missing between {g.after} and {g.before}")
            if len(self.gaps) > 20:
                lines.append(f"  ... {len(self.gaps) - 20} more")
        else:
            lines.append("gaps:      none")
        if self.zero_volume_bars:
            lines.append(f"note:      {self.zero_volume_bars} bars with zero volume (kept as published)")
        for fix in self.fixes:
            lines.append(f"fixed:     {fix}")
        return lines


# What a damaged or foreign file raises while it is read: I/O and permission errors, a gzip
# stream that is corrupt (zlib.error), cut short (EOFError) or not gzip (BadGzipFile, an
# OSError), text that is not UTF-8 (a ValueError), pandas/pyarrow parser errors (ValueError
# subclasses), csv.Error.
_READ_ERRORS = (OSError, ValueError, EOFError, zlib.error, csv.Error)


def _cannot_read(path: Path, exc: BaseException) -> DataError:
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    if isinstance(exc, PermissionError):
        return DataError(f"{path}: cannot read (permission denied)")
    if isinstance(exc, IsADirectoryError):
        return DataError(f"{path}: is a folder, not a candle file")
    return DataError(f"{path}: cannot read ({exc.__class__.__name__}: {first})")


def _open_text(path: Path):
    """The file as UTF-8 text, decompressed when the name ends in .gz."""
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _csv_header(path: Path) -> list[str]:
    """The header row as written (pandas renames a repeated header to 'close.1' silently)."""
    with _open_text(path) as fh:
        return next(csv.reader(fh), [])


def _refuse_duplicate_headers(names: list, source: str) -> None:
    if len(names) == 1:
        for sep, what in ((";", "semicolon"), ("\t", "tab")):
            if sep in str(names[0]):
                raise DataError(f"{source}: the header is one column {str(names[0])[:60]!r}: this file looks "
                                f"{what}-separated; nts reads comma-separated CSV")
    seen: dict[str, int] = {}
    for pos, name in enumerate(names):
        key = str(name).strip()
        if key in seen and key:
            raise DataError(f"{source}: column header '{key}' appears twice (columns {seen[key] + 1} and {pos + 1}); "
                            "keep one")
        seen[key] = pos


def _read_table(path: Path) -> pd.DataFrame:
    name = path.name.lower()
    source = str(path)
    try:
        if name.endswith(".parquet") or name.endswith(".pq"):
            table = pd.read_parquet(path)
            _refuse_duplicate_headers(list(table.columns), source)
            return table
        if name.endswith(".csv") or name.endswith(".csv.gz") or name.endswith(".txt"):
            header = _csv_header(path)
            _refuse_duplicate_headers(header, source)
            # Read as text first: type problems are reported by us, with row numbers.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                table = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False)
            if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):
                # pandas dropped fields beyond the header: fine when they are empty (a trailing
                # comma on every row), data loss otherwise
                _refuse_extra_fields(path, len(header))
            return table
    except DataError:
        raise
    except _READ_ERRORS as exc:
        raise _cannot_read(path, exc) from None
    raise DataError(f"{path}: unsupported file type (expected .csv, .csv.gz or .parquet)")


def _refuse_extra_fields(path: Path, n_header: int) -> None:
    with _open_text(path) as fh:
        rows = csv.reader(fh)
        next(rows, None)
        for number, row in enumerate(rows, start=1):
            extra = [c for c in row[n_header:] if c.strip()]
            if extra:
                raise DataError(f"{path}: row {number} has {len(row)} fields but the header {n_header}: its values "
                                f"beyond the header ({extra[0][:40]!r}, ...) would be lost; fix the header or the "
                                "separator")


def is_nts_candle_csv(path: str | Path) -> bool:
    """True when ``path`` is a candle CSV as :func:`write_ohlcv_csv` writes it (its header),
    i.e. a file nts may resume or replace; False for anything else, unreadable files included."""
    try:
        with _open_text(Path(path)) as fh:
            return fh.readline(len(CSV_HEADER) + 3).rstrip("\r\n") == CSV_HEADER
    except _READ_ERRORS:
        return False


def _map_columns(raw: pd.DataFrame, source: str) -> tuple[pd.DataFrame, dict[str, str], str | None]:
    by_norm: dict[str, str] = {}
    for col in raw.columns:
        if _norm(col) in by_norm:
            raise DataError(f"{source}: columns {by_norm[_norm(col)]!r} and {col!r} are ambiguous (same field)")
        by_norm[_norm(col)] = col
    mapping: dict[str, str] = {}
    times = list(dict.fromkeys(by_norm[_norm(a)] for a in _TIME_ALIASES if _norm(a) in by_norm))
    if len(times) > 1:
        raise DataError(f"{source}: columns {', '.join(map(repr, times))} could each be the time column; "
                        "keep one (or rename the others)")
    time_col = times[0] if times else None
    missing = []
    for canon, aliases in _COL_ALIASES.items():
        found = [by_norm[_norm(a)] for a in aliases if _norm(a) in by_norm]
        if not found:
            missing.append(canon)
        elif len(found) > 1:
            raise DataError(f"{source}: columns {', '.join(map(repr, found))} all look like '{canon}'; keep one")
        else:
            mapping[str(found[0])] = canon
    if missing:
        raise DataError(
            f"{source}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, raw.columns))}"
        )
    if time_col is not None:
        mapping[str(time_col)] = "timestamp"
    return raw, mapping, time_col


def _parse_time(values: pd.Series, source: str) -> tuple[pd.DatetimeIndex, str]:
    if pd.api.types.is_datetime64_any_dtype(values):
        idx = pd.DatetimeIndex(values)
        idx = idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
        return idx, "datetime"
    text = values.astype(str).str.strip()
    numeric = pd.to_numeric(text, errors="coerce")
    if numeric.notna().all():
        arr = numeric.to_numpy(dtype="float64")
        if not np.all(np.isfinite(arr)):
            raise DataError(f"{source}: non-finite timestamp")
        top = np.nanmax(np.abs(arr)) if len(arr) else 0
        if top < 1e11:
            unit = "s"
        elif top < 1e14:
            unit = "ms"
        else:
            raise DataError(f"{source}: timestamps too large for epoch s or ms (max {top:.0f})")
        idx = pd.DatetimeIndex(pd.to_datetime(arr * (1000 if unit == "s" else 1), unit="ms", utc=True))
        return idx.round("ms"), f"epoch {unit}"
    looks_iso = text.str.contains(r"\d{4}-\d{2}-\d{2}", regex=True)
    # "2024-01-01 00:00" beside "2024-01-01 02:00+02:00": is the first UTC or local time?
    has_offset = text.str.contains(r"(?:Z|[+-]\d{2}:?\d{2})$", regex=True) & looks_iso
    if has_offset.any() and not has_offset[looks_iso].all():
        pos = int(np.flatnonzero((looks_iso & ~has_offset).to_numpy())[0])
        first = int(np.flatnonzero(has_offset.to_numpy())[0])
        raise DataError(f"{source}: timestamp {text.iloc[pos]!r} at row {pos + 1} has no UTC offset while "
                        f"{text.iloc[first]!r} at row {first + 1} has one; give every row an offset (or none)")
    # Mostly numbers (or mostly dates): the odd ones out are the bad cells.
    bad = numeric.isna() if numeric.notna().sum() >= looks_iso.sum() else ~looks_iso
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{source}: unparseable timestamp {text.iloc[pos]!r} at row {pos + 1}")
    try:
        idx = pd.DatetimeIndex(pd.to_datetime(text, utc=True, format="ISO8601"))
    except (ValueError, TypeError) as exc:
        # name the first cell that does not parse on its own (2024-13-45, 25:00, ...)
        for pos, cell in enumerate(text):
            try:
                pd.Timestamp(cell)
            except (ValueError, TypeError, OverflowError):
                raise DataError(f"{source}: unparseable timestamp {cell!r} at row {pos + 1}") from None
        raise DataError(f"{source}: unparseable ISO timestamp ({str(exc).splitlines()[0]})") from exc
    return idx, "ISO text"


def read_ohlcv(path: str | Path) -> tuple[pd.DataFrame, DataReport]:
    """Read a file into a frame with canonical column names, in file order, unvalidated values."""
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise DataError(f"{source}: file not found")
    raw = _read_table(path)
    report = DataReport(source=source)
    if raw.index.name is not None and _norm(raw.index.name) in {_norm(a) for a in _TIME_ALIASES}:
        raw = raw.reset_index()
    raw, mapping, time_col = _map_columns(raw, source)
    if time_col is None:
        raise DataError(f"{source}: no timestamp column (looked for {', '.join(_TIME_ALIASES)})")
    report.column_mapping = mapping
    if len(raw) == 0:
        raise DataError(f"{source}: no rows")
    try:
        idx, unit = _parse_time(raw[time_col], source)
        idx = idx.as_unit("ns")  # the canonical resolution; out of range beyond year 2262
    except (pd.errors.OutOfBoundsDatetime, OverflowError) as exc:
        raise DataError(f"{source}: timestamp out of range ({str(exc).splitlines()[0]})") from None
    report.time_unit = unit
    out = {}
    for src, canon in mapping.items():
        if canon == "timestamp":
            continue
        col = raw[src]
        if col.dtype == object or pd.api.types.is_string_dtype(col):
            num = pd.to_numeric(col.astype(str).str.strip(), errors="coerce")
            blank = col.astype(str).str.strip().str.lower().isin(["", "nan", "null", "none", "inf", "-inf"])
            bad = num.isna() & ~blank
            if bad.any():
                pos = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(f"{source}: non-numeric value {col.iloc[pos]!r} in column '{canon}' at row {pos + 1}")
            num = pd.to_numeric(col.astype(str).str.strip().replace({"": "nan", "null": "nan", "none": "nan"}),
                                errors="coerce")
        else:
            if not pd.api.types.is_numeric_dtype(col):
                raise DataError(f"{source}: column '{canon}' is not numeric ({col.dtype})")
            num = col
        out[canon] = num.to_numpy(dtype="float64")
    frame = pd.DataFrame(out, index=idx)[list(COLUMNS)]
    frame.index.name = "timestamp"
    return frame, report


def _where(frame: pd.DataFrame, mask: np.ndarray) -> str:
    pos = int(np.flatnonzero(mask)[0])
    return f"row {pos + 1} ({frame.index[pos]})"


def validate_ohlcv(
    frame: pd.DataFrame,
    timeframe: str = "15m",
    fix: bool = False,
    report: DataReport | None = None,
) -> tuple[pd.DataFrame, DataReport]:
    """Validate a canonical-column frame; return the cleaned frame and the report.

    ``fix`` sorts and drops exact duplicate rows (reported); duplicates that disagree in
    values are refused even then, because picking one would silently alter data.
    """
    report = report or DataReport(source="<frame>")
    report.timeframe = timeframe
    src = report.source
    frame = _canonical_frame(frame, src)
    _check_values(frame, src)
    # first among the time checks: an impossible time explains any disorder that follows from it
    _check_possible_times(frame, src)
    frame = _drop_exact_duplicates(frame, src, fix, report)
    frame = _sort_rows(frame, src, fix, report)
    step_ns = _check_grid(frame, timeframe, src)
    report.gaps = _gaps(frame.index, step_ns)
    report.rows = len(frame)
    report.start = frame.index[0] if len(frame) else None
    report.end = frame.index[-1] if len(frame) else None
    report.zero_volume_bars = int((frame["volume"].to_numpy() == 0).sum())
    return frame, report


def _utc_ns(index: pd.DatetimeIndex) -> pd.DatetimeIndex:
    """``index`` in UTC (naive = UTC) at ns resolution: pandas 3 keeps the parsed resolution
    (ms, s, ...) and the integer arithmetic on ``asi8`` here assumes ns."""
    idx = index.tz_localize("UTC") if index.tz is None else index.tz_convert("UTC")
    return idx.as_unit("ns")


def _canonical_frame(frame: pd.DataFrame, src: str) -> pd.DataFrame:
    """The ``COLUMNS`` of ``frame`` as float64 on a UTC ns index named ``timestamp``."""
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{src}: missing column(s) {', '.join(missing)}")
    if not isinstance(frame.index, pd.DatetimeIndex):
        raise DataError(f"{src}: index must be a DatetimeIndex of bar open times")
    frame = frame[list(COLUMNS)].astype("float64")
    frame.index = _utc_ns(frame.index)
    frame.index.name = "timestamp"
    return frame


def _check_values(frame: pd.DataFrame, src: str) -> None:
    """Refuse a non-finite value, a negative volume, a non-positive price or inconsistent OHLC."""
    values = frame.to_numpy()
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{src}: {values[r, c]} in column '{COLUMNS[c]}' at row {r + 1} ({frame.index[r]})")
    o, h, l, c, v = (values[:, i] for i in range(5))
    if (v < 0).any():
        raise DataError(f"{src}: negative volume at {_where(frame, v < 0)}")
    if ((o <= 0) | (h <= 0) | (l <= 0) | (c <= 0)).any():
        raise DataError(f"{src}: non-positive price at {_where(frame, (o <= 0) | (h <= 0) | (l <= 0) | (c <= 0))}")
    if (h < l).any():
        raise DataError(f"{src}: high < low at {_where(frame, h < l)}")
    if (h < np.maximum(o, c)).any():
        raise DataError(f"{src}: high < max(open, close) at {_where(frame, h < np.maximum(o, c))}")
    if (l > np.minimum(o, c)).any():
        raise DataError(f"{src}: low > min(open, close) at {_where(frame, l > np.minimum(o, c))}")


def _check_possible_times(frame: pd.DataFrame, src: str) -> None:
    """Refuse a bar that opens before :data:`EARLIEST_CANDLE` or after now: not an exchange
    candle (a wrong time unit or column)."""
    ts = frame.index.asi8  # ns
    if not len(ts):
        return
    now = pd.Timestamp.now(tz="UTC")
    early = ts < EARLIEST_CANDLE.value
    if early.any():
        raise DataError(f"{src}: timestamp {frame.index[early][0]} at {_where(frame, early)} is before "
                        f"{EARLIEST_CANDLE:%Y-%m-%d}: not an exchange candle (epoch seconds read as "
                        "milliseconds, or the wrong time column?)")
    late = ts > now.value
    if late.any():
        raise DataError(f"{src}: timestamp {frame.index[late][0]} at {_where(frame, late)} is in the future "
                        f"(now {now:%Y-%m-%d %H:%M} UTC): not an exchange candle (wrong time unit or column?)")


def _drop_exact_duplicates(frame: pd.DataFrame, src: str, fix: bool, report: DataReport) -> pd.DataFrame:
    """Refuse repeated timestamps; with ``fix`` drop the exact duplicate rows (reported) but
    still refuse duplicates that disagree in values."""
    dup = frame.index.duplicated(keep="first")
    if not dup.any():
        return frame
    if not fix:
        raise DataError(
            f"{src}: duplicate timestamp {frame.index[dup][0]} at {_where(frame, dup)}; "
            f"{int(dup.sum())} duplicates in all ({FIX_HINT})"
        )
    full_dup = frame.reset_index().duplicated(keep="first").to_numpy()
    conflicting = dup & ~full_dup
    if conflicting.any():
        raise DataError(
            f"{src}: duplicate timestamp {frame.index[conflicting][0]} with different values at "
            f"{_where(frame, conflicting)}; refusing to choose one"
        )
    report.fixes.append(f"dropped {int(dup.sum())} exact duplicate rows (first at {frame.index[dup][0]})")
    return frame[~dup]


def _sort_rows(frame: pd.DataFrame, src: str, fix: bool, report: DataReport) -> pd.DataFrame:
    """Refuse rows out of time order; with ``fix`` sort them (stable, reported)."""
    ts = frame.index.asi8
    if len(ts) <= 1 or not (np.diff(ts) < 0).any():
        return frame
    if not fix:
        bad_pos = int(np.flatnonzero(np.diff(ts) < 0)[0]) + 1
        raise DataError(
            f"{src}: timestamps not sorted at row {bad_pos + 1} ({frame.index[bad_pos]} after "
            f"{frame.index[bad_pos - 1]}); {FIX_HINT}"
        )
    n_out = int((np.diff(ts) < 0).sum())
    frame = frame.sort_index(kind="stable")
    report.fixes.append(f"sorted {n_out} out-of-order rows")
    return frame


def _check_grid(frame: pd.DataFrame, timeframe: str, src: str) -> int:
    """Refuse a bar off the ``timeframe`` grid, or bars typically spaced wider than it;
    return the step in ns."""
    ts = frame.index.asi8
    step_ns = timeframe_seconds(timeframe) * 1_000_000_000
    off_grid = (ts % step_ns) != 0
    if off_grid.any():
        raise DataError(
            f"{src}: timestamp {frame.index[off_grid][0]} at {_where(frame, off_grid)} is not aligned to "
            f"the {timeframe} grid (wrong timeframe?)"
        )
    if len(ts) > 2:
        # Aligned but sparser than declared (e.g. 1h bars checked as 15m) would otherwise
        # pass as "every bar followed by a gap": the typical step must be the timeframe.
        typical = int(np.median(np.diff(ts)))
        if typical != step_ns:
            raise DataError(f"{src}: typical bar spacing is {pd.Timedelta(typical)}, expected {timeframe} "
                            f"(wrong timeframe?)")
    return step_ns


def _gaps(index: pd.DatetimeIndex, step_ns: int) -> list[Gap]:
    """The runs of missing bars in a sorted, unique, on-grid ``index``."""
    ts = index.asi8
    if len(ts) <= 1:
        return []
    steps = np.diff(ts)  # multiples of the step: every timestamp is on the grid
    return [Gap(after=index[pos], before=index[pos + 1], missing=int(steps[pos] // step_ns) - 1)
            for pos in np.flatnonzero(steps > step_ns)]


def checked_bars(frame: pd.DataFrame, columns: tuple[str, ...] = COLUMNS,
                 where: str = "candles") -> tuple[pd.DatetimeIndex, np.ndarray]:
    """Refuse (one DataError line) a frame that computations cannot use, else return its UTC
    ns index and a float64 array of ``columns``.

    Refused: not a DataFrame, missing columns, a non-datetime index, timestamps that are not
    strictly increasing, non-finite values, a non-positive price, a negative volume. Unlike
    :func:`validate_ohlcv` it fixes nothing and does not look at OHLC consistency or the grid:
    it guards the feature, label and scoring entry points, which also take frames built in code.
    """
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"{where}: expected a pandas DataFrame of candles, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {', '.join(missing)}")
    if not isinstance(frame.index, pd.DatetimeIndex):
        raise DataError(f"{where}: index must be a DatetimeIndex of bar open times")
    idx = _utc_ns(frame.index)
    ts = idx.asi8
    if len(ts) > 1 and (np.diff(ts) <= 0).any():
        pos = int(np.flatnonzero(np.diff(ts) <= 0)[0]) + 1
        raise DataError(f"{where}: timestamps not strictly increasing at row {pos + 1} ({idx[pos]}): "
                        "unsorted or duplicate")
    data = frame[list(columns)].to_numpy(dtype="float64")
    bad = ~np.isfinite(data)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{where}: non-finite {columns[c]} {data[r, c]} at row {r + 1} ({idx[r]})")
    # A log return of a non-positive price is NaN and would silently poison every later window.
    bad = np.zeros_like(data, dtype=bool)
    for k, col in enumerate(columns):
        bad[:, k] = data[:, k] < 0 if col == "volume" else data[:, k] <= 0
    if bad.any():
        r = int(np.flatnonzero(bad.any(axis=1))[0])
        values = " ".join(f"{col}={data[r, k]}" for k, col in enumerate(columns))
        raise DataError(f"{where}: invalid bar at row {r + 1} ({idx[r]}): {values} "
                        "(prices must be > 0, volume >= 0)")
    return idx, data


def load_ohlcv_with_report(
    path: str | Path, timeframe: str = "15m", fix: bool = False
) -> tuple[pd.DataFrame, DataReport]:
    """Read and validate a candle file; returns the canonical frame and its report."""
    frame, report = read_ohlcv(path)
    return validate_ohlcv(frame, timeframe=timeframe, fix=fix, report=report)


def repair_ohlcv_file(path: str | Path, output: str | Path, timeframe: str = "15m",
                      overwrite: bool = False) -> tuple[pd.DataFrame, DataReport]:
    """``nts data check FILE --fix --output FIXED.csv``: write the repaired candles of ``path``.

    Repaired means exactly what ``fix`` does and nothing else: rows sorted by open time and
    exact duplicate rows (same time, same values) dropped; every value kept bit for bit, gaps
    left as gaps, nothing filled or invented. Everything else :func:`validate_ohlcv` refuses
    (duplicates that disagree, NaN, bad OHLC, off-grid times, ...) is still refused and then
    nothing is written. The output is the canonical CSV (:func:`write_ohlcv_csv`: epoch-ms
    ``timestamp`` and ``open high low close volume``), written atomically; it may not be the
    input, and an existing file is replaced only when nts wrote it or with ``overwrite``."""
    output = check_csv_output(output)
    check_output_file(output, inputs=[path], overwrite=overwrite, is_own=is_nts_candle_csv, what="candle CSV")
    frame, report = load_ohlcv_with_report(path, timeframe=timeframe, fix=True)
    write_ohlcv_csv(frame, output)
    return frame, report


def load_ohlcv(path: str | Path, timeframe: str = "15m", fix: bool = False) -> pd.DataFrame:
    """Read and validate a candle file into the canonical frame (see module docstring)."""
    return load_ohlcv_with_report(path, timeframe=timeframe, fix=fix)[0]


def segment_ids(index: pd.DatetimeIndex, timeframe: str = "15m") -> np.ndarray:
    """Contiguous-stretch id per bar: increments after every gap. Used to keep windows,
    returns and labels from spanning missing bars."""
    step_ns = timeframe_seconds(timeframe) * 1_000_000_000
    ts = pd.DatetimeIndex(index).as_unit("ns").asi8
    if len(ts) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(np.diff(ts) != step_ns)]).astype(np.int64)


def check_csv_output(path: str | Path) -> Path:
    """Refuse an output name this module does not write (it writes .csv and .csv.gz only)."""
    path = Path(path)
    if not (path.name.endswith(".csv") or path.name.endswith(".csv.gz")):
        raise DataError(f"{path}: output must end in .csv or .csv.gz")
    return path


def write_ohlcv_csv(frame: pd.DataFrame, path: str | Path) -> None:
    """Write a canonical frame as CSV (epoch-ms ``timestamp`` column) atomically:
    a temp file beside the target, fsynced, then renamed, so a crash never leaves half a file."""
    path = check_csv_output(path)
    out = frame[list(COLUMNS)].copy()
    out.insert(0, "timestamp", (pd.DatetimeIndex(frame.index).as_unit("ns").asi8 // 1_000_000).astype("int64"))
    compression = "gzip" if path.name.endswith(".gz") else None
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False, compression=compression)  # shortest round-trip repr: exact
