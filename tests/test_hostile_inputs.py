"""Issue 18, category 6: the last hostile inputs each get their own one-line message.

nts exchange replay (--cash nan/inf, a symbol without a slash, --faults FILE), the sweep
grid (an empty file, max_rows without bound) and Dask address, nts live without keys
(refused before any work), nts resume --by carrying a secret (redacted in the journal,
nts status and stdout), nts status | head (ends quietly).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from cli.main import cli
from core.errors import ConfigError
from core.ohlcv import write_ohlcv_csv
from core.synthetic import synthetic_ohlcv
from sessions.journal import Journal
from test_journal import IDENT, T0, _bar
from venues.faults import apply_faults, load_faults
from venues.replay import ReplayExchange

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(res) -> str:
    """The one error line (click's usage errors add their usage lines around it)."""
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().splitlines() if line.lower().startswith("error")]
    assert len(lines) == 1 and "unexpected" not in lines[0], res.output
    return lines[0]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "btc.csv"
    write_ohlcv_csv(synthetic_ohlcv(200, seed=4, start="2024-03-01"), path)
    return path


@pytest.mark.parametrize("cash", ["nan", "inf", "-inf"])
def test_replay_refuses_a_cash_that_is_not_a_finite_amount(data_file, cash):
    line = one_line_error(CliRunner().invoke(cli, ["exchange", "replay", "--data", str(data_file), "--cash", cash]))
    assert "--cash" in line


@pytest.mark.parametrize("symbol", ["BTCUSDT", "BTC/", "/USDT", "BTC/USDT/X"])
def test_replay_refuses_a_symbol_without_base_and_quote(data_file, symbol):
    line = one_line_error(CliRunner().invoke(cli, ["exchange", "replay", "--data", str(data_file), "--port", "0",
                                                   "--symbol", symbol]))
    assert "BASE/QUOTE" in line


BAD_FAULTS = {
    "not a list": ("kind: drop\n", "a list of faults"),
    "unknown kind": ("- {kind: explode}\n", "unknown kind 'explode'"),
    "unknown key": ("- {kind: drop_after, when: later}\n", "unknown key(s) when"),
    "wrong type": ("- {kind: status, status: '429'}\n", "status must be int"),
    "negative delay": ("- {kind: slow, delay_s: -1}\n", "finite number >= 0"),
    "bad method": ("- {kind: drop, method: PATCHY}\n", "method must be"),
    "duplicate key": ("- {kind: drop, times: 1, times: 2}\n", "appears twice"),
}


@pytest.mark.parametrize("case", list(BAD_FAULTS))
def test_replay_faults_file_is_validated(tmp_path, data_file, case):
    text, message = BAD_FAULTS[case]
    path = tmp_path / "faults.yaml"
    path.write_text(text)
    line = one_line_error(CliRunner().invoke(cli, ["exchange", "replay", "--data", str(data_file), "--port", "0",
                                                   "--faults", str(path)]))
    assert message in line and str(path) in line


def test_replay_faults_file_reaches_the_exchange(tmp_path, data_file):
    path = tmp_path / "faults.yaml"
    path.write_text("- {kind: drop_after, path: /api/v3/order, method: post}\n- {kind: hidden, times: 2}\n"
                    "- {kind: status, status: 418, retry_after: 60, path: /api/v3/order, method: POST, skip: 1}\n"
                    "- {kind: partial, pieces: 3, times: 2}\n")
    faults = load_faults(path)
    frame = synthetic_ohlcv(100, seed=2, start="2024-03-01")
    ex = ReplayExchange(frame, start=frame.index[50])
    apply_faults(ex, faults)
    assert [(f.kind, f.method, f.param) for f in ex.faults] == [
        ("drop_after", "POST", None), ("status", "GET", "origClientOrderId"), ("status", "POST", None)]
    assert ex.faults[2].retry_after == 60.0 and ex._partial_faults[0].pieces == 3


def test_sweep_grid_empty_file_and_max_rows_bound(tmp_path):
    from sweeps.grid import load_grid

    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty sweep file"):
        load_grid(empty)
    huge = tmp_path / "huge.yaml"
    huge.write_text("grid: {deadband: [0, 0.1]}\nmax_rows: 1000000000000\n")
    with pytest.raises(ConfigError, match="max_rows"):
        load_grid(huge)


@pytest.mark.parametrize("address", ["foo", "127.0.0.1:8786", "http://127.0.0.1:8786", "tcp://host"])
def test_dask_scheduler_address_that_is_not_one(address):
    from sweeps.distributed import dask_client

    with pytest.raises(ConfigError, match="not a Dask scheduler address"):
        with dask_client(scheduler=address):
            pass


def test_live_without_keys_refuses_before_any_work(tmp_path, monkeypatch):
    monkeypatch.delenv("NTS_HOSTILE_KEY", raising=False)
    state = tmp_path / "live.db"
    res = CliRunner().invoke(cli, ["live", "--model", str(tmp_path / "no-such-bundle"), "--state", str(state),
                                   "--i-understand-live-trading", "--set", "broker.api_key_env=NTS_HOSTILE_KEY"])
    line = one_line_error(res)
    assert "environment variable NTS_HOSTILE_KEY is not set" in line  # before the (missing) model is looked at
    assert not state.exists()


def test_resume_by_a_secret_is_redacted_everywhere(tmp_path, monkeypatch):
    secret = "Zq81-very-secret-operator-token"
    monkeypatch.setenv("NTS_HOSTILE_SECRET", secret)
    path = tmp_path / "s.db"
    with Journal.open(path, IDENT) as j:
        _bar(j, 0)
        j.halt(f"kill_switch: file found ({secret})", T0)
    res = CliRunner().invoke(cli, ["resume", "--state", str(path), "--yes", "--by", f"ops {secret}"])
    assert res.exit_code == 0 and secret not in res.output and "halt cleared by ops ***" in res.output
    status = CliRunner().invoke(cli, ["status", "--state", str(path), "--json"])
    assert status.exit_code == 0 and secret not in status.output
    assert secret.encode() not in path.read_bytes() + (path.with_name(path.name + "-wal").read_bytes()
                                                     if path.with_name(path.name + "-wal").exists() else b"")


def test_status_piped_into_head_ends_quietly(tmp_path):
    path = tmp_path / "many.db"
    with Journal.open(path, IDENT) as j:
        _bar(j, 0)
        with j.atomic():
            for k in range(4000):  # open orders: far more than a pipe's buffer of status lines
                j.record_intent(f"nts-abcdef12-{k:x}-e0", T0, "entry", "buy", "limit", 0.01, price=100.0)
    cmd = f"{sys.executable} -m cli.main status --state {path} | head -n 3"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and len(proc.stdout.splitlines()) == 3
