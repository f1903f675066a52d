"""nts serve --mode paper: the paper session run inside the server, seen and driven through
the operator API and the status page, against the replay exchange on 127.0.0.1 (real ccxt
client). The replay clock is stepped by the test (one bar per permit), so every step is
deterministic; a second test runs `nts serve --mode paper` as a process, kills it with
SIGKILL and restarts it."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from brokers.ccxt_store import CCXTStore
from brokers.exchange import make_exchange
from core.config import load_config
from core.synthetic import synthetic_ohlcv
from models.bundle import load_bundle
from sessions.journal import Journal, JournalError
from server.app import create_app
from server.auth import Auth
from server.host import SessionHost
from server.setup import build_setup
from strategies.backtest import warmup_bars_for
from server_helpers import Receiver, fuzz_schema
from venues.replay import ReplayExchange

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "operator-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SETS = ["strategy.center=0.3", "strategy.deadband=0"]  # trades every few bars


@pytest.fixture(scope="module")
def fast_bundle(tmp_path_factory) -> Path:
    """Short feature memories and a 32-bar window: a cheap warm-up for session tests."""
    from models.train import train_bundle

    cfg = load_config(None, ["training.epochs=1", "training.batch_size=128", "training.threads=1", "model.window=32",
                             "features.ewma_vol_fast_span=12", "features.ewma_vol_slow_span=24",
                             "features.rsi_window=8", "features.volume_z_window=48"])
    out = tmp_path_factory.mktemp("bundles") / "fast"
    train_bundle(synthetic_ohlcv(2500, seed=13), cfg, out, progress=False)
    return out


class Stepper:
    """The session's wait: advance the replay one bar per permit the test hands out."""

    def __init__(self, ex: ReplayExchange) -> None:
        self.ex = ex
        self.permits = threading.Semaphore(0)

    def __call__(self, seconds: float) -> None:
        if self.permits.acquire(timeout=0.02):
            self.ex.advance(bars=1)

    def step(self, n: int = 1) -> None:
        for _ in range(n):
            self.permits.release()


def journal_bars(state: Path) -> int:
    try:
        with Journal.open_readonly(state) as j:
            return j.summary()["bars_processed"]
    except JournalError:
        return 0


def step_until(stepper: Stepper, state: Path, bars: int, timeout: float = 60) -> None:
    """Hand out permits until the journal holds ``bars`` bars."""
    deadline = time.monotonic() + timeout
    while journal_bars(state) < bars:
        assert time.monotonic() < deadline, f"journal stuck at {journal_bars(state)} bars (want {bars})"
        if stepper.permits._value == 0:  # one permit at a time: bars come in order, never in a burst
            stepper.step()
        time.sleep(0.01)


def summary(state: Path) -> dict:
    with Journal.open_readonly(state) as j:
        return {"summary": j.summary(), "intents": j.intents(), "events": j.events(), "bars": j.bars()}


