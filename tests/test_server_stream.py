"""nts serve, bar streams: the warm-up once, then one bar per call, answered as /predict
answers the same history; out-of-sequence and bad bars refused with one line (the stream
unchanged); the bound on open streams, idle expiry, closing, and one bar per stream at a time."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from core.config import load_config
from core.synthetic import synthetic_ohlcv
from server.app import create_app
from server.auth import Auth
from server.predict import Bar
from server.run import ServeOptions, build_app
from server.setup import build_setup
from server.streams import StreamGone, StreamRegistry, StreamsFull
from test_server import columns_of, rows_of, wait_ready


@pytest.fixture(scope="module")
def setup(tiny_bundle):
    return build_setup(load_config(None), tiny_bundle)


@pytest.fixture(scope="module")
def candles(setup):
    return synthetic_ohlcv(setup.warmup_bars + 12, seed=4, start="2024-05-01")


@pytest.fixture(scope="module")
def client(setup):
    with TestClient(create_app(setup, Auth(None), max_streams=3)) as c:
        wait_ready(c)
        yield c


def _open(client, frame, **extra):
    r = client.post("/streams", json={"columns": columns_of(frame), **extra})
    assert r.status_code == 201, r.text
    return r.json()


def test_stream_answers_as_predict(client, setup, candles):
    warm = setup.warmup_bars
    opened = _open(client, candles.iloc[:warm], symbol="ETH/USDT")
    first = client.post("/predict", json={"bars": rows_of(candles.iloc[:warm])}).json()
    sid = opened.pop("stream_id")
    assert opened.pop("idle_expiry_s") > 0 and opened.pop("symbol") == "ETH/USDT"
    assert opened.pop("next_bar_time_ms") == int(candles.index[warm].value // 1_000_000)
    assert opened == first
    rows = rows_of(candles)
    for k in range(warm, len(candles)):
        r = client.post(f"/streams/{sid}/bars", json=rows[k])
        assert r.status_code == 200, r.text
        out = r.json()
        full = client.post("/predict", json={"columns": columns_of(candles.iloc[k + 1 - warm:k + 1])}).json()
        assert out["bar_time"] == full["bar_time"] and out["bars_used"] == k + 1
        # a stream keeps all its history, /predict the last warm-up bars: equal past the model's memory
        assert out["probability"] == pytest.approx(full["probability"], abs=1e-9)
        assert out["target_weight"] == pytest.approx(full["target_weight"], rel=1e-6, abs=1e-12)
        assert out["signal"] == pytest.approx(full["signal"], abs=1e-8)
        assert out["forecast_vol"] == pytest.approx(full["forecast_vol"], rel=1e-9)
    assert client.delete(f"/streams/{sid}").json() == {"closed": True}
    assert client.post(f"/streams/{sid}/bars", json=rows[-1]).status_code == 404


def test_stream_policy_overrides_hold_for_every_bar(client, setup, candles):
    warm = setup.warmup_bars
    opened = _open(client, candles.iloc[:warm], policy={"center": 0.05, "deadband": 0})
    assert opened["center"] == 0.05 and opened["side"] == "buy"
    r = client.post(f"/streams/{opened['stream_id']}/bars", json=rows_of(candles)[warm]).json()
    assert r["center"] == 0.05 and r["side"] == "buy" and r["target_weight"] > 0
    client.delete(f"/streams/{opened['stream_id']}")


@pytest.mark.parametrize("case", ["repeat", "older", "gap", "off_grid", "high_low", "nan_text", "extra_field"])
def test_bad_bars_refused_and_stream_unchanged(client, setup, candles, case):
    warm = setup.warmup_bars
    sid = _open(client, candles.iloc[:warm])["stream_id"]
    rows = rows_of(candles)
    bar = dict(rows[warm])
    if case == "repeat":
        bar, words = rows[warm - 1], ["not after the stream's last bar", "next bar of this stream opens at"]
    elif case == "older":
        bar, words = rows[warm - 5], ["not after the stream's last bar"]
    elif case == "gap":
        bar, words = rows[warm + 2], ["gap of 2 bars", "open a new stream"]
    elif case == "off_grid":
        bar["timestamp"] += 60_000
        words = ["not aligned"]
    elif case == "high_low":
        bar["high"] = bar["low"] / 2
        words = ["high < low", "row 1"]
    elif case == "nan_text":
        bar["close"] = "NaN-ish"
        words = ["close"]
    else:
        bar["vwap"] = 1.0
        words = ["Extra inputs", "vwap"]
    r = client.post(f"/streams/{sid}/bars", json=bar)
    assert r.status_code == 422, r.text
    assert len(r.json()["detail"]) >= 1
    for w in words:
        assert w in r.text, (w, r.text)
    # the refusal left the stream as it was: the right next bar is still accepted
    ok = client.post(f"/streams/{sid}/bars", json=rows[warm])
    assert ok.status_code == 200 and ok.json()["bars_used"] == warm + 1
    client.delete(f"/streams/{sid}")


def test_open_refusals(client, setup, candles):
    r = client.post("/streams", json={"columns": columns_of(candles.iloc[:50])})
    assert r.status_code == 422 and "50 bars" in r.text and r.json()["detail"][0]["loc"] == ["body", "columns"]
    r = client.post("/streams", json={"bars": rows_of(candles.iloc[:setup.warmup_bars]), "policy": {"center": 2.0}})
    assert r.status_code == 422
    assert client.post("/streams/nope/bars", json=rows_of(candles)[0]).status_code == 404
    assert client.delete("/streams/nope").status_code == 404


def test_bound_on_open_streams(client, setup, candles):
    warm = candles.iloc[:setup.warmup_bars]
    ids = [_open(client, warm)["stream_id"] for _ in range(3)]
    r = client.post("/streams", json={"columns": columns_of(warm)})
    assert r.status_code == 429 and "limit is 3" in r.json()["detail"]
    client.delete(f"/streams/{ids[0]}")
    ids[0] = _open(client, warm)["stream_id"]
    for sid in ids:
        assert client.delete(f"/streams/{sid}").status_code == 200


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _bar(frame, k: int) -> Bar:
    return Bar(**rows_of(frame.iloc[k:k + 1])[0])


def test_idle_streams_expire(setup, candles):
    clock = FakeClock()
    reg = StreamRegistry(setup, max_streams=1, idle_s=60, clock=clock)
    warm = setup.warmup_bars
    stream, _ = reg.open(candles.iloc[:warm], setup.policy, "X")
    clock.now = 59.0
    reg.push(stream.id, _bar(candles, warm))          # used at 59: idle again from there
    clock.now = 118.0
    with pytest.raises(StreamsFull):
        reg.open(candles.iloc[:warm], setup.policy, "Y")
    clock.now = 120.0
    with pytest.raises(StreamGone, match="expired"):
        reg.push(stream.id, _bar(candles, warm + 1))
    assert len(reg) == 0
    other, _ = reg.open(candles.iloc[:warm], setup.policy, "Y")  # the slot is free again
    assert other.id != stream.id


def test_one_bar_per_stream_at_a_time(setup, candles):
    """Eight threads send the same next bar at once, five rounds: each round exactly one is
    scored, the others are refused as not after the last bar (the per-stream lock makes
    check-and-update atomic; without it a round breaks the stream)."""
    reg = StreamRegistry(setup)
    warm = setup.warmup_bars
    stream, _ = reg.open(candles.iloc[:warm], setup.policy, None)
    for k in range(5):
        bar = _bar(candles, warm + k)
        results: list[str] = []
        barrier = threading.Barrier(8)

        def send() -> None:
            barrier.wait()
            try:
                reg.push(stream.id, bar)
                results.append("ok")
            except Exception as exc:  # noqa: BLE001 - every outcome is recorded and checked below
                results.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=send) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results.count("ok") == 1 and len(results) == 8, results
        assert all(r.startswith("DataError") and "not after the stream's last bar" in r
                   for r in results if r != "ok"), results
    assert stream.bars == warm + 5 and np.isfinite(stream.scorer.rows[-1]).all()


def test_streams_off_with_several_workers(tiny_bundle, setup, candles, monkeypatch):
    """With --workers 2 a stream's bars could reach another worker process: streams are off,
    and opening one says why."""
    monkeypatch.delenv("NTS_API_TOKEN", raising=False)
    app, _ = build_app(ServeOptions(model=str(tiny_bundle), workers=2))
    assert app.state.streams.max_streams == 0
    assert build_app(ServeOptions(model=str(tiny_bundle)))[0].state.streams.max_streams > 0
    with TestClient(app) as c:
        wait_ready(c)
        r = c.post("/streams", json={"columns": columns_of(candles.iloc[:setup.warmup_bars])})
        assert r.status_code == 429 and "--workers 1" in r.json()["detail"]


def test_vol_scaled_stream_answers_as_predict(tiny_bundle):
    """labels.scale: vol with the default per-bar hooks: each bar's barrier prices and
    break-even centre come from the width of the stream's own bars (the batch width over the
    whole history, as the backtest reads it) and equal /predict's on the same bars."""
    from models.labels import barrier_widths
    from server.predict import predict_frame

    cfg = load_config(None, ["labels.scale=vol", "labels.vol_profit=1.2", "labels.vol_stop=0.8", "labels.vol_span=14",
                             "labels.horizon=6", "strategy.center=breakeven"])
    vol = build_setup(cfg, tiny_bundle, barriers="config")
    warm = vol.warmup_bars
    frame = synthetic_ohlcv(warm + 30, seed=8, start="2024-05-01")
    widths = barrier_widths(frame, 6, 14)  # from the frame's first bar: more history than the stream has
    reg = StreamRegistry(vol)
    stream, first = reg.open(frame.iloc[:warm], vol.policy, None)
    answers = [first] + [reg.push(stream.id, _bar(frame, k))[1] for k in range(warm, len(frame))]
    centers = []
    for k, out in zip(range(warm - 1, len(frame)), answers, strict=True):
        w, close = widths[k], float(frame["close"].iloc[k])
        assert out.barriers.take_profit == pytest.approx(close * (1.0 + 1.2 * w), rel=1e-12)
        assert out.barriers.stop == pytest.approx(close * (1.0 - 0.8 * w), rel=1e-12)
        assert out.center == pytest.approx((0.8 * w + 2.0 * vol.policy.taker_fee) / (2.0 * w), rel=1e-9)
        centers.append(out.center)
        if k % 10 == 0:  # /predict on the last warm-up bars ending here: the same decision
            same = predict_frame(vol, frame.iloc[k + 1 - warm:k + 1])
            assert same.barriers.take_profit == pytest.approx(out.barriers.take_profit, rel=1e-12)
            assert same.center == pytest.approx(out.center, rel=1e-12)
            assert same.signal == pytest.approx(out.signal, abs=1e-8)
    assert np.std(centers) > 0.01  # the centre really is per bar
