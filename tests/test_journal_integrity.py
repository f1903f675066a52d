"""Issue 18, category 5: a journal that refuses what it cannot trust.

At start (Journal.open) and in nts status (Journal.open_readonly) a journal copied without
its -wal file, fills or order events of unknown orders, impossible checkpoint values and
orders reopened after their final status are refused with one line naming the problem and
the way out. A write the disk refuses stops the session with one line and leaves nothing
half-created. Journals, their locks and -wal files are the owner's only; nts status
creates nothing beside a journal; a clean close leaves no lock file; an extra table
(another engineer's outbox) is tolerated.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

import sessions.journal as journal_mod
from cli.main import cli
from sessions.journal import Journal, JournalError
from test_journal import IDENT, T0, _bar


@pytest.fixture
def jpath(tmp_path) -> Path:
    return tmp_path / "state" / "SESSION.db"


def _with_position(path: Path) -> None:
    with Journal.open(path, IDENT) as j:
        j.record_intent("nts-abcdef12-1-e0", T0, "entry", "buy", "market", 0.5)
        j.record_ack("nts-abcdef12-1-e0", "77", "open", T0 + 1)
        j.record_fill("t1", "nts-abcdef12-1-e0", "buy", 100.0, 0.5, 0.0005, "BTC", T0 + 2)
        for k in range(5):
            _bar(j, k)


def _refused_everywhere(path: Path, message: str) -> None:
    before = path.read_bytes()
    for opener in (lambda: Journal.open(path, IDENT), lambda: Journal.open_readonly(path)):
        with pytest.raises(JournalError, match=message) as err:
            opener()
        assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
    assert path.read_bytes() == before
    res = CliRunner().invoke(cli, ["status", "--state", str(path)])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and "error:" in res.output
    assert "unexpected" not in res.output


def test_a_journal_copied_without_its_wal_is_refused(jpath, tmp_path):
    _with_position(jpath)
    j = Journal.open(jpath, IDENT)  # a running session: its last writes live in the -wal file
    _bar(j, 5)
    copy = tmp_path / "backup" / "SESSION.db"
    copy.parent.mkdir()
    shutil.copy2(jpath, copy)  # the common mistake: the main file only
    try:
        _refused_everywhere(copy, "not closed cleanly and its -wal file is missing")
        shutil.copy2(jpath.with_name(jpath.name + "-wal"), copy.with_name(copy.name + "-wal"))
        with Journal.open_readonly(copy) as r:  # with its -wal it is whole again
            assert r.last_bar() == T0 + 5 * 900_000 and len(r.fills()) == 1
    finally:
        j.close()


def _edit(path: Path, *sql: str) -> None:
    conn = sqlite3.connect(path)  # foreign keys off, as any other tool would have them
    for stmt in sql:
        conn.execute(stmt)
    conn.commit()
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()


EDITS = {
    "orphan fill": (["INSERT INTO fills (trade_id, client_id, side, price, amount, fee, fee_currency, ts) VALUES "
                     "('t9', 'nts-ghost-e0', 'buy', 100, 1, 0, 'BTC', 1)"], "a fill .* of an order the journal"),
    "event of an unknown order": (["INSERT INTO order_events (client_id, ts, kind, status) VALUES "
                                   "('nts-ghost-e1', 1, 'status', 'closed')"], "an order event .* does not have"),
    "negative equity": ([f"UPDATE bars SET equity = -250.0 WHERE bar_time = {T0 + 3 * 900_000}"],
                        "impossible checkpoint at bar 2024-01-01T00:45:00Z"),
    "non-positive close": ([f"UPDATE bars SET close = 0 WHERE bar_time = {T0}"], "impossible checkpoint"),
    "closed order reopened": (["INSERT INTO order_events (client_id, ts, kind, status) VALUES "
                               "('nts-abcdef12-1-e0', 5, 'status', 'closed')",
                               "UPDATE intents SET status = 'open' WHERE client_id = 'nts-abcdef12-1-e0'"],
                              "order nts-abcdef12-1-e0 is open again after it was closed"),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_records_it_cannot_trust_are_refused(jpath, case):
    _with_position(jpath)
    sql, message = EDITS[case]
    _edit(jpath, *sql)
    _refused_everywhere(jpath, message)


def test_a_full_disk_stops_with_one_line_and_nothing_half_written(jpath):
    _with_position(jpath)
    j = Journal.open(jpath, IDENT)
    pages = j._conn.execute("PRAGMA page_count").fetchone()[0]
    j._conn.execute(f"PRAGMA max_page_count = {pages + 1}")  # the disk is full from here on
    n = len(j.bars())
    with pytest.raises(JournalError, match="cannot write the journal .*full.*free disk space") as err:
        for k in range(5, 400):
            _bar(j, k, strategy_state={"blob": "x" * 5000})
    assert "\n" not in str(err.value)
    j._conn.execute("PRAGMA max_page_count = 1073741823")
    assert len(j.bars()) >= n  # whole bars only; the refused one is not there
    j.close()
    with Journal.open_readonly(jpath) as r:
        assert all(b.strategy_state.get("blob", "x" * 5000) == "x" * 5000 for b in r.bars())


def test_a_journal_that_cannot_be_created_leaves_nothing(jpath, monkeypatch):
    def readonly(conn, identity):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(journal_mod, "_create_schema", readonly)
    with pytest.raises(JournalError, match="cannot create the journal .*readonly.*nothing was created") as err:
        Journal.open(jpath, IDENT)
    assert "\n" not in str(err.value)
    assert sorted(os.listdir(jpath.parent)) == []  # no journal, no temporary file, no lock


def test_owner_only_files_status_creates_nothing_and_no_stale_lock(jpath, tmp_path, monkeypatch):
    monkeypatch.setenv("NTS_LOG_DIR", str(tmp_path / "logs"))
    with Journal.open(jpath, IDENT) as j:
        _bar(j, 0)
        for p in (jpath, jpath.with_name(jpath.name + "-wal"), jpath.with_name(jpath.name + ".lock")):
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert sorted(os.listdir(jpath.parent)) == ["SESSION.db"], "a clean close leaves no lock, -wal or -shm"
    res = CliRunner().invoke(cli, ["status", "--state", str(jpath)])
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(jpath.parent)) == ["SESSION.db"], "nts status is read-only for real"
    log = tmp_path / "logs" / "nts.log"
    assert log.exists() and stat.S_IMODE(log.stat().st_mode) == 0o600, "the command log is the owner's only"


def test_an_extra_outbox_table_is_tolerated(jpath):
    _with_position(jpath)
    _edit(jpath, "CREATE TABLE outbox (id INTEGER PRIMARY KEY, body TEXT)")
    with Journal.open(jpath, IDENT) as j:
        assert j.last_bar() == T0 + 4 * 900_000
