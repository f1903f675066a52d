"""Notifications through the journal's outbox (sessions/outbox.py, sessions/notify.py) to a
JSON webhook receiver on 127.0.0.1 that the test kills and restarts: nothing lost, nothing
doubled, across a notifier restart too; a dead endpoint logged once per outage; URLs never
shown unmasked."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from core.errors import ConfigError
from sessions.journal import BarFigures, Journal, SessionIdentity
from sessions.notify import NotifyConfig, Notifier, load_notify_config, mask_url
from server_helpers import Receiver

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_717_200_000_000  # 2024-06-01 00:00 UTC


def new_journal(path: Path) -> Journal:
    return Journal.open(path, SessionIdentity("paper", "binance", "BTC/USDT", "15m", "/m", "a" * 64, "b" * 64))


def trade(j: Journal, n: int, t: int) -> None:
    """An entry and its take-profit exit, journaled as a session would."""
    cid_in, cid_out = f"e{n}", f"x{n}"
    j.record_intent(cid_in, t, "entry", "buy", "market", 0.1)
    j.record_fill(f"{cid_in}.1", cid_in, "buy", 100.0 + n, 0.1, 0.0001, "BTC", t + 900_000)
    j.record_intent(cid_out, t, "take_profit", "sell", "limit", 0.1, price=101.0 + n)
    j.record_fill(f"{cid_out}.1", cid_out, "sell", 101.0 + n, 0.1, 0.01, "USDT", t + 1_800_000)


def bar(j: Journal, t: int, equity: float = 10_000.0) -> None:
    j.record_bar(t, BarFigures(100.0, 0.5, 0.0, 0.0, 0.0, float("nan"), equity, equity), "ok", {}, {})


def cfg_for(url: str, **kw) -> NotifyConfig:
    return NotifyConfig.model_validate({"targets": [{"name": "ops", "kind": "webhook", "url": url}],
                                        "poll_seconds": 0.05, "retry": {"first_seconds": 0.05, "max_seconds": 0.2},
                                        "timeout_seconds": 2, **kw})


def run_until(notifier: Notifier, done, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, notifier.counts()
        notifier.step()
        time.sleep(0.02)


@pytest.mark.timeout(120)
def test_exactly_once_across_receiver_and_notifier_restarts(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="nts.notify")
    state = tmp_path / "n.db"
    j = new_journal(state)
    rx = Receiver()
    url = f"http://127.0.0.1:{rx.port}/hook/secret-path-token"
    n1 = Notifier(state, cfg_for(url))
    bar(j, T0)
    trade(j, 1, T0)
    j.record_event("breaker_trip", "volatility: 0.12 > 0.10", {"breaker": "volatility"})
    run_until(n1, lambda: len(rx.got) == 3)            # 2 fills + 1 trip (the "open" event is not wanted)
    assert [m["kind"] for m in rx.got] == ["fill", "fill", "breaker_trip"]
    assert rx.got[0]["title"].startswith("entry filled") and rx.got[1]["title"].startswith("exit filled")

    # the receiver dies: messages wait; the outage is logged once, not per message or round
    rx.kill()
    trade(j, 2, T0 + 3_600_000)
    j.halt("drawdown breaker: 0.21 > 0.20", T0 + 3_700_000)
    for _ in range(15):
        n1.step()
        time.sleep(0.03)
    assert n1.counts()["pending"] == 3 and len(rx.got) == 3
    outage = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(outage) == 1 and "secret-path-token" not in caplog.text and "http://127.0.0.1" in caplog.text

    # the notifier process "restarts" (a new one on the same journal) while the receiver is still down
    n1.close()
    j.record_event("error", "session stopped by an error: boom")
    n2 = Notifier(state, cfg_for(url))
    n2.step()
    assert n2.counts()["pending"] == 4
    # the receiver comes back on the same port: everything arrives, once, in order
    rx2 = Receiver(rx.port)
    run_until(n2, lambda: n2.counts()["pending"] == 0)
    kinds = [m["kind"] for m in rx2.got]
    assert kinds == ["fill", "fill", "halt", "error"], kinds
    everything = rx.got + rx2.got
    keys = [m["key"] for m in everything]
    assert len(keys) == len(set(keys)) == 7 and all(m["idem"] == m["key"] for m in everything)
    assert n2.counts() == {"pending": 0, "sent": 7}
    assert sum("reachable again" in r.getMessage() for r in caplog.records) == 1
    # nothing new: another round sends nothing and derives nothing
    assert n2.step() == {"new": 0, "sent": 0}
    n2.close()
    rx2.kill()
    # the journal with its outbox tables still opens as a journal (schema check accepts them)
    j.close()
    with Journal.open_readonly(state) as again:
        assert again.summary()["trade_count"] == 4
    j = new_journal(state)
    j.close()


@pytest.mark.timeout(60)
def test_daily_summary_once_per_day(tmp_path):
    state = tmp_path / "d.db"
    j = new_journal(state)
    rx = Receiver()
    n = Notifier(state, cfg_for(f"http://127.0.0.1:{rx.port}/h", events=["daily_summary"]))
    for k in range(4 * 96 + 3):  # four whole days and three bars of a fifth
        bar(j, T0 + k * 900_000, 10_000.0 + k)
        if k % 50 == 0:
            n.step()
    run_until(n, lambda: n.counts()["pending"] == 0 and len(rx.got) >= 3)
    n.step()
    titles = [m["title"] for m in rx.got]
    # each UTC day that a later bar closed is summarised once (the session's first day
    # included); the fifth day is still running
    assert titles == [f"daily summary 2024-06-0{d}" for d in (1, 2, 3, 4)], titles
    assert "equity 10,095.00" in rx.got[0]["body"] and "96 bars" in rx.got[0]["body"]
    n.close()
    rx.kill()
    j.close()


def test_config_and_masking(tmp_path, monkeypatch):
    assert mask_url("tgram://123456:ABCDEF/987") == "tgram://***"
    assert mask_url("https://hooks.example.com:8443/services/T0/B0/XYZ") == "https://hooks.example.com:8443/***"
    good = tmp_path / "n.yaml"
    good.write_text("notify:\n  targets:\n    - {name: ops, kind: webhook, url_env: NTS_TEST_HOOK}\n")
    with pytest.raises(ConfigError, match="NTS_TEST_HOOK is not set"):
        load_notify_config(good)
    monkeypatch.setenv("NTS_TEST_HOOK", "http://127.0.0.1:9/x")
    assert load_notify_config(good).targets[0].resolve() == "http://127.0.0.1:9/x"
    for text, words in (("notify:\n  targets: []\n", "targets"),
                        ("notify:\n  targets:\n    - {name: a, kind: webhook, url: http://x, bogus: 1}\n", "bogus"),
                        ("notify:\n  targets:\n    - {name: a, kind: sms, url: http://x}\n", "kind"),
                        ("notify:\n  targets:\n    - {name: a, kind: webhook}\n", "exactly one of url"),
                        ("other: 1\n", "one top-level key")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=words):
            load_notify_config(bad)
    monkeypatch.setenv("NTS_TEST_HOOK", "http://127.0.0.1:9/x")
    assert load_notify_config(ROOT / "configs" / "notify.yaml").targets


@pytest.mark.timeout(60)
def test_apprise_json_target(tmp_path):
    """The Apprise path with its json:// service against the local receiver."""
    state = tmp_path / "a.db"
    j = new_journal(state)
    rx = Receiver()
    cfg = NotifyConfig.model_validate({"targets": [{"name": "ap", "kind": "apprise",
                                                    "url": f"json://127.0.0.1:{rx.port}/path"}],
                                       "events": ["halt"]})
    n = Notifier(state, cfg)
    j.halt("kill_switch: file present", T0)
    run_until(n, lambda: n.counts()["sent"] == 1)
    assert len(rx.got) == 1 and "kill_switch" in json.dumps(rx.got[0])
    n.close()
    rx.kill()
    j.close()
