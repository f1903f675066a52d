"""Hostile inputs (issue 9): one block per promise, each test failing on the code before it.

1. nothing of the user's is deleted or overwritten;  2. no traceback for any input;
3. ambiguous data is refused, not guessed;  4. one meaning for dates;  5. secrets never
leak;  6. messages lead somewhere;  7. every command is logged.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from cli.main import cli
from core.config import load_config, load_yaml_strict
from core.dates import parse_span, parse_utc
from core.errors import ConfigError, OutputError
from core.files import MARKER, OutputKind, check_output_file, output_dir, read_marker
from core.ohlcv import load_ohlcv, write_ohlcv_csv
from core.redact import RedactingFilter, redact
from core.synthetic import synthetic_ohlcv
from models.bundle import load_bundle

SMALL = ["model.window=16", "model.channels=[8,8]", "model.dilations=[1,2]", "model.head_units=8",
         "training.batch_size=128", "training.threads=1", "training.epochs=1"]
SETS = sum((["--set", s] for s in SMALL), [])


def invoke(*args, **kw):
    return CliRunner().invoke(cli, [str(a) for a in args], **kw)


def one_error_line(res) -> str:
    """The single stderr line of a refusal (exit code 2, nothing else on stderr, no traceback)."""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    return lines[0]


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def candles_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hard") / "btc.csv"
    write_ohlcv_csv(synthetic_ohlcv(400, seed=3), path)
    return path


@pytest.fixture(scope="module")
def bars_file(tmp_path_factory) -> Path:
    """The tiny bundle's training bars (same generator) extended by out-of-sample bars."""
    path = tmp_path_factory.mktemp("hard_bt") / "bars.csv"
    write_ohlcv_csv(synthetic_ohlcv(4000, seed=11, gaps={1800: 10}), path)
    return path


# ------------------------------------------------------------------ 1. nothing is lost

def test_train_into_the_data_folder_or_a_foreign_folder_deletes_nothing(tmp_path, candles_csv, monkeypatch):
    mine = tmp_path / "mydata"
    mine.mkdir()
    data = mine / "btc.csv"
    data.write_bytes(candles_csv.read_bytes())
    (mine / "notes.txt").write_text("my notes")
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("years of work")
    before = digest(tmp_path)
    monkeypatch.chdir(tmp_path)
    for output, extra in (("mydata", []), (".", []), ("thesis", []), ("thesis", ["--overwrite"]), ("", []),
                          ("mydata/btc.csv/out", [])):
        line = one_error_line(invoke("train", "--data", "mydata/btc.csv", "--output", output, "--quiet", *extra))
        assert output.split("/")[0] in line or "empty output path" in line
    monkeypatch.chdir(mine)
    one_error_line(invoke("train", "--data", "btc.csv", "--output", ".", "--quiet"))
    assert digest(tmp_path) == before  # every byte still there, nothing added


KIND = OutputKind("report", files=("result.json", "table.csv"), signature='"score"')


def _write(tmp: Path, score: int) -> None:
    (tmp / "result.json").write_text(json.dumps({"score": score}))
    (tmp / "table.csv").write_text("a\n1\n")


def test_output_dir_replaces_only_its_own_kind_and_keeps_the_old_output_on_failure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    with output_dir(out, KIND) as tmp:
        _write(tmp, 1)
    assert read_marker(out)["kind"] == "report" and json.loads((out / "result.json").read_text()) == {"score": 1}
    first = digest(out)
    with pytest.raises(RuntimeError, match="disk full"):  # a failed rerun ...
        with output_dir(out, KIND) as tmp:
            _write(tmp, 2)
            raise RuntimeError("disk full")
    assert digest(out) == first  # ... leaves the previous run's files exactly as they were
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # and no temporary folder
    with output_dir(out, KIND) as tmp:  # a rerun of the same kind replaces it whole
        (tmp / "result.json").write_text(json.dumps({"score": 3}))
    assert not (out / "table.csv").exists() and json.loads((out / "result.json").read_text()) == {"score": 3}

    with pytest.raises(OutputError, match="holds an nts report output, not a bundle output"):
        with output_dir(out, OutputKind("bundle"), overwrite=True):
            pass
    legacy = tmp_path / "legacy"  # this kind's files, no marker (an nts from before markers)
    legacy.mkdir()
    _write(legacy, 4)
    with pytest.raises(OutputError, match="--overwrite"):
        with output_dir(legacy, KIND):
            pass
    with output_dir(legacy, KIND, overwrite=True) as tmp:
        _write(tmp, 5)
    assert read_marker(legacy)["kind"] == "report"
    mixed = tmp_path / "mixed"  # the same plus one file of the user's: never replaced
    mixed.mkdir()
    _write(mixed, 6)
    (mixed / "mine.txt").write_text("mine")
    with pytest.raises(OutputError, match="even with --overwrite"):
        with output_dir(mixed, KIND, overwrite=True):
            pass
    assert (mixed / "mine.txt").read_text() == "mine"

    data = tmp_path / "in" / "data.csv"
    data.parent.mkdir()
    data.write_text("x")
    monkeypatch.chdir(tmp_path / "legacy")
    for target, pattern in ((tmp_path / "in", "contains the input"), (data, "is the input"),
                            (tmp_path / "bundle" / "sub", "lies inside the input"),
                            (tmp_path / "legacy", "current folder"), (tmp_path, "contains the input")):
        with pytest.raises(OutputError, match=pattern):
            with output_dir(target, KIND, inputs=[data, tmp_path / "bundle"]):
                pass
    assert data.read_text() == "x"


