"""nts serve, inference side: every endpoint and refusal through httpx (FastAPI's TestClient),
/predict equal to what nts backtest computes for the same bar on real candles, auth, the
body limit, metrics, and a schemathesis run against the app's own OpenAPI schema."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from cli.main import cli
from core.config import load_config
from core.errors import ConfigError
from core.synthetic import synthetic_ohlcv
from models.bundle import load_bundle
from server.app import create_app
from server.auth import Auth, check_bind
from server.predict import predict_frame
from server.setup import build_setup
from strategies.backtest import run_backtest, warmup_bars_for
from strategies.tcn import TCNStrategy
from server_helpers import fuzz_schema

TOKEN = "test-token-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[1]


def rows_of(frame: pd.DataFrame, iso: bool = False) -> list[dict]:
    out = []
    for ts, (o, h, l, c, v) in zip(frame.index, frame[["open", "high", "low", "close", "volume"]].to_numpy()):
        t = ts.strftime("%Y-%m-%dT%H:%M:%SZ") if iso else int(ts.value // 1_000_000)
        out.append({"timestamp": t, "open": o, "high": h, "low": l, "close": c, "volume": v})
    return out


def columns_of(frame: pd.DataFrame) -> dict:
    """The candles as the columnar body field (one array per field)."""
    return {"timestamp": [int(t.value // 1_000_000) for t in frame.index],
            **{c: frame[c].tolist() for c in ("open", "high", "low", "close", "volume")}}


def wait_ready(client: TestClient, headers: dict | None = None) -> None:
    deadline = time.monotonic() + 60
    while client.get("/ready", headers=headers).status_code != 200:
        assert time.monotonic() < deadline, "server never became ready"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def setup(tiny_bundle):
    return build_setup(load_config(None), tiny_bundle)


@pytest.fixture(scope="module")
def client(setup):
    with TestClient(create_app(setup, Auth(None))) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def window(setup):
    frame = synthetic_ohlcv(setup.warmup_bars + 20, seed=3, start="2024-03-01")
    return frame


# --------------------------------------------------------------------------- endpoints

def test_health_ready_model(client, setup):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"ready": True, "model_id": setup.model_id}
    info = client.get("/model").json()
    assert info["model_id"] == setup.model_id and info["window"] == setup.bundle.window
    assert info["warmup"]["request_bars"] == setup.warmup_bars
    assert info["features"]["names"][3] == "ewma_vol_fast" and info["hashes"]["weights_sha256"]
    assert info["labels"]["profit"] == 0.008 and info["policy"]["profit"] == 0.008
    assert info["policy"]["barrier_rule"] == "fixed: take profit +0.800%, stop -0.400% of the entry price"
    text = json.dumps(info)
    assert "config" not in info and "/tmp" not in text and str(setup.bundle.path) not in text
    assert client.get("/docs").status_code == 200 and "/predict" in client.get("/openapi.json").json()["paths"]


def test_predict_answers_with_the_policy_numbers(client, setup, window):
    r = client.post("/predict", json={"bars": rows_of(window)})
    assert r.status_code == 200, r.text
    out = r.json()
    p = setup.bundle.score_window(window)          # the bundle's own single-window API
    assert out["probability"] == pytest.approx(p, rel=1e-9, abs=1e-12)
    pol = setup.policy
    assert out["signal"] == pytest.approx(pol.signal(out["probability"]))
    assert out["target_weight"] == pytest.approx(
        setup.risk.cap_weight(pol.target_weight(out["signal"], out["forecast_vol"])))
    assert out["bar_time_ms"] == int(window.index[-1].value // 1_000_000) and out["close"] == window["close"].iloc[-1]
    assert out["bars_used"] == setup.warmup_bars
    tp, sl = pol.barrier_prices(out["close"], out["target_weight"] >= 0)
    assert out["barriers"] == {"take_profit": pytest.approx(tp), "stop": pytest.approx(sl)}
    assert out["barrier_width"] is None  # fixed barriers: no width, profit/stop are fractions
    # ISO timestamps give the same answer; overrides change the policy only
    iso = client.post("/predict", json={"bars": rows_of(window, iso=True)}).json()
    assert iso == out
    assert client.post("/predict", json={"columns": columns_of(window)}).json() == out
    forced = client.post("/predict", json={"bars": rows_of(window),
                                           "policy": {"center": 0.05, "deadband": 0, "limit_confidence": 0.0}}).json()
    assert forced["probability"] == out["probability"] and forced["center"] == 0.05
    assert forced["target_weight"] > 0 and forced["side"] == "buy" and forced["order_type"] == "limit"
    assert forced["barriers"]["take_profit"] == pytest.approx(out["close"] * 1.008)


def test_sliding_windows_reuse_a_scorer(setup, window):
    """A client sending its trailing window one bar later is scored by the cached scorer (one
    bar fed, no prime), with the answer of a fresh prime to 1e-9."""
    warm = setup.warmup_bars
    with TestClient(create_app(setup, Auth(None))) as c:
        wait_ready(c)
        cache = c.app.state.window_cache
        outs = [c.post("/predict", json={"columns": columns_of(window.iloc[k:k + warm])}).json() for k in range(6)]
        assert (cache.misses, cache.hits) == (1, 5)
        again = c.post("/predict", json={"bars": rows_of(window.iloc[5:5 + warm])}).json()
        assert (cache.misses, cache.hits) == (2, 5)  # the same window again: primed afresh
    for k, out in enumerate(outs):
        cold = predict_frame(setup, window.iloc[k:k + warm]).model_dump()
        assert out["bar_time"] == cold["bar_time"] and out["bars_used"] == warm
        assert out["probability"] == pytest.approx(cold["probability"], abs=1e-9)
        assert out["target_weight"] == pytest.approx(cold["target_weight"], rel=1e-6, abs=1e-12)
        assert out["forecast_vol"] == pytest.approx(cold["forecast_vol"], rel=1e-9)
    assert again["probability"] == pytest.approx(outs[-1]["probability"], abs=1e-9)


def test_batch(client, window):
    one = client.post("/predict", json={"bars": rows_of(window)}).json()
    earlier = client.post("/predict", json={"bars": rows_of(window.iloc[:-5])}).json()
    r = client.post("/predict/batch", json={"items": [{"symbol": "BTC/USDT", "bars": rows_of(window)},
                                                      {"bars": rows_of(window.iloc[:-5])}]})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert res[0] == one | {"symbol": "BTC/USDT"} and res[1] == earlier | {"symbol": None}
    bad = client.post("/predict/batch", json={"items": [{"bars": rows_of(window)}, {"bars": rows_of(window)[:20]}]})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "items", 1, "bars"]
    assert client.post("/predict/batch", json={"items": []}).status_code == 422


def _refused(client, rows, *words, **extra):
    r = client.post("/predict", json={"bars": rows, **extra})
    assert r.status_code == 422, r.text
    msg = json.dumps(r.json()["detail"])
    for w in words:
        assert w in msg, (w, msg)
    return r.json()["detail"][0]


@pytest.mark.parametrize("case", ["nan", "gap", "length", "string", "both", "neither"])
def test_columns_refusals_name_the_field_and_row(client, window, case):
    cols = columns_of(window)
    body: dict = {"columns": cols}
    if case == "nan":
        cols["high"][100] = float("nan")
        r = client.post("/predict", content=json.dumps(body), headers={"content-type": "application/json"})
        assert r.status_code == 422 and "row 101" in r.text and "'high'" in r.text
        assert r.json()["detail"][0]["loc"] == ["body", "columns"]
        return
    if case == "gap":
        for v in cols.values():
            del v[100]
        words = ["gap of 1 missing bars", "row 100"]
    elif case == "length":
        cols["volume"].pop()
        words = ["columns.volume", "values"]
    elif case == "string":
        cols["open"][100] = "cheap"
        words = []
    elif case == "both":
        body["bars"] = rows_of(window)
        words = ["exactly one"]
    else:
        body = {}
        words = ["exactly one"]
    r = client.post("/predict", json=body)
    assert r.status_code == 422, r.text
    for w in words:
        assert w in r.text, (w, r.text)
    if case == "string":
        assert r.json()["detail"][0]["loc"] == ["body", "columns", "open", 100]


@pytest.mark.parametrize("case", ["unsorted", "duplicate", "off_grid", "gap", "nan", "inf", "zero_price",
                                  "high_low", "negative_volume", "too_few", "mixed_time", "bad_iso", "huge_ms",
                                  "unknown_field", "missing_field", "string_price", "future", "policy"])
def test_refusals_name_the_field_and_row(client, window, case):
    rows = rows_of(window)
    k = 100  # the row we break (1-based 101)
    if case == "unsorted":
        rows[k], rows[k + 1] = rows[k + 1], rows[k]
        _refused(client, rows, "not sorted", "row 102")
    elif case == "duplicate":
        rows[k + 1] = dict(rows[k])
        _refused(client, rows, "duplicate timestamp", "row 102")
    elif case == "off_grid":
        rows[k]["timestamp"] += 60_000
        _refused(client, rows, "not aligned", "row 101")
    elif case == "gap":
        del rows[k]
        _refused(client, rows, "gap of 1 missing bars", "row 100")
    elif case in ("nan", "inf"):
        rows[k]["close"] = float("nan") if case == "nan" else float("inf")
        body = json.dumps({"bars": rows})  # NaN / Infinity literals, as Python's json writes them
        assert ("NaN" if case == "nan" else "Infinity") in body
        r = client.post("/predict", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and "row 101" in r.text and ("nan" in r.text or "inf" in r.text)
    elif case == "zero_price":
        rows[k]["low"] = 0.0
        _refused(client, rows, "non-positive price", "row 101")
    elif case == "high_low":
        rows[k]["high"] = rows[k]["low"] / 2
        _refused(client, rows, "high < low", "row 101")
    elif case == "negative_volume":
        rows[k]["volume"] = -1.0
        _refused(client, rows, "negative volume", "row 101")
    elif case == "too_few":
        _refused(client, rows[-50:], "50 bars", "at least")
    elif case == "mixed_time":
        rows[k]["timestamp"] = "2024-03-01T00:00:00Z"
        _refused(client, rows, "row 101", "mixes timestamp kinds")
    elif case == "bad_iso":
        rows = rows_of(window, iso=True)
        rows[k]["timestamp"] = "yesterday-ish"
        _refused(client, rows, "row 101", "ISO-8601")
    elif case == "huge_ms":
        rows[k]["timestamp"] = 10 ** 18
        _refused(client, rows, "row 101")
    elif case == "unknown_field":
        rows[k]["vwap"] = 1.0
        assert _refused(client, rows, "Extra inputs")["loc"] == ["body", "bars", k, "vwap"]
    elif case == "missing_field":
        del rows[k]["close"]
        assert _refused(client, rows, "Field required")["loc"] == ["body", "bars", k, "close"]
    elif case == "string_price":
        rows[k]["open"] = "cheap"
        assert _refused(client, rows)["loc"][:4] == ["body", "bars", k, "open"]
    elif case == "future":
        late = synthetic_ohlcv(len(rows), seed=3, start=(pd.Timestamp.now(tz="UTC").floor("15min") + pd.Timedelta("2D")).tz_localize(None))
        _refused(client, rows_of(late), "in the future")
    elif case == "policy":
        _refused(client, rows, "center", policy={"center": 1.5})
        _refused(client, rows, "profit", policy={"profit": -0.1})
        # a multiple sent to a fixed-barrier model: one line saying the unit
        _refused(client, rows, "policy.profit: 1.5 is a fraction of the price (this model's barriers are fixed)",
                 policy={"profit": 1.5})
        _refused(client, rows, "policy", policy={"nope": 1})


def test_body_limit_and_bad_json(setup, window):
    with TestClient(create_app(setup, Auth(None), max_body=64 * 1024)) as c:
        r = c.post("/predict", json={"bars": rows_of(window)})
        assert r.status_code == 413 and "limit is 65,536 bytes" in r.json()["detail"]
        # no Content-Length (chunked): counted while it streams in
        r = c.post("/predict", content=iter([b'{"bars": [', b" " * 70_000, b"]}"]),
                   headers={"content-type": "application/json"})
        assert r.status_code == 413
        for body in (b"{nope", b"[]", b"null", b'{"bars": 5}', b""):
            r = c.post("/predict", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 422, (body, r.status_code)


def test_metrics(client, window):
    client.post("/predict", json={"bars": rows_of(window)})
    text = client.get("/metrics").text
    assert 'nts_model_info{model_id="tiny@' in text
    assert "nts_predictions_total" in text
    assert 'http_requests_total{handler="/predict",method="POST",status="2xx"}' in text
    assert 'http_request_duration_seconds_bucket{handler="/predict",le="0.005"' in text or \
        "http_request_duration_highr_seconds_bucket" in text


# --------------------------------------------------------------------------- auth

def test_auth(setup, window, caplog):
    auth = Auth(TOKEN)
    basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    with TestClient(create_app(setup, auth)) as c:
        good = {"Authorization": f"Bearer {TOKEN}"}
        wait_ready(c, good)
        assert c.get("/health").status_code == 200                       # liveness needs no token
        for path in ("/ready", "/model", "/metrics"):
            r = c.get(path)
            assert r.status_code == 401 and "WWW-Authenticate" in r.headers and TOKEN not in r.text
            assert c.get(path, headers={"Authorization": "Bearer wrong-token-xxxxxxxxxx"}).status_code == 401
            assert c.get(path, headers=good).status_code == 200
            assert c.get(path, headers={"Authorization": f"Basic {basic}"}).status_code == 200
        assert c.post("/predict", json={"bars": rows_of(window)}).status_code == 401
        assert c.post("/predict", json={"bars": rows_of(window)}, headers=good).status_code == 200
    assert TOKEN not in caplog.text
    with pytest.raises(ConfigError, match="not a loopback address"):
        check_bind("0.0.0.0", Auth(None))
    check_bind("0.0.0.0", auth)
    check_bind("::1", Auth(None))


def test_cli_refusals(tmp_path, tiny_bundle, monkeypatch):
    monkeypatch.delenv("NTS_API_TOKEN", raising=False)
    r = CliRunner().invoke(cli, ["serve", "--model", str(tiny_bundle), "--host", "0.0.0.0"])
    assert r.exit_code == 2 and r.output.startswith("error: --host 0.0.0.0 is not a loopback address")
    r = CliRunner().invoke(cli, ["serve", "--model", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "not a bundle directory" in r.output
    monkeypatch.setenv("NTS_API_TOKEN", "short")
    r = CliRunner().invoke(cli, ["serve", "--model", str(tiny_bundle)])
    assert r.exit_code == 2 and "at least 16 characters" in r.output and "short" not in r.output.split(":", 1)[1]
    monkeypatch.delenv("NTS_API_TOKEN")
    r = CliRunner().invoke(cli, ["serve", "--model", str(tiny_bundle), "--mode", "live"])
    assert r.exit_code == 2 and "--i-understand-live-trading" in r.output
    r = CliRunner().invoke(cli, ["serve", "--model", str(tiny_bundle), "--workers", "2", "--mode", "paper"])
    assert r.exit_code == 2 and "inference only" in r.output
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "nothing"))
    r = CliRunner().invoke(cli, ["serve"])
    assert r.exit_code == 2 and "nothing" in r.output
    # the seed's entry point is a shim to nts serve
    shim = subprocess.run([sys.executable, str(ROOT / "scripts" / "start_server.py"), "--model", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert shim.returncode == 2 and shim.stderr.startswith("error: ") and "not a bundle directory" in shim.stderr


# --------------------------------------------------------------------------- backtest parity

class RecordingTCN(TCNStrategy):
    """TCNStrategy that writes down, on every traded bar, what the flat-account decision is."""

    params = (("log", None),)

    def next(self):
        if self._start_num is not None and self.data.datetime[0] >= self._start_num:
            p, s, w = self.bar_signal()  # the hooks' values the decision step reads on this bar
            close = float(self.data.close[0])
            self.p.log.append({"time": self.data.datetime.datetime(0), "p": p, "s": s, "w": w,
                               "vol": self.forecast_vol(), "limit": self.policy.use_limit(abs(s)),
                               "barriers": self.policy.barrier_prices(close, w >= 0)})
        super().next()


@pytest.mark.timeout(300)
def test_predict_equals_backtest_on_real_candles(tiny_bundle, real_candles):
    bundle = load_bundle(tiny_bundle)
    cfg0 = load_config(None)
    warm = warmup_bars_for(bundle, cfg0)
    i = int(real_candles.index.searchsorted(pd.Timestamp("2023-06-01", tz="UTC")))
    frame = real_candles.iloc[i - warm - 5:i + 60]
    s, e = real_candles.index[i], real_candles.index[i + 49]
    center = float(np.nanmedian(bundle.predict_proba(frame).loc[s:e]))  # so that some bars trade
    cfg = load_config(None, [f"strategy.center={center:.6f}", "strategy.deadband=0", "strategy.limit_confidence=0.01"])
    log: list[dict] = []
    run_backtest(bundle, frame, cfg, strategy=RecordingTCN, start=s, end=e + pd.Timedelta("15min"), progress=False,
                 strategy_kwargs={"log": log})
    assert len(log) == 50
    setup = build_setup(cfg, tiny_bundle)
    with TestClient(create_app(setup, Auth(None))) as c:
        wait_ready(c)
        rows = rows_of(frame)
        items = []
        for rec in log[::5]:
            t = pd.Timestamp(rec["time"], tz="UTC")
            end = int(frame.index.get_loc(t)) + 1
            items.append((rec, {"bars": rows[end - warm:end]}))
        sides = set()
        for rec, body in items:
            out = c.post("/predict", json=body).json()
            assert out["bar_time"] == pd.Timestamp(rec["time"], tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
            # batch (backtest) vs single-window (server) scoring: float32 network noise only
            assert out["probability"] == pytest.approx(rec["p"], abs=2e-6)
            assert out["signal"] == pytest.approx(rec["s"], abs=2e-5)
            assert out["forecast_vol"] == pytest.approx(rec["vol"], rel=1e-9)
            assert out["target_weight"] == pytest.approx(rec["w"], rel=1e-4, abs=1e-9)
            assert (out["order_type"] == "limit") == bool(rec["limit"]) or out["target_weight"] == 0
            assert out["barriers"]["take_profit"] == pytest.approx(rec["barriers"][0], rel=1e-12)
            assert out["barriers"]["stop"] == pytest.approx(rec["barriers"][1], rel=1e-12)
            sides.add(out["side"])
        assert "buy" in sides and None in sides  # both kinds of bar were compared
        # the bar stream: the warm-up of the first traded bar once, then every traded bar one by one
        first = int(frame.index.get_loc(pd.Timestamp(log[0]["time"], tz="UTC"))) + 1
        opened = c.post("/streams", json={"columns": columns_of(frame.iloc[first - warm:first])})
        assert opened.status_code == 201, opened.text
        sid, answers = opened.json()["stream_id"], [opened.json()]
        for row in rows[first:first + len(log) - 1]:
            r = c.post(f"/streams/{sid}/bars", json=row)
            assert r.status_code == 200, r.text
            answers.append(r.json())
        stream_sides = set()
        for rec, out in zip(log, answers, strict=True):
            assert out["bar_time"] == pd.Timestamp(rec["time"], tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
            assert out["probability"] == pytest.approx(rec["p"], abs=2e-6)
            assert out["target_weight"] == pytest.approx(rec["w"], rel=1e-4, abs=1e-9)
            assert out["forecast_vol"] == pytest.approx(rec["vol"], rel=1e-9)
            stream_sides.add(out["side"])
        assert "buy" in stream_sides and None in stream_sides


# --------------------------------------------------------------------------- schemathesis

@pytest.mark.timeout(600)
def test_openapi_schema_fuzz(setup):
    with TestClient(create_app(setup, Auth(None), max_body=256 * 1024)) as c:
        wait_ready(c)
        assert fuzz_schema(c.app) >= 6
