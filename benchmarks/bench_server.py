"""Server speed: /predict for one window through real HTTP, against the bare scorer.

Usage: .venv/bin/python benchmarks/bench_server.py [--model artifacts/tcn_v1] [--data FILE]
       [--requests 200] [--concurrency 4]

1. **Bare scorer** (in this process, no HTTP, no JSON): ``predict_frame`` on a validated
   frame -- features over the warm-up bars, TCN forward on the last window, calibration,
   policy and risk cap: the work /predict cannot avoid. Also the request's own parsing
   (pydantic) and the file loader's checks on the same bars.
2. **One window through real HTTP**: ``nts serve`` started as a process on 127.0.0.1 (one
   worker), ``--requests`` sequential POST /predict of the same window (the body encoded
   once) with a plain ``httpx.AsyncClient``: p50 / p99 latency, the server's own mean handling
   time (its /metrics latency histogram), and the server's overhead = p50(HTTP) - p50(bare scorer).
3. **Throughput** with 1 and 2 uvicorn workers: ``--concurrency`` clients in flight,
   ``--requests`` requests in all: requests/s.

Goals (issue 16): p50 <= 2 ms, p99 <= 5 ms, server overhead <= the scorer's own cost. Every
run stops by itself (bounded request counts; the server processes are terminated).
Without ``--model`` a small bundle is trained on generated bars first (not timed); without
``--data`` the window is generated candles. Prints one line per figure.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.config import load_config  # noqa: E402
from core.synthetic import synthetic_ohlcv  # noqa: E402
from server.predict import PredictRequest, bars_frame, predict_frame  # noqa: E402
from server.setup import build_setup  # noqa: E402


def _ms(xs) -> str:
    a = np.asarray(xs) * 1e3
    return f"p50 {np.percentile(a, 50):.2f} ms, p99 {np.percentile(a, 99):.2f} ms"


def _timed(fn, n: int) -> list[float]:
    fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(model: str, workers: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NTS_API_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--model", model, "--port", str(port),
                             "--workers", str(workers)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"nts serve exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("nts serve did not become ready in 120 s")


async def _sequential(base: str, body: bytes, n: int) -> list[float]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        headers = {"content-type": "application/json"}
        r = await client.post("/predict", content=body, headers=headers)
        assert r.status_code == 200, r.text
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            r = await client.post("/predict", content=body, headers=headers)
            out.append(time.perf_counter() - t0)
            assert r.status_code == 200
        return out


async def _throughput(base: str, body: bytes, n: int, concurrency: int) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        headers = {"content-type": "application/json"}
        left = n

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                r = await client.post("/predict", content=body, headers=headers)
                assert r.status_code == 200

        await client.post("/predict", content=body, headers=headers)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n / (time.perf_counter() - t0)


def _server_side_mean(base: str) -> float:
    """Mean /predict handling time the server measured itself (instrumentator histogram)."""
    total = count = 0.0
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if 'handler="/predict"' in line and line.startswith("http_request_duration_seconds_sum"):
            total = float(line.rsplit(" ", 1)[1])
        elif 'handler="/predict"' in line and line.startswith("http_request_duration_seconds_count"):
            count = float(line.rsplit(" ", 1)[1])
    return total / count if count else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default=None, help="candle file (default: generated candles)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()
    cfg = load_config(None)
    tmp = tempfile.TemporaryDirectory()
    model = args.model
    if model is None:
        from models.train import train_bundle

        model = str(Path(tmp.name) / "bench")
        train_bundle(synthetic_ohlcv(3000, seed=11), load_config(None, ["training.epochs=1", "training.threads=1"]),
                     model, progress=False)
    setup = build_setup(cfg, model)
    if args.data:
        from core.ohlcv import load_ohlcv

        frame = load_ohlcv(args.data).iloc[-setup.warmup_bars:]
    else:
        frame = synthetic_ohlcv(setup.warmup_bars, seed=5)
    rows = [{"timestamp": int(t.value // 1_000_000), "open": o, "high": h, "low": lo, "close": c, "volume": v}
            for t, (o, h, lo, c, v) in zip(frame.index, frame.to_numpy())]
    body = json.dumps({"bars": rows}).encode()
    print(f"window: {len(rows)} bars (the model's warm-up), body {len(body) / 1e3:.0f} kB, model {setup.model_id}")

    n = max(50, args.requests // 2)
    checked = bars_frame(PredictRequest.model_validate_json(body).bars, setup)
    scorer = _timed(lambda: predict_frame(setup, checked), n)
    print(f"bare scorer (features + TCN + calibration + policy + cap): {_ms(scorer)}")
    print(f"  of which bundle.score_window alone: {_ms(_timed(lambda: setup.bundle.score_window(checked), n))}")
    print(f"request parsing (pydantic from JSON): {_ms(_timed(lambda: PredictRequest.model_validate_json(body), n))}")
    req = PredictRequest.model_validate_json(body)
    print(f"file-loader checks + frame: {_ms(_timed(lambda: bars_frame(req.bars, setup), n))}")

    for workers in (1, 2):
        proc, base = _start_server(model, workers)
        try:
            if workers == 1:
                lat = asyncio.run(_sequential(base, body, args.requests))
                overhead = np.percentile(lat, 50) - np.percentile(scorer, 50)
                print(f"HTTP /predict, one window, 1 worker, sequential: {_ms(lat)} "
                      f"(goal p50 <= 2 ms, p99 <= 5 ms: {'met' if np.percentile(lat, 50) <= 2e-3 and np.percentile(lat, 99) <= 5e-3 else 'MISSED'})")
                inside = _server_side_mean(base)
                print(f"  inside the server (request middleware to response, its /metrics histogram): mean "
                      f"{inside * 1e3:.2f} ms; the rest is HTTP transport and the client on this shared CPU")
                print(f"server overhead (p50 HTTP - p50 bare scorer): {overhead * 1e3:.2f} ms "
                      f"({overhead / np.percentile(scorer, 50):.2f}x the scorer; goal <= 1x: "
                      f"{'met' if overhead <= np.percentile(scorer, 50) else 'MISSED'})")
            rps = asyncio.run(_throughput(base, body, args.requests, args.concurrency))
            print(f"throughput, {workers} worker(s), {args.concurrency} clients: {rps:.1f} requests/s")
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"cpus: {os.cpu_count()}")


if __name__ == "__main__":
    main()
