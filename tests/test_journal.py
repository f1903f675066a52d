"""Session journal (sessions/journal.py) and `nts status` / `nts resume`: schema and reopen,
refusal of damaged/foreign files without touching them, idempotent intents and fills, bar
order, exact JSON round-trips, halts across restarts, a reader beside a writing process,
SIGKILL in a write loop, the secret guard, and the per-bar write cost."""
from __future__ import annotations

import json
import math
import os
import random
import signal
import sqlite3
import statistics
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sessions.journal import (
    APPLICATION_ID,
    BarFigures,
    SCHEMA_VERSION,
    Journal,
    JournalError,
    SessionIdentity,
    config_hash,
    deterministic_client_id,
    dumps,
    loads,
    to_ms,
)
from cli.main import cli
from core.risk import RiskManager

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC
STEP = 900_000  # 15m
IDENT = SessionIdentity("paper", "binance", "BTC/USDT", "15m", "bundles/tiny", "ab" * 32, config_hash({"a": 1}))


def _bar(j: Journal, k: int, **over) -> None:
    kw = dict(close=100.0 + k, prob=0.55, signal=0.2, weight=0.1, position=0.01 * k, avg_price=100.0,
              cash=1000.0 - k, equity=1000.0 - k + 0.01 * k * (100.0 + k), breaker_state="ok",
              risk_state=RiskManager().state_dict(), strategy_state={"k": k})
    kw.update(over)
    figures = BarFigures(*(kw.pop(name) for name in BarFigures._fields))
    j.record_bar(T0 + k * STEP, figures, **kw)


@pytest.fixture
def jpath(tmp_path) -> Path:
    return tmp_path / "state" / "SESSION.db"


@pytest.fixture
def journal(jpath):
    with Journal.open(jpath, IDENT) as j:
        yield j


def _closed_journal_with_bars(path: Path, n: int = 40) -> None:
    """A journal with a few pages of data, closed (WAL checkpointed into the main file)."""
    with Journal.open(path, IDENT) as j:
        for k in range(n):
            _bar(j, k, strategy_state={"k": k, "pad": "x" * 500})


# ------------------------------------------------------------------------------ schema
def test_new_journal_schema_and_reopen(jpath):
    with Journal.open(jpath, IDENT) as j:
        sid = j.session.session_id
        assert len(sid) == 12 and int(sid, 16) >= 0
        assert (j.session.mode, j.session.symbol, j.session.model_sha256) == ("paper", "BTC/USDT", "ab" * 32)
        conn = j._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        assert meta == {"app": "nts-journal", "schema_version": str(SCHEMA_VERSION), "clean": "0"}  # open
        _bar(j, 0)
    with Journal.open(jpath, IDENT) as j:
        assert j.session.session_id == sid  # generated once
        assert j.last_bar() == T0
        assert [e["kind"] for e in j.events()] == ["open", "open"]
        assert j.events()[1]["data"] == {"new": False}


def test_a_zero_byte_file_is_a_new_journal_a_schema_less_sqlite_file_is_refused(tmp_path):
    # nts creates journals whole (temporary file, renamed into place), so a SQLite file
    # without tables is not a half-created journal of ours: most likely a journal copied
    # without its -wal file (which holds everything). Refused, naming the -wal; a 0-byte
    # file holds nothing and is initialised.
    half = tmp_path / "half.db"
    conn = sqlite3.connect(half)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    before = half.read_bytes()
    with pytest.raises(JournalError, match="copied without its -wal file\\? Copy half.db-wal next to it"):
        Journal.open(half, IDENT)
    assert half.read_bytes() == before
    empty = tmp_path / "empty.db"
    empty.touch()
    with Journal.open(empty, IDENT) as j:
        assert j.last_bar() is None
    (tmp_path / "zero.db").touch()
    with pytest.raises(JournalError, match="empty file"):  # readers never initialise a file
        Journal.open_readonly(tmp_path / "zero.db")


