"""Loading, validating and refusing candle files; every refusal names what and where."""
from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cli.main import cli
from core.errors import DataError
from core.ohlcv import load_ohlcv, load_ohlcv_with_report, segment_ids, write_ohlcv_csv
from core.synthetic import synthetic_ohlcv


def _csv(tmp_path, frame, name="c.csv", time_fmt="ms", rename=None):
    out = frame.copy()
    idx = pd.DatetimeIndex(frame.index).as_unit("ns")
    if time_fmt == "ms":
        out.insert(0, "timestamp", idx.asi8 // 1_000_000)
    elif time_fmt == "s":
        out.insert(0, "timestamp", idx.asi8 // 1_000_000_000)
    else:
        out.insert(0, "timestamp", [t.isoformat() for t in idx])
    if rename:
        out = out.rename(columns=rename)
    path = tmp_path / name
    out.to_csv(path, index=False, compression="gzip" if name.endswith(".gz") else None)
    return path


@pytest.fixture
def bars():
    return synthetic_ohlcv(200, seed=3)


@pytest.mark.parametrize("fmt", ["ms", "s", "iso"])
def test_time_formats_load_identically(tmp_path, bars, fmt):
    got, report = load_ohlcv_with_report(_csv(tmp_path, bars, time_fmt=fmt))
    pd.testing.assert_frame_equal(got, bars, check_freq=False)
    assert str(got.index.tz) == "UTC" and got.index.name == "timestamp"
    assert report.time_unit == {"ms": "epoch ms", "s": "epoch s", "iso": "ISO text"}[fmt]


def test_common_column_spellings_are_mapped_and_reported(tmp_path, bars):
    path = _csv(tmp_path, bars, rename={"timestamp": "Date", "open": "Open", "high": "High", "low": "Low",
                                        "close": "Close", "volume": "Volume"})
    got, report = load_ohlcv_with_report(path)
    pd.testing.assert_frame_equal(got, bars, check_freq=False)
    assert report.column_mapping["Open"] == "open" and report.column_mapping["Date"] == "timestamp"
    assert any("Open->open" in line for line in report.summary_lines())


def test_gzip_and_parquet(tmp_path, bars):
    pd.testing.assert_frame_equal(load_ohlcv(_csv(tmp_path, bars, name="c.csv.gz")), bars, check_freq=False)
    pq = tmp_path / "c.parquet"
    bars.to_parquet(pq)
    pd.testing.assert_frame_equal(load_ohlcv(pq), bars, check_freq=False)


def test_write_then_load_is_exact(tmp_path, bars):
    path = tmp_path / "out" / "x.csv"
    write_ohlcv_csv(bars, path)
    got = load_ohlcv(path)
    assert np.array_equal(got.to_numpy(), bars.to_numpy())  # bit-exact floats
    assert not list(path.parent.glob(".*.tmp"))


def _corrupt(tmp_path, bars, row, col, value):
    path = _csv(tmp_path, bars)
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[row].split(",")
    cells[header.index(col)] = value
    lines[row] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "col, value, pattern",
    [
        ("close", "abc", r"non-numeric value 'abc' in column 'close' at row 5"),
        ("close", "", r"nan in column 'close' at row 5"),
        ("volume", "inf", r"inf in column 'volume' at row 5"),
        ("volume", "-1", r"negative volume at row 5"),
        ("high", "1", r"high < (low|max\(open, close\)) at row 5"),
        ("timestamp", "yesterday", r"unparseable timestamp 'yesterday' at row 5"),
    ],
)
def test_bad_values_are_refused_with_row(tmp_path, bars, col, value, pattern):
    with pytest.raises(DataError, match=pattern):
        load_ohlcv(_corrupt(tmp_path, bars, 5, col, value))


def test_high_below_open_close_and_low_above(tmp_path, bars):
    b = bars.copy()
    b.iloc[7, b.columns.get_loc("high")] = max(b.iloc[7]["open"], b.iloc[7]["close"]) * 0.9999
    b.iloc[7, b.columns.get_loc("low")] = b.iloc[7]["high"] * 0.999
    with pytest.raises(DataError, match=r"high < max\(open, close\) at row 8"):
        load_ohlcv(_csv(tmp_path, b))
    b = bars.copy()
    b.iloc[9, b.columns.get_loc("low")] = min(b.iloc[9]["open"], b.iloc[9]["close"]) * 1.0001
    with pytest.raises(DataError, match=r"low > min\(open, close\) at row 10"):
        load_ohlcv(_csv(tmp_path, b))


def test_missing_column(tmp_path, bars):
    path = _csv(tmp_path, bars.drop(columns=["volume"]))
    with pytest.raises(DataError, match=r"missing column\(s\) volume"):
        load_ohlcv(path)


def test_duplicates_refused_then_fixed_with_report(tmp_path, bars):
    dup = pd.concat([bars.iloc[:50], bars.iloc[[20]], bars.iloc[50:]])
    path = _csv(tmp_path, dup)
    with pytest.raises(DataError, match=r"duplicate timestamp .* at row 51"):
        load_ohlcv(path)
    fixed, report = load_ohlcv_with_report(path, fix=True)
    pd.testing.assert_frame_equal(fixed, bars, check_freq=False)
    assert any("dropped 1 exact duplicate" in f for f in report.fixes)


def test_conflicting_duplicates_refused_even_with_fix(tmp_path, bars):
    other = bars.iloc[[20]].copy()
    other["volume"] += 1.0
    path = _csv(tmp_path, pd.concat([bars.iloc[:50], other, bars.iloc[50:]]))
    with pytest.raises(DataError, match="different values"):
        load_ohlcv(path, fix=True)


def test_unsorted_refused_then_sorted(tmp_path, bars):
    shuffled = pd.concat([bars.iloc[:30], bars.iloc[[31, 30]], bars.iloc[32:]])
    path = _csv(tmp_path, shuffled)
    with pytest.raises(DataError, match=r"not sorted at row 32"):
        load_ohlcv(path)
    fixed, report = load_ohlcv_with_report(path, fix=True)
    pd.testing.assert_frame_equal(fixed, bars, check_freq=False)
    assert report.fixes


def test_wrong_timeframe_is_refused(tmp_path, bars):
    path = _csv(tmp_path, bars)
    with pytest.raises(DataError, match="not aligned to the 1h grid"):
        load_ohlcv(path, timeframe="1h")
    shifted = bars.copy()
    shifted.index = shifted.index + pd.Timedelta(minutes=5)
    with pytest.raises(DataError, match="not aligned to the 15m grid"):
        load_ohlcv(_csv(tmp_path, shifted, name="s.csv"))


def test_gaps_are_reported_not_filled(tmp_path):
    bars = synthetic_ohlcv(300, seed=1, gaps={99: 3, 199: 40})
    got, report = load_ohlcv_with_report(_csv(tmp_path, bars))
    assert len(got) == 300  # nothing filled
    assert [(g.missing, g.after) for g in report.gaps] == [(3, bars.index[99]), (40, bars.index[199])]
    assert report.missing_bars == 43
    assert list(np.unique(segment_ids(got.index), return_counts=True)[1]) == [100, 100, 100]


def test_unreadable_and_unknown_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_ohlcv(tmp_path / "nope.csv")
    junk = tmp_path / "junk.csv.gz"
    junk.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read"):
        load_ohlcv(junk)
    with pytest.raises(DataError, match="unsupported file type"):
        (tmp_path / "x.xlsx").write_text("x")
        load_ohlcv(tmp_path / "x.xlsx")


def test_cli_data_check_ok_and_refusal(tmp_path, bars):
    runner = CliRunner()
    good = _csv(tmp_path, synthetic_ohlcv(300, seed=1, gaps={99: 3}))
    res = runner.invoke(cli, ["data", "check", str(good)])
    assert res.exit_code == 0, res.output
    assert "rows:      300" in res.output and "gaps:      1 (3 missing bars)" in res.output
    res = runner.invoke(cli, ["data", "check", str(good), "--strict"])
    assert res.exit_code == 1
    bad = _corrupt(tmp_path, bars, 3, "volume", "-5")
    res = runner.invoke(cli, ["data", "check", str(bad)])
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0 and "negative volume at row 3" in res.output


def test_real_candles_report_known_gaps(real_candles_path):
    frame, report = load_ohlcv_with_report(real_candles_path)
    assert report.rows == 85_189 == len(frame)
    assert str(report.start) == "2022-01-01 00:00:00+00:00" and str(report.end) == "2024-10-31 23:45:00+00:00"
    assert [(g.missing, str(g.after)) for g in report.gaps] == [
        (14_166, "2022-08-06 09:15:00+00:00"),
        (5, "2023-03-24 12:30:00+00:00"),
    ]
    assert report.expected_bars == 99_360
    assert report.zero_volume_bars == 5
    assert frame.iloc[0]["open"] == 46216.93


def test_sparser_timeframe_than_declared_is_refused(tmp_path):
    hourly = synthetic_ohlcv(100, seed=2, timeframe="1h")
    path = _csv(tmp_path, hourly)
    with pytest.raises(DataError, match=r"typical bar spacing is 0 days 01:00:00, expected 15m"):
        load_ohlcv(path, timeframe="15m")
    assert len(load_ohlcv(path, timeframe="1h")) == 100


def test_ambiguous_columns_are_refused(tmp_path, bars):
    path = _csv(tmp_path, bars)
    text = path.read_text().splitlines()
    text = [text[0] + ",Close"] + [line + "," + line.split(",")[4] for line in text[1:]]
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"ambiguous"):
        load_ohlcv(path)