def test_backtest_and_explain_never_write_into_the_bundle_or_a_foreign_folder(tiny_bundle, bars_file, tmp_path):
    before = digest(tiny_bundle)
    for cmd in (["backtest", "--quiet"], ["explain", "--quiet", "--repeats", "1"]):
        for out in (tiny_bundle, tiny_bundle / "sub", bars_file.parent):
            line = one_error_line(invoke(*cmd, "--model", tiny_bundle / "final_model.pt", "--data", bars_file,
                                         "--output", out))
            assert "input" in line
    foreign = tmp_path / "reports"
    foreign.mkdir()
    (foreign / "report.md").write_text("my own report")
    line = one_error_line(invoke("backtest", "--quiet", "--model", tiny_bundle, "--data", bars_file,
                                 "--output", foreign, "--overwrite"))
    assert "not an nts backtest output" in line
    assert (foreign / "report.md").read_text() == "my own report"
    assert digest(tiny_bundle) == before


def test_single_file_outputs_never_clobber_a_file_nts_did_not_write(tmp_path, candles_csv, monkeypatch):
    monkeypatch.chdir(tmp_path)
    notes = tmp_path / "notes.csv"
    notes.write_text("name,age\nbob,3\n")
    data = tmp_path / "btc.csv"
    data.write_bytes(candles_csv.read_bytes())
    # download: refused before any request (nothing listens on port 9)
    line = one_error_line(invoke("download", "--start", "2024-01-01", "--end", "2024-01-02", "--output", notes,
                                 "--exchange-url", "http://127.0.0.1:9", "--no-progress"))
    assert "notes.csv" in line and "--overwrite" in line
    line = one_error_line(invoke("labels", "--data", data, "--output", notes))
    assert "--overwrite" in line
    one_error_line(invoke("labels", "--data", data, "--output", data, "--overwrite"))  # the input: never
    one_error_line(invoke("data", "check", data, "--fix", "--output", data, "--overwrite"))
    assert notes.read_text() == "name,age\nbob,3\n" and data.read_bytes() == candles_csv.read_bytes()
    ok = invoke("labels", "--data", data, "--output", notes, "--overwrite")  # explicit: replaced
    assert ok.exit_code == 0, ok.output
    assert notes.read_text().startswith("timestamp,label,")
    assert invoke("labels", "--data", data, "--output", notes).exit_code == 0  # its own file: rewritten


# ------------------------------------------------------------------ 2. no traceback

def _gz_with_corrupt_stream(path: Path, text: str) -> Path:
    raw = bytearray(gzip.compress(text.encode()))
    raw[12:40] = b"\xff" * 28  # inside the deflate stream: zlib.error, not BadGzipFile
    path.write_bytes(bytes(raw))
    return path