@pytest.mark.timeout(300)
def test_operator_api_and_status_page(tmp_path, fast_bundle):
    cfg = load_config(None, [*SETS, f"risk.kill_switch_file={tmp_path / 'KILL'}"])
    warm = warmup_bars_for(load_bundle(fast_bundle), cfg)
    frame = synthetic_ohlcv(warm + 400, seed=9, start="2024-06-01")
    state = tmp_path / "served.db"
    with ReplayExchange(frame, start=frame.index[warm + 5] + pd.Timedelta("1min")) as ex:
        client = make_exchange("binance", url=ex.url, timeout_ms=5000)
        client.enableRateLimit = False
        stepper = Stepper(ex)
        host = SessionHost("paper", cfg, fast_bundle, state, store=CCXTStore(exchange=client, sleep=lambda s: None),
                           sleep=stepper)
        app = create_app(build_setup(cfg, fast_bundle), Auth(TOKEN), host)
        with TestClient(app) as c:
            step_until(stepper, state, 30)
            st = c.get("/api/v1/status", headers=AUTH).json()
            assert st["state"] == "running" and st["bars_processed"] >= 30 and st["halted"] is False
            assert st["breakers"] == "ok" and st["equity"] > 0 and st["symbol"] == "BTC/USDT"
            assert c.get("/api/v1/status").status_code == 401
            assert c.post("/api/v1/pause").status_code == 401
            page = c.get("/", headers=AUTH)
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            for part in ("<svg id=\"equity\"", "Working orders", "Last decisions", "Recent fills", "http-equiv=refresh",
                         st["session_id"]):
                assert part in page.text, part
            bars = c.get("/api/v1/bars", params={"offset": 5, "limit": 10}, headers=AUTH).json()
            assert bars["total"] >= 30 and len(bars["bars"]) == 10 and bars["bars"][0]["prob"] is not None
            assert c.get("/api/v1/equity", headers=AUTH).json()["bars"][0]["equity"] > 0
            assert c.get("/api/v1/bars", params={"limit": 5000}, headers=AUTH).status_code == 422
            assert "recent_events" in c.get("/api/v1/journal", headers=AUTH).json()

            # pause: no entry intents while paused (exits still run)
            assert c.post("/api/v1/pause", json={"reason": "test pause"}, headers=AUTH).json()["changed"]
            n0 = journal_bars(state)
            step_until(stepper, state, n0 + 40)
            view = summary(state)
            paused_bars = [b.bar_time for b in view["bars"][n0:]]
            assert not [i for i in view["intents"] if i.role == "entry" and i.bar_time > paused_bars[0]]
            assert any(e["kind"] == "pause" and "test pause" in e["message"] for e in view["events"])
            assert c.get("/api/v1/status", headers=AUTH).json()["paused"] == "test pause"
            assert "PAUSED" in c.get("/", headers=AUTH).text
            c.post("/api/v1/unpause", headers=AUTH)

            # trade until a position is open, then flatten through the API
            deadline = time.monotonic() + 60
            while not c.get("/api/v1/status", headers=AUTH).json()["position"]:
                assert time.monotonic() < deadline, "no position opened"
                step_until(stepper, state, journal_bars(state) + 1)
            r = c.post("/api/v1/flatten", json={"reason": "test flatten"}, headers=AUTH)
            assert r.status_code == 200 and r.json()["halted"]
            n1 = journal_bars(state)
            step_until(stepper, state, n1 + 3)
            st = c.get("/api/v1/status", headers=AUTH).json()
            assert st["position"] == 0 and st["halted"] and "operator flatten" in st["halt"]["reason"]
            assert not st["working_orders"]
            step_until(stepper, state, n1 + 25)
            view = summary(state)
            flat_from = view["bars"][n1].bar_time
            assert not [i for i in view["intents"] if i.role == "entry" and i.bar_time > flat_from]
            assert all(b.position == 0 for b in view["bars"][n1 + 2:])
            # the position was closed after the request: by the flatten's market order, or by a barrier
            # exit that filled first on the same bar (the flatten then had nothing left to close)
            closing = [f for f in c.get("/api/v1/fills", headers=AUTH).json()["fills"]
                       if f["ts"] >= view["bars"][n1 - 1].bar_time]
            assert closing and closing[-1]["side"] == "sell"
            assert "HALTED" in c.get("/", headers=AUTH).text

            # resume: needs a reason, journals it, and the session trades again
            assert c.post("/api/v1/resume", json={}, headers=AUTH).status_code == 422
            r = c.post("/api/v1/resume", json={"reason": "checked the book"}, headers=AUTH)
            assert r.json()["cleared"] and "operator flatten" in r.json()["was"]
            n2 = journal_bars(state)
            step_until(stepper, state, n2 + 60)
            view = summary(state)
            assert not view["summary"]["halted"]
            assert any(e["kind"] == "halt_cleared" and "checked the book" in e["message"] for e in view["events"])
            assert any(i.role == "entry" and i.bar_time > view["bars"][n2].bar_time for i in view["intents"])
            trades = c.get("/api/v1/trades", headers=AUTH).json()["trades"]
            assert trades and trades[0]["entry_price"] > 0
            metrics = c.get("/metrics", headers=AUTH).text
            assert "nts_session_equity" in metrics and "nts_session_halted 0.0" in metrics

            # stop: the session ends cleanly
            assert c.post("/api/v1/stop", headers=AUTH).json()["stopping"]
            host.thread.join(30)
            assert not host.thread.is_alive() and host.error is None and host.result.stopped_by == "signal"
            assert c.get("/api/v1/status", headers=AUTH).json()["state"] == "stopped"
            # every route of the session app, fuzzed from its OpenAPI schema: no 5xx, answers as documented
            assert fuzz_schema(c.app, headers=AUTH, max_examples=8) >= 17