def test_other_session_refused_and_model_change_needs_the_flag(jpath):
    Journal.open(jpath, IDENT).close()
    before = jpath.read_bytes()
    for field, value in (("mode", "live"), ("symbol", "ETH/USDT"), ("exchange", "kraken"), ("timeframe", "1h")):
        other = SessionIdentity(**{**IDENT.__dict__, field: value})
        with pytest.raises(JournalError, match=f"another session .*{field}") as err:
            Journal.open(jpath, other)
        assert str(jpath) in str(err.value) and "\n" not in str(err.value)
    new_model = SessionIdentity(**{**IDENT.__dict__, "model_sha256": "cd" * 32})
    with pytest.raises(JournalError, match="model_sha256 abababab.*cdcdcdcd.*allow_model_change"):
        Journal.open(jpath, new_model)
    assert jpath.read_bytes() == before  # refusals wrote nothing (WAL already checkpointed)
    with Journal.open(jpath, new_model, allow_model_change=True) as j:
        assert j.session.model_sha256 == "cd" * 32
        change = j.events("model_change")
        assert change[0]["data"] == {"model_sha256": {"old": "ab" * 32, "new": "cd" * 32}}
    Journal.open(jpath, new_model).close()  # the new model is now the session's


def test_second_session_on_the_same_file_refused(journal, jpath):
    with pytest.raises(JournalError, match=f"already open by another session \\(pid {os.getpid()}\\)"):
        Journal.open(jpath, IDENT)
    journal.close()
    Journal.open(jpath, IDENT).close()  # the lock went with the first session


# ------------------------------------------------------------------------------ refusals
def _random_bytes(path: Path, tmp: Path) -> None:
    path.write_bytes(random.Random(3).randbytes(8192))


def _truncated(path: Path, tmp: Path) -> None:
    _closed_journal_with_bars(path)
    data = path.read_bytes()
    assert len(data) >= 4 * 4096
    path.write_bytes(data[: len(data) - 4096 - 1000])  # mid-page


def _truncated_at_page(path: Path, tmp: Path) -> None:
    _closed_journal_with_bars(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 2 * 4096])


def _text(path: Path, tmp: Path) -> None:
    path.write_text("session: paper\nequity: 1000\n" * 50)