def test_bad_inputs_end_in_one_line_not_a_traceback(tmp_path, candles_csv, tiny_bundle, bars_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gz = _gz_with_corrupt_stream(tmp_path / "btc.csv.gz", candles_csv.read_text())
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("labels:\n  tie: st\xf6p\n".encode("latin-1"))
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_bundle.iterdir():
        if f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    (broken / "final_model.pt").unlink()
    (broken / "final_model.pt").mkdir()
    cases = [
        (["data", "check", gz], "btc.csv.gz"),
        (["labels", "--data", gz], "btc.csv.gz"),
        (["train", "--data", gz, "--output", "b", "--quiet"], "btc.csv.gz"),
        (["labels", "--data", candles_csv, "--config", latin], "not UTF-8"),
        (["train", "--data", candles_csv, "--output", f"{candles_csv}/b", "--quiet"], "is a file"),
        (["backtest", "--model", tiny_bundle, "--data", bars_file, "--output", ".", "--quiet"], "current folder"),
        (["explain", "--model", tiny_bundle, "--data", bars_file, "--output", "."], "current folder"),
        (["backtest", "--model", broken, "--data", bars_file, "--quiet"], "final_model.pt"),
        (["backtest", "--model", broken / "final_model.pt", "--data", bars_file, "--quiet"], "is a folder"),
        (["backtest", "--model", tiny_bundle, "--data", bars_file, "--end", "2300-01-01", "--quiet"], "2300"),
        (["backtest", "--model", tiny_bundle, "--data", bars_file, "--strategy", ":", "--quiet"], "strategy"),
        (["data", "check", candles_csv, "--timeframe", "99999999999999999999d"], "timeframe"),
        (["download", "--exchange", "Exchange", "--start", "2024-01-01", "--end", "2024-01-02",
          "--output", "x.csv"], "no such exchange"),
    ]
    for args, needle in cases:
        line = one_error_line(invoke(*args))
        assert needle in line, (args, line)
    assert not (tmp_path / "b").exists()

    import core.ohlcv

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(candles_csv))

    monkeypatch.setattr(core.ohlcv.pd, "read_csv", denied)
    assert "permission denied" in one_error_line(invoke("data", "check", candles_csv))