def test_control_routes_refuse_without_a_configured_token(tmp_path, fast_bundle):
    cfg = load_config(None)
    host = SessionHost("paper", cfg, fast_bundle, tmp_path / "never.db", url="http://127.0.0.1:9")
    c = TestClient(create_app(build_setup(cfg, fast_bundle), Auth(None), host))  # no lifespan: never started
    for path in ("/api/v1/pause", "/api/v1/unpause", "/api/v1/flatten", "/api/v1/stop"):
        r = c.post(path)
        assert r.status_code == 403 and "NTS_API_TOKEN" in r.json()["detail"]
    assert c.get("/api/v1/status").json()["state"] == "starting"      # reading stays open on loopback
    assert c.get("/api/v1/fills").status_code == 409


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_served_session_survives_sigkill(tmp_path, fast_bundle):
    """`nts serve --mode paper` killed with SIGKILL mid-run, restarted with the same command:
    it resumes from the journal (no bar journaled twice or skipped, no fill doubled), the
    operator API answers again, and /api/v1/stop ends it with exit code 0."""
    cfg_args = [*SETS, f"risk.kill_switch_file={tmp_path / 'KILL'}"]
    cfg = load_config(None, cfg_args)
    warm = warmup_bars_for(load_bundle(fast_bundle), cfg)
    frame = synthetic_ohlcv(warm + 400, seed=5, start="2024-05-01")
    state = tmp_path / "kill.db"
    log_path = tmp_path / "serve.log"
    port = free_port()
    rx = Receiver()
    notify = tmp_path / "notify.yaml"
    notify.write_text(f"notify:\n  targets:\n    - {{name: ops, kind: webhook, url: 'http://127.0.0.1:{rx.port}/hook'}}\n"
                      "  events: [fill, halt, error, start, stop]\n  poll_seconds: 0.2\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "NTS_API_TOKEN": TOKEN}
    base = f"http://127.0.0.1:{port}"
    with ReplayExchange(frame, start=frame.index[warm + 5] + pd.Timedelta("1min"), speed=0) as ex:
        cmd = [sys.executable, "-m", "cli.main", "serve", "--mode", "paper", "--model", str(fast_bundle),
               "--exchange-url", ex.url, "--state", str(state), "--port", str(port), "--notify", str(notify)] + \
              [a for kv in cfg_args for a in ("--set", kv)]

        def start():
            return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log_path.open("a"), stderr=subprocess.STDOUT)

        def wait_bars(proc, n, timeout=120):
            deadline = time.monotonic() + timeout
            while journal_bars(state) < n:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.05)

        proc = start()
        ex.set_speed(3000)  # a 15m bar every 0.3 s
        wait_bars(proc, 15)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        ex.set_speed(0)
        before = summary(state)
        proc = start()
        ex.set_speed(3000)
        wait_bars(proc, len(before["bars"]) + 15)
        r = httpx.get(f"{base}/api/v1/status", headers=AUTH, timeout=10)
        assert r.status_code == 200 and r.json()["state"] == "running"
        assert httpx.post(f"{base}/api/v1/stop", headers=AUTH, timeout=10).json()["stopping"]
        assert proc.wait(60) == 0, log_path.read_text()[-3000:]
    out = log_path.read_text()
    assert "resumed paper session" in out and out.count("new paper session") == 1
    assert TOKEN not in out
    after = summary(state)
    times = [b.bar_time for b in after["bars"]]
    assert times == sorted(set(times)) and all(b - a == 900_000 for a, b in zip(times, times[1:]))
    assert after["summary"]["duplicate_fills_ignored"] == 0
    assert [b.bar_time for b in after["bars"][:len(before["bars"])]] == [b.bar_time for b in before["bars"]]
    # notifications: every fill and start/stop event of the journal reached the receiver, across the kill
    rx.kill()
    with Journal.open_readonly(state) as j:
        fills = {f"ops:fill:{f.trade_id}" for f in j.fills()}
        events = {f"ops:event:{e['id']}" for e in j.events() if e["kind"] in ("start", "stop", "halt", "error")}
    keys = [m["key"] for m in rx.got]
    assert fills and set(keys) == fills | events
    # sent once; a kill between the receiver's answer and the commit of sent_at may repeat the one
    # message in flight (it carries the same Idempotency-Key), nothing else
    assert len(keys) - len(set(keys)) <= 1, sorted(k for k in set(keys) if keys.count(k) > 1)
