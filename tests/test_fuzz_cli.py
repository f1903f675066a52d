"""Fuzz the real CLI entry point (issue 9): generated malformed candle files, configs and
``--set`` values through ``cli.main.cli`` must each end with exit code 2, exactly one
``error:`` line, no traceback, and no output (file or folder) left behind.

Every generated input is malformed BY CONSTRUCTION (a mutation that no valid file, config or
override survives), so the test never needs the code under test to say what is invalid.
"""
from __future__ import annotations

import gzip
import string
import tempfile
from pathlib import Path

import pandas as pd
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli.main import cli
from core.synthetic import synthetic_ohlcv

N_ROWS = 300
_FRAME = synthetic_ohlcv(N_ROWS, seed=21, start="2024-03-01")
_TS = (_FRAME.index.as_unit("ns").asi8 // 1_000_000).tolist()
HEADER = ["timestamp", "open", "high", "low", "close", "volume"]
ROWS = [[str(t), *(repr(float(v)) for v in row)] for t, row in zip(_TS, _FRAME.to_numpy())]
NOW_MS = pd.Timestamp.now(tz="UTC").value // 1_000_000


def _text(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(",".join(r) for r in [header, *rows]) + "\n"


row_i = st.integers(0, N_ROWS - 1)
col_i = st.integers(1, 5)  # a value column
bad_cell = st.sampled_from(["nan", "inf", "-inf", "abc", "", "null", "1e400", "-", "1,5", "0x1g", "NaN"])


@st.composite
def malformed_candles(draw) -> tuple[str, bytes]:
    """(file name, bytes) of a candle file with one defect that makes it invalid."""
    header, rows = list(HEADER), [list(r) for r in ROWS]
    kind = draw(st.sampled_from(["cell", "negvol", "swap_hl", "dup_header", "drop_col", "two_times", "early",
                                 "future", "off_grid", "dup_conflict", "header_only", "empty", "binary",
                                 "gzip_cut", "not_utf8", "extra_field", "mixed_offset"]))
    r = draw(row_i)
    if kind == "cell":
        rows[r][draw(col_i)] = draw(bad_cell)
    elif kind == "negvol":
        rows[r][5] = repr(-draw(st.floats(min_value=1e-9, max_value=1e12)))
    elif kind == "swap_hl":  # generated bars have wicks: high > low strictly
        rows[r][2], rows[r][3] = rows[r][3], rows[r][2]
    elif kind == "dup_header":
        a, b = draw(st.lists(st.integers(0, 5), min_size=2, max_size=2, unique=True))
        header[a] = header[b]
    elif kind == "drop_col":
        c = draw(st.integers(0, 5))
        header.pop(c)
        for row in rows:
            row.pop(c)
    elif kind == "two_times":
        header.insert(0, draw(st.sampled_from(["date", "time", "datetime", "open_time", "ts"])))
        for row in rows:
            row.insert(0, row[1])
    elif kind == "early":  # before 2009 (as ms; small values would be seconds: still < 2009 or future)
        rows[r][0] = str(draw(st.integers(-10**12, 1_230_000_000_000)))
    elif kind == "future":
        rows[r][0] = str(draw(st.integers(NOW_MS + 86_400_000, 9 * 10**13)))
    elif kind == "off_grid":
        rows[r][0] = str(_TS[r] + draw(st.integers(1, 899_999)))
    elif kind == "dup_conflict":
        copy = list(rows[r])
        copy[5] = repr(float(copy[5]) + draw(st.floats(min_value=1.0, max_value=1e6)))
        rows.insert(r + 1, copy)
    elif kind == "header_only":
        rows = []
    elif kind == "empty":
        return "c.csv", b""
    elif kind == "binary":
        return "c.csv", draw(st.binary(min_size=1, max_size=400))
    elif kind == "gzip_cut":
        raw = gzip.compress(_text(header, rows).encode())
        return "c.csv.gz", raw[: draw(st.integers(1, len(raw) - 9))]
    elif kind == "not_utf8":
        return "c.csv", _text(header, rows).encode().replace(b"volume", b"vol\xffume", 1)
    elif kind == "extra_field":
        rows[r].append(draw(st.text(string.ascii_letters + string.digits, min_size=1, max_size=8)))
    elif kind == "mixed_offset":
        for i, row in enumerate(rows):
            iso = pd.Timestamp(_TS[i], unit="ms").isoformat()
            row[0] = iso + ("+00:00" if i == r else "")
    return "c.csv", _text(header, rows).encode()


SECTIONS = ["data", "features", "labels", "model", "training", "strategy", "risk", "execution", "broker"]
ident = st.text(string.ascii_lowercase + "_", min_size=1, max_size=12)


@st.composite
def malformed_config(draw) -> bytes:
    """A config file with one defect: unknown key, repeated key, bad value, bad YAML, not UTF-8."""
    kind = draw(st.sampled_from(["unknown_top", "unknown_key", "dup_key", "dup_section", "range", "type",
                                 "syntax", "not_utf8", "top_list"]))
    if kind == "unknown_top":
        return f"{draw(ident.filter(lambda s: s not in SECTIONS))}: 1\n".encode()
    if kind == "unknown_key":
        return f"{draw(st.sampled_from(SECTIONS))}:\n  zz_{draw(ident)}: 1\n".encode()
    if kind == "dup_key":
        a, b = draw(st.floats(0.001, 0.5)), draw(st.floats(0.001, 0.5))
        return f"labels:\n  profit: {a}\n  stop: 0.004\n  profit: {b}\n".encode()
    if kind == "dup_section":
        return b"training:\n  epochs: 2\nlabels:\n  tie: stop\ntraining:\n  seed: 1\n"
    if kind == "range":
        section, name, values = draw(st.sampled_from([("labels", "profit", st.floats(1.0, 1e9)),
                                                      ("training", "epochs", st.integers(-10**6, 0)),
                                                      ("execution", "cash", st.floats(-1e9, 0.0)),
                                                      ("model", "window", st.integers(5000, 10**9))]))
        return f"{section}:\n  {name}: {draw(values)}\n".encode()
    if kind == "type":
        return f"labels:\n  horizon: {draw(st.sampled_from(['abc', '1.5', 'true', '[1, 2]', '{a: 1}']))}\n".encode()
    if kind == "syntax":
        return draw(st.sampled_from([b"labels: [unclosed\n", b"labels:\n\tprofit: 0.01\n", b"a: b: c\n",
                                     b"labels: {profit: 0.01\n", b"- [\n", b"labels: !!python/name:os.system\n"]))
    if kind == "not_utf8":
        return b"labels:\n  tie: st\xf6p\n"
    return b"- labels\n- model\n"


@st.composite
def malformed_set(draw) -> str:
    """One ``--set`` value that no config accepts."""
    kind = draw(st.sampled_from(["no_equals", "unknown_section", "unknown_key", "range", "type", "yaml",
                                 "empty_key", "dup_key"]))
    if kind == "no_equals":
        return draw(st.text(string.ascii_letters + "._-", min_size=0, max_size=20))
    if kind == "unknown_section":
        return f"{draw(ident.filter(lambda s: s not in SECTIONS))}.x=1"
    if kind == "unknown_key":
        return f"{draw(st.sampled_from(SECTIONS))}.zz_{draw(ident)}=1"
    if kind == "range":
        return draw(st.sampled_from([f"labels.profit={draw(st.floats(1.0, 1e300))}",
                                     f"labels.horizon={draw(st.integers(1001, 10**30))}",
                                     f"training.seed={draw(st.integers(-10**30, -1))}",
                                     f"strategy.deadband={draw(st.floats(1.0, 1e9))}"]))
    if kind == "type":
        return f"labels.horizon={draw(st.sampled_from(['abc', '1.5', 'true', '[1]', 'null', '.nan']))}"
    if kind == "yaml":
        return f"labels.profit={draw(st.sampled_from(['[1', '{a', '!!python/name:os.system', 'a: b: c']))}"
    if kind == "empty_key":
        return "=" + draw(st.text(string.digits, max_size=4))
    return "labels={profit: 0.01, profit: 0.02}"


COMMANDS = ["data_check_fix", "labels", "train", "backtest", "explain"]


@st.composite
def hostile_run(draw) -> dict:
    """Candles, config and --set: at least one malformed, the others valid or absent."""
    bad = draw(st.sets(st.sampled_from(["candles", "config", "set"]), min_size=1))
    return {
        "command": draw(st.sampled_from(COMMANDS)),
        "candles": draw(malformed_candles()) if "candles" in bad else None,
        "config": draw(malformed_config()) if "config" in bad else None,
        "set": draw(malformed_set()) if "set" in bad else None,
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(run=hostile_run())
def test_malformed_inputs_end_in_one_error_line_and_leave_nothing_behind(run, tiny_bundle):
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        name, blob = run["candles"] or ("c.csv", _text(HEADER, ROWS).encode())
        data = root / name
        data.write_bytes(blob)
        opts: list[str] = []
        if run["config"] is not None:
            (root / "c.yaml").write_bytes(run["config"])
            opts += ["--config", str(root / "c.yaml")]
        if run["set"] is not None:
            opts += ["--set", run["set"]]
        if run["command"] == "explain" and run["candles"] is None:
            run["command"] = "labels"  # explain takes no --config/--set: only candles can be bad there
        out_file, out_dir = root / "out.csv", root / "out"
        args = {
            "data_check_fix": ["data", "check", str(data), "--fix", "--output", str(out_file), *opts],
            "labels": ["labels", "--data", str(data), "--output", str(out_file), *opts],
            "train": ["train", "--data", str(data), "--output", str(out_dir), "--quiet", *opts],
            "backtest": ["backtest", "--model", str(tiny_bundle), "--data", str(data), "--output", str(out_dir),
                         "--quiet", *opts],
            "explain": ["explain", "--model", str(tiny_bundle), "--data", str(data), "--output", str(out_dir),
                        "--quiet", "--repeats", "1"],
        }[run["command"]]
        before = sorted(p.name for p in root.iterdir())
        res = CliRunner().invoke(cli, args)
        err = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.exit_code == 2, (args, res.output)
        assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
        assert "Traceback" not in res.output
        assert len(err) == 1 and err[0].startswith("error: "), res.stderr
        assert sorted(p.name for p in root.iterdir()) == before  # no output, no temporary file or folder