def test_an_unforeseen_exception_is_one_line_and_its_traceback_goes_to_the_log(tiny_bundle, bars_file, tmp_path,
                                                                               monkeypatch):
    monkeypatch.setenv("NTS_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "buggy.py").write_text("import numpy as np\nfrom strategies.tcn import TCNStrategy\n\n"
                                       "class Buggy(TCNStrategy):\n    def signal(self, p, bars):\n"
                                       "        raise ZeroDivisionError('user bug in signal')\n")
    # a bug in the user's strategy is the user's error, named as such (not "unexpected")
    line = one_error_line(invoke("backtest", "--model", tiny_bundle, "--data", bars_file, "--output", "r",
                                 "--strategy", "buggy.py:Buggy", "--quiet"))
    assert line.startswith("error: strategy Buggy: ") and "ZeroDivisionError: user bug in signal" in line, line
    assert not (tmp_path / "r").exists()

    # a bug nobody foresaw in nts itself: the last resort, traceback in the log
    import strategies.backtest

    def bug(*a, **k):
        raise ZeroDivisionError("nts bug in the metrics")

    monkeypatch.setattr(strategies.backtest, "summarize", bug)
    line = one_error_line(invoke("backtest", "--model", tiny_bundle, "--data", bars_file, "--output", "r",
                                 "--quiet"))
    log = tmp_path / "logs" / "nts.log"
    assert line == f"error: unexpected ZeroDivisionError: nts bug in the metrics (traceback in {log})"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "nts bug in the metrics" in text
    assert not (tmp_path / "r").exists()

    import cli.labels_cmd

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.labels_cmd, "load_ohlcv", interrupted)
    res = invoke("labels", "--data", bars_file)
    assert res.exit_code == 130 and res.stderr.strip().startswith("error: interrupted")
    assert len(res.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ 3. ambiguity refused

def _csv_text(frame: pd.DataFrame) -> str:
    out = frame.copy()
    out.insert(0, "timestamp", out.index.as_unit("ns").asi8 // 1_000_000)
    return out.to_csv(index=False)


@pytest.mark.parametrize("mutate, needle", [
    (lambda t: t.replace("close,volume", "close,close", 1), "header 'close' appears twice"),
    (lambda t: "\n".join(ln + (",volume" if i == 0 else ",5") for i, ln in enumerate(t.splitlines())),
     "header 'volume' appears twice"),
    (lambda t: "\n".join(("date" if i == 0 else "2024-01-01") + "," + ln for i, ln in enumerate(t.splitlines())),
     "'timestamp', 'date' could each be the time column"),
    (lambda t: t.replace("\n17", "\n12", 1), "before 2009-01-01"),  # epoch ms of 2008
    (lambda t: t.replace("\n17", "\n47", 1), "in the future"),  # epoch ms of 2118
    (lambda t: "\n".join(ln + (",extra" if i == 0 else "") for i, ln in enumerate(t.splitlines())) + "\n", None),
])
def test_ambiguous_candle_files_are_refused_naming_the_column_or_row(tmp_path, mutate, needle):
    text = _csv_text(synthetic_ohlcv(50, seed=2, start="2023-11-15"))
    path = tmp_path / "c.csv"
    path.write_text(mutate(text))
    if needle is None:  # control: an extra named column is fine
        assert invoke("data", "check", path).exit_code == 0
        return
    line = one_error_line(invoke("data", "check", path))
    assert needle in line, line


def test_iso_times_mixing_utc_offsets_and_none_are_refused(tmp_path):
    path = tmp_path / "tz.csv"
    path.write_text("date,open,high,low,close,volume\n2024-01-01T00:00:00+00:00,1,2,0.5,1.5,3\n"
                    "2024-01-01T00:15:00,1,2,0.5,1.5,3\n2024-01-01T02:30:00+02:00,1,2,0.5,1.5,3\n")
    assert "has no UTC offset" in one_error_line(invoke("data", "check", path))


@pytest.mark.parametrize("text, key", [
    ("labels:\n  profit: 0.01\n  profit: 0.02\n", "'labels.profit' appears twice (lines 2 and 3)"),
    ("labels:\n  profit: 0.01\nlabels:\n  stop: 0.01\n", "'labels' appears twice (lines 1 and 3)"),
    ("model:\n  channels: [8]\n  dilations: [1]\n  channels: [4]\n", "'model.channels' appears twice"),
    ("labels: {profit: 0.01}\n---\nlabels: {profit: 0.02}\n", "more than one YAML document"),
])
def test_yaml_that_repeats_a_key_or_section_is_refused_naming_it(tmp_path, candles_csv, text, key):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_yaml_strict(path)
    assert key in str(err.value) and str(path) in str(err.value)
    assert key in one_error_line(invoke("labels", "--data", candles_csv, "--config", path))
    with pytest.raises(ConfigError, match="appears twice"):
        load_config(None, ["model={window: 16, window: 32}"])


# ------------------------------------------------------------------ 4. one meaning for dates

def test_a_date_as_end_includes_that_whole_utc_day_in_backtest_as_in_download(tiny_bundle, bars_file, tmp_path):
    train_end = load_bundle(tiny_bundle).training_span[1]
    day = (train_end + pd.Timedelta(days=2)).normalize()
    out = tmp_path / "bt"
    res = invoke("backtest", "--model", tiny_bundle, "--data", bars_file, "--output", out,
                 "--end", f"{day:%Y-%m-%d}", "--quiet")
    assert res.exit_code == 0, res.output
    run = json.loads((out / "metrics.json").read_text())["run"]
    assert pd.Timestamp(run["end"]) == day + pd.Timedelta(hours=23, minutes=45)  # not 00:00 of that day
    frame = load_ohlcv(bars_file)
    expected = ((frame.index >= pd.Timestamp(run["start"])) & (frame.index < day + pd.Timedelta(days=1))).sum()
    assert run["bars"] == expected
    # a full timestamp is that instant: the bar opening exactly then is not in the span
    res = invoke("backtest", "--model", tiny_bundle, "--data", bars_file, "--output", out,
                 "--end", f"{day:%Y-%m-%d}T12:00", "--quiet")
    assert res.exit_code == 0, res.output
    end = pd.Timestamp(json.loads((out / "metrics.json").read_text())["run"]["end"])
    assert end == day + pd.Timedelta(hours=11, minutes=45)

    from brokers.download import parse_time_ms

    for text in ("2024-10-31", "2024-10-31T12:00", "2024-10-31 12:00:00+02:00", "today", 1_700_000_000_000):
        assert parse_time_ms(text, end=True) == parse_utc(text, end=True).value // 1_000_000
    assert parse_utc("2024-10-31", end=True) == pd.Timestamp("2024-11-01", tz="UTC")
    assert parse_utc("2024-10-31") == pd.Timestamp("2024-10-31", tz="UTC")
    for bad in ("2024", "2024-10", "31/10/2024", "1706000000000", "2024-02-30", "99999-01-01", ""):
        with pytest.raises(ConfigError):
            parse_utc(bad, what="--end")
    with pytest.raises(ConfigError, match="empty span"):
        parse_span("2024-10-31", "2024-10-30")


# ------------------------------------------------------------------ 5. secrets never leak

FAKE = {"NTS_API_KEY": "AKfake0123456789", "NTS_API_SECRET": "SKfakeSecret98765", "MY_EXCHANGE_TOKEN": "TKfake55555"}
URL = "http://bob:Hunter2pass@127.0.0.1:9/api?apiKey=QSfakeQuery1&signature=SIGfake777"
LEAKS = [*FAKE.values(), "Hunter2pass", "QSfakeQuery1", "SIGfake777"]


def test_fake_secrets_appear_in_no_file_written_and_no_output_line(tmp_path, monkeypatch):
    for k, v in FAKE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("NTS_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "in" / "btc.csv"
    data.parent.mkdir()
    frame = synthetic_ohlcv(3000, seed=8)
    write_ohlcv_csv(frame.iloc[:2000], data)
    write_ohlcv_csv(frame, tmp_path / "in" / "bars.csv")
    cfg = tmp_path / "in" / "secret.yaml"
    cfg.write_text(f"broker:\n  url: {URL}\n")
    outputs = []
    for args in (["train", "--data", data, "--output", "b", "--config", cfg, "--quiet", *SETS],
                 ["backtest", "--model", "b", "--data", tmp_path / "in" / "bars.csv", "--output", "r",
                  "--config", cfg, "--quiet", "--set", "strategy.center=0.3", "--set", "strategy.deadband=0"],
                 ["download", "--start", "2024-01-01", "--end", "2024-01-02", "--output", "d.csv",
                  "--exchange-url", URL, "--no-progress", "--set", "broker.retries=0"],
                 # a refusal that echoes the value back: the env secret must not come out
                 ["labels", "--data", data, "--config", cfg, "--set", f"labels.tie={FAKE['NTS_API_KEY']}"]):
        res = invoke(*args)
        outputs.append(res.output)
    assert (tmp_path / "b" / "bundle.json").exists() and (tmp_path / "r" / "metrics.json").exists()
    assert "***@127.0.0.1:9" in json.loads((tmp_path / "b" / "bundle.json").read_text())["config"]["broker"]["url"]
    logging.getLogger("nts.test").info("connecting with key %s to %s", FAKE["NTS_API_KEY"], URL)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != cfg]
    assert any(p.name == "nts.log" for p in written) and any(p.name == "report.html" for p in written)
    for p in written:
        blob = p.read_bytes()
        for secret in LEAKS:
            assert secret.encode() not in blob, (secret, p)
    for text in outputs:
        for secret in LEAKS:
            assert secret not in text, (secret, text)
    assert redact(f"GET {URL}") == "GET http://***@127.0.0.1:9/api?apiKey=***&signature=***"


def test_the_log_filter_redacts_tracebacks_too():
    record = logging.LogRecord("nts.x", logging.ERROR, __file__, 1, "failed: %s", (URL,), None)
    try:
        raise RuntimeError(f"boom {URL}")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record)
    assert "Hunter2pass" not in record.msg and "SIGfake777" not in record.msg and "boom" in record.msg


# ------------------------------------------------------------------ 6. messages lead somewhere

def test_the_fix_hint_names_a_command_that_exists_and_writes_the_repaired_file(tmp_path):
    frame = synthetic_ohlcv(300, seed=4)
    lines = _csv_text(frame).splitlines()
    # two exact duplicate rows and two rows swapped
    messy = [lines[0], *lines[1:10], lines[5], *lines[10:50], lines[51], lines[50], *lines[52:], lines[7]]
    src = tmp_path / "messy.csv"
    src.write_text("\n".join(messy) + "\n")
    line = one_error_line(invoke("labels", "--data", src))
    assert "nts data check FILE --fix --output FIXED.csv" in line and "--fix to" not in line
    fixed = tmp_path / "fixed.csv"
    res = invoke("data", "check", src, "--fix", "--output", fixed)
    assert res.exit_code == 0, res.output
    assert "dropped 2 exact duplicate rows" in res.output and "wrote:" in res.output
    pd.testing.assert_frame_equal(load_ohlcv(fixed), frame, check_exact=True, check_freq=False)
    assert src.read_text() == "\n".join(messy) + "\n"  # the input is never touched
    conflict = tmp_path / "conflict.csv"
    conflict.write_text("\n".join([*lines[:10], lines[5].rsplit(",", 1)[0] + ",999", *lines[10:]]) + "\n")
    assert "refusing to choose one" in one_error_line(invoke("data", "check", conflict, "--fix", "--output",
                                                             tmp_path / "c2.csv"))
    assert not (tmp_path / "c2.csv").exists()


def test_a_validation_or_test_span_too_small_for_a_calibrator_is_refused_with_the_minimum(tmp_path, candles_csv):
    data = tmp_path / "d.csv"
    write_ohlcv_csv(synthetic_ohlcv(2000, seed=8), data)
    for key in ("training.test_fraction=0.002", "training.val_fraction=0.04"):
        line = one_error_line(invoke("train", "--data", data, "--output", tmp_path / "b", "--quiet", *SETS,
                                     "--set", key))
        assert "needs at least 100 with 10 of each class" in line and key.split("=")[0] in line
    assert not (tmp_path / "b").exists()


def test_strategy_as_file_py_class_and_as_module_in_the_current_folder(tiny_bundle, bars_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = ("import numpy as np\nfrom strategies.tcn import TCNStrategy\n\n"
            "class Quiet(TCNStrategy):\n    def signal(self, p, bars):\n        return np.zeros(len(bars))\n")
    (tmp_path / "mystrat.py").write_text(code)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "other.py").write_text(code)
    for spec, out in (("mystrat.py:Quiet", "a"), ("mystrat:Quiet", "b"), ("sub/other.py:Quiet", "c")):
        res = invoke("backtest", "--model", tiny_bundle, "--data", bars_file, "--output", out, "--strategy", spec,
                     "--quiet")
        assert res.exit_code == 0, (spec, res.output)
        assert json.loads((tmp_path / out / "metrics.json").read_text())["strategy"]["trades"] == 0
    (tmp_path / "broken.py").write_text("def (:\n")
    assert "SyntaxError" in one_error_line(invoke("backtest", "--model", tiny_bundle, "--data", bars_file,
                                                  "--strategy", "broken:X", "--quiet"))
    line = one_error_line(invoke("backtest", "--model", tiny_bundle, "--data", bars_file, "--output", "sub",
                                 "--strategy", "sub/other.py:Quiet", "--quiet"))
    assert "contains the input" in line


# ------------------------------------------------------------------ 7. logs

def test_every_command_and_its_outcome_is_appended_to_the_log(tmp_path, candles_csv, monkeypatch):
    monkeypatch.setenv("NTS_LOG_DIR", str(tmp_path / "logdir"))
    monkeypatch.setenv("NTS_API_SECRET", "SKfakeSecret98765")
    assert invoke("data", "check", candles_csv).exit_code == 0
    one_error_line(invoke("labels", "--data", tmp_path / "absent.csv"))
    assert invoke("train", "--epochs", "zero", "--data", candles_csv).exit_code == 2  # click's usage error
    assert invoke("frobnicate").exit_code == 2
    invoke("download", "--start", "2024-01-01", "--end", "2024-01-02", "--output", tmp_path / "x.parquet",
           "--exchange-url", "http://u:SKfakeSecret98765@127.0.0.1:9")
    text = (tmp_path / "logdir" / "nts.log").read_text()
    ends = [ln for ln in text.splitlines() if " end: nts " in ln]
    assert len(ends) == 5 and len([ln for ln in text.splitlines() if " start: nts " in ln]) == 5
    assert f"end: nts data check {candles_csv} -> exit 0, ok" in ends[0]
    assert "-> exit 2, error: " in ends[1] and "absent.csv: file not found" in ends[1]
    assert "-> exit 2, usage error: " in ends[2] and "'zero'" in ends[2]
    assert "usage error: No such command 'frobnicate'" in ends[3]
    assert "http://***@127.0.0.1:9" in ends[4] and "SKfakeSecret98765" not in text
    assert all(ln[:4].isdigit() for ln in ends)  # each line starts with its time


def test_marker_names_the_kind_and_the_version(tiny_bundle):
    marker = read_marker(tiny_bundle)
    assert marker["kind"] == "bundle" and marker["version"] == 1 and (tiny_bundle / MARKER).is_file()
    with pytest.raises(OutputError, match="is a folder"):  # a file output never replaces a folder
        check_output_file(tiny_bundle)


def test_output_folder_gets_normal_permissions(tmp_path):
    """An output folder is built with mkdtemp (mode 0700) but must end up as a plain mkdir
    would make it, so other users and tools can read the report."""
    import os
    import stat

    from core.files import OutputKind, output_dir

    umask = os.umask(0o022)
    try:
        with output_dir(tmp_path / "out", OutputKind("backtest", ("metrics.json",), "")) as tmp:
            (tmp / "metrics.json").write_text("{}")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