def _foreign(path: Path, tmp: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE trades (id INTEGER PRIMARY KEY, px REAL)")
    conn.execute("INSERT INTO trades (px) VALUES (1.5)")
    conn.commit()
    conn.close()


def _newer(path: Path, tmp: Path) -> None:
    _closed_journal_with_bars(path, 2)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.execute("PRAGMA journal_mode = DELETE")  # leave no -wal beside it
    conn.close()


def _corrupt_page(path: Path, tmp: Path) -> None:
    _closed_journal_with_bars(path)
    data = bytearray(path.read_bytes())
    data[3 * 4096: 3 * 4096 + 200] = random.Random(5).randbytes(200)  # a b-tree page's header
    path.write_bytes(bytes(data))


DAMAGE = {
    "random bytes": (_random_bytes, "not a SQLite database"),
    "truncated mid-page": (_truncated, "truncated SQLite file"),
    "truncated at a page boundary": (_truncated_at_page, "truncated SQLite file"),
    "plain text": (_text, "not a SQLite database"),
    "another schema": (_foreign, "not an nts session journal"),
    "newer schema": (_newer, "schema version 99 is newer"),
    "corrupt page": (_corrupt_page, "damaged SQLite file"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_or_foreign_file_refused_untouched(case, tmp_path):
    make, message = DAMAGE[case]
    path = tmp_path / "SESSION.db"
    make(path, tmp_path)
    before, names = path.read_bytes(), sorted(os.listdir(tmp_path))
    for opener in (lambda: Journal.open(path, IDENT), lambda: Journal.open_readonly(path),
                   lambda: Journal.open_admin(path)):
        with pytest.raises(JournalError, match=message) as err:
            opener()
        line = str(err.value)
        assert line.startswith(str(path)) and "\n" not in line
        assert path.read_bytes() == before, "a refused file must not be modified"
    assert sorted(os.listdir(tmp_path)) == names, "nothing created beside it (lock, -wal, -shm)"
    res = CliRunner().invoke(cli, ["status", "--state", str(path)])
    assert res.exit_code == 2 and message in res.output and len(res.output.strip().splitlines()) == 1
    assert path.read_bytes() == before


def test_missing_file_refused_for_readers(tmp_path):
    with pytest.raises(JournalError, match="no such journal file"):
        Journal.open_readonly(tmp_path / "nope.db")
    with pytest.raises(JournalError, match="no such journal file"):
        Journal.open_admin(tmp_path / "nope.db")
    assert not (tmp_path / "nope.db").exists()


# ------------------------------------------------------------------------------ orders
def test_intents_idempotent_and_conflicts_refused(journal):
    sid = journal.session.session_id
    cid = deterministic_client_id(sid, T0, "entry")
    a = journal.record_intent(cid, T0, "entry", "buy", "limit", 0.5, price=100.0, extra={"note": "x"})
    assert a.status == "intent" and a.extra == {"note": "x"} and not a.terminal
    b = journal.record_intent(cid, T0, "entry", "buy", "limit", 0.5, price=100.0, extra={"note": "x"})
    assert b == a and len(journal.intents()) == 1
    with pytest.raises(JournalError, match="amount .0.5 != 0.6."):
        journal.record_intent(cid, T0, "entry", "buy", "limit", 0.6, price=100.0, extra={"note": "x"})
    with pytest.raises(JournalError, match="extra"):
        journal.record_intent(cid, T0, "entry", "buy", "limit", 0.5, price=100.0)
    with pytest.raises(JournalError, match="client_id"):
        journal.record_intent("bad id with spaces", T0, "entry", "buy", "market", 1.0)
    with pytest.raises(JournalError, match="amount must be > 0"):
        journal.record_intent("nts-x", T0, "entry", "buy", "market", 0.0)
    with pytest.raises(JournalError, match="unknown client_id"):
        journal.record_ack("nts-nope", "1", "open", T0)

    journal.record_ack(cid, "E1", "open", T0 + 1)
    assert journal.record_ack(cid, "E1", "open", T0 + 1).status == "open"  # repeat: no-op
    with pytest.raises(JournalError, match="exchange order id 'E2' != journaled 'E1'"):
        journal.record_ack(cid, "E2", "open", T0 + 2)
    assert [i.client_id for i in journal.orders_without_terminal_status()] == [cid]
    journal.record_order_status(cid, "closed", T0 + 3, filled=0.5)
    with pytest.raises(JournalError, match="already closed, cannot become open"):
        journal.record_order_status(cid, "open", T0 + 4)
    with pytest.raises(JournalError, match="already closed, cannot become canceled"):
        journal.record_cancel(cid, T0 + 4, "too late")
    assert journal.orders_without_terminal_status() == [] and journal.intents(open_only=True) == []

    cid2 = deterministic_client_id(sid, T0, "stop_loss")
    journal.record_intent(cid2, T0, "stop_loss", "sell", "stop_market", 0.5, stop_price=95.0)
    journal.record_cancel(cid2, T0 + 5, "position closed")
    again = journal.record_cancel(cid2, T0 + 6, "again")
    assert again.status == "canceled" and again.cancel_reason == "position closed"
    n_events = journal._conn.execute("SELECT COUNT(*) FROM order_events").fetchone()[0]
    assert n_events == 3  # ack, closed, cancel: repeats wrote nothing


def test_fills_idempotent_on_trade_id(journal):
    cid = "nts-test-1"
    journal.record_intent(cid, T0, "entry", "buy", "market", 1.0)
    assert journal.record_fill("T1", cid, "buy", 100.0, 0.4, 0.04, "USDT", T0) is True
    assert journal.record_fill("T1", cid, "buy", 100.0, 0.4, 0.04, "USDT", T0) is False
    assert journal.record_fill("T1", cid, "buy", 100.0, 0.4, 0.04, "USDT", T0) is False
    assert journal.record_fill("T2", cid, "buy", 100.5, 0.6, 0.0001, "BNB", T0 + 1) is True
    assert journal.record_fill("X9", None, "sell", 99.0, 0.1, 0.0, None, T0 + 2) is True  # not ours
    with pytest.raises(JournalError, match="fill T1 already journaled with other price"):
        journal.record_fill("T1", cid, "buy", 100.1, 0.4, 0.04, "USDT", T0)
    with pytest.raises(JournalError, match="side sell but intent"):
        journal.record_fill("T3", cid, "sell", 100.0, 0.1, 0.0, "USDT", T0)
    with pytest.raises(JournalError, match="unknown client_id"):
        journal.record_fill("T4", "nts-other", "buy", 100.0, 0.1, 0.0, "USDT", T0)
    fills = journal.fills()
    assert [f.trade_id for f in fills] == ["T1", "T2", "X9"] and fills[0].duplicates == 2
    assert [f.trade_id for f in journal.fills(since_trade_id="T1")] == ["T2", "X9"]
    s = journal.summary()
    assert s["trade_count"] == 3 and s["duplicate_fills_ignored"] == 2
    assert s["fees_by_currency"] == {"": 0.0, "BNB": 0.0001, "USDT": 0.04}


def test_deterministic_client_id():
    a = deterministic_client_id("0123456789ab", T0, "entry")
    assert a == deterministic_client_id("0123456789ab", T0, "entry")
    assert a.startswith("nts-01234567-") and a.endswith("-e0")
    ids = {deterministic_client_id("0123456789ab", T0 + d, r, n)
           for d in (0, STEP) for r in ("entry", "exit", "stop_loss") for n in (0, 1, 35, 1295)}
    assert len(ids) == 24
    assert all(len(i) <= 36 and all(c.isalnum() or c in ".:/_-" for c in i) for i in ids)
    # far future still fits
    assert len(deterministic_client_id("f" * 12, 2**41 // 60_000 * 60_000, "take_profit", 1295)) <= 36
    with pytest.raises(JournalError, match="whole UTC minute"):
        deterministic_client_id("0123456789ab", T0 + 1, "entry")
    with pytest.raises(JournalError, match="role"):
        deterministic_client_id("0123456789ab", T0, "yolo")
    with pytest.raises(JournalError, match="attempt"):
        deterministic_client_id("0123456789ab", T0, "entry", 1296)


# ------------------------------------------------------------------------------ bars
def test_bars_strictly_increasing(journal):
    _bar(journal, 5)
    for k in (5, 4):
        with pytest.raises(JournalError, match="not after the last journaled bar"):
            _bar(journal, k)
    _bar(journal, 7)
    assert [c.bar_time for c in journal.bars()] == [T0 + 5 * STEP, T0 + 7 * STEP]
    journal.record_gap(T0 + 6 * STEP, T0 + 6 * STEP, 1)
    s = journal.summary()
    assert (s["bars_processed"], s["gaps"], s["bars_missing"]) == (2, 1, 1)
    with pytest.raises(JournalError, match="epoch milliseconds"):
        journal.record_bar(time.time(), BarFigures(*([1.0] * 8)), "ok", {}, {})


def test_json_and_columns_round_trip_exactly(journal):
    rm = RiskManager()
    rm._trip(__import__("datetime").datetime(2024, 1, 1), "drawdown", "dd 25%", dd=0.25)
    tricky = [0.1 + 0.2, 1e-310, 5e-324, 1.7976931348623157e308, -0.0, 2**53 + 1, 1 / 3,
              math.nan, math.inf, -math.inf, np.float64(0.7), np.float32(0.1), np.int64(7), True, None]
    state = {"tricky": tricky, "nested": {"a": [{"b": math.nan}]}, "tuple": (1, 2.5)}
    _bar(journal, 0, prob=math.nan, signal=math.inf, weight=-math.inf, avg_price=math.nan,
         risk_state=rm.state_dict(), strategy_state=state)
    cp = journal.last_checkpoint()
    assert math.isnan(cp.prob) and cp.signal == math.inf and cp.weight == -math.inf and math.isnan(cp.avg_price)
    r = cp.risk_state
    assert r["peak"] == -math.inf and math.isnan(r["day_start_equity"]) and r["trips"][0]["values"] == {"dd": 0.25}
    restored = RiskManager()
    restored.load_state(r)
    assert restored.state_dict()["trips"] == rm.state_dict()["trips"]
    back = cp.strategy_state["tricky"]
    for x, y in zip(tricky, back):
        if isinstance(x, (float, np.floating)):
            assert struct.pack(">d", float(x)) == struct.pack(">d", y) or (math.isnan(x) and math.isnan(y))
        else:
            assert y == x and type(y) in (int, bool, type(None))
    assert math.isnan(cp.strategy_state["nested"]["a"][0]["b"]) and cp.strategy_state["tuple"] == [1, 2.5]
    assert "NaN" not in dumps(state) and loads(dumps({"x": 1.0})) == {"x": 1.0}
    for bad, msg in (({"s": {1, 2}}, "set"), ({1: "x"}, "not a string"), ({"$float": "nan"}, "reserved")):
        with pytest.raises(JournalError, match=msg):
            _bar(journal, 1, strategy_state=bad)
    assert journal.last_bar() == T0  # refused bars wrote nothing


def test_atomic_groups_writes_and_rolls_back(journal):
    with pytest.raises(RuntimeError):
        with journal.atomic():
            journal.record_intent("nts-a", T0, "entry", "buy", "market", 1.0)
            _bar(journal, 0)
            raise RuntimeError("crash before the end of the bar")
    assert journal.intents() == [] and journal.last_bar() is None
    with journal.atomic():
        journal.record_intent("nts-a", T0, "entry", "buy", "market", 1.0)
        with pytest.raises(JournalError):
            _bar(journal, 0, breaker_state=3)  # inner refusal rolls back only itself
        _bar(journal, 0)
    assert len(journal.intents()) == 1 and journal.last_bar() == T0


def test_to_ms_refuses_seconds_floats():
    import datetime as dt

    import pandas as pd

    assert to_ms(dt.datetime(2024, 1, 1)) == T0 == to_ms(pd.Timestamp("2024-01-01", tz="UTC"))
    assert to_ms(dt.datetime(2024, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))) == T0
    assert to_ms(np.datetime64("2024-01-01T00:00:00")) == T0
    with pytest.raises(JournalError, match="float"):
        to_ms(1_704_067_200.0)


# ------------------------------------------------------------------------------ halts
def test_halt_survives_reopen_and_clears_only_explicitly(jpath):
    with Journal.open(jpath, IDENT) as j:
        assert j.halted() is None
        h = j.halt("kill switch file present", T0)
        assert j.halt("drawdown 30%", T0 + 1) == h  # the first halt stays in force
    with Journal.open(jpath, IDENT) as j:
        assert j.halted() == h and j.halted().reason == "kill switch file present"
        _bar(j, 0)  # bars, fills, reopen: nothing but clear_halt clears it
        assert j.halted() == h
        with Journal.open_admin(jpath) as admin:  # `nts resume` beside the running session
            cleared = admin.clear_halt("alice@desk", T0 + 10)
        assert cleared.cleared_by == "alice@desk" and cleared.reason == h.reason
        assert j.halted() is None  # the session sees it at its next check
        assert j.clear_halt("bob", T0 + 11) is None
        ev = j.events("halt_cleared")
        assert len(ev) == 1 and ev[0]["data"]["by"] == "alice@desk" and ev[0]["ts"] == T0 + 10
    with Journal.open_readonly(jpath) as r:
        assert r.halted() is None
        with pytest.raises(JournalError, match="handle is reader"):
            r.halt("x", T0)
    with Journal.open_admin(jpath) as admin:
        with pytest.raises(JournalError, match="handle is admin"):
            _bar(admin, 1)


# ------------------------------------------------------------------------------ secrets
@pytest.mark.parametrize("where", ["extra", "event", "strategy", "risk"])
def test_secret_guard(journal, where):
    bad = {"exchange": {"apiKey": "AKIA..."}}
    with pytest.raises(JournalError, match="looks like a credential"):
        if where == "extra":
            journal.record_intent("nts-s", T0, "entry", "buy", "market", 1.0, extra={"params": [{"signature": "x"}]})
        elif where == "event":
            journal.record_event("error", "auth failed", {"request": {"X-MBX-APIKEY": "k", "Password": "p"}})
        elif where == "strategy":
            _bar(journal, 0, strategy_state=bad)
        else:
            _bar(journal, 0, risk_state={"api_secret": "s"})
    assert journal.intents() == [] and journal.last_bar() is None and len(journal.events()) == 1  # "open"
    journal.record_event("start", "ok", {"key_count": 3, "symbol": "BTC/USDT"})  # harmless keys pass


# ------------------------------------------------------------------------------ processes
WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from sessions.journal import BarFigures, Journal, SessionIdentity, deterministic_client_id
    path, ready, limit, pause = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    T0, STEP = {T0}, {STEP}
    ident = SessionIdentity(*{ident!r})
    j = Journal.open(path, ident)
    last = j.last_bar()
    k = 0 if last is None else (last - T0) // STEP + 1
    ready.write_text(str(k))
    while k < limit:
        t = T0 + k * STEP
        cid = deterministic_client_id(j.session.session_id, t, "entry")
        px, amt = 100.0 + k, 0.001 * (k + 1)
        with j.atomic():
            j.record_intent(cid, t, "entry", "buy", "limit", amt, price=px, extra={{"k": k}})
            j.record_ack(cid, "E%d" % k, "open", t)
            j.record_fill("T%d" % k, cid, "buy", px, amt, amt * px * 1e-3, "USDT", t)
            j.record_order_status(cid, "closed", t, filled=amt)
            pos = sum(0.001 * (i + 1) for i in range(k + 1))
            j.record_bar(t, BarFigures(px, 0.5, 0.1, 0.2, pos, px, 1000.0 - k, 1000.0 - k + pos * px), "ok",
                         {{"peak": float("-inf")}}, {{"k": k, "pad": "x" * 3000}})
        k += 1
        if pause:
            time.sleep(pause)
    j.close()
""").format(T0=T0, STEP=STEP, ident=tuple(IDENT.__dict__.values()))


def _spawn_writer(tmp_path: Path, db: Path, limit: int, pause: float) -> tuple[subprocess.Popen, Path]:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    ready = tmp_path / f"ready-{time.monotonic_ns()}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(db), str(ready), str(limit), str(pause)],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"writer did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.01)
    return proc, ready


def _check_consistent(path: Path) -> int:
    """Every bar has its intent, ack, fill and status, complete; nothing exists without its bar."""
    with Journal.open_readonly(path) as j:
        assert j._conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        bars, intents, fills = j.bars(), j.intents(), j.fills()
        n = len(bars)
        assert len(intents) == len(fills) == n
        pos = 0.0
        for k, (cp, it, f) in enumerate(zip(bars, intents, fills)):
            px, amt = 100.0 + k, 0.001 * (k + 1)
            pos += amt
            assert cp.bar_time == T0 + k * STEP and cp.strategy_state == {"k": k, "pad": "x" * 3000}
            assert cp.risk_state == {"peak": -math.inf} and cp.breaker_state == "ok"
            assert cp.position == pos and cp.equity == 1000.0 - k + pos * px
            assert (it.status, it.exchange_order_id, it.filled, it.extra) == ("closed", f"E{k}", amt, {"k": k})
            assert (f.trade_id, f.client_id, f.price, f.amount) == (f"T{k}", it.client_id, px, amt)
        return n


def test_sigkill_in_a_write_loop_leaves_only_whole_bars(tmp_path):
    db = tmp_path / "SESSION.db"
    rng = random.Random(11)
    total_before = 0
    for _ in range(4):
        proc, ready = _spawn_writer(tmp_path, db, limit=10**9, pause=0.0)
        started_at = int(ready.read_text())
        assert started_at == total_before  # resumed right after the last whole bar
        time.sleep(rng.uniform(0.3, 0.9))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        assert db.with_name(db.name + "-wal").exists()  # killed, not closed: reopening recovers the WAL
        n = _check_consistent(db)
        assert n > total_before  # it did write, and lost none of the earlier bars
        total_before = n
    # the kill released the session lock; the writer's handle opens again
    with Journal.open(db, IDENT) as j:
        assert j.last_bar() == T0 + (total_before - 1) * STEP


def test_reader_beside_a_writing_process(tmp_path):
    db = tmp_path / "SESSION.db"
    limit = 120
    proc, _ = _spawn_writer(tmp_path, db, limit=limit, pause=0.004)
    seen, reads, cli_ok = [], 0, False
    try:
        while proc.poll() is None:
            with Journal.open_readonly(db) as r:
                s = r.summary()
            n = s["bars_processed"]
            assert not seen or n >= seen[-1]
            if n:  # one snapshot: the counts and the last bar agree
                assert s["last_bar"] == T0 + (n - 1) * STEP and s["trade_count"] == n
            seen.append(n)
            reads += 1
            if not cli_ok and 0 < n < limit:
                res = CliRunner().invoke(cli, ["status", "--state", str(db), "--json"])
                assert res.exit_code == 0, res.output
                assert json.loads(res.output)["bars_processed"] >= n
                cli_ok = True
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
    assert reads >= 3 and len(set(seen)) >= 2, "reads should have overlapped the writes"
    assert _check_consistent(db) == limit


# ------------------------------------------------------------------------------ CLI
def test_status_command(journal, jpath):
    journal.record_intent("nts-o1", T0, "entry", "buy", "limit", 0.25, price=99.5)
    journal.record_fill("T1", "nts-o1", "buy", 99.5, 0.1, 0.01, "USDT", T0)
    journal.record_event("breaker_trip", "drawdown", {"dd": 0.26})
    _bar(journal, 3, avg_price=math.nan)
    res = CliRunner().invoke(cli, ["status", "--state", str(jpath)])
    assert res.exit_code == 0, res.output
    for text in ("paper binance BTC/USDT 15m", "halt      none", "2024-01-01T00:45:00Z", "1 trips",
                 "1 fills from 1 orders; fees 0.01 USDT", "nts-o1 entry buy limit 0.25 @ 99.5 [intent]"):
        assert text in res.output
    res = CliRunner().invoke(cli, ["status", "--state", str(jpath), "--json"])
    data = json.loads(res.output)
    assert res.exit_code == 0 and data["avg_price"] is None and data["open_orders"][0]["client_id"] == "nts-o1"
    assert data["session"]["session_id"] == journal.session.session_id and data["halted"] is False
    res = CliRunner().invoke(cli, ["status", "--state", str(jpath.parent / "missing.db")])
    assert res.exit_code == 2 and "no such journal file" in res.output


def test_resume_command(journal, jpath):
    run = CliRunner().invoke
    res = run(cli, ["resume", "--state", str(jpath)])
    assert res.exit_code == 0 and "not halted" in res.output
    journal.halt("kill switch file present", T0)
    res = run(cli, ["resume", "--state", str(jpath)], input="n\n")
    assert res.exit_code == 1 and "kill switch file present" in res.output
    assert journal.halted() is not None  # declined: nothing changed
    assert "HALTED" in run(cli, ["status", "--state", str(jpath)]).output
    res = run(cli, ["resume", "--state", str(jpath)], input="y\n")
    assert res.exit_code == 0 and "halt cleared" in res.output
    assert journal.halted() is None
    ev = journal.events("halt_cleared")[-1]
    assert "(nts resume)" in ev["data"]["by"] and abs(ev["ts"] - time.time() * 1000) < 60_000
    journal.halt("breaker", T0 + 1)
    res = run(cli, ["resume", "--state", str(jpath), "--yes", "--by", "ops"])
    assert res.exit_code == 0 and journal.halted() is None
    assert journal.events("halt_cleared")[-1]["data"]["by"] == "ops (nts resume)"
    assert journal.last_bar() is None and journal.intents() == []  # nothing else changed
    res = run(cli, ["resume", "--state", str(jpath.parent / "missing.db"), "--yes"])
    assert res.exit_code == 2 and "no such journal file" in res.output


# ------------------------------------------------------------------------------ cost
def test_record_bar_cost(tmp_path, capsys):
    rm = RiskManager()
    state = {"bars_since_entry": 3, "entry_price": 101.5, "barrier": {"tp": 103.0, "sl": 99.0, "t_end": T0},
             "history": [0.1 * i for i in range(32)]}
    times = []
    with Journal.open(tmp_path / "cost.db", IDENT) as j:
        for k in range(300):
            t = time.perf_counter()
            _bar(j, k, risk_state=rm.state_dict(), strategy_state=state)
            times.append(time.perf_counter() - t)
    median = statistics.median(times)
    with capsys.disabled():
        print(f"\nrecord_bar: median {median * 1e3:.2f} ms, p95 {sorted(times)[284] * 1e3:.2f} ms over 300 bars")
    # fsync per bar; a 15m (or even 1m) bar leaves orders of magnitude of headroom
    assert median < 0.25