def test_trailing_commas_do_not_shift_columns(tmp_path, bars):
    path = _csv(tmp_path, bars)
    path.write_text("\n".join(line + "," for line in path.read_text().splitlines()) + "\n")
    # The trailing empty column is unnamed and ignored; values stay in their own columns.
    pd.testing.assert_frame_equal(load_ohlcv(path), bars, check_freq=False)


@pytest.mark.parametrize("value", ["99999999999000", "9999-12-31T00:00:00"])
def test_out_of_range_timestamp_is_one_line(tmp_path, bars, value):
    path = _corrupt(tmp_path, bars.iloc[:10], 3, "timestamp", value)
    with pytest.raises(DataError, match="out of range|unparseable"):
        load_ohlcv(path)


def test_written_files_have_normal_permissions(tmp_path, bars):
    import os
    import stat

    path = tmp_path / "p.csv"
    write_ohlcv_csv(bars, path)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_only_csv_outputs_are_written(tmp_path, bars):
    with pytest.raises(DataError, match=r"must end in .csv or .csv.gz"):
        write_ohlcv_csv(bars, tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


def test_labels_cli_refuses_files_with_nothing_to_label(tmp_path):
    res = CliRunner().invoke(cli, ["labels", "--data", str(_csv(tmp_path, synthetic_ohlcv(5, seed=1)))])
    assert res.exit_code == 2 and "nothing to label" in res.output


def test_atomic_path_leaves_the_old_file_when_writing_fails(tmp_path):
    from core.files import atomic_path, write_text_atomic

    target = tmp_path / "a.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
